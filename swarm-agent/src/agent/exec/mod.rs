//! Running task containers. [`Executor`] is what the worker drives
//! (`prepare`/`start`/`wait`/`stop`/`remove`, and `inspect` to re-adopt
//! after a restart); [`runc::Runc`] is the implementation: OCI bundles made
//! with oci-spec, rootfs from image layers on overlayfs, per-task cgroups,
//! and a small shim process per container that outlives the agent and
//! records the exit code and the output.

pub mod runc;
pub mod shim;
pub mod spec;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub task_id: String,
    /// Docker's 64-hex container ID.
    pub id: String,
    /// `<service>.<slot>.<task id>`.
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// Image layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Nano CPUs; 0 = unlimited.
    pub nano_cpus: i64,
    /// Bytes; 0 = unlimited.
    pub memory: i64,
    pub pids_limit: i64,
    pub mounts: Vec<MountSpec>,
    pub stop_signal: String,
    pub stop_grace: Duration,
    /// The network namespace to join (made by the worker).
    pub netns: PathBuf,
    /// `ip hostname` lines for /etc/hosts.
    pub hosts: Vec<(String, String)>,
    pub read_only: bool,
    pub created: i64,
    pub service_id: String,
    pub node_id: String,
    /// The task's endpoints (released when the container goes).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The OCI runtime binary (set by the executor; empty before).
    #[serde(default)]
    pub runtime: String,
    /// `/etc/resolv.conf` names the embedded DNS server (127.0.0.11).
    #[serde(default)]
    pub embedded_dns: bool,
    /// Secrets and configs, placed on a tmpfs and bound into the container.
    #[serde(default)]
    pub files: Vec<FileSpec>,
}

/// A secret or config file in a container. Its data is never serialized
/// (the container's metadata on disk holds only where it goes).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    pub id: String,
    /// Absolute path in the container.
    pub path: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpec").field("id", &self.id).field("path", &self.path).finish_non_exhaustive()
    }
}

impl FileSpec {
    /// The file's name in the container's tmpfs (`secrets/`).
    pub fn host_name(&self, index: usize) -> String {
        format!("{index}-{}", self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSpec {
    Bind { source: PathBuf, target: String, read_only: bool },
    Tmpfs { target: String, size: i64, mode: u32 },
}

/// A container as this node has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub config: ContainerConfig,
    pub state: ContainerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Prepared, not started.
    Created,
    Running {
        pid: i64,
        started_at: i64,
    },
    Exited {
        code: i64,
        started_at: i64,
        finished_at: i64,
    },
}

/// An executor failure. `fatal` ones reject the task; others are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecError {
    pub fatal: bool,
    pub message: String,
}

impl ExecError {
    pub fn fatal(m: impl Into<String>) -> ExecError {
        ExecError { fatal: true, message: m.into() }
    }

    pub fn temporary(m: impl Into<String>) -> ExecError {
        ExecError { fatal: false, message: m.into() }
    }
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type ExecResult<T> = Result<T, ExecError>;

/// A process to run in a container (`docker exec`, health checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
}

/// The container runtime as the worker sees it.
pub trait Executor: Send + Sync + 'static {
    /// Drops an exited container's secret and config files (docker
    /// unmounts them when the container stops; the container may stay).
    fn release_files(&self, _id: &str) {}
    /// Makes the container (rootfs, bundle); does not start it.
    fn prepare(&self, cfg: ContainerConfig) -> BoxFuture<'_, ExecResult<()>>;
    /// Starts a prepared container; returns its pid.
    fn start(&self, id: &str) -> BoxFuture<'_, ExecResult<i64>>;
    /// Waits for the container to exit; returns its exit code.
    fn wait(&self, id: &str) -> BoxFuture<'_, ExecResult<i64>>;
    /// Sends `signal`, then SIGKILL after `grace`; returns once it exited.
    fn stop(&self, id: &str, signal: &str, grace: Duration) -> BoxFuture<'_, ExecResult<()>>;
    /// Sends a signal (`docker kill`).
    fn kill(&self, id: &str, signal: &str) -> BoxFuture<'_, ExecResult<()>>;
    /// Starts a process in a running container, with the given stdio.
    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        stdio: [std::process::Stdio; 3],
    ) -> ExecResult<tokio::process::Child>;
    /// Removes a stopped container and everything it had on disk.
    fn remove(&self, id: &str) -> BoxFuture<'_, ExecResult<()>>;
    /// Where the container's output is logged (docker's json-file lines).
    fn log_path(&self, id: &str) -> PathBuf;
    /// The containers this node has (also those from before a restart).
    fn list(&self) -> Vec<Container>;
    fn inspect(&self, id: &str) -> Option<Container>;
}

/// The container ID docker shows for a task: 64 hex digits from the task ID.
pub fn container_id(task_id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, task_id.as_bytes());
    d.as_ref().iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Signal names as docker takes them (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Option<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") { up } else { format!("SIG{up}") };
    nix::sys::signal::Signal::from_str(&name).ok()
}
