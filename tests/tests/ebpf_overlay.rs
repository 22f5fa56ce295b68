//! Unit tests of the overlay datapath programs through `BPF_PROG_TEST_RUN`:
//! exact output bytes of encapsulation, decapsulation and ARP replies, and
//! every drop reason with its counter. Needs root.
//!
//! The test "host" is 198.18.0.1 with endpoint 10.0.1.2 (behind the veth
//! the kernel test runner uses, ifindex 1) and 10.0.1.4 (ifindex 7) on
//! network VNI 4097 = 10.0.1.0/24; 10.0.1.3 lives on host 198.18.0.2.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use swarm_agent::datapath::{self, overlay};
use swarm_common::{
    names::{PROG_TC_FROM_ENDPOINT, PROG_TC_FROM_UNDERLAY, PROG_XDP_UNDERLAY},
    overlay::{
        DropReason, ENDPOINT_LOCAL, EndpointInfo, EndpointKey, Event, GATEWAY_MAC, HostConfig, LocalEndpoint,
        NetworkInfo,
    },
    stats::Counter,
};
use swarm_tests::packet::{
    ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, Ipv4, arp_reply, arp_request, checksum, ethernet, udp,
    vxlan_frame_with,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const VNI: u32 = 4097;
const TEST_IFINDEX: u32 = 1;

const HOST_A: [u8; 4] = [198, 18, 0, 1];
const HOST_B: [u8; 4] = [198, 18, 0, 2];
const EP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const EP_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const EP_LOCAL2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);
const MAC_A: [u8; 6] = [0x02, 0x42, 10, 0, 1, 2];
const MAC_REMOTE: [u8; 6] = [0x02, 0x42, 10, 0, 1, 3];
const MAC_LOCAL2: [u8; 6] = [0x02, 0x42, 10, 0, 1, 4];

struct Host {
    ebpf: Ebpf,
}

fn network() -> NetworkInfo {
    NetworkInfo { gateway_ip: [10, 0, 1, 1], subnet: [10, 0, 1, 0], prefix_len: 24, pad: [0; 3] }
}

impl Host {
    /// Host A's datapath, as the agent would program it.
    fn a() -> Host {
        let mut h = Host { ebpf: datapath::load(None).expect("load the eBPF object (needs root)") };
        let mut m = overlay::Maps::new(&mut h.ebpf);
        m.set_config(HostConfig { underlay_ip: HOST_A, underlay_ifindex: 99, vxlan_port: 4789, pad: 0 })
            .unwrap();
        m.set_network(VNI, network()).unwrap();
        m.set_local(
            TEST_IFINDEX,
            LocalEndpoint { vni: VNI, ip: EP_A.octets(), mac: MAC_A, flags: 0, pad: 0 },
        )
        .unwrap();
        let local = |ifindex, mac| EndpointInfo { mac, flags: ENDPOINT_LOCAL, host_ip: [0; 4], ifindex };
        m.set_endpoint(EndpointKey { vni: VNI, ip: EP_A.octets() }, local(TEST_IFINDEX, MAC_A)).unwrap();
        m.set_endpoint(EndpointKey { vni: VNI, ip: EP_LOCAL2.octets() }, local(7, MAC_LOCAL2)).unwrap();
        m.set_endpoint(
            EndpointKey { vni: VNI, ip: EP_REMOTE.octets() },
            EndpointInfo { mac: MAC_REMOTE, flags: 0, host_ip: HOST_B, ifindex: 0 },
        )
        .unwrap();
        m.set_host(HOST_B).unwrap();
        h
    }

    /// As [`Host::run_tc`], `None` when the kernel refuses to make an skb
    /// of `frame` at all (e.g. an IPv6 EtherType with no IPv6 header): no
    /// program could ever see such a frame.
    fn try_run_tc(&mut self, prog: &'static str, frame: &[u8]) -> Option<(u32, Vec<u8>)> {
        let p = overlay::classifier(&mut self.ebpf, prog).expect("verifier accepts the program");
        let mut out = vec![0u8; frame.len() + 256];
        match p.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..Default::default()
        }) {
            Ok(r) => {
                out.truncate(r.data_size_out as usize);
                Some((r.return_value, out))
            }
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN: {e:?}"),
        }
    }

    fn run_tc(&mut self, prog: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p = overlay::classifier(&mut self.ebpf, prog).expect("verifier accepts the program");
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn run_xdp(&mut self, frame: &[u8]) -> u32 {
        let p = overlay::xdp(&mut self.ebpf, PROG_XDP_UNDERLAY).expect("verifier accepts the program");
        let mut out = vec![0u8; frame.len() + 256];
        p.test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    fn drops(&mut self) -> Vec<(DropReason, Counter)> {
        overlay::Maps::new(&mut self.ebpf)
            .drops()
            .unwrap()
            .into_iter()
            .filter(|(_, c)| c.packets > 0)
            .collect()
    }

    fn event(&mut self, e: Event) -> u64 {
        overlay::Maps::new(&mut self.ebpf)
            .events()
            .unwrap()
            .into_iter()
            .find(|(x, _)| *x == e)
            .unwrap()
            .1
            .packets
    }

    /// Exactly one drop, for `reason`.
    fn assert_dropped(&mut self, reason: DropReason, frame: &[u8]) {
        let d = self.drops();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].0, reason);
        assert_eq!(d[0].1, Counter { packets: 1, bytes: frame.len() as u64 });
    }
}

/// A UDP datagram between two overlay endpoints, as the container sends it.
fn inner(dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv4::new(src, dst, IPPROTO_UDP);
    ethernet(dst_mac, MAC_A, ETH_P_IP, &ip.packet(&udp(sport, 8080, payload)))
}

#[test]
fn remote_traffic_is_encapsulated_byte_for_byte() {
    let mut h = Host::a();
    let frame = inner(MAC_REMOTE, EP_A, EP_REMOTE, 40000, b"hello overlay");
    let (ret, out) = h.run_tc(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT, "sent on to the underlay");
    assert_eq!(out.len(), frame.len() + 50);
    // Outer Ethernet: addresses left to the neighbour subsystem, IPv4.
    assert_eq!(&out[0..12], &[0; 12]);
    assert_eq!(&out[12..14], &[0x08, 0x00]);
    // Outer IPv4: no options, length, TTL 64, UDP, host A -> host B, valid checksum.
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, frame.len() + 36);
    assert_eq!(&ip[4..8], &[0, 0, 0, 0], "no id, no fragmentation flags");
    assert_eq!((ip[8], ip[9]), (64, 17));
    assert_eq!(&ip[12..16], &HOST_A);
    assert_eq!(&ip[16..20], &HOST_B);
    assert_eq!(checksum(ip), 0, "IPv4 header checksum");
    // UDP: source port from the flow hash, 4789, length, checksum 0.
    let sport = u16::from_be_bytes([out[34], out[35]]);
    assert!(sport >= 49152, "{sport}");
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 4789);
    assert_eq!(u16::from_be_bytes([out[38], out[39]]) as usize, frame.len() + 16);
    assert_eq!(&out[40..42], &[0, 0]);
    // VXLAN: I flag, VNI 4097 = 0x001001.
    assert_eq!(&out[42..50], &[0x08, 0, 0, 0, 0x00, 0x10, 0x01, 0]);
    // The endpoint's frame, untouched.
    assert_eq!(&out[50..], &frame[..]);
    assert_eq!(h.event(Event::Encapsulated), 1);
    assert!(h.drops().is_empty());

    // The same flow always gets the same source port.
    let (_, again) = h.run_tc(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(&again[34..36], &out[34..36]);
}

#[test]
fn source_ports_spread_over_flows() {
    let mut h = Host::a();
    let ports: std::collections::BTreeSet<u16> = (0..32u16)
        .map(|i| {
            let (_, out) =
                h.run_tc(PROG_TC_FROM_ENDPOINT, &inner(MAC_REMOTE, EP_A, EP_REMOTE, 40000 + i, b"x"));
            u16::from_be_bytes([out[34], out[35]])
        })
        .collect();
    assert!(ports.iter().all(|p| *p >= 49152));
    assert!(ports.len() > 16, "32 flows got only {} source ports", ports.len());
}

#[test]
fn same_host_traffic_goes_straight_to_the_endpoint() {
    let mut h = Host::a();
    let frame = inner(GATEWAY_MAC, EP_A, EP_LOCAL2, 1, b"local");
    let (ret, out) = h.run_tc(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    let mut expected = frame.clone();
    expected[0..6].copy_from_slice(&MAC_LOCAL2);
    assert_eq!(out, expected, "same frame, addressed to the endpoint's MAC");
    assert_eq!(h.event(Event::DeliveredLocally), 1);
    assert_eq!(h.event(Event::Encapsulated), 0);
}

#[test]
fn arp_is_answered_from_the_endpoint_table() {
    let mut h = Host::a();
    for (target, mac) in
        [(EP_REMOTE, MAC_REMOTE), (EP_LOCAL2, MAC_LOCAL2), (Ipv4Addr::new(10, 0, 1, 1), GATEWAY_MAC)]
    {
        let (ret, out) = h.run_tc(PROG_TC_FROM_ENDPOINT, &arp_request(MAC_A, EP_A, target));
        assert_eq!(ret, TC_ACT_REDIRECT, "sent back to the endpoint");
        assert_eq!(&out[..42], &arp_reply(mac, target, MAC_A, EP_A)[..], "reply for {target}");
    }
    assert_eq!(h.event(Event::ArpReplied), 3);
    assert!(h.drops().is_empty());
}

#[test]
fn arp_for_unknown_addresses_and_spoofed_arp_are_dropped() {
    let mut h = Host::a();
    let unknown = arp_request(MAC_A, EP_A, Ipv4Addr::new(10, 0, 1, 99));
    assert_eq!(h.run_tc(PROG_TC_FROM_ENDPOINT, &unknown).0, TC_ACT_SHOT);
    h.assert_dropped(DropReason::ArpUnknownTarget, &unknown);
    let mut h = Host::a();
    let spoofed = arp_request(MAC_A, Ipv4Addr::new(10, 0, 1, 50), EP_REMOTE);
    assert_eq!(h.run_tc(PROG_TC_FROM_ENDPOINT, &spoofed).0, TC_ACT_SHOT);
    h.assert_dropped(DropReason::SpoofedSource, &spoofed);
}

fn ipv4_with_ihl(ihl: u8) -> Vec<u8> {
    let mut ip = Ipv4::new(EP_A, EP_REMOTE, IPPROTO_UDP);
    ip.ihl = Some(ihl);
    ip.packet(&udp(1, 2, b"x"))
}

#[test]
fn bad_traffic_from_endpoints_is_dropped_per_reason() {
    let cases: Vec<(DropReason, Vec<u8>)> = vec![
        (DropReason::UnknownDestination, inner(MAC_REMOTE, EP_A, Ipv4Addr::new(10, 0, 1, 99), 1, b"x")),
        (DropReason::NoRoute, inner(GATEWAY_MAC, EP_A, Ipv4Addr::new(10, 9, 9, 9), 1, b"x")),
        (DropReason::SpoofedSource, inner(MAC_REMOTE, Ipv4Addr::new(10, 0, 1, 77), EP_REMOTE, 1, b"x")),
        (DropReason::UnsupportedProtocol, ethernet(MAC_REMOTE, MAC_A, ETH_P_IPV6, &[0x60; 48])),
        // IHL 4: shorter than an IPv4 header can be. (The kernel's test runner
        // refuses frames cut inside the IPv4 header, so no truncation case.)
        (DropReason::Malformed, ethernet(MAC_REMOTE, MAC_A, ETH_P_IP, &ipv4_with_ihl(4))),
    ];
    for (reason, frame) in cases {
        let mut h = Host::a();
        assert_eq!(h.run_tc(PROG_TC_FROM_ENDPOINT, &frame).0, TC_ACT_SHOT, "{reason:?}");
        h.assert_dropped(reason, &frame);
    }
}

#[test]
fn unknown_veths_and_an_unconfigured_host_drop() {
    let mut h = Host::a();
    overlay::Maps::new(&mut h.ebpf).remove_local(TEST_IFINDEX).unwrap();
    let frame = inner(MAC_REMOTE, EP_A, EP_REMOTE, 1, b"x");
    assert_eq!(h.run_tc(PROG_TC_FROM_ENDPOINT, &frame).0, TC_ACT_SHOT);
    h.assert_dropped(DropReason::UnknownSourceEndpoint, &frame);

    let mut h = Host::a();
    overlay::Maps::new(&mut h.ebpf).set_config(HostConfig::default()).unwrap();
    assert_eq!(h.run_tc(PROG_TC_FROM_ENDPOINT, &frame).0, TC_ACT_SHOT);
    h.assert_dropped(DropReason::NotConfigured, &frame);
}

/// VXLAN as host B would send it to host A.
fn from_b(src: [u8; 4], vni: u32, flags: u8, inner_frame: &[u8]) -> Vec<u8> {
    let ip = Ipv4::new(Ipv4Addr::from(src), Ipv4Addr::from(HOST_A), IPPROTO_UDP);
    vxlan_frame_with(&ip, 4789, flags, vni, inner_frame)
}

#[test]
fn vxlan_for_a_local_endpoint_is_decapsulated_byte_for_byte() {
    let mut h = Host::a();
    let payload = inner(MAC_A, EP_REMOTE, EP_A, 5555, b"from far away");
    let frame = from_b(HOST_B, VNI, 0x08, &payload);
    let (ret, out) = h.run_tc(PROG_TC_FROM_UNDERLAY, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT, "delivered into the endpoint");
    assert_eq!(out, payload, "exactly the inner frame");
    assert_eq!(h.event(Event::Decapsulated), 1);
    assert!(h.drops().is_empty());
}

#[test]
fn bad_vxlan_is_dropped_per_reason_in_tc_and_xdp() {
    let to_a = inner(MAC_A, EP_REMOTE, EP_A, 1, b"x");
    let to_remote = inner(MAC_REMOTE, EP_REMOTE, EP_REMOTE, 1, b"x");
    let cases: Vec<(DropReason, Vec<u8>, bool)> = vec![
        (DropReason::NonMemberSource, from_b([198, 18, 0, 9], VNI, 0x08, &to_a), true),
        (DropReason::NonMemberSource, from_b([203, 0, 113, 7], VNI, 0x08, &to_a), true),
        (DropReason::UnknownVni, from_b(HOST_B, 5000, 0x08, &to_a), true),
        (DropReason::MalformedVxlan, from_b(HOST_B, VNI, 0x00, &to_a), true),
        (DropReason::MalformedVxlan, from_b(HOST_B, VNI, 0x08, &to_a[..20]), false),
        (DropReason::UnknownLocalDestination, from_b(HOST_B, VNI, 0x08, &to_remote), false),
    ];
    for (reason, frame, xdp_too) in cases {
        let mut h = Host::a();
        assert_eq!(h.run_tc(PROG_TC_FROM_UNDERLAY, &frame).0, TC_ACT_SHOT, "{reason:?}");
        h.assert_dropped(reason, &frame);
        let mut h = Host::a();
        let verdict = h.run_xdp(&frame);
        if xdp_too {
            assert_eq!(verdict, XDP_DROP, "XDP {reason:?}");
            h.assert_dropped(reason, &frame);
        } else {
            assert_eq!(verdict, XDP_PASS, "XDP leaves {reason:?} to TC");
        }
    }
}

#[test]
fn everything_else_on_the_underlay_passes_untouched() {
    let plain_udp = ethernet(
        [2; 6],
        [4; 6],
        ETH_P_IP,
        &Ipv4::new([198, 18, 0, 2].into(), HOST_A.into(), IPPROTO_UDP).packet(&udp(1, 53, b"dns")),
    );
    let other_port = vxlan_frame_with(
        &Ipv4::new([198, 18, 0, 9].into(), HOST_A.into(), IPPROTO_UDP),
        4790,
        0x08,
        VNI,
        &[0u8; 14],
    );
    let arp = arp_request([2; 6], [198, 18, 0, 2].into(), HOST_A.into());
    let mut tcp_ip = Ipv4::new([198, 18, 0, 2].into(), HOST_A.into(), 6);
    tcp_ip.frag_off = 0x4000;
    let tcp = ethernet([2; 6], [4; 6], ETH_P_IP, &tcp_ip.packet(&[0u8; 20]));
    for frame in [plain_udp, other_port, arp, tcp] {
        let mut h = Host::a();
        let (ret, out) = h.run_tc(PROG_TC_FROM_UNDERLAY, &frame);
        assert_eq!(ret, TC_ACT_OK);
        assert_eq!(out, frame);
        assert_eq!(h.run_xdp(&frame), XDP_PASS);
        assert!(h.drops().is_empty());
    }
}

#[test]
fn garbage_never_crashes_the_programs() {
    let mut h = Host::a();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in [14usize, 15, 33, 34, 41, 42, 49, 50, 63, 64, 65, 100, 200] {
        for _ in 0..8 {
            let mut f: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // Bias some frames towards looking like IPv4/UDP/VXLAN.
            if len >= 42 && seed.is_multiple_of(2) {
                f[12..14].copy_from_slice(&[0x08, 0x00]);
                f[14] = 0x45;
                f[23] = 17;
                f[36..38].copy_from_slice(&4789u16.to_be_bytes());
            }
            let (ret, _) = h.run_tc(PROG_TC_FROM_UNDERLAY, &f);
            assert!(ret == TC_ACT_OK || ret == TC_ACT_SHOT, "{ret} for {f:02x?}");
            let (ret, _) = h.run_tc(PROG_TC_FROM_ENDPOINT, &f);
            assert!(ret == TC_ACT_SHOT || ret == TC_ACT_REDIRECT, "{ret} for {f:02x?}");
            let v = h.run_xdp(&f);
            assert!(v == XDP_PASS || v == XDP_DROP);
        }
    }
}

#[test]
fn what_one_host_encapsulates_the_other_decapsulates_to_the_original() {
    let mut a = Host::a();
    let frame = inner(MAC_REMOTE, EP_A, EP_REMOTE, 4242, &[0xab; 300]);
    let (_, wire) = a.run_tc(PROG_TC_FROM_ENDPOINT, &frame);
    // Host B: 10.0.1.3 is its local endpoint, host A a member.
    let mut b = Host { ebpf: datapath::load(None).unwrap() };
    let mut m = overlay::Maps::new(&mut b.ebpf);
    m.set_config(HostConfig { underlay_ip: HOST_B, underlay_ifindex: 99, vxlan_port: 4789, pad: 0 }).unwrap();
    m.set_network(VNI, network()).unwrap();
    m.set_endpoint(
        EndpointKey { vni: VNI, ip: EP_REMOTE.octets() },
        EndpointInfo { mac: MAC_REMOTE, flags: ENDPOINT_LOCAL, host_ip: [0; 4], ifindex: 5 },
    )
    .unwrap();
    m.set_host(HOST_A).unwrap();
    // The wire frame's outer destination MAC is filled by the neighbour subsystem.
    let mut wire = wire;
    wire[0..6].copy_from_slice(&[2; 6]);
    wire[6..12].copy_from_slice(&[4; 6]);
    let (ret, out) = b.run_tc(PROG_TC_FROM_UNDERLAY, &wire);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out, frame);
}

/// Fuzzing the programs with random frames (many biased to look like what
/// each program acts on): only the verdicts each may give, a frame passed
/// on the underlay is passed untouched, and only frames from the local
/// endpoint's own address are ever forwarded from an endpoint.
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(any::<u8>(), 14..160), 0u8..4).prop_map(|(mut f, bias)| {
            let n = f.len();
            match bias {
                // IPv4/UDP to the VXLAN port from the member host.
                1 if n >= 50 => {
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                    f[14] = 0x45;
                    f[20..22].copy_from_slice(&[0, 0]);
                    f[23] = 17;
                    f[26..30].copy_from_slice(&HOST_B);
                    f[30..34].copy_from_slice(&HOST_A);
                    f[36..38].copy_from_slice(&4789u16.to_be_bytes());
                    f[42] = 0x08;
                }
                // IPv4 from the local endpoint.
                2 if n >= 34 => {
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                    f[14] = 0x45;
                    f[26..30].copy_from_slice(&EP_A.octets());
                }
                // ARP.
                3 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                _ => {}
            }
            f
        })
    }

    #[test]
    fn random_frames_get_only_allowed_verdicts_and_no_wrong_rewrite() {
        // One loaded datapath for every case (loading is the slow part).
        let h = std::cell::RefCell::new(Host::a());
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 1500,
            ..ProptestConfig::default()
        });
        let result = runner.run(&frame(), |f| {
            let mut h = h.borrow_mut();
            let Some((ret, out)) = h.try_run_tc(PROG_TC_FROM_UNDERLAY, &f) else { return Ok(()) };
            prop_assert!(ret == TC_ACT_OK || ret == TC_ACT_SHOT || ret == TC_ACT_REDIRECT, "{ret}");
            if ret == TC_ACT_OK {
                prop_assert_eq!(&out, &f, "passed frames are not rewritten");
            }
            if ret == TC_ACT_REDIRECT {
                // Delivered only from the member host to the local endpoint, decapsulated.
                prop_assert_eq!(&f[26..30], &HOST_B[..]);
                prop_assert_eq!(out.len() + 50, f.len());
            }
            let Some((ret, _)) = h.try_run_tc(PROG_TC_FROM_ENDPOINT, &f) else { return Ok(()) };
            prop_assert!(ret == TC_ACT_SHOT || ret == TC_ACT_REDIRECT, "{ret}");
            if ret == TC_ACT_REDIRECT {
                let from_ep = f[12..14] == [0x08, 0x00] && f[26..30] == EP_A.octets();
                let arp = f[12..14] == [0x08, 0x06] && f.len() >= 42 && f[28..32] == EP_A.octets();
                prop_assert!(from_ep || arp, "forwarded a frame not from the endpoint: {f:02x?}");
            }
            let v = h.run_xdp(&f);
            prop_assert!(v == XDP_PASS || v == XDP_DROP);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    }
}
