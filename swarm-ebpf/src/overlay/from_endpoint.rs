//! TC on the ingress of an endpoint's host-side veth: every packet the
//! container sends. ARP is answered from the endpoint table (and for service
//! VIPs); TCP/UDP to a service VIP is given a backend (`lb`), and a reply of
//! a balanced flow has its source turned back; then IPv4 for an endpoint on
//! this host goes straight to its veth's peer, IPv4 for a remote endpoint is
//! wrapped in VXLAN (outer Ethernet/IPv4/UDP/VXLAN, inner frame unchanged)
//! and sent out of the underlay interface, and a published-port reply goes
//! to its outside client (out of the underlay, or over VXLAN to the node the
//! request came in by); everything else is dropped and counted.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_ADJ_ROOM_NO_CSUM_RESET, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_get_hash_recalc, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use swarm_common::{
    VXLAN_OVERHEAD,
    lb::{FLOW_DNAT, FLOW_SNAT, FLOW_VIA, Flow, FlowKey, FrontendKey},
    overlay::{
        DropReason, EndpointInfo, EndpointKey, Event, GATEWAY_MAC, HostConfig, LOCAL_NETKIT, LocalEndpoint,
        OUTER_TTL, SRC_PORT_MASK, SRC_PORT_MIN,
    },
    wire::{
        ARP_REPLY, ARP_REQUEST, ETH_HDR_LEN, ETH_P_ARP, ETH_P_IP, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr,
        VXLAN_FLAG_I, VxlanHdr,
    },
};

use super::{
    OVERLAY_ENDPOINTS, OVERLAY_LOCAL, OVERLAY_NETWORKS, count_drop, count_event, deliver_local, host_config,
    is_member,
    lb::{self, L4Tuple, Side},
};
use crate::packet::{tc_ptr, tc_read};

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header's length.
const ENCAP_L2_ETH_HLEN: u64 = (ETH_HDR_LEN as u64) << 56;

#[classifier]
pub fn tc_from_endpoint(ctx: TcContext) -> i32 {
    match try_from_endpoint(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, ctx.len());
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn try_from_endpoint(ctx: &TcContext) -> Result<i32, DropReason> {
    // SAFETY: reading a field of the context the kernel passed us.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain data, only read.
    let me = *unsafe { OVERLAY_LOCAL.get(&ifindex) }.ok_or(DropReason::UnknownSourceEndpoint)?;
    let eth: EthHdr = tc_read(ctx, 0).ok_or(DropReason::Malformed)?;
    match eth.ether_type() {
        ETH_P_ARP => arp_reply(ctx, &me, ifindex),
        ETH_P_IP => ipv4(ctx, &me, &eth),
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// Answers an ARP request for an address in the endpoint's network by
/// turning the request into the reply and sending it back to the endpoint.
#[inline(always)]
fn arp_reply(ctx: &TcContext, me: &LocalEndpoint, ifindex: u32) -> Result<i32, DropReason> {
    let arp: [u8; 28] = ctx.load(ETH_HDR_LEN).map_err(|_| DropReason::Malformed)?;
    // Ethernet/IPv4 ARP only.
    if arp[0..6] != [0, 1, 8, 0, 6, 4] {
        return Err(DropReason::UnsupportedProtocol);
    }
    if u16::from_be_bytes([arp[6], arp[7]]) != ARP_REQUEST {
        return Err(DropReason::UnsupportedProtocol);
    }
    let sender_mac = [arp[8], arp[9], arp[10], arp[11], arp[12], arp[13]];
    let sender_ip = [arp[14], arp[15], arp[16], arp[17]];
    let target_ip = [arp[24], arp[25], arp[26], arp[27]];
    if sender_ip != me.ip {
        return Err(DropReason::SpoofedSource);
    }
    // SAFETY: plain data, only read.
    let net = unsafe { OVERLAY_NETWORKS.get(&me.vni) }.ok_or(DropReason::UnknownSourceEndpoint)?;
    let key = EndpointKey { vni: me.vni, ip: target_ip };
    // SAFETY: plain data, only read.
    let target_mac = if let Some(e) = unsafe { OVERLAY_ENDPOINTS.get(&key) } {
        e.mac
    } else if target_ip == net.gateway_ip || lb::frontend(&FrontendKey::vip(me.vni, target_ip)).is_some() {
        // The gateway, and service VIPs: the datapath translates packets to
        // a VIP before they are delivered, so any address does.
        GATEWAY_MAC
    } else {
        return Err(DropReason::ArpUnknownTarget);
    };
    let mut out = [0u8; 42];
    out[0..6].copy_from_slice(&sender_mac);
    out[6..12].copy_from_slice(&target_mac);
    out[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    out[14..20].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
    out[20..22].copy_from_slice(&ARP_REPLY.to_be_bytes());
    out[22..28].copy_from_slice(&target_mac);
    out[28..32].copy_from_slice(&target_ip);
    out[32..38].copy_from_slice(&sender_mac);
    out[38..42].copy_from_slice(&sender_ip);
    ctx.store(0, &out, 0).map_err(|_| DropReason::Malformed)?;
    count_event(Event::ArpReplied, ctx.len());
    // Out of the host-side veth, i.e. back into the endpoint.
    // SAFETY: helper call with plain integer arguments.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT)
}

#[inline(always)]
fn ipv4(ctx: &TcContext, me: &LocalEndpoint, eth: &EthHdr) -> Result<i32, DropReason> {
    let ip: Ipv4Hdr = tc_read(ctx, ETH_HDR_LEN).ok_or(DropReason::Malformed)?;
    if ip.version() != 4 || ip.ihl() < 5 {
        return Err(DropReason::Malformed);
    }
    if ip.src != me.ip {
        return Err(DropReason::SpoofedSource);
    }
    let mut dst_ip = ip.dst;
    let mut via = None;
    let mut translated = false;
    // The network the packet is routed in (a task's connection to a
    // published port moves to ingress, and its replies back).
    let mut vni = me.vni;
    match lb::tuple(ctx, &ip) {
        L4Tuple::Flow(t) => {
            let syn = lb::is_syn(ctx, &t);
            let mut f = lb::flow(&t);
            // A flow whose backend has gone is given a new one, and so is a
            // new connection that reuses an old one's ports.
            if let Some(x) = f
                && x.flags & FLOW_DNAT != 0
                && (syn || endpoint(if x.vni == 0 { me.vni } else { x.vni }, x.ip).is_none())
            {
                f = None;
            }
            if f.is_none() {
                f = balance(ctx, me, &ip, &t)?;
                if f.is_none() && (syn || t.proto == IPPROTO_UDP) {
                    // Not balanced: an old balanced flow's reply translation
                    // for these ports must not catch this flow's replies.
                    lb::forget(&t.reversed());
                }
            }
            if let Some(f) = f {
                if f.flags & FLOW_DNAT != 0 {
                    lb::rewrite(ctx, &t, Side::Dst, f.ip, f.port)?;
                    dst_ip = f.ip;
                }
                if f.flags & FLOW_SNAT != 0 {
                    lb::rewrite(ctx, &t, Side::Src, f.src_ip, f.src_port)?;
                    translated = true;
                    count_event(Event::ReverseTranslated, ctx.len());
                }
                if f.flags & FLOW_VIA != 0 {
                    via = Some(f.via);
                }
                if f.vni != 0 {
                    vni = f.vni;
                }
            }
        }
        L4Tuple::Unusable if lb::frontend(&FrontendKey::vip(me.vni, ip.dst)).is_some() => {
            return Err(DropReason::MalformedServicePacket);
        }
        L4Tuple::Unusable | L4Tuple::Other => {}
    }
    if let Some(host_ip) = via {
        // A reply to an outside client whose request came in by another node.
        let cfg = host_config().ok_or(DropReason::NotConfigured)?;
        let inner = EthHdr { dst: GATEWAY_MAC, src: eth.src, ether_type: eth.ether_type };
        encapsulate(ctx, vni, &inner, host_ip, &cfg)?;
        count_event(Event::Encapsulated, ctx.len());
        // SAFETY: helper call; a null parameter block means "use the packet's destination".
        unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
        return Ok(TC_ACT_REDIRECT);
    }
    let Some(dst) = endpoint(vni, dst_ip) else {
        // SAFETY: plain data, only read.
        let in_subnet = unsafe { OVERLAY_NETWORKS.get(&vni) }.is_some_and(|n| n.contains(dst_ip));
        if translated && !in_subnet {
            // A published-port reply to an outside client, translated back
            // to this node's address: out of the underlay.
            let cfg = host_config().ok_or(DropReason::NotConfigured)?;
            count_event(Event::SentToClient, ctx.len());
            // SAFETY: as above.
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
            return Ok(TC_ACT_REDIRECT);
        }
        return Err(if in_subnet { DropReason::UnknownDestination } else { DropReason::NoRoute });
    };
    if dst.is_local() {
        // Same host: into the destination endpoint directly (ingress to ingress).
        let p = tc_ptr::<[u8; 6]>(ctx, 0).ok_or(DropReason::Malformed)?;
        // SAFETY: `tc_ptr` checked the bounds.
        unsafe { *p = dst.mac };
        count_event(Event::DeliveredLocally, ctx.len());
        return Ok(deliver_local(&dst, me.flags & LOCAL_NETKIT == 0));
    }
    let cfg = host_config().ok_or(DropReason::NotConfigured)?;
    let inner = EthHdr { dst: dst.mac, src: eth.src, ether_type: eth.ether_type };
    encapsulate(ctx, vni, &inner, dst.host_ip, &cfg)?;
    count_event(Event::Encapsulated, ctx.len());
    // The kernel resolves the underlay next hop and fills in the outer MACs.
    // SAFETY: helper call; a null parameter block means "use the packet's destination".
    unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(TC_ACT_REDIRECT)
}

/// A new flow from a task: to a VIP of its network, or to a published port
/// on a node's address (from this host's address on ingress). `None`: not
/// for a service.
#[inline(always)]
fn balance(
    ctx: &TcContext,
    me: &LocalEndpoint,
    ip: &Ipv4Hdr,
    t: &FlowKey,
) -> Result<Option<Flow>, DropReason> {
    if let Some(fe) = lb::frontend(&FrontendKey::vip(me.vni, ip.dst)) {
        let f = lb::new_flow(t, &fe)?;
        count_event(Event::NewFlow, ctx.len());
        return Ok(Some(f));
    }
    // SAFETY: plain data, only read.
    if unsafe { OVERLAY_NETWORKS.get(&me.vni) }.is_some_and(|n| n.contains(ip.dst)) {
        return Ok(None);
    }
    let Some(cfg) = host_config() else { return Ok(None) };
    if ip.dst != cfg.underlay_ip && !is_member(ip.dst) {
        return Ok(None);
    }
    let (Some(fe), Some(host)) =
        (lb::frontend(&FrontendKey::published(u16::from_be_bytes(t.dport), t.proto)), lb::host_endpoint())
    else {
        return Ok(None);
    };
    let f = lb::new_published_flow(t, &fe, &host, me.vni)?;
    count_event(Event::NewFlow, ctx.len());
    Ok(Some(f))
}

#[inline(always)]
fn endpoint(vni: u32, ip: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: plain data, only read.
    unsafe { OVERLAY_ENDPOINTS.get(&EndpointKey { vni, ip }) }.copied()
}

/// Outer Ethernet, IPv4, UDP and VXLAN headers followed by the inner
/// Ethernet header: what encapsulation puts in front of the inner IPv4.
#[repr(C)]
#[derive(Clone, Copy)]
struct VxlanHeaders {
    outer_eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    vxlan: VxlanHdr,
    inner_eth: EthHdr,
}
const _: () = assert!(core::mem::size_of::<VxlanHeaders>() == ETH_HDR_LEN + VXLAN_OVERHEAD);

/// Prepends outer Ethernet (MACs left to the neighbour subsystem), IPv4
/// (checksum computed, to `host_ip`), UDP (source port from the flow hash,
/// checksum 0) and VXLAN (I flag, `vni`), and puts `inner` in place of the
/// frame's own Ethernet header.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    vni: u32,
    inner: &EthHdr,
    host_ip: [u8; 4],
    cfg: &HostConfig,
) -> Result<(), DropReason> {
    let inner_len = ctx.len();
    // SAFETY: helper call on the context the kernel passed us.
    let hash = unsafe { bpf_get_hash_recalc(ctx.skb.skb) };
    let src_port = SRC_PORT_MIN | (((hash ^ (hash >> 16)) as u16) & SRC_PORT_MASK);

    let base = u64::from(BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_NO_CSUM_RESET);
    let encap =
        u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH)
            | ENCAP_L2_ETH_HLEN;
    let grow = VXLAN_OVERHEAD as i32;
    if ctx.adjust_room(grow, BPF_ADJ_ROOM_MAC, base | encap).is_err()
        && ctx.adjust_room(grow, BPF_ADJ_ROOM_MAC, base).is_err()
    {
        return Err(DropReason::AdjustRoomFailed);
    }

    let vni = vni.to_be_bytes();
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((inner_len + 36) as u16).to_be_bytes(),
        id: [0; 2],
        frag_off: [0; 2],
        ttl: OUTER_TTL,
        proto: IPPROTO_UDP,
        check: [0; 2],
        src: cfg.underlay_ip,
        dst: host_ip,
    };
    ip.check = ip.checksum().to_be_bytes();
    let headers = VxlanHeaders {
        // Addresses filled in by bpf_redirect_neigh.
        outer_eth: EthHdr { dst: [0; 6], src: [0; 6], ether_type: ETH_P_IP.to_be_bytes() },
        ip,
        udp: UdpHdr {
            src_port: src_port.to_be_bytes(),
            dst_port: cfg.vxlan_port.to_be_bytes(),
            len: ((inner_len + 16) as u16).to_be_bytes(),
            check: [0; 2],
        },
        vxlan: VxlanHdr {
            flags: VXLAN_FLAG_I,
            reserved1: [0; 3],
            vni: [vni[1], vni[2], vni[3]],
            reserved2: 0,
        },
        inner_eth: *inner,
    };
    let p = tc_ptr::<VxlanHeaders>(ctx, 0).ok_or(DropReason::AdjustRoomFailed)?;
    // SAFETY: the pointer was bounds-checked after the last packet change.
    unsafe { core::ptr::write_unaligned(p, headers) };
    Ok(())
}
