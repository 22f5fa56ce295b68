//! The fault suite: three managers on the testbed, a writer that logs every
//! acknowledged write, and faults — the leader killed with SIGKILL and
//! restarted, the leader or a follower cut off and healed — then a checker
//! that looks for every acknowledged write in each manager's own copy of
//! the store. Used by `cargo xtask chaos` (long form) and by the short form
//! in the test suite.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    poll,
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
    /// Longest time without an acknowledged write.
    pub longest_unavailable: Duration,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "fault cycles:              {}", self.cycles)?;
        writeln!(f, "writes acknowledged:       {}", self.acknowledged)?;
        writeln!(f, "writes lost:               {}", self.lost.len())?;
        writeln!(f, "outcome unknown (told so): {}", self.unknown)?;
        writeln!(f, "refused, no leader:        {}", self.refused)?;
        writeln!(f, "longest unavailability:    {:.2}s", self.longest_unavailable.as_secs_f64())?;
        write!(f, "run time:                  {:.1}s", self.elapsed.as_secs_f64())
    }
}

#[derive(Default)]
struct Log {
    acked: Vec<String>,
    unknown: usize,
    refused: usize,
    last_ack: Option<Instant>,
    longest_gap: Duration,
}

const UNKNOWN: &str = "may or may not have been applied";
const NO_LEADER: &str = "does not have a leader";

/// Writes networks `chaos-N` through whichever manager answers, until `stop`.
fn writer(hosts: &[Host], log: &Mutex<Log>, stop: &AtomicBool) {
    let mut n = 0usize;
    let mut at = 0usize;
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
            }
            Err(e) => {
                let msg = stderr(&e);
                let mut l = log.lock().unwrap();
                if msg.contains(UNKNOWN) {
                    l.unknown += 1;
                    n += 1;
                } else if msg.contains(NO_LEADER) {
                    // Not proposed: the same name may be tried again.
                    l.refused += 1;
                    drop(l);
                    at += 1;
                    std::thread::sleep(Duration::from_millis(20));
                } else if msg.contains("already exists") {
                    // An earlier attempt whose answer was lost went through.
                    n += 1;
                } else {
                    // This manager is down or restarting: ask another.
                    drop(l);
                    at += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
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
    let out = agent(h, &["debug", "store", "--objects"]).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    let names = v["network_names"]
        .as_array()
        .ok_or("no names")?
        .iter()
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect();
    Ok((v["applied"].as_u64().unwrap_or(0), v["sha256"].as_str().unwrap_or("").to_owned(), names))
}

/// Runs the faults against a fresh three-manager swarm.
pub fn run(faults: Faults, progress_out: &dyn Fn(&str)) -> Result<Report, String> {
    let started = Instant::now();
    let tb: Testbed = cluster(3, 3, FAST_RAFT, &[]);
    let hosts: Vec<Host> = tb.hosts().to_vec();
    all_reachable(&hosts[0])?;
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (hosts, log, stop) = (hosts.clone(), log.clone(), stop.clone());
        std::thread::spawn(move || writer(&hosts, &log, &stop))
    };
    let mut daemons: Vec<Option<DaemonProcess>> = (0..hosts.len()).map(|_| None).collect();
    let mut alive = vec![true; hosts.len()];
    let result = (|| -> Result<usize, String> {
        progress(&log, 0, 5, "first writes")?;
        let mut cycles = 0;
        for i in 0..faults.kills {
            let l = leader(&hosts, &alive)?;
            progress_out(&format!("kill {}/{}: kill -9 the leader ({})", i + 1, faults.kills, hosts[l].name));
            let before = acked(&log);
            kill9(&hosts[l]);
            alive[l] = false;
            progress(&log, before, 3, "writes after the leader died")?;
            daemons[l] = Some(start_daemon(&hosts[l], FAST_RAFT));
            alive[l] = true;
            all_reachable(&hosts[(l + 1) % hosts.len()])?;
            cycles += 1;
        }
        for (kind, count) in [("leader", faults.leader_partitions), ("follower", faults.follower_partitions)]
        {
            for i in 0..count {
                let l = leader(&hosts, &alive)?;
                let victim = if kind == "leader" { l } else { (l + 1) % hosts.len() };
                progress_out(&format!("{kind} partition {}/{count}: cut {}", i + 1, hosts[victim].name));
                let before = acked(&log);
                tb.cut(&hosts[victim]).map_err(|e| e.to_string())?;
                progress(&log, before, 5, "writes with a manager cut off")?;
                tb.restore(&hosts[victim]).map_err(|e| e.to_string())?;
                all_reachable(&hosts[(victim + 1) % hosts.len()])?;
                cycles += 1;
            }
        }
        Ok(cycles)
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = w.join();
    let cycles = result
        .map_err(|e| format!("{e}\n{}", hosts.iter().map(daemon_log).collect::<Vec<_>>().join("\n")))?;

    // Every manager's own copy, once they agree.
    let copies = poll::until("identical copies on every manager", Duration::from_secs(60), || {
        let c: Vec<_> = hosts.iter().map(copy_of).collect::<Result<_, _>>()?;
        if c.windows(2).all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1) {
            Ok(c)
        } else {
            Err("copies differ".to_owned())
        }
    })?;
    let l = log.lock().unwrap();
    let mut lost = Vec::new();
    for name in &l.acked {
        if copies.iter().any(|(_, _, names)| !names.contains(name)) {
            lost.push(name.clone());
        }
    }
    let report = Report {
        cycles,
        acknowledged: l.acked.len(),
        lost,
        unknown: l.unknown,
        refused: l.refused,
        longest_unavailable: l.longest_gap,
        elapsed: started.elapsed(),
    };
    drop(daemons);
    Ok(report)
}
