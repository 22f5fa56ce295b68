//! `cargo xtask demo`: a three-host swarm in network namespaces on this
//! machine — init on node1, a second manager and a worker joined with the
//! tokens init printed — with an attachable overlay network and one endpoint
//! namespace ("app") per host attached to it, the busybox image and a
//! replicated service running across the hosts, left running until
//! `cargo xtask demo --down`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use swarm_tests::{
    swarm::agent,
    testbed::{self, Lifetime, Testbed},
};

use crate::{step, target_dir, workspace_root};

pub const NAME: &str = "demo";

#[derive(clap::Args)]
pub struct Args {
    /// Remove the demo cluster (stops its agents, removes the hosts).
    #[arg(long)]
    down: bool,
    /// Number of hosts (node1 inits, node2 joins as a manager, the rest as workers).
    #[arg(long, default_value_t = 3)]
    hosts: usize,
}

/// Builds the eBPF objects if missing and the release agent; returns its path
/// and makes the swarm test helpers use it.
pub fn build_agent() -> anyhow::Result<PathBuf> {
    if !crate::build_ebpf::object_path().is_file() {
        crate::build_ebpf::run()?;
    }
    step("building swarm-agent (release)");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--release", "--locked", "-p", "swarm-agent"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building swarm-agent failed ({status})");
    }
    let bin = target_dir().join("release").join("swarm-agent");
    // SAFETY: xtask is single-threaded here; nothing reads the environment concurrently.
    unsafe { std::env::set_var("SWARM_AGENT_BIN", &bin) };
    Ok(bin)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.down {
        testbed::remove(NAME)?;
        println!("demo cluster removed");
        return Ok(());
    }
    if args.hosts < 2 {
        bail!("the demo needs at least 2 hosts");
    }
    // A fresh machine: install what it lacks first, as `cargo xtask test` does.
    crate::setup::run()?;
    let bin = build_agent()?;
    step(&format!("bringing up {} hosts (testbed {NAME})", args.hosts));
    let tb = Testbed::create(NAME, args.hosts, Lifetime::Persistent)?;
    let h = tb.hosts();
    step("node1: swarm-agent init");
    print!("{}", agent(&h[0], &["init"])?);
    let worker = agent(&h[0], &["join-token", "-q", "worker"])?.trim().to_owned();
    let manager = agent(&h[0], &["join-token", "-q", "manager"])?.trim().to_owned();
    for (i, host) in h.iter().enumerate().skip(1) {
        let (role, token) = if i == 1 { ("manager", &manager) } else { ("worker", &worker) };
        step(&format!("{}: swarm-agent join --token <{role} token> 198.18.0.1:2377", host.name));
        print!("{}", agent(host, &["join", "--token", token, "198.18.0.1:2377"])?);
    }
    step("node1: swarm-agent node ls");
    // Give the joined nodes' first heartbeats a moment to arrive.
    let rows = swarm_tests::poll::until("every node ready", std::time::Duration::from_secs(20), || {
        let out = agent(&h[0], &["node", "ls"]).map_err(|e| e.to_string())?;
        let ready = out.lines().skip(1).filter(|l| l.contains(" Ready ")).count();
        if ready == h.len() { Ok(out) } else { Err(out) }
    })
    .map_err(anyhow::Error::msg)?;
    print!("{rows}");

    step("node1: swarm-agent network create --driver overlay --attachable demo-net");
    print!("{}", agent(&h[0], &["network", "create", "--driver", "overlay", "--attachable", "demo-net"])?);
    let mut endpoints = Vec::new();
    for host in h {
        let ns = host.add_netns("app")?;
        step(&format!("{}: swarm-agent network connect demo-net --netns {}", host.name, ns.display()));
        agent(host, &["network", "connect", "demo-net", "--netns", &ns.display().to_string()])?;
        let ip = swarm_tests::overlay::ipv4_of(host, &ns, "eth0").map_err(anyhow::Error::msg)?;
        println!("{}: app namespace has eth0 {ip}/24", host.name);
        endpoints.push(swarm_tests::overlay::Endpoint { host: host.clone(), netns: ns, ip });
    }
    let (first, last) = (&endpoints[0], &endpoints[endpoints.len() - 1]);
    step(&format!("ping from node1's app to {}'s app ({}), through VXLAN in eBPF", last.host.name, last.ip));
    swarm_tests::poll::until("the endpoints to know each other", std::time::Duration::from_secs(20), || {
        first.ping(last.ip)
    })
    .map_err(anyhow::Error::msg)?;
    let out = first.host.run_in(&first.netns, "ping", ["-c", "3", &last.ip.to_string()])?;
    print!("{out}");

    // Services: the busybox image on node1 only (managers ship it to the
    // nodes that need it), a replicated service over all hosts.
    let image = swarm_tests::image::busybox_rootfs(&target_dir()).map_err(anyhow::Error::msg)?;
    step("node1: swarm-agent image import (busybox, as docker import)");
    let mut c = h[0].command("docker")?;
    c.args(["import", "--change", "CMD [\"sh\"]", &image.display().to_string(), "busybox:latest"]);
    print!("{}", swarm_tests::cmd::run(&mut c)?);
    let replicas = h.len().to_string();
    step(&format!(
        "node1: swarm-agent service create --name web --replicas {replicas} --network demo-net busybox httpd -f -p 8080 -h /var/www"
    ));
    print!(
        "{}",
        agent(
            &h[0],
            &[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                &replicas,
                "--network",
                "demo-net",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "8080",
                "-h",
                "/var/www",
            ]
        )?
    );
    step("node1: swarm-agent service ls");
    print!("{}", agent(&h[0], &["service", "ls"])?);
    step("node1: swarm-agent service ps web");
    print!("{}", agent(&h[0], &["service", "ps", "web"])?);
    println!();
    println!("The swarm is running. Each host is a network namespace; run commands in one with:");
    println!("  cargo xtask testbed exec --name {NAME} node1 -- {} node ls", bin.display());
    println!("  cargo xtask testbed exec --name {NAME} node1 -- docker node ls      (docker's own CLI)");
    println!(
        "  cargo xtask testbed exec --name {NAME} node1 -- {} network inspect --verbose demo-net",
        bin.display()
    );
    println!("Inside an app namespace:      nsenter --net={} ping {}", first.netns.display(), last.ip);
    println!(
        "Scale the service:           cargo xtask testbed exec --name {NAME} node1 -- docker service scale web=6"
    );
    println!("Cut a host off the network:  cargo xtask testbed cut --name {NAME} node3");
    println!("Remove everything:           cargo xtask demo --down");
    Ok(())
}
