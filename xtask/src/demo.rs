//! `cargo xtask demo`: the seeds' tutorial on this machine. Six hosts in
//! network namespaces (node1 inits, node2 and node3 join as managers, node4–6
//! as workers, with the tokens init printed) and a seventh outside the
//! swarm, the client; the overlay network `swarm_test`; a `helloworld` service of two
//! busybox tasks serving HTTP on 80, published as 7080. It shows `service ls`
//! and `service ps`, pings one task from the other by container name across
//! hosts, fetches `http://<node>:7080/` from the client for every node (which
//! task answered, and the client address the task saw), kills one task's
//! container and shows its replacement, scales to 3 and back to 2, and
//! leaves everything running until `cargo xtask demo --down`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use swarm_tests::{
    poll,
    swarm::{agent, docker},
    testbed::{self, Lifetime, Testbed},
};

use crate::{step, target_dir, workspace_root};

pub const NAME: &str = "demo";

#[derive(clap::Args)]
pub struct Args {
    /// Remove the demo cluster (stops its agents, removes the hosts).
    #[arg(long)]
    down: bool,
    /// Number of swarm hosts (node1 inits, node2 and node3 join as managers,
    /// the rest as workers); one more host is the outside client.
    #[arg(long, default_value_t = 6)]
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
    step(&format!("bringing up {} hosts and an outside client (testbed {NAME})", args.hosts));
    let tb = Testbed::create(NAME, args.hosts + 1, Lifetime::Persistent)?;
    let all = tb.hosts();
    let (h, client) = (&all[..args.hosts], &all[args.hosts]);
    let client_ip = format!("198.18.0.{}", args.hosts + 1);
    step("node1: swarm-agent init");
    print!("{}", agent(&h[0], &["init"])?);
    let worker = agent(&h[0], &["join-token", "-q", "worker"])?.trim().to_owned();
    let manager = agent(&h[0], &["join-token", "-q", "manager"])?.trim().to_owned();
    for (i, host) in h.iter().enumerate().skip(1) {
        let (role, token) = if i < 3 { ("manager", &manager) } else { ("worker", &worker) };
        step(&format!("{}: swarm-agent join --token <{role} token> 198.18.0.1:2377", host.name));
        print!("{}", agent(host, &["join", "--token", token, "198.18.0.1:2377"])?);
    }
    step("node1: swarm-agent node ls");
    let rows = poll::until("every node ready", LONG, || {
        let out = agent(&h[0], &["node", "ls"]).map_err(|e| e.to_string())?;
        let ready = out.lines().skip(1).filter(|l| l.contains(" Ready ")).count();
        if ready == h.len() { Ok(out) } else { Err(out) }
    })
    .map_err(anyhow::Error::msg)?;
    print!("{rows}");

    step("node1: swarm-agent network create --driver overlay swarm_test");
    print!("{}", agent(&h[0], &["network", "create", "--driver", "overlay", "swarm_test"])?);

    // The busybox image on node1 only: managers ship it to the nodes that need it.
    let image = swarm_tests::image::busybox_rootfs(&target_dir()).map_err(anyhow::Error::msg)?;
    step("node1: docker import busybox");
    let mut c = h[0].command("docker")?;
    c.args(["import", "--change", "CMD [\"sh\"]", &image.display().to_string(), "busybox:latest"]);
    print!("{}", swarm_tests::cmd::run(&mut c)?);

    step(&format!(
        "node1: swarm-agent service create --replicas 2 --name helloworld -p 7080:80 --network=swarm_test busybox sh -c '{HELLO}'"
    ));
    print!(
        "{}",
        agent(
            &h[0],
            &[
                "service",
                "create",
                "--replicas",
                "2",
                "--name",
                "helloworld",
                "-p",
                "7080:80",
                "--network=swarm_test",
                "busybox",
                "sh",
                "-c",
                HELLO,
            ]
        )?
    );
    step("node1: swarm-agent service ls");
    print!("{}", agent(&h[0], &["service", "ls"])?);
    step("node1: swarm-agent service ps helloworld");
    print!("{}", agent(&h[0], &["service", "ps", "helloworld"])?);

    let tasks = poll::until("both tasks running", LONG, || {
        let t = tasks(h, "helloworld.");
        if t.len() == 2 { Ok(t) } else { Err(format!("{} running", t.len())) }
    })
    .map_err(anyhow::Error::msg)?;
    let (a, b) = (&tasks[0], &tasks[1]);
    step(&format!(
        "{}: docker exec {} ping -c 3 {}   (by container name, across hosts)",
        a.host,
        a.short(),
        b.name
    ));
    let out = poll::until("the name to resolve", LONG, || {
        docker(&h[a.index], &["exec", &a.id, "ping", "-c", "3", &b.name]).map_err(|e| e.to_string())
    })
    .map_err(anyhow::Error::msg)?;
    print!("{out}");

    step(&format!(
        "{} ({client_ip}, outside the swarm): wget http://<node>:7080/cgi-bin/hello for every node",
        client.name
    ));
    for (i, host) in h.iter().enumerate() {
        let url = format!("http://198.18.0.{}:7080/cgi-bin/hello", i + 1);
        let answer = poll::until("the routing mesh to answer", LONG, || {
            client
                .run("busybox", ["timeout", "5", "busybox", "wget", "-q", "-O", "-", &url])
                .map_err(|e| e.to_string())
        })
        .map_err(anyhow::Error::msg)?;
        let here = if tasks.iter().any(|t| t.index == i) { "runs a task" } else { "no task here" };
        // busybox httpd shows IPv4 clients as `[::ffff:a.b.c.d]`.
        let answer = answer.trim().replace("[::ffff:", "").replace(']', "");
        println!("{:<6} ({here:<12}) -> {answer}", host.name);
    }

    step(&format!("{}: docker kill {}   (one task's container)", a.host, a.short()));
    docker(&h[a.index], &["kill", &a.id])?;
    poll::until("the task to be replaced", LONG, || {
        let ps = agent(&h[0], &["service", "ps", "helloworld"]).map_err(|e| e.to_string())?;
        let running = ps.lines().filter(|l| l.contains(" Running ")).count();
        if running == 2 && ps.lines().count() >= 4 { Ok(()) } else { Err(ps) }
    })
    .map_err(anyhow::Error::msg)?;
    step("node1: swarm-agent service ps helloworld");
    print!("{}", agent(&h[0], &["service", "ps", "helloworld"])?);

    for n in ["3", "2"] {
        step(&format!("node1: swarm-agent service scale helloworld={n}"));
        print!("{}", agent(&h[0], &["service", "scale", &format!("helloworld={n}")])?);
        step("node1: swarm-agent service ls");
        print!("{}", agent(&h[0], &["service", "ls"])?);
    }
    println!();
    println!("The swarm is running. Each host is a network namespace; run commands in one with:");
    println!("  cargo xtask testbed exec --name {NAME} node1 -- {} service ps helloworld", bin.display());
    println!("  cargo xtask testbed exec --name {NAME} node1 -- docker service ls      (docker's own CLI)");
    println!(
        "From the outside client:     cargo xtask testbed exec --name {NAME} {} -- busybox wget -q -O - http://198.18.0.4:7080/cgi-bin/hello",
        client.name
    );
    println!("Cut a host off the network:  cargo xtask testbed cut --name {NAME} node4");
    println!("Remove everything:           cargo xtask demo --down");
    Ok(())
}

const LONG: std::time::Duration = std::time::Duration::from_secs(60);

/// The tutorial's service: busybox httpd on 80 whose `/cgi-bin/hello`
/// names the task that answered and the client address it saw.
const HELLO: &str = "mkdir -p /www/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho hello from $(hostname), you are $REMOTE_ADDR\\n' > /www/cgi-bin/hello && chmod +x /www/cgi-bin/hello && exec httpd -f -p 80 -h /www";

/// A running task container.
struct TaskContainer {
    index: usize,
    host: String,
    id: String,
    name: String,
}

impl TaskContainer {
    fn short(&self) -> &str {
        &self.id[..12]
    }
}

/// The running containers whose name starts with `prefix`, on every host.
fn tasks(h: &[swarm_tests::testbed::Host], prefix: &str) -> Vec<TaskContainer> {
    let mut out = Vec::new();
    for (index, host) in h.iter().enumerate() {
        let Ok(ps) = docker(host, &["ps", "--no-trunc", "--format", "{{.ID}} {{.Names}}"]) else { continue };
        for l in ps.lines() {
            if let Some((id, name)) = l.split_once(' ')
                && name.starts_with(prefix)
            {
                out.push(TaskContainer {
                    index,
                    host: host.name.clone(),
                    id: id.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
    }
    out
}
