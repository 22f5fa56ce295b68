//! Where the agent pins its eBPF objects on a bpf filesystem.
//!
//! ```text
//! <root>/maps/<MAP_NAME>            every map, by its name in swarm_common::names
//! <root>/links/<program>@<iface>    one pinned link per attachment
//! ```
//!
//! The root defaults to `/sys/fs/bpf/swarm-agent`; each testbed host has its
//! own bpffs instance and points `SWARM_BPFFS` into it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::DatapathError;

/// Default pin root on a normal host.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/swarm-agent";
const SYS_FS_BPF: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directories of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pin path of a map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    /// Pin path of a program's link on an interface.
    pub fn link(&self, program: &str, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("{program}@{iface}"))
    }

    /// Links pinned under this layout, as `(program, iface)`.
    pub fn links(&self) -> Vec<(String, String)> {
        let Ok(rd) = fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        let mut v: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let (p, i) = name.split_once('@')?;
                Some((p.to_owned(), i.to_owned()))
            })
            .collect();
        v.sort();
        v
    }

    /// Makes sure the root is on a bpffs and its directories exist. Mounts
    /// bpffs on `/sys/fs/bpf` if the root is below it and nothing is mounted
    /// there yet (as systemd would on a normal host).
    pub fn prepare(&self) -> Result<(), DatapathError> {
        let sys_fs_bpf = Path::new(SYS_FS_BPF);
        if self.root.starts_with(sys_fs_bpf) && !is_bpffs(sys_fs_bpf) {
            nix::mount::mount(
                Some("bpf"),
                sys_fs_bpf,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| DatapathError::Io {
                op: "mount bpffs on",
                path: sys_fs_bpf.into(),
                source: e.into(),
            })?;
        }
        let existing = self.root.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            return Err(DatapathError::NotBpffs(self.root.clone()));
        }
        for d in [self.root.join("maps"), self.root.join("links")] {
            fs::create_dir_all(&d).map_err(|source| DatapathError::Io {
                op: "create",
                path: d.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let l = PinLayout::new("/x");
        assert_eq!(l.map("M"), PathBuf::from("/x/maps/M"));
        assert_eq!(l.link("p", "eth0"), PathBuf::from("/x/links/p@eth0"));
    }

    #[test]
    fn a_plain_directory_is_refused() {
        let dir = std::env::temp_dir().join(format!("swarm-bpffs-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let err = PinLayout::new(dir.join("pins")).prepare().unwrap_err();
        assert!(matches!(err, DatapathError::NotBpffs(_)), "{err}");
        assert!(!dir.join("pins").exists(), "nothing is created on refusal");
        fs::remove_dir_all(dir).unwrap();
    }
}
