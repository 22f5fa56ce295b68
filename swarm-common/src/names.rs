//! Names of eBPF programs and maps, as user space looks them up in the object.
//!
//! Program names are the function names in `swarm-ebpf` and map names are the
//! static names there; a user-space test loads the object and checks that
//! every name below exists, so a rename on either side fails the build's tests.

/// XDP program on a host's underlay interface that counts VXLAN traffic per
/// VNI and classifies everything else; it always passes packets on.
pub const PROG_XDP_VXLAN_COUNT: &str = "xdp_vxlan_count";

/// `PERCPU_HASH` [`crate::stats::VniKey`] → [`crate::stats::Counter`]:
/// well-formed VXLAN frames received, per VNI.
pub const MAP_VXLAN_VNI_STATS: &str = "VXLAN_VNI_STATS";

/// `PERCPU_ARRAY` indexed by [`crate::stats::RxClass`] → [`crate::stats::Counter`]:
/// every frame the underlay XDP program saw, by classification.
pub const MAP_XDP_RX_CLASS_STATS: &str = "XDP_RX_CLASS_STATS";

/// TC, ingress of each endpoint's host-side veth (packets leaving the
/// endpoint): answers ARP, delivers to local endpoints, encapsulates the
/// rest in VXLAN towards the destination's host.
pub const PROG_TC_FROM_ENDPOINT: &str = "tc_from_endpoint";

/// TC, ingress of the underlay interface: decapsulates VXLAN for local
/// endpoints and delivers it; drops VXLAN from non-members and for unknown
/// VNIs; passes everything else.
pub const PROG_TC_FROM_UNDERLAY: &str = "tc_from_underlay";

/// XDP on the underlay interface: drops VXLAN from non-members and for
/// unknown VNIs before the stack sees it; passes everything else (the TC
/// program decapsulates).
pub const PROG_XDP_UNDERLAY: &str = "xdp_underlay";

/// `ARRAY` of one [`crate::overlay::HostConfig`].
pub const MAP_OVERLAY_CONFIG: &str = "OVERLAY_CONFIG";
/// `HASH` VNI → [`crate::overlay::NetworkInfo`].
pub const MAP_OVERLAY_NETWORKS: &str = "OVERLAY_NETWORKS";
/// `HASH` [`crate::overlay::EndpointKey`] → [`crate::overlay::EndpointInfo`].
pub const MAP_OVERLAY_ENDPOINTS: &str = "OVERLAY_ENDPOINTS";
/// `HASH` host-side veth ifindex → [`crate::overlay::LocalEndpoint`].
pub const MAP_OVERLAY_LOCAL: &str = "OVERLAY_LOCAL";
/// `HASH` [`crate::overlay::HostKey`] → `u32` (1): hosts allowed to send VXLAN.
pub const MAP_OVERLAY_HOSTS: &str = "OVERLAY_HOSTS";
/// `PERCPU_ARRAY` indexed by [`crate::overlay::DropReason`] → [`crate::stats::Counter`].
pub const MAP_OVERLAY_DROPS: &str = "OVERLAY_DROPS";
/// `PERCPU_ARRAY` indexed by [`crate::overlay::Event`] → [`crate::stats::Counter`].
pub const MAP_OVERLAY_EVENTS: &str = "OVERLAY_EVENTS";

/// cgroup `connect4` on the cgroup v2 root: a TCP/UDP `connect()` by a
/// process of this host's network namespace to a loopback address or the
/// host's underlay address on a published port is sent to a backend (the
/// socket-level half of the routing mesh, for clients on the node itself).
pub const PROG_SOCK_CONNECT4: &str = "sock_connect4";
/// `ARRAY` of one `u64`: the network namespace cookie `sock_connect4` acts in
/// (the hook sees every process on the machine).
pub const MAP_SOCK_NETNS: &str = "SOCK_NETNS";

/// `HASH` [`crate::lb::FrontendKey`] → [`crate::lb::Frontend`]: service VIPs
/// and published ports.
pub const MAP_SERVICE_FRONTENDS: &str = "SERVICE_FRONTENDS";
/// `HASH` [`crate::lb::BackendKey`] → [`crate::lb::Backend`].
pub const MAP_SERVICE_BACKENDS: &str = "SERVICE_BACKENDS";
/// `LRU_HASH` [`crate::lb::FlowKey`] → [`crate::lb::Flow`]: the translation
/// of each flow, both directions.
pub const MAP_SERVICE_FLOWS: &str = "SERVICE_FLOWS";

/// `ARRAY` of one [`crate::lb::HostEndpoint`]: this host's endpoint on ingress.
pub const MAP_LB_HOST: &str = "LB_HOST";

/// Every program name, for checks that the object has them all.
pub const ALL_PROGRAMS: &[&str] = &[
    PROG_XDP_VXLAN_COUNT,
    PROG_TC_FROM_ENDPOINT,
    PROG_TC_FROM_UNDERLAY,
    PROG_XDP_UNDERLAY,
    PROG_SOCK_CONNECT4,
];

/// Every map name, for checks that the object has them all.
pub const ALL_MAPS: &[&str] = &[
    MAP_VXLAN_VNI_STATS,
    MAP_XDP_RX_CLASS_STATS,
    MAP_OVERLAY_CONFIG,
    MAP_OVERLAY_NETWORKS,
    MAP_OVERLAY_ENDPOINTS,
    MAP_OVERLAY_LOCAL,
    MAP_OVERLAY_HOSTS,
    MAP_OVERLAY_DROPS,
    MAP_OVERLAY_EVENTS,
    MAP_SERVICE_FRONTENDS,
    MAP_SERVICE_BACKENDS,
    MAP_SERVICE_FLOWS,
    MAP_SOCK_NETNS,
    MAP_LB_HOST,
];
