//! What a node runs containers with: its image store and executor, made
//! once by the engine (they outlive swarm memberships, as docker's do).

use std::{path::Path, path::PathBuf, sync::Arc};

use crate::agent::{exec::runc::Runc, images::ImageStore};

pub struct Runtime {
    pub images: Arc<ImageStore>,
    pub exec: Arc<Runc>,
    /// Where task network namespaces are bound.
    pub netns_dir: PathBuf,
    /// Registries pulled from over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Where tasks' embedded DNS forwards names it does not own (empty:
    /// the host's `/etc/resolv.conf`).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("netns_dir", &self.netns_dir).finish_non_exhaustive()
    }
}

/// Default cgroup parent of task containers.
pub const CGROUP_PARENT: &str = "swarm-agent";

impl Runtime {
    /// Under `data_root`: `images/`, `containers/`, `runc/`, `netns/`.
    pub fn open(
        data_root: &Path,
        cgroup_parent: &str,
        insecure_registries: Vec<String>,
        oci_runtime: String,
    ) -> std::io::Result<Runtime> {
        let shim = std::env::current_exe()?;
        Ok(Runtime {
            images: Arc::new(ImageStore::open(data_root.join("images"))?),
            exec: Arc::new(Runc::new(
                oci_runtime,
                data_root.join("containers"),
                data_root.join("runc"),
                shim,
                cgroup_parent.to_owned(),
            )?),
            netns_dir: data_root.join("netns"),
            insecure_registries,
            dns_upstreams: Vec::new(),
        })
    }
}
