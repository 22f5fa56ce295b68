//! `node ...` and `leave` on a real cluster, checked against docker's CLI
//! run on the same daemon, and docker's error texts. Needs root.

use std::time::Duration;

use swarm_tests::{
    swarm::{agent, cluster, docker, node_ls, row, stderr, wait_nodes},
    testbed::Host,
};

/// Our CLI and docker's print the same bytes for the same command (docker
/// says `docker swarm join` where we say `swarm-agent join`).
fn same_as_docker(h: &Host, ours: &[&str], theirs: &[&str]) {
    let a = agent(h, ours).unwrap_or_else(|e| panic!("swarm-agent {ours:?}: {e}"));
    let d = docker(h, theirs).unwrap_or_else(|e| panic!("docker {theirs:?}: {e}"));
    assert_eq!(
        a,
        d.replace("docker swarm join", "swarm-agent join"),
        "swarm-agent {ours:?} vs docker {theirs:?}"
    );
}

fn fails_like_docker(h: &Host, ours: &[&str], theirs: &[&str], expected: &str) {
    let a = stderr(&agent(h, ours).expect_err("must fail"));
    let d = stderr(&docker(h, theirs).expect_err("docker must fail too"));
    assert_eq!(a, format!("{expected}\n"), "swarm-agent {ours:?}");
    assert_eq!(d, format!("{expected}\n"), "docker {theirs:?}");
}

#[test]
fn node_commands_print_what_docker_prints() {
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "300ms"]);
    let m = tb.host(0);
    wait_nodes(m, "all ready", Duration::from_secs(20), |r| {
        r.len() == 3 && r.iter().all(|n| n.status == "Ready")
    });
    same_as_docker(m, &["node", "ls"], &["node", "ls"]);
    same_as_docker(m, &["node", "ls", "-q"], &["node", "ls", "-q"]);
    same_as_docker(m, &["node", "ls", "-f", "role=worker"], &["node", "ls", "-f", "role=worker"]);
    same_as_docker(m, &["node", "inspect", "self"], &["node", "inspect", "self"]);
    same_as_docker(m, &["node", "inspect", "--pretty", "self"], &["node", "inspect", "--pretty", "self"]);
    same_as_docker(m, &["node", "inspect", "node2", "node3"], &["node", "inspect", "node2", "node3"]);
    same_as_docker(m, &["node", "ps"], &["node", "ps"]);
    same_as_docker(m, &["join-token", "worker"], &["swarm", "join-token", "worker"]);
    same_as_docker(m, &["join-token", "manager"], &["swarm", "join-token", "manager"]);
    fails_like_docker(
        m,
        &["node", "inspect", "nosuch"],
        &["node", "inspect", "nosuch"],
        "Error response from daemon: node nosuch not found",
    );

    let rows = node_ls(m).unwrap();
    let header = agent(m, &["node", "ls"]).unwrap();
    assert!(header.starts_with(
        "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n"
    ));
    assert_eq!(rows.iter().map(|r| r.hostname.as_str()).collect::<Vec<_>>(), ["node1", "node2", "node3"]);
    assert!(rows[0].is_self && !rows[1].is_self);
    assert_eq!(rows[0].id.len(), 25, "full IDs");
}

#[test]
fn promote_demote_update_remove_and_leave() {
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "300ms"]);
    let (m, w2, w3) = (tb.host(0), tb.host(1), tb.host(2));
    wait_nodes(m, "all ready", Duration::from_secs(20), |r| {
        r.len() == 3 && r.iter().all(|n| n.status == "Ready")
    });
    let id = |name: &str| row(&node_ls(m).unwrap(), name).id.clone();

    // Refusals, each leaving the swarm as it was.
    fails_like_docker(
        m,
        &["node", "demote", "node1"],
        &["node", "demote", "node1"],
        "Error response from daemon: attempting to demote the last manager of the swarm",
    );
    let id1 = id("node1");
    let e = stderr(&agent(m, &["node", "rm", "node1"]).unwrap_err());
    assert_eq!(
        e,
        format!(
            "Error response from daemon: node {id1} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal\n"
        )
    );
    let id3 = id("node3");
    let e = stderr(&agent(m, &["node", "rm", "node3"]).unwrap_err());
    assert_eq!(e, format!("Error response from daemon: node {id3} is not down and can't be removed\n"));
    let e = stderr(&agent(m, &["node", "update", "--label-rm", "nope", "node3"]).unwrap_err());
    assert_eq!(e, "key nope doesn't exist in node's labels\n");
    fails_like_docker(
        m,
        &["node", "update", "--availability", "bogus", "node3"],
        &["node", "update", "--availability", "bogus", "node3"],
        "Error response from daemon: invalid Availability: \"bogus\"",
    );
    assert_eq!(node_ls(m).unwrap().len(), 3);

    // Updates.
    assert_eq!(
        agent(m, &["node", "update", "--availability", "drain", "--label-add", "zone=a", "node3"]).unwrap(),
        "node3\n"
    );
    assert_eq!(row(&node_ls(m).unwrap(), "node3").availability, "Drain");
    let labels = docker(m, &["node", "inspect", "node3", "--format", "{{json .Spec.Labels}}"]).unwrap();
    assert_eq!(labels, "{\"zone\":\"a\"}\n");
    agent(m, &["node", "update", "--label-rm", "zone", "--availability", "active", "node3"]).unwrap();
    assert_eq!(row(&node_ls(m).unwrap(), "node3").availability, "Active");

    // Promotion: the node gets a manager certificate and joins Raft.
    assert_eq!(
        agent(m, &["node", "promote", "node2"]).unwrap(),
        "Node node2 promoted to a manager in the swarm.\n"
    );
    wait_nodes(m, "node2 to become a Raft member", Duration::from_secs(30), |r| {
        row(r, "node2").manager_status == "Reachable"
    });
    wait_nodes(w2, "node2 to serve the control API", Duration::from_secs(30), |r| r.len() == 3);
    let id2 = id("node2");
    assert_eq!(
        agent(m, &["node", "promote", "node2"]).unwrap(),
        format!("Node {id2} is already a manager.\n")
    );
    // Demotion: out of Raft, back to a worker certificate.
    assert_eq!(agent(m, &["node", "demote", "node2"]).unwrap(), "Manager node2 demoted in the swarm.\n");
    wait_nodes(m, "node2 to leave Raft", Duration::from_secs(30), |r| {
        row(r, "node2").manager_status.is_empty()
    });
    swarm_tests::poll::until("node2 to lose the control API", Duration::from_secs(30), || {
        match agent(w2, &["node", "ls"]) {
            Err(e) if stderr(&e).contains("This node is not a swarm manager") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .unwrap();
    assert_eq!(agent(m, &["node", "demote", "node2"]).unwrap(), format!("Node {id2} is already a worker.\n"));

    // A worker leaves; it goes down; then it can be removed.
    assert_eq!(agent(w3, &["leave"]).unwrap(), "Node left the swarm.\n");
    wait_nodes(m, "node3 down", Duration::from_secs(10), |r| row(r, "node3").status == "Down");
    assert_eq!(agent(m, &["node", "rm", "node3"]).unwrap(), "node3\n");
    assert_eq!(node_ls(m).unwrap().len(), 2);
    // rm --force works on a live node.
    assert_eq!(agent(m, &["node", "rm", "--force", "node2"]).unwrap(), "node2\n");
    assert_eq!(node_ls(m).unwrap().len(), 1);

    // The last manager is warned, in docker's words.
    let e = stderr(&agent(m, &["leave"]).unwrap_err());
    assert_eq!(
        e,
        "Error response from daemon: You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. \n"
    );
    assert_eq!(agent(m, &["leave", "--force"]).unwrap(), "Node left the swarm.\n");
    let e = stderr(&agent(m, &["node", "ls"]).unwrap_err());
    assert_eq!(
        e,
        "Error response from daemon: This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.\n"
    );
}

#[test]
fn a_manager_leaving_a_healthy_swarm_is_warned() {
    let tb = cluster(3, 3, &[], &[]);
    let m = tb.host(1);
    wait_nodes(tb.host(0), "three reachable managers", Duration::from_secs(20), |r| {
        r.iter().filter(|n| n.manager_status == "Reachable" || n.manager_status == "Leader").count() == 3
    });
    let e = stderr(&agent(m, &["leave"]).unwrap_err());
    assert_eq!(
        e,
        "Error response from daemon: You are attempting to leave the swarm on a node that is participating as a manager. The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.\n"
    );
}
