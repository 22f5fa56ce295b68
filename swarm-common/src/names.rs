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

/// Every program name, for checks that the object has them all.
pub const ALL_PROGRAMS: &[&str] = &[PROG_XDP_VXLAN_COUNT];

/// Every map name, for checks that the object has them all.
pub const ALL_MAPS: &[&str] = &[MAP_VXLAN_VNI_STATS, MAP_XDP_RX_CLASS_STATS];
