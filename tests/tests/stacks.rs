//! `stack deploy|ls|services|ps|rm` from a compose file: the stock docker
//! CLI (which parses the file itself and calls the services, networks,
//! secrets and configs APIs with the `com.docker.stack.namespace` label),
//! then our own CLI on the same file. A stack with two services, an overlay
//! network, a secret and a published port deploys, answers, redeploys a
//! changed replica count (only that service updated) and is removed
//! cleanly. Needs root, runc and docker's CLI.

use std::time::Duration;

use swarm_tests::{
    poll,
    services::{WHO, import_busybox, running_containers, wait_replicas, who_from_host},
    swarm::{cluster_with_outsiders, docker, parse_table},
    testbed::{Host, Testbed},
};

const LONG: Duration = Duration::from_secs(60);

fn compose(web_replicas: u32, port: u16) -> String {
    // Compose interpolates `$`: `$$` is a literal one.
    let who = WHO.replace('$', "$$");
    format!(
        r#"version: "3.8"
services:
  web:
    image: busybox
    command:
      - sh
      - -c
      - |-
        {who}
    ports:
      - "{port}:80"
    networks: [front]
    secrets:
      - source: db_pass
        target: pw
        mode: 0400
    stop_grace_period: 1s
    deploy:
      replicas: {web_replicas}
      update_config:
        parallelism: 2
  worker:
    image: busybox
    command: sleep 1d
    stop_grace_period: 1s
    environment:
      ROLE: worker
    networks: [front]
networks:
  front:
    driver: overlay
secrets:
  db_pass:
    file: ./db_pass.txt
"#
    )
}

fn write_stack(h: &Host, replicas: u32, port: u16) -> String {
    let dir = h.state_dir().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("db_pass.txt"), "stack-secret-value").unwrap();
    let f = dir.join("compose.yml");
    std::fs::write(&f, compose(replicas, port)).unwrap();
    f.display().to_string()
}

/// `(name, replicas)` rows of `stack services`.
fn services(out: &str) -> Vec<(String, String)> {
    parse_table(out).into_iter().map(|r| (r[1].clone(), r[3].clone())).collect()
}

fn check_stack(tb: &Testbed, cli: &dyn Fn(&[&str]) -> Result<String, String>, port: u16) {
    let m = tb.host(0);
    let outside = tb.host(tb.hosts().len() - 1);
    let file = write_stack(m, 2, port);
    let out = cli(&["stack", "deploy", "-c", &file, "app"]).unwrap();
    for l in [
        "Creating network app_front",
        "Creating secret app_db_pass",
        "Creating service app_web",
        "Creating service app_worker",
    ] {
        assert!(out.contains(l), "{l}: {out}");
    }
    wait_replicas(tb, "app_web", "2/2", LONG);
    wait_replicas(tb, "app_worker", "1/1", LONG);
    let ls = parse_table(&cli(&["stack", "ls"]).unwrap());
    assert_eq!(ls, vec![vec!["app".to_owned(), "2".to_owned()]]);
    let s = services(&cli(&["stack", "services", "app"]).unwrap());
    assert_eq!(s, vec![("app_web".into(), "2/2".into()), ("app_worker".into(), "1/1".into())]);
    let ps = parse_table(&cli(&["stack", "ps", "app"]).unwrap());
    assert_eq!(ps.len(), 3, "{ps:?}");
    let labels = docker(
        m,
        &[
            "service",
            "inspect",
            "--format",
            "{{index .Spec.Labels \"com.docker.stack.namespace\"}}",
            "app_web",
        ],
    )
    .unwrap();
    assert_eq!(labels.trim(), "app");

    // Reachable through the published port, the secret in place, the
    // worker reaching web by its service name on the stack's network.
    let url = format!("http://198.18.0.2:{port}/cgi-bin/who");
    poll::until("the stack's published port", LONG, || who_from_host(outside, &url)).unwrap();
    let web = running_containers(tb).into_iter().find(|c| c.name.starts_with("app_web.")).unwrap();
    let pw = docker(tb.host(web.host), &["exec", &web.id, "cat", "/run/secrets/pw"]).unwrap();
    assert_eq!(pw, "stack-secret-value");
    let wk = running_containers(tb).into_iter().find(|c| c.name.starts_with("app_worker.")).unwrap();
    poll::until("worker to reach web by name", LONG, || {
        docker(tb.host(wk.host), &["exec", &wk.id, "wget", "-q", "-O", "-", "http://web/cgi-bin/who"])
    })
    .unwrap();
    let env = docker(tb.host(wk.host), &["exec", &wk.id, "sh", "-c", "echo $ROLE"]).unwrap();
    assert_eq!(env.trim(), "worker");

    // Redeploy with 3 web replicas: web is updated, worker untouched.
    let worker_version = |m: &Host| {
        docker(m, &["service", "inspect", "--format", "{{.Version.Index}}", "app_worker"]).unwrap()
    };
    let before = worker_version(m);
    let wk_before: Vec<String> = running_containers(tb)
        .into_iter()
        .filter(|c| c.name.starts_with("app_worker."))
        .map(|c| c.id)
        .collect();
    write_stack(m, 3, port);
    let out = cli(&["stack", "deploy", "-c", &file, "app"]).unwrap();
    assert!(out.contains("Updating service app_web (id: "), "{out}");
    wait_replicas(tb, "app_web", "3/3", LONG);
    let wk_after: Vec<String> = running_containers(tb)
        .into_iter()
        .filter(|c| c.name.starts_with("app_worker."))
        .map(|c| c.id)
        .collect();
    assert_eq!(wk_before, wk_after, "the unchanged service's task was not replaced");
    let _ = before;

    // Removed cleanly: services, network, secret.
    let out = cli(&["stack", "rm", "app"]).unwrap();
    for l in [
        "Removing service app_web",
        "Removing service app_worker",
        "Removing secret app_db_pass",
        "Removing network app_front",
    ] {
        assert!(out.contains(l), "{l}: {out}");
    }
    poll::until("the stack to be gone", LONG, || {
        let left = [
            docker(m, &["service", "ls", "-q"]).unwrap(),
            docker(m, &["secret", "ls", "-q"]).unwrap(),
            docker(m, &["network", "ls", "-q", "--filter", "label=com.docker.stack.namespace=app"]).unwrap(),
        ]
        .concat();
        if left.trim().is_empty() { Ok(()) } else { Err(left) }
    })
    .unwrap();
    // docker says so on stderr and exits 0.
    let e = cli(&["stack", "rm", "app"]).unwrap_or_else(|e| e);
    assert!(e.contains("Nothing found in stack: app"), "{e}");
}

/// stdout and stderr of a command that exits 0, else the error.
fn output(c: &mut std::process::Command) -> Result<String, String> {
    let o = c.output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if o.status.success() { Ok(text) } else { Err(text) }
}

#[test]
fn stack_deploy_from_the_docker_cli() {
    let tb = cluster_with_outsiders(2, 1, 1, &[], &[]);
    for h in &tb.hosts()[..2] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let dir = m.state_dir().join("stack");
    let cli = |args: &[&str]| {
        let mut c = m.command("docker").unwrap();
        c.args(args).current_dir(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        output(&mut c)
    };
    check_stack(&tb, &cli, 7080);
}

#[test]
fn stack_deploy_from_our_cli() {
    let tb = cluster_with_outsiders(2, 1, 1, &[], &[]);
    for h in &tb.hosts()[..2] {
        import_busybox(h);
    }
    let m = tb.host(0);
    let dir = m.state_dir().join("stack");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |prog: &std::path::Path, args: &[&str]| {
        let mut c = m.command(prog).unwrap();
        c.args(args).current_dir(&dir);
        output(&mut c)
    };
    let bin = swarm_tests::agent_bin();
    let ours = |args: &[&str]| run(&bin, args);
    check_stack(&tb, &ours, 7081);

    // Bad files: the same words as docker's CLI, nothing deployed.
    for (name, text) in [
        ("unknown-root.yml", "version: '3.8'\nfoo: 1\nservices:\n  web: {image: busybox}\n"),
        ("unknown-key.yml", "version: '3.8'\nservices:\n  web:\n    image: busybox\n    foo: 1\n"),
        (
            "wrong-type.yml",
            "version: '3.8'\nservices:\n  web:\n    image: busybox\n    deploy: {replicas: two}\n",
        ),
        ("no-network.yml", "version: '3.8'\nservices:\n  web:\n    image: busybox\n    networks: [nosuch]\n"),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
        let mine = ours(&["stack", "deploy", "-c", name, "bad"]).unwrap_err();
        // Ours changes nothing (docker's leaves a network behind for an
        // undefined one).
        let left = docker(m, &["service", "ls"]).unwrap();
        assert_eq!(parse_table(&left).len(), 0, "{name}: {left}");
        let nets =
            docker(m, &["network", "ls", "-q", "--filter", "label=com.docker.stack.namespace=bad"]).unwrap();
        assert_eq!(nets, "", "{name}");
        let theirs =
            run(std::path::Path::new("docker"), &["stack", "deploy", "-c", name, "bad"]).unwrap_err();
        let last = |s: &str| s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        assert_eq!(last(&mine), last(&theirs), "{name}: ours {mine:?}, docker's {theirs:?}");
    }
}
