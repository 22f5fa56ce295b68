//! The overlay datapath's maps: what user space tells the programs about
//! this host, its networks, its endpoints and the other hosts, and the
//! per-reason drop counters the programs keep.

/// Most overlay networks a host takes part in.
pub const MAX_NETWORKS: u32 = 1024;
/// Most endpoints (local and remote) a host knows about, over all networks.
pub const MAX_ENDPOINTS: u32 = 65_536;
/// Most local endpoints (host-side veths) on one host.
pub const MAX_LOCAL_ENDPOINTS: u32 = 4096;
/// Most hosts in a swarm.
pub const MAX_HOSTS: u32 = 4096;

/// UDP source ports for VXLAN are taken from the inner flow's hash in
/// [`SRC_PORT_MIN`, `SRC_PORT_MIN` + `SRC_PORT_MASK`] (RFC 7348 recommends the
/// dynamic range), so underlay ECMP/RSS spreads flows.
pub const SRC_PORT_MIN: u16 = 49152;
pub const SRC_PORT_MASK: u16 = 0x3fff;
/// TTL of the outer IPv4 header.
pub const OUTER_TTL: u8 = 64;
/// The MAC address endpoints see for their network's gateway; ARP for the
/// gateway is answered with it (nothing routes through it yet).
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x1e, 0x00, 0x01];

/// This host's datapath settings (array of one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// Underlay IPv4 address, network byte order.
    pub underlay_ip: [u8; 4],
    /// ifindex of the underlay interface.
    pub underlay_ifindex: u32,
    /// VXLAN UDP port (the swarm's data path port), host byte order.
    pub vxlan_port: u16,
    pub pad: u16,
}
const _: () = assert!(core::mem::size_of::<HostConfig>() == 12);

/// An overlay network present on this host, by VNI.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Gateway IPv4 address, network byte order (ARP answered with [`GATEWAY_MAC`]).
    pub gateway_ip: [u8; 4],
    /// Subnet address, network byte order.
    pub subnet: [u8; 4],
    /// Subnet prefix length.
    pub prefix_len: u8,
    pub pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<NetworkInfo>() == 12);

impl NetworkInfo {
    /// True if `ip` (network byte order) is inside the subnet.
    #[must_use]
    pub const fn contains(&self, ip: [u8; 4]) -> bool {
        let mask = if self.prefix_len == 0 { 0 } else { u32::MAX << (32 - self.prefix_len as u32) };
        (u32::from_be_bytes(ip) & mask) == (u32::from_be_bytes(self.subnet) & mask)
    }
}

/// Key of the member-host table: a host's underlay IPv4, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub ip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<HostKey>() == 4);

/// Things the datapath did, counted per CPU (array indexed by the value).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// A packet from an endpoint encapsulated towards a remote host.
    Encapsulated = 0,
    /// A VXLAN packet decapsulated and delivered to a local endpoint.
    Decapsulated = 1,
    /// A packet delivered between two endpoints of this host.
    DeliveredLocally = 2,
    /// An ARP request from an endpoint answered from the endpoint table.
    ArpReplied = 3,
    /// A new flow to a service frontend was given a backend.
    NewFlow = 4,
    /// A reply's source turned back into its frontend's address.
    ReverseTranslated = 5,
    /// A reply of a published-port flow sent out to its outside client.
    SentToClient = 6,
}

pub const EVENT_COUNT: u32 = 7;

impl Event {
    pub const ALL: [Event; EVENT_COUNT as usize] = [
        Event::Encapsulated,
        Event::Decapsulated,
        Event::DeliveredLocally,
        Event::ArpReplied,
        Event::NewFlow,
        Event::ReverseTranslated,
        Event::SentToClient,
    ];

    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Event::Encapsulated => "encapsulated",
            Event::Decapsulated => "decapsulated",
            Event::DeliveredLocally => "delivered-locally",
            Event::ArpReplied => "arp-replied",
            Event::NewFlow => "new-flow",
            Event::ReverseTranslated => "reverse-translated",
            Event::SentToClient => "sent-to-client",
        }
    }
}

/// Key of the endpoint table: an overlay IP within a network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    pub vni: u32,
    /// Overlay IPv4 address, network byte order.
    pub ip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<EndpointKey>() == 8);

/// [`EndpointInfo::flags`]: the endpoint is on this host.
pub const ENDPOINT_LOCAL: u16 = 1;
/// With [`ENDPOINT_LOCAL`]: the endpoint is the host's own (its address on
/// the ingress network, for clients on the node): both ends of its veth are
/// in the host's namespace, so packets for it leave by the datapath end
/// (`bpf_redirect`) rather than being moved to the peer.
pub const ENDPOINT_HOST: u16 = 2;

/// Where an endpoint is: on this host (its host-side veth) or behind a
/// remote host's underlay address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    pub mac: [u8; 6],
    pub flags: u16,
    /// Remote: the host's underlay IPv4, network byte order. Local: zero.
    pub host_ip: [u8; 4],
    /// Local: ifindex of the endpoint's host-side veth. Remote: zero.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<EndpointInfo>() == 16);

impl EndpointInfo {
    #[must_use]
    pub const fn is_local(&self) -> bool {
        self.flags & ENDPOINT_LOCAL != 0
    }

    #[must_use]
    pub const fn is_host(&self) -> bool {
        self.flags & ENDPOINT_HOST != 0
    }
}

/// A local endpoint, keyed by the ifindex of its host-side veth: what the
/// program on that veth needs to know about the container behind it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalEndpoint {
    pub vni: u32,
    /// The endpoint's overlay IPv4, network byte order.
    pub ip: [u8; 4],
    pub mac: [u8; 6],
    /// `LOCAL_*` bits.
    pub flags: u8,
    pub pad: u8,
}
const _: () = assert!(core::mem::size_of::<LocalEndpoint>() == 16);

/// [`LocalEndpoint::flags`]: the endpoint's interface is a netkit pair, so
/// its program runs in the pair's transmit path, not at TC ingress
/// (`bpf_redirect_peer` is refused there: local deliveries use
/// `bpf_redirect`).
pub const LOCAL_NETKIT: u8 = 1;

/// Why the overlay datapath dropped a packet. One counter per reason
/// (per-CPU array indexed by the value).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// VXLAN from an address that is not a member host of the swarm.
    NonMemberSource = 0,
    /// VXLAN for a VNI no local network has.
    UnknownVni = 1,
    /// Decapsulated packet for an overlay IP that is not on this host.
    UnknownLocalDestination = 2,
    /// VXLAN to our port that is malformed (flags, truncated inner frame).
    MalformedVxlan = 3,
    /// From an endpoint: destination IP in the network but unknown.
    UnknownDestination = 4,
    /// From an endpoint: not IPv4 or ARP (IPv6, other EtherTypes).
    UnsupportedProtocol = 5,
    /// From an endpoint: destination outside the overlay network (no routing yet).
    NoRoute = 6,
    /// From an endpoint: a truncated or malformed header.
    Malformed = 7,
    /// From a veth the datapath does not know (map out of step).
    UnknownSourceEndpoint = 8,
    /// The source address is not the endpoint's own (spoofing).
    SpoofedSource = 9,
    /// ARP for an address no endpoint of the network has.
    ArpUnknownTarget = 10,
    /// Growing or shrinking the packet for (de)encapsulation failed.
    AdjustRoomFailed = 11,
    /// The datapath has no host configuration yet.
    NotConfigured = 12,
    /// To a service frontend that has no running backend.
    NoBackend = 13,
    /// To a service frontend: a fragment, IP options or a truncated L4
    /// header (never rewritten).
    MalformedServicePacket = 14,
}

pub const DROP_REASON_COUNT: u32 = 15;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASON_COUNT as usize] = [
        DropReason::NonMemberSource,
        DropReason::UnknownVni,
        DropReason::UnknownLocalDestination,
        DropReason::MalformedVxlan,
        DropReason::UnknownDestination,
        DropReason::UnsupportedProtocol,
        DropReason::NoRoute,
        DropReason::Malformed,
        DropReason::UnknownSourceEndpoint,
        DropReason::SpoofedSource,
        DropReason::ArpUnknownTarget,
        DropReason::AdjustRoomFailed,
        DropReason::NotConfigured,
        DropReason::NoBackend,
        DropReason::MalformedServicePacket,
    ];

    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::NonMemberSource => "non-member-source",
            DropReason::UnknownVni => "unknown-vni",
            DropReason::UnknownLocalDestination => "unknown-local-destination",
            DropReason::MalformedVxlan => "malformed-vxlan",
            DropReason::UnknownDestination => "unknown-destination",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::NoRoute => "no-route",
            DropReason::Malformed => "malformed",
            DropReason::UnknownSourceEndpoint => "unknown-source-endpoint",
            DropReason::SpoofedSource => "spoofed-source",
            DropReason::ArpUnknownTarget => "arp-unknown-target",
            DropReason::AdjustRoomFailed => "adjust-room-failed",
            DropReason::NotConfigured => "not-configured",
            DropReason::NoBackend => "no-backend",
            DropReason::MalformedServicePacket => "malformed-service-packet",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]` structs of integers and byte arrays with explicit
    // padding fields; every bit pattern is valid.
    unsafe impl aya::Pod for super::HostConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetworkInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EndpointInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LocalEndpoint {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::HostKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_dense_with_unique_names() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index() as usize, i);
        }
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
    }

    #[test]
    fn subnets_contain_their_addresses() {
        let n = NetworkInfo { gateway_ip: [10, 0, 1, 1], subnet: [10, 0, 1, 0], prefix_len: 24, pad: [0; 3] };
        assert!(n.contains([10, 0, 1, 200]));
        assert!(!n.contains([10, 0, 2, 1]));
        let all = NetworkInfo { prefix_len: 0, ..n };
        assert!(all.contains([192, 168, 0, 1]));
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range() {
        assert_eq!(SRC_PORT_MIN | SRC_PORT_MASK, u16::MAX);
        assert_eq!(SRC_PORT_MIN & SRC_PORT_MASK, 0);
    }
}
