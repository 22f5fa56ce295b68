//! XDP on a host's underlay interface (ingress): counts VXLAN frames per VNI
//! and classifies every other frame; always returns `XDP_PASS`.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    macros::{map, xdp},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use swarm_common::{
    VXLAN_UDP_PORT,
    stats::{Counter, MAX_VNI_STATS, RX_CLASS_COUNT, RxClass, VniKey},
    wire::{
        ETH_HDR_LEN, ETH_P_IP, EthHdr, IPPROTO_UDP, IPV4_HDR_LEN, Ipv4Hdr, UDP_HDR_LEN, UdpHdr, VxlanHdr,
    },
};

use crate::packet::ptr_at;

#[map]
static VXLAN_VNI_STATS: PerCpuHashMap<VniKey, Counter> = PerCpuHashMap::with_max_entries(MAX_VNI_STATS, 0);

#[map]
static XDP_RX_CLASS_STATS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(RX_CLASS_COUNT, 0);

#[xdp]
pub fn xdp_vxlan_count(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = (end - start) as u64;
    match classify(start, end) {
        Ok(vni) => {
            count_class(RxClass::Vxlan, len);
            count_vni(vni, len);
        }
        Err(class) => count_class(class, len),
    }
    xdp_action::XDP_PASS
}

/// The VNI of a well-formed VXLAN frame, or the class of anything else.
#[inline(always)]
fn classify(start: usize, end: usize) -> Result<u32, RxClass> {
    let eth: *const EthHdr = ptr_at(start, end, 0).ok_or(RxClass::TruncatedEthernet)?;
    if unsafe { (*eth).ether_type() } != ETH_P_IP {
        return Err(RxClass::NonIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(start, end, ETH_HDR_LEN).ok_or(RxClass::TruncatedIpv4)?;
    let (version, ihl, proto, fragment) =
        unsafe { ((*ip).version(), (*ip).ihl(), (*ip).proto, (*ip).is_fragment()) };
    if version != 4 {
        return Err(RxClass::NonIpv4);
    }
    if ihl < 5 {
        return Err(RxClass::TruncatedIpv4);
    }
    if proto != IPPROTO_UDP {
        return Err(RxClass::NotVxlan);
    }
    if ihl != 5 {
        return Err(RxClass::Ipv4Options);
    }
    if fragment {
        return Err(RxClass::Ipv4Fragment);
    }
    let udp_off = ETH_HDR_LEN + IPV4_HDR_LEN;
    let udp: *const UdpHdr = ptr_at(start, end, udp_off).ok_or(RxClass::TruncatedUdp)?;
    if unsafe { (*udp).dst_port() } != VXLAN_UDP_PORT {
        return Err(RxClass::NotVxlan);
    }
    let vxlan: *const VxlanHdr = ptr_at(start, end, udp_off + UDP_HDR_LEN).ok_or(RxClass::TruncatedVxlan)?;
    if !unsafe { (*vxlan).has_vni_flag() } {
        return Err(RxClass::BadVxlanFlags);
    }
    Ok(unsafe { (*vxlan).vni() })
}

#[inline(always)]
fn count_class(class: RxClass, len: u64) {
    if let Some(c) = XDP_RX_CLASS_STATS.get_ptr_mut(class.index()) {
        // SAFETY: per-CPU slot, only this CPU writes it, and XDP does not preempt itself.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

#[inline(always)]
fn count_vni(vni: u32, len: u64) {
    let key = VniKey { vni };
    for _ in 0..2 {
        if let Some(c) = VXLAN_VNI_STATS.get_ptr_mut(&key) {
            // SAFETY: as in `count_class`.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len;
            }
            return;
        }
        let first = Counter { packets: 1, bytes: len };
        // BPF_NOEXIST: if another CPU created the entry meanwhile, loop and add to it.
        if VXLAN_VNI_STATS.insert(&key, &first, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
    }
}
