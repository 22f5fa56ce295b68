//! `service update` and `service rollback` from the stock docker CLI on
//! real containers: a rolling update at the configured pace, `PreviousSpec`
//! and `UpdateStatus`, a manual rollback, and a failing update that pauses
//! or rolls back per `--update-failure-action`. Needs root, runc and
//! docker's CLI.

use std::time::Duration;

use swarm_tests::{
    poll,
    services::{
        WHO, busybox_cluster, create_busybox, import_busybox, running_containers, wait_replicas,
        who_from_host,
    },
    swarm::{cluster_with_outsiders, daemon_log, docker},
    testbed::Host,
};

const LONG: Duration = Duration::from_secs(90);

/// `state|message` of the service's update, or empty.
fn update_status(m: &Host) -> String {
    docker(
        m,
        &[
            "service",
            "inspect",
            "--format",
            "{{if .UpdateStatus}}{{.UpdateStatus.State}}|{{.UpdateStatus.Message}}{{end}}",
            "web",
        ],
    )
    .unwrap()
    .trim()
    .to_owned()
}

/// (task ID, args, state, status timestamp) of every task that should run.
fn live_tasks(m: &Host) -> Vec<(String, String, String, String)> {
    let ids = docker(m, &["service", "ps", "-q", "--filter", "desired-state=running", "web"]).unwrap();
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let v = docker(
            m,
            &[
                "inspect",
                "--type",
                "task",
                "--format",
                "{{.ID}};{{json .Spec.ContainerSpec.Args}};{{.Status.State}};{{.Status.Timestamp.UnixNano}}",
                id,
            ],
        );
        // A task reaped between the two calls.
        let Ok(v) = v else { continue };
        let f: Vec<&str> = v.trim().splitn(4, ';').collect();
        out.push((f[0].to_owned(), f[1].to_owned(), f[2].to_owned(), f[3].to_owned()));
    }
    out
}

fn wait_status(m: &Host, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    poll::until(what, LONG, || {
        last = update_status(m);
        if ok(&last) { Ok(()) } else { Err(last.clone()) }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            docker(m, &["service", "ps", "--no-trunc", "web"]).unwrap_or_default(),
            daemon_log(m)
        )
    });
    last
}

/// Waits until all `n` live tasks run `args`.
fn wait_running(m: &Host, n: usize, args: &str) {
    poll::until(&format!("{n} tasks running {args}"), LONG, || {
        let t = live_tasks(m);
        let ok = t.iter().filter(|t| t.1 == args && t.2 == "running").count();
        if ok == n && t.len() == n { Ok(()) } else { Err(format!("{t:?}")) }
    })
    .unwrap_or_else(|e| {
        panic!("{e}\n{}", docker(m, &["service", "ps", "--no-trunc", "web"]).unwrap_or_default())
    });
}

#[test]
fn rolling_update_paces_rolls_back_and_handles_failures() {
    let tb = busybox_cluster(3);
    let m = tb.host(0);
    create_busybox(
        m,
        "web",
        &["--replicas", "3", "--update-delay", "1s", "--update-monitor", "1s", "--stop-grace-period", "1s"],
        &["sleep", "100000"],
    );
    let v1 = r#"["sleep","100000"]"#;
    wait_running(m, 3, v1);
    let before: Vec<String> = live_tasks(m).into_iter().map(|t| t.0).collect();
    assert_eq!(update_status(m), "", "a new service has no update status");

    // A change to the task template rolls every slot, one at a time, a
    // second apart.
    docker(m, &["service", "update", "-d", "--args", "sleep 200000", "web"]).unwrap();
    let v2 = r#"["sleep","200000"]"#;
    assert!(update_status(m).is_empty() || update_status(m).starts_with("updating|"));
    let done = wait_status(m, "the update to complete", |s| s.starts_with("completed|"));
    assert_eq!(done, "completed|update completed");
    wait_running(m, 3, v2);
    let after = live_tasks(m);
    assert!(after.iter().all(|t| !before.contains(&t.0)), "every task replaced: {before:?} {after:?}");
    let mut started: Vec<i128> = after.iter().map(|t| t.3.parse().unwrap()).collect();
    started.sort_unstable();
    for w in started.windows(2) {
        assert!(w[1] - w[0] >= 900_000_000, "--update-delay 1s between slots: {started:?}");
    }
    let prev = docker(
        m,
        &["service", "inspect", "--format", "{{json .PreviousSpec.TaskTemplate.ContainerSpec.Args}}", "web"],
    )
    .unwrap();
    assert_eq!(prev.trim(), v1);
    let old = docker(m, &["service", "ps", "-q", "--filter", "desired-state=shutdown", "web"]).unwrap();
    for id in &before {
        assert!(old.contains(&id[..12]), "old task {id} kept as history: {old}");
    }

    // Manual rollback: the previous spec comes back, rolled the same way.
    docker(m, &["service", "rollback", "-d", "web"]).unwrap();
    let done = wait_status(m, "the rollback to complete", |s| s.starts_with("rollback_completed|"));
    assert_eq!(done, "rollback_completed|rollback completed");
    wait_running(m, 3, v1);

    // Scaling and labels are not an update: no task is replaced.
    let ids: Vec<String> = live_tasks(m).into_iter().map(|t| t.0).collect();
    docker(m, &["service", "update", "-d", "--replicas", "3", "--label-add", "x=1", "web"]).unwrap();
    wait_running(m, 3, v1);
    let same: Vec<String> = live_tasks(m).into_iter().map(|t| t.0).collect();
    assert_eq!(sorted(same), sorted(ids), "a label change replaces no task");

    // --force replaces every task without a change.
    let ids: Vec<String> = live_tasks(m).into_iter().map(|t| t.0).collect();
    docker(m, &["service", "update", "-d", "--force", "web"]).unwrap();
    wait_status(m, "the forced update to complete", |s| s.starts_with("completed|"));
    wait_running(m, 3, v1);
    let forced: Vec<String> = live_tasks(m).into_iter().map(|t| t.0).collect();
    assert!(forced.iter().all(|t| !ids.contains(t)), "--force replaced every task: {ids:?} {forced:?}");

    // A failing new version with the default failure action pauses after
    // the first slot; the others keep the old version.
    docker(m, &["service", "update", "-d", "--args", "sh -c 'exit 1'", "web"]).unwrap();
    let paused = wait_status(m, "the update to pause", |s| s.starts_with("paused|"));
    assert!(
        paused.starts_with("paused|update paused due to failure or early termination of task "),
        "{paused}"
    );
    let t = live_tasks(m);
    assert!(t.iter().filter(|t| t.1 == v1 && t.2 == "running").count() >= 2, "old version kept: {t:?}");

    // --update-failure-action rollback: the failing update goes back.
    docker(
        m,
        &["service", "update", "-d", "--args", "sleep 300000", "--update-failure-action", "rollback", "web"],
    )
    .unwrap();
    let v3 = r#"["sleep","300000"]"#;
    wait_status(m, "the update to complete", |s| s.starts_with("completed|"));
    wait_running(m, 3, v3);
    docker(m, &["service", "update", "-d", "--args", "sh -c 'exit 1'", "web"]).unwrap();
    let rolled = wait_status(m, "the rollback on failure", |s| s.starts_with("rollback_completed|"));
    assert_eq!(rolled, "rollback_completed|rollback completed");
    wait_running(m, 3, v3);

    // Nothing to roll back to after a rollback on failure (swarmkit clears
    // the previous spec).
    let err = docker(m, &["service", "rollback", "-d", "web"]).unwrap_err();
    assert!(swarm_tests::swarm::stderr(&err).contains("does not have a previous spec"), "{err}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn start_first_update_fails_no_request_through_the_published_port() {
    let tb = cluster_with_outsiders(2, 1, 1, &[], &[]);
    let m = tb.host(0);
    let outside = tb.host(2);
    for h in &tb.hosts()[..2] {
        import_busybox(h);
    }
    // One task: stop-first would leave the port with no backend.
    create_busybox(
        m,
        "web",
        &["--replicas", "1", "-p", "7080:80", "--update-order", "start-first", "--update-monitor", "1s"],
        &["sh", "-c", WHO],
    );
    wait_replicas(&tb, "web", "1/1", LONG);
    let urls = ["http://198.18.0.1:7080/cgi-bin/who", "http://198.18.0.2:7080/cgi-bin/who"];
    for u in urls {
        poll::until(&format!("{u} to answer"), LONG, || who_from_host(outside, u)).unwrap();
    }
    let old: std::collections::BTreeSet<String> =
        (0..20).map(|i| who_from_host(outside, urls[i % 2]).unwrap().0).collect();

    // A client loops over new connections, through both nodes, while every
    // task is replaced new-before-old.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (done, failures, seen) = std::thread::scope(|s| {
        let client = s.spawn(|| {
            let (mut done, mut failures, mut seen) = (0usize, Vec::new(), std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match who_from_host(outside, urls[done % 2]) {
                    Ok((h, _)) => {
                        seen.insert(h);
                    }
                    Err(e) => failures.push(e),
                }
                done += 1;
            }
            (done, failures, seen)
        });
        docker(m, &["service", "update", "-d", "--env-add", "V=2", "web"]).unwrap();
        wait_status(m, "the start-first update to complete", |st| st.starts_with("completed|"));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().unwrap()
    });
    assert!(
        failures.is_empty(),
        "{} of {done} requests failed during the update: {failures:?}",
        failures.len()
    );
    let new: Vec<&String> = seen.iter().filter(|h| !old.contains(*h)).collect();
    assert!(!new.is_empty(), "the new tasks answered during the update: {seen:?} (old {old:?})");
    eprintln!("{done} requests during the start-first update, none failed");
    let after: std::collections::BTreeSet<String> =
        (0..20).map(|i| who_from_host(outside, urls[i % 2]).unwrap().0).collect();
    assert!(after.is_disjoint(&old), "only new tasks answer after the update: {after:?} {old:?}");
}

/// Leaf paths (JSON pointers) where `a` and `b` differ.
fn diff(a: &serde_json::Value, b: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let null = serde_json::Value::Null;
                diff(x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), &format!("{at}/{k}"), out);
            }
        }
        (Array(x), Array(y)) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff(p, q, &format!("{at}/{i}"), out);
            }
        }
        _ if a != b => out.push(at.to_owned()),
        _ => {}
    }
}

#[test]
fn each_update_flag_changes_only_what_it_names() {
    let tb = busybox_cluster(1);
    let m = tb.host(0);
    docker(m, &["network", "create", "-d", "overlay", "extra"]).unwrap();
    create_busybox(m, "web", &["--stop-grace-period", "1s"], &["sleep", "100000"]);
    let spec = || -> serde_json::Value {
        serde_json::from_str(
            &docker(m, &["service", "inspect", "--format", "{{json .Spec}}", "web"]).unwrap(),
        )
        .unwrap()
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&["--env-add", "A=1"], &["/TaskTemplate/ContainerSpec/Env"]),
        (&["--env-rm", "A"], &["/TaskTemplate/ContainerSpec/Env"]),
        (&["--args", "sleep 5000"], &["/TaskTemplate/ContainerSpec/Args"]),
        (&["--replicas", "2"], &["/Mode/Replicated/Replicas"]),
        (&["--label-add", "a=b"], &["/Labels"]),
        (&["--label-rm", "a"], &["/Labels"]),
        (&["--container-label-add", "c=d"], &["/TaskTemplate/ContainerSpec/Labels"]),
        (&["--constraint-add", "node.role==manager"], &["/TaskTemplate/Placement"]),
        (&["--placement-pref-add", "spread=node.labels.zone"], &["/TaskTemplate/Placement"]),
        (&["--mount-add", "type=tmpfs,target=/scratch"], &["/TaskTemplate/ContainerSpec/Mounts"]),
        (&["--limit-memory", "64M"], &["/TaskTemplate/Resources/Limits"]),
        (&["--reserve-cpu", "0.1"], &["/TaskTemplate/Resources/Reservations"]),
        (&["--restart-condition", "on-failure"], &["/TaskTemplate/RestartPolicy"]),
        (&["--health-cmd", "true", "--health-interval", "1s"], &["/TaskTemplate/ContainerSpec/Healthcheck"]),
        (&["--stop-signal", "SIGINT"], &["/TaskTemplate/ContainerSpec/StopSignal"]),
        (&["--publish-add", "7090:80"], &["/EndpointSpec"]),
        (&["--network-add", "extra"], &["/TaskTemplate/Networks"]),
        (&["--update-parallelism", "3"], &["/UpdateConfig"]),
        (&["--rollback-delay", "2s"], &["/RollbackConfig"]),
        (&["--force"], &["/TaskTemplate/ForceUpdate"]),
    ];
    for (flags, allowed) in cases {
        let before = spec();
        let mut a = vec!["service", "update", "-d"];
        a.extend_from_slice(flags);
        a.push("web");
        docker(m, &a).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        let after = spec();
        let mut changed = Vec::new();
        diff(&before, &after, "", &mut changed);
        assert!(!changed.is_empty(), "{flags:?} changed nothing");
        for c in &changed {
            assert!(
                allowed.iter().any(|p| c.starts_with(p)),
                "{flags:?} changed {c} (allowed {allowed:?}): {changed:?}"
            );
        }
    }
}

#[test]
fn a_health_check_from_the_docker_cli_gates_running_and_fails_unhealthy_tasks() {
    let tb = busybox_cluster(1);
    let m = tb.host(0);
    create_busybox(
        m,
        "web",
        &[
            "--stop-grace-period",
            "1s",
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
        ],
        &["sleep", "100000"],
    );
    // Not healthy yet: starting, not running.
    let c = poll::until("the task's container", LONG, || {
        running_containers(&tb).into_iter().find(|c| c.name.starts_with("web.")).ok_or("none")
    })
    .unwrap();
    // Three probe intervals with the probe failing: still not running.
    std::thread::sleep(Duration::from_millis(600));
    let ps = docker(m, &["service", "ps", "web"]).unwrap();
    assert!(ps.contains("Starting"), "an unhealthy task is not running yet: {ps}");
    docker(m, &["exec", &c.id, "touch", "/tmp/ok"]).unwrap();
    poll::until("the task to be running once healthy", LONG, || {
        let ps = docker(m, &["service", "ps", "web"]).unwrap();
        if ps.contains("Running") { Ok(()) } else { Err(ps) }
    })
    .unwrap();
    // Unhealthy again: the task fails with docker's error and is replaced.
    docker(m, &["exec", &c.id, "rm", "/tmp/ok"]).unwrap();
    poll::until("the unhealthy task to fail and be replaced", LONG, || {
        let ps = docker(m, &["service", "ps", "--no-trunc", "web"]).unwrap();
        if ps.contains("unhealthy container") && ps.lines().count() >= 3 { Ok(()) } else { Err(ps) }
    })
    .unwrap();
}

#[test]
fn parallelism_rolls_slots_in_batches_and_continue_goes_past_failures() {
    let tb = busybox_cluster(2);
    let m = tb.host(0);
    create_busybox(
        m,
        "web",
        &[
            "--replicas",
            "4",
            "--update-parallelism",
            "2",
            "--update-delay",
            "2s",
            "--update-monitor",
            "500ms",
            "--stop-grace-period",
            "1s",
        ],
        &["sleep", "100000"],
    );
    wait_running(m, 4, r#"["sleep","100000"]"#);
    docker(m, &["service", "update", "-d", "--args", "sleep 200000", "web"]).unwrap();
    wait_status(m, "the batched update to complete", |s| s.starts_with("completed|"));
    wait_running(m, 4, r#"["sleep","200000"]"#);
    let mut started: Vec<i128> = live_tasks(m).iter().map(|t| t.3.parse().unwrap()).collect();
    started.sort_unstable();
    let gaps: Vec<i128> = started.windows(2).map(|w| w[1] - w[0]).collect();
    // Two slots at a time, then the 2 s delay, then the next two.
    assert!(gaps[0] < 1_500_000_000 && gaps[2] < 1_500_000_000, "each batch starts together: {gaps:?}");
    assert!(gaps[1] >= 1_900_000_000, "--update-delay between batches: {gaps:?}");

    // --update-failure-action continue: failing slots do not stop the update.
    docker(
        m,
        &[
            "service",
            "update",
            "-d",
            "--update-failure-action",
            "continue",
            "--args",
            "sh -c 'exit 1'",
            "web",
        ],
    )
    .unwrap();
    let done = wait_status(m, "the update to go past the failures", |s| s.starts_with("completed|"));
    assert_eq!(done, "completed|update completed");
    let old = live_tasks(m).into_iter().filter(|t| t.1 == r#"["sleep","200000"]"#).count();
    assert_eq!(old, 0, "every slot got the new (failing) version");
}
