//! The swarm datapath's eBPF programs, built for `bpfel-unknown-none` by
//! `cargo xtask build-ebpf` and embedded in the agent.
//!
//! One module per hook. Each says where it is attached and in which direction.
//! Names of programs and maps are the contract with user space and are listed
//! in `swarm_common::names`.
#![no_std]
#![no_main]

mod overlay;
mod packet;
mod vxlan_count;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects programs that can reach a real panic; this only
    // satisfies the no_std requirement.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
