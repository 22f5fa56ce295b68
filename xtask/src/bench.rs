//! `cargo xtask bench control-plane`: init, join, leader failover and
//! node-Down detection times on the testbed, median of several runs, with
//! tuned and default settings, next to swarmkit's defaults.

use std::time::{Duration, Instant};

use anyhow::bail;
use swarm_tests::{
    poll,
    swarm::{agent, agent_env, kill9, node_ls, start_daemon, token},
    testbed::Testbed,
};

/// Tuned Raft timing (daemon environment) and dispatcher heartbeat (init flag).
const TUNED_RAFT: &[(&str, &str)] = &[("SWARM_RAFT_HEARTBEAT", "100ms"), ("SWARM_RAFT_ELECTION", "500ms")];
const TUNED_HEARTBEAT: &str = "500ms";

#[derive(clap::Subcommand)]
pub enum Which {
    /// Init/join times, leader failover and node-Down detection.
    ControlPlane(Args),
    /// Overlay throughput and latency: underlay vs kernel vxlan+bridge vs eBPF.
    Overlay(crate::bench_overlay::Args),
    /// Raft write cost as the store grows, and 50 MB snapshot build/install.
    Store(crate::bench_store::Args),
    /// Services: create, scale, heal, reschedule, agent memory, scheduling.
    Services(crate::bench_services::Args),
    /// The routing mesh vs direct and vs kube-proxy-style iptables; VIPs.
    Mesh(crate::bench_mesh::Args),
}

pub fn run(which: &Which) -> anyhow::Result<()> {
    match which {
        Which::ControlPlane(a) => control_plane(a),
        Which::Overlay(a) => crate::bench_overlay::run(a),
        Which::Store(a) => crate::bench_store::run(a),
        Which::Services(a) => crate::bench_services::run(a),
        Which::Mesh(a) => crate::bench_mesh::run(a),
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// How long to watch a default-settings cluster for flapping.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    watch: Duration,
}

#[derive(Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn add(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn summary(&self) -> String {
        if self.0.is_empty() {
            return "-".into();
        }
        let mut v = self.0.clone();
        v.sort();
        format!("{} [{}-{}]", fmt(v[v.len() / 2]), fmt(v[0]), fmt(v[v.len() - 1]))
    }
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.2}s", d.as_secs_f64())
    }
}

fn timed<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let r = f()?;
    Ok((r, t.elapsed()))
}

fn control_plane(args: &Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::demo::build_agent()?;
    let mut init = Samples::default();
    let mut join_worker = Samples::default();
    let mut join_manager = Samples::default();
    let (mut failover_tuned, mut failover_default) = (Samples::default(), Samples::default());
    let (mut down_tuned, mut down_default) = (Samples::default(), Samples::default());
    for run in 1..=args.runs {
        crate::step(&format!("run {run}/{}", args.runs));
        joins(&mut init, &mut join_worker, &mut join_manager)?;
        failure_run(
            TUNED_RAFT,
            &["--dispatcher-heartbeat", TUNED_HEARTBEAT],
            &mut down_tuned,
            &mut failover_tuned,
        )?;
        failure_run(&[], &[], &mut down_default, &mut failover_default)?;
    }
    crate::step(&format!("watching a default-settings cluster for {:?}", args.watch));
    let (leader_changes, downs) = watch_defaults(args.watch)?;

    let rows = vec![
        vec!["init (daemon running)".into(), "-".into(), init.summary(), "-".into()],
        vec!["join as worker".into(), "-".into(), join_worker.summary(), "-".into()],
        vec!["join as manager".into(), "-".into(), join_manager.summary(), "-".into()],
        vec![
            "leader failover: kill -9 to first write".into(),
            failover_tuned.summary(),
            failover_default.summary(),
            "10-20s election (1s tick x 10-20)".into(),
        ],
        vec![
            "node Down detection: cut to Down".into(),
            down_tuned.summary(),
            down_default.summary(),
            "15s (3 x 5s heartbeats)".into(),
        ],
    ];
    println!();
    println!("control-plane benchmark, {} runs each: median [min-max]", args.runs);
    println!("tuned: raft heartbeat 100ms, election 500-1000ms, dispatcher heartbeat {TUNED_HEARTBEAT}");
    println!("default: raft heartbeat 250ms, election 1.5-3s, dispatcher heartbeat 5s");
    println!();
    let table = render(&["METRIC", "TUNED", "DEFAULT", "SWARMKIT DEFAULT"], &rows);
    print!("{table}");
    println!();
    println!(
        "default settings over {:?} with 3 managers + 1 worker: {leader_changes} leader changes, {downs} Down observations",
        args.watch
    );
    if leader_changes > 0 || downs > 0 {
        bail!("the default settings flapped");
    }
    Ok(())
}

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<w$}", w = widths[i] + 3));
        }
        l.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// init on a running daemon, then a manager and a worker join.
fn joins(init: &mut Samples, worker: &mut Samples, manager: &mut Samples) -> anyhow::Result<()> {
    let tb = Testbed::up(3)?;
    let _daemons: Vec<_> = tb.hosts().iter().map(|h| start_daemon(h, &[])).collect();
    let (_, t) = timed(|| Ok(agent(tb.host(0), &["init"])?))?;
    init.add(t);
    let (mt, wt) = (token(tb.host(0), "manager"), token(tb.host(0), "worker"));
    let (_, t) = timed(|| Ok(agent(tb.host(1), &["join", "--token", &mt, "198.18.0.1:2377"])?))?;
    manager.add(t);
    let (_, t) = timed(|| Ok(agent(tb.host(2), &["join", "--token", &wt, "198.18.0.1:2377"])?))?;
    worker.add(t);
    Ok(())
}

/// Three managers and a worker: cut the worker (time to Down), then kill
/// the leader (time to the first successful write on a survivor).
fn failure_run(
    env: &[(&str, &str)],
    init_args: &[&str],
    down: &mut Samples,
    failover: &mut Samples,
) -> anyhow::Result<()> {
    let tb = swarm_tests::swarm::cluster(4, 3, env, init_args);
    let (m1, m2, w) = (tb.host(0), tb.host(1), tb.host(3));
    poll::until("the cluster to settle", Duration::from_secs(60), || {
        let rows = node_ls(m1).map_err(|e| e.to_string())?;
        let ok = rows.len() == 4
            && rows.iter().all(|r| r.status == "Ready")
            && rows.iter().filter(|r| r.manager_status == "Reachable").count() == 2;
        if ok { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .map_err(anyhow::Error::msg)?;

    tb.cut(w)?;
    let cut = Instant::now();
    poll::until("the worker to be down", Duration::from_secs(60), || {
        let rows = node_ls(m1).map_err(|e| e.to_string())?;
        if rows.iter().any(|r| r.hostname == w.name && r.status == "Down") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .map_err(anyhow::Error::msg)?;
    down.add(cut.elapsed());
    tb.restore(w)?;

    kill9(m1);
    let killed = Instant::now();
    poll::until("a write on a survivor", Duration::from_secs(60), || {
        agent_env(m2, &[], &["node", "update", "--label-add", "bench=1", &w.name])
    })
    .map_err(anyhow::Error::msg)?;
    failover.add(killed.elapsed());
    Ok(())
}

/// Watches a default-settings cluster: leader changes and Down observations.
fn watch_defaults(window: Duration) -> anyhow::Result<(usize, usize)> {
    let tb = swarm_tests::swarm::cluster(4, 3, &[], &[]);
    let m = tb.host(0);
    poll::until("the cluster to settle", Duration::from_secs(60), || {
        let rows = node_ls(m).map_err(|e| e.to_string())?;
        if rows.len() == 4 && rows.iter().all(|r| r.status == "Ready") {
            Ok(())
        } else {
            Err("settling".to_owned())
        }
    })
    .map_err(anyhow::Error::msg)?;
    let end = Instant::now() + window;
    let (mut changes, mut downs, mut last_leader) = (0, 0, None);
    while Instant::now() < end {
        let rows = node_ls(m)?;
        let leader = rows.iter().find(|r| r.manager_status == "Leader").map(|r| r.hostname.clone());
        if last_leader.is_some() && leader != last_leader {
            changes += 1;
        }
        last_leader = leader;
        downs += rows.iter().filter(|r| r.status != "Ready").count();
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((changes, downs))
}
