//! `cargo xtask bench store`: what a write costs through the real Raft path
//! (three managers on the testbed, release build) as the store grows, and
//! how long a snapshot of a 50 MB state takes to build and install.
//!
//! - The store is filled with networks (explicit /29 subnets, created 32 at
//!   a time through the Docker API) up to each size.
//! - At each size: sequential `node update` writes (label changes through
//!   the leader's API, version guard and all): p50/p99; then concurrent
//!   network creates: writes per second.
//! - Snapshots: a 50 MB state (1 MiB networks) with snapshots every 10
//!   entries; a manager joins and installs the snapshot. Build and install
//!   times come from the managers' logs.

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use swarm_tests::{
    poll,
    swarm::{agent, node_ls, token},
    testbed::{Host, Testbed},
};

#[derive(clap::Args)]
pub struct Args {
    /// Store sizes (networks) to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 10_000, 100_000])]
    sizes: Vec<usize>,
    /// Sequential writes timed at each size.
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Concurrent writers for filling and for writes/s.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Skip the 50 MB snapshot measurement.
    #[arg(long)]
    no_snapshot: bool,
}

/// One HTTP/1.1 request on the agent's API socket; (status, body).
pub(crate) fn http(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text_end = out.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP header end")?;
    let head = String::from_utf8_lossy(&out[..text_end]).into_owned();
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no HTTP status")?;
    let mut rest = out[text_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        rest = dechunk(&rest);
    }
    Ok((status, rest))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let Ok(n) = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16) else { break };
        if n == 0 || b.len() < i + 2 + n {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[(i + 4 + n).min(b.len())..];
    }
    out
}

pub(crate) fn sock(h: &Host) -> PathBuf {
    h.state_dir().join("docker.sock")
}

/// The `i`th /29 from 10.1.0.0 (ingress and auto-allocated networks live in 10.0.x).
fn subnet(i: usize) -> String {
    let base = u32::from(Ipv4Addr::new(10, 1, 0, 0)) + 8 * u32::try_from(i).unwrap_or(u32::MAX / 16);
    format!("{}/29", Ipv4Addr::from(base))
}

fn create_network(h: &Host, i: usize, labels: &serde_json::Value) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "Name": format!("bench-{i}"),
        "Driver": "overlay",
        "IPAM": { "Config": [ { "Subnet": subnet(i) } ] },
        "Labels": labels,
    });
    let (status, out) = http(&sock(h), "POST", "/networks/create", Some(&serde_json::to_vec(&body)?))?;
    if status != 201 {
        bail!("network create {i}: {status} {}", String::from_utf8_lossy(&out));
    }
    Ok(())
}

/// Creates networks `from..to`, `concurrency` at a time; returns the time taken.
fn create_many(
    h: &Host,
    from: usize,
    to: usize,
    concurrency: usize,
    labels: &serde_json::Value,
) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(from);
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= to {
                            return Ok(());
                        }
                        create_network(h, i, labels)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

/// One `node update` (a label) of `node`, timed without the read of its version.
fn node_update(h: &Host, node: &str, n: usize) -> anyhow::Result<Duration> {
    let (status, out) = http(&sock(h), "GET", &format!("/nodes/{node}"), None)?;
    if status != 200 {
        bail!("node inspect: {status} {}", String::from_utf8_lossy(&out));
    }
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    let version = v["Version"]["Index"].as_u64().context("node version")?;
    let mut spec = v["Spec"].clone();
    spec["Labels"] = serde_json::json!({ "bench": n.to_string() });
    let body = serde_json::to_vec(&spec)?;
    let start = Instant::now();
    let (status, out) =
        http(&sock(h), "POST", &format!("/nodes/{node}/update?version={version}"), Some(&body))?;
    let took = start.elapsed();
    if status != 200 {
        bail!("node update: {status} {}", String::from_utf8_lossy(&out));
    }
    Ok(took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}ms", d.as_secs_f64() * 1000.0)
}

fn three_managers(extra_init: &[&str]) -> anyhow::Result<Testbed> {
    let tb = Testbed::up(4)?;
    let mut init = vec!["init"];
    init.extend_from_slice(extra_init);
    agent(tb.host(0), &init)?;
    let mt = token(tb.host(0), "manager");
    for h in &tb.hosts()[1..3] {
        agent(h, &["join", "--token", &mt, "198.18.0.1:2377"])?;
    }
    poll::until("three reachable managers", Duration::from_secs(30), || {
        let rows = node_ls(tb.host(0)).map_err(|e| e.to_string())?;
        let n = rows.iter().filter(|r| r.manager_status == "Reachable").count();
        if n == 2 { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(tb)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.sizes.is_empty() || args.writes == 0 || args.concurrency == 0 {
        bail!("--sizes, --writes and --concurrency must not be empty or zero");
    }
    crate::demo::build_agent()?;
    let tb = three_managers(&[])?;
    let leader = tb.host(0);
    let (_, info) = http(&sock(leader), "GET", "/info", None)?;
    let info: serde_json::Value = serde_json::from_slice(&info)?;
    let node_id = info["Swarm"]["NodeID"].as_str().context("no node ID in /info")?.to_owned();
    let small = serde_json::json!({ "app": "bench" });
    let mut rows = Vec::new();
    let mut have = 0usize;
    let mut p50s = Vec::new();
    for &size in &args.sizes {
        if size > have {
            crate::step(&format!("filling the store to {size} networks"));
            create_many(leader, have, size, args.concurrency, &small)?;
            have = size;
        }
        crate::step(&format!("{} sequential node updates at {size} objects", args.writes));
        let mut lat: Vec<Duration> =
            (0..args.writes).map(|n| node_update(leader, &node_id, n)).collect::<anyhow::Result<_>>()?;
        lat.sort();
        let burst = 2000usize;
        crate::step(&format!("{burst} network creates, {} at a time, at {size} objects", args.concurrency));
        let took = create_many(leader, have, have + burst, args.concurrency, &small)?;
        have += burst;
        let rate = burst as f64 / took.as_secs_f64();
        p50s.push(percentile(&lat, 0.5));
        rows.push(vec![
            size.to_string(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            format!("{rate:.0}"),
        ]);
    }
    let digest = agent(leader, &["debug", "store"])?;
    drop(tb);

    let snapshot = if args.no_snapshot { None } else { Some(snapshot_50mb()?) };

    println!();
    println!(
        "store benchmark: 3 managers (testbed), release build, {} sequential writes per size",
        args.writes
    );
    println!(
        "write = `node update` through the leader's API; writes/s = network creates, {} at a time",
        args.concurrency
    );
    println!();
    let table = crate::bench::render(&["OBJECTS", "WRITE P50", "WRITE P99", "WRITES/S"], &rows);
    print!("{table}");
    if let (Some(first), Some(last)) = (p50s.first(), p50s.last()) {
        println!();
        println!(
            "p50 at {} objects / p50 at {}: {:.2} (target <= 1.2)",
            args.sizes.last().unwrap_or(&0),
            args.sizes.first().unwrap_or(&0),
            last.as_secs_f64() / first.as_secs_f64()
        );
    }
    println!("final store: {}", digest.trim());
    if let Some((bytes, built, installed, join)) = snapshot {
        println!();
        println!(
            "snapshot of {:.1} MB: built in {built}, installed by a joining manager in {installed}; join to identical copy {join}",
            bytes as f64 / 1e6
        );
    }
    Ok(())
}

/// The largest "snapshot built"/"snapshot installed" log line's (bytes, ms).
fn snapshot_log(h: &Host, what: &str) -> Option<(u64, u64)> {
    let log = std::fs::read_to_string(h.state_dir().join("swarm-agent.log")).ok()?;
    let field = |l: &str, k: &str| -> Option<u64> {
        let at = l.find(&format!("{k}="))? + k.len() + 1;
        l[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| Some((field(l, "bytes")?, field(l, "ms")?)))
        .max_by_key(|(b, _)| *b)
}

fn snapshot_50mb() -> anyhow::Result<(u64, String, String, String)> {
    crate::step("snapshot: 50 MB of state, snapshots every 10 entries, then a manager joins");
    let tb = three_managers(&["--snapshot-interval", "10"])?;
    let leader = tb.host(0);
    let labels: serde_json::Map<String, serde_json::Value> =
        (0..10).map(|i| (format!("k{i}"), serde_json::Value::String("x".repeat(100 * 1024)))).collect();
    let labels = serde_json::Value::Object(labels);
    for i in 0..50 {
        create_network(leader, i, &labels)?;
    }
    let joiner = tb.host(3);
    let start = Instant::now();
    agent(joiner, &["join", "--token", &token(leader, "manager"), "198.18.0.1:2377"])?;
    let want = agent(leader, &["debug", "store"])?;
    poll::until("the new manager's copy", Duration::from_secs(120), || {
        let got = agent(joiner, &["debug", "store"]).map_err(|e| e.to_string())?;
        if got == want { Ok(()) } else { Err(got) }
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let join = start.elapsed();
    let built = snapshot_log(leader, "snapshot built").context("no snapshot built on the leader")?;
    let installed =
        snapshot_log(joiner, "snapshot installed").context("no snapshot installed on the new manager")?;
    Ok((
        installed.0,
        format!("{}ms", built.1),
        format!("{}ms", installed.1),
        format!("{:.2}s", join.as_secs_f64()),
    ))
}
