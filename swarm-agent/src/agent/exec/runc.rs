//! The runc executor. Each container has a directory:
//!
//! ```text
//! <root>/<container id>/config.json   the OCI bundle (rootfs below)
//!                       rootfs/       overlayfs: image layers + upper/ + work/
//!                       meta.json     the ContainerConfig
//!                       hosts hostname resolv.conf
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

use super::{
    Container, ContainerConfig, ContainerState, ExecError, ExecResult, ExecSpec, Executor, shim::Files, spec,
};

pub struct Runc {
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
        root: PathBuf,
        runc_root: PathBuf,
        shim_exe: PathBuf,
        cgroup_parent: String,
    ) -> std::io::Result<Runc> {
        fs::create_dir_all(&root)?;
        fs::create_dir_all(&runc_root)?;
        Ok(Runc {
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

    async fn runc(&self, args: &[&str]) -> ExecResult<()> {
        let out = tokio::process::Command::new("runc")
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
        loop {
            if let ContainerState::Exited { code, .. } = self.state(id) {
                return Some(code);
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
        if !is_mountpoint(&rootfs) {
            nix::mount::mount(
                Some("overlay"),
                &rootfs,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(opts.as_str()),
            )
            .map_err(|e| temp(format!("mounting the rootfs: {e}")))?;
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
        let mut resolv = String::new();
        for l in fs::read_to_string("/etc/resolv.conf").unwrap_or_default().lines() {
            if !l.trim_start().starts_with("nameserver 127.") {
                resolv.push_str(l);
                resolv.push('\n');
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
        let child = tokio::process::Command::new(&self.shim_exe)
            .arg("shim")
            .arg("--runc-root")
            .arg(&self.state_root)
            .arg("--bundle")
            .arg(self.dir(id))
            .arg("--id")
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| ExecError::fatal(format!("starting the shim: {e}")))?;
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned(), child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
        let _ = self.runc(&["kill", id, sig]).await;
        if self.wait_exit(id, Some(grace)).await.is_some() {
            return Ok(());
        }
        let _ = self.runc(&["kill", "--all", id, "SIGKILL"]).await;
        match self.wait_exit(id, Some(Duration::from_secs(10))).await {
            Some(_) => Ok(()),
            None => Err(ExecError::temporary("the container did not stop after SIGKILL")),
        }
    }

    async fn remove_inner(&self, id: &str) -> ExecResult<()> {
        if matches!(self.state(id), ContainerState::Running { .. }) {
            self.stop_inner(id, "SIGKILL", Duration::ZERO).await?;
        }
        let _ = self.runc(&["delete", "--force", id]).await;
        let dir = self.dir(id);
        let rootfs = dir.join("rootfs");
        if is_mountpoint(&rootfs) {
            nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| temp(format!("unmounting the rootfs: {e}")))?;
        }
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(temp(e)),
            _ => Ok(()),
        }
    }
}

fn pid_alive(pid: i64) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| p > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = p.display().to_string();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

impl Executor for Runc {
    fn prepare(&self, cfg: ContainerConfig) -> BoxFuture<'_, ExecResult<()>> {
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
            self.runc(&["kill", &id, if signal.is_empty() { "SIGKILL" } else { &signal }]).await
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
        let mut c = tokio::process::Command::new("runc");
        c.arg("--root").arg(&self.state_root).arg("exec").arg("--user").arg(format!("{uid}:{gid}"));
        for e in &spec.env {
            c.arg("--env").arg(e);
        }
        if !spec.cwd.is_empty() {
            c.arg("--cwd").arg(&spec.cwd);
        }
        let [i, o, e] = stdio;
        c.arg(id).args(&spec.args).stdin(i).stdout(o).stderr(e).kill_on_drop(true);
        c.spawn().map_err(|e| ExecError::fatal(format!("running runc exec: {e}")))
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
