//! Service load balancing in the eBPF datapath, through the stock docker
//! CLI: connections to a service's VIP from a task spread over the service's
//! tasks on other hosts and follow scaling; a published port answers on
//! every node's address from a client outside the swarm, whichever node runs
//! the task, and the task sees the client's own address. Needs root, crun or
//! runc, docker's CLI.

use std::time::Duration;

use swarm_tests::{
    poll,
    services::{WHO, import_busybox, parse_who, running_containers, wait_replicas, who_from_host},
    swarm::{cluster, cluster_with_outsiders, docker},
    testbed::{Host, Testbed},
};

const LONG: Duration = Duration::from_secs(60);

/// A task that only sleeps (a client to exec in), on `network`.
fn sleeper(m: &Host, name: &str, network: &str, constraint: &str) {
    let a = ["service", "create", "-d", "--name", name, "--network", network, "--constraint", constraint];
    let mut a = a.to_vec();
    a.extend_from_slice(&["busybox", "sleep", "1d"]);
    docker(m, &a).unwrap();
}

fn create(m: &Host, args: &[&str]) {
    let mut a = vec!["service", "create", "-d"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["busybox", "sh", "-c", WHO]);
    docker(m, &a).unwrap();
}

fn output(r: Result<String, swarm_tests::cmd::CmdError>) -> Result<String, String> {
    r.map_err(|e| e.to_string())
}

/// From inside container `cid` on host `h`.
fn who_from_task(tb: &Testbed, h: usize, cid: &str, url: &str) -> Result<(String, String), String> {
    parse_who(&output(docker(tb.host(h), &["exec", cid, "timeout", "5", "wget", "-O", "-", url]))?)
}

fn task_ip(tb: &Testbed, h: usize, cid: &str, prefix: &str) -> String {
    let out = docker(tb.host(h), &["exec", cid, "ip", "-4", "-o", "addr"]).unwrap();
    out.split_whitespace()
        .filter_map(|w| w.split('/').next())
        .find(|a| a.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} address in {out}"))
        .to_owned()
}

/// The datapath uses none of what Docker's does: no iptables or nftables
/// rule, no IPVS, no kernel vxlan device or bridge on the host.
fn assert_no_kernel_service_machinery(h: &Host) {
    let links = h.run("ip", ["-d", "-o", "link"]).unwrap();
    for l in links.lines() {
        assert!(!l.contains(" vxlan ") && !l.contains(" bridge "), "a kernel vxlan or bridge device: {l}");
    }
    let rules = h.run("iptables-save", std::iter::empty::<&str>()).unwrap_or_default();
    assert!(!rules.lines().any(|l| l.starts_with("-A")), "iptables rules: {rules}");
    let nft = h.run("nft", ["list", "ruleset"]).unwrap_or_default();
    assert!(nft.trim().is_empty(), "nftables rules: {nft}");
    let ipvs = h.run("cat", ["/proc/net/ip_vs"]);
    assert!(ipvs.is_err() || ipvs.as_deref().is_ok_and(|t| t.lines().count() <= 3), "IPVS: {ipvs:?}");
}

#[test]
fn vip_connections_spread_over_tasks_and_follow_scaling() {
    let tb = cluster(3, 1, &[], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(m, &["network", "create", "--driver", "overlay", "--subnet", "10.31.0.0/24", "app"]).unwrap();
    create(m, &["--name", "web", "--replicas", "2", "--network", "app", "--constraint", "node.role==worker"]);
    sleeper(m, "client", "app", "node.role==manager");
    wait_replicas(&tb, "web", "2/2", LONG);
    wait_replicas(&tb, "client", "1/1", LONG);
    let containers = running_containers(&tb);
    let client = containers.iter().find(|c| c.name.starts_with("client.")).unwrap();
    assert_eq!(client.host, 0, "the client runs on the manager, the backends on the workers");
    let client_ip = task_ip(&tb, 0, &client.id, "10.31.0.");
    let who = || who_from_task(&tb, 0, &client.id, "http://web/cgi-bin/who");

    poll::until("the VIP to answer", LONG, || who().map(|_| ())).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (host, addr) = who().unwrap();
        assert_eq!(addr, client_ip, "the backend sees the client task's own address");
        seen.insert(host);
    }
    assert_eq!(seen.len(), 2, "new connections spread over both tasks: {seen:?}");

    // A task that goes leaves the set: every new connection reaches the one left.
    docker(m, &["service", "scale", "-d", "web=1"]).unwrap();
    poll::until("connections to reach only the remaining task", LONG, || {
        let answers: Result<Vec<_>, _> = (0..10).map(|_| who()).collect();
        let hosts: std::collections::BTreeSet<String> = answers?.into_iter().map(|(h, _)| h).collect();
        if hosts.len() == 1 { Ok(()) } else { Err(format!("{hosts:?}")) }
    })
    .unwrap();
    docker(m, &["service", "scale", "-d", "web=3"]).unwrap();
    poll::until("connections to reach three tasks", LONG, || {
        let mut hosts = std::collections::BTreeSet::new();
        for _ in 0..40 {
            hosts.insert(who()?.0);
        }
        if hosts.len() == 3 { Ok(()) } else { Err(format!("{hosts:?}")) }
    })
    .unwrap();
}

#[test]
fn a_published_port_answers_on_every_node_and_the_task_sees_the_client() {
    let tb = cluster_with_outsiders(3, 1, 1, &[], &[]);
    for h in &tb.hosts()[..3] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let outside = tb.host(3);
    let client_addr = "198.18.0.4";
    create(m, &["--name", "web", "--replicas", "1", "-p", "7080:80", "--constraint", "node.hostname==node3"]);
    wait_replicas(&tb, "web", "1/1", LONG);
    let task_host = running_containers(&tb).into_iter().find(|c| c.name.starts_with("web.")).unwrap();
    assert_eq!(task_host.host, 2);

    // Every node answers: two without a task (carried over VXLAN to node3
    // and back), one with it.
    for node in 1..=3 {
        let url = format!("http://198.18.0.{node}:7080/cgi-bin/who");
        let (_, addr) =
            poll::until(&format!("node{node}:7080 to answer"), LONG, || who_from_host(outside, &url))
                .unwrap();
        assert_eq!(addr, client_addr, "node{node}: the task sees the outside client's address");
    }
    // Processes on the nodes themselves: by loopback and by the node's
    // address (through the node's own endpoint on ingress).
    for node in 1..=3usize {
        for host in ["127.0.0.1".to_owned(), format!("198.18.0.{node}")] {
            let url = format!("http://{host}:7080/cgi-bin/who");
            let (_, addr) = poll::until(&format!("{url} to answer on node{node}"), LONG, || {
                who_from_host(tb.host(node - 1), &url)
            })
            .unwrap();
            assert!(addr.starts_with("10.0.0."), "node{node}: from the node's ingress address, not {addr}");
        }
    }
    // The service's VIP on ingress, on the target port, from every node.
    let vips = docker(
        m,
        &["service", "inspect", "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}", "web"],
    )
    .unwrap();
    let vip = vips.split_whitespace().next().and_then(|a| a.split('/').next()).unwrap().to_owned();
    assert!(vip.starts_with("10.0.0."), "{vips}");
    for node in 1..=3usize {
        let url = format!("http://{vip}:80/cgi-bin/who");
        poll::until(&format!("{url} to answer on node{node}"), LONG, || {
            who_from_host(tb.host(node - 1), &url)
        })
        .unwrap();
    }
    // A port nobody published is not answered.
    assert!(who_from_host(outside, "http://198.18.0.1:7081/").is_err());

    // From a task on another network, on a node without a backend, to any
    // node's address (from the node's own address on ingress).
    docker(m, &["network", "create", "--driver", "overlay", "--subnet", "10.33.0.0/24", "probe-net"])
        .unwrap();
    sleeper(m, "probe", "probe-net", "node.hostname==node1");
    wait_replicas(&tb, "probe", "1/1", LONG);
    let probe = running_containers(&tb).into_iter().find(|c| c.name.starts_with("probe.")).unwrap();
    for node in 1..=3 {
        let url = format!("http://198.18.0.{node}:7080/cgi-bin/who");
        let (_, addr) = poll::until(&format!("{url} from a task"), LONG, || {
            who_from_task(&tb, probe.host, &probe.id, &url)
        })
        .unwrap();
        assert!(addr.starts_with("10.0.0."), "from node1's ingress address, not {addr}");
    }
    for h in &tb.hosts()[..3] {
        assert_no_kernel_service_machinery(h);
    }
    // A second service with three tasks on another port: new connections
    // through one node reach all of them.
    create(m, &["--name", "web3", "--replicas", "3", "-p", "7081:80"]);
    wait_replicas(&tb, "web3", "3/3", LONG);
    poll::until("connections through node1 to reach three tasks", LONG, || {
        let mut hosts = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let (h, addr) = who_from_host(outside, "http://198.18.0.1:7081/cgi-bin/who")?;
            if addr != client_addr {
                return Err(format!("the task saw {addr}"));
            }
            hosts.insert(h);
        }
        if hosts.len() == 3 { Ok(()) } else { Err(format!("{hosts:?}")) }
    })
    .unwrap();
}

#[test]
fn udp_reaches_tasks_through_a_vip_and_a_published_port() {
    let tb = cluster_with_outsiders(3, 1, 1, &[], &[]);
    for h in &tb.hosts()[..3] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let outside = tb.host(3);
    docker(m, &["network", "create", "--driver", "overlay", "--subnet", "10.32.0.0/24", "app"]).unwrap();
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "udp",
            "--replicas",
            "2",
            "--network",
            "app",
            "-p",
            "7053:5000/udp",
            "--constraint",
            "node.role==worker",
            "busybox",
            "udp-who",
            "5000",
        ],
    )
    .unwrap();
    sleeper(m, "client", "app", "node.role==manager");
    wait_replicas(&tb, "udp", "2/2", LONG);
    wait_replicas(&tb, "client", "1/1", LONG);
    let client = running_containers(&tb).into_iter().find(|c| c.name.starts_with("client.")).unwrap();
    let client_ip = task_ip(&tb, client.host, &client.id, "10.32.0.");
    let vip = docker(
        m,
        &["service", "inspect", "--format", "{{range .Endpoint.VirtualIPs}}{{.Addr}} {{end}}", "udp"],
    )
    .unwrap()
    .split_whitespace()
    .find(|a| a.starts_with("10.32.0."))
    .unwrap()
    .split('/')
    .next()
    .unwrap()
    .to_owned();

    // East-west: datagrams to the VIP reach both tasks, which see the client.
    let target = format!("{vip}:5000");
    let ask = || parse_who(&output(docker(tb.host(client.host), &["exec", &client.id, "udp-who", &target]))?);
    poll::until("the UDP VIP to answer", LONG, ask).unwrap();
    poll::until("datagrams to reach both tasks", LONG, || {
        let mut hosts = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let (h, addr) = ask()?;
            if addr != client_ip {
                return Err(format!("the task saw {addr}, not {client_ip}"));
            }
            hosts.insert(h);
        }
        if hosts.len() == 2 { Ok(()) } else { Err(format!("{hosts:?}")) }
    })
    .unwrap();

    // Published: from outside, through a node without a task, the client's address kept.
    let from_outside = || -> Result<(String, String), String> {
        let answer = outside
            .in_netns(|| {
                let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                sock.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
                sock.send_to(b"who\n", "198.18.0.1:7053").map_err(|e| e.to_string())?;
                let mut buf = [0u8; 512];
                let (n, from) = sock.recv_from(&mut buf).map_err(|e| e.to_string())?;
                if from.to_string() != "198.18.0.1:7053" {
                    return Err(format!("the answer came from {from}"));
                }
                Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
            })
            .map_err(|e| e.to_string())??;
        parse_who(&answer)
    };
    let (_, addr) = poll::until("node1:7053/udp to answer", LONG, from_outside).unwrap();
    assert_eq!(addr, "198.18.0.4");
}

/// A connection through a published port to a `hostname; cat` server:
/// which task it reached, and whether it still echoes.
struct Conn {
    task: String,
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl Conn {
    fn open(outside: &Host, addr: &str) -> Result<Conn, String> {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| format!("{e}"))?;
        let stream = outside
            .in_netns(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
        let mut stream = std::io::BufReader::new(stream);
        let mut task = String::new();
        std::io::BufRead::read_line(&mut stream, &mut task)
            .map_err(|e| format!("reading the greeting: {e}"))?;
        if task.trim().is_empty() {
            return Err("closed before the greeting".into());
        }
        Ok(Conn { task: task.trim().to_owned(), stream })
    }

    fn echoes(&mut self) -> Result<(), String> {
        use std::io::{BufRead as _, Write as _};
        self.stream.get_mut().write_all(b"ping\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream.read_line(&mut line).map_err(|e| e.to_string())?;
        if line == "ping\n" { Ok(()) } else { Err(format!("got {line:?}")) }
    }
}

#[test]
fn established_connections_survive_while_tasks_are_killed_and_scaled_away() {
    let tb = cluster_with_outsiders(3, 1, 1, &[], &[]);
    for h in &tb.hosts()[..3] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let outside = tb.host(3);
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "echo",
            "--replicas",
            "3",
            "-p",
            "7090:9000",
            "busybox",
            "nc",
            "-ll",
            "-p",
            "9000",
            "-e",
            "sh",
            "-c",
            "hostname; exec cat",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "echo", "3/3", LONG);
    let via = "198.18.0.1:7090";
    poll::until("the published port to answer", LONG, || Conn::open(outside, via).map(|_| ())).unwrap();
    let mut conns: Vec<Conn> = (0..30).map(|_| Conn::open(outside, via).unwrap()).collect();
    let tasks: std::collections::BTreeSet<String> = conns.iter().map(|c| c.task.clone()).collect();
    assert_eq!(tasks.len(), 3, "30 connections spread over the 3 tasks: {tasks:?}");

    // Kill one task's container where it runs.
    let victim = running_containers(&tb).into_iter().find(|c| c.name.starts_with("echo.")).unwrap();
    let victim_host =
        docker(tb.host(victim.host), &["exec", &victim.id, "hostname"]).unwrap().trim().to_owned();
    docker(tb.host(victim.host), &["kill", &victim.id]).unwrap();
    // Once it has left the set (and its replacement, which may take a moment
    // to listen after it counts as running, has joined), every new
    // connection works and reaches another task.
    wait_replicas(&tb, "echo", "3/3", LONG);
    poll::until("new connections to avoid the killed task", LONG, || {
        for _ in 0..10 {
            let c = Conn::open(outside, via)?;
            if c.task == victim_host {
                return Err("reached the killed task".to_owned());
            }
        }
        Ok::<(), String>(())
    })
    .unwrap();
    for i in 0..50 {
        let c = Conn::open(outside, via).unwrap_or_else(|e| panic!("new connection {i} after the kill: {e}"));
        assert_ne!(c.task, victim_host);
    }
    for c in conns.iter_mut().filter(|c| c.task != victim_host) {
        c.echoes().unwrap_or_else(|e| panic!("a connection to surviving task {} broke: {e}", c.task));
    }

    // Scale down: the connections to the tasks that stay keep working.
    wait_replicas(&tb, "echo", "3/3", LONG);
    docker(m, &["service", "scale", "-d", "echo=1"]).unwrap();
    wait_replicas(&tb, "echo", "1/1", LONG);
    // The removed tasks' containers take a moment to stop (their shell ignores SIGTERM).
    let left = poll::until("one echo container to be left", LONG, || {
        let mut echo: Vec<_> =
            running_containers(&tb).into_iter().filter(|c| c.name.starts_with("echo.")).collect();
        if echo.len() == 1 { Ok(echo.remove(0)) } else { Err(format!("{} running", echo.len())) }
    })
    .unwrap();
    let left_host = docker(tb.host(left.host), &["exec", &left.id, "hostname"]).unwrap().trim().to_owned();
    poll::until("new connections to reach only the task left", LONG, || {
        for _ in 0..10 {
            let c = Conn::open(outside, via)?;
            if c.task != left_host {
                return Err(format!("reached {}", c.task));
            }
        }
        Ok::<(), String>(())
    })
    .unwrap();
    let mut kept = 0;
    for c in conns.iter_mut().filter(|c| c.task == left_host) {
        c.echoes().unwrap_or_else(|e| panic!("a connection to the remaining task broke: {e}"));
        kept += 1;
    }
    // (The task left may be the killed one's replacement, with no old connection.)
    eprintln!("{kept} connections to the remaining task kept working");
}

#[test]
fn host_mode_ports_answer_only_where_a_task_runs_straight_to_it() {
    let tb = cluster_with_outsiders(3, 1, 1, &[], &[]);
    for h in &tb.hosts()[..3] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let outside = tb.host(3);
    create(m, &["--name", "hostweb", "--replicas", "2", "--publish", "mode=host,published=7070,target=80"]);
    wait_replicas(&tb, "hostweb", "2/2", LONG);
    let tasks: Vec<_> =
        running_containers(&tb).into_iter().filter(|c| c.name.starts_with("hostweb.")).collect();
    assert_eq!(tasks.len(), 2);
    // `service ps` shows the port each running task holds, from both CLIs alike.
    let format = ["service", "ps", "--format", "{{.Name}} {{.Ports}}", "hostweb"];
    let ps = docker(m, &format).unwrap();
    assert_eq!(ps.lines().filter(|l| l.ends_with(" *:7070->80/tcp")).count(), 2, "{ps}");
    let ours = swarm_tests::swarm::agent(m, &["service", "ps", "hostweb"]).unwrap();
    assert_eq!(ours.lines().filter(|l| l.trim_end().ends_with("*:7070->80/tcp")).count(), 2, "{ours}");
    for node in 0..3usize {
        let url = format!("http://198.18.0.{}:7070/cgi-bin/who", node + 1);
        if let Some(t) = tasks.iter().find(|t| t.host == node) {
            let want = docker(tb.host(node), &["exec", &t.id, "hostname"]).unwrap().trim().to_owned();
            for _ in 0..5 {
                let (task, addr) =
                    poll::until(&format!("node{}:7070", node + 1), LONG, || who_from_host(outside, &url))
                        .unwrap();
                assert_eq!(task, want, "node{}: its own task answers", node + 1);
                assert_eq!(addr, "198.18.0.4");
            }
        } else {
            let e = who_from_host(outside, &url).unwrap_err();
            assert!(e.contains("refused"), "node{}: no task, nothing answers: {e}", node + 1);
        }
    }
}

#[test]
fn ports_published_and_unpublished_by_service_update_follow() {
    let tb = cluster_with_outsiders(2, 1, 1, &[], &[]);
    for h in &tb.hosts()[..2] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let outside = tb.host(2);
    create(m, &["--name", "web", "--replicas", "1"]);
    wait_replicas(&tb, "web", "1/1", LONG);
    let url = "http://198.18.0.2:7085/cgi-bin/who";
    assert!(who_from_host(outside, url).is_err());
    let t = std::time::Instant::now();
    docker(m, &["service", "update", "-d", "--publish-add", "7085:80", "web"]).unwrap();
    let (_, addr) = poll::until("the added port to answer", LONG, || who_from_host(outside, url)).unwrap();
    eprintln!("--publish-add answered {:?} after the update", t.elapsed());
    assert_eq!(addr, "198.18.0.3");
    let ports = docker(m, &["service", "ls", "--format", "{{.Ports}}"]).unwrap();
    assert_eq!(ports.trim(), "*:7085->80/tcp");
    // (docker's --publish-rm names the target port.)
    docker(m, &["service", "update", "-d", "--publish-rm", "80", "web"]).unwrap();
    poll::until("the removed port to be refused", LONG, || match who_from_host(outside, url) {
        Err(e) if e.contains("refused") => Ok(()),
        other => Err(format!("{other:?}")),
    })
    .unwrap();
}
