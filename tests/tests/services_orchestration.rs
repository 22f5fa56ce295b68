//! What the orchestrators do with real nodes and containers, through the
//! stock docker CLI: global services (and a node joining later), drain and
//! a node going Down, restart conditions and attempts, the task history
//! limit, an agent killed with running tasks, and managers joining a
//! cluster that runs hundreds of tasks. Needs root, runc or crun, docker.

use std::time::Duration;

use swarm_tests::{
    poll,
    services::{import_busybox, replicas, running_containers, service_ps, wait_replicas},
    swarm::{agent, cluster, daemon_log, docker, kill9, start_daemon, stderr, token, wait_nodes},
    testbed::Testbed,
};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn global_service_runs_one_task_per_node_and_on_nodes_that_join() {
    let tb = Testbed::up(4).unwrap();
    let hosts = tb.hosts();
    agent(&hosts[0], &["init"]).unwrap();
    let wt = token(&hosts[0], "worker");
    for h in &hosts[1..3] {
        agent(h, &["join", "--token", &wt, "198.18.0.1:2377"]).unwrap();
    }
    // The fourth host's daemon runs (and has the image) before it joins.
    let _d4 = start_daemon(&hosts[3], &[]);
    for h in hosts {
        import_busybox(h);
    }
    let m = &hosts[0];
    docker(
        m,
        &["service", "create", "-d", "--mode", "global", "--name", "mon", "busybox", "sleep", "100000"],
    )
    .unwrap();
    wait_replicas(&tb, "mon", "3/3", LONG);
    let per_host = |i: usize| running_containers(&tb).iter().filter(|r| r.host == i).count();
    assert_eq!((per_host(0), per_host(1), per_host(2)), (1, 1, 1));

    agent(&hosts[3], &["join", "--token", &wt, "198.18.0.1:2377"]).unwrap();
    wait_replicas(&tb, "mon", "4/4", LONG);
    let node4 = docker(&hosts[3], &["info", "--format", "{{.Swarm.NodeID}}"]).unwrap();
    let names: Vec<String> =
        running_containers(&tb).into_iter().filter(|r| r.host == 3).map(|r| r.name).collect();
    assert_eq!(names.len(), 1);
    assert!(
        names[0].starts_with(&format!("mon.{}.", node4.trim())),
        "global task names carry the node: {names:?}"
    );

    let e = stderr(&docker(m, &["service", "scale", "mon=2"]).unwrap_err());
    assert!(e.contains("scale can only be used with replicated or replicated-job mode"), "{e}");

    // Drained: its task goes and the service wants one task less.
    docker(m, &["node", "update", "--availability", "drain", "node2"]).unwrap();
    wait_replicas(&tb, "mon", "3/3", LONG);
    poll::until("node2's task to stop", LONG, || {
        if running_containers(&tb).iter().any(|r| r.host == 1) { Err("still running") } else { Ok(()) }
    })
    .unwrap();
}

#[test]
fn drained_and_down_nodes_lose_their_tasks() {
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "500ms"]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(m, &["service", "create", "-d", "--replicas", "3", "--name", "sl", "busybox", "sleep", "100000"])
        .unwrap();
    wait_replicas(&tb, "sl", "3/3", LONG);
    let on = |i: usize| running_containers(&tb).iter().filter(|r| r.host == i).count();
    assert_eq!((on(0), on(1), on(2)), (1, 1, 1), "one per node");

    // Drain node3: its task is replaced on the others at once.
    docker(m, &["node", "update", "--availability", "drain", "node3"]).unwrap();
    poll::until("node3's task to move", LONG, || {
        let c = running_containers(&tb);
        let n3 = c.iter().filter(|r| r.host == 2).count();
        if n3 == 0 && c.len() == 3 { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .unwrap();
    wait_replicas(&tb, "sl", "3/3", LONG);
    // Active again: nothing moves back, but a new task goes there.
    docker(m, &["node", "update", "--availability", "active", "node3"]).unwrap();
    docker(m, &["service", "scale", "-d", "sl=4"]).unwrap();
    wait_replicas(&tb, "sl", "4/4", LONG);
    assert_eq!(on(2), 1, "the new task goes to the emptiest node");

    // node2 cut off: once it is Down its tasks run elsewhere.
    tb.cut(tb.host(1)).unwrap();
    wait_nodes(m, "node2 to be Down", Duration::from_secs(20), |rows| {
        rows.iter().any(|r| r.hostname == "node2" && r.status == "Down")
    });
    poll::until("node2's task to run elsewhere", LONG, || {
        let rows = service_ps(m, "sl");
        let live: Vec<&Vec<String>> =
            rows.iter().filter(|r| r[4] == "Running" && r[5].starts_with("Running")).collect();
        if live.len() == 4 && live.iter().all(|r| r[3] != "node2") {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(m)));
    // Back: its old task is shut down there, not run twice.
    tb.restore(tb.host(1)).unwrap();
    poll::until("node2's stale task to stop", LONG, || {
        if running_containers(&tb).iter().any(|r| r.host == 1) {
            Err("still running on node2")
        } else {
            Ok(())
        }
    })
    .unwrap();
    wait_replicas(&tb, "sl", "4/4", LONG);
}

#[test]
fn agent_killed_with_running_tasks_re_adopts_them() {
    // The containers are made with runc; the agents come back with their
    // default runtime (crun where usable) and still drive them with runc.
    let tb = cluster(2, 1, &[("SWARM_RUNTIME", "runc")], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let (m, w) = (tb.host(0), tb.host(1));
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--replicas",
            "2",
            "--name",
            "keep",
            "--restart-delay",
            "0s",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "keep", "2/2", LONG);
    let before = running_containers(&tb);
    let tasks_before: Vec<String> = service_ps(m, "keep").iter().map(|r| r[0].clone()).collect();

    let pids: Vec<i32> = before
        .iter()
        .map(|r| {
            let pid = docker(tb.host(r.host), &["inspect", "--format", "{{.State.Pid}}", &r.id]).unwrap();
            pid.trim().parse().unwrap()
        })
        .collect();
    assert!(pids.iter().all(|p| *p > 0), "{pids:?}");
    for r in &before {
        let rt = docker(tb.host(r.host), &["inspect", "--format", "{{.HostConfig.Runtime}}", &r.id]).unwrap();
        assert_eq!(rt.trim(), "runc");
    }
    // Kill both agents (the worker's and the manager's): the containers run on.
    kill9(w);
    kill9(m);
    for pid in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "container process {pid} died with its agent"
        );
    }
    let _d1 = start_daemon(m, &[("SWARM_RUNTIME", "auto")]);
    let _d2 = start_daemon(w, &[("SWARM_RUNTIME", "auto")]);
    wait_replicas(&tb, "keep", "2/2", LONG);
    let default = docker(m, &["info", "--format", "{{.DefaultRuntime}}"]).unwrap();
    assert!(["runc", "crun"].contains(&default.trim()), "{default}");
    assert_eq!(running_containers(&tb), before, "the same containers, re-adopted");
    let tasks_after: Vec<String> = service_ps(m, "keep").iter().map(|r| r[0].clone()).collect();
    assert_eq!(tasks_after, tasks_before, "no task was replaced");

    // The restarted agent watches them: a kill is noticed and healed.
    let victim = &before[0];
    docker(tb.host(victim.host), &["kill", &victim.id]).unwrap();
    poll::until("the killed task to be replaced", LONG, || {
        let rows = service_ps(m, "keep");
        let failed = rows.iter().any(|r| r[5].starts_with("Failed") && r[6].contains("non-zero exit (137)"));
        let running = rows.iter().filter(|r| r[4] == "Running" && r[5].starts_with("Running")).count();
        if failed && running == 2 { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(tb.host(victim.host))));
    // Its replacement runs on the node's default runtime now.
    let now = running_containers(&tb);
    let new = now.iter().find(|r| !before.contains(r)).expect("a new container");
    let rt = docker(tb.host(new.host), &["inspect", "--format", "{{.HostConfig.Runtime}}", &new.id]).unwrap();
    let default = docker(tb.host(new.host), &["info", "--format", "{{.DefaultRuntime}}"]).unwrap();
    assert_eq!(rt.trim(), default.trim());
}

#[test]
fn restart_conditions_attempts_and_history_limit() {
    let tb = cluster(1, 1, &[], &[]);
    let m = tb.host(0);
    import_busybox(m);
    // on-failure, 2 attempts: the first run and two restarts, then no more.
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "flaky",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "2",
            "--restart-delay",
            "0s",
            "busybox",
            "sh",
            "-c",
            "exit 3",
        ],
    )
    .unwrap();
    poll::until("three failed tasks", LONG, || {
        let rows = service_ps(m, "flaky");
        let failed = rows
            .iter()
            .filter(|r| r[5].starts_with("Failed") && r[6] == "\"task: non-zero exit (3)\"")
            .count();
        if failed == 3 && rows.len() == 3 { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap();
    assert_eq!(replicas(m, "flaky").as_deref(), Some("0/1"));

    // none: a task that exits is not replaced, even with exit 0.
    docker(
        m,
        &["service", "create", "-d", "--name", "once", "--restart-condition", "none", "busybox", "true"],
    )
    .unwrap();
    poll::until("the task to complete", LONG, || {
        let rows = service_ps(m, "once");
        if rows.len() == 1 && rows[0][5].starts_with("Complete") { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap();

    // A history limit of 2: a crash-looping slot keeps the current task
    // and one old one.
    docker(m, &["swarm", "update", "--task-history-limit", "2"]).unwrap();
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "loop",
            "--restart-delay",
            "0s",
            "busybox",
            "sh",
            "-c",
            "sleep 0.2; exit 1",
        ],
    )
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    poll::until("six restarts", LONG, || {
        let rows = service_ps(m, "loop");
        assert!(rows.len() <= 3, "history limit 2 exceeded: {rows:?}");
        seen.extend(rows.iter().map(|r| r[0].clone()));
        if seen.len() >= 6 { Ok(()) } else { Err(format!("{} tasks so far", seen.len())) }
    })
    .unwrap();
}

#[test]
fn images_come_from_the_managers_and_missing_ones_reject_the_task() {
    let tb = cluster(2, 1, &[], &[]);
    let (m, w) = (tb.host(0), tb.host(1));
    import_busybox(m);
    assert_eq!(docker(w, &["images", "-q"]).unwrap(), "", "the worker starts without images");
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "far",
            "--constraint",
            "node.role==worker",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "far", "1/1", LONG);
    let id = |h| docker(h, &["image", "inspect", "--format", "{{.Id}}", "busybox"]).unwrap();
    assert_eq!(id(w), id(m), "the worker got the manager's image, same digest");

    docker(m, &["service", "create", "-d", "--name", "ghost", "nosuchimage:1"]).unwrap();
    poll::until("the task to be rejected", LONG, || {
        let rows = service_ps(m, "ghost");
        let rejected =
            rows.iter().any(|r| r[5].starts_with("Rejected") && r[6] == "\"No such image: nosuchimage:1\"");
        if rejected { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap();
}

/// `(applied index, digest)` of `h`'s own copy of the store.
fn store_copy(h: &swarm_tests::testbed::Host) -> Result<(u64, String, u64), String> {
    let out = agent(h, &["debug", "store"]).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok((
        v["applied"].as_u64().unwrap_or(0),
        v["sha256"].as_str().unwrap_or("").to_owned(),
        v["tasks"].as_u64().unwrap_or(0),
    ))
}

#[test]
fn managers_joining_a_cluster_with_hundreds_of_tasks_catch_up() {
    let tb = cluster(3, 1, &[], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--replicas",
            "300",
            "--name",
            "big",
            "--stop-grace-period",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "big", "300/300", Duration::from_secs(180));
    agent(m, &["node", "promote", "node2", "node3"]).unwrap();
    let copies = poll::until("identical copies on the three managers", LONG, || {
        let c: Vec<_> = tb.hosts().iter().map(store_copy).collect::<Result<_, _>>()?;
        if c.windows(2).all(|w| w[0] == w[1]) { Ok(c) } else { Err(format!("{c:?}")) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(tb.host(2))));
    assert!(copies[0].2 >= 300, "{copies:?}");
    // The new managers serve the services API from their copy and forward
    // changes: scale through one, see it converge from the other.
    let (m2, m3) = (tb.host(1), tb.host(2));
    assert_eq!(replicas(m2, "big").as_deref(), Some("300/300"));
    let ps = docker(m3, &["service", "ps", "-q", "big"]).unwrap();
    assert_eq!(ps.lines().count(), 300, "{ps}");
    docker(m3, &["service", "scale", "-d", "big=310"]).unwrap();
    poll::until("big to show 310/310 on node2", Duration::from_secs(120), || {
        let r = replicas(m2, "big");
        if r.as_deref() == Some("310/310") { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(m2)));
}

#[test]
fn engine_labels_place_tasks_and_bad_ones_stop_the_daemon() {
    use swarm_tests::swarm::agent_env;
    let tb = Testbed::up(3).expect("testbed");
    agent(tb.host(0), &["init"]).unwrap();
    let wt = token(tb.host(0), "worker");
    agent_env(
        tb.host(1),
        &[("SWARM_ENGINE_LABELS", "storage=ssd,zone=a")],
        &["join", "--token", &wt, "198.18.0.1:2377"],
    )
    .unwrap();
    agent(tb.host(2), &["join", "--token", &wt, "198.18.0.1:2377"]).unwrap();
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    let labels =
        docker(m, &["node", "inspect", "--format", "{{json .Description.Engine.Labels}}", "node2"]).unwrap();
    assert_eq!(labels.trim(), r#"{"storage":"ssd","zone":"a"}"#);
    let info = docker(tb.host(1), &["info", "--format", "{{json .Labels}}"]).unwrap();
    assert_eq!(info.trim(), r#"["storage=ssd","zone=a"]"#);
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--replicas",
            "3",
            "--name",
            "ssd",
            "--constraint",
            "engine.labels.storage==ssd",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "ssd", "3/3", LONG);
    let nodes: Vec<String> = service_ps(m, "ssd").iter().map(|r| r[3].clone()).collect();
    assert_eq!(nodes, ["node2", "node2", "node2"]);

    // A label without '=' is refused at start, with docker's words.
    let mut c = tb.host(2).command(swarm_tests::agent_bin()).unwrap();
    c.args(["daemon", "--label", "nonsense"]).env("SWARM_DATA_ROOT", tb.host(2).state_dir().join("other"));
    let out = c.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad attribute format: nonsense"), "{out:?}");
    assert!(!tb.host(2).state_dir().join("other").exists(), "a refused start made its data root");
}
