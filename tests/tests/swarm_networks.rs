//! `network create|ls|inspect|rm|connect|disconnect`: IPAM (subnets, VNIs,
//! addresses, reuse), docker's output and error texts, and the stock docker
//! CLI against the agent. Needs root and docker's CLI.

use swarm_tests::{
    cmd::CmdError,
    overlay::{connect, connect_netns, inspect},
    swarm::{agent, cluster, docker, stderr},
    testbed::Host,
};

/// Runs a command that must fail; returns its stderr.
fn fails(r: Result<String, CmdError>) -> String {
    match r {
        Ok(out) => panic!("expected a failure, got: {out}"),
        Err(e) => stderr(&e),
    }
}

fn overlay(h: &Host, extra: &[&str], name: &str) -> Result<String, CmdError> {
    let mut args = vec!["network", "create", "--driver", "overlay"];
    args.extend_from_slice(extra);
    args.push(name);
    agent(h, &args)
}

fn subnet_and_vni(h: &Host, name: &str) -> (String, String, String) {
    let v = inspect(h, name).unwrap();
    (
        v["IPAM"]["Config"][0]["Subnet"].as_str().unwrap().to_owned(),
        v["IPAM"]["Config"][0]["Gateway"].as_str().unwrap().to_owned(),
        v["Options"]["com.docker.network.driver.overlay.vxlanid_list"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn networks_get_subnets_and_vnis_in_order_reused_after_removal() {
    let tb = cluster(1, 1, &[], &[]);
    let m = tb.host(0);
    // `ingress` exists from init and takes the first subnet and VNI.
    assert_eq!(subnet_and_vni(m, "ingress"), ("10.0.0.0/24".into(), "10.0.0.1".into(), "4096".into()));
    assert_eq!(inspect(m, "ingress").unwrap()["Ingress"], true);

    let id = overlay(m, &[], "net1").unwrap();
    assert!(id.trim().len() == 25 && id.ends_with('\n'), "{id:?}");
    overlay(m, &[], "net2").unwrap();
    assert_eq!(subnet_and_vni(m, "net1"), ("10.0.1.0/24".into(), "10.0.1.1".into(), "4097".into()));
    assert_eq!(subnet_and_vni(m, "net2"), ("10.0.2.0/24".into(), "10.0.2.1".into(), "4098".into()));
    assert_eq!(agent(m, &["network", "rm", "net1"]).unwrap(), "net1\n");
    overlay(m, &[], "net3").unwrap();
    assert_eq!(subnet_and_vni(m, "net3"), ("10.0.1.0/24".into(), "10.0.1.1".into(), "4097".into()));

    // A chosen subnet and gateway; endpoints skip the gateway.
    overlay(m, &["--attachable", "--subnet", "10.77.0.0/16", "--gateway", "10.77.0.254"], "custom").unwrap();
    let (subnet, gw, _) = subnet_and_vni(m, "custom");
    assert_eq!((subnet.as_str(), gw.as_str()), ("10.77.0.0/16", "10.77.0.254"));
    let ep = connect(m, "custom", "ep").unwrap();
    assert_eq!(ep.ip.to_string(), "10.77.0.1");
    let routes = m.run_in(&ep.netns, "ip", ["route"]).unwrap();
    assert!(routes.contains("default via 10.77.0.254 dev eth0"), "{routes}");

    // -o com.docker.network.driver.mtu sets the network's MTU; endpoints get it minus VXLAN's 50.
    overlay(m, &["--attachable", "-o", "com.docker.network.driver.mtu=1400"], "small").unwrap();
    let ep = connect(m, "small", "ep-small").unwrap();
    let link = m.run_in(&ep.netns, "ip", ["-o", "link", "show", "eth0"]).unwrap();
    assert!(link.contains("mtu 1350 "), "{link}");
    // A chosen address.
    let ns = m.add_netns("ep-chosen").unwrap();
    let path = ns.display().to_string();
    agent(m, &["network", "connect", "small", "--netns", &path, "--ip", "10.0.3.77"]).unwrap();
    assert_eq!(swarm_tests::overlay::ipv4_of(m, &ns, "eth0").unwrap().to_string(), "10.0.3.77");
}

#[test]
fn bad_requests_fail_with_dockers_errors_and_change_nothing() {
    let tb = cluster(2, 1, &[], &[]);
    let (m, w) = (tb.host(0), tb.host(1));
    overlay(m, &["--attachable"], "net1").unwrap();
    overlay(m, &[], "private").unwrap();
    let before = agent(m, &["network", "ls"]).unwrap();
    let long = "x".repeat(64);

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["network", "create", "-d", "overlay", "net1"],
            "Error response from daemon: network with name net1 already exists\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", "bad_name-"],
            "Error response from daemon: name must be valid as a DNS name component\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", &long],
            "Error response from daemon: name must be 63 characters or fewer\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", "--subnet", "10.0.1.0/25", "clash"],
            "Error response from daemon: invalid pool request: Pool overlaps with other one on this address space (10.0.1.0/25 and 10.0.1.0/24 of network net1)\n",
        ),
        (
            vec![
                "network",
                "create",
                "-d",
                "overlay",
                "--subnet",
                "10.50.0.0/24",
                "--gateway",
                "10.60.0.1",
                "gw",
            ],
            "Error response from daemon: invalid gateway address 10.60.0.1: it does not belong to subnet 10.50.0.0/24\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", "--subnet", "10.50.0.300/24", "bad"],
            "Error response from daemon: invalid CIDR address: 10.50.0.300/24\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", "--subnet", "10.50.0.8/31", "tiny"],
            "Error response from daemon: invalid subnet 10.50.0.8/31: an overlay subnet needs room for a gateway and an endpoint (a /30 or larger)\n",
        ),
        (
            vec!["network", "create", "-d", "overlay", "-o", "com.docker.network.driver.mtu=big", "mtu"],
            "Error response from daemon: invalid MTU \"big\": it must be a number from 68 to 65535\n",
        ),
        (
            vec!["network", "create", "net9"],
            "Error response from daemon: network driver \"bridge\" is not supported for swarm networks: use the overlay driver\n",
        ),
        (vec!["network", "inspect", "nope"], "Error response from daemon: network nope not found\n"),
        (vec!["network", "rm", "nope"], "Error response from daemon: network nope not found\n"),
    ];
    for (args, want) in &cases {
        assert_eq!(fails(agent(m, args)), *want, "swarm-agent {args:?}");
    }
    // docker's CLI shows the daemon's words.
    for (args, want) in &cases[..4] {
        assert_eq!(fails(docker(m, args)), *want, "docker {args:?}");
    }
    assert_eq!(agent(m, &["network", "ls"]).unwrap(), before, "a failed request changed something");

    // Endpoints: non-attachable networks, taken or foreign addresses, missing namespaces.
    let ep = connect(w, "net1", "ep").unwrap();
    let ns = w.add_netns("other").unwrap();
    let path = ns.display().to_string();
    let (taken, attached) = (ep.ip.to_string(), ep.netns.display().to_string());
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["network", "connect", "private", "--netns", &path],
            "Error response from daemon: Could not attach to network private: network private not manually attachable\n".into(),
        ),
        (
            vec!["network", "connect", "net1", "--netns", &path, "--ip", &taken],
            format!("Error response from daemon: Address already in use: {} in network net1\n", ep.ip),
        ),
        (
            vec!["network", "connect", "net1", "--netns", &path, "--ip", "10.9.9.9"],
            "Error response from daemon: invalid address 10.9.9.9: it does not belong to subnet 10.0.1.0/24\n".into(),
        ),
        (
            vec!["network", "connect", "net1", "--netns", "/run/no-such-netns"],
            "Error response from daemon: no such network namespace: /run/no-such-netns\n".into(),
        ),
        (
            vec!["network", "connect", "net1", "--netns", &attached],
            format!("Error response from daemon: {attached} is already attached to network net1\n"),
        ),
        (
            vec!["network", "disconnect", "net1", "--netns", &path],
            format!("Error response from daemon: {path} is not attached to network net1 on this node\n"),
        ),
    ];
    for (args, want) in &cases {
        assert_eq!(fails(agent(w, args)), *want, "swarm-agent {args:?}");
    }
    let links = w.run_in(&ns, "ip", ["-o", "link"]).unwrap();
    assert!(!links.contains("eth0"), "a failed connect left a link: {links}");
    // The failed attempts released their addresses: the next one gets the next address.
    let next = connect_netns(w, "net1", &ns).unwrap();
    assert_eq!(next.ip.octets()[3], ep.ip.octets()[3] + 1, "{next:?} after {ep:?}");

    // A network with endpoints cannot be removed; once they are gone it can.
    let id = inspect(m, "net1").unwrap()["Id"].as_str().unwrap().to_owned();
    assert_eq!(
        fails(agent(m, &["network", "rm", "net1"])),
        format!(
            "Error response from daemon: error while removing network: network net1 id {id} has active endpoints\n"
        )
    );
    for e in [&ep, &next] {
        agent(w, &["network", "disconnect", "net1", "--netns", &e.netns.display().to_string()]).unwrap();
    }
    assert_eq!(agent(m, &["network", "rm", "net1"]).unwrap(), "net1\n");
}

#[test]
fn docker_cli_creates_lists_inspects_and_removes_networks() {
    let tb = cluster(2, 1, &[], &[]);
    let (m, w) = (tb.host(0), tb.host(1));
    let id = docker(m, &["network", "create", "-d", "overlay", "--attachable", "--label", "team=a", "web"])
        .unwrap();
    assert_eq!(id.trim().len(), 25, "{id}");
    overlay(m, &[], "db").unwrap();

    // Byte for byte the same tables and JSON as docker prints.
    for args in [
        vec!["network", "ls"],
        vec!["network", "ls", "-q"],
        vec!["network", "ls", "--no-trunc"],
        vec!["network", "ls", "--filter", "driver=overlay"],
        vec!["network", "ls", "--filter", "name=we"],
        vec!["network", "ls", "--filter", "label=team=a"],
        vec!["network", "inspect", "web"],
        vec!["network", "inspect", "web", "db"],
    ] {
        assert_eq!(agent(m, &args).unwrap(), docker(m, &args).unwrap(), "{args:?}");
    }
    let ls = docker(m, &["network", "ls"]).unwrap();
    let rows: Vec<&str> = ls.lines().collect();
    assert_eq!(rows[0], "NETWORK ID     NAME      DRIVER    SCOPE");
    assert!(rows[1].ends_with("   db        overlay   swarm"), "{ls}");
    assert!(rows[2].ends_with("   ingress   overlay   swarm"), "{ls}");
    assert!(rows[3].ends_with("   web       overlay   swarm"), "{ls}");
    assert_eq!(
        docker(m, &["network", "ls", "--filter", "label=team=a", "-q"]).unwrap(),
        format!("{}\n", &id[..12])
    );

    // A worker lists the networks it has endpoints in, like docker's workers.
    assert_eq!(agent(w, &["network", "ls", "-q"]).unwrap(), "");
    let ep = connect(w, "web", "ep").unwrap();
    assert_eq!(docker(w, &["network", "ls", "-q"]).unwrap(), format!("{}\n", &id[..12]));
    let v = inspect(w, "web").unwrap();
    let containers = v["Containers"].as_object().unwrap();
    assert_eq!(containers.len(), 1, "{v}");
    let c = containers.values().next().unwrap();
    assert_eq!(c["IPv4Address"], format!("{}/24", ep.ip));
    assert_eq!(c["Name"], ep.netns.display().to_string());

    agent(w, &["network", "disconnect", "web", "--netns", &ep.netns.display().to_string()]).unwrap();
    assert_eq!(docker(m, &["network", "rm", "web", "db"]).unwrap(), "web\ndb\n");
    assert_eq!(agent(m, &["network", "ls", "-q"]).unwrap().lines().count(), 1, "only ingress is left");
}
