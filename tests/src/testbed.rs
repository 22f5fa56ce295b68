//! A multi-host testbed on one machine.
//!
//! Each host is a network namespace with its own UTS namespace (hostname),
//! state directory and bpffs instance, and one underlay interface `eth0` with
//! an address from 198.18.0.0/24. All `eth0`s hang off a bridge in a separate
//! switch namespace, so the root namespace (and its firewall) never sees the
//! traffic.
//!
//! Layout of a testbed called `NAME` with hosts `node1..nodeN`:
//!
//! ```text
//! /run/netns/swtb-NAME-sw          switch namespace: bridge br0, ports node1..nodeN
//! /run/netns/swtb-NAME-nodeI       host namespace: lo, eth0 = 198.18.0.I/24
//! /run/swarm-testbed/NAME/meta.json       who owns it (pid) or "persistent"
//! /run/swarm-testbed/NAME/nodeI/uts       bind mount of the host's UTS namespace
//! /run/swarm-testbed/NAME/nodeI/state/    the host's state directory
//! /run/swarm-testbed/NAME/nodeI/bpffs/    the host's own bpffs mount
//! /run/swarm-testbed/NAME/nodeI/netns/X   extra namespaces made with Host::add_netns
//!                                         (containers, endpoints), gone with the testbed
//! ```
//!
//! A testbed made by [`Testbed::up`] belongs to the creating process: it is
//! torn down on drop (also when a test panics), on SIGINT/SIGTERM/SIGHUP, and,
//! if the process was killed outright, by the next testbed created on this
//! machine, which removes testbeds whose owner is gone. A persistent testbed
//! (`cargo xtask testbed up`) lives until [`Testbed::down`]; creating one with
//! the name of a leftover first removes the leftover.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::fs::MetadataExt, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex, Once, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::cmd::{self, CmdError, command};

/// Directory holding one subdirectory per testbed.
pub const ROOT: &str = "/run/swarm-testbed";
/// Prefix of every network namespace a testbed creates.
pub const NETNS_PREFIX: &str = "swtb-";
/// Name of each host's underlay interface.
pub const UNDERLAY_IFACE: &str = "eth0";
/// Underlay prefix length; host `nodeI` gets `198.18.0.I`.
pub const UNDERLAY_PREFIX_LEN: u8 = 24;
/// Most hosts one testbed can have (addresses 198.18.0.1-.250).
pub const MAX_HOSTS: usize = 250;
const NETNS_DIR: &str = "/run/netns";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What went wrong building, using or removing a testbed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestbedError {
    /// An `ip`/`unshare`/... command failed; carries its stderr.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// A file-system or kernel operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Names become namespace names and directories: keep them simple.
    #[error(
        "invalid testbed name {0:?}: use 1-24 characters from a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("invalid number of hosts {0}: a testbed has 1 to {MAX_HOSTS} hosts")]
    InvalidHostCount(usize),
    #[error("no testbed named {0:?} (see `cargo xtask testbed status`)")]
    NotFound(String),
    #[error("no host {host:?} in testbed {testbed:?}; hosts are node1..node{count}")]
    NoSuchHost { testbed: String, host: String, count: usize },
    /// Namespaces, mounts and bpffs need root (CAP_SYS_ADMIN and CAP_NET_ADMIN).
    #[error("the testbed needs root (network namespaces, mounts, bpffs); run as root")]
    NotRoot,
    /// Teardown could not remove everything; each entry says what is left.
    #[error("testbed {name:?} was not removed completely: {}", problems.join("; "))]
    Incomplete { name: String, problems: Vec<String> },
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> TestbedError {
    let path = path.into();
    move |source| TestbedError::Io { op, path, source }
}

/// Who keeps a testbed alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lifetime {
    /// Removed when the [`Testbed`] value is dropped or the process dies.
    Process,
    /// Stays until [`Testbed::down`] (or `cargo xtask testbed down`).
    Persistent,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    name: String,
    hosts: usize,
    lifetime: Lifetime,
    owner_pid: i32,
    owner_start_time: u64,
}

/// One simulated host.
#[derive(Debug, Clone)]
pub struct Host {
    /// `node1`, `node2`, ...; also the hostname and the switch port name.
    pub name: String,
    /// 1-based position in the testbed.
    pub index: usize,
    /// Name of the network namespace (usable with `ip netns exec`).
    pub netns: String,
    /// Address of `eth0` on the underlay.
    pub underlay_ip: Ipv4Addr,
    dir: PathBuf,
}

impl Host {
    /// Path of the network namespace file.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// The host's UTS namespace (bind-mounted file).
    pub fn uts_path(&self) -> PathBuf {
        self.dir.join("uts")
    }

    /// The host's own state directory (an agent's data root).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// `unix://` address of the host's swarm-agent API socket.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.state_dir().join("docker.sock").display())
    }

    /// The cgroup (relative to each hierarchy's root) under which the host's
    /// agent puts task containers; removed with the testbed.
    pub fn cgroup_parent(&self) -> String {
        let testbed = self.dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
        format!("{CGROUP_ROOT}/{}/{}", testbed.unwrap_or_default(), self.name)
    }

    /// Mount point of the host's own bpffs instance.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// A command that runs inside this host: its network and UTS namespaces,
    /// with `SWARM_DATA_ROOT`, `SWARM_BPFFS` and `DOCKER_HOST` pointing at the
    /// host's state directory, bpffs and agent socket.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command, TestbedError> {
        let net = File::open(self.netns_path()).map_err(io_err("open", self.netns_path()))?;
        let uts = File::open(self.uts_path()).map_err(io_err("open", self.uts_path()))?;
        let mut c = Command::new(program);
        c.env("SWARM_DATA_ROOT", self.state_dir())
            .env("SWARM_BPFFS", self.bpffs().join("swarm-agent"))
            .env("DOCKER_HOST", self.docker_host())
            .env("SWARM_CGROUP_PARENT", self.cgroup_parent());
        // SAFETY: only async-signal-safe syscalls run between fork and exec.
        unsafe {
            c.pre_exec(move || {
                for (fd, kind) in
                    [(net.as_raw_fd(), libc::CLONE_NEWNET), (uts.as_raw_fd(), libc::CLONE_NEWUTS)]
                {
                    if libc::setns(fd, kind) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(c)
    }

    /// Runs `program args...` inside the host and returns its stdout; fails
    /// with the command's stderr unless it exits 0.
    pub fn run<I, S>(&self, program: &str, args: I) -> Result<String, TestbedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.command(program)?;
        c.args(args);
        Ok(cmd::run(&mut c)?)
    }

    /// Directory of the namespaces made by [`Host::add_netns`].
    pub fn netns_dir(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// Makes a new, empty network namespace "on" this host (a file under
    /// [`Host::netns_dir`], like a container's), for endpoints and workloads.
    /// It only has `lo` (up); it goes away with the testbed.
    pub fn add_netns(&self, name: &str) -> Result<PathBuf, TestbedError> {
        validate_name(name)?;
        let dir = self.netns_dir();
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let path = dir.join(name);
        File::create(&path).map_err(io_err("create", &path))?;
        let arg = format!("--net={}", path.display());
        if let Err(e) = cmd::run(&mut command("unshare", [arg.as_str(), "ip", "link", "set", "lo", "up"])) {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(path)
    }

    /// Removes a namespace made by [`Host::add_netns`], killing what runs in it.
    pub fn remove_netns(&self, path: &Path) -> Result<(), TestbedError> {
        let mut problems = Vec::new();
        remove_ns_file(path, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TestbedError::Incomplete { name: path.display().to_string(), problems })
        }
    }

    /// A command that runs in network namespace `netns` (made by
    /// [`Host::add_netns`]) with this host's hostname and environment.
    pub fn command_in(
        &self,
        netns: &Path,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, TestbedError> {
        let net = File::open(netns).map_err(io_err("open", netns))?;
        let mut c = self.command(program)?;
        // SAFETY: only async-signal-safe syscalls run between fork and exec;
        // this runs after the host's own setns calls.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(c)
    }

    /// Runs `program args...` in namespace `netns`; stdout, or the failure.
    pub fn run_in<I, S>(&self, netns: &Path, program: &str, args: I) -> Result<String, TestbedError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = self.command_in(netns, program)?;
        c.args(args);
        Ok(cmd::run(&mut c)?)
    }

    /// Runs `f` on a thread that has entered the host's network namespace, for
    /// code in this process that opens sockets or netlink/bpf links there.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, TestbedError> {
        let net = File::open(self.netns_path()).map_err(io_err("open", self.netns_path()))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&net, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io_err("setns", self.netns_path())(e.into()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// A set of hosts on a private switch. See the module documentation.
#[derive(Debug)]
pub struct Testbed {
    name: String,
    hosts: Vec<Host>,
    lifetime: Lifetime,
    removed: bool,
}

impl Testbed {
    /// A new testbed with `hosts` hosts and a unique name, owned by this
    /// process and removed when dropped.
    pub fn up(hosts: usize) -> Result<Testbed, TestbedError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        Testbed::create(&name, hosts, Lifetime::Process)
    }

    /// A new testbed called `name`. Leftovers of an earlier testbed with that
    /// name are removed first, and so are testbeds whose owner process died.
    pub fn create(name: &str, hosts: usize, lifetime: Lifetime) -> Result<Testbed, TestbedError> {
        validate_name(name)?;
        if hosts == 0 || hosts > MAX_HOSTS {
            return Err(TestbedError::InvalidHostCount(hosts));
        }
        if !nix::unistd::Uid::effective().is_root() {
            return Err(TestbedError::NotRoot);
        }
        remove_orphans();
        if exists(name) {
            remove(name)?;
        }
        let dir = testbed_dir(name);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let (owner_pid, owner_start_time) = self_owner();
        let meta = Meta { name: name.to_owned(), hosts, lifetime, owner_pid, owner_start_time };
        write_meta(&meta)?;
        if lifetime == Lifetime::Process {
            cleanup_on_signal::register(name);
        }
        let mut tb =
            Testbed { name: name.to_owned(), hosts: host_list(name, hosts), lifetime, removed: false };
        if let Err(e) = tb.build() {
            // Leave nothing half-built behind; the build error is the one to report.
            let _ = tb.remove_now();
            return Err(e);
        }
        Ok(tb)
    }

    /// An existing testbed by name (for `cargo xtask testbed ...`).
    pub fn open(name: &str) -> Result<Testbed, TestbedError> {
        validate_name(name)?;
        let meta = read_meta(name)?.ok_or_else(|| TestbedError::NotFound(name.to_owned()))?;
        Ok(Testbed {
            name: meta.name.clone(),
            hosts: host_list(name, meta.hosts),
            // Opening never takes ownership: dropping this handle keeps it.
            lifetime: Lifetime::Persistent,
            removed: false,
        })
    }

    /// Names of the testbeds on this machine.
    pub fn list() -> Vec<String> {
        let mut names = BTreeSet::new();
        if let Ok(rd) = fs::read_dir(ROOT) {
            names.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        names.extend(netns_names().into_iter().filter_map(|ns| testbed_of_netns(&ns)));
        names.into_iter().collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host by 0-based position.
    ///
    /// # Panics
    /// If there is no such host.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Host by name (`node1`, ...).
    pub fn host_named(&self, name: &str) -> Result<&Host, TestbedError> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| TestbedError::NoSuchHost {
            testbed: self.name.clone(),
            host: name.to_owned(),
            count: self.hosts.len(),
        })
    }

    /// Name of the switch namespace.
    pub fn switch_netns(&self) -> String {
        switch_netns(&self.name)
    }

    /// Cuts a host off the underlay: its switch port goes down, its `eth0`
    /// loses carrier. The host keeps running.
    pub fn cut(&self, host: &Host) -> Result<(), TestbedError> {
        self.set_port(host, "down")
    }

    /// Reconnects a host cut off with [`Testbed::cut`].
    pub fn restore(&self, host: &Host) -> Result<(), TestbedError> {
        self.set_port(host, "up")
    }

    fn set_port(&self, host: &Host, state: &str) -> Result<(), TestbedError> {
        cmd::run(&mut command("ip", ["-n", &self.switch_netns(), "link", "set", &host.name, state]))?;
        Ok(())
    }

    /// Removes the testbed: stops every process inside its hosts, unmounts
    /// and deletes everything it made.
    pub fn down(mut self) -> Result<(), TestbedError> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> Result<(), TestbedError> {
        self.removed = true;
        let r = remove(&self.name);
        cleanup_on_signal::unregister(&self.name);
        r
    }

    fn build(&self) -> Result<(), TestbedError> {
        let sw = self.switch_netns();
        cmd::run(&mut command("ip", ["netns", "add", &sw]))?;
        ip_batch(&sw, &["link set lo up", "link add br0 type bridge", "link set br0 up"])?;
        for h in &self.hosts {
            Self::build_host(&sw, h)?;
        }
        Ok(())
    }

    fn build_host(sw: &str, h: &Host) -> Result<(), TestbedError> {
        cmd::run(&mut command("ip", ["netns", "add", &h.netns]))?;
        ip_batch(
            sw,
            &[
                &format!("link add {} type veth peer name {UNDERLAY_IFACE} netns {}", h.name, h.netns),
                &format!("link set {} master br0 up", h.name),
            ],
        )?;
        ip_batch(
            &h.netns,
            &[
                "link set lo up",
                &format!("addr add {}/{UNDERLAY_PREFIX_LEN} dev {UNDERLAY_IFACE}", h.underlay_ip),
                &format!("link set {UNDERLAY_IFACE} up"),
            ],
        )?;
        // Quiet hosts: no IPv6 autoconfiguration chatter on the underlay.
        h.in_netns(|| {
            for p in
                ["/proc/sys/net/ipv6/conf/all/disable_ipv6", "/proc/sys/net/ipv6/conf/default/disable_ipv6"]
            {
                fs::write(p, "1").map_err(io_err("write", p))?;
            }
            Ok::<_, TestbedError>(())
        })??;
        for d in [h.state_dir(), h.bpffs()] {
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        nix::mount::mount(Some("bpf"), &h.bpffs(), Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| io_err("mount bpffs on", h.bpffs())(e.into()))?;
        File::create(h.uts_path()).map_err(io_err("create", h.uts_path()))?;
        let uts = format!("--uts={}", h.uts_path().display());
        cmd::run(&mut command("unshare", [uts.as_str(), "hostname", &h.name]))?;
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.lifetime == Lifetime::Process
            && !self.removed
            && let Err(e) = self.remove_now()
        {
            eprintln!("warning: {e}");
        }
    }
}

fn validate_name(name: &str) -> Result<(), TestbedError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(TestbedError::InvalidName(name.to_owned())) }
}

fn testbed_dir(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

fn switch_netns(name: &str) -> String {
    format!("{NETNS_PREFIX}{name}-sw")
}

fn host_list(name: &str, hosts: usize) -> Vec<Host> {
    (1..=hosts)
        .map(|i| {
            let host = format!("node{i}");
            Host {
                netns: format!("{NETNS_PREFIX}{name}-{host}"),
                underlay_ip: Ipv4Addr::new(198, 18, 0, u8::try_from(i).expect("at most MAX_HOSTS hosts")),
                dir: testbed_dir(name).join(&host),
                index: i,
                name: host,
            }
        })
        .collect()
}

/// Runs several `ip` commands in one namespace with one process.
fn ip_batch(netns: &str, lines: &[&str]) -> Result<(), TestbedError> {
    let batch = lines.join("\n") + "\n";
    let mut c = command("ip", ["-n", netns, "-batch", "-"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let shown = cmd::display(&c);
    let spawn = |source| CmdError::Spawn { cmd: shown.clone(), source };
    let mut child = c.spawn().map_err(spawn)?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(batch.as_bytes()).map_err(spawn)?;
    }
    let out = child.wait_with_output().map_err(spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CmdError::Failed {
            cmd: format!("{shown} <<< {:?}", batch.trim_end()),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
        .into())
    }
}

fn meta_path(name: &str) -> PathBuf {
    testbed_dir(name).join("meta.json")
}

fn write_meta(meta: &Meta) -> Result<(), TestbedError> {
    let p = meta_path(&meta.name);
    let json = serde_json::to_vec_pretty(meta).expect("meta serializes");
    fs::write(&p, json).map_err(io_err("write", &p))
}

fn read_meta(name: &str) -> Result<Option<Meta>, TestbedError> {
    let p = meta_path(name);
    match fs::read(&p) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", &p)(e)),
    }
}

fn exists(name: &str) -> bool {
    testbed_dir(name).exists() || netns_names().iter().any(|ns| testbed_of_netns(ns).as_deref() == Some(name))
}

/// Network namespaces under /run/netns.
fn netns_names() -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// The testbed a namespace name belongs to: `swtb-NAME-sw` or `swtb-NAME-nodeI`.
fn testbed_of_netns(ns: &str) -> Option<String> {
    let rest = ns.strip_prefix(NETNS_PREFIX)?;
    let (name, suffix) = rest.rsplit_once('-')?;
    let is_host =
        suffix.strip_prefix("node").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    (suffix == "sw" || is_host).then(|| name.to_owned())
}

/// This process's identity: pid plus start time, so a reused pid is not
/// mistaken for the owner.
fn self_owner() -> (i32, u64) {
    let pid = i32::try_from(std::process::id()).expect("pid fits i32");
    (pid, process_start_time(pid).unwrap_or(0))
}

fn process_start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime); fields after the parenthesised command name.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn owner_alive(meta: &Meta) -> bool {
    process_start_time(meta.owner_pid).is_some_and(|t| t == meta.owner_start_time)
}

/// Holding this keeps other processes from removing orphaned testbeds (see
/// [`hold_orphans`]).
pub struct OrphanGuard(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// Blocks the removal of orphaned testbeds by any process until the guard is
/// dropped. Tests that kill a testbed's owner on purpose use it to look at
/// the leftovers before something else cleans them up.
pub fn hold_orphans() -> Result<OrphanGuard, TestbedError> {
    let f = orphan_lock_file()?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(OrphanGuard)
        .map_err(|(_, e)| io_err("lock", Path::new(ROOT).join(".orphans.lock"))(e.into()))
}

fn orphan_lock_file() -> Result<File, TestbedError> {
    fs::create_dir_all(ROOT).map_err(io_err("create", ROOT))?;
    let p = Path::new(ROOT).join(".orphans.lock");
    File::options().create(true).truncate(false).write(true).open(&p).map_err(io_err("open", p))
}

/// Removes testbeds owned by processes that no longer exist (killed before
/// they could clean up), and namespaces left without any record. Skipped
/// while another process holds [`hold_orphans`].
fn remove_orphans() {
    let Ok(f) = orphan_lock_file() else { return };
    let Ok(_lock) = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) else {
        return;
    };
    for name in Testbed::list() {
        let orphan = match read_meta(&name) {
            Ok(Some(meta)) => meta.lifetime == Lifetime::Process && !owner_alive(&meta),
            // No record: a crash between creating the directory and writing meta,
            // or namespaces without a directory. Nobody can be using it.
            Ok(None) => !testbed_dir(&name).join("meta.json").exists() && stale_enough(&name),
            Err(_) => false,
        };
        if orphan && let Err(e) = remove(&name) {
            eprintln!("warning: removing orphaned testbed: {e}");
        }
    }
}

/// A testbed directory without meta.json may be one being created right now
/// by another process; only treat it as garbage when it is older than a minute.
fn stale_enough(name: &str) -> bool {
    match fs::metadata(testbed_dir(name)) {
        Ok(m) => {
            m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > Duration::from_mins(1))
        }
        // Namespaces without a directory are never half-made by `create`.
        Err(_) => true,
    }
}

/// Removes everything of testbed `name`, whatever state it is in. Idempotent.
pub fn remove(name: &str) -> Result<(), TestbedError> {
    validate_name(name)?;
    let mut problems = Vec::new();
    let namespaces: Vec<String> =
        netns_names().into_iter().filter(|ns| testbed_of_netns(ns).as_deref() == Some(name)).collect();
    // 1. Stop processes running inside the hosts (agents, pings, ...), so the
    //    namespaces and links really go away.
    let mut victims = Vec::new();
    for ns in &namespaces {
        match pids_in_netns(&Path::new(NETNS_DIR).join(ns)) {
            Ok(pids) => victims.extend(pids),
            Err(e) => problems.push(format!("listing processes in {ns}: {e}")),
        }
    }
    kill_and_wait(&victims, &mut problems);
    // 2. Extra namespaces of the hosts (containers, endpoints): their
    //    processes, then the namespace files.
    let dir = testbed_dir(name);
    for mp in mounts_under(&dir).into_iter().rev() {
        if mp.parent().and_then(Path::file_name).is_some_and(|n| n == "netns") {
            remove_ns_file(&mp, &mut problems);
        }
    }
    // 3. Unmount the bpffs instances and UTS bind mounts, deepest first.
    let dir = testbed_dir(name);
    for mp in mounts_under(&dir).into_iter().rev() {
        if let Err(e) = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
            problems.push(format!("unmounting {}: {e}", mp.display()));
        }
    }
    // 4. Delete the namespaces; their veths (and the switch ports) go with them.
    for ns in &namespaces {
        if let Err(e) = cmd::run(&mut command("ip", ["netns", "delete", ns])) {
            problems.push(e.to_string());
        }
    }
    // 5. The cgroups the hosts' containers had (empty now).
    remove_cgroups(name, &mut problems);
    // 6. The directory, now that nothing is mounted below it.
    if problems.is_empty()
        && let Err(e) = fs::remove_dir_all(&dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {e}", dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TestbedError::Incomplete { name: name.to_owned(), problems })
    }
}

/// Where testbed hosts' agents put their containers' cgroups.
pub const CGROUP_ROOT: &str = "swarm-testbed";

/// Removes `<hierarchy>/swarm-testbed/<name>` in every cgroup hierarchy,
/// deepest first (a cgroup goes only once it is empty).
fn remove_cgroups(name: &str, problems: &mut Vec<String>) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else { return };
    for h in hierarchies.flatten() {
        let top = h.path().join(CGROUP_ROOT).join(name);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&d) {
                stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
            dirs.push(d);
        }
        // Whatever still runs in them (a container whose namespace is gone)
        // is stopped first.
        for d in &dirs {
            if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
                let pids: Vec<i32> = procs.lines().filter_map(|p| p.trim().parse().ok()).collect();
                if !pids.is_empty() {
                    kill_and_wait(&pids, problems);
                }
            }
        }
        for d in dirs.iter().rev() {
            // A killed container's processes leave their cgroup once reaped.
            let r =
                crate::poll::until("a cgroup to empty", Duration::from_secs(10), || {
                    match fs::remove_dir(d) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        Err(e) => Err(format!("removing cgroup {}: {e}", d.display())),
                    }
                });
            if let Err(e) = r {
                problems.push(e);
            }
        }
    }
}

/// Kills the processes in the namespace bound at `path`, unmounts and deletes it.
fn remove_ns_file(path: &Path, problems: &mut Vec<String>) {
    match pids_in_netns(path) {
        Ok(pids) => kill_and_wait(&pids, problems),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => problems.push(format!("listing processes in {}: {e}", path.display())),
    }
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)
        && e != nix::errno::Errno::EINVAL
    {
        problems.push(format!("unmounting {}: {e}", path.display()));
    }
    if let Err(e) = fs::remove_file(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        problems.push(format!("removing {}: {e}", path.display()));
    }
}

/// Processes whose network namespace is the one at `ns_path`.
fn pids_in_netns(ns_path: &Path) -> io::Result<Vec<i32>> {
    let target = fs::metadata(ns_path)?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if u32::try_from(pid).ok() == Some(me) {
            continue;
        }
        if let Ok(m) = fs::metadata(entry.path().join("ns/net"))
            && m.dev() == target.dev()
            && m.ino() == target.ino()
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

fn kill_and_wait(pids: &[i32], problems: &mut Vec<String>) {
    use nix::{sys::signal, unistd::Pid};
    for &pid in pids {
        let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
    }
    let alive = |pid: i32| {
        // A zombie has exited: it holds no namespace. Its parent reaps it.
        fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')).map(|zombie| !zombie))
            .unwrap_or(false)
    };
    let r = crate::poll::until("processes in the testbed to exit", Duration::from_secs(10), || {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() { Ok(()) } else { Err(format!("still running: {left:?}")) }
    });
    if let Err(e) = r {
        problems.push(e);
    }
}

/// Mount points at or below `dir`, in mount order.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape_mount_path(s: &str) -> PathBuf {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// True when `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Tears down this process's testbeds when it is interrupted, then lets the
/// signal take its default course.
mod cleanup_on_signal {
    use super::{Mutex, Once, PoisonError};

    static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static INSTALL: Once = Once::new();

    pub(super) fn register(name: &str) {
        INSTALL.call_once(install);
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).push(name.to_owned());
    }

    pub(super) fn unregister(name: &str) {
        LIVE.lock().unwrap_or_else(PoisonError::into_inner).retain(|n| n != name);
    }

    fn install() {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "warning: cannot watch for Ctrl-C; an interrupted run may leave a testbed behind: {e}"
                );
                return;
            }
        };
        std::thread::Builder::new()
            .name("testbed-cleanup".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
                    for name in names {
                        if let Err(e) = super::remove(&name) {
                            eprintln!("warning: {e}");
                        }
                    }
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            })
            .expect("spawn testbed-cleanup thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for ok in ["demo", "t123-4", "a", "0abc"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "Demo", "a b", "a/b", "x".repeat(25).as_str(), "ünï"] {
            assert!(matches!(validate_name(bad), Err(TestbedError::InvalidName(_))), "{bad:?}");
        }
    }

    #[test]
    fn netns_names_map_back_to_testbeds() {
        assert_eq!(testbed_of_netns("swtb-demo-sw").as_deref(), Some("demo"));
        assert_eq!(testbed_of_netns("swtb-t1-2-node12").as_deref(), Some("t1-2"));
        assert_eq!(testbed_of_netns("swtb-demo-nodeX"), None);
        assert_eq!(testbed_of_netns("swtb-demo-node"), None);
        assert_eq!(testbed_of_netns("other-demo-sw"), None);
    }

    #[test]
    fn hosts_get_underlay_addresses_in_order() {
        let hosts = host_list("x", 3);
        let ips: Vec<_> = hosts.iter().map(|h| h.underlay_ip.to_string()).collect();
        assert_eq!(ips, ["198.18.0.1", "198.18.0.2", "198.18.0.3"]);
        assert_eq!(hosts[2].netns, "swtb-x-node3");
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/run/a\040b"), PathBuf::from("/run/a b"));
        assert_eq!(unescape_mount_path("/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn own_start_time_is_readable() {
        let (pid, start) = self_owner();
        assert!(start > 0);
        assert_eq!(process_start_time(pid), Some(start));
    }
}
