//! Secrets and configs from the stock docker CLI: create (file and stdin),
//! ls, inspect, rm with docker's texts; a service's task gets them as files
//! with the owner and mode asked for, on a tmpfs; the value is on no node's
//! disk (the Raft files are sealed) and reaches only the node that runs a
//! task using it — checked with each worker's own certificate. Needs root,
//! runc and docker's CLI.

use std::time::Duration;

use swarm_agent::{
    ca::{
        RootCa,
        tls::{self, CertResolver},
    },
    error::ErrorKind,
    rpc::{
        RpcClient, RpcError,
        messages::{ControlRequest, ControlResponse, SessionRequest, SessionResponse, path},
    },
};
use swarm_tests::{
    poll,
    services::{import_busybox, running_containers, wait_replicas},
    swarm::{cluster, docker, parse_table, stderr},
    testbed::Host,
};

const LONG: Duration = Duration::from_secs(60);
const SECRET: &str = "hunter2-s3cret-value";
const CONFIG: &str = "listen=8080 config-marker-value";

fn sh(h: &Host, script: &str) -> Result<String, String> {
    h.run("sh", ["-c", script]).map_err(|e| e.to_string())
}

/// Files under `h`'s state directory holding `needle`, leaving out the
/// tmpfs mounts named `secrets` (RAM, not disk).
fn on_disk(h: &Host, needle: &str, skip_tmpfs: bool) -> String {
    let root = h.state_dir();
    let exclude = if skip_tmpfs { "--exclude-dir=secrets" } else { "" };
    sh(h, &format!("grep -r -l -a {exclude} -F '{needle}' {} || true", root.display())).unwrap()
}

fn read(h: &Host, name: &str) -> String {
    std::fs::read_to_string(h.state_dir().join("swarm/certificates").join(name)).unwrap()
}

/// The session's assignments for `h`'s own node, asked with its certificate.
fn assignments_of(h: &Host) -> (String, Result<ControlResponse, RpcError>) {
    let ca = RootCa::from_pem(&read(h, "swarm-root-ca.crt"), None).unwrap();
    let c = RpcClient::new(
        tls::client_config(
            &ca,
            CertResolver::new(&read(h, "swarm-node.crt"), &read(h, "swarm-node.key")).unwrap(),
        )
        .unwrap(),
    );
    h.in_netns(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let req = SessionRequest { statuses: vec![], known: None, wait_ms: 0 };
            let r: SessionResponse =
                c.call("198.18.0.1:2377", path::SESSION, &req, Duration::from_secs(5), None).await.unwrap();
            let list = c
                .call(
                    "198.18.0.1:2377",
                    path::CONTROL,
                    &ControlRequest::ListBlobs { kind: swarm_agent::manager::store::secret::Kind::Secret },
                    Duration::from_secs(5),
                    None,
                )
                .await;
            (serde_json::to_string(&r.assignments).unwrap(), list)
        })
    })
    .unwrap()
}

#[test]
#[allow(clippy::many_single_char_names)]
fn secrets_and_configs_reach_only_their_tasks_and_never_a_disk() {
    let tb = cluster(3, 1, &[], &[]);
    let (m, w, spare) = (tb.host(0), tb.host(1), tb.host(2));
    for h in tb.hosts() {
        import_busybox(h);
    }

    // Create from stdin and from a file; docker's outputs.
    let id = sh(m, &format!("printf '{SECRET}' | docker secret create -l env=test db_pass -")).unwrap();
    assert_eq!(id.trim().len(), 25, "{id}");
    let conf = m.state_dir().join("app.conf");
    std::fs::write(&conf, CONFIG).unwrap();
    docker(m, &["config", "create", "app_conf", conf.to_str().unwrap()]).unwrap();
    std::fs::remove_file(&conf).unwrap();
    let ls = docker(m, &["secret", "ls"]).unwrap();
    let header: Vec<&str> = ls.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"], "{ls}");
    let rows = parse_table(&ls);
    assert_eq!(rows.len(), 1, "{ls}");
    assert_eq!(rows[0][1], "db_pass", "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&docker(m, &["secret", "inspect", "db_pass"]).unwrap()).unwrap();
    assert_eq!(json[0]["Spec"]["Labels"]["env"], "test");
    assert!(json[0]["Spec"].get("Data").is_none(), "a secret's data is never shown: {json}");
    let data =
        docker(m, &["config", "inspect", "--format", "{{printf \"%s\" .Spec.Data}}", "app_conf"]).unwrap();
    assert_eq!(data.trim(), CONFIG);
    assert!(docker(m, &["config", "ls"]).unwrap().contains("app_conf"));

    // Bad input: docker's words, nothing created.
    let e = sh(m, "printf x | docker secret create db_pass -").unwrap_err();
    assert!(e.contains("secret db_pass already exists"), "{e}");
    let e = sh(m, "head -c 600000 /dev/zero | docker secret create big -").unwrap_err();
    assert!(e.contains("secret data must be larger than 0 and less than 512000 bytes"), "{e}");
    let e = sh(m, "printf x | docker secret create -- -bad- -").unwrap_err();
    assert!(e.contains("invalid name, only 64 [a-zA-Z0-9-_.] characters allowed"), "{e}");
    let e = stderr(&docker(m, &["service", "create", "--secret", "nosuch", "busybox", "true"]).unwrap_err());
    assert!(e.contains("secret not found: nosuch"), "{e}");
    assert_eq!(docker(m, &["secret", "ls", "-q"]).unwrap().lines().count(), 1);

    // A task on node2 gets both, owned and moded as asked.
    docker(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--stop-grace-period",
            "1s",
            "--constraint",
            "node.hostname==node2",
            "--secret",
            "source=db_pass,target=pw,uid=100,gid=101,mode=0400",
            "--config",
            "source=app_conf,target=/etc/app.conf,mode=0440",
            "busybox",
            "sleep",
            "1d",
        ],
    )
    .unwrap();
    wait_replicas(&tb, "web", "1/1", LONG);
    let c = running_containers(&tb).into_iter().find(|c| c.name.starts_with("web.")).unwrap();
    assert_eq!(c.host, 1);
    let exec = |cmd: &str| docker(w, &["exec", &c.id, "sh", "-c", cmd]).unwrap().trim().to_owned();
    assert_eq!(exec("cat /run/secrets/pw"), SECRET);
    assert_eq!(exec("stat -c '%u %g %a' /run/secrets/pw"), "100 101 400");
    assert_eq!(exec("cat /etc/app.conf"), CONFIG);
    assert_eq!(exec("stat -c '%u %g %a' /etc/app.conf"), "0 0 440");
    let e = docker(w, &["exec", &c.id, "sh", "-c", "echo x > /run/secrets/pw"]).unwrap_err();
    assert!(e.to_string().contains("Read-only file system"), "{e}");

    // On no disk: the task's node has it only on tmpfs; the manager's Raft
    // files are sealed; the node without a task never had it.
    let mounts = sh(w, "grep ' tmpfs ' /proc/self/mounts").unwrap();
    assert!(mounts.lines().any(|l| l.contains(&c.id) && l.contains("/secrets tmpfs ro,")), "{mounts}");
    assert_eq!(on_disk(w, SECRET, true), "", "the secret on node2's disk");
    assert_eq!(on_disk(m, SECRET, false), "", "the secret in the manager's files (Raft store)");
    assert_eq!(on_disk(m, "config-marker-value", false), "", "the config in the manager's files");
    assert_eq!(on_disk(spare, SECRET, false), "", "the secret on a node without a task");

    // With each worker's own certificate: node2 is handed the data with its
    // task, node3 never; neither may list secrets.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let (with_task, list) = assignments_of(w);
    assert!(with_task.contains(&b64), "node2's assignments carry the secret");
    assert!(matches!(list, Err(RpcError::Api(e)) if e.kind == ErrorKind::PermissionDenied));
    let (without, list) = assignments_of(spare);
    assert!(!without.contains(&b64), "node3 is never handed the secret: {without}");
    assert!(matches!(list, Err(RpcError::Api(e)) if e.kind == ErrorKind::PermissionDenied));

    // In use: rm is refused.
    let e = stderr(&docker(m, &["secret", "rm", "db_pass"]).unwrap_err());
    assert!(e.contains("secret 'db_pass' is in use by the following service: web"), "{e}");
    let e = stderr(&docker(m, &["config", "rm", "app_conf"]).unwrap_err());
    assert!(e.contains("config 'app_conf' is in use by the following service: web"), "{e}");

    // --secret-rm: the new task has no secret; the old one's tmpfs is gone.
    docker(m, &["service", "update", "-d", "--secret-rm", "db_pass", "web"]).unwrap();
    let c2 = poll::until("the task without the secret", LONG, || {
        match running_containers(&tb).into_iter().find(|x| x.name.starts_with("web.") && x.id != c.id) {
            Some(x) if running_containers(&tb).iter().all(|y| y.id != c.id) => Ok(x),
            _ => Err("old task still running"),
        }
    })
    .unwrap();
    let ls = docker(tb.host(c2.host), &["exec", &c2.id, "ls", "/run/secrets"]);
    assert!(ls.as_deref().map_or(true, |l| l.trim().is_empty()), "{ls:?}");
    assert_eq!(docker(tb.host(c2.host), &["exec", &c2.id, "cat", "/etc/app.conf"]).unwrap().trim(), CONFIG);
    poll::until("the old task's secret to leave node2", LONG, || {
        let left = on_disk(w, SECRET, false);
        if left.is_empty() { Ok(()) } else { Err(left) }
    })
    .unwrap();
    assert_eq!(docker(m, &["secret", "rm", "db_pass"]).unwrap(), "db_pass\n");
    docker(m, &["service", "rm", "web"]).unwrap();
    poll::until("app_conf to be free", LONG, || docker(m, &["config", "rm", "app_conf"])).unwrap();
    assert_eq!(docker(m, &["secret", "ls", "-q"]).unwrap(), "");
    assert_eq!(docker(m, &["config", "ls", "-q"]).unwrap(), "");
}

#[test]
fn our_cli_manages_secrets_and_configs_as_docker_does() {
    let tb = cluster(1, 1, &[], &[]);
    let h = tb.host(0);
    import_busybox(h);
    let bin = swarm_tests::agent_bin();
    let ours = |args: &[&str]| swarm_tests::swarm::agent(h, args);
    let id = sh(h, &format!("printf s2-value | {} secret create -l a=b s2 -", bin.display())).unwrap();
    assert_eq!(id.trim().len(), 25, "{id}");
    let conf = h.state_dir().join("c2.conf");
    std::fs::write(&conf, "c2-value").unwrap();
    ours(&["config", "create", "c2", conf.to_str().unwrap()]).unwrap();
    // The same tables as docker's (the times aside).
    for kind in ["secret", "config"] {
        let a = parse_table(&ours(&[kind, "ls"]).unwrap());
        let d = parse_table(&docker(h, &[kind, "ls"]).unwrap());
        assert_eq!(
            a.iter().map(|r| r[..2].to_vec()).collect::<Vec<_>>(),
            d.iter().map(|r| r[..2].to_vec()).collect::<Vec<_>>()
        );
        assert_eq!(ours(&[kind, "ls", "-q"]).unwrap(), docker(h, &[kind, "ls", "-q"]).unwrap());
        let head =
            |s: String| s.lines().next().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(head(ours(&[kind, "ls"]).unwrap()), head(docker(h, &[kind, "ls"]).unwrap()));
    }
    let v: serde_json::Value = serde_json::from_str(&ours(&["secret", "inspect", "s2"]).unwrap()).unwrap();
    assert_eq!(v[0]["Spec"]["Labels"]["a"], "b");

    // Errors: docker's words, nothing changed.
    let e = stderr(&ours(&["secret", "create", "s3"]).unwrap_err());
    assert!(e.contains("secret file is required"), "{e}");
    let e = stderr(&ours(&["service", "create", "-d", "--secret", "nosuch", "busybox", "true"]).unwrap_err());
    assert!(e.contains("secret not found: nosuch"), "{e}");
    let e = stderr(
        &ours(&[
            "service",
            "create",
            "-d",
            "--secret",
            "s2",
            "--secret",
            "source=s2,target=s2",
            "busybox",
            "true",
        ])
        .unwrap_err(),
    );
    assert!(e.contains("duplicate secret target for s2 not allowed"), "{e}");
    let e = stderr(
        &ours(&["service", "create", "-d", "--secret", "source=s2,color=red", "busybox", "true"])
            .unwrap_err(),
    );
    assert!(e.contains("invalid field in secret request: color"), "{e}");
    assert_eq!(ours(&["service", "ls", "-q"]).unwrap(), "");

    ours(&[
        "service",
        "create",
        "-d",
        "--name",
        "app",
        "--stop-grace-period",
        "1s",
        "--secret",
        "s2",
        "--config",
        "source=c2,target=/c2.conf,mode=0400",
        "busybox",
        "sleep",
        "1d",
    ])
    .unwrap();
    wait_replicas(&tb, "app", "1/1", LONG);
    let c = running_containers(&tb).into_iter().find(|c| c.name.starts_with("app.")).unwrap();
    let exec = |cmd: &str| docker(h, &["exec", &c.id, "sh", "-c", cmd]).unwrap().trim().to_owned();
    assert_eq!(
        exec("cat /run/secrets/s2; echo; stat -c %a /c2.conf; cat /c2.conf"),
        "s2-value\n400\nc2-value"
    );
    let e = stderr(&ours(&["secret", "rm", "s2"]).unwrap_err());
    assert!(e.contains("secret 's2' is in use by the following service: app"), "{e}");
    ours(&["service", "update", "-d", "--secret-rm", "s2", "--config-rm", "c2", "app"]).unwrap();
    let refs = docker(
        h,
        &["service", "inspect", "--format", "{{len .Spec.TaskTemplate.ContainerSpec.Secrets}} {{len .Spec.TaskTemplate.ContainerSpec.Configs}}", "app"],
    )
    .unwrap();
    assert_eq!(refs.trim(), "0 0");
    assert_eq!(ours(&["secret", "rm", "s2"]).unwrap(), "s2\n");
    assert_eq!(ours(&["config", "rm", "c2"]).unwrap(), "c2\n");
}
