//! The testbed itself: hosts that can reach each other and nothing else,
//! cutting and restoring hosts, and cleanup in every way a run can end.
//! Needs root.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use swarm_tests::{
    cmd::{self, command},
    poll,
    testbed::{self, Lifetime, Testbed, TestbedError},
};

fn ping(tb: &Testbed, from: usize, to: usize) -> Result<String, TestbedError> {
    let to = tb.host(to).underlay_ip.to_string();
    tb.host(from).run("ping", ["-c1", "-W1", &to])
}

fn root_links() -> String {
    let out = cmd::run(&mut command("ip", ["-o", "link", "show"])).unwrap();
    // Drop counters-like fields that change by themselves; keep names and indices.
    out.lines().map(|l| l.split(':').take(2).collect::<Vec<_>>().join(":")).collect::<Vec<_>>().join("\n")
}

fn netns_of(name: &str) -> Vec<String> {
    let prefix = format!("{}{name}-", testbed::NETNS_PREFIX);
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&d))
        .map(str::to_owned)
        .collect()
}

/// Everything of testbed `name` is gone: namespaces, directory, mounts.
fn assert_gone(name: &str) {
    let dir = Path::new(testbed::ROOT).join(name);
    assert_eq!(netns_of(name), Vec::<String>::new(), "namespaces of {name} left");
    assert_eq!(mounts_under(&dir), Vec::<String>::new(), "mounts of {name} left");
    assert!(!dir.exists(), "{} left", dir.display());
}

fn wait_gone(name: &str) {
    poll::until(&format!("testbed {name} to be removed"), Duration::from_secs(20), || {
        if netns_of(name).is_empty() && !Path::new(testbed::ROOT).join(name).exists() {
            Ok(())
        } else {
            Err("still there")
        }
    })
    .unwrap();
    assert_gone(name);
}

#[test]
fn three_hosts_reach_each_other_on_the_underlay() {
    let tb = Testbed::up(3).unwrap();
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                ping(&tb, from, to).unwrap_or_else(|e| panic!("node{} -> node{}: {e}", from + 1, to + 1));
            }
        }
    }
    for (i, h) in tb.hosts().iter().enumerate() {
        assert_eq!(h.name, format!("node{}", i + 1));
        assert_eq!(h.run("hostname", [] as [&str; 0]).unwrap().trim(), h.name, "own UTS namespace");
        let addrs = h.run("ip", ["-4", "-o", "addr", "show", "dev", "eth0"]).unwrap();
        assert!(addrs.contains(&format!("inet {}/24", h.underlay_ip)), "{addrs}");
        assert!(h.state_dir().is_dir());
        assert!(testbed::is_bpffs(&h.bpffs()), "{} is its own bpffs", h.bpffs().display());
    }
    // Each host has its own bpffs instance: a file pinned in one is not in another.
    std::fs::create_dir(tb.host(0).bpffs().join("only-here")).unwrap();
    assert!(!tb.host(1).bpffs().join("only-here").exists());
    // The machine's own hostname is untouched.
    let here = cmd::run(&mut command("hostname", [] as [&str; 0])).unwrap();
    assert!(!here.trim().starts_with("node"), "root hostname changed to {here}");
}

#[test]
fn root_namespace_is_not_on_the_switch() {
    let before = root_links();
    let tb = Testbed::up(2).unwrap();
    assert_eq!(root_links(), before, "the testbed adds no links to the root namespace");
    // The hosts' underlay ports sit on a bridge inside the switch namespace.
    let ports =
        cmd::run(&mut command("ip", ["-n", &tb.switch_netns(), "-o", "link", "show", "master", "br0"]))
            .unwrap();
    assert!(ports.contains("node1@") && ports.contains("node2@"), "{ports}");
}

#[test]
fn a_cut_host_is_unreachable_until_restored() {
    let tb = Testbed::up(2).unwrap();
    ping(&tb, 0, 1).unwrap();
    tb.cut(tb.host(1)).unwrap();
    let err = ping(&tb, 0, 1).expect_err("node2 is cut off");
    assert!(err.to_string().contains("ping"), "{err}");
    ping(&tb, 1, 0).expect_err("and cannot reach out either");
    tb.restore(tb.host(1)).unwrap();
    poll::until("node2 to be reachable again", Duration::from_secs(10), || ping(&tb, 0, 1)).unwrap();
}

#[test]
fn down_removes_namespaces_links_mounts_and_processes() {
    let before = root_links();
    let tb = Testbed::up(2).unwrap();
    let name = tb.name().to_owned();
    let mut sleeper = tb.host(1).command("sleep").unwrap().arg("1000").spawn().unwrap();
    assert_eq!(netns_of(&name).len(), 3, "switch + 2 hosts");
    tb.down().unwrap();
    assert_gone(&name);
    let status = poll::until("the process in the host to be killed", Duration::from_secs(10), || {
        sleeper.try_wait().unwrap().ok_or("still running")
    })
    .unwrap();
    assert!(!status.success());
    assert_eq!(root_links(), before);
}

#[test]
fn drop_during_a_panic_removes_everything() {
    let name = std::panic::catch_unwind(|| {
        let tb = Testbed::up(1).unwrap();
        let name = tb.name().to_owned();
        std::panic::panic_any(name);
    })
    .expect_err("panicked")
    .downcast::<String>()
    .unwrap();
    assert_gone(&name);
}

/// Starts the holder helper, which owns a testbed, and waits until it is ready.
fn start_holder(name: &str) -> Child {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_testbed-holder")).arg(name).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "holder failed to create testbed {name}");
    child
}

fn kill(child: &mut Child, signal: nix::sys::signal::Signal) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
    child.wait().unwrap()
}

#[test]
fn ctrl_c_removes_the_testbed() {
    let name = format!("int{}", std::process::id());
    let mut holder = start_holder(&name);
    assert_eq!(netns_of(&name).len(), 3);
    let status = kill(&mut holder, nix::sys::signal::Signal::SIGINT);
    assert!(!status.success());
    assert_gone(&name);
}

#[test]
fn after_a_crash_the_same_name_can_be_brought_up_again() {
    let name = format!("crash{}", std::process::id());
    let leftovers = {
        let _no_gc = testbed::hold_orphans().unwrap();
        let mut holder = start_holder(&name);
        kill(&mut holder, nix::sys::signal::Signal::SIGKILL);
        netns_of(&name).len()
    };
    assert_eq!(leftovers, 3, "a killed owner leaves its testbed behind");
    let tb = Testbed::create(&name, 2, Lifetime::Process).unwrap();
    ping(&tb, 0, 1).unwrap();
    drop(tb);
    assert_gone(&name);
}

#[test]
fn testbeds_of_dead_owners_are_removed_by_the_next_testbed() {
    let name = format!("orphan{}", std::process::id());
    {
        let _no_gc = testbed::hold_orphans().unwrap();
        let mut holder = start_holder(&name);
        kill(&mut holder, nix::sys::signal::Signal::SIGKILL);
        assert_eq!(netns_of(&name).len(), 3);
    }
    let _other = Testbed::up(1).unwrap();
    wait_gone(&name);
}

#[test]
fn a_persistent_testbed_outlives_its_handle() {
    let name = format!("keep{}", std::process::id());
    drop(Testbed::create(&name, 1, Lifetime::Persistent).unwrap());
    let tb = Testbed::open(&name).unwrap();
    assert_eq!(tb.hosts().len(), 1);
    assert!(Testbed::list().contains(&name));
    tb.host(0).run("true", [] as [&str; 0]).unwrap();
    drop(tb);
    assert_eq!(netns_of(&name).len(), 2, "dropping an opened handle keeps it");
    testbed::remove(&name).unwrap();
    assert_gone(&name);
}

#[test]
fn bad_requests_are_refused_and_create_nothing() {
    let name = format!("bad{}", std::process::id());
    let e = Testbed::create(&name, 0, Lifetime::Process).unwrap_err();
    assert!(matches!(e, TestbedError::InvalidHostCount(0)), "{e}");
    let e = Testbed::create(&name, testbed::MAX_HOSTS + 1, Lifetime::Process).unwrap_err();
    assert!(e.to_string().contains("1 to 250"), "{e}");
    assert_gone(&name);
    for bad in ["", "Has-Caps", "with space", "../escape", "-lead"] {
        let e = Testbed::create(bad, 1, Lifetime::Process).unwrap_err();
        assert!(matches!(e, TestbedError::InvalidName(_)), "{bad:?}: {e}");
    }
    let e = Testbed::open(&name).unwrap_err();
    assert_eq!(e.to_string(), format!("no testbed named {name:?} (see `cargo xtask testbed status`)"));
    let tb = Testbed::up(1).unwrap();
    let e = tb.host_named("node2").unwrap_err();
    assert!(e.to_string().contains("hosts are node1..node1"), "{e}");
}
