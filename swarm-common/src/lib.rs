//! The contract between the swarm eBPF programs and user space.
//!
//! Everything both sides must agree on lives here and only here: protocol
//! constants (the VXLAN port, header sizes), on-the-wire header layouts, the
//! names of programs and maps, and the `#[repr(C)]` types used as map keys
//! and values. Every map type carries a compile-time size assertion, so a
//! layout change cannot slip through on one side only.
//!
//! The crate is `no_std` so the eBPF crate can use it; the `user` feature adds
//! the `aya::Pod` impls user space needs to read and write maps.
#![cfg_attr(not(test), no_std)]

pub mod lb;
pub mod names;
pub mod overlay;
pub mod stats;
pub mod wire;

/// IANA-assigned VXLAN UDP port (RFC 7348), Docker's default `--data-path-port`.
pub const VXLAN_UDP_PORT: u16 = 4789;

/// Bytes VXLAN over IPv4 adds to an inner Ethernet frame:
/// outer Ethernet (14) + IPv4 without options (20) + UDP (8) + VXLAN (8).
pub const VXLAN_OVERHEAD: usize =
    wire::ETH_HDR_LEN + wire::IPV4_HDR_LEN + wire::UDP_HDR_LEN + wire::VXLAN_HDR_LEN;

const _: () = assert!(VXLAN_OVERHEAD == 50);
