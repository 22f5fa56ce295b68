//! TC on the ingress of the underlay interface.
//!
//! - VXLAN for a network on this host, from a member host, is decapsulated.
//!   Its packet is delivered into the endpoint it is for; a reply of a
//!   balanced flow has its source turned back first, and one for an outside
//!   client (a published-port reply from a backend on another node) leaves
//!   by the underlay. The backend's node of a published-port flow remembers
//!   which node the request came by, for the replies.
//! - TCP/UDP to this node's address on a published port is given a backend
//!   on the ingress network, rewritten to it (the client's address is kept)
//!   and delivered into it, or carried over VXLAN to its node.
//!
//! VXLAN or published-port traffic that fails a check is dropped and
//! counted; everything else passes untouched.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::classifier,
    programs::TcContext,
};
use swarm_common::{
    VXLAN_OVERHEAD,
    lb::{FLOW_DNAT, FLOW_SNAT, FLOW_VIA, Flow, FrontendKey},
    overlay::{DropReason, EndpointInfo, EndpointKey, Event, GATEWAY_MAC, HostConfig},
    wire::{
        ETH_HDR_LEN, ETH_P_IP, EthHdr, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, Ipv4Hdr, UDP_HDR_LEN, UdpHdr,
        VxlanHdr,
    },
};

use super::{
    OVERLAY_ENDPOINTS, OVERLAY_NETWORKS, count_drop, count_event, deliver_local,
    from_endpoint::encapsulate,
    host_config, is_member,
    lb::{self, L4Tuple, Side},
};
use crate::packet::{tc_ptr, tc_read};

const UDP_OFF: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
const VXLAN_OFF: usize = UDP_OFF + UDP_HDR_LEN;
const INNER_ETH_OFF: usize = VXLAN_OFF + 8;
const INNER_IP_OFF: usize = INNER_ETH_OFF + ETH_HDR_LEN;

#[classifier]
pub fn tc_from_underlay(ctx: TcContext) -> i32 {
    match try_from_underlay(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_drop(reason, ctx.len());
            TC_ACT_SHOT
        }
    }
}

/// `Ok(TC_ACT_OK)` for anything that is neither VXLAN to our port nor to a
/// published port.
#[inline(always)]
fn try_from_underlay(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = host_config() else { return Ok(TC_ACT_OK) };
    let Some(eth) = tc_read::<EthHdr>(ctx, 0) else { return Ok(TC_ACT_OK) };
    if eth.ether_type() != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let Some(ip) = tc_read::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else { return Ok(TC_ACT_OK) };
    if ip.version() != 4 {
        return Ok(TC_ACT_OK);
    }
    if ip.proto == IPPROTO_UDP
        && ip.ihl() == 5
        && !ip.is_fragment()
        && tc_read::<UdpHdr>(ctx, UDP_OFF).is_some_and(|u| u.dst_port() == cfg.vxlan_port)
    {
        return vxlan(ctx, &cfg, &ip);
    }
    if ip.dst == cfg.underlay_ip && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        return published(ctx, &cfg, &ip);
    }
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn endpoint(vni: u32, ip: [u8; 4]) -> Option<EndpointInfo> {
    // SAFETY: plain data, only read.
    unsafe { OVERLAY_ENDPOINTS.get(&EndpointKey { vni, ip }) }.copied()
}

/// The destination port of a TCP/UDP packet whose IPv4 header has options
/// or which is a first fragment; `None` for later fragments (no L4 header).
#[inline(always)]
fn port_of_unusable(ctx: &TcContext, ip: &Ipv4Hdr) -> Option<u16> {
    if u16::from_be_bytes(ip.frag_off) & swarm_common::wire::IPV4_OFFSET_MASK != 0 {
        return None;
    }
    let off = ETH_HDR_LEN + usize::from(ip.ihl()) * 4;
    if off > 74 {
        return None;
    }
    let p: [u8; 2] = ctx.load(off + 2).ok()?;
    Some(u16::from_be_bytes(p))
}

/// A packet to this node's address: balanced if its port is published.
#[inline(always)]
fn published(ctx: &TcContext, cfg: &HostConfig, ip: &Ipv4Hdr) -> Result<i32, DropReason> {
    let t = match lb::tuple(ctx, ip) {
        L4Tuple::Flow(t) => t,
        L4Tuple::Other => return Ok(TC_ACT_OK),
        L4Tuple::Unusable => {
            let published = port_of_unusable(ctx, ip)
                .is_some_and(|p| lb::frontend(&FrontendKey::published(p, ip.proto)).is_some());
            return if published { Err(DropReason::MalformedServicePacket) } else { Ok(TC_ACT_OK) };
        }
    };
    let Some(fe) = lb::frontend(&FrontendKey::published(u16::from_be_bytes(t.dport), t.proto)) else {
        return Ok(TC_ACT_OK);
    };
    let syn = lb::is_syn(ctx, &t);
    let known =
        lb::flow(&t).filter(|f| !syn && f.flags & FLOW_DNAT != 0 && endpoint(fe.backend_vni, f.ip).is_some());
    let f = match known {
        Some(f) => f,
        None => {
            let f = lb::new_flow(&t, &fe)?;
            count_event(Event::NewFlow, ctx.len());
            f
        }
    };
    let dst = endpoint(fe.backend_vni, f.ip).ok_or(DropReason::UnknownDestination)?;
    lb::rewrite(ctx, &t, Side::Dst, f.ip, f.port)?;
    let frame = EthHdr { dst: dst.mac, src: GATEWAY_MAC, ether_type: ETH_P_IP.to_be_bytes() };
    if dst.is_local() {
        let p = tc_ptr::<EthHdr>(ctx, 0).ok_or(DropReason::Malformed)?;
        // SAFETY: `tc_ptr` checked the bounds.
        unsafe { core::ptr::write_unaligned(p, frame) };
        count_event(Event::DeliveredLocally, ctx.len());
        // SAFETY: helper call with plain integer arguments.
        unsafe { bpf_redirect_peer(dst.ifindex, 0) };
        return Ok(TC_ACT_REDIRECT);
    }
    encapsulate(ctx, fe.backend_vni, &frame, dst.host_ip, cfg)?;
    count_event(Event::Encapsulated, ctx.len());
    // SAFETY: helper call; a null parameter block means "use the packet's destination".
    unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(TC_ACT_REDIRECT)
}

/// VXLAN to our port.
#[inline(always)]
fn vxlan(ctx: &TcContext, cfg: &HostConfig, ip: &Ipv4Hdr) -> Result<i32, DropReason> {
    let vxlan: VxlanHdr = tc_read(ctx, VXLAN_OFF).ok_or(DropReason::MalformedVxlan)?;
    if !vxlan.has_vni_flag() {
        return Err(DropReason::MalformedVxlan);
    }
    if !is_member(ip.src) {
        return Err(DropReason::NonMemberSource);
    }
    let vni = vxlan.vni();
    // SAFETY: plain data, only read.
    let net = unsafe { OVERLAY_NETWORKS.get(&vni) }.copied().ok_or(DropReason::UnknownVni)?;
    let inner_eth: EthHdr = tc_read(ctx, INNER_ETH_OFF).ok_or(DropReason::MalformedVxlan)?;
    if inner_eth.ether_type() != ETH_P_IP {
        return Err(DropReason::MalformedVxlan);
    }
    let inner_ip: Ipv4Hdr = tc_read(ctx, INNER_IP_OFF).ok_or(DropReason::MalformedVxlan)?;
    let dst = endpoint(vni, inner_ip.dst).filter(EndpointInfo::is_local);
    let to_client = dst.is_none() && !net.contains(inner_ip.dst);
    if dst.is_none() && !to_client {
        return Err(DropReason::UnknownLocalDestination);
    }

    // Remove outer IPv4 + UDP + VXLAN + inner Ethernet after the outer
    // Ethernet header, then put the inner Ethernet header in its place.
    ctx.adjust_room(-(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, u64::from(BPF_F_ADJ_ROOM_FIXED_GSO))
        .map_err(|_| DropReason::AdjustRoomFailed)?;
    let p = tc_ptr::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustRoomFailed)?;
    // SAFETY: the pointer was bounds-checked after the last packet change.
    unsafe { core::ptr::write_unaligned(p, inner_eth) };
    count_event(Event::Decapsulated, ctx.len());

    let mut translated = false;
    let mut dst = dst;
    if let L4Tuple::Flow(t) = lb::tuple(ctx, &inner_ip) {
        match lb::flow(&t) {
            Some(f) if f.flags & FLOW_SNAT != 0 => {
                lb::rewrite(ctx, &t, Side::Src, f.src_ip, f.src_port)?;
                translated = true;
                count_event(Event::ReverseTranslated, ctx.len());
                if f.flags & FLOW_DNAT != 0 {
                    // A reply to a task's connection to a published port:
                    // back to the task, on its own network.
                    lb::rewrite(ctx, &t, Side::Dst, f.ip, f.port)?;
                    let to =
                        endpoint(if f.vni == 0 { vni } else { f.vni }, f.ip).filter(EndpointInfo::is_local);
                    let to = to.ok_or(DropReason::UnknownLocalDestination)?;
                    let p = tc_ptr::<[u8; 6]>(ctx, 0).ok_or(DropReason::Malformed)?;
                    // SAFETY: `tc_ptr` checked the bounds.
                    unsafe { *p = to.mac };
                    dst = Some(to);
                }
            }
            _ if dst.is_some() && !net.contains(inner_ip.src) => {
                // A published-port request from an outside client, carried
                // here by the node it came in by: replies go back that way.
                let reply = t.reversed();
                if lb::flow(&reply).is_none_or(|f| f.flags != FLOW_VIA || f.via != ip.src) {
                    let back = Flow { flags: FLOW_VIA, via: ip.src, ..Flow::default() };
                    lb::remember(&reply, &back);
                }
            }
            _ => {}
        }
    }
    match dst {
        Some(dst) => Ok(deliver_local(&dst, true)),
        None if translated => {
            count_event(Event::SentToClient, ctx.len());
            // SAFETY: helper call; a null parameter block means "use the packet's destination".
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) };
            Ok(TC_ACT_REDIRECT)
        }
        // An outside client's packet that no flow translates back.
        None => Err(DropReason::UnknownLocalDestination),
    }
}
