//! The eBPF datapath: loading the embedded programs, pinning, attaching, and
//! reading their maps. Program and map names come from `swarm_common::names`.

pub mod balancer;
pub mod bpffs;
pub mod host;
pub mod netlink;
pub mod overlay;
pub mod vxlan_counter;

use aya::{Ebpf, EbpfLoader};
use swarm_common::names;

pub use bpffs::PinLayout;

/// The eBPF object built from `swarm-ebpf` by `cargo xtask build-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/swarm-ebpf.o"));

/// What went wrong in the datapath.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatapathError {
    /// The object did not load: usually the verifier rejected a program or the
    /// kernel lacks a map type; needs CAP_BPF (root).
    #[error("loading the eBPF object")]
    Load(#[source] aya::EbpfError),
    /// The object lacks a program `swarm_common::names` promises: the eBPF and
    /// user-space builds are out of step.
    #[error("the eBPF object has no program {0:?}; rebuild with `cargo xtask build-ebpf`")]
    MissingProgram(&'static str),
    /// As above, for maps.
    #[error("the eBPF object has no map {0:?}; rebuild with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
    /// Loading into the kernel (verifier) or attaching a program failed.
    #[error("{op} {program}")]
    Program {
        op: &'static str,
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Reading or opening a map failed.
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// Pinning an object or finding a pinned one failed.
    #[error("{op} {}: {detail}", path.display())]
    Pin { op: &'static str, path: std::path::PathBuf, detail: String },
    /// A netlink request failed.
    #[error("{op}: {detail}")]
    Netlink { op: &'static str, detail: String },
    /// A network interface named by the user does not exist in this namespace.
    #[error("no such network interface: {0}")]
    NoSuchInterface(String),
    /// The program is already attached to the interface.
    #[error("{program} is already attached to {iface}")]
    AlreadyAttached { program: &'static str, iface: String },
    /// Nothing of ours is attached to the interface.
    #[error("{program} is not attached to {iface}")]
    NotAttached { program: &'static str, iface: String },
    /// Nothing is pinned where the program's maps should be.
    #[error("{program} is not loaded (nothing pinned under {}); attach it with `swarm-agent debug xdp attach IFACE`", pins.display())]
    NotLoaded { program: &'static str, pins: std::path::PathBuf },
    /// The pin directory is not on a bpf filesystem and cannot be made one.
    #[error("{} is not on a bpf filesystem; mount one with `mount -t bpf bpf {}`", .0.display(), .0.display())]
    NotBpffs(std::path::PathBuf),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the embedded object. With a pin layout, every map is pinned under
/// it, and maps already pinned there are reused (so counters and tables
/// survive an agent restart); without one, the maps are private to the
/// returned handle (unit tests).
pub fn load(pins: Option<&PinLayout>) -> Result<Ebpf, DatapathError> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<_> =
        pins.map(|p| names::ALL_MAPS.iter().map(|m| (*m, p.map(m))).collect()).unwrap_or_default();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader.load(OBJECT).map_err(DatapathError::Load)?;
    for name in names::ALL_PROGRAMS {
        if ebpf.program(name).is_none() {
            return Err(DatapathError::MissingProgram(name));
        }
    }
    for name in names::ALL_MAPS {
        if ebpf.map(name).is_none() {
            return Err(DatapathError::MissingMap(name));
        }
    }
    Ok(ebpf)
}
