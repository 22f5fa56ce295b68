//! `init`, `join` and `join-token` on testbed hosts: docker's output, the
//! objects and certificates they create, and every way they refuse bad input
//! without creating anything. Needs root.

use std::time::Duration;

use regex::Regex;
use swarm_agent::ca::{CertInfo, token::ca_digest};
use swarm_tests::{
    swarm::{agent, cluster, docker, node_ls, row, stderr, token, wait_nodes},
    testbed::{Host, Testbed},
};

const ID: &str = "[0-9a-z]{25}";
const TOKEN: &str = "SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}";

fn swarm_dir(h: &Host) -> std::path::PathBuf {
    h.state_dir().join("swarm")
}

fn cert(h: &Host, name: &str) -> String {
    std::fs::read_to_string(swarm_dir(h).join("certificates").join(name)).unwrap()
}

fn info_line(h: &Host, key: &str) -> String {
    let out = agent(h, &["info"]).unwrap();
    out.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")).map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key} in {out}"))
}

/// An error from the CLI: exit status non-zero and exactly this stderr.
fn assert_fails(h: &Host, args: &[&str], expected: &str) {
    let e = agent(h, args).expect_err("must fail");
    assert_eq!(stderr(&e), format!("{expected}\n"), "swarm-agent {args:?}");
}

#[test]
fn init_prints_dockers_output_and_creates_the_swarm() {
    let tb = Testbed::up(1).unwrap();
    let h = tb.host(0);
    let out = agent(h, &["init"]).unwrap();
    let re = Regex::new(&format!(
        "^Swarm initialized: current node \\(({ID})\\) is now a manager\\.\n\nTo add a worker to this swarm, run the following command:\n\n    swarm-agent join --token ({TOKEN}) 198\\.18\\.0\\.1:2377\n\nTo add a manager to this swarm, run 'swarm-agent join-token manager' and follow the instructions\\.\n$"
    ))
    .unwrap();
    let caps = re.captures(&out).unwrap_or_else(|| panic!("unexpected init output:\n{out}"));
    let (node_id, worker_token) = (caps[1].to_owned(), caps[2].to_owned());

    // Root CA: swarm-ca, 20 years; tokens carry its digest.
    let ca_pem = cert(h, "swarm-root-ca.crt");
    let ca = CertInfo::from_pem(&ca_pem).unwrap();
    assert_eq!((ca.common_name.as_str(), ca.issuer_cn.as_str()), ("swarm-ca", "swarm-ca"));
    assert!((ca.not_after - ca.not_before - 630_720_000 - 3600).abs() < 5, "20 years (+1h backdate)");
    let digest = swarm_agent::ca::token::JoinToken::parse(&worker_token).unwrap().ca_digest;
    assert_eq!(digest, ca_digest(ca_pem.as_bytes()));
    let manager_token = token(h, "manager");
    assert!(Regex::new(&format!("^{TOKEN}$")).unwrap().is_match(&manager_token));
    // Output into a pipe whose reader is gone ends the command quietly
    // (with SIGPIPE's status, as docker), not with a panic.
    let mut c = h.command("sh").unwrap();
    let script = format!("{{ sleep 0.2; {} join-token worker; }} | true", swarm_tests::agent_bin().display());
    let out = c.args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && stderr.is_empty(), "{stderr}");
    assert_ne!(manager_token, worker_token);

    // Node certificate: CN = node ID, OU = role, O = cluster ID, 90 days.
    let cluster_id = info_line(h, "ClusterID");
    let node = CertInfo::from_pem(&cert(h, "swarm-node.crt")).unwrap();
    assert_eq!(node.common_name, node_id);
    assert_eq!(node.organizational_unit, "swarm-manager");
    assert_eq!(node.organization, cluster_id);
    assert_eq!(node.issuer_cn, "swarm-ca");
    assert!((node.not_after - node.not_before - 2160 * 3600 - 3600).abs() < 5, "90 days (+1h backdate)");
    assert!(Regex::new(&format!("^{ID}$")).unwrap().is_match(&cluster_id));

    // The swarm as docker sees it, the ingress network included.
    let rows = node_ls(h).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, node_id);
    assert!(rows[0].is_self);
    assert_eq!((rows[0].status.as_str(), rows[0].availability.as_str()), ("Ready", "Active"));
    assert_eq!(rows[0].manager_status, "Leader");
    let nets = docker(h, &["network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}"]).unwrap();
    assert_eq!(nets, "ingress overlay swarm\n");
    let ipam = docker(h, &["network", "inspect", "ingress", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{index .Options \"com.docker.network.driver.overlay.vxlanid_list\"}}"]).unwrap();
    assert_eq!(ipam, "10.0.0.0/24 10.0.0.1 4096\n");

    // A second init is refused with docker's text and changes nothing.
    assert_fails(
        h,
        &["init"],
        "Error response from daemon: This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.",
    );
    assert_eq!(node_ls(h).unwrap().len(), 1);
    assert_eq!(info_line(h, "ClusterID"), cluster_id);
}

#[test]
fn init_options_are_applied() {
    let tb = Testbed::up(1).unwrap();
    let h = tb.host(0);
    agent(
        h,
        &[
            "init",
            "--advertise-addr",
            "eth0:4000",
            "--listen-addr",
            "0.0.0.0:4000",
            "--availability",
            "drain",
            "--default-addr-pool",
            "10.20.0.0/16",
            "--default-addr-pool-mask-length",
            "26",
            "--data-path-port",
            "7789",
            "--dispatcher-heartbeat",
            "2s",
            "--task-history-limit",
            "9",
            "--cert-expiry",
            "48h",
        ],
    )
    .unwrap();
    let out = docker(h, &["info"]).unwrap();
    for line in [
        "Default Address Pool: 10.20.0.0/16",
        "SubnetSize: 26",
        "Data Path Port: 7789",
        "Task History Retention Limit: 9",
        "Heartbeat Period: 2 seconds",
        "Expiry Duration: 2 days",
        "Node Address: 198.18.0.1",
        "198.18.0.1:4000",
    ] {
        assert!(out.contains(line), "{line:?} missing from docker info:\n{out}");
    }
    assert_eq!(row(&node_ls(h).unwrap(), "node1").availability, "Drain");
    let node = CertInfo::from_pem(&cert(h, "swarm-node.crt")).unwrap();
    assert!((node.not_after - node.not_before - 49 * 3600).abs() < 5);
    let ipam =
        docker(h, &["network", "inspect", "ingress", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"])
            .unwrap();
    assert_eq!(ipam, "10.20.0.0/26\n");
}

#[test]
fn init_refuses_bad_input_and_creates_nothing() {
    let tb = Testbed::up(1).unwrap();
    let h = tb.host(0);
    h.run("ip", ["addr", "add", "198.18.0.101/24", "dev", "eth0"]).unwrap();
    assert_fails(
        h,
        &["init"],
        "Error response from daemon: could not choose an IP address to advertise since this system has multiple addresses on interface eth0 (198.18.0.1 and 198.18.0.101) - specify one with --advertise-addr",
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["init", "--availability", "bogus"],
            "invalid availability \"bogus\", only active, pause and drain are supported",
        ),
        (
            &["init", "--advertise-addr", "198.18.0.1", "--data-path-port", "80"],
            "Error response from daemon: Datapath port number is not in valid range (1024-49151) : 80",
        ),
        (
            &["init", "--advertise-addr", "198.18.0.1", "--default-addr-pool-mask-length", "40"],
            "Error response from daemon: subnet size is out of range: 40",
        ),
        (
            &[
                "init",
                "--advertise-addr",
                "198.18.0.1",
                "--default-addr-pool",
                "10.20.0.0/16",
                "--default-addr-pool-mask-length",
                "8",
            ],
            "Error response from daemon: invalid CIDR: \"10.20.0.0/16\". Subnet size is too small for pool: 8",
        ),
        (
            &[
                "init",
                "--advertise-addr",
                "198.18.0.1",
                "--default-addr-pool",
                "255.255.255.255/32",
                "--default-addr-pool-mask-length",
                "32",
            ],
            "Error response from daemon: subnet size is out of range: 32",
        ),
        (
            &[
                "init",
                "--advertise-addr",
                "198.18.0.1",
                "--default-addr-pool",
                "255.255.255.254/31",
                "--default-addr-pool-mask-length",
                "31",
            ],
            "Error response from daemon: subnet size is out of range: 31",
        ),
        (
            &["init", "--advertise-addr", "nosuch0"],
            "Error response from daemon: advertise address must be a non-zero IP address or network interface (with optional port number)",
        ),
        (
            &["init", "--advertise-addr", "198.18.0.1", "--listen-addr", "nosuch0:2377"],
            "Error response from daemon: listen address must be an IP address or network interface (with optional port number)",
        ),
        (
            &["init", "--advertise-addr", "eth0"],
            "Error response from daemon: interface eth0 has more than one IPv4 address (198.18.0.1 and 198.18.0.101)",
        ),
        (
            &["init", "--advertise-addr", "198.18.0.1", "--cert-expiry", "30m"],
            "Error response from daemon: minimum certificate expiry time is: 1h0m0s",
        ),
    ];
    for (args, expected) in cases {
        assert_fails(h, args, expected);
        assert!(!swarm_dir(h).exists(), "{args:?} created state");
    }
    assert_eq!(info_line(h, "Swarm"), "inactive");
    // Flags the parser rejects exit non-zero too.
    assert!(agent(h, &["init", "--dispatcher-heartbeat", "soon"]).is_err());
    // Garbage on the API is a 400 with a message, not a crash.
    let client = swarm_agent::cli::client::Client::new(h.state_dir().join("docker.sock"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, body) =
        rt.block_on(client.request(hyper::Method::POST, "/swarm/init", Some(b"{nop".to_vec()))).unwrap();
    assert_eq!(status.as_u16(), 400);
    assert!(String::from_utf8_lossy(&body).contains("invalid JSON"), "{body:?}");
    let (status, _) = rt.block_on(client.request(hyper::Method::GET, "/no/such/endpoint", None)).unwrap();
    assert_eq!(status.as_u16(), 404);
    assert_eq!(info_line(h, "Swarm"), "inactive");
    // With an explicit address it works.
    agent(h, &["init", "--advertise-addr", "198.18.0.1"]).unwrap();
    assert_eq!(info_line(h, "Swarm"), "active");
}

#[test]
fn workers_and_managers_join() {
    let tb = Testbed::up(3).unwrap();
    let (m1, m2, w) = (tb.host(0), tb.host(1), tb.host(2));
    agent(m1, &["init"]).unwrap();
    let out = agent(m2, &["join", "--token", &token(m1, "manager"), "198.18.0.1:2377"]).unwrap();
    assert_eq!(out, "This node joined a swarm as a manager.\n");
    let out = agent(w, &["join", "--token", &token(m1, "worker"), "198.18.0.1"]).unwrap();
    assert_eq!(out, "This node joined a swarm as a worker.\n");

    let rows = wait_nodes(m1, "all nodes ready", Duration::from_secs(20), |r| {
        r.len() == 3 && r.iter().all(|n| n.status == "Ready")
    });
    assert_eq!(row(&rows, "node1").manager_status, "Leader");
    assert_eq!(row(&rows, "node2").manager_status, "Reachable", "the joined manager is a Raft voter");
    assert_eq!(row(&rows, "node3").manager_status, "");
    // The follower serves reads too (forwarding to the leader).
    let from_follower = node_ls(m2).unwrap();
    assert_eq!(from_follower.iter().filter(|r| r.is_self).count(), 1);
    assert!(row(&from_follower, "node2").is_self);
    // Workers cannot see cluster state.
    let e = agent(w, &["node", "ls"]).unwrap_err();
    assert_eq!(
        stderr(&e),
        "Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.\n"
    );
    // Roles are in the certificates; only managers hold the CA key.
    let ou = |h: &Host| CertInfo::from_pem(&cert(h, "swarm-node.crt")).unwrap().organizational_unit;
    assert_eq!(ou(m2), "swarm-manager");
    assert_eq!(ou(w), "swarm-worker");
    assert!(swarm_dir(m2).join("certificates/swarm-root-ca.key").exists());
    assert!(!swarm_dir(w).join("certificates/swarm-root-ca.key").exists());
    // Each node's key was made on the node: no two nodes share one.
    assert_ne!(cert(m1, "swarm-node.key"), cert(w, "swarm-node.key"));
    // Joining twice is refused.
    let e = agent(w, &["join", "--token", &token(m1, "worker"), "198.18.0.1"]).unwrap_err();
    assert!(
        stderr(&e).starts_with("Error response from daemon: This node is already part of a swarm."),
        "{e}"
    );
}

#[test]
fn bad_joins_are_refused_and_join_nothing() {
    let tb = Testbed::up(2).unwrap();
    let (m, h) = (tb.host(0), tb.host(1));
    agent(m, &["init"]).unwrap();
    let good = token(m, "worker");
    let (digest, secret) = (&good[9..59], &good[60..]);
    let invalid = "Error response from daemon: invalid join token";
    let malformed = [
        String::new(),
        "garbage".into(),
        format!("SWMTKX-1-{digest}-{secret}"),
        format!("SWMTKN-9-{digest}-{secret}"),
        format!("SWMTKN-1-{}-{secret}", &digest[1..]),
        format!("SWMTKN-1-{digest}-{secret}0"),
        format!("SWMTKN-1-{digest}-{}", secret.to_uppercase()),
        format!("SWMTKN-1-{digest}-{}!", &secret[1..]),
        format!("SWMTKN-1-{digest}"),
    ];
    for t in &malformed {
        assert_fails(h, &["join", "--token", t, "198.18.0.1:2377"], invalid);
    }
    // The right CA but a secret the swarm never issued.
    let other_secret = format!("SWMTKN-1-{digest}-{}", "1".repeat(25));
    assert_fails(
        h,
        &["join", "--token", &other_secret, "198.18.0.1:2377"],
        "Error response from daemon: A valid join token is necessary to join this cluster",
    );
    // A token for another CA: the manager's CA does not match its fingerprint.
    let other_ca = format!("SWMTKN-1-{}-{secret}", "1".repeat(50));
    let e = agent(h, &["join", "--token", &other_ca, "198.18.0.1:2377"]).unwrap_err();
    let expected = swarm_agent::ca::token::JoinToken::parse(&other_ca).unwrap().digest_string();
    assert_eq!(
        stderr(&e),
        format!(
            "Error response from daemon: remote CA does not match fingerprint. Expected: {}\n",
            &expected["sha256:".len()..]
        )
    );
    // Nobody there.
    let e = agent(h, &["join", "--token", &good, "198.18.0.99:2377"]).unwrap_err();
    assert!(
        stderr(&e).starts_with("Error response from daemon: could not reach the manager at 198.18.0.99:2377"),
        "{e}"
    );
    assert!(!swarm_dir(h).exists(), "nothing joined");
    assert_eq!(info_line(h, "Swarm"), "inactive");
    assert_eq!(node_ls(m).unwrap().len(), 1, "the swarm has no new node");
    // And the good token still works afterwards.
    agent(h, &["join", "--token", &good, "198.18.0.1:2377"]).unwrap();
}

#[test]
fn rotated_tokens_refuse_new_joins_and_spare_existing_nodes() {
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "300ms"]);
    let (m, w, late) = (tb.host(0), tb.host(1), tb.host(2));
    // Host 2 joined in `cluster`; make it leave to join again later.
    agent(late, &["leave"]).unwrap();
    let old_worker = token(m, "worker");
    let old_manager = token(m, "manager");
    let out = agent(m, &["join-token", "--rotate", "worker"]).unwrap();
    let new_worker = token(m, "worker");
    assert_ne!(new_worker, old_worker);
    assert_eq!(token(m, "manager"), old_manager, "only the worker token rotates");
    assert_eq!(
        out,
        format!(
            "Successfully rotated worker join token.\n\nTo add a worker to this swarm, run the following command:\n\n    swarm-agent join --token {new_worker} 198.18.0.1:2377\n\n"
        )
    );
    assert_fails(
        late,
        &["join", "--token", &old_worker, "198.18.0.1:2377"],
        "Error response from daemon: A valid join token is necessary to join this cluster",
    );
    assert!(!swarm_dir(late).exists());
    // The existing worker keeps its session for many heartbeat periods.
    swarm_tests::poll::holds("the existing worker to stay ready", Duration::from_millis(1500), || {
        let s = row(&node_ls(m).map_err(|e| e.to_string())?, &w.name).status.clone();
        if s == "Ready" { Ok(()) } else { Err(s) }
    })
    .unwrap();
    agent(late, &["join", "--token", &new_worker, "198.18.0.1:2377"]).unwrap();
    // -q prints the bare token.
    assert_eq!(agent(m, &["join-token", "-q", "manager"]).unwrap(), format!("{old_manager}\n"));
    assert_fails(m, &["join-token", "bogus"], "unknown role bogus");
}
