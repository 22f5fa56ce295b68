//! Services on real containers, driven by the stock docker CLI: images by
//! `docker import`, `service create|ls|ps|scale|rm`, tasks on several
//! hosts reaching each other over the overlay, a killed task replaced with
//! its history kept. Needs root, runc and docker's CLI.

use std::{path::PathBuf, time::Duration};

use swarm_tests::{
    poll,
    services::import_busybox,
    swarm::{cluster, daemon_log, docker, parse_table, stderr},
    testbed::{Host, Testbed},
};

fn service_ls(h: &Host) -> Vec<Vec<String>> {
    parse_table(&docker(h, &["service", "ls"]).unwrap())
}

fn wait_replicas(tb: &Testbed, want: &str) {
    let m = tb.host(0);
    poll::until(&format!("{want} replicas"), Duration::from_secs(40), || {
        let rows = service_ls(m);
        if rows.len() == 1 && rows[0][3] == want { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            docker(m, &["service", "ps", "--no-trunc", "web"]).unwrap_or_default(),
            daemon_log(m)
        )
    });
}

/// (host index, container ID, name) of every running task container.
fn running_containers(tb: &Testbed) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    for (i, h) in tb.hosts().iter().enumerate() {
        let ps = docker(h, &["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]).unwrap();
        for l in ps.lines() {
            let (id, name) = l.split_once(' ').unwrap();
            out.push((i, id.to_owned(), name.to_owned()));
        }
    }
    out
}

fn netns_of(h: &Host, container_id: &str) -> PathBuf {
    h.state_dir().join("netns").join(&container_id[..12])
}

fn ip_in(h: &Host, netns: &std::path::Path) -> String {
    let out = h.run_in(netns, "ip", ["-4", "-o", "addr", "show", "eth0"]).unwrap();
    out.split_whitespace().skip_while(|w| *w != "inet").nth(1).unwrap().split('/').next().unwrap().to_owned()
}

#[test]
fn replicated_service_runs_heals_and_scales() {
    let tb = cluster(3, 1, &[], &[]);
    let m = tb.host(0);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let images = parse_table(&docker(m, &["images"]).unwrap());
    assert_eq!((images[0][0].as_str(), images[0][1].as_str()), ("busybox", "latest"), "{images:?}");
    docker(m, &["network", "create", "-d", "overlay", "appnet"]).unwrap();
    let id = docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "appnet",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/var/www",
        ],
    )
    .unwrap();
    assert_eq!(id.trim().len(), 25, "{id}");
    wait_replicas(&tb, "2/2");
    let rows = service_ls(m);
    assert_eq!(rows[0][1..5], ["web", "replicated", "2/2", "busybox:latest"]);

    // Two containers, on two hosts, named <service>.<slot>.<task id>, with
    // docker's labels.
    let running = running_containers(&tb);
    assert_eq!(running.len(), 2, "{running:?}");
    assert_ne!(running[0].0, running[1].0, "spread over hosts: {running:?}");
    for (_, _, name) in &running {
        assert!(name.starts_with("web.1.") || name.starts_with("web.2."), "{name}");
    }
    let (h0, c0) = (tb.host(running[0].0), &running[0].1);
    let labels = docker(h0, &["inspect", "--format", "{{json .Config.Labels}}", c0]).unwrap();
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["com.docker.swarm.service.name"], "web");

    // The tasks reach each other over the overlay, host to host.
    let (h1, c1) = (tb.host(running[1].0), &running[1].1);
    let ip1 = ip_in(h1, &netns_of(h1, c1));
    let page =
        h0.run_in(&netns_of(h0, c0), "/bin/busybox", ["wget", "-O", "-", &format!("http://{ip1}:8080/")]);
    assert_eq!(page.unwrap(), "hello from busybox\n");

    // docker exec, with and without stdin; the exit code comes back.
    let host_name = docker(h0, &["exec", c0, "cat", "/etc/hostname"]).unwrap();
    assert_eq!(host_name.trim(), &c0[..12], "a task's hostname is its short container ID");
    let mut cmd = h0.command("docker").unwrap();
    cmd.args(["exec", "-i", c0, "sh", "-c", "tr a-z A-Z; exit 7"]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"shout\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(7), "SHOUT\n"));
    let e = stderr(&docker(h0, &["exec", "nosuch", "true"]).unwrap_err());
    assert!(e.contains("No such container: nosuch"), "{e}");

    // docker logs of a task container.
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "talk",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two >&2; exec sleep 100000",
        ],
    )
    .unwrap();
    let (th, tc) = poll::until("the talk task to run", Duration::from_secs(30), || {
        running_containers(&tb)
            .into_iter()
            .find(|(_, _, n)| n.starts_with("talk.1."))
            .map(|(h, c, _)| (h, c))
            .ok_or("not yet")
    })
    .unwrap();
    let th = tb.host(th);
    poll::until("both lines logged", Duration::from_secs(10), || {
        let out = th.command("docker").unwrap().args(["logs", &tc]).output().unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        if o == "one\n" && e == "two\n" { Ok(()) } else { Err(format!("{o:?} {e:?}")) }
    })
    .unwrap();
    let ts = docker(th, &["logs", "-t", "--tail", "2", &tc]).unwrap();
    assert!(ts.len() > 31 && ts.ends_with(" one\n") && ts.starts_with("20"), "{ts:?}");
    // docker service logs, from the manager: the task's lines with
    // docker's `name.slot.id@node |` prefix, or raw.
    let out = m.command("docker").unwrap().args(["service", "logs", "talk"]).output().unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let line = o.lines().next().unwrap_or_default().to_owned();
    assert!(
        line.starts_with("talk.1.") && line.contains(&format!("@{}", th.name)) && line.ends_with("| one"),
        "{o:?}"
    );
    assert!(e.trim_end().ends_with("| two"), "{e:?}");
    assert_eq!(docker(m, &["service", "logs", "--raw", "talk"]).unwrap(), "one\n");
    // Ours prints the same.
    assert_eq!(swarm_tests::swarm::agent(m, &["service", "logs", "talk"]).unwrap(), o);
    // Following: a line written later arrives.
    let follow = m
        .command(swarm_tests::agent_bin())
        .unwrap()
        .args(["service", "logs", "-f", "--raw", "talk"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follow = Kill(follow);
    docker(th, &["exec", &tc, "sh", "-c", "echo later > /proc/1/fd/1"]).unwrap();
    let mut got = String::new();
    let mut out = std::io::BufReader::new(follow.0.stdout.take().unwrap());
    while !got.contains("later") {
        let mut l = String::new();
        if std::io::BufRead::read_line(&mut out, &mut l).unwrap() == 0 {
            break;
        }
        got.push_str(&l);
    }
    assert_eq!(got, "one\nlater\n");
    drop(follow);
    docker(m, &["service", "rm", "talk"]).unwrap();

    // docker kill on its node: replaced (after the 5 s restart delay), the
    // old task kept as history with docker's error.
    let killed_slot = running[0].2.split('.').nth(1).unwrap().to_owned();
    docker(h0, &["kill", c0]).unwrap();
    poll::until("the killed task to be replaced", Duration::from_secs(40), || {
        let ps = docker(m, &["service", "ps", "--no-trunc", "web"]).unwrap();
        let rows = parse_table(&ps);
        let slot = format!("web.{killed_slot}");
        let hist = rows.iter().any(|r| {
            r[1].trim() == format!("\\_ {slot}")
                && r[4] == "Shutdown"
                && r[5].starts_with("Failed")
                && r[6] == "\"task: non-zero exit (137)\""
        });
        let fresh = rows.iter().any(|r| r[1] == slot && r[4] == "Running" && r[5].starts_with("Running"));
        if hist && fresh { Ok(()) } else { Err(ps) }
    })
    .unwrap();
    wait_replicas(&tb, "2/2");

    // Scale up, then down: the highest slots go.
    assert_eq!(docker(m, &["service", "scale", "-d", "web=3"]).unwrap(), "web scaled to 3\n");
    wait_replicas(&tb, "3/3");
    docker(m, &["service", "scale", "-d", "web=1"]).unwrap();
    wait_replicas(&tb, "1/1");
    poll::until("two containers to go", Duration::from_secs(30), || {
        let r = running_containers(&tb);
        if r.len() == 1 && r[0].2.starts_with("web.1.") { Ok(()) } else { Err(format!("{r:?}")) }
    })
    .unwrap();

    // Bad input: docker's errors, nothing changes.
    let e = stderr(&docker(m, &["service", "create", "--name", "web", "busybox"]).unwrap_err());
    assert!(e.contains("service web already exists"), "{e}");
    let e = stderr(
        &docker(m, &["service", "create", "-d", "--constraint", "node.role=manager", "busybox"]).unwrap_err(),
    );
    assert!(e.contains("constraint expected one operator from ==, !="), "{e}");
    let e = stderr(&docker(m, &["service", "scale", "nosuch=2"]).unwrap_err());
    assert!(e.contains("nosuch"), "{e}");
    assert_eq!(service_ls(m).len(), 1);
    // A network a service attaches to is not removed (swarmkit's text).
    let net_id = docker(m, &["network", "inspect", "--format", "{{.Id}}", "appnet"]).unwrap();
    let svc_id = docker(m, &["service", "inspect", "--format", "{{.ID}}", "web"]).unwrap();
    let e = stderr(&docker(m, &["network", "rm", "appnet"]).unwrap_err());
    assert_eq!(
        e.lines().next(),
        Some(
            format!(
                "Error response from daemon: rpc error: code = FailedPrecondition desc = network {} is in use by service {}",
                net_id.trim(),
                svc_id.trim()
            )
            .as_str()
        ),
        "{e}"
    );
    let left = docker(m, &["network", "ls", "--filter", "name=appnet", "--format", "{{.Name}}"]).unwrap();
    assert_eq!(left, "appnet\n", "the refused removal changed nothing");

    assert_eq!(docker(m, &["service", "rm", "web"]).unwrap(), "web\n");
    // With the service gone its leaving tasks no longer hold the network.
    assert_eq!(docker(m, &["network", "rm", "appnet"]).unwrap(), "appnet\n");
    poll::until("every task container to be removed", Duration::from_secs(30), || {
        let left: Vec<String> = tb.hosts().iter().map(|h| docker(h, &["ps", "-a", "-q"]).unwrap()).collect();
        if left.iter().all(String::is_empty) { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .unwrap();
}
