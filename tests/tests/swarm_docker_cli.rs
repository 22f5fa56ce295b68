//! The stock docker CLI drives the agent through its Docker API socket
//! (`DOCKER_HOST=unix://...`): `swarm init`, `swarm join-token`, `swarm join`,
//! `node ls`, `node inspect self`, `info`, `version`. Needs root and docker's CLI.

use regex::Regex;
use swarm_tests::{
    swarm::{docker, start_daemon},
    testbed::Testbed,
};

#[test]
fn docker_cli_inits_joins_and_inspects() {
    let tb = Testbed::up(3).unwrap();
    let (m, w) = (tb.host(0), tb.host(1));
    let _d1 = start_daemon(m, &[]);
    let _d2 = start_daemon(w, &[]);

    let version = docker(m, &["version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}"]).unwrap();
    assert_eq!(version, "1.50 linux\n");

    let out = docker(m, &["swarm", "init"]).unwrap();
    let re = Regex::new(
        "^Swarm initialized: current node \\(([0-9a-z]{25})\\) is now a manager\\.\n\nTo add a worker to this swarm, run the following command:\n\n    docker swarm join --token (SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}) 198\\.18\\.0\\.1:2377\n\nTo add a manager to this swarm, run 'docker swarm join-token manager' and follow the instructions\\.\n$",
    )
    .unwrap();
    let caps = re.captures(&out).unwrap_or_else(|| panic!("docker swarm init printed:\n{out}"));
    let (id, worker_token) = (caps[1].to_owned(), caps[2].to_owned());

    // Our `init` prints the same bytes, with `swarm-agent` for `docker swarm`.
    let ours = swarm_tests::swarm::agent(tb.host(2), &["init"]).unwrap();
    let normalize = |s: &str| {
        let ids = Regex::new("[0-9a-z]{25}").unwrap();
        let tokens = Regex::new("SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}").unwrap();
        let addrs = Regex::new(r"198\.18\.0\.\d+").unwrap();
        let s = tokens.replace_all(s, "TOKEN");
        let s = ids.replace_all(&s, "ID");
        addrs.replace_all(&s, "ADDR").into_owned()
    };
    let theirs = out.replace("docker swarm join", "swarm-agent join");
    assert_eq!(normalize(&ours), normalize(&theirs));

    let out = docker(m, &["swarm", "join-token", "worker"]).unwrap();
    assert_eq!(
        out,
        format!(
            "To add a worker to this swarm, run the following command:\n\n    docker swarm join --token {worker_token} 198.18.0.1:2377\n\n"
        )
    );
    assert_eq!(docker(m, &["swarm", "join-token", "-q", "worker"]).unwrap(), format!("{worker_token}\n"));

    let out = docker(w, &["swarm", "join", "--token", &worker_token, "198.18.0.1:2377"]).unwrap();
    assert_eq!(out, "This node joined a swarm as a worker.\n");

    let ls = docker(m, &["node", "ls"]).unwrap();
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(
        lines[0],
        "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION"
    );
    assert_eq!(lines.len(), 3, "{ls}");
    assert!(lines[1].starts_with(&format!("{id} *   node1      Ready     Active         Leader")), "{ls}");
    assert!(lines[2].contains("   node2      "), "{ls}");

    let inspect = docker(m, &["node", "inspect", "self"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v[0]["ID"], id.as_str());
    assert_eq!(v[0]["Spec"]["Role"], "manager");
    assert_eq!(v[0]["ManagerStatus"]["Leader"], true);
    assert_eq!(v[0]["ManagerStatus"]["Addr"], "198.18.0.1:2377");
    assert_eq!(v[0]["Description"]["Hostname"], "node1");
    assert!(inspect.starts_with("[\n    {\n        \"ID\": "), "docker's 4-space JSON");

    let info = docker(m, &["info"]).unwrap();
    for line in [
        " Swarm: active\n",
        &format!("  NodeID: {id}\n"),
        "  Is Manager: true\n",
        "  Managers: 1\n",
        "  Nodes: 2\n",
        "  Data Path Port: 4789\n",
        "  Node Address: 198.18.0.1\n",
        "  Manager Addresses:\n   198.18.0.1:2377\n",
    ] {
        assert!(info.contains(line), "{line:?} missing from docker info:\n{info}");
    }
    let info = docker(w, &["info"]).unwrap();
    assert!(info.contains(" Swarm: active\n") && info.contains("  Is Manager: false\n"), "{info}");
    assert!(info.contains("  Node Address: 198.18.0.2\n"), "{info}");
    // Managers-only commands from the worker: docker's text.
    let e = docker(w, &["node", "ls"]).unwrap_err();
    assert!(swarm_tests::swarm::stderr(&e).contains(
        "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state."
    ));
}
