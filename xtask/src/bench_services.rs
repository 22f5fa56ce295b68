//! `cargo xtask bench services`: how fast services converge on three
//! testbed hosts (release build), medians of several runs, next to Docker
//! 20.10's figures measured on this kind of machine.
//!
//! Times are taken on the Engine API socket (polled every 10 ms), from the
//! request to the state: create → every replica running, scale 2 → 20, a
//! task's process killed → its replacement running (restart delay 0 and the
//! default 5 s), a node cut off → its tasks running elsewhere (heartbeat
//! 500 ms), a worker agent's RSS idle and with 100 tasks of its own,
//! scheduling 10 000 tasks onto 1 000 simulated nodes, and a rolling update
//! of 20 web tasks (parallelism 2, delay 0, start-first and stop-first, and
//! Docker's defaults: parallelism 1, stop-first, 5 s monitor) while a client
//! on another host loops over new connections to the published port:
//! the time until the update completes and the requests that failed.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use swarm_tests::{
    image::busybox_rootfs,
    poll,
    swarm::{agent, daemon_pid, docker, token},
    testbed::{Host, Testbed},
};

use crate::{
    bench_store::{http, sock},
    target_dir,
};

#[derive(clap::Args)]
pub struct Args {
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn get(h: &Host, path: &str) -> anyhow::Result<Value> {
    let (status, body) = http(&sock(h), "GET", path, None)?;
    if status != 200 {
        bail!("GET {path}: {status} {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

fn post(h: &Host, path: &str, body: &Value) -> anyhow::Result<Value> {
    let (status, out) = http(&sock(h), "POST", path, Some(&serde_json::to_vec(body)?))?;
    if !(200..300).contains(&status) {
        bail!("POST {path}: {status} {}", String::from_utf8_lossy(&out));
    }
    Ok(serde_json::from_slice(&out).unwrap_or(Value::Null))
}

fn spec(name: &str, replicas: u64, restart_delay_ns: Option<i64>) -> Value {
    let mut s = json!({
        "Name": name,
        "Mode": {"Replicated": {"Replicas": replicas}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "100000"]}},
    });
    if let Some(d) = restart_delay_ns {
        s["TaskTemplate"]["RestartPolicy"] = json!({"Condition": "any", "Delay": d});
    }
    s
}

/// Running tasks of `service` (desired and observed running).
fn running(h: &Host, service: &str) -> anyhow::Result<Vec<Value>> {
    let q = format!("/tasks?filters=%7B%22service%22%3A%5B%22{service}%22%5D%7D");
    let tasks: Vec<Value> = serde_json::from_value(get(h, &q)?)?;
    Ok(tasks
        .into_iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .collect())
}

fn wait_running(h: &Host, service: &str, n: usize, timeout: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = running(h, service)?;
        if r.len() == n {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!("{service}: {} of {n} tasks running after {timeout:?}", r.len());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the service and waits until its tasks are gone (their
/// containers stopped: `sleep` ignores SIGTERM, so after the 10 s grace).
fn remove(h: &Host, service: &str) -> anyhow::Result<()> {
    let id = get(h, &format!("/services/{service}"))?["ID"].as_str().context("service ID")?.to_owned();
    http(&sock(h), "DELETE", &format!("/services/{service}"), None)?;
    poll::until("the service's containers to go", Duration::from_secs(60), || {
        let all: Vec<Value> =
            get(h, "/tasks").map_err(|e| e.to_string())?.as_array().cloned().unwrap_or_default();
        if all.iter().any(|t| t["ServiceID"] == id.as_str()) { Err("tasks left".to_string()) } else { Ok(()) }
    })
    .map_err(anyhow::Error::msg)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The `key:` line of a `/proc` file in kB, as MB.
fn proc_mb(path: &str, key: &str) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kb: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn rss_mb(pid: i32) -> f64 {
    proc_mb(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// The proportional set size (shared pages split among their users) of
/// the shims of `host`'s containers (processes running `swarm-agent shim`
/// with a bundle in the host's state directory).
fn shim_pss_mb(host: &Host) -> f64 {
    let want = host.state_dir().display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0.0 };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("\0shim\0") && c.contains(&want)
            })
        })
        .map(|pid| proc_mb(&format!("/proc/{pid}/smaps_rollup"), "Pss:"))
        .sum()
}

fn cluster() -> anyhow::Result<Testbed> {
    let tb = Testbed::up(3)?;
    agent(tb.host(0), &["init", "--dispatcher-heartbeat", "500ms"])?;
    let wt = token(tb.host(0), "worker");
    for h in &tb.hosts()[1..] {
        agent(h, &["join", "--token", &wt, "198.18.0.1:2377"])?;
    }
    let tar = busybox_rootfs(&target_dir()).map_err(anyhow::Error::msg)?;
    for h in tb.hosts() {
        docker(h, &["import", "--change", "CMD [\"sh\"]", tar.to_str().context("path")?, "busybox:latest"])?;
    }
    Ok(tb)
}

/// One HTTP request over a new connection; true when it got a 200.
fn request(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else { return false };
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    if c.write_all(b"GET /cgi-bin/who HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.") && out.windows(5).any(|w| w == b" 200 ")
}

/// A rolling update of a 20-task web service published on `port`, with a
/// client on node3 looping over new connections to node1's port:
/// (time until the update completed, failed requests, requests).
fn rolling(tb: &Testbed, name: &str, port: u16, update: &Value) -> anyhow::Result<(Duration, usize, usize)> {
    let m = tb.host(0);
    let mut s = spec(name, 20, None);
    s["TaskTemplate"]["ContainerSpec"]["Args"] = json!(["sh", "-c", swarm_tests::services::WHO]);
    s["TaskTemplate"]["ContainerSpec"]["StopGracePeriod"] = json!(1_000_000_000i64);
    s["EndpointSpec"] = json!({"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port}]});
    s["UpdateConfig"] = update.clone();
    post(m, "/services/create", &s)?;
    wait_running(m, name, 20, Duration::from_secs(300))?;
    let addr: std::net::SocketAddr = format!("198.18.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !tb.host(2).in_netns(|| request(addr))? {
        if Instant::now() > deadline {
            bail!("{name}: the published port does not answer");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (elapsed, failed, total) = std::thread::scope(|sc| -> anyhow::Result<(Duration, usize, usize)> {
        let client = sc.spawn(|| {
            tb.host(2).in_netns(|| {
                let (mut failed, mut total) = (0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    total += 1;
                    if !request(addr) {
                        failed += 1;
                    }
                }
                (failed, total)
            })
        });
        let svc = get(m, &format!("/services/{name}"))?;
        let version = svc["Version"]["Index"].as_u64().unwrap_or(0);
        let mut new = svc["Spec"].clone();
        new["TaskTemplate"]["ContainerSpec"]["Env"] = json!(["V=2"]);
        let t = Instant::now();
        post(m, &format!("/services/{name}/update?version={version}"), &new)?;
        loop {
            let st = get(m, &format!("/services/{name}"))?;
            if st["UpdateStatus"]["State"] == "completed" {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("{name}: the update did not complete within 600 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let elapsed = t.elapsed();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (failed, total) = client.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        Ok((elapsed, failed, total))
    })?;
    remove(m, name)?;
    Ok((elapsed, failed, total))
}

/// Kills the process of one running task; returns the time until a new
/// task runs in its place.
fn heal(tb: &Testbed, service: &str, n: usize) -> anyhow::Result<Duration> {
    let m = tb.host(0);
    let before = wait_running(m, service, n, Duration::from_secs(60))?;
    let victim = &before[0];
    let pid = victim["Status"]["ContainerStatus"]["PID"].as_i64().context("no PID")?;
    let old_ids: Vec<String> = before.iter().filter_map(|t| t["ID"].as_str().map(str::to_owned)).collect();
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    loop {
        let r = running(m, service)?;
        if r.len() == n && r.iter().any(|x| !old_ids.iter().any(|o| x["ID"] == o.as_str())) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("no replacement within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let bin = crate::demo::build_agent()?;
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let tb = cluster()?;
    let m = tb.host(0);
    let idle = rss_mb(daemon_pid(tb.host(1)));
    for (n, docker_fig, target) in
        [(1u64, "6.0-6.2 s for 2 (5 s monitor)", ""), (10, "", ""), (100, "22.6 s", "< 5 s")]
    {
        let mut v = Vec::new();
        for run in 0..args.runs {
            let name = format!("c{n}r{run}");
            let t = Instant::now();
            post(m, "/services/create", &spec(&name, n, None))?;
            wait_running(m, &name, usize::try_from(n)?, Duration::from_secs(300))?;
            v.push(t.elapsed());
            remove(m, &name)?;
        }
        rows.push((format!("create → {n} running"), fmt(median(v)), docker_fig.into(), target.into()));
    }
    // RSS: 100 tasks on one worker.
    let worker = get(tb.host(1), "/info")?["Swarm"]["NodeID"].as_str().context("worker node ID")?.to_owned();
    let mut rss_spec = spec("rss", 100, None);
    rss_spec["TaskTemplate"]["Placement"] = json!({"Constraints": [format!("node.id=={worker}")]});
    post(m, "/services/create", &rss_spec)?;
    wait_running(m, "rss", 100, Duration::from_secs(300))?;
    let with = rss_mb(daemon_pid(tb.host(1)));
    let shims = shim_pss_mb(tb.host(1));
    remove(m, "rss")?;
    rows.push((
        "worker agent RSS, idle → 100 tasks".into(),
        format!("{idle:.0} MB → {with:.0} MB (shims: {:.2} MB PSS each)", shims / 100.0),
        "dockerd+containerd 150-178 MB".into(),
        "< 50 MB idle".into(),
    ));
    let mut v = Vec::new();
    for run in 0..args.runs {
        let name = format!("s{run}");
        post(m, "/services/create", &spec(&name, 2, None))?;
        wait_running(m, &name, 2, Duration::from_secs(60))?;
        let svc = get(m, &format!("/services/{name}"))?;
        let version = svc["Version"]["Index"].as_u64().unwrap_or(0);
        let t = Instant::now();
        post(m, &format!("/services/{name}/update?version={version}"), &spec(&name, 20, None))?;
        wait_running(m, &name, 20, Duration::from_secs(120))?;
        v.push(t.elapsed());
        remove(m, &name)?;
    }
    rows.push(("scale 2 → 20".into(), fmt(median(v)), "9.2-10.2 s".into(), "< 2 s".into()));
    for (delay, label, docker_fig, target) in [
        (Some(0), "heal, restart delay 0", "1.0-6.2 s", "< 0.5 s"),
        (None, "heal, default delay (5 s)", "5 s + start", ""),
    ] {
        let name = if delay.is_some() { "heal0" } else { "heal5" };
        post(m, "/services/create", &spec(name, 3, delay))?;
        let mut v = Vec::new();
        for _ in 0..args.runs {
            v.push(heal(&tb, name, 3)?);
        }
        remove(m, name)?;
        rows.push((label.into(), fmt(median(v)), docker_fig.into(), target.into()));
    }
    // Node Down: cut a worker; time until its tasks run elsewhere.
    post(m, "/services/create", &spec("down", 6, None))?;
    let before = wait_running(m, "down", 6, Duration::from_secs(60))?;
    // A worker's node (the manager must stay to move the tasks).
    let manager_node = get(m, "/info")?["Swarm"]["NodeID"].as_str().context("manager node ID")?.to_owned();
    let victim_node = before
        .iter()
        .find(|t| t["NodeID"] != manager_node.as_str())
        .context("no task on a worker")?["NodeID"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let host = tb
        .hosts()
        .iter()
        .find(|h| get(h, "/info").is_ok_and(|i| i["Swarm"]["NodeID"] == victim_node.as_str()))
        .context("the victim's host")?
        .clone();
    let t = Instant::now();
    tb.cut(&host)?;
    let mut down_at = None;
    loop {
        if down_at.is_none() {
            let n = get(m, &format!("/nodes/{victim_node}"))?;
            if n["Status"]["State"] == "down" {
                down_at = Some(t.elapsed());
            }
        }
        let r = running(m, "down")?;
        if r.len() == 6 && r.iter().all(|x| x["NodeID"] != victim_node.as_str()) {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("tasks not moved within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let moved = t.elapsed();
    tb.restore(&host)?;
    let down = down_at.unwrap_or(moved);
    rows.push((
        "node cut → tasks elsewhere (heartbeat 500 ms)".into(),
        format!("{} (Down after {}, +{})", fmt(moved), fmt(down), fmt(moved.saturating_sub(down))),
        String::new(),
        "< Down detection + 1 s".into(),
    ));
    for (i, (label, update, target)) in [
        (
            "rolling update of 20, parallelism 2, start-first",
            json!({"Parallelism": 2, "Delay": 0, "Order": "start-first", "Monitor": 1_000_000_000i64}),
            "0 failed requests",
        ),
        (
            "rolling update of 20, parallelism 2, stop-first",
            json!({"Parallelism": 2, "Delay": 0, "Order": "stop-first", "Monitor": 1_000_000_000i64}),
            "",
        ),
        ("rolling update of 20, Docker's defaults (parallelism 1, stop-first, monitor 5 s)", json!({}), ""),
    ]
    .into_iter()
    .enumerate()
    {
        let port = 7100 + u16::try_from(i)?;
        let (t, failed, total) = rolling(&tb, &format!("roll{i}"), port, &update)?;
        rows.push((
            label.into(),
            format!("{} to complete, {failed} of {total} requests failed", fmt(t)),
            String::new(),
            target.into(),
        ));
    }
    let out = std::process::Command::new(&bin).args(["debug", "bench-scheduler", "--runs", "5"]).output()?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ms = line.split("median ").nth(1).and_then(|r| r.split(' ').next()).unwrap_or("?");
    rows.push((
        "schedule 10 000 tasks on 1 000 nodes".into(),
        format!("{ms} ms"),
        String::new(),
        "< 1 s".into(),
    ));
    println!();
    println!("| measurement | swarm-agent (median of {}) | Docker 20.10 | target |", args.runs);
    println!("|---|---|---|---|");
    for (what, ours, theirs, target) in rows {
        println!("| {what} | {ours} | {theirs} | {target} |");
    }
    Ok(())
}
