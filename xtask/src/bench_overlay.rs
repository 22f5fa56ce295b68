//! `cargo xtask bench overlay`: throughput and request/response latency
//! between two testbed hosts through
//!
//! - (a) the underlay, host namespace to host namespace;
//! - (b) a kernel vxlan device and a Linux bridge, wired as Docker's overlay
//!   driver wires them (per network a namespace with bridge `br0` holding the
//!   gateway and `vxlan0` enslaved to it; the container's veth on the bridge;
//!   static FDB entries to the peer VTEP; MTU 1450);
//! - (c) our eBPF datapath (a real swarm: `network create --attachable`, then
//!   `network connect --netns` on both hosts).
//!
//! All three live on the same testbed at once and every round measures them
//! in turn, so machine noise (2 shared cores) hits them alike; each cell is
//! the median over the rounds. (b) uses UDP port 4790 for its VXLAN so that
//! our programs on the underlay pass it through untouched (they only act on
//! the data path port, 4789); the port number does not change the kernel's
//! work.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use swarm_tests::{
    poll,
    swarm::{agent, token},
    testbed::{Host, Lifetime, Testbed},
};

const TESTBED: &str = "bench-overlay";
const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 5301;
/// Round trips per latency sample (after a warm-up of a tenth of that).
const RR_COUNT: usize = 20_000;
const REF_VNI: u32 = 4200;
const REF_PORT: u16 = 4790;
const REF_MTU: u32 = 1450;

#[derive(clap::Args)]
pub struct Args {
    /// Measurement rounds (each cell is the median).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Length of each iperf3 run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// Where one side of a measurement runs: a host and a namespace on it.
struct Place<'a> {
    host: &'a Host,
    netns: PathBuf,
}

struct Pair<'a> {
    name: &'static str,
    client: Place<'a>,
    server: Place<'a>,
    server_ip: Ipv4Addr,
}

#[derive(Default)]
struct Results {
    tcp1: Vec<f64>,
    tcp4: Vec<f64>,
    rr_p50: Vec<f64>,
    rr_p99: Vec<f64>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::demo::build_agent()?;
    crate::step("testbed with 2 hosts");
    let tb = Testbed::create(TESTBED, 2, Lifetime::Process)?;
    let (h1, h2) = (tb.host(0), tb.host(1));

    crate::step("(b) kernel vxlan + bridge, wired like Docker's overlay driver");
    let ref_ns = [reference_overlay(h1, h2, 2)?, reference_overlay(h2, h1, 3)?];

    crate::step("(c) swarm with an attachable overlay and an endpoint on each host");
    agent(h1, &["init"])?;
    agent(h2, &["join", "--token", &token(h1, "worker"), "198.18.0.1:2377"])?;
    agent(h1, &["network", "create", "--driver", "overlay", "--attachable", "bench"])?;
    let mut ours = Vec::new();
    for h in [h1, h2] {
        let ns = h.add_netns("ep")?;
        agent(h, &["network", "connect", "bench", "--netns", &ns.display().to_string()])?;
        ours.push(ns);
    }
    let ours_ip = endpoint_ip(h2, &ours[1])?;

    let pairs = [
        Pair {
            name: "(a) underlay",
            client: Place { host: h1, netns: h1.netns_path() },
            server: Place { host: h2, netns: h2.netns_path() },
            server_ip: h2.underlay_ip,
        },
        Pair {
            name: "(b) vxlan+bridge",
            client: Place { host: h1, netns: ref_ns[0].clone() },
            server: Place { host: h2, netns: ref_ns[1].clone() },
            server_ip: Ipv4Addr::new(10, 9, 0, 3),
        },
        Pair {
            name: "(c) swarm-rs eBPF",
            client: Place { host: h1, netns: ours[0].clone() },
            server: Place { host: h2, netns: ours[1].clone() },
            server_ip: ours_ip,
        },
    ];
    for p in &pairs {
        poll::until(&format!("{} to connect", p.name), Duration::from_secs(20), || {
            p.client.host.run_in(&p.client.netns, "ping", ["-c1", "-W1", &p.server_ip.to_string()])
        })
        .map_err(anyhow::Error::msg)?;
    }

    let mut results: Vec<Results> = pairs.iter().map(|_| Results::default()).collect();
    for round in 1..=args.runs {
        crate::step(&format!("round {round}/{}", args.runs));
        for (p, r) in pairs.iter().zip(&mut results) {
            r.tcp1.push(iperf(p, 1, args.duration)?);
            r.tcp4.push(iperf(p, 4, args.duration)?);
            let (p50, p99) = request_response(p)?;
            r.rr_p50.push(p50);
            r.rr_p99.push(p99);
        }
    }
    crate::step("endpoint propagation");
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        let (a, r) = propagation(h1, h2, i)?;
        added.push(a);
        removed.push(r);
    }
    let [a, b, c] = [&results[0], &results[1], &results[2]];
    let gbit = |v: &[f64]| format!("{:.2} Gbit/s", median(v) / 1e9);
    let us = |v: &[f64]| format!("{:.1} us", median(v));
    let ratio = |x: &[f64], y: &[f64]| format!("{:.2}", median(x) / median(y));
    let rows = vec![
        vec![
            "TCP, 1 stream".to_owned(),
            gbit(&a.tcp1),
            gbit(&b.tcp1),
            gbit(&c.tcp1),
            ratio(&c.tcp1, &a.tcp1),
            ratio(&c.tcp1, &b.tcp1),
        ],
        vec![
            "TCP, 4 streams".to_owned(),
            gbit(&a.tcp4),
            gbit(&b.tcp4),
            gbit(&c.tcp4),
            ratio(&c.tcp4, &a.tcp4),
            ratio(&c.tcp4, &b.tcp4),
        ],
        vec![
            "TCP 1-byte request/response, p50".to_owned(),
            us(&a.rr_p50),
            us(&b.rr_p50),
            us(&c.rr_p50),
            ratio(&c.rr_p50, &a.rr_p50),
            ratio(&c.rr_p50, &b.rr_p50),
        ],
        vec![
            "TCP 1-byte request/response, p99".to_owned(),
            us(&a.rr_p99),
            us(&b.rr_p99),
            us(&c.rr_p99),
            ratio(&c.rr_p99, &a.rr_p99),
            ratio(&c.rr_p99, &b.rr_p99),
        ],
    ];
    println!();
    println!(
        "overlay benchmark: 2 testbed hosts, {} rounds of iperf3 -t {} and {RR_COUNT} round trips; median",
        args.runs,
        humantime::format_duration(args.duration)
    );
    println!();
    print!(
        "{}",
        crate::bench::render(
            &["METRIC", "(A) UNDERLAY", "(B) VXLAN+BRIDGE", "(C) EBPF", "C/A", "C/B"],
            &rows
        )
    );
    println!();
    let ms = |v: &[f64]| format!("{:.0} ms", median(v) * 1e3);
    let max = |v: &[f64]| format!("{:.0} ms", v.iter().copied().fold(0.0, f64::max) * 1e3);
    println!(
        "endpoint propagation, connect/disconnect on node2 until node1's datapath has/lacks it: added {} (max {}), removed {} (max {})",
        ms(&added),
        max(&added),
        ms(&removed),
        max(&removed)
    );
    println!("targets: throughput C/A >= 0.95 and C/B >= 1.15; latency C below B; propagation < 1 s");
    drop(tb);
    Ok(())
}

/// Seconds from `network connect` returning on `remote` until `local`'s
/// datapath table has the endpoint, and from `network disconnect` until it
/// is gone (polled through `network inspect --verbose`).
fn propagation(local: &Host, remote: &Host, i: usize) -> anyhow::Result<(f64, f64)> {
    let ns = remote.add_netns(&format!("prop{i}"))?;
    let path = ns.display().to_string();
    let in_table = |ip: Ipv4Addr| -> Result<bool, String> {
        Ok(swarm_tests::overlay::datapath_endpoints(local, "bench")?.iter().any(|(x, _)| *x == ip))
    };
    agent(remote, &["network", "connect", "bench", "--netns", &path])?;
    let ip = endpoint_ip(remote, &ns)?;
    // Tight polling (each check is one CLI call, a few ms) for resolution.
    let wait = |want: bool| -> anyhow::Result<f64> {
        let t = Instant::now();
        while in_table(ip).map_err(anyhow::Error::msg)? != want {
            if t.elapsed() > Duration::from_secs(30) {
                bail!(
                    "the endpoint's {} did not reach node1 in 30 s",
                    if want { "arrival" } else { "removal" }
                );
            }
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let added = wait(true)?;
    agent(remote, &["network", "disconnect", "bench", "--netns", &path])?;
    let removed = wait(false)?;
    remote.remove_netns(&ns)?;
    Ok((added, removed))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Docker's overlay wiring on `host` for peer `peer`: an overlay namespace
/// with `br0` (gateway 10.9.0.1) and `vxlan0` (made in the host namespace so
/// its socket lives there, then moved in), and a container namespace whose
/// `eth0` is a veth on `br0` with address 10.9.0.`last`. Returns the
/// container namespace.
fn reference_overlay(host: &Host, peer: &Host, last: u8) -> anyhow::Result<PathBuf> {
    let ov = host.add_netns("ref-ov")?;
    let ct = host.add_netns("ref-ct")?;
    let (ovs, cts) = (ov.display().to_string(), ct.display().to_string());
    let peer_last = if last == 2 { 3 } else { 2 };
    let mac = |n: u8| format!("02:42:0a:09:00:{n:02x}");
    let local = host.underlay_ip.to_string();
    let vni = REF_VNI.to_string();
    let port = REF_PORT.to_string();
    let mtu = REF_MTU.to_string();
    #[rustfmt::skip]
    let host_steps: &[&[&str]] = &[
        &["link", "add", "vxlan0", "type", "vxlan", "id", &vni, "dstport", &port, "local", &local,
          "proxy", "l2miss", "l3miss"],
        &["link", "set", "vxlan0", "netns", &ovs],
    ];
    for s in host_steps {
        host.run("ip", *s)?;
    }
    let gw = "10.9.0.1/24".to_owned();
    let peer_mac = mac(peer_last);
    let peer_vtep = peer.underlay_ip.to_string();
    #[rustfmt::skip]
    let ov_steps: &[&[&str]] = &[
        &["ip", "link", "add", "br0", "type", "bridge"],
        &["ip", "addr", "add", &gw, "dev", "br0"],
        &["ip", "link", "set", "vxlan0", "mtu", &mtu, "master", "br0", "up"],
        &["ip", "link", "add", "veth0", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "netns", &cts],
        &["ip", "link", "set", "veth0", "master", "br0", "up"],
        &["ip", "link", "set", "br0", "up"],
        &["bridge", "fdb", "add", &peer_mac, "dev", "vxlan0", "dst", &peer_vtep, "self", "permanent"],
    ];
    for s in ov_steps {
        host.run_in(&ov, s[0], &s[1..])?;
    }
    let addr = format!("10.9.0.{last}/24");
    let peer_ip = format!("10.9.0.{peer_last}");
    let my_mac = mac(last);
    #[rustfmt::skip]
    let ct_steps: &[&[&str]] = &[
        &["link", "set", "eth0", "address", &my_mac, "mtu", &mtu, "up"],
        &["addr", "add", &addr, "dev", "eth0"],
        &["route", "add", "default", "via", "10.9.0.1"],
        &["neigh", "add", &peer_ip, "lladdr", &peer_mac, "dev", "eth0", "nud", "permanent"],
    ];
    for s in ct_steps {
        host.run_in(&ct, "ip", *s)?;
    }
    Ok(ct)
}

/// The IPv4 address of `eth0` in `netns`.
fn endpoint_ip(host: &Host, netns: &Path) -> anyhow::Result<Ipv4Addr> {
    let out = host.run_in(netns, "ip", ["-4", "-o", "addr", "show", "dev", "eth0"])?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("no IPv4 address on eth0 in {}: {out:?}", netns.display()))
}

/// iperf3 TCP throughput (bits/s received) with `streams` parallel streams.
fn iperf(p: &Pair<'_>, streams: usize, duration: Duration) -> anyhow::Result<f64> {
    let mut server = p.server.host.command_in(&p.server.netns, "iperf3")?;
    server.args(["-s", "-1", "-p", &IPERF_PORT.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    let mut server = server.spawn().context("starting iperf3 -s")?;
    let secs = duration.as_secs().max(1).to_string();
    let ip = p.server_ip.to_string();
    let port = IPERF_PORT.to_string();
    let streams = streams.to_string();
    // The server needs a moment to listen; the client fails fast until it does.
    let bps = poll::until("iperf3 to run", Duration::from_secs(10), || {
        let out = p
            .client
            .host
            .run_in(&p.client.netns, "iperf3", ["-c", &ip, "-p", &port, "-t", &secs, "-P", &streams, "-J"])
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| format!("parsing iperf3 -J: {e}"))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| format!("iperf3 for {} reported no throughput: {}", p.name, v["error"]))
    });
    let _ = server.kill();
    let _ = server.wait();
    bps.map_err(anyhow::Error::msg)
}

/// One-byte request/response over TCP (`TCP_NODELAY`): p50 and p99 round
/// trip in microseconds.
fn request_response(p: &Pair<'_>) -> anyhow::Result<(f64, f64)> {
    let server_ns = std::fs::File::open(&p.server.netns)?;
    let client_ns = std::fs::File::open(&p.client.netns)?;
    let listener = in_netns(&server_ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, RR_PORT)))??;
    std::thread::scope(|s| {
        let server = s.spawn(move || -> std::io::Result<()> {
            // Give up when no client comes (the client side reports why).
            listener.set_nonblocking(true)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_nodelay(true)?;
            let mut b = [0u8; 1];
            while conn.read(&mut b)? == 1 {
                conn.write_all(&b)?;
            }
            Ok(())
        });
        let client = in_netns(&client_ns, || -> std::io::Result<Vec<Duration>> {
            let mut conn = TcpStream::connect_timeout(
                &SocketAddr::from((p.server_ip, RR_PORT)),
                Duration::from_secs(5),
            )?;
            conn.set_nodelay(true)?;
            let mut b = [7u8; 1];
            let mut samples = Vec::with_capacity(RR_COUNT);
            for i in 0..RR_COUNT + RR_COUNT / 10 {
                let t = Instant::now();
                conn.write_all(&b)?;
                conn.read_exact(&mut b)?;
                if i >= RR_COUNT / 10 {
                    samples.push(t.elapsed());
                }
            }
            Ok(samples)
        });
        let served = server.join().map_err(|_| anyhow::anyhow!("request/response server panicked"))?;
        let mut samples = client??;
        served?;
        samples.sort();
        let us = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
        Ok((us(0.5), us(0.99)))
    })
}

/// Runs `f` on a thread inside network namespace `ns` (sockets it opens stay there).
fn in_netns<R: Send>(ns: &std::fs::File, f: impl FnOnce() -> R + Send) -> anyhow::Result<R> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("entering a namespace")?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    })
}
