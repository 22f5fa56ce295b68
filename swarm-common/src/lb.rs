//! Service load balancing in the datapath: the frontends (a service's
//! virtual IP on a network, or a port published on every node), their
//! backends (running tasks), and the flow table that keeps a connection on
//! the backend it was given and undoes the translation on the way back.
//!
//! - East-west: a packet from a task to `VIP:any-port` on its network has its
//!   destination address rewritten to a backend's (ports unchanged, as
//!   Docker's firewall-mark IPVS services do). The reply's source is turned
//!   back into the VIP where it is delivered to the client.
//! - Ingress: a packet from outside to `node-address:P` (a published port)
//!   has its destination rewritten to `backend:target-port` on the ingress
//!   network and goes to the backend, over VXLAN if it is on another node;
//!   the client's source address is kept. The backend's node remembers the
//!   ingress node of the flow and sends replies back to it, where the source
//!   is turned back into `node-address:P`.

/// Most frontends (VIPs and published ports) on a host.
pub const MAX_FRONTENDS: u32 = 16_384;
/// Most backend slots over all frontends.
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// Most backends of one frontend.
pub const MAX_BACKENDS_PER_FRONTEND: u32 = 1024;
/// Flow table entries (LRU: the least recently used go first).
pub const MAX_FLOWS: u32 = 262_144;

/// [`FrontendKey::vni`] of published ports: they answer on the node's own
/// address, not inside a network.
pub const PUBLISHED_SCOPE: u32 = 0;

/// A frontend: `(vni, vip, 0, 0)` for a VIP (every port and protocol), or
/// `(PUBLISHED_SCOPE, 0.0.0.0, port, proto)` for a published port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub vni: u32,
    /// Network byte order.
    pub ip: [u8; 4],
    /// Network byte order; 0 for a VIP.
    pub port: [u8; 2],
    /// 0 for a VIP.
    pub proto: u8,
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 12);

impl FrontendKey {
    #[must_use]
    pub const fn vip(vni: u32, ip: [u8; 4]) -> FrontendKey {
        FrontendKey { vni, ip, port: [0; 2], proto: 0, pad: 0 }
    }

    #[must_use]
    pub const fn published(port: u16, proto: u8) -> FrontendKey {
        FrontendKey { vni: PUBLISHED_SCOPE, ip: [0; 4], port: port.to_be_bytes(), proto, pad: 0 }
    }
}

/// A frontend's backends: slots `(id, 0..count)` of the backend table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Frontend {
    /// Stable per frontend on this host; the backend table's first key part.
    pub id: u32,
    pub count: u32,
    /// Published ports: the VNI of the ingress network the backends are on.
    /// VIPs: the VIP's own network.
    pub backend_vni: u32,
    /// Published ports: the target port, network byte order (0 keeps the port).
    pub target_port: [u8; 2],
    pub pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Frontend>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub id: u32,
    pub slot: u32,
}
const _: () = assert!(core::mem::size_of::<BackendKey>() == 8);

/// A backend: a task's address on the frontend's backend network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Network byte order.
    pub ip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 4);

/// A packet's own 5-tuple, as it is when the flow table is consulted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    /// The key the other direction's packets have.
    #[must_use]
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    /// A hash of the tuple, for choosing a backend (FNV-1a over the bytes).
    #[must_use]
    pub const fn hash(&self) -> u32 {
        let b = [
            self.src[0],
            self.src[1],
            self.src[2],
            self.src[3],
            self.dst[0],
            self.dst[1],
            self.dst[2],
            self.dst[3],
            self.sport[0],
            self.sport[1],
            self.dport[0],
            self.dport[1],
            self.proto,
        ];
        let mut h: u32 = 0x811c_9dc5;
        let mut i = 0;
        while i < b.len() {
            h ^= b[i] as u32;
            h = h.wrapping_mul(0x0100_0193);
            i += 1;
        }
        h
    }
}

/// [`Flow::flags`]: rewrite the destination to `(ip, port)`.
pub const FLOW_DNAT: u16 = 1;
/// Rewrite the source to `(ip, port)`.
pub const FLOW_SNAT: u16 = 2;
/// Send the packet (after any rewrite) over VXLAN to host `via`: the ingress
/// node of a published-port flow whose backend is here.
pub const FLOW_VIA: u16 = 4;

/// What to do with the packets of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// [`FLOW_DNAT`]: the new destination, network byte order.
    pub ip: [u8; 4],
    /// Network byte order; 0 keeps the port.
    pub port: [u8; 2],
    pub flags: u16,
    /// Underlay address of the ingress node ([`FLOW_VIA`]).
    pub via: [u8; 4],
    /// [`FLOW_SNAT`]: the new source, network byte order.
    pub src_ip: [u8; 4],
    /// Network byte order; 0 keeps the port.
    pub src_port: [u8; 2],
    pub pad: [u8; 2],
    /// Non-zero: after the rewrite the packet belongs to this network (a
    /// task's connection to a published port crosses from its own network
    /// to ingress, and its replies back).
    pub vni: u32,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 24);

/// This host's own endpoint on the ingress network (array of one; zero
/// until the host has one): the source tasks' connections to published
/// ports take on ingress.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Network byte order.
    pub ip: [u8; 4],
    pub vni: u32,
}
const _: () = assert!(core::mem::size_of::<HostEndpoint>() == 8);

/// The backend slot a flow hash picks among `count` (non-zero).
#[must_use]
pub const fn pick(hash: u32, count: u32) -> u32 {
    // Multiply-shift: as even as modulo, no division in the program.
    ((hash as u64 * count as u64) >> 32) as u32
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` structs of integers and byte arrays with explicit
    // padding fields; every bit pattern is valid.
    unsafe impl aya::Pod for super::FrontendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Frontend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostEndpoint {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_stay_in_range_and_spread() {
        let mut seen = [0u32; 3];
        for i in 0..3000u32 {
            let k = FlowKey {
                src: [10, 0, 1, 5],
                dst: [10, 0, 1, 2],
                sport: (i as u16).to_be_bytes(),
                dport: [0, 80],
                proto: 6,
                pad: [0; 3],
            };
            let s = pick(k.hash(), 3);
            assert!(s < 3);
            seen[s as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
        assert_eq!(pick(u32::MAX, 1), 0);
    }

    #[test]
    fn reversing_twice_is_identity() {
        let k = FlowKey {
            src: [1, 2, 3, 4],
            dst: [5, 6, 7, 8],
            sport: [1, 2],
            dport: [3, 4],
            proto: 17,
            pad: [0; 3],
        };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().src, [5, 6, 7, 8]);
        assert_eq!(k.reversed().sport, [3, 4]);
    }
}
