//! On-the-wire header layouts (network byte order) the datapath parses.
//!
//! All fields are byte arrays, so the structs have alignment 1 and can be read
//! at any packet offset.

pub const ETH_HDR_LEN: usize = 14;
pub const IPV4_HDR_LEN: usize = 20;
pub const UDP_HDR_LEN: usize = 8;
pub const VXLAN_HDR_LEN: usize = 8;

/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// Length of an Ethernet/IPv4 ARP packet after the Ethernet header.
pub const ARP_LEN: usize = 28;
/// ARP operations.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// Offsets of the checksum field in the TCP and UDP headers.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
/// VXLAN flags byte: the I flag, "VNI is valid" (RFC 7348 §5).
pub const VXLAN_FLAG_I: u8 = 0x08;
/// IPv4 `frag_off` bits: more-fragments flag and the offset field.
pub const IPV4_MF: u16 = 0x2000;
pub const IPV4_OFFSET_MASK: u16 = 0x1fff;

/// Ethernet II header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: [u8; 2],
}

/// IPv4 header without options.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag_off: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// UDP header.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// VXLAN header (RFC 7348).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanHdr {
    pub flags: u8,
    pub reserved1: [u8; 3],
    pub vni: [u8; 3],
    pub reserved2: u8,
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HDR_LEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_HDR_LEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HDR_LEN);
const _: () = assert!(core::mem::size_of::<VxlanHdr>() == VXLAN_HDR_LEN);

impl EthHdr {
    #[must_use]
    pub const fn ether_type(&self) -> u16 {
        u16::from_be_bytes(self.ether_type)
    }
}

impl Ipv4Hdr {
    #[must_use]
    pub const fn version(&self) -> u8 {
        self.version_ihl >> 4
    }

    /// Header length in 32-bit words.
    #[must_use]
    pub const fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }

    /// True for any fragment: more-fragments set or a non-zero offset.
    #[must_use]
    pub const fn is_fragment(&self) -> bool {
        u16::from_be_bytes(self.frag_off) & (IPV4_MF | IPV4_OFFSET_MASK) != 0
    }

    /// The header checksum (RFC 791) over all fields but `check`, i.e. the
    /// value to store in `check`.
    #[must_use]
    #[inline]
    pub const fn checksum(&self) -> u16 {
        let words = [
            u16::from_be_bytes([self.version_ihl, self.tos]),
            u16::from_be_bytes(self.tot_len),
            u16::from_be_bytes(self.id),
            u16::from_be_bytes(self.frag_off),
            u16::from_be_bytes([self.ttl, self.proto]),
            u16::from_be_bytes([self.src[0], self.src[1]]),
            u16::from_be_bytes([self.src[2], self.src[3]]),
            u16::from_be_bytes([self.dst[0], self.dst[1]]),
            u16::from_be_bytes([self.dst[2], self.dst[3]]),
        ];
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < words.len() {
            sum += words[i] as u32;
            i += 1;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

impl UdpHdr {
    #[must_use]
    pub const fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }
}

impl VxlanHdr {
    /// The 24-bit VNI in host byte order.
    #[must_use]
    pub const fn vni(&self) -> u32 {
        u32::from_be_bytes([0, self.vni[0], self.vni[1], self.vni[2]])
    }

    #[must_use]
    pub const fn has_vni_flag(&self) -> bool {
        self.flags & VXLAN_FLAG_I != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vni_is_24_bits_big_endian() {
        let h = VxlanHdr { flags: VXLAN_FLAG_I, vni: [0x12, 0x34, 0x56], ..Default::default() };
        assert_eq!(h.vni(), 0x0012_3456);
        assert!(h.has_vni_flag());
    }

    #[test]
    fn ipv4_checksum_matches_a_known_header() {
        // A header captured from the wire: 192.168.0.1 -> 192.168.0.199, UDP,
        // checksum 0xb861.
        let h = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            tot_len: [0x00, 0x73],
            id: [0, 0],
            frag_off: [0x40, 0x00],
            ttl: 0x40,
            proto: IPPROTO_UDP,
            check: [0xff, 0xff],
            src: [192, 168, 0, 1],
            dst: [192, 168, 0, 199],
        };
        assert_eq!(h.checksum(), 0xb861);
    }

    #[test]
    fn fragments_are_detected() {
        let mut h = Ipv4Hdr::default();
        assert!(!h.is_fragment());
        h.frag_off = 0x4000u16.to_be_bytes(); // DF only
        assert!(!h.is_fragment());
        h.frag_off = IPV4_MF.to_be_bytes();
        assert!(h.is_fragment());
        h.frag_off = 1u16.to_be_bytes();
        assert!(h.is_fragment());
    }
}
