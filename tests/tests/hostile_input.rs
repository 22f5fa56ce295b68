//! Hostile bytes from outside the cluster: gossip connections that announce
//! huge frames cost the agent no memory and do not stop legitimate gossip.
//! Needs root.

use std::{
    io::Write as _,
    net::{Ipv4Addr, TcpStream},
    time::Duration,
};

use swarm_tests::{
    overlay::{Endpoint, connect},
    poll,
    swarm::{agent, daemon_log, daemon_pid, token},
    testbed::{Host, Testbed},
};

const NET: &str = "net1";

/// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
fn vm_kib(pid: i32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = s.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn wait_reachable(from: &Endpoint, to: Ipv4Addr, host: &Host) {
    poll::until(&format!("{} to reach {to}", from.ip), Duration::from_secs(30), || from.ping(to))
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(host)));
}

#[test]
fn hostile_gossip_connections_cost_no_memory_and_gossip_keeps_working() {
    let tb = Testbed::up(3).unwrap();
    let (m, w, outsider) = (tb.host(0), tb.host(1), tb.host(2));
    agent(m, &["init"]).unwrap();
    agent(w, &["join", "--token", &token(m, "worker"), "198.18.0.1:2377"]).unwrap();
    agent(m, &["network", "create", "--driver", "overlay", "--attachable", NET]).unwrap();
    let on_manager = connect(m, NET, "ep").unwrap();
    let on_worker = connect(w, NET, "ep").unwrap();
    wait_reachable(&on_manager, on_worker.ip, m);

    let pid = daemon_pid(m);
    let before = vm_kib(pid, "VmHWM");
    // 100 connections, each announcing a frame just under 16 MiB and
    // sending 1 MiB of it, all held open together.
    let held = outsider
        .in_netns(|| {
            let to = std::net::SocketAddr::from((m.underlay_ip, 7946));
            let junk = vec![0xa5u8; 1 << 20];
            let mut conns = Vec::new();
            for _ in 0..100 {
                let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { continue };
                s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
                let _ = s.write_all(&((16u32 << 20) - 1).to_be_bytes());
                let _ = s.write_all(&junk);
                conns.push(s);
            }
            conns
        })
        .unwrap();
    assert!(!held.is_empty(), "no hostile connection was even accepted");
    let after = vm_kib(pid, "VmHWM");
    let grown_mib = after.saturating_sub(before) / 1024;
    eprintln!("agent peak RSS {before} KiB before, {after} KiB after {} hostile connections", held.len());
    assert!(grown_mib < 32, "peak RSS grew by {grown_mib} MiB");

    // Legitimate gossip still works: a new endpoint spreads to the manager.
    let second = connect(w, NET, "ep2").unwrap();
    wait_reachable(&on_manager, second.ip, m);
    drop(held);
    assert!(vm_kib(pid, "VmRSS") < before + 32 * 1024);
}

#[test]
fn hostile_bytes_on_2377_leave_the_manager_serving() {
    let tb = Testbed::up(2).unwrap();
    let (m, outsider) = (tb.host(0), tb.host(1));
    agent(m, &["init"]).unwrap();
    let pid = daemon_pid(m);
    let before = vm_kib(pid, "VmHWM");
    let held = outsider
        .in_netns(|| {
            let to = std::net::SocketAddr::from((m.underlay_ip, 2377));
            let mut conns = Vec::new();
            for i in 0..400u32 {
                let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(1)) else { continue };
                s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
                let junk: Vec<u8> = match i % 3 {
                    // Plain garbage.
                    0 => (0..4096u32).map(|b| (b.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
                    // A TLS record header announcing a 16 KiB handshake, then silence.
                    1 => vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc],
                    // HTTP/2 in clear text, which the TLS listener cannot speak.
                    _ => b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
                };
                let _ = s.write_all(&junk);
                conns.push(s);
            }
            conns
        })
        .unwrap();
    // While they are all open, the manager answers at once.
    let start = std::time::Instant::now();
    agent(m, &["node", "ls"]).unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(m)));
    agent(m, &["network", "create", "--driver", "overlay", "still-writable"]).unwrap();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    let grown_mib = vm_kib(pid, "VmHWM").saturating_sub(before) / 1024;
    eprintln!("{} hostile connections to 2377; peak RSS grew by {grown_mib} MiB", held.len());
    assert!(grown_mib < 32, "peak RSS grew by {grown_mib} MiB");
    drop(held);
}
