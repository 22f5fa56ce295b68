//! Service load balancing: the maps, choosing a backend for a new flow, and
//! rewriting addresses with their checksums. Used by `from_endpoint` (VIPs,
//! replies leaving a backend) and `from_underlay` (published ports, replies
//! arriving over VXLAN). Every packet handled here has its IPv4 header right
//! after the Ethernet header.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    macros::map,
    maps::{Array, HashMap, LruHashMap},
    programs::TcContext,
};
use swarm_common::{
    lb::{
        Backend, BackendKey, FLOW_DNAT, FLOW_SNAT, Flow, FlowKey, Frontend, FrontendKey, HostEndpoint,
        MAX_BACKEND_SLOTS, MAX_FLOWS, MAX_FRONTENDS, pick,
    },
    overlay::DropReason,
    wire::{ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, Ipv4Hdr, TCP_CSUM_OFF, UDP_CSUM_OFF},
};

use crate::packet::tc_ptr;

#[map]
pub static SERVICE_FRONTENDS: HashMap<FrontendKey, Frontend> = HashMap::with_max_entries(MAX_FRONTENDS, 0);

#[map]
pub static SERVICE_BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKEND_SLOTS, 0);

#[map]
pub static SERVICE_FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static LB_HOST: Array<HostEndpoint> = Array::with_max_entries(1, 0);

/// This host's endpoint on ingress, once it has one.
#[inline(always)]
pub fn host_endpoint() -> Option<HostEndpoint> {
    LB_HOST.get(0).copied().filter(|h| h.vni != 0)
}

const L3: usize = ETH_HDR_LEN;
const L4: usize = ETH_HDR_LEN + IPV4_HDR_LEN;

/// What the balancer can make of a packet.
#[derive(Clone, Copy)]
pub enum L4Tuple {
    /// TCP or UDP with its whole header in the packet.
    Flow(FlowKey),
    /// Another protocol: not the balancer's business.
    Other,
    /// TCP or UDP that cannot be translated safely: a fragment, IP options
    /// or a truncated header.
    Unusable,
}

/// The 5-tuple of the IPv4 packet `ip` (already read from the packet).
#[inline(always)]
pub fn tuple(ctx: &TcContext, ip: &Ipv4Hdr) -> L4Tuple {
    let need = match ip.proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        _ => return L4Tuple::Other,
    };
    if ip.ihl() != 5 || ip.is_fragment() {
        return L4Tuple::Unusable;
    }
    let ok =
        if need == 20 { tc_ptr::<[u8; 20]>(ctx, L4).is_some() } else { tc_ptr::<[u8; 8]>(ctx, L4).is_some() };
    let Some(p) = tc_ptr::<[u8; 4]>(ctx, L4).filter(|_| ok) else { return L4Tuple::Unusable };
    // SAFETY: `tc_ptr` checked the bounds.
    let ports = unsafe { core::ptr::read_unaligned(p) };
    L4Tuple::Flow(FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: [ports[0], ports[1]],
        dport: [ports[2], ports[3]],
        proto: ip.proto,
        pad: [0; 3],
    })
}

#[inline(always)]
pub fn flow(key: &FlowKey) -> Option<Flow> {
    // SAFETY: plain data, only read.
    unsafe { SERVICE_FLOWS.get(key) }.copied()
}

#[inline(always)]
pub fn frontend(key: &FrontendKey) -> Option<Frontend> {
    // SAFETY: plain data, only read.
    unsafe { SERVICE_FRONTENDS.get(key) }.copied()
}

/// A backend of `fe` for the flow `key`.
#[inline(always)]
fn choose(key: &FlowKey, fe: &Frontend) -> Result<Backend, DropReason> {
    if fe.count == 0 {
        return Err(DropReason::NoBackend);
    }
    let slot = pick(key.hash(), fe.count);
    // SAFETY: plain data, only read.
    unsafe { SERVICE_BACKENDS.get(&BackendKey { id: fe.id, slot }) }.copied().ok_or(DropReason::NoBackend)
}

/// Records both directions; a full table evicts its least recently used
/// entries, and a packet that could not be recorded is better dropped than
/// sent with no way back.
#[inline(always)]
fn record(key: &FlowKey, forward: &Flow, reply_key: &FlowKey, reply: &Flow) -> Result<(), DropReason> {
    SERVICE_FLOWS.insert(key, forward, 0).map_err(|_| DropReason::NoBackend)?;
    SERVICE_FLOWS.insert(reply_key, reply, 0).map_err(|_| DropReason::NoBackend)
}

/// Gives the flow `key` (to frontend `fe`) a backend and records both
/// directions: the flow's packets go to the backend, the replies' source
/// becomes the frontend again. Returns the forward translation.
#[inline(always)]
pub fn new_flow(key: &FlowKey, fe: &Frontend) -> Result<Flow, DropReason> {
    let b = choose(key, fe)?;
    let translate_port = fe.target_port != [0, 0];
    let forward = Flow { ip: b.ip, port: fe.target_port, flags: FLOW_DNAT, ..Flow::default() };
    let reply_key = FlowKey {
        src: b.ip,
        dst: key.src,
        sport: if translate_port { fe.target_port } else { key.dport },
        dport: key.sport,
        proto: key.proto,
        pad: [0; 3],
    };
    let reply = Flow {
        src_ip: key.dst,
        src_port: if translate_port { key.dport } else { [0, 0] },
        flags: FLOW_SNAT,
        ..Flow::default()
    };
    record(key, &forward, &reply_key, &reply)?;
    Ok(forward)
}

/// A task's connection (`key`, on network `client_vni`) to a published
/// port `fe` on a node's address: to a backend on ingress, from this
/// host's address there (`host`), and back.
#[inline(always)]
pub fn new_published_flow(
    key: &FlowKey,
    fe: &Frontend,
    host: &HostEndpoint,
    client_vni: u32,
) -> Result<Flow, DropReason> {
    let b = choose(key, fe)?;
    let target = if fe.target_port == [0, 0] { key.dport } else { fe.target_port };
    let forward = Flow {
        ip: b.ip,
        port: target,
        flags: FLOW_DNAT | FLOW_SNAT,
        src_ip: host.ip,
        vni: fe.backend_vni,
        ..Flow::default()
    };
    let reply_key =
        FlowKey { src: b.ip, dst: host.ip, sport: target, dport: key.sport, proto: key.proto, pad: [0; 3] };
    let reply = Flow {
        ip: key.src,
        flags: FLOW_DNAT | FLOW_SNAT,
        src_ip: key.dst,
        src_port: key.dport,
        vni: client_vni,
        ..Flow::default()
    };
    record(key, &forward, &reply_key, &reply)?;
    Ok(forward)
}

/// True for a TCP segment that opens a connection (SYN without ACK).
#[inline(always)]
pub fn is_syn(ctx: &TcContext, t: &FlowKey) -> bool {
    t.proto == IPPROTO_TCP && ctx.load::<u8>(L4 + 13).is_ok_and(|f| f & 0x12 == 0x02)
}

/// Forgets the translation of `key`, if any.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = SERVICE_FLOWS.remove(key);
}

/// Records `flow` for `key` (no error if the table refuses: the next packet tries again).
#[inline(always)]
pub fn remember(key: &FlowKey, flow: &Flow) {
    let _ = SERVICE_FLOWS.insert(key, flow, 0);
}

/// Which address of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// Rewrites the source or destination address (and port, unless `port` is
/// 0) of the TCP/UDP packet described by `t`, fixing the IPv4 and L4
/// checksums (a UDP checksum of 0 stays 0).
#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    t: &FlowKey,
    side: Side,
    ip: [u8; 4],
    port: [u8; 2],
) -> Result<(), DropReason> {
    let (old_ip, old_port, ip_off, port_off) = match side {
        Side::Src => (t.src, t.sport, L3 + 12, L4),
        Side::Dst => (t.dst, t.dport, L3 + 16, L4 + 2),
    };
    let (csum_off, mangled) = if t.proto == IPPROTO_TCP {
        (L4 + TCP_CSUM_OFF, 0)
    } else {
        (L4 + UDP_CSUM_OFF, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let (from, to) = (u64::from(u32::from_ne_bytes(old_ip)), u64::from(u32::from_ne_bytes(ip)));
    let bad = |_| DropReason::MalformedServicePacket;
    if from != to {
        ctx.l4_csum_replace(csum_off, from, to, u64::from(BPF_F_PSEUDO_HDR) | mangled | 4).map_err(bad)?;
        ctx.l3_csum_replace(L3 + 10, from, to, 4).map_err(bad)?;
        ctx.store(ip_off, &ip, 0).map_err(bad)?;
    }
    if port != [0, 0] && port != old_port {
        let (from, to) = (u64::from(u16::from_ne_bytes(old_port)), u64::from(u16::from_ne_bytes(port)));
        ctx.l4_csum_replace(csum_off, from, to, mangled | 2).map_err(bad)?;
        ctx.store(port_off, &port, 0).map_err(bad)?;
    }
    Ok(())
}
