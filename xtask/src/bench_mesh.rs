//! `cargo xtask bench mesh`: the routing mesh against the alternatives, on
//! one testbed in one run: node1 (manager, the node the client connects
//! to), node2 (worker) and an outside client host. The same static
//! `tcp-bench` server answers in each case:
//!
//! - (a) the ceiling: a server on the backend's node itself, reached
//!   directly on the node's address (no translation, no overlay);
//! - (a') for the backend on node2: the same server on an address of
//!   node2's that node1 routes both ways (plain forwarding): the hop through
//!   node1 that every mesh with a remote backend makes, without the mesh;
//! - (b) kube-proxy's iptables mode for a NodePort service, built by the
//!   bench on node1 and removed after: `KUBE-SERVICES` (cluster IPs, then
//!   `KUBE-NODEPORTS`) → `KUBE-EXT-…` → `KUBE-SVC-…` → `KUBE-SEP-…` DNAT to
//!   the task's address, `MASQUERADE` for the return path (kube-proxy's
//!   `externalTrafficPolicy: Cluster`), forwarded into the overlay through
//!   node1's endpoint on ingress;
//! - (c) our mesh: the task's published port on node1's address.
//!
//! For a backend task on node1 and on node2: new connections per second
//! (connect, one request, close), requests per second and p50/p99 latency
//! on one kept-alive connection, and bulk throughput. Then (b) and (c)
//! again with 100 and 1 000 services defined (the measured one last, as in
//! the worst case of kube-proxy's linear chain), and east-west: a task
//! reaching a task on the other node through the service VIP vs its
//! address. Each cell is the median of `--runs`.

use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use swarm_tests::{
    image::{busybox_rootfs, static_tool},
    poll,
    swarm::{agent, docker, token},
    testbed::{Host, Testbed},
};

use crate::{bench::render, bench_store::http, bench_store::sock, target_dir};

#[derive(clap::Args)]
pub struct Args {
    /// Measurement rounds (each cell is the median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
}

const LONG: Duration = Duration::from_secs(60);
const SERVER_PORT: u16 = 9000;

/// One measured path.
#[derive(Default, Clone)]
struct Cells {
    conns: Vec<f64>,
    reqs: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    bits: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn field(out: &str, key: &str) -> anyhow::Result<f64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .with_context(|| format!("no {key} in {out:?}"))?
        .parse()
        .with_context(|| format!("bad {key} in {out:?}"))
}

/// Runs a `tcp-bench` client mode against `addr` where `run` runs it.
fn client(
    run: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    mode: &str,
    addr: &str,
    secs: f64,
) -> anyhow::Result<String> {
    run(&[mode, addr, &secs.to_string()])
}

fn measure(
    cells: &mut Cells,
    run: &dyn Fn(&[&str]) -> anyhow::Result<String>,
    addr: &str,
    secs: f64,
) -> anyhow::Result<()> {
    cells.conns.push(field(&client(run, "connect", addr, secs)?, "conns_per_sec")?);
    let rr = client(run, "rr", addr, secs)?;
    cells.reqs.push(field(&rr, "reqs_per_sec")?);
    cells.p50.push(field(&rr, "p50_us")?);
    cells.p99.push(field(&rr, "p99_us")?);
    cells.bits.push(field(&client(run, "stream", addr, secs)?, "bits_per_sec")?);
    Ok(())
}

fn row(name: &str, backend: &str, c: &Cells) -> Vec<String> {
    vec![
        name.to_owned(),
        backend.to_owned(),
        format!("{:.0}", median(&c.conns)),
        format!("{:.0}", median(&c.reqs)),
        format!("{:.0}", median(&c.p50)),
        format!("{:.0}", median(&c.p99)),
        format!("{:.2}", median(&c.bits) / 1e9),
    ]
}

fn wait_replicas(m: &Host, service: &str) -> anyhow::Result<()> {
    poll::until(&format!("{service} to run"), LONG, || {
        let out = docker(
            m,
            &["service", "ls", "--filter", &format!("name={service}"), "--format", "{{.Replicas}}"],
        )
        .map_err(|e| e.to_string())?;
        if out.trim() == "1/1" { Ok(()) } else { Err(out) }
    })
    .map_err(anyhow::Error::msg)
}

/// The running task container of `service` and the host it is on.
fn task(tb: &Testbed, service: &str) -> anyhow::Result<(usize, String)> {
    for (i, h) in tb.hosts().iter().enumerate() {
        let ps = docker(h, &["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]).unwrap_or_default();
        for l in ps.lines() {
            if let Some((id, name)) = l.split_once(' ')
                && name.starts_with(&format!("{service}."))
            {
                return Ok((i, id.to_owned()));
            }
        }
    }
    bail!("no running task of {service}")
}

fn task_ip(tb: &Testbed, service: &str, prefix: &str) -> anyhow::Result<String> {
    let (h, id) = task(tb, service)?;
    let out = docker(tb.host(h), &["exec", &id, "ip", "-4", "-o", "addr"])?;
    out.split_whitespace()
        .filter_map(|w| w.split('/').next())
        .find(|a| a.starts_with(prefix))
        .map(str::to_owned)
        .with_context(|| format!("no {prefix} address of {service} in {out}"))
}

/// kube-proxy's iptables-mode rules for `services` NodePort services:
/// each has a cluster IP (10.96.0.0/16, never reached: only walked past) and
/// a node port (20000.., the measured one `port`, to `backend`, last in
/// both chains, kube-proxy's worst case). As kube-proxy writes them, a
/// packet to a node port first walks every cluster-IP rule of
/// `KUBE-SERVICES`, then the `addrtype LOCAL` jump to `KUBE-NODEPORTS` and
/// its port rules; `KUBE-EXT-…` marks it for `MASQUERADE`
/// (`externalTrafficPolicy: Cluster`) and `KUBE-SVC-…`/`KUBE-SEP-…` DNAT
/// it to the endpoint.
fn kube_proxy_rules(services: usize, port: u16, backend: &str) -> String {
    let mut chains = String::new();
    let mut cluster_ips = String::new();
    let mut node_ports = String::new();
    let mut per_service = String::new();
    for i in 0..services {
        let (p, to) = if i + 1 == services {
            (port, backend.to_owned())
        } else {
            (20000 + i as u16, "10.0.0.250".to_owned())
        };
        let cluster_ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        chains.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n:KUBE-EXT-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]\n"));
        cluster_ips.push_str(&format!(
            "-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment \"svc-{i} cluster IP\" \
             -m tcp --dport 80 -j KUBE-SVC-{i}\n"
        ));
        node_ports.push_str(&format!(
            "-A KUBE-NODEPORTS -p tcp -m comment --comment \"svc-{i}\" -m tcp --dport {p} -j KUBE-EXT-{i}\n"
        ));
        per_service.push_str(&format!(
            "-A KUBE-EXT-{i} -j KUBE-MARK-MASQ\n\
             -A KUBE-EXT-{i} -j KUBE-SVC-{i}\n\
             -A KUBE-SVC-{i} -j KUBE-SEP-{i}\n\
             -A KUBE-SEP-{i} -s {to}/32 -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination {to}:{SERVER_PORT}\n"
        ));
    }
    format!(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
         {chains}\
         -A PREROUTING -j KUBE-SERVICES\n-A POSTROUTING -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n\
         {cluster_ips}\
         -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n\
         {node_ports}{per_service}COMMIT\n"
    )
}

/// (a'): node2's server on an address of its own that is routed through
/// node1 both ways (plain IP forwarding, no translation, no overlay): the
/// path every mesh with a backend on another node takes, without the
/// mesh. On this testbed the extra hop costs the same two CPUs.
const ROUTED_ADDR: &str = "198.19.2.2:9100";

fn routed_hop(n1: &Host, n2: &Host, outside: &Host) -> anyhow::Result<()> {
    let (node1, node2) = (n1.underlay_ip.to_string(), n2.underlay_ip.to_string());
    let client = format!("{}/32", outside.underlay_ip);
    n2.run("ip", ["addr", "add", "198.19.2.2/32", "dev", "lo"])?;
    n2.run("ip", ["rule", "add", "from", "198.19.2.2", "lookup", "100"])?;
    n2.run("ip", ["route", "add", &client, "via", &node1, "table", "100"])?;
    n1.run("ip", ["route", "add", "198.19.2.2/32", "via", &node2])?;
    // node1 forwards out of the interface the packet came in by: no
    // redirects, or the client would learn to skip it.
    for k in ["all", "eth0"] {
        n1.run("sysctl", ["-q", "-w", &format!("net.ipv4.conf.{k}.send_redirects=0")])?;
    }
    outside.run("ip", ["route", "add", "198.19.2.2/32", "via", &node1])?;
    Ok(())
}

/// Packets node1's IP layer has forwarded (`Ip: ForwDatagrams`).
fn forwarded(n1: &Host) -> anyhow::Result<u64> {
    let snmp = n1.run("cat", ["/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("Ip header")?, ip.next().context("Ip values")?);
    let i = names.split_whitespace().position(|n| n == "ForwDatagrams").context("ForwDatagrams")?;
    values.split_whitespace().nth(i).context("ForwDatagrams value")?.parse().context("ForwDatagrams")
}

fn iptables_restore(h: &Host, rules: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut c = h.command("iptables-restore")?;
    c.stdin(std::process::Stdio::piped());
    let mut child = c.spawn().context("iptables-restore")?;
    child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("iptables-restore failed ({st})");
    }
    Ok(())
}

fn published(h: &Host, name: &str, port: u16) -> anyhow::Result<()> {
    let spec = json!({
        "Name": name,
        "Mode": {"Replicated": {"Replicas": 0}},
        "TaskTemplate": {"ContainerSpec": {"Image": "busybox:latest", "Args": ["sleep", "1d"]}},
        "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": port}]},
    });
    let (status, out) = http(&sock(h), "POST", "/services/create", Some(&serde_json::to_vec(&spec)?))?;
    if !(200..300).contains(&status) {
        bail!("creating {name}: {status} {}", String::from_utf8_lossy(&out));
    }
    Ok(())
}

#[allow(clippy::too_many_lines)]
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    crate::demo::build_agent()?;
    let tool = static_tool(&target_dir(), "tcp-bench").map_err(anyhow::Error::msg)?;
    let tool = tool.to_str().context("tool path")?.to_owned();
    let tb = Testbed::up(3)?;
    let (n1, n2, outside) = (tb.host(0), tb.host(1), tb.host(2));
    // /20 networks: ingress holds a VIP for each of the 1 000 publishing services.
    agent(n1, &["init", "--default-addr-pool", "10.0.0.0/8", "--default-addr-pool-mask-length", "20"])?;
    agent(n2, &["join", "--token", &token(n1, "worker"), "198.18.0.1:2377"])?;
    let tar = busybox_rootfs(&target_dir()).map_err(anyhow::Error::msg)?;
    for h in [n1, n2] {
        docker(h, &["import", "--change", "CMD [\"sh\"]", tar.to_str().context("path")?, "busybox:latest"])?;
    }
    docker(n1, &["network", "create", "--driver", "overlay", "bench"])?;
    let serve = ["tcp-bench", "serve", "9000"];
    for (name, node, port) in [("local", "node1", "7101"), ("remote", "node2", "7102")] {
        let mut a = vec!["service", "create", "-d", "--name", name, "--constraint"];
        let c = format!("node.hostname=={node}");
        let p = format!("{port}:{SERVER_PORT}");
        a.extend_from_slice(&[&c, "-p", &p, "--network", "bench", "busybox"]);
        a.extend_from_slice(&serve);
        docker(n1, &a)?;
    }
    docker(
        n1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "vclient",
            "--constraint",
            "node.hostname==node1",
            "--network",
            "bench",
            "busybox",
            "sleep",
            "1d",
        ],
    )?;
    for s in ["local", "remote", "vclient"] {
        wait_replicas(n1, s)?;
    }
    // (a): the same server on each node itself.
    let mut direct = Vec::new();
    for h in [n1, n2] {
        let mut c = h.command(&tool)?;
        c.args(["serve", "9100"]).stdout(std::process::Stdio::null());
        direct.push(c.spawn().context("starting tcp-bench serve")?);
    }
    let from_outside = |a: &[&str]| -> anyhow::Result<String> { Ok(outside.run(&tool, a)?) };
    for addr in ["198.18.0.1:7101", "198.18.0.1:7102", "198.18.0.1:9100", "198.18.0.2:9100"] {
        poll::until(&format!("{addr} to answer"), LONG, || client(&from_outside, "connect", addr, 0.1))
            .map_err(anyhow::Error::msg)?;
    }
    let ip_local = task_ip(&tb, "local", "10.0.0.")?;
    let ip_remote = task_ip(&tb, "remote", "10.0.0.")?;
    n1.run("sysctl", ["-q", "-w", "net.ipv4.ip_forward=1"])?;
    routed_hop(n1, n2, outside)?;
    poll::until("the routed address to answer", LONG, || client(&from_outside, "connect", ROUTED_ADDR, 0.1))
        .map_err(anyhow::Error::msg)?;
    let before = forwarded(n1)?;
    client(&from_outside, "connect", ROUTED_ADDR, 0.1)?;
    if forwarded(n1)? <= before {
        bail!("the routed path does not go through node1");
    }

    let secs = args.secs;
    let mut a = [Cells::default(), Cells::default()];
    let mut a_routed = Cells::default();
    let mut b = [Cells::default(), Cells::default()];
    let mut c = [Cells::default(), Cells::default()];
    let mut b_scale: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut c_scale: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 0..args.runs {
        eprintln!("round {}/{}", round + 1, args.runs);
        for (i, (direct_addr, backend)) in
            [("198.18.0.1:9100", &ip_local), ("198.18.0.2:9100", &ip_remote)].iter().enumerate()
        {
            measure(&mut a[i], &from_outside, direct_addr, secs)?;
            if i == 1 {
                measure(&mut a_routed, &from_outside, ROUTED_ADDR, secs)?;
            }
            iptables_restore(n1, &kube_proxy_rules(1, 7201, backend))?;
            measure(&mut b[i], &from_outside, "198.18.0.1:7201", secs)?;
            // (c) without (b)'s chains: our nodes never have them.
            iptables_restore(n1, "*nat\nCOMMIT\n")?;
            measure(
                &mut c[i],
                &from_outside,
                if i == 0 { "198.18.0.1:7101" } else { "198.18.0.1:7102" },
                secs,
            )?;
        }
    }
    iptables_restore(n1, "*nat\nCOMMIT\n")?;
    // More services defined: (b) with N kube-proxy services, (c) with N published ports.
    let mut defined = 2;
    for (k, n) in [1usize, 100, 1000].into_iter().enumerate() {
        while defined < n {
            published(n1, &format!("filler{defined}"), 21000 + defined as u16)?;
            defined += 1;
        }
        if n > 1 {
            // Both nodes' datapaths have them once their names views carry
            // the last one (views are computed from the latest state, so
            // nothing is left to catch up after that).
            for h in [n1, n2] {
                poll::until("the frontends to reach the nodes", LONG, || {
                    let v = agent(h, &["network", "inspect", "--verbose", "ingress"])
                        .map_err(|e| e.to_string())?;
                    if v.contains(&format!("\"{}/tcp\"", 21000 + n - 1)) {
                        Ok(())
                    } else {
                        Err("not yet".to_owned())
                    }
                })
                .map_err(anyhow::Error::msg)?;
            }
        }
        for _ in 0..args.runs {
            iptables_restore(n1, &kube_proxy_rules(n, 7201, &ip_remote))?;
            b_scale[k]
                .push(field(&client(&from_outside, "connect", "198.18.0.1:7201", secs)?, "conns_per_sec")?);
            iptables_restore(n1, "*nat\nCOMMIT\n")?;
            c_scale[k]
                .push(field(&client(&from_outside, "connect", "198.18.0.1:7102", secs)?, "conns_per_sec")?);
        }
    }
    iptables_restore(n1, "*nat\nCOMMIT\n")?;
    n1.run("sysctl", ["-q", "-w", "net.ipv4.ip_forward=0"])?;

    // East-west: a task on node1 to the task on node2, through the VIP and directly.
    let vip = docker(
        n1,
        &["service", "inspect", "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}", "remote"],
    )?;
    let bench_net =
        docker(n1, &["network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}", "bench"])?;
    let prefix = bench_net.trim().rsplit_once('.').map(|(p, _)| format!("{p}.")).context("bench subnet")?;
    let vip = vip
        .split_whitespace()
        .find(|a| a.starts_with(&prefix))
        .and_then(|a| a.split('/').next())
        .context("no VIP of remote on bench")?
        .to_owned();
    let direct_ip = task_ip(&tb, "remote", &prefix)?;
    let (vh, vclient) = task(&tb, "vclient")?;
    let in_task = |a: &[&str]| -> anyhow::Result<String> {
        let mut args = vec!["exec", vclient.as_str(), "tcp-bench"];
        args.extend_from_slice(a);
        Ok(docker(tb.host(vh), &args)?)
    };
    let (mut ew_vip, mut ew_direct) = (Cells::default(), Cells::default());
    let (vip_addr, direct_addr) = (format!("{vip}:{SERVER_PORT}"), format!("{direct_ip}:{SERVER_PORT}"));
    poll::until("the VIP to answer", LONG, || client(&in_task, "connect", &vip_addr, 0.1))
        .map_err(anyhow::Error::msg)?;
    for _ in 0..args.runs {
        measure(&mut ew_direct, &in_task, &direct_addr, secs)?;
        measure(&mut ew_vip, &in_task, &vip_addr, secs)?;
    }
    // A node's own processes to the task on node2: balanced at connect()
    // (localhost:published port, `sock_connect4`) vs per packet (the
    // service's VIP on ingress, DNAT in `tc_from_endpoint` on the host's
    // endpoint); past the balancing both take the same path.
    let ingress_vip = docker(
        n1,
        &["service", "inspect", "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}", "remote"],
    )?
    .split_whitespace()
    .find(|a| !a.starts_with(&prefix))
    .and_then(|a| a.split('/').next())
    .context("no VIP of remote on ingress")?
    .to_owned();
    let on_node = |a: &[&str]| -> anyhow::Result<String> { Ok(n1.run(&tool, a)?) };
    let (mut by_socket, mut by_packet) = (Cells::default(), Cells::default());
    let ingress_vip_addr = format!("{ingress_vip}:{SERVER_PORT}");
    poll::until("the ingress VIP to answer", LONG, || client(&on_node, "connect", &ingress_vip_addr, 0.1))
        .map_err(anyhow::Error::msg)?;
    for _ in 0..args.runs {
        measure(&mut by_socket, &on_node, "127.0.0.1:7102", secs)?;
        measure(&mut by_packet, &on_node, &ingress_vip_addr, secs)?;
    }
    for mut d in direct {
        let _ = d.kill();
        let _ = d.wait();
    }

    println!();
    println!(
        "mesh benchmark: 2 testbed hosts + an outside client, tcp-bench, {} rounds of {secs} s; median",
        args.runs
    );
    println!();
    let header = ["path", "backend", "conn/s", "req/s", "p50 µs", "p99 µs", "Gbit/s"];
    let mut rows = Vec::new();
    for (i, backend) in ["node1", "node2"].iter().enumerate() {
        rows.push(row("(a) direct to the node", backend, &a[i]));
        if i == 1 {
            rows.push(row("(a') routed through node1", backend, &a_routed));
        }
        rows.push(row("(b) iptables DNAT+MASQ", backend, &b[i]));
        rows.push(row("(c) eBPF routing mesh", backend, &c[i]));
    }
    rows.push(row("task -> task address", "node2", &ew_direct));
    rows.push(row("task -> service VIP", "node2", &ew_vip));
    rows.push(row("node -> localhost:P (connect)", "node2", &by_socket));
    rows.push(row("node -> ingress VIP (packet)", "node2", &by_packet));
    print!("{}", render(&header, &rows));
    println!();
    let scale_rows: Vec<Vec<String>> = [("(b) iptables", &b_scale), ("(c) eBPF mesh", &c_scale)]
        .iter()
        .map(|(n, v)| {
            let mut r = vec![(*n).to_owned()];
            r.extend(v.iter().map(|x| format!("{:.0}", median(x))));
            r
        })
        .collect();
    print!("{}", render(&["new conn/s, backend node2", "1 service", "100", "1000"], &scale_rows));
    println!();
    for (i, backend) in ["node1", "node2"].iter().enumerate() {
        println!(
            "backend {backend}: throughput C/A = {:.2} (target >= 0.95)",
            median(&c[i].bits) / median(&a[i].bits)
        );
    }
    println!(
        "backend node2, the hop through node1 alone: A'/A throughput {:.2}, new conn/s {:.2}; \
         C/A' throughput {:.2}, new conn/s {:.2}",
        median(&a_routed.bits) / median(&a[1].bits),
        median(&a_routed.conns) / median(&a[1].conns),
        median(&c[1].bits) / median(&a_routed.bits),
        median(&c[1].conns) / median(&a_routed.conns)
    );
    println!(
        "new connections at 1000 services: A/B = {:.2} (the ceiling's own ratio)",
        median(&a[1].conns) / median(&b_scale[2])
    );
    println!(
        "new connections at 1000 services: C/B = {:.2} (target >= 2)",
        median(&c_scale[2]) / median(&b_scale[2])
    );
    println!(
        "C from 1 to 1000 services: {:+.1} % (target within 10 %); B: {:+.1} %",
        (median(&c_scale[2]) / median(&c_scale[0]) - 1.0) * 100.0,
        (median(&b_scale[2]) / median(&b_scale[0]) - 1.0) * 100.0
    );
    println!(
        "east-west VIP / task address: new conn/s {:.2}, req/s {:.2}, throughput {:.2}",
        median(&ew_vip.conns) / median(&ew_direct.conns),
        median(&ew_vip.reqs) / median(&ew_direct.reqs),
        median(&ew_vip.bits) / median(&ew_direct.bits)
    );
    println!(
        "balanced at connect() / per packet, from node1: new conn/s {:.2}, req/s {:.2}, throughput {:.2}",
        median(&by_socket.conns) / median(&by_packet.conns),
        median(&by_socket.reqs) / median(&by_packet.reqs),
        median(&by_socket.bits) / median(&by_packet.bits)
    );
    Ok(())
}
