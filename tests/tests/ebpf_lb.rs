//! The service load balancer in the TC programs, through `BPF_PROG_TEST_RUN`:
//! exact rewrites with valid checksums (checked here with an independent
//! checksum), flows that keep their backend, replies turned back, and every
//! packet that must not be rewritten dropped and counted. Needs root.
//!
//! Host A (198.18.0.1) has endpoints 10.0.1.2 (the test runner's ifindex 1)
//! and 10.0.1.4 (ifindex 7) on VNI 4097 = 10.0.1.0/24; 10.0.1.3 is on host
//! B (198.18.0.2). The service VIP is 10.0.1.100; 7080/tcp and 7053/udp are
//! published.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use swarm_agent::datapath::{
    self,
    balancer::{self, Want},
    overlay,
};
use swarm_common::{
    lb::FrontendKey,
    names::{PROG_TC_FROM_ENDPOINT, PROG_TC_FROM_UNDERLAY},
    overlay::{
        DropReason, ENDPOINT_LOCAL, EndpointInfo, EndpointKey, Event, HostConfig, LocalEndpoint, NetworkInfo,
    },
};
use swarm_tests::packet::{ETH_P_IP, IPPROTO_UDP, Ipv4, checksum, ethernet, udp, vxlan_frame_with};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const VNI: u32 = 4097;
const IPPROTO_TCP: u8 = 6;

const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 50);
const EP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const EP_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const EP_LOCAL2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 4);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 100);
const MAC_A: [u8; 6] = [0x02, 0x42, 10, 0, 1, 2];
const MAC_REMOTE: [u8; 6] = [0x02, 0x42, 10, 0, 1, 3];
const MAC_LOCAL2: [u8; 6] = [0x02, 0x42, 10, 0, 1, 4];
const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];

struct Host {
    ebpf: Ebpf,
    applied: balancer::Applied,
}

impl Host {
    fn a() -> Host {
        let mut ebpf = datapath::load(None).expect("load the eBPF object (needs root)");
        let mut m = overlay::Maps::new(&mut ebpf);
        m.set_config(HostConfig {
            underlay_ip: HOST_A.octets(),
            underlay_ifindex: 99,
            vxlan_port: 4789,
            pad: 0,
        })
        .unwrap();
        m.set_network(
            VNI,
            NetworkInfo { gateway_ip: [10, 0, 1, 1], subnet: [10, 0, 1, 0], prefix_len: 24, pad: [0; 3] },
        )
        .unwrap();
        m.set_local(1, LocalEndpoint { vni: VNI, ip: EP_A.octets(), mac: MAC_A, flags: 0, pad: 0 }).unwrap();
        let local = |ifindex, mac| EndpointInfo { mac, flags: ENDPOINT_LOCAL, host_ip: [0; 4], ifindex };
        m.set_endpoint(EndpointKey { vni: VNI, ip: EP_A.octets() }, local(1, MAC_A)).unwrap();
        m.set_endpoint(EndpointKey { vni: VNI, ip: EP_LOCAL2.octets() }, local(7, MAC_LOCAL2)).unwrap();
        m.set_endpoint(
            EndpointKey { vni: VNI, ip: EP_REMOTE.octets() },
            EndpointInfo { mac: MAC_REMOTE, flags: 0, host_ip: HOST_B.octets(), ifindex: 0 },
        )
        .unwrap();
        m.set_host(HOST_B.octets()).unwrap();
        Host { ebpf, applied: balancer::Applied::new() }
    }

    fn balance(&mut self, want: &[(FrontendKey, Want)]) {
        let want: BTreeMap<_, _> = want.iter().cloned().collect();
        balancer::sync(&mut overlay::LbMaps::new(&mut self.ebpf), &mut self.applied, &want).unwrap();
    }

    fn run(&mut self, prog: &'static str, frame: &[u8]) -> (u32, Vec<u8>) {
        let p = overlay::classifier(&mut self.ebpf, prog).expect("verifier accepts the program");
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions { data_in: Some(frame), data_out: Some(&mut out), ..Default::default() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn drops(&mut self) -> Vec<(DropReason, u64)> {
        overlay::Maps::new(&mut self.ebpf)
            .drops()
            .unwrap()
            .into_iter()
            .filter(|(_, c)| c.packets > 0)
            .map(|(r, c)| (r, c.packets))
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

    fn flows(&mut self) -> usize {
        overlay::LbMaps::new(&mut self.ebpf).flows().unwrap().len()
    }
}

/// A TCP segment (20-byte header, ACK|PSH) with its checksum over the pseudo header.
fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    tcp_with(0x18, src, dst, sport, dport, payload)
}

fn tcp_with(flags: u8, src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&1u32.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = l4_checksum(src, dst, IPPROTO_TCP, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut buf = Vec::new();
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.extend_from_slice(&[0, proto]);
    buf.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    buf.extend_from_slice(segment);
    checksum(&buf)
}

/// Addresses, ports and checksum validity of the IPv4/TCP packet at `ip`.
fn parse(ip: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16, bool) {
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[20..];
    let ip_ok = checksum(&ip[..20]) == 0;
    let l4_ok =
        if ip[9] == IPPROTO_UDP && l4[6..8] == [0, 0] { true } else { l4_checksum(src, dst, ip[9], l4) == 0 };
    (src, dst, u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]]), ip_ok && l4_ok)
}

fn vip_want(backends: &[Ipv4Addr]) -> (FrontendKey, Want) {
    (
        FrontendKey::vip(VNI, VIP.octets()),
        Want { backend_vni: VNI, target_port: 0, backends: backends.to_vec() },
    )
}

fn published_want(port: u16, proto: u8, target: u16, backends: &[Ipv4Addr]) -> (FrontendKey, Want) {
    (
        FrontendKey::published(port, proto),
        Want { backend_vni: VNI, target_port: target, backends: backends.to_vec() },
    )
}

#[test]
fn a_vip_flow_goes_to_a_remote_backend_and_its_replies_come_back_from_the_vip() {
    let mut h = Host::a();
    h.balance(&[vip_want(&[EP_REMOTE])]);
    let seg = tcp(EP_A, VIP, 40000, 8080, b"GET /");
    let frame = ethernet(
        [0x02, 0x42, 0xac, 0x1e, 0, 1],
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, VIP, IPPROTO_TCP).packet(&seg),
    );
    let (ret, out) = h.run(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), frame.len() + 50, "encapsulated towards host B");
    assert_eq!(&out[30..34], &HOST_B.octets());
    assert_eq!(&out[50..56], &MAC_REMOTE, "inner frame to the backend's MAC");
    assert_eq!(
        parse(&out[64..]),
        (EP_A, EP_REMOTE, 40000, 8080, true),
        "only the destination address changed"
    );
    assert_eq!(&out[64 + 40..], b"GET /");
    assert_eq!(h.event(Event::NewFlow), 1);
    assert_eq!(h.flows(), 2, "both directions recorded");

    // The same flow again: no new flow, same backend.
    let (_, again) = h.run(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(again, out);
    assert_eq!(h.event(Event::NewFlow), 1);

    // The reply, over VXLAN from host B: its source becomes the VIP again.
    let reply = tcp(EP_REMOTE, EP_A, 8080, 40000, b"200 OK");
    let inner =
        ethernet(MAC_A, MAC_REMOTE, ETH_P_IP, &Ipv4::new(EP_REMOTE, EP_A, IPPROTO_TCP).packet(&reply));
    let outer = Ipv4::new(HOST_B, HOST_A, IPPROTO_UDP);
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &vxlan_frame_with(&outer, 4789, 0x08, VNI, &inner));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), inner.len(), "decapsulated");
    assert_eq!(parse(&out[14..]), (VIP, EP_A, 8080, 40000, true));
    assert_eq!(h.event(Event::ReverseTranslated), 1);
    assert!(h.drops().is_empty(), "{:?}", h.drops());
}

#[test]
fn a_flow_whose_backend_went_away_gets_another_and_none_left_drops() {
    let mut h = Host::a();
    h.balance(&[vip_want(&[EP_REMOTE])]);
    let frame = ethernet(
        [0x02, 0x42, 0xac, 0x1e, 0, 1],
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, VIP, IPPROTO_TCP).packet(&tcp(EP_A, VIP, 40001, 80, b"x")),
    );
    let (_, out) = h.run(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(parse(&out[64..]).1, EP_REMOTE);
    // The backend's endpoint is withdrawn and the set moves to a local task.
    overlay::Maps::new(&mut h.ebpf)
        .remove_endpoint(EndpointKey { vni: VNI, ip: EP_REMOTE.octets() })
        .unwrap();
    h.balance(&[vip_want(&[EP_LOCAL2])]);
    let (ret, out) = h.run(PROG_TC_FROM_ENDPOINT, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), frame.len(), "delivered on this host");
    assert_eq!(&out[0..6], &MAC_LOCAL2);
    assert_eq!(parse(&out[14..]), (EP_A, EP_LOCAL2, 40001, 80, true));
    // No backends at all: dropped and counted, never sent to the VIP.
    h.balance(&[vip_want(&[])]);
    let other = ethernet(
        [0x02, 0x42, 0xac, 0x1e, 0, 1],
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, VIP, IPPROTO_TCP).packet(&tcp(EP_A, VIP, 40002, 80, b"x")),
    );
    let (ret, _) = h.run(PROG_TC_FROM_ENDPOINT, &other);
    assert_eq!(ret, TC_ACT_SHOT);
    assert_eq!(h.drops(), vec![(DropReason::NoBackend, 1)]);
}

#[test]
fn a_published_port_is_sent_to_its_task_keeping_the_client_and_the_reply_leaves_from_the_node() {
    let mut h = Host::a();
    h.balance(&[published_want(7080, IPPROTO_TCP, 80, &[EP_A])]);
    let seg = tcp(CLIENT, HOST_A, 51000, 7080, b"GET /");
    let frame = ethernet(
        NODE_MAC,
        [2, 0, 0, 0, 0, 50],
        ETH_P_IP,
        &Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP).packet(&seg),
    );
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT, "into the task");
    assert_eq!(&out[0..6], &MAC_A);
    assert_eq!(parse(&out[14..]), (CLIENT, EP_A, 51000, 80, true), "the client's address kept");
    // The task answers the client: from the node's address and port, out of the underlay.
    let reply = tcp(EP_A, CLIENT, 80, 51000, b"200 OK");
    let rframe = ethernet(
        [0x02, 0x42, 0xac, 0x1e, 0, 1],
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, CLIENT, IPPROTO_TCP).packet(&reply),
    );
    let (ret, out) = h.run(PROG_TC_FROM_ENDPOINT, &rframe);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), rframe.len(), "not encapsulated");
    assert_eq!(parse(&out[14..]), (HOST_A, CLIENT, 7080, 51000, true));
    assert_eq!(h.event(Event::SentToClient), 1);

    // A backend on host B: carried there over VXLAN, the client's address inside.
    h.balance(&[published_want(7080, IPPROTO_TCP, 80, &[EP_REMOTE])]);
    let seg = tcp(CLIENT, HOST_A, 51001, 7080, b"GET /");
    let frame = ethernet(
        NODE_MAC,
        [2, 0, 0, 0, 0, 50],
        ETH_P_IP,
        &Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP).packet(&seg),
    );
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(out.len(), frame.len() + 50);
    assert_eq!(&out[26..30], &HOST_A.octets());
    assert_eq!(&out[30..34], &HOST_B.octets());
    assert_eq!(parse(&out[64..]), (CLIENT, EP_REMOTE, 51001, 80, true));
    // Its reply comes back over VXLAN and leaves from this node's address.
    let reply = tcp(EP_REMOTE, CLIENT, 80, 51001, b"200 OK");
    let inner =
        ethernet(MAC_A, MAC_REMOTE, ETH_P_IP, &Ipv4::new(EP_REMOTE, CLIENT, IPPROTO_TCP).packet(&reply));
    let outer = Ipv4::new(HOST_B, HOST_A, IPPROTO_UDP);
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &vxlan_frame_with(&outer, 4789, 0x08, VNI, &inner));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&out[14..]), (HOST_A, CLIENT, 7080, 51001, true));
    assert_eq!(h.event(Event::SentToClient), 2);
    assert!(h.drops().is_empty(), "{:?}", h.drops());
}

#[test]
fn udp_without_a_checksum_keeps_none() {
    let mut h = Host::a();
    h.balance(&[published_want(7053, IPPROTO_UDP, 53, &[EP_A])]);
    let frame = ethernet(
        NODE_MAC,
        [2, 0, 0, 0, 0, 50],
        ETH_P_IP,
        &Ipv4::new(CLIENT, HOST_A, IPPROTO_UDP).packet(&udp(5555, 7053, b"q")),
    );
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &frame);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&out[14..]), (CLIENT, EP_A, 5555, 53, true));
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0], "no checksum stays no checksum");
}

#[test]
fn fragments_options_and_truncated_headers_to_published_ports_are_dropped_and_counted() {
    let mut h = Host::a();
    h.balance(&[published_want(7080, IPPROTO_TCP, 80, &[EP_A])]);
    let seg = tcp(CLIENT, HOST_A, 51000, 7080, b"GET /");
    let send = |h: &mut Host, ip: &Ipv4, l4: &[u8]| {
        h.run(PROG_TC_FROM_UNDERLAY, &ethernet(NODE_MAC, [2, 0, 0, 0, 0, 50], ETH_P_IP, &ip.packet(l4)))
    };
    // First fragment.
    let mut frag = Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP);
    frag.frag_off = 0x2000;
    assert_eq!(send(&mut h, &frag, &seg).0, TC_ACT_SHOT);
    // IP options.
    let mut opts = Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP);
    opts.options = vec![1, 1, 1, 1];
    assert_eq!(send(&mut h, &opts, &seg).0, TC_ACT_SHOT);
    // A TCP header cut short.
    assert_eq!(send(&mut h, &Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP), &seg[..12]).0, TC_ACT_SHOT);
    assert_eq!(h.drops(), vec![(DropReason::MalformedServicePacket, 3)]);
    assert_eq!(h.flows(), 0, "nothing recorded");
    // Later fragments carry no port: the host stack gets them (and, with
    // the first one dropped, never reassembles the datagram).
    let mut later = Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP);
    later.frag_off = 0x0010;
    assert_eq!(send(&mut h, &later, b"rest of it").0, TC_ACT_OK);
    // A port nobody published passes untouched to the host.
    let other = ethernet(
        NODE_MAC,
        [2, 0, 0, 0, 0, 50],
        ETH_P_IP,
        &Ipv4::new(CLIENT, HOST_A, IPPROTO_TCP).packet(&tcp(CLIENT, HOST_A, 51000, 7081, b"x")),
    );
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &other);
    assert_eq!((ret, out), (TC_ACT_OK, other));
}

#[test]
fn fragments_to_a_vip_are_dropped_and_arp_for_a_vip_is_answered() {
    let mut h = Host::a();
    h.balance(&[vip_want(&[EP_REMOTE])]);
    let mut frag = Ipv4::new(EP_A, VIP, IPPROTO_UDP);
    frag.frag_off = 0x2000;
    let frame = ethernet([0x02, 0x42, 0xac, 0x1e, 0, 1], MAC_A, ETH_P_IP, &frag.packet(&udp(1, 2, b"x")));
    assert_eq!(h.run(PROG_TC_FROM_ENDPOINT, &frame).0, TC_ACT_SHOT);
    assert_eq!(h.drops(), vec![(DropReason::MalformedServicePacket, 1)]);
    let arp = swarm_tests::packet::arp_request(MAC_A, EP_A, VIP);
    assert_eq!(h.run(PROG_TC_FROM_ENDPOINT, &arp).0, TC_ACT_REDIRECT, "the VIP resolves");
}

#[test]
fn a_new_connection_reusing_a_balanced_flows_ports_is_not_translated_back() {
    let mut h = Host::a();
    h.balance(&[vip_want(&[EP_REMOTE])]);
    let gw = [0x02, 0x42, 0xac, 0x1e, 0, 1];
    let to_vip = ethernet(
        gw,
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, VIP, IPPROTO_TCP).packet(&tcp_with(0x02, EP_A, VIP, 40010, 8080, b"")),
    );
    assert_eq!(h.run(PROG_TC_FROM_ENDPOINT, &to_vip).0, TC_ACT_REDIRECT);
    // Later, the same client port straight to the task's address.
    let direct = ethernet(
        MAC_REMOTE,
        MAC_A,
        ETH_P_IP,
        &Ipv4::new(EP_A, EP_REMOTE, IPPROTO_TCP).packet(&tcp_with(0x02, EP_A, EP_REMOTE, 40010, 8080, b"")),
    );
    let (ret, out) = h.run(PROG_TC_FROM_ENDPOINT, &direct);
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&out[64..]), (EP_A, EP_REMOTE, 40010, 8080, true));
    // Its reply keeps the task's address.
    let reply = tcp_with(0x12, EP_REMOTE, EP_A, 8080, 40010, b"");
    let inner =
        ethernet(MAC_A, MAC_REMOTE, ETH_P_IP, &Ipv4::new(EP_REMOTE, EP_A, IPPROTO_TCP).packet(&reply));
    let outer = Ipv4::new(HOST_B, HOST_A, IPPROTO_UDP);
    let (ret, out) = h.run(PROG_TC_FROM_UNDERLAY, &vxlan_frame_with(&outer, 4789, 0x08, VNI, &inner));
    assert_eq!(ret, TC_ACT_REDIRECT);
    assert_eq!(parse(&out[14..]), (EP_REMOTE, EP_A, 8080, 40010, true));
    assert_eq!(h.event(Event::ReverseTranslated), 0);
}
