//! The runc executor. Each container has a directory:
//!
//! ```text
//! <root>/<container id>/config.json   the OCI bundle (rootfs below)
//!                       rootfs/       overlayfs: image layers + upper/ + work/
//!                       meta.json     the ContainerConfig
//!                       hosts hostname resolv.conf
//!                       secrets/      tmpfs (read-only once written): secret and config files
//!                       started exit start-error container.log   (the shim's)
//! ```
//!
//! runc keeps its own state under `<runc root>`; the shim runs
//! `runc create` / `runc start` and waits for the container.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};
use tokio::io::AsyncBufReadExt as _;

use super::{
    Container, ContainerConfig, ContainerState, ExecError, ExecResult, ExecSpec, Executor, shim::Files, spec,
};
use crate::util::fs::is_mount_point;

pub struct Runc {
    /// The OCI runtime binary new containers get (runc or crun); each
    /// container keeps the one it was made with.
    runtime: String,
    root: PathBuf,
    state_root: PathBuf,
    /// The binary that has the `shim` subcommand (this one).
    shim_exe: PathBuf,
    children: Mutex<HashMap<String, tokio::process::Child>>,
    cgroup_parent: String,
}

const POLL: Duration = Duration::from_millis(25);

fn temp(e: impl std::fmt::Display) -> ExecError {
    ExecError::temporary(e.to_string())
}

impl Runc {
    pub fn new(
        runtime: String,
        root: PathBuf,
        runc_root: PathBuf,
        shim_exe: PathBuf,
        cgroup_parent: String,
    ) -> std::io::Result<Runc> {
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&runc_root)?;
        Ok(Runc {
            runtime,
            root,
            state_root: runc_root,
            shim_exe,
            children: Mutex::new(HashMap::new()),
            cgroup_parent,
        })
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn files(&self, id: &str) -> Files {
        Files { dir: self.dir(id) }
    }

    fn read_config(&self, id: &str) -> Option<ContainerConfig> {
        serde_json::from_slice(&fs::read(self.dir(id).join("meta.json")).ok()?).ok()
    }

    fn state(&self, id: &str) -> ContainerState {
        let f = self.files(id);
        if !f.dir.exists() {
            // Removed (`docker rm -f`): as good as killed.
            return ContainerState::Exited {
                code: 137,
                started_at: 0,
                finished_at: crate::manager::now_nanos(),
            };
        }
        match (f.started(), f.exited()) {
            (Some(s), Some(e)) => {
                ContainerState::Exited { code: e.code, started_at: s.at, finished_at: e.at }
            }
            (None, Some(e)) => ContainerState::Exited { code: e.code, started_at: 0, finished_at: e.at },
            (Some(s), None) => {
                if pid_alive(s.pid) {
                    ContainerState::Running { pid: s.pid, started_at: s.at }
                } else {
                    // The shim died with the container and wrote nothing.
                    ContainerState::Exited { code: 255, started_at: s.at, finished_at: s.at }
                }
            }
            (None, None) if f.start_error().is_some() => {
                ContainerState::Exited { code: 128, started_at: 0, finished_at: 0 }
            }
            (None, None) => ContainerState::Created,
        }
    }

    /// The runtime container `id` was made with.
    fn runtime_of(&self, id: &str) -> String {
        self.read_config(id)
            .map(|c| c.runtime)
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| self.runtime.clone())
    }

    /// The runtime new containers get.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    async fn runc(&self, id: &str, args: &[&str]) -> ExecResult<()> {
        let out = tokio::process::Command::new(self.runtime_of(id))
            .arg("--root")
            .arg(&self.state_root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(temp)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ExecError::temporary(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }

    async fn wait_exit(&self, id: &str, timeout: Option<Duration>) -> Option<i64> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let child = self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        if let Some(mut c) = child {
            let waited = match deadline {
                Some(d) => tokio::time::timeout_at(d, c.wait()).await.ok(),
                None => Some(c.wait().await),
            };
            if waited.is_none() {
                self.children
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(id.to_owned(), c);
            }
        }
        // The process can be gone before its shim has written the exit
        // (the shim drains the output for up to 2 s first): a container
        // re-adopted after an agent restart, which has no child to wait
        // for, would otherwise be reported as lost (255) in that window.
        let mut unwritten_since: Option<tokio::time::Instant> = None;
        loop {
            match self.state(id) {
                ContainerState::Exited { code, .. }
                    if code != 255 || self.files(id).exited().is_some() || !self.files(id).dir.exists() =>
                {
                    return Some(code);
                }
                ContainerState::Exited { code, .. } => {
                    let since = *unwritten_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= SHIM_EXIT_GRACE {
                        return Some(code);
                    }
                }
                _ => {}
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn prepare_sync(&self, cfg: &ContainerConfig) -> ExecResult<()> {
        let dir = self.dir(&cfg.id);
        if dir.join("meta.json").exists() {
            return Ok(());
        }
        if cfg.layers.is_empty() {
            return Err(ExecError::fatal("the image has no layers"));
        }
        if cfg.args.is_empty() {
            return Err(ExecError::fatal("No command specified"));
        }
        for d in ["rootfs", "upper", "work"] {
            fs::create_dir_all(dir.join(d)).map_err(temp)?;
        }
        let lower: Vec<String> = cfg.layers.iter().rev().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let rootfs = dir.join("rootfs");
        if !is_mount_point(&rootfs) {
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(|e| temp(format!("mounting the rootfs: {e}")))?;
        }
        if !cfg.files.is_empty() {
            write_files(&dir.join("secrets"), &cfg.files)?;
        }
        let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        let (uid, gid) = spec::resolve_user(&cfg.user, &read("etc/passwd"), &read("etc/group"))
            .map_err(ExecError::fatal)?;
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for (ip, name) in &cfg.hosts {
            hosts.push_str(&format!("{ip}\t{name}\n"));
        }
        fs::write(dir.join("hosts"), hosts).map_err(temp)?;
        fs::write(dir.join("hostname"), format!("{}\n", cfg.hostname)).map_err(temp)?;
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut resolv = String::new();
        if cfg.embedded_dns {
            resolv = crate::agent::dns::task_resolv_conf(&host_resolv);
        } else {
            for l in host_resolv.lines() {
                if !l.trim_start().starts_with("nameserver 127.") {
                    resolv.push_str(l);
                    resolv.push('\n');
                }
            }
        }
        fs::write(dir.join("resolv.conf"), resolv).map_err(temp)?;
        if !cfg.cwd.is_empty() {
            let _ = fs::create_dir_all(rootfs.join(cfg.cwd.trim_start_matches('/')));
        }
        let s = spec::runtime_spec(cfg, &dir, uid, gid, &self.cgroup_parent).map_err(ExecError::fatal)?;
        fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&s).map_err(temp)?).map_err(temp)?;
        let meta = serde_json::to_vec(cfg).map_err(temp)?;
        fs::write(dir.join("meta.json.tmp"), meta).map_err(temp)?;
        fs::rename(dir.join("meta.json.tmp"), dir.join("meta.json")).map_err(temp)
    }

    async fn start_inner(&self, id: &str) -> ExecResult<i64> {
        let files = self.files(id);
        if let Some(s) = files.started() {
            return Ok(s.pid);
        }
        let mut child = tokio::process::Command::new(&self.shim_exe)
            .arg("shim")
            .arg("--runtime")
            .arg(self.runtime_of(id))
            .arg("--runc-root")
            .arg(&self.state_root)
            .arg("--bundle")
            .arg(self.dir(id))
            .arg("--id")
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| ExecError::fatal(format!("starting the shim: {e}")))?;
        let out = child.stdout.take();
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned(), child);
        // The shim writes a line once the container started or could not
        // (and closes its end if it dies): no polling.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        if let Some(out) = out {
            let mut line = String::new();
            let _ =
                tokio::time::timeout_at(deadline, tokio::io::BufReader::new(out).read_line(&mut line)).await;
        }
        loop {
            if let Some(s) = files.started() {
                return Ok(s.pid);
            }
            if let Some(e) = files.start_error() {
                return Err(ExecError::fatal(e));
            }
            if let Some(e) = files.exited() {
                return Err(ExecError::fatal(format!("exited at once with code {}", e.code)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ExecError::fatal("the container did not start within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop_inner(&self, id: &str, signal: &str, grace: Duration) -> ExecResult<()> {
        if !matches!(self.state(id), ContainerState::Running { .. }) {
            return Ok(());
        }
        let sig = if signal.is_empty() { "SIGTERM" } else { signal };
        let _ = self.runc(id, &["kill", id, sig]).await;
        if self.wait_exit(id, Some(grace)).await.is_some() {
            return Ok(());
        }
        let _ = self.runc(id, &["kill", "--all", id, "SIGKILL"]).await;
        match self.wait_exit(id, Some(Duration::from_secs(10))).await {
            Some(_) => Ok(()),
            None => Err(ExecError::temporary("the container did not stop after SIGKILL")),
        }
    }

    async fn remove_inner(&self, id: &str) -> ExecResult<()> {
        if matches!(self.state(id), ContainerState::Running { .. }) {
            self.stop_inner(id, "SIGKILL", Duration::ZERO).await?;
        }
        let _ = self.runc(id, &["delete", "--force", id]).await;
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        if is_mount_point(&rootfs) {
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| temp(format!("unmounting the rootfs: {e}")))?;
        }
        let secrets = dir.join("secrets");
        if is_mount_point(&secrets) {
            nix::mount::umount2(&secrets, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| temp(format!("unmounting the secrets: {e}")))?;
        }
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(temp(e)),
            _ => Ok(()),
        }
    }
}

/// Secret and config files on a tmpfs of their own (never the node's
/// disk), owned and moded as asked, then the tmpfs is made read-only.
fn write_files(dir: &Path, files: &[super::FileSpec]) -> ExecResult<()> {
    use nix::mount::{MsFlags, mount};
    use std::os::unix::fs::PermissionsExt as _;
    fs::create_dir_all(dir).map_err(temp)?;
    let flags = MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    if !is_mount_point(dir) {
        mount(Some("tmpfs"), dir, Some("tmpfs"), flags, Some("mode=0700"))
            .map_err(|e| temp(format!("mounting the secrets tmpfs: {e}")))?;
    }
    for (i, f) in files.iter().enumerate() {
        let p = dir.join(f.host_name(i));
        fs::write(&p, &f.data).map_err(temp)?;
        std::os::unix::fs::chown(&p, Some(f.uid), Some(f.gid)).map_err(temp)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(f.mode)).map_err(temp)?;
    }
    mount(None::<&str>, dir, None::<&str>, flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
        .map_err(|e| temp(format!("making the secrets read-only: {e}")))
}

/// How long a dead container's shim may take to write its exit.
const SHIM_EXIT_GRACE: Duration = Duration::from_secs(3);

fn pid_alive(pid: i64) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| p > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

/// The OCI runtime binary for new containers. `auto`: crun (C, about a
/// third of runc's CPU time per container) where it is installed and
/// accepts this host's cgroups, else runc. crun refuses a cgroup v1 host
/// whose unified (v2) hierarchy still holds controllers; runc does not.
pub fn pick_runtime(wanted: &str) -> Result<String, String> {
    let found = |bin: &str| -> bool {
        if bin.contains('/') {
            return Path::new(bin).is_file();
        }
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    match wanted {
        "auto" => {
            if found("crun") && crun_accepts(Path::new("/sys/fs/cgroup")) {
                Ok("crun".into())
            } else if found("runc") {
                Ok("runc".into())
            } else if found("crun") {
                Err("crun cannot run containers on this host's cgroup layout (a v1 host with controllers left on the unified hierarchy) and runc is not installed".into())
            } else {
                Err("no OCI runtime found: install runc or crun".into())
            }
        }
        bin if found(bin) => Ok(bin.to_owned()),
        bin => Err(format!("OCI runtime {bin:?} not found in PATH")),
    }
}

/// Whether crun takes the cgroup layout under `root`: pure v2, or v1
/// without controllers on a unified hierarchy at `root/unified`.
fn crun_accepts(root: &Path) -> bool {
    match fs::read_to_string(root.join("unified/cgroup.controllers")) {
        Ok(c) => c.trim().is_empty(),
        Err(_) => true,
    }
}

impl Executor for Runc {
    fn release_files(&self, id: &str) {
        let secrets = self.dir(id).join("secrets");
        if is_mount_point(&secrets)
            && let Err(e) = nix::mount::umount2(&secrets, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(container = %id, "unmounting the secrets: {e}");
        }
        let _ = fs::remove_dir(&secrets);
    }

    fn prepare(&self, mut cfg: ContainerConfig) -> BoxFuture<'_, ExecResult<()>> {
        cfg.runtime.clone_from(&self.runtime);
        async move {
            // Mounting and writing the bundle block: off the async threads.
            let r = tokio::task::block_in_place(|| self.prepare_sync(&cfg));
            if r.is_err() {
                let _ = self.remove_inner(&cfg.id).await;
            }
            r
        }
        .boxed()
    }

    fn start(&self, id: &str) -> BoxFuture<'_, ExecResult<i64>> {
        let id = id.to_owned();
        async move { self.start_inner(&id).await }.boxed()
    }

    fn wait(&self, id: &str) -> BoxFuture<'_, ExecResult<i64>> {
        let id = id.to_owned();
        async move { self.wait_exit(&id, None).await.ok_or_else(|| ExecError::temporary("lost the container")) }
            .boxed()
    }

    fn stop(&self, id: &str, signal: &str, grace: Duration) -> BoxFuture<'_, ExecResult<()>> {
        let (id, signal) = (id.to_owned(), signal.to_owned());
        async move { self.stop_inner(&id, &signal, grace).await }.boxed()
    }

    fn kill(&self, id: &str, signal: &str) -> BoxFuture<'_, ExecResult<()>> {
        let (id, signal) = (id.to_owned(), signal.to_owned());
        async move {
            if !matches!(self.state(&id), ContainerState::Running { .. }) {
                return Err(ExecError::fatal(format!("Container {id} is not running")));
            }
            self.runc(&id, &["kill", &id, if signal.is_empty() { "SIGKILL" } else { &signal }]).await
        }
        .boxed()
    }

    fn exec(
        &self,
        id: &str,
        spec: &ExecSpec,
        stdio: [std::process::Stdio; 3],
    ) -> ExecResult<tokio::process::Child> {
        if !matches!(self.state(id), ContainerState::Running { .. }) {
            return Err(ExecError::fatal(format!("container {id} is not running")));
        }
        if spec.args.is_empty() {
            return Err(ExecError::fatal("No exec command specified"));
        }
        let rootfs = self.dir(id).join("rootfs");
        let read = |p: &str| fs::read_to_string(rootfs.join(p)).unwrap_or_default();
        let (uid, gid) = if spec.user.is_empty() {
            let cfg = self.read_config(id).map(|c| c.user).unwrap_or_default();
            spec::resolve_user(&cfg, &read("etc/passwd"), &read("etc/group"))
        } else {
            spec::resolve_user(&spec.user, &read("etc/passwd"), &read("etc/group"))
        }
        .map_err(ExecError::fatal)?;
        let mut c = tokio::process::Command::new(self.runtime_of(id));
        c.arg("--root").arg(&self.state_root).arg("exec").arg("--user").arg(format!("{uid}:{gid}"));
        for e in &spec.env {
            c.arg("--env").arg(e);
        }
        if !spec.cwd.is_empty() {
            c.arg("--cwd").arg(&spec.cwd);
        }
        let [i, o, e] = stdio;
        c.arg(id).args(&spec.args).stdin(i).stdout(o).stderr(e).kill_on_drop(true);
        c.spawn().map_err(|e| ExecError::fatal(format!("running the runtime's exec: {e}")))
    }

    fn remove(&self, id: &str) -> BoxFuture<'_, ExecResult<()>> {
        let id = id.to_owned();
        async move { self.remove_inner(&id).await }.boxed()
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("container.log")
    }

    fn list(&self) -> Vec<Container> {
        let Ok(dir) = fs::read_dir(&self.root) else { return Vec::new() };
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|id| self.inspect(&id))
            .collect()
    }

    fn inspect(&self, id: &str) -> Option<Container> {
        let config = self.read_config(id)?;
        Some(Container { state: self.state(id), config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crun_is_refused_only_with_controllers_left_on_a_unified_hierarchy() {
        let d = tempfile::tempdir().unwrap();
        assert!(crun_accepts(d.path()), "pure v1 or v2: no unified/ directory");
        fs::create_dir(d.path().join("unified")).unwrap();
        fs::write(d.path().join("unified/cgroup.controllers"), "\n").unwrap();
        assert!(crun_accepts(d.path()));
        fs::write(d.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert!(!crun_accepts(d.path()));
    }

    #[test]
    fn a_named_runtime_must_exist() {
        assert_eq!(pick_runtime("/bin/sh").unwrap(), "/bin/sh");
        let e = pick_runtime("no-such-runtime-xyz").unwrap_err();
        assert_eq!(e, "OCI runtime \"no-such-runtime-xyz\" not found in PATH");
        assert!(pick_runtime("/nonexistent/crun").is_err());
    }
}
