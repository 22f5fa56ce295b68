//! The underlay XDP counter on real hosts: attached with the `swarm-agent`
//! CLI to a testbed host's `eth0`, fed by real VXLAN traffic from kernel vxlan
//! devices (used here only as a traffic source). Needs root.

use std::time::Duration;

use serde_json::Value;
use swarm_tests::{
    agent_bin, cmd, poll,
    testbed::{Host, Testbed},
};

/// Runs `swarm-agent args...` inside `host`.
fn agent(host: &Host, args: &[&str]) -> Result<String, cmd::CmdError> {
    let mut c = host.command(agent_bin()).unwrap();
    c.args(args);
    cmd::run(&mut c)
}

fn xdp_prog_on_eth0(host: &Host) -> Option<String> {
    let out = host.run("ip", ["-d", "link", "show", "dev", "eth0"]).unwrap();
    out.lines().find(|l| l.trim_start().starts_with("prog/xdp")).map(|l| l.trim().to_owned())
}

/// A kernel vxlan device `vx<vni>` from `local` to `remote` with an overlay address.
fn vxlan_dev(host: &Host, vni: u32, remote: &Host, overlay: &str) {
    let dev = format!("vx{vni}");
    let (vni_s, local, remote) =
        (vni.to_string(), host.underlay_ip.to_string(), remote.underlay_ip.to_string());
    host.run(
        "ip",
        [
            "link", "add", &dev, "type", "vxlan", "id", &vni_s, "local", &local, "remote", &remote,
            "dstport", "4789", "dev", "eth0",
        ],
    )
    .unwrap();
    host.run("ip", ["addr", "add", overlay, "dev", &dev]).unwrap();
    host.run("ip", ["link", "set", &dev, "up"]).unwrap();
}

/// (packets, bytes) a kernel vxlan device has sent.
fn tx_stats(host: &Host, dev: &str) -> (u64, u64) {
    let out = host.run("ip", ["-j", "-s", "link", "show", "dev", dev]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    let tx = &v[0]["stats64"]["tx"];
    (tx["packets"].as_u64().unwrap(), tx["bytes"].as_u64().unwrap())
}

fn stats(host: &Host) -> Value {
    serde_json::from_str(&agent(host, &["debug", "xdp", "stats", "--json"]).unwrap()).unwrap()
}

fn vni_counter(stats: &Value, vni: u32) -> (u64, u64) {
    stats["vni"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["vni"] == vni)
        .map_or((0, 0), |e| (e["packets"].as_u64().unwrap(), e["bytes"].as_u64().unwrap()))
}

#[test]
fn counts_real_vxlan_traffic_per_vni() {
    let tb = Testbed::up(2).unwrap();
    let (a, b) = (tb.host(0), tb.host(1));
    let out = agent(b, &["debug", "xdp", "attach", "eth0"]).unwrap();
    assert!(out.starts_with("attached xdp_vxlan_count to eth0"), "{out}");
    for (vni, net) in [(42, "10.42.0"), (4096, "10.96.0")] {
        vxlan_dev(a, vni, b, &format!("{net}.1/24"));
        vxlan_dev(b, vni, a, &format!("{net}.2/24"));
    }
    // Different counts and sizes per VNI, so swapped or merged counters show.
    a.run("ping", ["-c5", "-i0.05", "-s100", "-W2", "10.42.0.2"])
        .expect("ping over VNI 42 passes through XDP");
    a.run("ping", ["-c3", "-i0.05", "-s1000", "-W2", "10.96.0.2"])
        .expect("ping over VNI 4096 passes through XDP");

    // What node1 sent must be exactly what node2's XDP program counted. The
    // vxlan device counts bytes after the inner Ethernet header; on the wire
    // each frame adds that header (14) and the VXLAN encapsulation (50).
    for (vni, dev) in [(42u32, "vx42"), (4096, "vx4096")] {
        poll::until(
            &format!("XDP counters for VNI {vni} to match what was sent"),
            Duration::from_secs(10),
            || {
                let (sent_packets, sent_bytes) = tx_stats(a, dev);
                let expected = (sent_packets, sent_bytes + sent_packets * (14 + 50));
                let counted = vni_counter(&stats(b), vni);
                if counted == expected {
                    Ok(())
                } else {
                    Err(format!("sent {expected:?}, counted {counted:?}"))
                }
            },
        )
        .unwrap();
    }
    let s = stats(b);
    let (p42, b42) = vni_counter(&s, 42);
    let (p4096, b4096) = vni_counter(&s, 4096);
    assert!(p42 >= 5 && p4096 >= 3, "{s}");
    assert_eq!(s["class"]["vxlan"]["packets"], p42 + p4096, "{s}");
    assert_eq!(s["class"]["vxlan"]["bytes"], b42 + b4096, "{s}");
    assert_eq!(s["vni"].as_array().unwrap().len(), 2, "only the two VNIs in use: {s}");
    // The underlay's own ARP shows up as non-IPv4, never as VXLAN.
    assert!(s["class"]["non-ipv4"]["packets"].as_u64().unwrap() >= 1, "{s}");
}

#[test]
fn cli_attaches_and_detaches_and_refuses_bad_requests() {
    let tb = Testbed::up(1).unwrap();
    let h = tb.host(0);
    let pins = h.bpffs().join("swarm-agent");

    // Bad requests change nothing.
    let e = agent(h, &["debug", "xdp", "attach", "nope0"]).unwrap_err();
    assert!(e.to_string().contains("Error: no such network interface: nope0"), "{e}");
    assert!(!pins.exists(), "a refused attach creates nothing");
    let e = agent(h, &["debug", "xdp", "stats"]).unwrap_err();
    assert!(e.to_string().contains("xdp_vxlan_count is not loaded"), "{e}");
    let e = agent(h, &["debug", "xdp", "detach", "eth0"]).unwrap_err();
    assert!(e.to_string().contains("xdp_vxlan_count is not attached to eth0"), "{e}");

    assert_eq!(xdp_prog_on_eth0(h), None);
    agent(h, &["debug", "xdp", "attach", "eth0"]).unwrap();
    let prog = xdp_prog_on_eth0(h).expect("an XDP program on eth0");
    assert!(prog.contains("name xdp_vxlan_count"), "{prog}");
    // The attachment outlives the CLI process: it is pinned.
    assert!(pins.join("links/xdp_vxlan_count@eth0").exists());

    let e = agent(h, &["debug", "xdp", "attach", "eth0"]).unwrap_err();
    assert!(e.to_string().contains("xdp_vxlan_count is already attached to eth0"), "{e}");
    assert_eq!(xdp_prog_on_eth0(h).as_deref(), Some(prog.as_str()), "the first attachment is untouched");

    let table = agent(h, &["debug", "xdp", "stats"]).unwrap();
    assert!(table.starts_with("VNI       PACKETS   BYTES\n"), "{table}");
    assert!(table.contains("\nCLASS                PACKETS   BYTES\nvxlan "), "{table}");

    agent(h, &["debug", "xdp", "detach", "eth0"]).unwrap();
    assert_eq!(xdp_prog_on_eth0(h), None);
    assert!(!pins.join("maps/VXLAN_VNI_STATS").exists(), "maps are unpinned with the last attachment");
    // Traffic still flows on a host after detach.
    h.run("ping", ["-c1", "-W1", "127.0.0.1"]).unwrap();
}
