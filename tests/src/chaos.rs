//! The fault suite: three managers and two workers on the testbed, a writer
//! that logs every acknowledged write, a service writer that creates,
//! scales and removes services (real tasks), a ping between endpoints on the two
//! workers through the overlay, hostile bytes sent to 2377, 7946 and 4789,
//! and faults — the leader killed with SIGKILL and restarted (and a worker's
//! agent with it), the leader or a follower cut off and healed, a follower
//! left far behind, a worker promoted into a big state — then a checker that
//! looks for every acknowledged write (and the state every acknowledged
//! service change left) in each manager's own copy of the store. Used by `cargo xtask chaos` (long form) and by the short form in
//! the test suite.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    overlay::{Endpoint, connect},
    poll,
    services::import_busybox,
    swarm::{DaemonProcess, FAST_RAFT, agent, cluster, daemon_log, kill9, node_ls, start_daemon, stderr},
    testbed::{Host, Testbed},
};

/// How many faults of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Leader kill -9 and restart cycles.
    pub kills: usize,
    /// Leader cut off from the others, then healed.
    pub leader_partitions: usize,
    /// A follower cut off, then healed.
    pub follower_partitions: usize,
    /// MiB written while a follower is cut off, before it catches up (0: skip).
    pub behind_mib: usize,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub cycles: usize,
    /// Writes the swarm said were done.
    pub acknowledged: usize,
    /// Acknowledged writes missing from some manager's copy: must be 0.
    pub lost: Vec<String>,
    /// Writes answered with "may or may not have been applied".
    pub unknown: usize,
    /// Writes refused because there was no leader (not applied).
    pub refused: usize,
    /// Writes answered "no leader" that had in fact been applied (a retry
    /// found them): must be 0.
    pub misreported: usize,
    /// Longest time without an acknowledged write.
    pub longest_unavailable: Duration,
    /// Service creates, scales and removes the swarm said were done.
    pub service_changes: usize,
    /// Services whose state in some manager's copy is not what the last
    /// acknowledged change left: must be empty.
    pub services_lost: Vec<String>,
    /// Service changes without a clear answer (retried), and the last error.
    pub service_retries: (usize, String),
    /// Pings between the workers' endpoints: sent, answered.
    pub pings: (u64, u64),
    /// Hostile packets and connections sent at the managers.
    pub hostile: u64,
    /// A follower behind by `behind_mib` MiB: time to an identical copy.
    pub catch_up: Option<Duration>,
    /// A worker promoted into the final state: time to an identical copy.
    pub promotion: Option<Duration>,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fault cycles:              {}", self.cycles)?;
        writeln!(f, "writes acknowledged:       {}", self.acknowledged)?;
        writeln!(f, "writes lost:               {}", self.lost.len())?;
        writeln!(f, "outcome unknown (told so): {}", self.unknown)?;
        writeln!(f, "refused, no leader:        {}", self.refused)?;
        writeln!(f, "refused but applied:       {}", self.misreported)?;
        writeln!(f, "longest unavailability:    {:.2}s", self.longest_unavailable.as_secs_f64())?;
        writeln!(f, "service changes acked:     {}", self.service_changes)?;
        writeln!(f, "service changes lost:      {}", self.services_lost.len())?;
        writeln!(
            f,
            "service changes retried:   {} (last: {})",
            self.service_retries.0, self.service_retries.1
        )?;
        writeln!(
            f,
            "traffic lost:              {} of {} pings (20 ms apart, worker to worker, agents killed too)",
            self.pings.0.saturating_sub(self.pings.1),
            self.pings.0
        )?;
        writeln!(f, "hostile sends:             {} (garbage to 2377, 7946, 4789)", self.hostile)?;
        if let Some(d) = self.catch_up {
            writeln!(f, "follower behind, caught up: {:.2}s", d.as_secs_f64())?;
        }
        if let Some(d) = self.promotion {
            writeln!(f, "manager joined big state:  {:.2}s", d.as_secs_f64())?;
        }
        write!(f, "run time:                  {:.1}s", self.elapsed.as_secs_f64())
    }
}

#[derive(Default)]
struct Log {
    acked: Vec<String>,
    unknown: usize,
    refused: usize,
    misreported: usize,
    last_ack: Option<Instant>,
    longest_gap: Duration,
}

const UNKNOWN: &str = "may or may not have been applied";
const NO_LEADER: &str = "does not have a leader";

/// Writes networks `chaos-N` through whichever manager answers, until `stop`.
fn writer(hosts: &[Host], log: &Mutex<Log>, stop: &AtomicBool) {
    let mut n = 0usize;
    let mut at = 0usize;
    // Whether the last answer for the current name was "no leader", and
    // whether an earlier attempt at it may have gone through.
    let mut refused_last = false;
    let mut ambiguous = false;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("chaos-{n}");
        let h = &hosts[at % hosts.len()];
        match agent(h, &["network", "create", "--driver", "overlay", &name]) {
            Ok(_) => {
                let mut l = log.lock().unwrap();
                let now = Instant::now();
                if let Some(prev) = l.last_ack {
                    l.longest_gap = l.longest_gap.max(now - prev);
                }
                l.last_ack = Some(now);
                l.acked.push(name);
                n += 1;
                refused_last = false;
                ambiguous = false;
            }
            Err(e) => {
                let msg = stderr(&e);
                let mut l = log.lock().unwrap();
                if msg.contains(UNKNOWN) {
                    l.unknown += 1;
                    n += 1;
                    refused_last = false;
                    ambiguous = false;
                } else if msg.contains(NO_LEADER) {
                    // Not proposed: the same name may be tried again.
                    l.refused += 1;
                    refused_last = true;
                    drop(l);
                    at += 1;
                    std::thread::sleep(Duration::from_millis(20));
                } else if msg.contains("already exists") {
                    // An earlier attempt whose answer was lost went through;
                    // if that answer said "no leader", it was not true.
                    if refused_last && !ambiguous {
                        l.misreported += 1;
                    }
                    n += 1;
                    refused_last = false;
                    ambiguous = false;
                } else {
                    // This manager is down or restarting (the request may
                    // have been cut off mid-way): ask another.
                    refused_last = false;
                    ambiguous = true;
                    drop(l);
                    at += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// What the service writer's acknowledged changes left: name → replicas,
/// `None` once removed. The change in flight when it stopped is in doubt.
#[derive(Default)]
struct ServiceLog {
    expected: BTreeMap<String, Option<u64>>,
    acked: usize,
    in_doubt: Option<String>,
    /// Attempts that got no clear answer, and the last such error.
    retries: usize,
    last_error: String,
}

/// Services `svc-N` through whichever manager answers, until `stop`: each
/// is created with 1 replica, scaled to 3, then to 2, and every other one
/// removed. A change without a clear answer is retried (each is
/// idempotent: a create that finds the name taken, a remove that finds it
/// gone, a scale to the same count are done).
fn service_writer(hosts: &[Host], log: &Mutex<ServiceLog>, stop: &AtomicBool) {
    let mut n = 0usize;
    let mut step = 0usize;
    let mut at = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("svc-{n}");
        let (args, result): (Vec<String>, Option<u64>) = match step {
            0 => (
                [
                    "service",
                    "create",
                    "-d",
                    "--name",
                    &name,
                    "--stop-grace-period",
                    "1s",
                    "busybox",
                    "sleep",
                    "100000",
                ]
                .map(str::to_owned)
                .to_vec(),
                Some(1),
            ),
            1 => (["service", "scale", "-d", &format!("{name}=3")].map(str::to_owned).to_vec(), Some(3)),
            2 => (["service", "scale", "-d", &format!("{name}=2")].map(str::to_owned).to_vec(), Some(2)),
            _ => (["service", "rm", &name].map(str::to_owned).to_vec(), None),
        };
        log.lock().unwrap().in_doubt = Some(name.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (done, msg) = match agent(&hosts[at % hosts.len()], &refs) {
            Ok(_) => (true, String::new()),
            Err(e) => {
                let msg = stderr(&e);
                let done = (step == 0 && msg.contains("already exists"))
                    // A remove retried after an unknown outcome finds it gone.
                    || (step == 3 && (msg.contains("no such service") || msg.contains("not found")));
                (done, msg)
            }
        };
        if !done {
            let mut l = log.lock().unwrap();
            l.retries += 1;
            l.last_error = format!("{}: {}", refs.join(" "), msg.trim());
            drop(l);
            at += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let mut l = log.lock().unwrap();
        l.expected.insert(name, result);
        l.acked += 1;
        l.in_doubt = None;
        drop(l);
        step = match step {
            2 if n.is_multiple_of(2) => {
                n += 1;
                0
            }
            3 => {
                n += 1;
                0
            }
            s => s + 1,
        };
    }
}

/// Services whose state in `copies` differs from what `log` expects.
fn services_lost(log: &ServiceLog, copies: &[BTreeMap<String, Option<u64>>]) -> Vec<String> {
    let mut lost = Vec::new();
    for (name, want) in &log.expected {
        if log.in_doubt.as_ref() == Some(name) {
            continue;
        }
        for c in copies {
            let have = c.get(name);
            let ok = match want {
                Some(r) => have == Some(&Some(*r)),
                None => have.is_none(),
            };
            if !ok {
                lost.push(format!("{name}: want {want:?}, a copy has {have:?}"));
                break;
            }
        }
    }
    lost
}

/// The index of the host that leads, as the live managers see it.
fn leader(hosts: &[Host], alive: &[bool]) -> Result<usize, String> {
    poll::until("a leader", Duration::from_secs(30), || {
        for h in hosts.iter().zip(alive).filter(|(_, a)| **a).map(|(h, _)| h) {
            if let Ok(rows) = node_ls(h)
                && let Some(r) = rows.iter().find(|r| r.manager_status == "Leader")
                && let Some(i) = hosts.iter().position(|x| x.name == r.hostname)
            {
                return Ok(i);
            }
        }
        Err("no manager knows a leader")
    })
}

fn acked(log: &Mutex<Log>) -> usize {
    log.lock().unwrap().acked.len()
}

/// Waits until the writer has had `more` writes acknowledged since `from`.
fn progress(log: &Mutex<Log>, from: usize, more: usize, what: &str) -> Result<(), String> {
    poll::until(what, Duration::from_secs(60), || {
        let n = acked(log);
        if n >= from + more { Ok(()) } else { Err(format!("{n} acknowledged")) }
    })
    .map(drop)
}

fn all_reachable(h: &Host) -> Result<(), String> {
    poll::until("three reachable managers", Duration::from_secs(60), || {
        let rows = node_ls(h).map_err(|e| e.to_string())?;
        let ok = rows.iter().filter(|r| r.manager_status == "Reachable").count() == 2
            && rows.iter().any(|r| r.manager_status == "Leader");
        if ok { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .map(drop)
}

/// One manager's own copy: (applied index, digest, network names).
fn copy_of(h: &Host) -> Result<(u64, String, Vec<String>), String> {
    copy_with_services(h).map(|(a, s, n, _)| (a, s, n))
}

type Copy = (u64, String, Vec<String>, BTreeMap<String, Option<u64>>);

/// One manager's own copy: applied index, digest, network names, services.
fn copy_with_services(h: &Host) -> Result<Copy, String> {
    let out = agent(h, &["debug", "store", "--objects"]).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let names = v["network_names"]
        .as_array()
        .ok_or("no names")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    let services = v["service_replicas"]
        .as_object()
        .map(|o| o.iter().map(|(k, r)| (k.clone(), r.as_u64())).collect())
        .unwrap_or_default();
    Ok((v["applied"].as_u64().unwrap_or(0), v["sha256"].as_str().unwrap_or("").to_owned(), names, services))
}

/// Sends garbage at every manager until `stop`: TCP to 2377 and 7946, UDP
/// to 7946 and VXLAN-looking UDP to 4789. Returns how many sends.
fn hostile(from: &Host, managers: &[Host], stop: &AtomicBool) -> u64 {
    use std::io::Write as _;
    from.in_netns(|| {
        let udp = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        let mut n = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while !stop.load(Ordering::Relaxed) {
            for m in managers {
                let mut junk = [0u8; 256];
                for b in &mut junk {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *b = seed as u8;
                }
                junk[0] = 0x08; // VXLAN I flag for the 4789 ones
                let _ = udp.send_to(&junk, (m.underlay_ip, 4789));
                let _ = udp.send_to(&junk, (m.underlay_ip, 7946));
                for port in [2377, 7946] {
                    let to = std::net::SocketAddr::from((m.underlay_ip, port));
                    if let Ok(mut s) = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200)) {
                        let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                        let _ = s.write_all(&junk);
                    }
                }
                n += 4;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    })
    .unwrap_or(0)
}

/// `ping -i 0.02` from `from` to `to` until stopped; its (sent, received).
struct Ping(Option<std::process::Child>);

impl Ping {
    fn start(from: &Endpoint, to: std::net::Ipv4Addr) -> Ping {
        let child = from.within(|| {
            std::process::Command::new("ping")
                .args(["-i", "0.02", "-q", &to.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("ping")
        });
        Ping(Some(child))
    }

    fn stop(mut self) -> (u64, u64) {
        let Some(child) = self.0.take() else { return (0, 0) };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let out = child
            .wait_with_output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let line = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
        let nums: Vec<u64> =
            line.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
        (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0))
    }
}

impl Drop for Ping {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every manager's own copy, once they agree.
fn identical(managers: &[Host], timeout: Duration) -> Result<Vec<Copy>, String> {
    poll::until("identical copies on every manager", timeout, || {
        let c: Vec<Copy> = managers.iter().map(copy_with_services).collect::<Result<_, _>>()?;
        if c.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1) {
            Ok(c)
        } else {
            let seen: Vec<String> = managers
                .iter()
                .zip(&c)
                .map(|(h, (applied, sha, names, services))| {
                    format!(
                        "{}: applied {applied}, {} networks, {} services, {sha:.12}",
                        h.name,
                        names.len(),
                        services.len()
                    )
                })
                .collect();
            Err(format!("copies differ: {seen:?}"))
        }
    })
}

/// About `mib` MiB of networks, 800 KiB each (labels on the command line).
fn write_big(h: &Host, prefix: &str, mib: usize) -> Result<(), String> {
    let label: String = "x".repeat(100 * 1024);
    for i in 0..(mib * 5).div_ceil(4) {
        let mut args: Vec<String> =
            vec!["network".into(), "create".into(), "--driver".into(), "overlay".into()];
        for k in 0..8 {
            args.push("--label".into());
            args.push(format!("k{k}={label}"));
        }
        args.push(format!("{prefix}{i}"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        poll::until("a big write", Duration::from_secs(30), || agent(h, &refs)).map(drop)?;
    }
    Ok(())
}

/// Runs the faults against a fresh swarm of three managers and two workers.
pub fn run(faults: Faults, progress_out: &dyn Fn(&str)) -> Result<Report, String> {
    let started = Instant::now();
    let tb: Testbed = cluster(5, 3, FAST_RAFT, &[]);
    let hosts: Vec<Host> = tb.hosts().to_vec();
    let managers: Vec<Host> = hosts[..3].to_vec();
    all_reachable(&hosts[0])?;
    // Traffic between the two workers (never cut off) through the overlay.
    agent(&hosts[0], &["network", "create", "--driver", "overlay", "--attachable", "chaos-net"])
        .map_err(|e| e.to_string())?;
    let ep4 = connect(&hosts[3], "chaos-net", "chaos")?;
    let ep5 = connect(&hosts[4], "chaos-net", "chaos")?;
    poll::until("the workers' endpoints to reach each other", Duration::from_secs(30), || ep4.ping(ep5.ip))?;
    let ping = Ping::start(&ep4, ep5.ip);

    for h in &hosts {
        import_busybox(h);
    }

    let log = Arc::new(Mutex::new(Log::default()));
    let service_log = Arc::new(Mutex::new(ServiceLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (hosts, log, stop) = (managers.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || writer(&hosts, &log, &stop))
    };
    let sw = {
        let (hosts, log, stop) = (managers.clone(), service_log.clone(), stop.clone());
        std::thread::spawn(move || service_writer(&hosts, &log, &stop))
    };
    let hostile_thread = {
        let (from, to, stop) = (hosts[4].clone(), managers.clone(), stop.clone());
        std::thread::spawn(move || hostile(&from, &to, &stop))
    };
    let mut daemons: Vec<Option<DaemonProcess>> = (0..hosts.len()).map(|_| None).collect();
    let mut alive = vec![true; managers.len()];
    let mut catch_up = None;
    let result = (|| -> Result<usize, String> {
        progress(&log, 0, 5, "first writes")?;
        let mut cycles = 0;
        for i in 0..faults.kills {
            let l = leader(&managers, &alive)?;
            progress_out(&format!(
                "kill {}/{}: kill -9 the leader ({}) and node4's agent",
                i + 1,
                faults.kills,
                managers[l].name
            ));
            let before = acked(&log);
            kill9(&managers[l]);
            kill9(&hosts[3]);
            alive[l] = false;
            daemons[3] = Some(start_daemon(&hosts[3], FAST_RAFT));
            progress(&log, before, 3, "writes after the leader died")?;
            daemons[l] = Some(start_daemon(&managers[l], FAST_RAFT));
            alive[l] = true;
            all_reachable(&managers[(l + 1) % managers.len()])?;
            cycles += 1;
        }
        for (kind, count) in [("leader", faults.leader_partitions), ("follower", faults.follower_partitions)]
        {
            for i in 0..count {
                let l = leader(&managers, &alive)?;
                let victim = if kind == "leader" { l } else { (l + 1 + i % 2) % managers.len() };
                progress_out(&format!("{kind} partition {}/{count}: cut {}", i + 1, managers[victim].name));
                let before = acked(&log);
                tb.cut(&managers[victim]).map_err(|e| e.to_string())?;
                progress(&log, before, 5, "writes with a manager cut off")?;
                tb.restore(&managers[victim]).map_err(|e| e.to_string())?;
                all_reachable(&managers[(victim + 1) % managers.len()])?;
                cycles += 1;
            }
        }
        if faults.behind_mib > 0 {
            let l = leader(&managers, &alive)?;
            let victim = (l + 1) % managers.len();
            progress_out(&format!(
                "a follower ({}) left {} MiB behind",
                managers[victim].name, faults.behind_mib
            ));
            tb.cut(&managers[victim]).map_err(|e| e.to_string())?;
            write_big(&managers[l], "behind-", faults.behind_mib)?;
            // The writer goes on: caught up is having what the leader had
            // when the follower came back.
            let target = copy_of(&managers[l])?.0;
            tb.restore(&managers[victim]).map_err(|e| e.to_string())?;
            let t = Instant::now();
            poll::until("the follower to catch up", Duration::from_secs(120), || {
                let (applied, _, _) = copy_of(&managers[victim])?;
                if applied >= target { Ok(()) } else { Err(format!("at {applied} of {target}")) }
            })?;
            catch_up = Some(t.elapsed());
            cycles += 1;
        }
        Ok(cycles)
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = w.join();
    let _ = sw.join();
    let hostile_sent = hostile_thread.join().unwrap_or(0);
    let cycles = result
        .map_err(|e| format!("{e}\n{}", hosts.iter().map(daemon_log).collect::<Vec<_>>().join("\n")))?;

    // A worker becomes a manager: it joins the final (big) state.
    progress_out("promoting node4 into the final state");
    let t = Instant::now();
    agent(&managers[0], &["node", "promote", "node4"])
        .or_else(|_| agent(&managers[1], &["node", "promote", "node4"]))
        .map_err(|e| e.to_string())?;
    let mut all = managers.clone();
    all.push(hosts[3].clone());
    let copies = identical(&all, Duration::from_secs(120))
        .map_err(|e| format!("{e}\n{}", all.iter().map(daemon_log).collect::<Vec<_>>().join("\n")))?;
    let promotion = Some(t.elapsed());
    let pings = ping.stop();

    let l = log.lock().unwrap();
    let mut lost = Vec::new();
    for name in &l.acked {
        if copies.iter().any(|(_, _, names, _)| !names.contains(name)) {
            lost.push(name.clone());
        }
    }
    let sl = service_log.lock().unwrap();
    let service_copies: Vec<BTreeMap<String, Option<u64>>> = copies.iter().map(|c| c.3.clone()).collect();
    let services_lost = services_lost(&sl, &service_copies);
    let report = Report {
        cycles,
        acknowledged: l.acked.len(),
        lost,
        unknown: l.unknown,
        refused: l.refused,
        misreported: l.misreported,
        longest_unavailable: l.longest_gap,
        service_changes: sl.acked,
        services_lost,
        service_retries: (sl.retries, sl.last_error.clone()),
        pings,
        hostile: hostile_sent,
        catch_up,
        promotion,
        elapsed: started.elapsed(),
    };
    drop(daemons);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_change_missing_from_any_copy_is_lost_except_the_one_in_doubt() {
        let log = ServiceLog {
            expected: [("a".to_owned(), Some(2)), ("b".to_owned(), None), ("c".to_owned(), Some(3))].into(),
            acked: 5,
            in_doubt: Some("c".into()),
            ..ServiceLog::default()
        };
        let good: BTreeMap<String, Option<u64>> = [("a".to_owned(), Some(2))].into();
        assert!(services_lost(&log, &[good.clone(), good.clone()]).is_empty());
        let stale: BTreeMap<String, Option<u64>> =
            [("a".to_owned(), Some(3)), ("b".to_owned(), Some(1))].into();
        let lost = services_lost(&log, &[good, stale]);
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].starts_with("a:") && lost[1].starts_with("b:"), "{lost:?}");
    }
}
