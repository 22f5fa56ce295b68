//! XDP on the underlay interface: drops VXLAN to our port that is malformed,
//! from a non-member host or for a VNI this host does not have, before the
//! kernel builds an skb for it. Everything else passes (TC decapsulates).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use swarm_common::{
    overlay::DropReason,
    wire::{
        ETH_HDR_LEN, ETH_P_IP, EthHdr, IPPROTO_UDP, IPV4_HDR_LEN, Ipv4Hdr, UDP_HDR_LEN, UdpHdr, VxlanHdr,
    },
};

use super::{OVERLAY_NETWORKS, count_drop, host_config, is_member};
use crate::packet::ptr_at;

#[xdp]
pub fn xdp_underlay(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    match check(start, end) {
        Ok(()) => xdp_action::XDP_PASS,
        Err(reason) => {
            count_drop(reason, (end - start) as u32);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn check(start: usize, end: usize) -> Result<(), DropReason> {
    let Some(cfg) = host_config() else { return Ok(()) };
    let Some(eth) = ptr_at::<EthHdr>(start, end, 0) else { return Ok(()) };
    // SAFETY: `ptr_at` checked the bounds.
    if unsafe { (*eth).ether_type() } != ETH_P_IP {
        return Ok(());
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(start, end, ETH_HDR_LEN) else { return Ok(()) };
    // SAFETY: as above.
    let ip = unsafe { *ip };
    if ip.version() != 4 || ip.ihl() != 5 || ip.proto != IPPROTO_UDP || ip.is_fragment() {
        return Ok(());
    }
    let Some(udp) = ptr_at::<UdpHdr>(start, end, ETH_HDR_LEN + IPV4_HDR_LEN) else { return Ok(()) };
    // SAFETY: as above.
    if unsafe { (*udp).dst_port() } != cfg.vxlan_port {
        return Ok(());
    }
    let vxlan = ptr_at::<VxlanHdr>(start, end, ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN)
        .ok_or(DropReason::MalformedVxlan)?;
    // SAFETY: as above.
    let vxlan = unsafe { *vxlan };
    if !vxlan.has_vni_flag() {
        return Err(DropReason::MalformedVxlan);
    }
    if !is_member(ip.src) {
        return Err(DropReason::NonMemberSource);
    }
    // SAFETY: plain data, only read.
    if unsafe { OVERLAY_NETWORKS.get(&vxlan.vni()) }.is_none() {
        return Err(DropReason::UnknownVni);
    }
    Ok(())
}
