//! cgroup `connect4` on the cgroup v2 root: the routing mesh for clients on
//! the node itself. A `connect()` (TCP, or UDP) by a process in this host's
//! network namespace to a loopback address or the host's own underlay
//! address on a published port is pointed at a backend's address and
//! target port on the ingress network before the kernel routes it; the host
//! reaches the ingress network through its own endpoint there. No packet
//! is rewritten afterwards: the socket is connected to the backend.

use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32},
    macros::{cgroup_sock_addr, map},
    maps::Array,
    programs::SockAddrContext,
};
use swarm_common::{
    lb::{BackendKey, FrontendKey, pick},
    wire::{IPPROTO_TCP, IPPROTO_UDP},
};

use super::{host_config, lb};

#[map]
pub static SOCK_NETNS: Array<u64> = Array::with_max_entries(1, 0);

const AF_INET: u32 = 2;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    // Always let the connect() go on; at most its address changes.
    let _ = try_connect4(&ctx);
    1
}

#[inline(always)]
fn try_connect4(ctx: &SockAddrContext) -> Option<()> {
    let want = *SOCK_NETNS.get(0)?;
    // SAFETY: helper call on the context the kernel passed us.
    if want == 0 || unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) } != want {
        return None;
    }
    let sa = ctx.sock_addr;
    // SAFETY: reading fields of the context the kernel passed us.
    let (family, proto, ip, port) =
        unsafe { ((*sa).user_family, (*sa).protocol, (*sa).user_ip4, (*sa).user_port) };
    if family != AF_INET {
        return None;
    }
    let proto = match proto {
        6 => IPPROTO_TCP,
        17 => IPPROTO_UDP,
        _ => return None,
    };
    // Both are in network byte order in the low bytes of the fields.
    let ip = ip.to_ne_bytes();
    let port = u16::from_be(port as u16);
    let cfg = host_config()?;
    if ip[0] != 127 && ip != cfg.underlay_ip {
        return None;
    }
    let fe = lb::frontend(&FrontendKey::published(port, proto))?;
    if fe.count == 0 {
        return None;
    }
    // SAFETY: helper call without arguments.
    let slot = pick(unsafe { bpf_get_prandom_u32() }, fe.count);
    // SAFETY: plain data, only read.
    let b = unsafe { lb::SERVICE_BACKENDS.get(&BackendKey { id: fe.id, slot }) }?;
    let to_port = if fe.target_port == [0, 0] { port } else { u16::from_be_bytes(fe.target_port) };
    // SAFETY: writing the fields connect4 programs may change.
    unsafe {
        (*sa).user_ip4 = u32::from_ne_bytes(b.ip);
        (*sa).user_port = u32::from(to_port.to_be());
    }
    Some(())
}
