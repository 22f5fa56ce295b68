//! What a node keeps on its own disk, under `<data-root>/swarm/` (the same
//! layout idea as Docker's `/var/lib/docker/swarm/`):
//!
//! ```text
//! state.json                      node ID, cluster ID, role, addresses, managers
//! certificates/swarm-node.crt     this node's certificate
//! certificates/swarm-node.key     its key (0600; never leaves the node)
//! certificates/swarm-root-ca.crt  the swarm's root CA
//! certificates/swarm-root-ca.key  the CA key (managers only, 0600)
//! certificates/raft.dek           the key sealing the Raft store (managers only, 0600)
//! raft/raft.redb                  the Raft log and store, sealed (managers only)
//! ```
//!
//! Files are written to a temporary name, synced and renamed, so a crash
//! never leaves a half-written file.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::ca::Role;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalState {
    pub node_id: String,
    pub cluster_id: String,
    /// The role of this node's current certificate.
    pub role: Role,
    /// Raft member ID while this node is a manager.
    pub raft_id: Option<u64>,
    /// `ip:port` advertised to other nodes.
    pub advertise_addr: String,
    /// `ip:port` the manager endpoint listens on.
    pub listen_addr: String,
    pub data_path_port: u32,
    /// Managers' advertised addresses, leader first when known.
    pub managers: Vec<String>,
    /// Raft snapshot settings of the swarm.
    #[serde(default)]
    pub snapshots: crate::manager::raft::SnapshotSettings,
}

/// The PEM files of a node.
#[derive(Clone)]
pub struct Certs {
    pub node_cert: String,
    pub node_key: String,
    pub ca_cert: String,
    pub ca_key: Option<String>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("has_ca_key", &self.ca_key.is_some()).finish_non_exhaustive()
    }
}

/// `<data-root>/swarm`.
#[derive(Debug, Clone)]
pub struct SwarmDir {
    root: PathBuf,
}

impl SwarmDir {
    pub fn new(data_root: &Path) -> SwarmDir {
        SwarmDir { root: data_root.join("swarm") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.root.join("raft")
    }

    fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.root.join("certificates").join(name)
    }

    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    pub fn load(&self) -> std::io::Result<Option<(LocalState, Certs)>> {
        let state = match fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let read = |n: &str| fs::read_to_string(self.cert(n));
        let certs = Certs {
            node_cert: read("swarm-node.crt")?,
            node_key: read("swarm-node.key")?,
            ca_cert: read("swarm-root-ca.crt")?,
            ca_key: read("swarm-root-ca.key").ok(),
        };
        Ok(Some((state, certs)))
    }

    pub fn save_state(&self, state: &LocalState) -> std::io::Result<()> {
        write_atomic(
            &self.state_path(),
            &serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?,
            0o600,
        )
    }

    pub fn save_certs(&self, certs: &Certs) -> std::io::Result<()> {
        write_atomic(&self.cert("swarm-node.crt"), certs.node_cert.as_bytes(), 0o644)?;
        write_atomic(&self.cert("swarm-node.key"), certs.node_key.as_bytes(), 0o600)?;
        write_atomic(&self.cert("swarm-root-ca.crt"), certs.ca_cert.as_bytes(), 0o644)?;
        match &certs.ca_key {
            Some(k) => write_atomic(&self.cert("swarm-root-ca.key"), k.as_bytes(), 0o600),
            None => match fs::remove_file(self.cert("swarm-root-ca.key")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// Removes everything: the node has left the swarm.
    pub fn wipe(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn wipe_raft(&self) -> std::io::Result<()> {
        match fs::remove_dir_all(self.raft_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            // A new store gets a new key.
            _ => match fs::remove_file(self.cert("raft.dek")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }

    /// The key that seals this manager's Raft store, made on first use. It
    /// lives with the node's TLS key, never in the Raft directory.
    pub fn raft_dek(&self) -> std::io::Result<[u8; crate::manager::raft::seal::DEK_LEN]> {
        use crate::manager::raft::seal::{DEK_LEN, Dek};
        let path = self.cert("raft.dek");
        match fs::read(&path) {
            Ok(b) => b.try_into().map_err(|b: Vec<u8>| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {} bytes, not a {DEK_LEN}-byte key", path.display(), b.len()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = Dek::generate()?;
                write_atomic(&path, &k, 0o600)?;
                Ok(k)
            }
            Err(e) => Err(e),
        }
    }
}

fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().expect("file in a directory");
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wipe() {
        let tmp = tempfile::tempdir().unwrap();
        let d = SwarmDir::new(tmp.path());
        assert!(d.load().unwrap().is_none());
        let state = LocalState {
            node_id: "n".into(),
            cluster_id: "c".into(),
            role: Role::Worker,
            raft_id: None,
            advertise_addr: "198.18.0.1:2377".into(),
            listen_addr: "0.0.0.0:2377".into(),
            data_path_port: 4789,
            managers: vec!["198.18.0.2:2377".into()],
            snapshots: crate::manager::raft::SnapshotSettings::default(),
        };
        let certs = Certs { node_cert: "c".into(), node_key: "k".into(), ca_cert: "ca".into(), ca_key: None };
        d.save_state(&state).unwrap();
        d.save_certs(&certs).unwrap();
        let (s, c) = d.load().unwrap().unwrap();
        assert_eq!(s, state);
        assert_eq!(c.node_key, "k");
        assert!(c.ca_key.is_none());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(d.cert("swarm-node.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        d.wipe().unwrap();
        assert!(!d.exists());
    }
}
