//! Counter maps: keys, values and the classification of received frames.

/// Maximum number of VNIs the per-VNI statistics map holds. VNIs beyond this
/// are still counted in [`RxClass::Vxlan`], just not broken out per VNI.
pub const MAX_VNI_STATS: u32 = 4096;

/// Packet and byte counter, one per CPU in per-CPU maps; user space sums them.
/// `bytes` counts whole frames as the program saw them, Ethernet header included.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Counter>() == 16);

impl Counter {
    /// Adds another counter (e.g. another CPU's share) to this one.
    #[must_use]
    pub const fn plus(self, other: Counter) -> Counter {
        Counter {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

/// Key of the per-VNI statistics map: a 24-bit VNI in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VniKey {
    pub vni: u32,
}

const _: () = assert!(core::mem::size_of::<VniKey>() == 4);

/// What the underlay XDP program made of a frame. Each frame is counted in
/// exactly one class; the value is the index into the class statistics array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RxClass {
    /// Well-formed IPv4/UDP/VXLAN with the I flag set (also counted per VNI).
    Vxlan = 0,
    /// A well-formed IPv4 frame that is not VXLAN (other protocol or UDP port).
    NotVxlan = 1,
    /// Not IPv4: another EtherType (ARP, IPv6, VLAN tags, ...) or IP version.
    NonIpv4 = 2,
    /// Shorter than an Ethernet header.
    TruncatedEthernet = 3,
    /// EtherType IPv4 but shorter than a 20-byte IPv4 header, or IHL < 5.
    TruncatedIpv4 = 4,
    /// UDP in IPv4 with options (IHL > 5): not parsed further.
    Ipv4Options = 5,
    /// UDP in an IPv4 fragment (MF set or offset non-zero): not parsed further.
    Ipv4Fragment = 6,
    /// IPv4 protocol UDP but shorter than a UDP header.
    TruncatedUdp = 7,
    /// UDP to the VXLAN port but shorter than a VXLAN header.
    TruncatedVxlan = 8,
    /// UDP to the VXLAN port without the I (valid VNI) flag.
    BadVxlanFlags = 9,
}

/// Number of [`RxClass`] values: the size of the class statistics array.
pub const RX_CLASS_COUNT: u32 = 10;

impl RxClass {
    /// All classes, in index order.
    pub const ALL: [RxClass; RX_CLASS_COUNT as usize] = [
        RxClass::Vxlan,
        RxClass::NotVxlan,
        RxClass::NonIpv4,
        RxClass::TruncatedEthernet,
        RxClass::TruncatedIpv4,
        RxClass::Ipv4Options,
        RxClass::Ipv4Fragment,
        RxClass::TruncatedUdp,
        RxClass::TruncatedVxlan,
        RxClass::BadVxlanFlags,
    ];

    /// Index into the class statistics array.
    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Class for an array index, if it is one.
    #[must_use]
    pub const fn from_index(index: u32) -> Option<RxClass> {
        if index < RX_CLASS_COUNT { Some(RxClass::ALL[index as usize]) } else { None }
    }

    /// Stable, human-readable name, as printed by the CLI.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RxClass::Vxlan => "vxlan",
            RxClass::NotVxlan => "not-vxlan",
            RxClass::NonIpv4 => "non-ipv4",
            RxClass::TruncatedEthernet => "truncated-ethernet",
            RxClass::TruncatedIpv4 => "truncated-ipv4",
            RxClass::Ipv4Options => "ipv4-options",
            RxClass::Ipv4Fragment => "ipv4-fragment",
            RxClass::TruncatedUdp => "truncated-udp",
            RxClass::TruncatedVxlan => "truncated-vxlan",
            RxClass::BadVxlanFlags => "bad-vxlan-flags",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers without padding; any bit pattern is valid.
    unsafe impl aya::Pod for super::Counter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::VniKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_indices_are_dense_and_round_trip() {
        for (i, class) in RxClass::ALL.iter().enumerate() {
            let i = u32::try_from(i).unwrap();
            assert_eq!(class.index(), i);
            assert_eq!(RxClass::from_index(i), Some(*class));
        }
        assert_eq!(RxClass::from_index(RX_CLASS_COUNT), None);
    }

    #[test]
    fn class_names_are_unique() {
        let mut names: Vec<_> = RxClass::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RxClass::ALL.len());
    }

    #[test]
    fn counters_add() {
        let a = Counter { packets: 1, bytes: 100 };
        let b = Counter { packets: 2, bytes: 50 };
        assert_eq!(a.plus(b), Counter { packets: 3, bytes: 150 });
    }
}
