//! The store at sizes services bring: followers far behind catch up, new
//! managers join a big state (through a snapshot, also while another
//! manager catches up), a cut-off leader stops claiming to lead, and
//! oversized requests are refused before they reach Raft. Needs root.

use std::time::{Duration, Instant};

use swarm_tests::{
    poll,
    swarm::{
        FAST_RAFT, agent, agent_env, cluster, daemon_log, kill9, node_ls, row, start_daemon, stderr, token,
        wait_nodes,
    },
    testbed::{Host, Testbed},
};

const NO_LEADER: &str = "Error response from daemon: The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.\n";

/// A manager's own copy of the store (`debug store`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
struct Digest {
    applied: u64,
    networks: usize,
    bytes: usize,
    sha256: String,
}

fn digest(h: &Host) -> Result<Digest, String> {
    let out = agent(h, &["debug", "store"]).map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
}

/// Waits until every host's copy is the same, and returns it.
fn wait_identical(hosts: &[&Host], timeout: Duration) -> Digest {
    poll::until("identical copies of the store", timeout, || {
        let d: Vec<Digest> = hosts.iter().map(|h| digest(h)).collect::<Result<_, _>>()?;
        if d.windows(2).all(|w| w[0] == w[1]) { Ok(d[0].clone()) } else { Err(format!("{d:#?}")) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", hosts.iter().map(|h| daemon_log(h)).collect::<Vec<_>>().join("\n")))
}

/// `POST path` with a JSON body on the host's API; (status, body).
fn api_post(h: &Host, path: &str, body: &serde_json::Value) -> (u16, String) {
    let client = swarm_agent::cli::client::Client::new(h.state_dir().join("docker.sock"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let bytes = serde_json::to_vec(body).unwrap();
    let (status, out) = rt.block_on(client.request(hyper::Method::POST, path, Some(bytes))).unwrap();
    (status.as_u16(), String::from_utf8_lossy(&out).into_owned())
}

/// A network whose labels hold about `kib` KiB.
fn network_with_labels(name: &str, kib: usize) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = (0..kib.div_ceil(100))
        .map(|i| {
            (
                format!("k{i}"),
                serde_json::Value::String(char::from(b'a' + (i % 26) as u8).to_string().repeat(100 * 1024)),
            )
        })
        .collect();
    serde_json::json!({ "Name": name, "Driver": "overlay", "Labels": labels })
}

/// Writes about `mib` MiB through the manager, 1 MiB per network.
fn write_mib(h: &Host, prefix: &str, mib: usize) {
    for i in 0..mib {
        let (status, out) =
            api_post(h, "/networks/create", &network_with_labels(&format!("{prefix}{i}"), 1000));
        assert_eq!(status, 201, "network {i}: {out}\n{}", daemon_log(h));
    }
}

#[test]
fn a_follower_behind_by_50_mb_of_entries_catches_up() {
    let tb = cluster(3, 3, &[], &[]);
    let (m1, m2, m3) = (tb.host(0), tb.host(1), tb.host(2));
    wait_nodes(m1, "three managers", Duration::from_secs(30), |r| {
        r.iter().filter(|n| n.manager_status == "Reachable").count() == 2
    });
    tb.cut(m3).unwrap();
    write_mib(m1, "big", 50);
    let behind = digest(m3).unwrap();
    assert!(behind.networks < 50, "node3 was cut off: {behind:?}");
    tb.restore(m3).unwrap();
    let start = Instant::now();
    let d = wait_identical(&[m1, m2, m3], Duration::from_secs(120));
    eprintln!("caught up with {} bytes in {:?}", d.bytes, start.elapsed());
    assert!(d.bytes > 50_000_000, "{d:?}");
    assert_eq!(d.networks, 51, "50 and ingress");
    wait_nodes(m1, "node3 reachable", Duration::from_secs(30), |r| {
        row(r, "node3").manager_status == "Reachable"
    });
}

#[test]
fn a_manager_joins_a_50_mb_state_while_another_catches_up() {
    // Snapshots every 10 entries and only 10 kept: both catch up from a
    // snapshot of the whole state.
    let tb = Testbed::up(4).unwrap();
    let (m1, m2, m3, m4) = (tb.host(0), tb.host(1), tb.host(2), tb.host(3));
    agent(m1, &["init", "--snapshot-interval", "10"]).unwrap();
    let mt = token(m1, "manager");
    for h in [m2, m3] {
        agent(h, &["join", "--token", &mt, "198.18.0.1:2377"]).unwrap();
    }
    wait_nodes(m1, "three managers", Duration::from_secs(30), |r| {
        r.iter().filter(|n| n.manager_status == "Reachable").count() == 2
    });
    kill9(m2);
    write_mib(m1, "big", 50);
    // node2 comes back and catches up while node4 joins.
    let _node2 = start_daemon(m2, &[]);
    let out = agent_env(m4, &[], &["join", "--token", &mt, "198.18.0.1:2377"])
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", daemon_log(m1), daemon_log(m4)));
    assert_eq!(out, "This node joined a swarm as a manager.\n");
    let d = wait_identical(&[m1, m2, m3, m4], Duration::from_secs(120));
    assert!(d.bytes > 50_000_000 && d.networks == 51, "{d:?}");
    // Four voters, one of them leading (leadership may move under load; what
    // must not happen is a cluster left without one).
    wait_nodes(m1, "four managers, one leading", Duration::from_secs(30), |r| {
        r.len() == 4
            && r.iter().filter(|n| n.manager_status == "Reachable").count() == 3
            && r.iter().any(|n| n.manager_status == "Leader")
    });
    // And the swarm still takes writes, from the new manager too.
    agent(m4, &["network", "create", "--driver", "overlay", "after-join"]).unwrap();
}

#[test]
fn a_cut_off_leader_stops_claiming_to_lead() {
    let tb = cluster(3, 3, FAST_RAFT, &[]);
    let (m1, m2) = (tb.host(0), tb.host(1));
    wait_nodes(m1, "node1 leads three managers", Duration::from_secs(30), |r| {
        row(r, "node1").manager_status == "Leader"
            && r.iter().filter(|n| n.manager_status == "Reachable").count() == 2
    });
    tb.cut(m1).unwrap();
    let cut = Instant::now();
    // Two election timeouts (600 ms) after its last quorum, plus slack.
    poll::until("node1 to say there is no leader", Duration::from_secs(10), || {
        match agent(m1, &["node", "ls"]) {
            Err(e) if stderr(&e) == NO_LEADER => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    let took = cut.elapsed();
    eprintln!("cut leader stopped leading after {took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    // Writes fail at once, with the same text.
    let start = Instant::now();
    let e = agent(m1, &["network", "create", "--driver", "overlay", "minority"]).unwrap_err();
    assert_eq!(stderr(&e), NO_LEADER);
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    // docker info shows the error in its swarm block, as Docker's does.
    let err = swarm_tests::swarm::docker(m1, &["info", "--format", "{{.Swarm.Error}}"]).unwrap();
    assert!(err.contains("The swarm does not have a leader"), "{err}");
    // The majority elects a leader and goes on.
    wait_nodes(m2, "a leader among node2 and node3", Duration::from_secs(20), |r| {
        r.iter().any(|n| n.manager_status == "Leader" && n.hostname != "node1")
    });
    agent(m2, &["network", "create", "--driver", "overlay", "majority"]).unwrap();
    // Healed, node1 follows the new leader and sees what was written.
    tb.restore(m1).unwrap();
    poll::until("node1 follows again", Duration::from_secs(20), || {
        let rows = node_ls(m1).map_err(|e| e.to_string())?;
        if row(&rows, "node1").manager_status == "Reachable" { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap();
    let nets = agent(m1, &["network", "ls"]).unwrap();
    assert!(nets.contains("majority") && !nets.contains("minority"), "{nets}");
}

#[test]
fn oversized_requests_are_refused_before_raft_and_change_nothing() {
    let tb = cluster(1, 1, &[], &[]);
    let m = tb.host(0);
    let before = digest(m).unwrap();
    // 2 MiB of labels: over the store's 1.5 MiB per change (Docker's).
    let (status, out) = api_post(m, "/networks/create", &network_with_labels("too-big", 2000));
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("request too large: the change is 1.95 MiB, the limit is 1.50 MiB"), "{out}");
    // 5 MiB: over the API's body limit.
    let (status, out) = api_post(m, "/networks/create", &network_with_labels("way-too-big", 5000));
    assert_eq!(status, 413, "{out}");
    assert!(out.contains("request body too large: the limit is 4 MiB"), "{out}");
    assert_eq!(digest(m).unwrap(), before, "nothing reached the store");
    // 1 MiB is fine.
    let (status, out) = api_post(m, "/networks/create", &network_with_labels("one-mib", 1000));
    assert_eq!(status, 201, "{out}");
}
