//! The underlay VXLAN counter: an XDP program on a host's underlay interface
//! that counts VXLAN frames per VNI and classifies everything else, passing
//! every frame on untouched.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, PerCpuHashMap},
    programs::{Xdp, XdpMode, links::FdLink, links::PinnedLink},
};
use swarm_common::{
    names::{MAP_VXLAN_VNI_STATS, MAP_XDP_RX_CLASS_STATS, PROG_XDP_VXLAN_COUNT},
    stats::{Counter, RxClass, VniKey},
};

use super::{DatapathError, PinLayout};

/// How to attach an XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) XDP if the driver supports it, else generic.
    #[default]
    Auto,
    /// Native XDP only.
    Native,
    /// Generic (skb) XDP only.
    Generic,
}

impl AttachMode {
    fn candidates(self) -> &'static [XdpMode] {
        match self {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        }
    }
}

/// Counters summed over all CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanStats {
    /// Well-formed VXLAN frames per VNI.
    pub per_vni: BTreeMap<u32, Counter>,
    /// Every frame seen, by class (all classes present, zero or not).
    pub per_class: BTreeMap<RxClass, Counter>,
}

impl VxlanStats {
    /// The counter of one class.
    pub fn class(&self, class: RxClass) -> Counter {
        self.per_class.get(&class).copied().unwrap_or_default()
    }

    /// The counter of one VNI.
    pub fn vni(&self, vni: u32) -> Counter {
        self.per_vni.get(&vni).copied().unwrap_or_default()
    }

    /// All frames seen.
    pub fn total(&self) -> Counter {
        self.per_class.values().fold(Counter::default(), |a, c| a.plus(*c))
    }
}

/// The counter program of a loaded object, loaded into the kernel (verified)
/// if it was not yet.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP_VXLAN_COUNT)
        .ok_or(DatapathError::MissingProgram(PROG_XDP_VXLAN_COUNT))?
        .try_into()
        .map_err(|source| DatapathError::Program { op: "opening", program: PROG_XDP_VXLAN_COUNT, source })?;
    if prog.fd().is_err() {
        prog.load().map_err(|source| DatapathError::Program {
            op: "loading",
            program: PROG_XDP_VXLAN_COUNT,
            source,
        })?;
    }
    Ok(prog)
}

/// Reads the counters from the maps of a loaded object.
pub fn stats(ebpf: &Ebpf) -> Result<VxlanStats, DatapathError> {
    let vni = ebpf.map(MAP_VXLAN_VNI_STATS).ok_or(DatapathError::MissingMap(MAP_VXLAN_VNI_STATS))?;
    let class = ebpf.map(MAP_XDP_RX_CLASS_STATS).ok_or(DatapathError::MissingMap(MAP_XDP_RX_CLASS_STATS))?;
    read_stats(vni, class)
}

fn read_stats(vni_map: &Map, class_map: &Map) -> Result<VxlanStats, DatapathError> {
    let map_err = |map| move |source| DatapathError::Map { map, source };
    let vni: PerCpuHashMap<&MapData, VniKey, Counter> =
        PerCpuHashMap::try_from(vni_map).map_err(map_err(MAP_VXLAN_VNI_STATS))?;
    let class: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(class_map).map_err(map_err(MAP_XDP_RX_CLASS_STATS))?;
    let sum =
        |values: &aya::maps::PerCpuValues<Counter>| values.iter().fold(Counter::default(), |a, c| a.plus(*c));
    let mut stats = VxlanStats::default();
    for entry in &vni {
        let (key, values) = entry.map_err(map_err(MAP_VXLAN_VNI_STATS))?;
        stats.per_vni.insert(key.vni, sum(&values));
    }
    for c in RxClass::ALL {
        let values = class.get(&c.index(), 0).map_err(map_err(MAP_XDP_RX_CLASS_STATS))?;
        stats.per_class.insert(c, sum(&values));
    }
    Ok(stats)
}

/// Attaches the counter to `iface` in the calling thread's network namespace
/// and pins the link under `pins`, so it stays attached after this process
/// exits. Returns the XDP mode in use.
pub fn attach_pinned(pins: &PinLayout, iface: &str, mode: AttachMode) -> Result<XdpMode, DatapathError> {
    // Check everything the user named before changing anything.
    let ifindex = if_index(iface)?;
    let link_path = pins.link(PROG_XDP_VXLAN_COUNT, iface);
    if link_path.exists() {
        return Err(DatapathError::AlreadyAttached {
            program: PROG_XDP_VXLAN_COUNT,
            iface: iface.to_owned(),
        });
    }
    pins.prepare()?;
    let mut ebpf = super::load(Some(pins))?;
    let prog = program(&mut ebpf)?;
    let mut last_err = None;
    for &m in mode.candidates() {
        match prog.attach_to_if_index(ifindex, m) {
            Ok(id) => {
                let link = prog.take_link(id).map_err(|source| DatapathError::Program {
                    op: "taking link of",
                    program: PROG_XDP_VXLAN_COUNT,
                    source,
                })?;
                let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
                    op: "pinning link at",
                    path: link_path.clone(),
                    detail: format!("the kernel attached XDP without a bpf_link: {e}"),
                })?;
                fd_link.pin(&link_path).map_err(|e| DatapathError::Pin {
                    op: "pinning link at",
                    path: link_path.clone(),
                    detail: crate::error::chain(&e),
                })?;
                return Ok(m);
            }
            Err(e) => last_err = Some(e),
        }
    }
    let source = last_err.expect("at least one mode was tried");
    if busy(&source) {
        return Err(DatapathError::AlreadyAttached {
            program: PROG_XDP_VXLAN_COUNT,
            iface: iface.to_owned(),
        });
    }
    Err(DatapathError::Program { op: "attaching", program: PROG_XDP_VXLAN_COUNT, source })
}

/// Detaches a counter attached with [`attach_pinned`]. When no attachment is
/// left, the pinned maps are removed too.
pub fn detach_pinned(pins: &PinLayout, iface: &str) -> Result<(), DatapathError> {
    let link_path = pins.link(PROG_XDP_VXLAN_COUNT, iface);
    if !link_path.exists() {
        return Err(DatapathError::NotAttached { program: PROG_XDP_VXLAN_COUNT, iface: iface.to_owned() });
    }
    let pin_err = |e: &dyn std::fmt::Display| DatapathError::Pin {
        op: "unpinning link at",
        path: link_path.clone(),
        detail: e.to_string(),
    };
    let link = PinnedLink::from_pin(&link_path).map_err(|e| pin_err(&e))?;
    // Dropping the last reference to the link detaches the program.
    drop(link.unpin().map_err(|e| pin_err(&e))?);
    if pins.links().is_empty() {
        for m in swarm_common::names::ALL_MAPS {
            let p = pins.map(m);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(DatapathError::Io { op: "removing", path: p, source });
                }
            }
        }
    }
    Ok(())
}

/// Reads the counters from maps pinned under `pins`.
pub fn pinned_stats(pins: &PinLayout) -> Result<VxlanStats, DatapathError> {
    let open = |name: &'static str| -> Result<Map, DatapathError> {
        let path = pins.map(name);
        if !path.exists() {
            return Err(DatapathError::NotLoaded {
                program: PROG_XDP_VXLAN_COUNT,
                pins: pins.root().to_owned(),
            });
        }
        let data = MapData::from_pin(&path).map_err(|e| DatapathError::Pin {
            op: "opening pinned map",
            path: path.clone(),
            detail: crate::error::chain(&e),
        })?;
        Map::from_map_data(data).map_err(|source| DatapathError::Map { map: name, source })
    };
    read_stats(&open(MAP_VXLAN_VNI_STATS)?, &open(MAP_XDP_RX_CLASS_STATS)?)
}

fn if_index(iface: &str) -> Result<u32, DatapathError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| DatapathError::NoSuchInterface(iface.to_owned()))
}

fn busy(e: &aya::programs::ProgramError) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EBUSY | libc::EEXIST))
        {
            return true;
        }
        cur = err.source();
    }
    false
}
