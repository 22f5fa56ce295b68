//! Building frames byte by byte for eBPF unit tests (`BPF_PROG_TEST_RUN`).
//!
//! Deliberately independent of `swarm_common::wire`: a test that used the
//! same layout code as the program would not notice a layout bug.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const VXLAN_PORT: u16 = 4789;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Ethernet II frame.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 header fields a test may want to vary.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// Flags and fragment offset, host order (0x4000 = DF).
    pub frag_off: u16,
    /// Option bytes; padded to a multiple of 4.
    pub options: Vec<u8>,
    /// Overrides the version nibble (4).
    pub version: u8,
    /// Overrides the computed IHL.
    pub ihl: Option<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Ipv4 {
        Ipv4 { src, dst, proto, ttl: 64, frag_off: 0x4000, options: Vec::new(), version: 4, ihl: None }
    }

    /// The IPv4 packet: header (with a correct checksum) and payload.
    pub fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let mut opts = self.options.clone();
        while !opts.len().is_multiple_of(4) {
            opts.push(0);
        }
        let hlen = 20 + opts.len();
        let ihl = self.ihl.unwrap_or(u8::try_from(hlen / 4).expect("IPv4 header too long"));
        let total = u16::try_from(hlen + payload.len()).expect("IPv4 packet too long");
        let mut h = Vec::with_capacity(hlen + payload.len());
        h.push((self.version << 4) | (ihl & 0x0f));
        h.push(0);
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&0u16.to_be_bytes());
        h.extend_from_slice(&self.frag_off.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&opts);
        let c = checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(payload);
        h
    }
}

/// UDP datagram with checksum 0 (allowed over IPv4, and what VXLAN senders use).
pub fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(8 + payload.len()).expect("UDP datagram too long");
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&src_port.to_be_bytes());
    u.extend_from_slice(&dst_port.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// VXLAN header (flags byte, 24-bit VNI) followed by the inner frame.
pub fn vxlan(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    assert!(vni < 1 << 24, "VNI is 24 bits");
    let v = vni.to_be_bytes();
    let mut h = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
    h.extend_from_slice(inner);
    h
}

/// A small inner frame: ICMP-ish IPv4 between two overlay addresses.
pub fn inner_frame(payload_len: usize) -> Vec<u8> {
    let ip = Ipv4::new(Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3), 1);
    ethernet(
        [0x02, 0x42, 10, 0, 0, 3],
        [0x02, 0x42, 10, 0, 0, 2],
        ETH_P_IP,
        &ip.packet(&vec![0xab; payload_len]),
    )
}

/// A complete, well-formed VXLAN frame from host A to host B on the underlay.
pub fn vxlan_frame(vni: u32, inner: &[u8]) -> Vec<u8> {
    vxlan_frame_with(&Ipv4::new(UNDERLAY_A, UNDERLAY_B, IPPROTO_UDP), VXLAN_PORT, 0x08, vni, inner)
}

/// A VXLAN-shaped frame with the given IPv4 header, UDP port and flags.
pub fn vxlan_frame_with(ip: &Ipv4, dst_port: u16, flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let udp = udp(49152, dst_port, &vxlan(flags, vni, inner));
    ethernet(MAC_B, MAC_A, ETH_P_IP, &ip.packet(&udp))
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// An Ethernet/IPv4 ARP request from `sender` for `target`.
pub fn arp_request(sender_mac: [u8; 6], sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target_ip.octets());
    ethernet([0xff; 6], sender_mac, ETH_P_ARP, &a)
}

/// An Ethernet/IPv4 ARP reply, as the datapath should build it.
pub fn arp_reply(
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip.octets());
    a.extend_from_slice(&target_mac);
    a.extend_from_slice(&target_ip.octets());
    ethernet(target_mac, sender_mac, ETH_P_ARP, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_checksum_verifies_to_zero() {
        let p = Ipv4::new(UNDERLAY_A, UNDERLAY_B, IPPROTO_UDP).packet(&[1, 2, 3]);
        assert_eq!(checksum(&p[..20]), 0);
    }

    #[test]
    fn known_checksum() {
        // RFC 1071 example bytes.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn vxlan_frame_layout() {
        let f = vxlan_frame(0x12_3456, &[0xee; 14]);
        assert_eq!(f.len(), 14 + 20 + 8 + 8 + 14);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([f[36], f[37]]), 4789);
        assert_eq!(&f[42..50], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
    }
}
