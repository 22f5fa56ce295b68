//! The embedded DNS server of tasks (127.0.0.11 in each task's network
//! namespace), through the stock docker CLI and busybox's nslookup inside
//! the tasks: service names (VIP and dnsrr), `tasks.<service>`, network
//! aliases, container names, PTR, scoping to the task's networks, records
//! following tasks that stop and start, and SERVFAIL for names nobody
//! answers. Needs root, crun or runc, docker's CLI.

use std::time::Duration;

use swarm_tests::{
    poll,
    services::{import_busybox, running_containers, wait_replicas},
    swarm::{cluster, docker},
    testbed::Testbed,
};

const LONG: Duration = Duration::from_secs(60);

/// Addresses nslookup found for `name` from inside container `cid` on
/// host `h` (empty when it failed), and its whole output.
fn lookup(tb: &Testbed, h: usize, cid: &str, name: &str) -> (Vec<String>, String) {
    let out = match docker(tb.host(h), &["exec", cid, "nslookup", name]) {
        Ok(o) => o,
        Err(swarm_tests::cmd::CmdError::Failed { stdout, stderr, .. }) => {
            return (Vec::new(), format!("{stdout}{stderr}"));
        }
        Err(e) => return (Vec::new(), e.to_string()),
    };
    // busybox: "Server: 127.0.0.11", "Address: 127.0.0.11:53", then for
    // each answer "Name: x" / "Address: ip".
    let addrs = out
        .lines()
        .skip_while(|l| !l.starts_with("Name:"))
        .filter_map(|l| l.strip_prefix("Address:").map(|a| a.trim().to_owned()))
        .collect();
    (addrs, out)
}

fn vip(tb: &Testbed, service: &str) -> String {
    let out = docker(
        tb.host(0),
        &["service", "inspect", "--format", "{{(index .Endpoint.VirtualIPs 0).Addr}}", service],
    )
    .unwrap();
    out.trim().split('/').next().unwrap().to_owned()
}

#[test]
fn tasks_resolve_services_tasks_aliases_and_containers_on_their_networks() {
    let tb = cluster(2, 1, &[], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(m, &["network", "create", "--driver", "overlay", "app"]).unwrap();
    docker(m, &["network", "create", "--driver", "overlay", "other"]).unwrap();
    let svc = |args: &[&str]| {
        let mut a = vec!["service", "create", "-d"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["busybox", "sleep", "1d"]);
        docker(m, &a).unwrap();
    };
    svc(&["--name", "web", "--replicas", "2", "--network", "name=app,alias=www"]);
    svc(&["--name", "rr", "--replicas", "2", "--endpoint-mode", "dnsrr", "--network", "app"]);
    svc(&["--name", "hidden", "--network", "other"]);
    for s in ["web", "rr", "hidden"] {
        wait_replicas(&tb, s, if s == "hidden" { "1/1" } else { "2/2" }, LONG);
    }
    let web_vip = vip(&tb, "web");
    let containers = running_containers(&tb);
    let client = containers.iter().find(|c| c.name.starts_with("web.")).unwrap();
    let rr_names: Vec<&str> =
        containers.iter().filter(|c| c.name.starts_with("rr.")).map(|c| c.name.as_str()).collect();

    // The resolver is the embedded one.
    let conf = docker(tb.host(client.host), &["exec", &client.id, "cat", "/etc/resolv.conf"]).unwrap();
    assert!(conf.contains("nameserver 127.0.0.11"), "{conf}");

    let ask = |name: &str| lookup(&tb, client.host, &client.id, name);
    poll::until("names to be served", LONG, || {
        let (a, out) = ask("web");
        if a == [web_vip.clone()] { Ok(()) } else { Err(out) }
    })
    .unwrap();
    assert_eq!(ask("www").0, std::slice::from_ref(&web_vip), "the network alias");
    let (mut tasks, out) = ask("tasks.web");
    tasks.sort();
    assert_eq!(tasks.len(), 2, "{out}");
    assert!(!tasks.contains(&web_vip));
    assert_eq!(ask("tasks.www").0.len(), 2);
    let (rr, out) = ask("rr");
    assert_eq!(rr.len(), 2, "dnsrr: every task: {out}");
    // A container name is its task's address, and that address points back.
    let (one, out) = ask(rr_names[0]);
    assert_eq!(one.len(), 1, "{out}");
    assert!(rr.contains(&one[0]), "{rr:?} {one:?}");
    let ptr = docker(tb.host(client.host), &["exec", &client.id, "nslookup", &one[0]]).unwrap();
    assert!(ptr.contains(&format!("{}.app", rr_names[0])), "{ptr}");
    // Not on the task's networks: not resolved; nobody upstream: SERVFAIL.
    let (h, out) = ask("hidden");
    assert!(h.is_empty(), "{out}");
    let (x, out) = ask("example.org");
    assert!(x.is_empty() && out.contains("SERVFAIL"), "{out}");

    // Records follow tasks: scale rr down, its name loses an address.
    docker(m, &["service", "scale", "-d", "rr=1"]).unwrap();
    poll::until("rr to have one address", LONG, || {
        let (a, out) = ask("rr");
        if a.len() == 1 { Ok(()) } else { Err(out) }
    })
    .unwrap();
    docker(m, &["service", "scale", "-d", "rr=3"]).unwrap();
    poll::until("rr to have three addresses", LONG, || {
        let (a, out) = ask("tasks.rr");
        if a.len() == 3 { Ok(()) } else { Err(out) }
    })
    .unwrap();
}

/// A stand-in upstream resolver on node1's underlay address: answers every
/// A query with 198.18.0.200. Runs until the test process ends.
fn fake_upstream(h: &swarm_tests::testbed::Host, addr: &str) {
    let ns = std::fs::File::open(h.netns_path()).unwrap();
    let addr = addr.to_owned();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let sock = std::net::UdpSocket::bind(&addr).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf) else { return };
            if n < 12 {
                continue;
            }
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // QR
            r[3] |= 0x80; // RA
            // The question's type follows its name (labels up to a 0).
            let mut at = 12;
            while at < n && r[at] != 0 {
                at += 1 + usize::from(r[at]);
            }
            if r.get(at + 1..at + 3) == Some(&[0, 1]) {
                r[7] = 1; // ANCOUNT = 1
                // The name by pointer to the question, A, IN, TTL 60, 198.18.0.200.
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 200]);
            }
            let _ = sock.send_to(&r, from);
        }
    });
    rx.recv().unwrap();
}

#[test]
fn names_the_cluster_does_not_own_go_to_the_upstream_resolver() {
    let tb = cluster(2, 1, &[("SWARM_DNS_UPSTREAMS", "198.18.0.1:5353")], &[]);
    fake_upstream(tb.host(0), "198.18.0.1:5353");
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(m, &["network", "create", "--driver", "overlay", "app"]).unwrap();
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "fw",
            "--replicas",
            "2",
            "--network",
            "app",
            "busybox",
            "sleep",
            "1d",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "fw", "2/2", LONG);
    for c in running_containers(&tb) {
        let (a, out) = lookup(&tb, c.host, &c.id, "example.org");
        assert_eq!(a, ["198.18.0.200"], "from {}: {out}", tb.host(c.host).name);
        let (own, out) = lookup(&tb, c.host, &c.id, "fw");
        assert_eq!(own.len(), 1, "{out}");
        assert_ne!(own[0], "198.18.0.200", "our own names are not forwarded: {out}");
    }
}
