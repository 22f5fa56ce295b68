//! Service endpoints through the stock docker CLI: virtual IPs per network
//! (and on `ingress` when ports are published), published ports (given,
//! dynamic from 30000, ranges), docker's errors for conflicts, duplicates
//! and dnsrr with ingress ports, the PORTS column, the host-mode port
//! filter of the scheduler, and our CLI next to docker's. Needs root, crun
//! or runc, docker's CLI.

use std::time::Duration;

use serde_json::Value;
use swarm_tests::{
    poll,
    services::{import_busybox, service_ls, service_ps, wait_replicas},
    swarm::{agent, cluster, docker, stderr},
    testbed::Host,
};

const LONG: Duration = Duration::from_secs(60);

fn endpoint(h: &Host, service: &str) -> Value {
    let out = docker(h, &["service", "inspect", "--format", "{{json .Endpoint}}", service]).unwrap();
    serde_json::from_str(&out).unwrap()
}

fn network_id(h: &Host, name: &str) -> String {
    docker(h, &["network", "inspect", "--format", "{{.ID}}", name]).unwrap().trim().to_owned()
}

fn create(h: &Host, args: &[&str]) -> Result<String, String> {
    let mut a = vec!["service", "create", "-d"];
    a.extend_from_slice(args);
    docker(h, &a).map_err(|e| stderr(&e))
}

fn ports_of(h: &Host, service: &str) -> String {
    service_ls(h).into_iter().find(|r| r[1] == service).map(|r| r[5].clone()).unwrap_or_default()
}

#[test]
fn virtual_ips_and_published_ports_are_allocated_as_dockers() {
    let tb = cluster(2, 1, &[], &[]);
    for h in tb.hosts() {
        import_busybox(h);
    }
    let m = tb.host(0);
    docker(m, &["network", "create", "--driver", "overlay", "app"]).unwrap();
    let (ingress, app) = (network_id(m, "ingress"), network_id(m, "app"));

    create(
        m,
        &["--name", "web", "--replicas", "2", "-p", "7080:80", "--network", "app", "busybox", "sleep", "1d"],
    )
    .unwrap();
    let e = endpoint(m, "web");
    assert_eq!(
        e["Ports"],
        serde_json::json!([{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 7080, "PublishMode": "ingress"}])
    );
    let vips = e["VirtualIPs"].as_array().unwrap();
    assert_eq!(vips.len(), 2, "{e}");
    assert_eq!(vips[0]["NetworkID"], ingress.as_str(), "ingress first: {e}");
    assert_eq!(vips[1]["NetworkID"], app.as_str());
    let ingress_subnet =
        docker(m, &["network", "inspect", "--format", "{{(index .IPAM.Config 0).Subnet}}", "ingress"])
            .unwrap();
    let prefix = ingress_subnet.trim().rsplit_once('.').unwrap().0.to_owned();
    assert!(vips[0]["Addr"].as_str().unwrap().starts_with(&format!("{prefix}.")), "{e} in {ingress_subnet}");
    assert!(vips[0]["Addr"].as_str().unwrap().ends_with("/24"), "{e}");
    assert_eq!(e["Spec"]["Mode"], "vip");
    assert_eq!(ports_of(m, "web"), "*:7080->80/tcp");

    // The tasks' addresses are not the VIP.
    wait_replicas(&tb, "web", "2/2", LONG);
    let vip_app = vips[1]["Addr"].as_str().unwrap().to_owned();
    let sock = m.state_dir().join("docker.sock");
    let tasks = m.run("curl", ["-s", "--unix-socket", sock.to_str().unwrap(), "http://x/tasks"]).unwrap();
    let tasks: Vec<Value> = serde_json::from_str(&tasks).unwrap();
    let addrs: Vec<&str> = tasks
        .iter()
        .flat_map(|t| t["NetworksAttachments"].as_array().into_iter().flatten())
        .flat_map(|a| a["Addresses"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(addrs.len(), 4, "each task on ingress and on app: {tasks:?}");
    assert!(!addrs.contains(&vip_app.as_str()), "a task has the VIP {vip_app}: {addrs:?}");

    // Dynamic ports, from 30000; a range folds in PORTS.
    create(m, &["--name", "dyn", "-p", "80", "busybox", "sleep", "1d"]).unwrap();
    assert_eq!(endpoint(m, "dyn")["Ports"][0]["PublishedPort"], 30000);
    create(m, &["--name", "dyn2", "-p", "80", "-p", "81/udp", "busybox", "sleep", "1d"]).unwrap();
    assert_eq!(ports_of(m, "dyn2"), "*:30001->80/tcp, *:30000->81/udp");
    create(m, &["--name", "range", "-p", "9001-9002:81-82", "busybox", "sleep", "1d"]).unwrap();
    assert_eq!(ports_of(m, "range"), "*:9001-9002->81-82/tcp");
    // No published ports, no network: no VIP at all.
    create(m, &["--name", "plain", "busybox", "sleep", "1d"]).unwrap();
    assert!(endpoint(m, "plain")["VirtualIPs"].is_null());

    // docker's errors; nothing is created.
    let web_id = docker(m, &["service", "inspect", "--format", "{{.ID}}", "web"]).unwrap().trim().to_owned();
    let dyn_id = docker(m, &["service", "inspect", "--format", "{{.ID}}", "dyn"]).unwrap().trim().to_owned();
    let e = create(m, &["--name", "clash", "-p", "7080:90", "busybox", "sleep", "1d"]).unwrap_err();
    assert!(
        e.contains(&format!(
            "port '7080' is already in use by service 'web' ({web_id}) as a host-published port"
        )),
        "{e}"
    );
    let e = create(m, &["--name", "clash", "-p", "30000:90", "busybox", "sleep", "1d"]).unwrap_err();
    assert!(
        e.contains(&format!("port '30000' is already in use by service 'dyn' ({dyn_id}) as an ingress port")),
        "{e}"
    );
    let e = create(m, &["--name", "clash", "-p", "8080:80", "-p", "8080:81", "busybox", "sleep", "1d"])
        .unwrap_err();
    assert!(e.contains("EndpointSpec: duplicate published ports provided"), "{e}");
    let e = create(
        m,
        &["--name", "clash", "--endpoint-mode", "dnsrr", "-p", "8080:80", "busybox", "sleep", "1d"],
    )
    .unwrap_err();
    assert!(
        e.contains("EndpointSpec: port published with ingress mode can't be used with dnsrr mode"),
        "{e}"
    );
    assert!(service_ls(m).iter().all(|r| r[1] != "clash"));

    // dnsrr: no VIPs, even on a network.
    create(m, &["--name", "rr", "--endpoint-mode", "dnsrr", "--network", "app", "busybox", "sleep", "1d"])
        .unwrap();
    let e = endpoint(m, "rr");
    assert_eq!(e["Spec"]["Mode"], "dnsrr");
    assert!(e["VirtualIPs"].is_null(), "{e}");

    // Removing a service frees its port and addresses.
    docker(m, &["service", "rm", "web"]).unwrap();
    create(m, &["--name", "web2", "-p", "7080:80", "--network", "app", "busybox", "sleep", "1d"]).unwrap();
    let e2 = endpoint(m, "web2");
    assert_eq!(
        e2["VirtualIPs"][1]["Addr"],
        vip_app.as_str(),
        "the freed VIP is the lowest free address again"
    );

    // Host mode: one task per node for a host port; the rest wait with
    // docker's explanation.
    create(
        m,
        &[
            "--name",
            "hostp",
            "--replicas",
            "3",
            "-p",
            "mode=host,published=8081,target=80",
            "busybox",
            "sleep",
            "1d",
        ],
    )
    .unwrap();
    assert_eq!(ports_of(m, "hostp"), "", "host-mode ports are not in PORTS");
    poll::until("two hostp tasks running and one pending", LONG, || {
        let rows = service_ps(m, "hostp");
        let running = rows.iter().filter(|r| r[5].starts_with("Running")).count();
        let pending = rows.iter().any(|r| {
            r[5].starts_with("Pending")
                && r[6].contains("no suitable node (host-mode port already in use on 2 nodes)")
        });
        if running == 2 && pending { Ok(()) } else { Err(format!("{rows:?}")) }
    })
    .unwrap();
    let nodes: Vec<String> = service_ps(m, "hostp")
        .into_iter()
        .filter(|r| r[5].starts_with("Running"))
        .map(|r| r[3].clone())
        .collect();
    assert_ne!(nodes[0], nodes[1], "{nodes:?}");

    // Our CLI: the same PORTS and the same --pretty ports section (read
    // until a task's start does not fall between the two reads).
    poll::until("both CLIs to print the same service ls", LONG, || {
        let (ours, theirs) = (agent(m, &["service", "ls"]).unwrap(), docker(m, &["service", "ls"]).unwrap());
        if ours == theirs { Ok(()) } else { Err(format!("ours:\n{ours}\ndocker's:\n{theirs}")) }
    })
    .unwrap();
    let tail = |s: String| s[s.find("Endpoint Mode:").unwrap_or(0)..].to_owned();
    for s in ["dyn2", "plain"] {
        assert_eq!(
            tail(agent(m, &["service", "inspect", "--pretty", s]).unwrap()),
            tail(docker(m, &["service", "inspect", "--pretty", s]).unwrap())
        );
    }
    agent(
        m,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "ours",
            "-p",
            "published=7090,target=80,protocol=udp",
            "busybox",
        ],
    )
    .unwrap();
    assert_eq!(ports_of(m, "ours"), "*:7090->80/udp");
    let e = stderr(&agent(m, &["service", "create", "-p", "1.2.3.4:80:80", "busybox"]).unwrap_err());
    assert!(e.contains("hostip is not supported"), "{e}");
    let e = stderr(&agent(m, &["service", "create", "-p", "published=80", "busybox"]).unwrap_err());
    assert!(e.contains("missing mandatory field 'target'"), "{e}");
    let e = stderr(&agent(m, &["service", "create", "-p", "mode=x,target=80", "busybox"]).unwrap_err());
    assert!(e.contains("invalid publish mode value (x): must be either 'ingress' or 'host'"), "{e}");
}
