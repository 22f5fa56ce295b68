//! Failures: silent nodes go down and come back, the leader dies and another
//! takes over, a swarm that lost its quorum fails fast and is recovered with
//! `init --force-new-cluster`. Needs root.

use std::time::{Duration, Instant};

use swarm_tests::{
    swarm::{FAST_RAFT, agent, cluster, daemon_log, kill9, node_ls, row, start_daemon, stderr, wait_nodes},
    testbed::Host,
};

const NO_LEADER: &str = "Error response from daemon: The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.\n";

fn label(h: &Host, node: &str, kv: &str) -> Result<String, swarm_tests::cmd::CmdError> {
    agent(h, &["node", "update", "--label-add", kv, node])
}

fn leader(rows: &[swarm_tests::swarm::NodeRow]) -> Option<String> {
    rows.iter().find(|r| r.manager_status == "Leader").map(|r| r.hostname.clone())
}

#[test]
fn a_silent_node_is_down_within_three_heartbeats_and_ready_when_back() {
    let tb = cluster(2, 1, &[], &["--dispatcher-heartbeat", "500ms"]);
    let (m, w) = (tb.host(0), tb.host(1));
    wait_nodes(m, "both ready", Duration::from_secs(20), |r| {
        r.len() == 2 && r.iter().all(|n| n.status == "Ready")
    });
    tb.cut(w).unwrap();
    let cut = Instant::now();
    wait_nodes(m, "node2 down", Duration::from_secs(10), |r| row(r, "node2").status == "Down");
    let took = cut.elapsed();
    // Its last heartbeat came at most one period before the cut, and it is
    // down 3 periods after that (exact timing: the dispatcher's unit tests).
    // Generous slack on top for a loaded 2-core CI machine.
    assert!(
        took <= Duration::from_millis(1500 + 1000),
        "down after {took:?}, far more than 3 heartbeat periods"
    );
    assert!(
        took >= Duration::from_millis(900),
        "down after only {took:?}: missed heartbeats are not tolerated"
    );
    let msg = swarm_tests::swarm::docker(m, &["node", "inspect", "node2", "--format", "{{.Status.Message}}"])
        .unwrap();
    assert_eq!(msg, "heartbeat failure\n");
    tb.restore(w).unwrap();
    wait_nodes(m, "node2 ready again", Duration::from_secs(10), |r| row(r, "node2").status == "Ready");
}

#[test]
fn followers_forward_writes_to_the_leader() {
    let tb = cluster(3, 2, &[], &[]);
    let (m1, m2) = (tb.host(0), tb.host(1));
    wait_nodes(m1, "node2 reachable, all ready", Duration::from_secs(20), |r| {
        row(r, "node2").manager_status == "Reachable" && r.len() == 3 && r.iter().all(|n| n.status == "Ready")
    });
    assert_eq!(label(m2, "node3", "written-by=follower").unwrap(), "node3\n");
    let out = swarm_tests::swarm::docker(
        m1,
        &["node", "inspect", "node3", "--format", "{{index .Spec.Labels \"written-by\"}}"],
    )
    .unwrap();
    assert_eq!(out, "follower\n");
}

#[test]
fn the_swarm_survives_its_leader_and_the_leader_comes_back_as_follower() {
    let tb = cluster(3, 3, FAST_RAFT, &["--dispatcher-heartbeat", "500ms"]);
    let (m1, m2, m3) = (tb.host(0), tb.host(1), tb.host(2));
    wait_nodes(m1, "three managers", Duration::from_secs(20), |r| {
        r.iter().filter(|n| n.manager_status == "Reachable").count() == 2
            && leader(r).as_deref() == Some("node1")
    });
    kill9(m1);
    let killed = Instant::now();
    swarm_tests::poll::until("a write on a survivor", Duration::from_secs(20), || {
        label(m2, "node3", "after=failover")
    })
    .unwrap();
    eprintln!("first write after the leader died: {:?}", killed.elapsed());
    let rows = wait_nodes(m3, "a new leader", Duration::from_secs(10), |r| {
        matches!(leader(r).as_deref(), Some("node2" | "node3"))
            && row(r, "node1").manager_status == "Unreachable"
    });
    let new_leader = leader(&rows).unwrap();

    // The old leader restarts from disk and rejoins as a follower.
    let _daemon = start_daemon(m1, FAST_RAFT);
    let rows = wait_nodes(m1, "node1 back as a follower", Duration::from_secs(20), |r| {
        r.len() == 3 && row(r, "node1").manager_status == "Reachable" && row(r, "node1").is_self
    });
    assert_eq!(leader(&rows).as_deref(), Some(new_leader.as_str()), "leadership stays where it moved");
    label(m1, "node2", "from=old-leader").unwrap();
    wait_nodes(m2, "node1 ready", Duration::from_secs(10), |r| row(r, "node1").status == "Ready");
}

#[test]
fn without_quorum_writes_fail_fast_and_force_new_cluster_recovers() {
    let tb = cluster(4, 3, FAST_RAFT, &["--dispatcher-heartbeat", "500ms"]);
    let (m1, m2, m3, w) = (tb.host(0), tb.host(1), tb.host(2), tb.host(3));
    wait_nodes(m1, "three managers and a worker", Duration::from_secs(20), |r| {
        r.len() == 4 && r.iter().filter(|n| n.manager_status == "Reachable").count() == 2
    });
    let m3_id = row(&node_ls(m3).unwrap(), "node3").id.clone();
    kill9(m1);
    kill9(m2);
    // Every write fails, and fails fast, with docker's message.
    for _ in 0..3 {
        let start = Instant::now();
        let e = label(m3, "node4", "x=y").expect_err("no quorum");
        assert_eq!(stderr(&e), NO_LEADER);
        assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    }
    let e = agent(m3, &["node", "ls"]).expect_err("no leader to read from either");
    assert_eq!(stderr(&e), NO_LEADER);

    // Recover on the survivor: a one-manager swarm that keeps its nodes.
    let out = agent(m3, &["init", "--force-new-cluster"]).unwrap();
    assert!(
        out.starts_with(&format!("Swarm initialized: current node ({m3_id}) is now a manager.\n")),
        "{out}"
    );
    let rows = wait_nodes(m3, "the recovered swarm", Duration::from_secs(20), |r| {
        r.len() == 4 && row(r, "node4").status == "Ready" && row(r, "node1").status == "Down"
    });
    assert_eq!(row(&rows, "node3").manager_status, "Leader");
    for gone in ["node1", "node2"] {
        assert_eq!(row(&rows, gone).manager_status, "", "{gone} is no longer a manager");
        assert_eq!(row(&rows, gone).status, "Down");
    }
    label(m3, "node4", "recovered=yes").unwrap();
    let info = agent(m3, &["info"]).unwrap();
    assert!(info.contains("  Managers: 1\n") && info.contains("  Nodes: 4\n"), "{info}");
    // The worker keeps working with the recovered swarm.
    assert!(agent(w, &["info"]).unwrap().contains("Swarm: active"));
}

#[test]
fn a_new_manager_catches_up_from_a_snapshot() {
    // Snapshots every 10 entries, keeping 10: a manager joining after 40
    // writes cannot get the early log and must install a snapshot.
    let tb = cluster(4, 2, FAST_RAFT, &["--snapshot-interval", "10"]);
    let (m1, m2, m3) = (tb.host(0), tb.host(1), tb.host(2));
    // Ready first: a node turning ready bumps its version, which would make
    // a concurrent `node update` fail as out of sequence (as with Docker).
    wait_nodes(m1, "two managers, all ready", Duration::from_secs(20), |r| {
        row(r, "node2").manager_status == "Reachable" && r.len() == 4 && r.iter().all(|n| n.status == "Ready")
    });
    for i in 0..40 {
        label(m1, "node4", &format!("n={i}")).unwrap();
    }
    agent(m1, &["node", "promote", "node3"]).unwrap();
    wait_nodes(m1, "node3 in raft", Duration::from_secs(30), |r| {
        row(r, "node3").manager_status == "Reachable"
    });
    // Reads go to the leader, so node3's own copy is only seen after
    // recovering from it. Make sure it knows the labels are committed: with
    // node2 gone, every write needs node3, and the appends that carry it
    // tell node3 the leader's commit index.
    kill9(m2);
    for i in 0..2 {
        swarm_tests::poll::until("a write acknowledged by node3", Duration::from_secs(20), || {
            label(m1, "node2", &format!("w={i}"))
        })
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", daemon_log(m1), daemon_log(m3)));
    }
    // Its copy survives on its own: recover the swarm from it alone (like
    // Docker, --force-new-cluster keeps what this manager knew committed).
    kill9(m1);
    agent(m3, &["init", "--force-new-cluster"]).unwrap();
    let out = swarm_tests::swarm::docker(
        m3,
        &["node", "inspect", "node4", "--format", "{{index .Spec.Labels \"n\"}}"],
    )
    .unwrap();
    assert_eq!(out, "39\n");
}
