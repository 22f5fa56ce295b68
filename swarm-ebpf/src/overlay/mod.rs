//! The overlay datapath: maps shared by its programs, and small helpers.
//!
//! - `from_endpoint`: TC ingress on each endpoint's host-side veth.
//! - `from_underlay`: TC ingress on the underlay interface.
//! - `xdp_underlay`:  XDP on the underlay interface (early drops).
//! - `lb`:            service load balancing shared by the TC programs.
//! - `sock`:          cgroup connect4 (published ports for the node's own clients).

pub mod from_endpoint;
pub mod from_underlay;
pub mod lb;
pub mod sock;
pub mod xdp_underlay;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use swarm_common::{
    overlay::{
        DROP_REASON_COUNT, DropReason, EVENT_COUNT, EndpointInfo, EndpointKey, Event, HostConfig, HostKey,
        LocalEndpoint, MAX_ENDPOINTS, MAX_HOSTS, MAX_LOCAL_ENDPOINTS, MAX_NETWORKS, NetworkInfo,
    },
    stats::Counter,
};

#[map]
pub static OVERLAY_CONFIG: Array<HostConfig> = Array::with_max_entries(1, 0);

#[map]
pub static OVERLAY_NETWORKS: HashMap<u32, NetworkInfo> = HashMap::with_max_entries(MAX_NETWORKS, 0);

#[map]
pub static OVERLAY_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static OVERLAY_LOCAL: HashMap<u32, LocalEndpoint> = HashMap::with_max_entries(MAX_LOCAL_ENDPOINTS, 0);

#[map]
pub static OVERLAY_HOSTS: HashMap<HostKey, u32> = HashMap::with_max_entries(MAX_HOSTS, 0);

#[map]
pub static OVERLAY_DROPS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(DROP_REASON_COUNT, 0);

#[map]
pub static OVERLAY_EVENTS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(EVENT_COUNT, 0);

#[inline(always)]
fn bump(map: &PerCpuArray<Counter>, index: u32, len: u32) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot; programs do not preempt themselves.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(len);
        }
    }
}

/// Counts a dropped packet under its reason.
#[inline(always)]
pub fn count_drop(reason: DropReason, len: u32) {
    bump(&OVERLAY_DROPS, reason.index(), len);
}

#[inline(always)]
pub fn count_event(event: Event, len: u32) {
    bump(&OVERLAY_EVENTS, event.index(), len);
}

/// Hands a packet to a local endpoint: into its namespace (the peer of its
/// host-side interface), or for the host's own endpoint out of the datapath
/// end of its veth pair towards the host's stack. `at_tc_ingress` is false
/// in a netkit's transmit path, where the kernel refuses
/// `bpf_redirect_peer`: there the packet goes out of the destination's host
/// side, which hands it to the peer just the same (one queue more on veth).
#[inline(always)]
pub fn deliver_local(dst: &EndpointInfo, at_tc_ingress: bool) -> i32 {
    // SAFETY: helper calls with plain integer arguments.
    unsafe {
        if dst.is_host() || !at_tc_ingress {
            aya_ebpf::helpers::bpf_redirect(dst.ifindex, 0);
        } else {
            aya_ebpf::helpers::bpf_redirect_peer(dst.ifindex, 0);
        }
    }
    aya_ebpf::bindings::TC_ACT_REDIRECT
}

/// The host configuration, if user space has set it.
#[inline(always)]
pub fn host_config() -> Option<HostConfig> {
    let c = OVERLAY_CONFIG.get(0)?;
    if c.underlay_ifindex == 0 { None } else { Some(*c) }
}

/// True if VXLAN from `ip` (network order) is acceptable: a member host.
#[inline(always)]
pub fn is_member(ip: [u8; 4]) -> bool {
    // SAFETY: the value is a plain integer and only read.
    unsafe { OVERLAY_HOSTS.get(&HostKey { ip }).is_some() }
}
