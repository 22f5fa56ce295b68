//! Unit tests of the underlay XDP counter (`xdp_vxlan_count`) through
//! `BPF_PROG_TEST_RUN`: crafted frames go in, and each test checks the verdict,
//! that the frame comes out untouched, and the exact counters.
//!
//! Every test loads its own copy of the object (maps not pinned), so tests do
//! not see each other's counts. Needs root (CAP_BPF).

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use swarm_agent::datapath::{self, vxlan_counter};
use swarm_common::{
    names,
    stats::{Counter, RxClass},
};
use swarm_tests::packet::{
    ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, Ipv4, MAC_A, MAC_B, UNDERLAY_A, UNDERLAY_B,
    VXLAN_PORT, ethernet, inner_frame, udp, vxlan_frame, vxlan_frame_with,
};

const XDP_PASS: u32 = 2;

fn load() -> Ebpf {
    datapath::load(None).expect("load the eBPF object (needs root)")
}

/// Runs the counter on `frame` `repeat` times and checks it passed the frame
/// on unchanged.
fn run(ebpf: &mut Ebpf, frame: &[u8], repeat: u32) {
    let prog = vxlan_counter::program(ebpf).expect("program loads (verifier)");
    let mut out = vec![0u8; frame.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(result.return_value, XDP_PASS, "every frame is passed on");
    let out_len = usize::try_from(result.data_size_out).unwrap();
    assert_eq!(&out[..out_len], frame, "the frame comes out untouched");
}

fn bytes(frame: &[u8]) -> u64 {
    u64::try_from(frame.len()).unwrap()
}

/// Asserts that after sending `frame` `n` times, exactly `class` counted it
/// and every other class is zero; returns the stats for further checks.
fn assert_only_class(frame: &[u8], n: u32, class: RxClass) -> vxlan_counter::VxlanStats {
    let mut ebpf = load();
    run(&mut ebpf, frame, n);
    let stats = vxlan_counter::stats(&ebpf).unwrap();
    let expected = Counter { packets: u64::from(n), bytes: u64::from(n) * bytes(frame) };
    for c in RxClass::ALL {
        let want = if c == class { expected } else { Counter::default() };
        assert_eq!(stats.class(c), want, "class {} after {n} x {class:?}", c.name());
    }
    stats
}

fn udp_frame(ip: &Ipv4, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    ethernet(MAC_B, MAC_A, ETH_P_IP, &ip.packet(&udp(40000, dst_port, payload)))
}

fn underlay_udp() -> Ipv4 {
    Ipv4::new(UNDERLAY_A, UNDERLAY_B, IPPROTO_UDP)
}

#[test]
fn object_has_every_program_and_map_named_in_swarm_common() {
    let ebpf = load();
    for p in names::ALL_PROGRAMS {
        assert!(ebpf.program(p).is_some(), "program {p}");
    }
    for m in names::ALL_MAPS {
        assert!(ebpf.map(m).is_some(), "map {m}");
    }
}

#[test]
fn valid_vxlan_is_counted_per_vni() {
    let frame = vxlan_frame(4096, &inner_frame(64));
    let stats = assert_only_class(&frame, 1, RxClass::Vxlan);
    assert_eq!(stats.per_vni.len(), 1);
    assert_eq!(stats.vni(4096), Counter { packets: 1, bytes: bytes(&frame) });
}

#[test]
fn repeated_frames_are_counted_each_time() {
    let frame = vxlan_frame(4097, &inner_frame(10));
    let stats = assert_only_class(&frame, 7, RxClass::Vxlan);
    assert_eq!(stats.vni(4097), Counter { packets: 7, bytes: 7 * bytes(&frame) });
}

#[test]
fn vnis_are_counted_separately_with_all_24_bits() {
    let mut ebpf = load();
    let a = vxlan_frame(1, &inner_frame(1));
    let b = vxlan_frame(0x00ff_ffff, &inner_frame(100));
    let c = vxlan_frame(0x0001_0000, &inner_frame(50));
    run(&mut ebpf, &a, 2);
    run(&mut ebpf, &b, 3);
    run(&mut ebpf, &c, 1);
    let stats = vxlan_counter::stats(&ebpf).unwrap();
    assert_eq!(stats.vni(1), Counter { packets: 2, bytes: 2 * bytes(&a) });
    assert_eq!(stats.vni(0x00ff_ffff), Counter { packets: 3, bytes: 3 * bytes(&b) });
    assert_eq!(stats.vni(0x0001_0000), Counter { packets: 1, bytes: bytes(&c) });
    assert_eq!(stats.per_vni.len(), 3);
    assert_eq!(stats.class(RxClass::Vxlan).packets, 6);
    assert_eq!(stats.total().packets, 6);
}

#[test]
fn reserved_bits_do_not_hide_the_vni() {
    // RFC 7348: reserved fields are ignored on receipt; only the I flag matters.
    let mut frame = vxlan_frame(77, &inner_frame(8));
    frame[42] |= 0x77 & !0x08; // other flag bits
    frame[43..46].copy_from_slice(&[0xff, 0xff, 0xff]); // reserved1
    frame[49] = 0xff; // reserved2
    let stats = assert_only_class(&frame, 1, RxClass::Vxlan);
    assert_eq!(stats.vni(77).packets, 1);
}

#[test]
fn wrong_udp_port_is_not_vxlan() {
    for port in [4790, 8472, 53] {
        let frame = vxlan_frame_with(&underlay_udp(), port, 0x08, 4096, &inner_frame(20));
        let stats = assert_only_class(&frame, 1, RxClass::NotVxlan);
        assert!(stats.per_vni.is_empty(), "port {port} must not count per VNI");
    }
}

#[test]
fn other_ip_protocols_are_not_vxlan() {
    let ip = Ipv4::new(UNDERLAY_A, UNDERLAY_B, IPPROTO_TCP);
    // A "TCP" packet whose bytes would look like VXLAN if the protocol were ignored.
    let frame =
        ethernet(MAC_B, MAC_A, ETH_P_IP, &ip.packet(&udp(1, VXLAN_PORT, &[0x08, 0, 0, 0, 0, 0x10, 0, 0])));
    let stats = assert_only_class(&frame, 1, RxClass::NotVxlan);
    assert!(stats.per_vni.is_empty());
}

#[test]
fn wrong_vxlan_flag_is_counted_as_bad_flags() {
    for flags in [0x00, 0x80, 0x01, 0xf7] {
        let frame = vxlan_frame_with(&underlay_udp(), VXLAN_PORT, flags, 4096, &inner_frame(20));
        let stats = assert_only_class(&frame, 1, RxClass::BadVxlanFlags);
        assert!(stats.per_vni.is_empty(), "flags {flags:#04x} must not count per VNI");
    }
}

#[test]
fn truncated_udp_header() {
    // IPv4 says UDP, but only 4 bytes follow the IP header.
    let frame = ethernet(MAC_B, MAC_A, ETH_P_IP, &underlay_udp().packet(&[0x12, 0xb5, 0x12, 0xb5]));
    assert_only_class(&frame, 1, RxClass::TruncatedUdp);
}

#[test]
fn truncated_vxlan_header() {
    // UDP to 4789 with 7 of the 8 VXLAN header bytes.
    let frame = udp_frame(&underlay_udp(), VXLAN_PORT, &[0x08, 0, 0, 0, 0, 0x10, 0]);
    let stats = assert_only_class(&frame, 1, RxClass::TruncatedVxlan);
    assert!(stats.per_vni.is_empty());
}

#[test]
fn exactly_a_vxlan_header_and_nothing_more_is_vxlan() {
    // The boundary the truncation checks must get right: 8 bytes is enough.
    let frame = udp_frame(&underlay_udp(), VXLAN_PORT, &[0x08, 0, 0, 0, 0, 0x10, 0, 0]);
    let stats = assert_only_class(&frame, 1, RxClass::Vxlan);
    assert_eq!(stats.vni(0x1000).packets, 1);
}

#[test]
fn truncated_ipv4_header() {
    let frame = ethernet(MAC_B, MAC_A, ETH_P_IP, &[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 17]);
    assert_only_class(&frame, 1, RxClass::TruncatedIpv4);
}

#[test]
fn ipv4_header_length_below_five_words_is_malformed() {
    let mut ip = underlay_udp();
    ip.ihl = Some(4);
    let frame = ethernet(MAC_B, MAC_A, ETH_P_IP, &ip.packet(&udp(1, VXLAN_PORT, &[0x08; 16])));
    assert_only_class(&frame, 1, RxClass::TruncatedIpv4);
}

#[test]
fn non_ipv4_frames() {
    let arp = ethernet([0xff; 6], MAC_A, ETH_P_ARP, &[0u8; 28]);
    assert_only_class(&arp, 1, RxClass::NonIpv4);
    let ipv6 = ethernet(MAC_B, MAC_A, ETH_P_IPV6, &[0x60; 60]);
    assert_only_class(&ipv6, 1, RxClass::NonIpv4);
    // EtherType IPv4 with an IPv6 version nibble.
    let mut ip = underlay_udp();
    ip.version = 6;
    let liar = ethernet(MAC_B, MAC_A, ETH_P_IP, &ip.packet(&udp(1, VXLAN_PORT, &[0x08; 16])));
    assert_only_class(&liar, 1, RxClass::NonIpv4);
}

#[test]
fn ip_options_are_counted_and_not_parsed() {
    let mut ip = underlay_udp();
    ip.options = vec![0x01, 0x01, 0x01, 0x00]; // NOP NOP NOP EOL
    let frame = vxlan_frame_with(&ip, VXLAN_PORT, 0x08, 4096, &inner_frame(20));
    let stats = assert_only_class(&frame, 1, RxClass::Ipv4Options);
    assert!(stats.per_vni.is_empty());
}

#[test]
fn fragments_are_counted_and_not_parsed() {
    for frag_off in [0x2000, 0x0001, 0x20b9] {
        let mut ip = underlay_udp();
        ip.frag_off = frag_off;
        let frame = vxlan_frame_with(&ip, VXLAN_PORT, 0x08, 4096, &inner_frame(20));
        let stats = assert_only_class(&frame, 1, RxClass::Ipv4Fragment);
        assert!(stats.per_vni.is_empty(), "frag_off {frag_off:#06x}");
    }
}

#[test]
fn dont_fragment_alone_is_not_a_fragment() {
    let mut ip = underlay_udp();
    ip.frag_off = 0x4000;
    let frame = vxlan_frame_with(&ip, VXLAN_PORT, 0x08, 9, &inner_frame(20));
    assert_only_class(&frame, 1, RxClass::Vxlan);
}

#[test]
fn inner_frame_is_never_inspected() {
    // A VXLAN frame whose inner frame is garbage is still a VXLAN frame.
    let frame = vxlan_frame(5, &[0xde, 0xad]);
    let stats = assert_only_class(&frame, 1, RxClass::Vxlan);
    assert_eq!(stats.vni(5).packets, 1);
}
