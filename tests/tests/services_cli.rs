//! Our own CLI's `service` commands next to docker's: the same tables,
//! convergence progress (on a terminal and off it), messages and errors.
//! Needs root, runc, docker's CLI and util-linux's `script` (a terminal).

use regex::Regex;
use swarm_tests::{
    services::{import_busybox, wait_replicas},
    swarm::{agent, cluster, docker, stderr},
    testbed::Host,
};

/// Runs `cmd` on a pseudo-terminal (`script`), returns what it printed.
fn on_tty(h: &Host, cmd: &str) -> String {
    h.run("script", ["-q", "-e", "-c", cmd, "/dev/null"]).unwrap()
}

/// Times and IDs vary between two runs of a table; the rest must not.
fn normalize(s: &str) -> String {
    let ago = Regex::new(
        r"(Running|Pending|Shutdown|Failed|Complete|Ready|Assigned|Preparing|Starting) [a-z0-9 ]+ ago",
    )
    .unwrap();
    ago.replace_all(s, "$1 T ago").into_owned()
}

#[test]
fn service_commands_match_dockers() {
    let tb = cluster(1, 1, &[], &[]);
    let m = tb.host(0);
    import_busybox(m);

    // Off a terminal: the ID, then the converged state.
    let out =
        agent(m, &["service", "create", "--name", "web", "--replicas", "2", "busybox", "sleep", "100000"])
            .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].len(), 25, "{out}");
    assert_eq!(lines[1], "overall progress: 2 out of 2 tasks", "{out}");
    assert!(
        lines[2].starts_with("1/2: running   [=================================================="),
        "{out}"
    );
    assert_eq!(*lines.last().unwrap(), format!("verify: Service {} converged", lines[0]), "{out}");

    assert_eq!(agent(m, &["service", "ls"]).unwrap(), docker(m, &["service", "ls"]).unwrap());
    assert_eq!(agent(m, &["service", "ls", "-q"]).unwrap(), docker(m, &["service", "ls", "-q"]).unwrap());
    let ours = agent(m, &["service", "ps", "web"]).unwrap();
    assert_eq!(normalize(&ours), normalize(&docker(m, &["service", "ps", "web"]).unwrap()), "{ours}");
    assert_eq!(
        agent(m, &["service", "ps", "-q", "web"]).unwrap(),
        docker(m, &["service", "ps", "-q", "web"]).unwrap()
    );
    let nps = agent(m, &["node", "ps"]).unwrap();
    assert_eq!(normalize(&nps), normalize(&docker(m, &["node", "ps"]).unwrap()), "{nps}");
    let pretty = agent(m, &["service", "inspect", "--pretty", "web"]).unwrap();
    assert!(pretty.contains("Name:\t\tweb\n") && pretty.contains(" Replicas:\t2\n"), "{pretty}");
    let json: serde_json::Value =
        serde_json::from_str(&agent(m, &["service", "inspect", "web"]).unwrap()).unwrap();
    assert_eq!(json[0]["Spec"]["Name"], "web");

    // On a terminal both CLIs show the bars while converging.
    let ours = on_tty(m, &format!("{} service scale web=3", swarm_tests::agent_bin().display()));
    assert!(
        ours.contains("web scaled to 3") && ours.contains("overall progress: 3 out of 3 tasks"),
        "{ours}"
    );
    assert!(ours.contains(&format!("3/3: running   [{}>]", "=".repeat(50))), "{ours}");
    let theirs = on_tty(m, "docker service scale web=4");
    assert!(
        theirs.contains("overall progress: 4 out of 4 tasks") && theirs.contains("verify: Service"),
        "{theirs}"
    );
    wait_replicas(&tb, "web", "4/4", std::time::Duration::from_secs(30));

    // Errors: docker's words, a non-zero exit, nothing changed.
    docker(m, &["service", "create", "-d", "--mode", "global", "--name", "g", "busybox", "sleep", "100000"])
        .unwrap();
    let e = stderr(&agent(m, &["service", "scale", "g=2"]).unwrap_err());
    assert!(e.contains("g: scale can only be used with replicated or replicated-job mode"), "{e}");
    let e = stderr(&agent(m, &["service", "rm", "nosuch"]).unwrap_err());
    assert_eq!(e.trim(), "Error response from daemon: service nosuch not found", "{e}");
    assert_eq!(e.trim(), stderr(&docker(m, &["service", "rm", "nosuch"]).unwrap_err()).trim());
    let e = stderr(&agent(m, &["service", "ps", "nosuch"]).unwrap_err());
    assert!(e.contains("no such service: nosuch"), "{e}");
    let e = stderr(&agent(m, &["service", "create", "--replicas", "-1", "busybox"]).unwrap_err());
    assert!(e.contains("--replicas"), "{e}");
    let e = stderr(&agent(m, &["service", "create", "--name", "web", "busybox"]).unwrap_err());
    assert!(e.contains("service web already exists"), "{e}");
    let e = stderr(&agent(m, &["service", "create", "-d", "--mode", "both", "busybox"]).unwrap_err());
    assert!(e.contains("unknown mode: both, only replicated and global supported"), "{e}");
    let e = stderr(
        &agent(m, &["service", "create", "-d", "--placement-pref", "pack=node.labels.x", "busybox"])
            .unwrap_err(),
    );
    assert!(e.contains("unsupported placement preference pack (only spread is supported)"), "{e}");
    assert_eq!(agent(m, &["service", "ls", "-q"]).unwrap().lines().count(), 2);

    assert_eq!(agent(m, &["service", "rm", "web", "g"]).unwrap(), "web\ng\n");
    assert_eq!(agent(m, &["service", "ls", "-q"]).unwrap(), "");
}

/// The service's spec version.
fn version(h: &Host, service: &str) -> String {
    docker(h, &["service", "inspect", "--format", "{{.Version.Index}}", service]).unwrap().trim().to_owned()
}

/// Polls `service inspect --format format web` until it prints `want`.
fn wait_inspect(h: &Host, format: &str, want: &str) {
    swarm_tests::poll::until(want, std::time::Duration::from_secs(30), || {
        let got = docker(h, &["service", "inspect", "--format", format, "web"]).unwrap();
        if got.trim() == want { Ok(()) } else { Err(got) }
    })
    .unwrap();
}

#[test]
fn update_and_rollback_from_our_cli() {
    let tb = cluster(1, 1, &[], &[]);
    let m = tb.host(0);
    import_busybox(m);
    let id = agent(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--update-monitor",
            "1s",
            "--stop-grace-period",
            "1s",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .unwrap();
    let id = id.trim();
    wait_replicas(&tb, "web", "2/2", std::time::Duration::from_secs(60));

    // An update: the name, then docker's progress to the converged state.
    let out = agent(
        m,
        &[
            "service",
            "update",
            "--args",
            "sleep 200000",
            "--env-add",
            "A=1",
            "--update-parallelism",
            "2",
            "web",
        ],
    )
    .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "web", "{out}");
    assert!(lines.contains(&"overall progress: 2 out of 2 tasks"), "{out}");
    assert_eq!(*lines.last().unwrap(), format!("verify: Service {id} converged"), "{out}");
    // The updater ends its own monitor period about when the CLI does.
    wait_inspect(
        m,
        "{{json .Spec.TaskTemplate.ContainerSpec.Args}} {{json .Spec.TaskTemplate.ContainerSpec.Env}} \
         {{.Spec.UpdateConfig.Parallelism}} {{.Spec.UpdateConfig.Monitor}} {{.UpdateStatus.State}}",
        r#"["sleep","200000"] ["A=1"] 2 1s completed"#,
    );

    // Rollback from our CLI: docker's rollback banner and progress.
    let out = agent(m, &["service", "rollback", "web"]).unwrap();
    assert!(out.starts_with("web\n"), "{out}");
    assert!(out.contains("rollback: manually requested rollback"), "{out}");
    assert!(out.contains("overall progress: rolling back update: 2 out of 2 tasks"), "{out}");
    wait_inspect(
        m,
        "{{json .Spec.TaskTemplate.ContainerSpec.Args}} {{.UpdateStatus.State}}",
        r#"["sleep","100000"] rollback_completed"#,
    );

    // A failing version pauses; our CLI says so and exits non-zero.
    let e = agent(m, &["service", "update", "--args", "sh -c 'exit 1'", "web"]).unwrap_err();
    let e = stderr(&e);
    assert!(
        e.contains("service update paused: update paused due to failure or early termination of task"),
        "{e}"
    );

    // Bad input: docker's words, a non-zero exit, the spec unchanged.
    let v = version(m, "web");
    for (args, want) in [
        (&["--rollback", "--env-add", "X=1"][..], "other flags may not be combined with --rollback"),
        (&["--update-failure-action", "explode"][..], "unrecognized update failure action explode"),
        (&["--rollback-order", "sideways"][..], "unrecognized rollback order sideways"),
        (&["--update-parallelism", "-1"][..], "--update-parallelism"),
        (&["--update-delay", "soon"][..], "--update-delay"),
        (
            &["--update-max-failure-ratio", "2"][..],
            "update-maxfailureratio cannot be less than 0 or bigger than 1",
        ),
        (&["--network-add", "nosuch"][..], "network nosuch not found"),
    ] {
        let mut a = vec!["service", "update", "-d"];
        a.extend_from_slice(args);
        a.push("web");
        let e = stderr(&agent(m, &a).unwrap_err());
        assert!(e.contains(want), "{args:?}: {e}");
        assert_eq!(version(m, "web"), v, "{args:?} changed nothing");
    }
    let e = stderr(&agent(m, &["service", "update", "-d", "--image", "busybox", "nosuch"]).unwrap_err());
    assert!(e.contains("Error response from daemon: service nosuch not found"), "{e}");

    // The version guard: an update from a stale version is refused.
    let sock = format!("{}/docker.sock", m.state_dir().display());
    let stale = m
        .run(
            "curl",
            [
                "-sS",
                "--unix-socket",
                sock.as_str(),
                "-H",
                "Content-Type: application/json",
                "-d",
                r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#,
                &format!("http://x/v1.47/services/{id}/update?version=1"),
            ],
        )
        .unwrap();
    assert!(stale.contains("update out of sequence"), "{stale}");
    assert_eq!(version(m, "web"), v);
}
