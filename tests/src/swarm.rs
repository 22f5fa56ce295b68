//! Driving swarm-agent (and docker's CLI) on testbed hosts.

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use crate::{
    agent_bin,
    cmd::{self, CmdError},
    poll,
    testbed::{Host, Testbed},
};

/// Fast Raft timing for tests that kill managers.
pub const FAST_RAFT: &[(&str, &str)] = &[("SWARM_RAFT_HEARTBEAT", "100ms"), ("SWARM_RAFT_ELECTION", "600ms")];

/// Runs `swarm-agent args...` in `host` with extra environment; returns stdout.
pub fn agent_env(host: &Host, env: &[(&str, &str)], args: &[&str]) -> Result<String, CmdError> {
    let mut c = host.command(agent_bin()).expect("host command");
    c.args(args).envs(env.iter().copied()).env("RUST_BACKTRACE", "0");
    cmd::run(&mut c)
}

/// Runs `swarm-agent args...` in `host`; returns stdout.
pub fn agent(host: &Host, args: &[&str]) -> Result<String, CmdError> {
    agent_env(host, &[], args)
}

/// Runs docker's CLI in `host` against its agent; returns stdout.
pub fn docker(host: &Host, args: &[&str]) -> Result<String, CmdError> {
    let mut c = host.command("docker").expect("host command");
    c.args(args);
    cmd::run(&mut c)
}

/// stdout+stderr of a failed command, for comparing error texts.
pub fn stderr(e: &CmdError) -> String {
    match e {
        CmdError::Failed { stderr, .. } => stderr.clone(),
        CmdError::Spawn { .. } => e.to_string(),
    }
}

/// The join token for `role` ("worker"/"manager"), from a manager.
pub fn token(manager: &Host, role: &str) -> String {
    agent(manager, &["join-token", "-q", role]).expect("join-token").trim().to_owned()
}

/// A cluster: `init` on host 0 (with `init_args`), then `managers - 1` more
/// managers and the rest as workers. `env` goes to every daemon.
pub fn cluster(hosts: usize, managers: usize, env: &[(&str, &str)], init_args: &[&str]) -> Testbed {
    cluster_with_outsiders(hosts, managers, 0, env, init_args)
}

/// As [`cluster`], with `outsiders` more testbed hosts after the cluster's
/// that run no agent: clients from outside the swarm.
pub fn cluster_with_outsiders(
    hosts: usize,
    managers: usize,
    outsiders: usize,
    env: &[(&str, &str)],
    init_args: &[&str],
) -> Testbed {
    let tb = Testbed::up(hosts + outsiders).expect("testbed");
    let mut args = vec!["init"];
    args.extend_from_slice(init_args);
    agent_env(tb.host(0), env, &args).expect("init");
    let (wt, mt) = (token(tb.host(0), "worker"), token(tb.host(0), "manager"));
    for (i, h) in tb.hosts().iter().enumerate().take(hosts).skip(1) {
        let t = if i < managers { &mt } else { &wt };
        agent_env(h, env, &["join", "--token", t, "198.18.0.1:2377"]).expect("join");
    }
    tb
}

/// One row of `node ls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub is_self: bool,
    pub hostname: String,
    pub status: String,
    pub availability: String,
    pub manager_status: String,
    pub engine_version: String,
}

/// Parses a docker-style table by the header's column positions.
pub fn parse_table(out: &str) -> Vec<Vec<String>> {
    let mut lines = out.lines();
    let Some(header) = lines.next() else { return Vec::new() };
    // Column starts: positions where a header word begins after 2+ spaces.
    let bytes = header.as_bytes();
    let mut starts = vec![0];
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    lines
        .map(|l| {
            (0..starts.len())
                .map(|c| {
                    let from = starts[c].min(l.len());
                    let to = starts.get(c + 1).copied().unwrap_or(l.len()).min(l.len());
                    l[from..to].trim().to_owned()
                })
                .collect()
        })
        .collect()
}

pub fn node_ls(host: &Host) -> Result<Vec<NodeRow>, CmdError> {
    let out = agent(host, &["node", "ls"])?;
    Ok(parse_table(&out)
        .into_iter()
        .map(|c| {
            let (id, star) =
                c[0].split_once(' ').map_or((c[0].clone(), false), |(i, s)| (i.to_owned(), s.trim() == "*"));
            NodeRow {
                id,
                is_self: star,
                hostname: c[1].clone(),
                status: c[2].clone(),
                availability: c[3].clone(),
                manager_status: c[4].clone(),
                engine_version: c[5].clone(),
            }
        })
        .collect())
}

/// Polls `node ls` on `host` until `pred` holds.
pub fn wait_nodes(
    host: &Host,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[NodeRow]) -> bool,
) -> Vec<NodeRow> {
    poll::until(what, timeout, || {
        let rows = node_ls(host).map_err(|e| e.to_string())?;
        if pred(&rows) { Ok(rows) } else { Err(format!("{rows:#?}")) }
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn row<'a>(rows: &'a [NodeRow], hostname: &str) -> &'a NodeRow {
    rows.iter().find(|r| r.hostname == hostname).unwrap_or_else(|| panic!("no {hostname} in {rows:#?}"))
}

/// The PID of the host's daemon, from its PID file.
pub fn daemon_pid(host: &Host) -> i32 {
    let s = std::fs::read_to_string(host.state_dir().join("swarm-agent.pid")).expect("daemon pid file");
    s.trim().parse().expect("pid")
}

/// Kills the host's daemon with SIGKILL and waits until it is gone.
pub fn kill9(host: &Host) {
    let pid = daemon_pid(host);
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    poll::until("the daemon to die", Duration::from_secs(10), || {
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z')));
        if gone { Ok(()) } else { Err("still alive") }
    })
    .unwrap();
}

/// A daemon started by a test; killed and reaped when dropped.
pub struct DaemonProcess(Child);

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host's daemon log, headed with the host's name (for failure messages).
pub fn daemon_log(host: &Host) -> String {
    let log = std::fs::read_to_string(host.state_dir().join("swarm-agent.log")).unwrap_or_default();
    format!("--- {} daemon log ---\n{log}", host.name)
}

/// Starts the host's daemon (e.g. after a crash), logging to its state dir.
pub fn start_daemon(host: &Host, env: &[(&str, &str)]) -> DaemonProcess {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.state_dir().join("swarm-agent.log"))
        .expect("log file");
    let mut c = host.command(agent_bin()).expect("host command");
    c.arg("daemon")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = DaemonProcess(c.spawn().expect("spawn daemon"));
    let socket = host.state_dir().join("docker.sock");
    poll::until("the daemon to answer", Duration::from_secs(15), || {
        std::os::unix::net::UnixStream::connect(&socket).map_err(|e| e.to_string())?;
        agent(host, &["info"]).map(|_| ()).map_err(|e| e.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(host)));
    child
}
