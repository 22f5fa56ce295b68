//! TC on the ingress of the underlay interface: VXLAN for a network on this
//! host, from a member host, for an endpoint on this host, is decapsulated
//! and delivered into that endpoint. VXLAN that fails a check is dropped and
//! counted; everything that is not VXLAN to our port passes untouched.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_redirect_peer,
    macros::classifier,
    programs::TcContext,
};
use swarm_common::{
    VXLAN_OVERHEAD,
    overlay::{DropReason, EndpointKey, Event},
    wire::{
        ETH_HDR_LEN, ETH_P_IP, EthHdr, IPPROTO_UDP, IPV4_HDR_LEN, Ipv4Hdr, UDP_HDR_LEN, UdpHdr, VxlanHdr,
    },
};

use super::{OVERLAY_ENDPOINTS, OVERLAY_NETWORKS, count_drop, count_event, host_config, is_member};
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

/// `Ok(TC_ACT_OK)` for anything that is not VXLAN to our port.
#[inline(always)]
fn try_from_underlay(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(cfg) = host_config() else { return Ok(TC_ACT_OK) };
    let Some(eth) = tc_read::<EthHdr>(ctx, 0) else { return Ok(TC_ACT_OK) };
    if eth.ether_type() != ETH_P_IP {
        return Ok(TC_ACT_OK);
    }
    let Some(ip) = tc_read::<Ipv4Hdr>(ctx, ETH_HDR_LEN) else { return Ok(TC_ACT_OK) };
    if ip.version() != 4 || ip.ihl() != 5 || ip.proto != IPPROTO_UDP || ip.is_fragment() {
        return Ok(TC_ACT_OK);
    }
    let Some(udp) = tc_read::<UdpHdr>(ctx, UDP_OFF) else { return Ok(TC_ACT_OK) };
    if udp.dst_port() != cfg.vxlan_port {
        return Ok(TC_ACT_OK);
    }
    let vxlan: VxlanHdr = tc_read(ctx, VXLAN_OFF).ok_or(DropReason::MalformedVxlan)?;
    if !vxlan.has_vni_flag() {
        return Err(DropReason::MalformedVxlan);
    }
    if !is_member(ip.src) {
        return Err(DropReason::NonMemberSource);
    }
    let vni = vxlan.vni();
    // SAFETY: plain data, only read.
    if unsafe { OVERLAY_NETWORKS.get(&vni) }.is_none() {
        return Err(DropReason::UnknownVni);
    }
    let inner_eth: EthHdr = tc_read(ctx, INNER_ETH_OFF).ok_or(DropReason::MalformedVxlan)?;
    if inner_eth.ether_type() != ETH_P_IP {
        return Err(DropReason::MalformedVxlan);
    }
    let inner_dst: [u8; 4] = tc_read(ctx, INNER_IP_OFF + 16).ok_or(DropReason::MalformedVxlan)?;
    // SAFETY: plain data, only read.
    let dst = unsafe { OVERLAY_ENDPOINTS.get(&EndpointKey { vni, ip: inner_dst }) }
        .copied()
        .filter(|e| e.is_local())
        .ok_or(DropReason::UnknownLocalDestination)?;

    // Remove outer IPv4 + UDP + VXLAN + inner Ethernet after the outer
    // Ethernet header, then put the inner Ethernet header in its place.
    ctx.adjust_room(-(VXLAN_OVERHEAD as i32), BPF_ADJ_ROOM_MAC, u64::from(BPF_F_ADJ_ROOM_FIXED_GSO))
        .map_err(|_| DropReason::AdjustRoomFailed)?;
    let p = tc_ptr::<EthHdr>(ctx, 0).ok_or(DropReason::AdjustRoomFailed)?;
    // SAFETY: the pointer was bounds-checked after the last packet change.
    unsafe { core::ptr::write_unaligned(p, inner_eth) };
    count_event(Event::Decapsulated, ctx.len());
    // SAFETY: helper call with plain integer arguments.
    unsafe { bpf_redirect_peer(dst.ifindex, 0) };
    Ok(TC_ACT_REDIRECT)
}
