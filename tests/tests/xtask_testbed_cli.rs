//! `cargo xtask testbed up/exec/cut/restore/status/down` as a person uses it:
//! through the xtask binary. Needs root.

use std::{path::PathBuf, process::Command};

use swarm_tests::cmd;

fn xtask() -> Command {
    // target/<profile>/deps/<this test> -> target/<profile>/xtask, built by
    // `cargo build --bins` (which `cargo xtask test` runs first).
    let exe = std::env::current_exe().unwrap();
    let bin: PathBuf = exe.parent().and_then(|d| d.parent()).unwrap().join("xtask");
    assert!(bin.is_file(), "{} missing; run `cargo build --bins`", bin.display());
    Command::new(bin)
}

fn run(args: &[&str]) -> Result<String, cmd::CmdError> {
    let mut c = xtask();
    c.args(args);
    cmd::run(&mut c)
}

fn snapshot() -> (String, String) {
    let netns = cmd::run(&mut cmd::command("ip", ["netns", "list"])).unwrap();
    let links = cmd::run(&mut cmd::command("ip", ["-o", "link", "show"])).unwrap();
    let names =
        |s: &str| s.lines().map(|l| l.split(':').take(2).collect::<String>()).collect::<Vec<_>>().join("\n");
    (names(&netns), names(&links))
}

fn mine(netns: &str, name: &str) -> usize {
    netns.lines().filter(|l| l.starts_with(&format!("swtb-{name}-"))).count()
}

/// Removes the testbed even if an assertion fails.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = run(&["testbed", "down", "--name", &self.0]);
    }
}

fn ping(name: &str, from: &str, to: &str) -> Result<String, cmd::CmdError> {
    run(&["testbed", "exec", "--name", name, from, "--", "ping", "-c1", "-W1", to])
}

#[test]
fn up_gives_pingable_hosts_and_down_restores_the_machine() {
    let name = format!("cli{}", std::process::id());
    let (netns_before, links_before) = snapshot();
    let out = run(&["testbed", "up", "--hosts", "3", "--name", &name]).unwrap();
    let _down = Down(name.clone());
    assert!(out.contains(&format!("swtb-{name}-node3")), "{out}");

    assert_eq!(mine(&snapshot().0, &name), 4, "switch + 3 hosts");
    for (from, to) in [("node1", "198.18.0.2"), ("node2", "198.18.0.3"), ("node3", "198.18.0.1")] {
        ping(&name, from, to).unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    }
    let status = run(&["testbed", "status"]).unwrap();
    assert!(status.contains(&format!("testbed {name} ")), "{status}");

    run(&["testbed", "cut", "--name", &name, "node3"]).unwrap();
    ping(&name, "node1", "198.18.0.3").expect_err("node3 is cut off");
    run(&["testbed", "restore", "--name", &name, "node3"]).unwrap();
    swarm_tests::poll::until("node3 back", std::time::Duration::from_secs(10), || {
        ping(&name, "node1", "198.18.0.3")
    })
    .unwrap();

    // exec passes the command's exit status through.
    let e = run(&["testbed", "exec", "--name", &name, "node1", "--", "sh", "-c", "exit 7"]).unwrap_err();
    assert!(e.to_string().contains("exit status: 7"), "{e}");
    let e = run(&["testbed", "exec", "--name", &name, "node9", "--", "true"]).unwrap_err();
    assert!(e.to_string().contains("no host \"node9\""), "{e}");

    // A second `up` with the same name replaces the first.
    run(&["testbed", "up", "--hosts", "2", "--name", &name]).unwrap();
    assert_eq!(mine(&snapshot().0, &name), 3, "switch + 2 hosts");

    run(&["testbed", "down", "--name", &name]).unwrap();
    let (netns_after, links_after) = snapshot();
    assert_eq!(mine(&netns_after, &name), 0);
    // Other tests may add or remove their own testbeds meanwhile; compare ours only.
    let ours = |s: &str| s.lines().filter(|l| !l.starts_with("swtb-")).collect::<Vec<_>>().join("\n");
    assert_eq!(ours(&netns_after), ours(&netns_before));
    assert_eq!(links_after, links_before, "no links left in the root namespace");
}
