//! Overlay networks end to end on the testbed: endpoints in namespaces on
//! different hosts talk through the eBPF VXLAN datapath; gossip spreads and
//! withdraws endpoints; outsiders' VXLAN is dropped; the agent can crash and
//! come back without breaking flows. Needs root.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use swarm_tests::{
    overlay::{
        Endpoint, TcpFlow, assert_no_tunnel_devices, connect, counter, datapath_endpoints, in_netns, inspect,
        tcp_echo, tcx_programs, udp_echo,
    },
    packet::{self, Ipv4},
    poll,
    swarm::{agent, cluster, daemon_log, kill9, start_daemon, token},
    testbed::{Host, Testbed},
};

const NET: &str = "net1";
const SETTLE: Duration = Duration::from_secs(30);

fn create_attachable(manager: &Host, name: &str) {
    agent(manager, &["network", "create", "--driver", "overlay", "--attachable", name]).unwrap();
}

/// Waits until `from` can ping `to` (gossip has spread the endpoint).
fn wait_reachable(from: &Endpoint, to: Ipv4Addr) {
    poll::until(&format!("{} to reach {to}", from.ip), SETTLE, || from.ping(to)).unwrap();
}

/// Waits until `from` can no longer ping `to`.
fn wait_unreachable(from: &Endpoint, to: Ipv4Addr) {
    poll::until(&format!("{to} to become unreachable from {}", from.ip), SETTLE, || match from.ping(to) {
        Ok(()) => Err("still answers"),
        Err(_) => Ok(()),
    })
    .unwrap();
}

/// Waits until `host`'s datapath table for `NET` satisfies `pred`.
fn wait_table(host: &Host, what: &str, pred: impl Fn(&[(Ipv4Addr, String)]) -> bool) {
    poll::until(what, SETTLE, || {
        let t = datapath_endpoints(host, NET)?;
        if pred(&t) { Ok(()) } else { Err(format!("{} has {t:?}", host.name)) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(host)));
}

fn has(t: &[(Ipv4Addr, String)], ip: Ipv4Addr) -> bool {
    t.iter().any(|(i, _)| *i == ip)
}

#[test]
fn endpoints_on_three_hosts_exchange_icmp_tcp_and_udp_without_tunnel_devices() {
    let tb = cluster(3, 1, &[], &[]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let eps: Vec<Endpoint> = hosts.iter().map(|h| connect(h, NET, "ep").unwrap()).collect();

    // Addresses from the first user subnet, unique; docker's MTU and route.
    let mut ips: Vec<Ipv4Addr> = eps.iter().map(|e| e.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "endpoint addresses must be unique: {eps:?}");
    for e in &eps {
        assert_eq!(e.ip.octets()[..3], [10, 0, 1], "{e:?}");
        let link = e.host.run_in(&e.netns, "ip", ["-o", "link", "show", "eth0"]).unwrap();
        assert!(link.contains("mtu 1450 "), "{link}");
        let o = e.ip.octets();
        assert!(link.contains(&format!("link/ether 02:42:0a:00:01:{:02x}", o[3])), "{link}");
        let routes = e.host.run_in(&e.netns, "ip", ["route"]).unwrap();
        assert!(routes.contains("default via 10.0.1.1 dev eth0"), "{routes}");
    }

    for a in &eps {
        for b in &eps {
            if a.ip != b.ip {
                wait_reachable(a, b.ip);
            }
        }
    }
    // Both ways, across hosts: bulk TCP (large GSO packets) and UDP datagrams
    // up to the MTU.
    for (a, b) in [(&eps[0], &eps[1]), (&eps[1], &eps[0]), (&eps[1], &eps[2]), (&eps[2], &eps[0])] {
        tcp_echo(a, b, 4 << 20).unwrap();
        tcp_echo(a, b, 1).unwrap();
        udp_echo(a, b, 100).unwrap();
        udp_echo(a, b, 1400).unwrap();
    }

    // Two endpoints on one host talk without leaving it.
    let local = connect(&hosts[0], NET, "ep-b").unwrap();
    let before = counter(&hosts[0], NET, "Events", "delivered-locally").unwrap();
    wait_reachable(&local, eps[0].ip);
    tcp_echo(&local, &eps[0], 1 << 20).unwrap();
    udp_echo(&eps[0], &local, 500).unwrap();
    assert!(counter(&hosts[0], NET, "Events", "delivered-locally").unwrap() > before);

    // The traffic went through our programs, and nothing else carries it.
    for h in hosts {
        assert!(counter(h, NET, "Events", "encapsulated").unwrap() > 0, "{}", h.name);
        assert!(counter(h, NET, "Events", "decapsulated").unwrap() > 0, "{}", h.name);
        assert!(counter(h, NET, "Events", "arp-replied").unwrap() > 0, "{}", h.name);
        assert_no_tunnel_devices(h);
    }
    // A destination no endpoint has is dropped and counted, not flooded.
    let nobody = Ipv4Addr::new(10, 0, 1, 200);
    assert!(eps[0].ping(nobody).is_err());
    assert!(counter(&hosts[0], NET, "Drops", "arp-unknown-target").unwrap() > 0);
}

#[test]
fn disconnected_and_departed_endpoints_are_withdrawn_everywhere() {
    // Gossip keys rotate every 2 s (nodes get them with 500 ms heartbeats):
    // spreading must keep working across rotations.
    let env = [("SWARM_GOSSIP_KEY_ROTATION", "2s")];
    let tb = cluster(3, 1, &env, &["--dispatcher-heartbeat", "500ms"]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let eps: Vec<Endpoint> = hosts.iter().map(|h| connect(h, NET, "ep").unwrap()).collect();
    for h in hosts {
        wait_table(h, &format!("{} to know all endpoints", h.name), |t| eps.iter().all(|e| has(t, e.ip)));
    }
    wait_reachable(&eps[0], eps[1].ip);

    // Keys rotate, and a new endpoint still spreads under the new keys.
    let key = |h: &Host| inspect(h, NET).unwrap()["Gossip"]["KeyId"].as_u64();
    let first = key(&hosts[1]);
    poll::until("the gossip key to rotate", SETTLE, || {
        let now = key(&hosts[1]);
        if now.is_some() && now != first { Ok(()) } else { Err(format!("still {now:?}")) }
    })
    .unwrap();
    let late = connect(&hosts[2], NET, "late").unwrap();
    wait_table(&hosts[0], "the late endpoint to spread", |t| has(t, late.ip));
    wait_reachable(&eps[0], late.ip);
    wait_reachable(&late, eps[1].ip);

    // Disconnect: the namespace loses eth0, every host forgets the address.
    let ns = eps[1].netns.display().to_string();
    agent(&hosts[1], &["network", "disconnect", NET, "--netns", &ns]).unwrap();
    let links = hosts[1].run_in(&eps[1].netns, "ip", ["-o", "link"]).unwrap();
    assert!(!links.contains("eth0"), "{links}");
    for h in [&hosts[0], &hosts[2]] {
        wait_table(h, "the disconnected endpoint to be withdrawn", |t| !has(t, eps[1].ip));
    }
    wait_unreachable(&eps[0], eps[1].ip);
    assert!(eps[0].ping(eps[2].ip).is_ok());

    // Leaving the swarm withdraws the host's endpoints and removes its datapath.
    agent(&hosts[2], &["leave"]).unwrap();
    wait_table(&hosts[0], "the departed host's endpoints to be withdrawn", |t| {
        !has(t, eps[2].ip) && !has(t, late.ip)
    });
    wait_unreachable(&eps[0], eps[2].ip);
    let left = hosts[2].run("ip", ["-o", "link"]).unwrap();
    assert!(!left.contains("swe"), "endpoint veths left behind: {left}");
    let progs = tcx_programs(&hosts[2], "eth0", true);
    assert!(progs.is_empty(), "programs left on eth0: {progs:?}");
}

#[test]
fn a_dead_hosts_endpoints_are_withdrawn_once_it_is_down_and_return_with_it() {
    // Gossip finds the host dead within about 2 s but keeps its endpoints
    // until the managers mark it Down (3 heartbeats of 500 ms).
    let tb = cluster(3, 1, &[], &["--dispatcher-heartbeat", "500ms"]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let eps: Vec<Endpoint> = hosts.iter().map(|h| connect(h, NET, "ep").unwrap()).collect();
    wait_table(&hosts[0], "all endpoints known", |t| eps.iter().all(|e| has(t, e.ip)));
    tb.cut(&hosts[2]).unwrap();
    wait_table(&hosts[0], "the dead host's endpoint to be withdrawn", |t| !has(t, eps[2].ip));
    wait_table(&hosts[1], "the dead host's endpoint to be withdrawn", |t| !has(t, eps[2].ip));
    assert!(eps[0].ping(eps[1].ip).is_ok());
    tb.restore(&hosts[2]).unwrap();
    // The cut outlasts SWIM's suspicion, so the host comes back by renewing
    // its identity (about a second here, more under load).
    let back = std::time::Instant::now();
    poll::until("the endpoint to come back", Duration::from_secs(90), || {
        let t = datapath_endpoints(&hosts[0], NET)?;
        if has(&t, eps[2].ip) { Ok(()) } else { Err(format!("{} has {t:?}", hosts[0].name)) }
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", daemon_log(&hosts[0])));
    eprintln!("the endpoint came back {:?} after the restore", back.elapsed());
    wait_reachable(&eps[0], eps[2].ip);
}

/// A VXLAN datagram (UDP payload) carrying a UDP packet for `to` on `vni`.
fn vxlan_datagram(vni: u32, to: &Endpoint, dst_port: u16, data: &[u8]) -> Vec<u8> {
    let src = Ipv4Addr::new(10, 0, 1, 250);
    let inner_ip = Ipv4::new(src, to.ip, packet::IPPROTO_UDP).packet(&packet::udp(40000, dst_port, data));
    let o = to.ip.octets();
    let dst_mac = [0x02, 0x42, o[0], o[1], o[2], o[3]];
    let inner = packet::ethernet(dst_mac, [0x02, 0x42, 10, 0, 1, 250], packet::ETH_P_IP, &inner_ip);
    packet::vxlan(0x08, vni, &inner)
}

/// Sends `datagram` to `to:4789` from `from`'s underlay.
fn send_vxlan(from: &Host, to: Ipv4Addr, datagram: &[u8]) {
    from.in_netns(|| {
        let s = UdpSocket::bind((from.underlay_ip, 0)).unwrap();
        s.send_to(datagram, (to, packet::VXLAN_PORT)).unwrap();
    })
    .unwrap();
}

#[test]
fn vxlan_from_outside_the_cluster_or_for_unknown_vnis_is_dropped() {
    // node3 is on the same switch but not in the swarm.
    let tb = Testbed::up(3).unwrap();
    let (m, w, outsider) = (tb.host(0), tb.host(1), tb.host(2));
    agent(m, &["init"]).unwrap();
    agent(w, &["join", "--token", &token(m, "worker"), "198.18.0.1:2377"]).unwrap();
    create_attachable(m, NET);
    let target = connect(m, NET, "ep").unwrap();
    let _peer = connect(w, NET, "ep").unwrap();
    let vni: u32 = inspect(m, NET).unwrap()["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let sock = in_netns(&target.netns, || UdpSocket::bind((target.ip, 9999))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let receive = || -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        sock.recv_from(&mut buf).ok().map(|(n, _)| buf[..n].to_vec())
    };

    // From a member host the same bytes are delivered: the test can tell.
    poll::until("a member's VXLAN to be delivered", SETTLE, || {
        send_vxlan(w, m.underlay_ip, &vxlan_datagram(vni, &target, 9999, b"from-member"));
        match receive() {
            Some(d) if d == b"from-member" => Ok(()),
            other => Err(format!("got {other:?}")),
        }
    })
    .unwrap();

    let before = counter(m, NET, "Drops", "non-member-source").unwrap();
    for _ in 0..5 {
        send_vxlan(outsider, m.underlay_ip, &vxlan_datagram(vni, &target, 9999, b"spoofed"));
    }
    poll::until("the spoofed packets to be counted", SETTLE, || {
        let now = counter(m, NET, "Drops", "non-member-source")?;
        if now >= before + 5 { Ok(()) } else { Err(format!("{now} drops")) }
    })
    .unwrap();
    assert_eq!(receive(), None, "a packet from outside the cluster reached the endpoint");

    // A member sending for a VNI this host does not have is dropped too.
    let before = counter(m, NET, "Drops", "unknown-vni").unwrap();
    send_vxlan(w, m.underlay_ip, &vxlan_datagram(vni + 77, &target, 9999, b"wrong-vni"));
    poll::until("the unknown VNI to be counted", SETTLE, || {
        let now = counter(m, NET, "Drops", "unknown-vni")?;
        if now > before { Ok(()) } else { Err(format!("{now} drops")) }
    })
    .unwrap();
    assert_eq!(receive(), None);
}

#[test]
fn forged_or_unencrypted_gossip_is_ignored() {
    use swarm_agent::{
        gossip::{
            table::{EndpointRecord, Entry, TableMsg},
            wire::{Keyring, Packet},
        },
        rpc::messages::GossipKey,
    };
    let tb = Testbed::up(3).unwrap();
    let (m, w, outsider) = (tb.host(0), tb.host(1), tb.host(2));
    agent(m, &["init"]).unwrap();
    agent(w, &["join", "--token", &token(m, "worker"), "198.18.0.1:2377"]).unwrap();
    create_attachable(m, NET);
    let on_manager = connect(m, NET, "ep").unwrap();
    let on_worker = connect(w, NET, "ep").unwrap();
    wait_reachable(&on_manager, on_worker.ip);
    let net = inspect(m, NET).unwrap();
    let network_id = net["Id"].as_str().unwrap().to_owned();
    let key_id = u32::try_from(net["Gossip"]["KeyId"].as_u64().unwrap()).unwrap();
    let worker_id =
        swarm_tests::swarm::docker(m, &["node", "inspect", "node2", "--format", "{{.ID}}"]).unwrap();

    // An entry that would be accepted if it came from the worker: a new
    // endpoint 10.0.1.77 that lives on the outsider.
    let vni: u32 =
        net["Options"]["com.docker.network.driver.overlay.vxlanid_list"].as_str().unwrap().parse().unwrap();
    let forged = Packet::Table(TableMsg::Entries {
        network: network_id,
        entries: vec![Entry {
            key: "forged".into(),
            owner: worker_id.trim().to_owned(),
            version: (u64::MAX, 1),
            value: Some(EndpointRecord {
                vni,
                ip: [10, 0, 1, 77],
                mac: [2, 0x42, 10, 0, 1, 77],
                host_ip: outsider.underlay_ip.octets(),
            }),
        }],
    });
    let plain = postcard::to_allocvec(&forged).unwrap();
    let wrong_key = Keyring::new(&[GossipKey::generate(key_id)]).seal(&forged).unwrap();
    let mut truncated = wrong_key.clone();
    truncated.truncate(20);
    outsider
        .in_netns(|| {
            let s = UdpSocket::bind((outsider.underlay_ip, 0)).unwrap();
            for datagram in [&plain, &wrong_key, &truncated, &b"garbage".to_vec()] {
                for _ in 0..3 {
                    s.send_to(datagram, (m.underlay_ip, 7946)).unwrap();
                }
            }
        })
        .unwrap();
    poll::holds("the forged endpoint to stay out", Duration::from_secs(2), || {
        let t = datapath_endpoints(m, NET)?;
        if has(&t, Ipv4Addr::new(10, 0, 1, 77)) {
            Err(format!("forged entry accepted: {t:?}"))
        } else {
            Ok(())
        }
    })
    .unwrap();
    // Gossip still works for the real members.
    let late = connect(w, NET, "ep-c").unwrap();
    wait_table(m, "a new real endpoint to spread", |t| has(t, late.ip));
}

#[test]
fn killing_and_restarting_the_agent_keeps_established_tcp_flows() {
    let tb = cluster(2, 1, &[], &[]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let a = connect(&hosts[0], NET, "ep").unwrap();
    let b = connect(&hosts[1], NET, "ep").unwrap();
    wait_reachable(&a, b.ip);
    let encap_before = counter(&hosts[0], NET, "Events", "encapsulated").unwrap();

    let flow = TcpFlow::open(&a, &b).unwrap();
    flow.exchange(b"before").unwrap();
    // Both agents die; the kernel keeps forwarding.
    kill9(&hosts[0]);
    kill9(&hosts[1]);
    flow.exchange(b"while-dead").unwrap();
    let _d0 = start_daemon(&hosts[0], &[]);
    let _d1 = start_daemon(&hosts[1], &[]);
    flow.exchange(b"after-restart").unwrap();
    // The restarted agents adopted the pinned maps (counters kept counting)
    // and keep working: a new endpoint reaches the old ones.
    poll::until("the datapath to be adopted", SETTLE, || {
        let now = counter(&hosts[0], NET, "Events", "encapsulated")?;
        if now > encap_before { Ok(()) } else { Err(format!("{now} <= {encap_before}")) }
    })
    .unwrap();
    let c = connect(&hosts[0], NET, "ep-c").unwrap();
    wait_reachable(&c, b.ip);
    wait_reachable(&b, c.ip);
    tcp_echo(&c, &b, 1 << 20).unwrap();
    flow.exchange(b"still-there").unwrap();
    // Exactly one set of programs on the underlay: re-adopted, not stacked.
    let progs = tcx_programs(&hosts[0], "eth0", true);
    // The kernel keeps the first 15 characters of a program's name.
    let name = &swarm_common::names::PROG_TC_FROM_UNDERLAY[..15];
    assert_eq!(progs, [name], "one program on the underlay: re-adopted, not stacked");
    for h in hosts {
        assert_no_tunnel_devices(h);
    }
}

#[test]
fn concurrent_connects_on_different_hosts_get_distinct_addresses() {
    let tb = cluster(3, 2, &[], &[]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let ips: Vec<Ipv4Addr> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .flat_map(|h| (0..4).map(move |i| (h, i)))
            .map(|(h, i)| s.spawn(move || connect(h, NET, &format!("c{i}")).unwrap().ip))
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "duplicate addresses: {ips:?}");
}

/// Starts `program` inside the network namespace at `netns`, stdout piped.
fn spawn_in(netns: &std::path::Path, program: &str, args: &[&str]) -> std::process::Child {
    in_netns(netns, || {
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"))
    })
}

/// The longest run of iperf3 intervals that moved no byte, in seconds.
fn longest_stall(iperf_json: &str) -> f64 {
    let v: serde_json::Value =
        serde_json::from_str(iperf_json).unwrap_or_else(|e| panic!("{e}: {iperf_json}"));
    let (mut run, mut worst) = (0.0f64, 0.0f64);
    for i in v["intervals"].as_array().expect("intervals") {
        let (bytes, secs) =
            (i["sum"]["bytes"].as_u64().unwrap_or(0), i["sum"]["seconds"].as_f64().unwrap_or(0.0));
        if bytes == 0 {
            run += secs;
            worst = worst.max(run);
        } else {
            run = 0.0;
        }
    }
    worst
}

#[test]
fn an_agent_down_for_eight_seconds_breaks_no_flow() {
    let tb = cluster(2, 1, &[], &[]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let a = connect(&hosts[0], NET, "ep").unwrap();
    let b = connect(&hosts[1], NET, "ep").unwrap();
    wait_reachable(&a, b.ip);
    wait_reachable(&b, a.ip);
    let to = b.ip.to_string();
    let mut server = spawn_in(&b.netns, "iperf3", &["-s", "-1"]);
    poll::until("iperf3 to listen", SETTLE, || {
        b.within(|| std::net::TcpStream::connect((b.ip, 5201)).map(drop).map_err(|e| e.to_string()))
    })
    .unwrap();
    let client = spawn_in(&a.netns, "iperf3", &["-c", &to, "-t", "14", "-i", "0.25", "--json"]);
    let ping = spawn_in(&a.netns, "ping", &["-i", "0.02", "-w", "14", "-q", &to]);
    // The worker's agent is gone for 8 s: gossip on the manager finds it
    // dead after about 2 s, long before the managers would mark it Down.
    kill9(&hosts[1]);
    std::thread::sleep(Duration::from_secs(8));
    let _agent = start_daemon(&hosts[1], &[]);
    let ping = ping.wait_with_output().unwrap();
    let client = client.wait_with_output().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let summary = String::from_utf8_lossy(&ping.stdout).into_owned();
    let counts: Vec<u64> = summary
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {summary}"))
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    eprintln!("ping: {summary}");
    assert!(counts.len() >= 2 && counts[0] > 300, "{summary}");
    assert_eq!(counts[0], counts[1], "ping lost packets: {summary}\n{}", daemon_log(&hosts[0]));
    let stall = longest_stall(&String::from_utf8_lossy(&client.stdout));
    eprintln!("longest iperf3 stall: {stall:.2} s");
    assert!(stall < 1.0, "the TCP stream stalled for {stall:.2} s\n{}", daemon_log(&hosts[0]));
    // And the restarted agent is in the overlay again: a new endpoint spreads.
    let c = connect(&hosts[1], NET, "ep-c").unwrap();
    wait_reachable(&a, c.ip);
}

/// Whether the running kernel has netkit (`CONFIG_NETKIT`), read from its
/// own configuration, independently of the agent.
fn kernel_has_netkit() -> bool {
    let config = std::process::Command::new("zcat").arg("/proc/config.gz").output().map(|o| o.stdout);
    let config = String::from_utf8_lossy(&config.unwrap_or_default()).into_owned();
    config.lines().any(|l| l == "CONFIG_NETKIT=y") || std::path::Path::new("/sys/module/netkit").exists()
}

#[test]
fn endpoints_get_netkit_pairs_where_the_kernel_has_them_and_veth_elsewhere() {
    let netkit = kernel_has_netkit();
    let tb = cluster(2, 1, &[], &[]);
    let hosts = tb.hosts();
    create_attachable(&hosts[0], NET);
    let eps: Vec<Endpoint> = hosts.iter().map(|h| connect(h, NET, "ep").unwrap()).collect();
    for e in &eps {
        let links = e.host.run("ip", ["-d", "-o", "link", "show"]).unwrap();
        let ours: Vec<&str> = links.lines().filter(|l| l.contains(": swe")).collect();
        assert_eq!(ours.len(), 1, "{links}");
        assert_eq!(ours[0].contains(" veth "), !netkit, "netkit in the kernel: {netkit}: {}", ours[0]);
    }
    wait_reachable(&eps[0], eps[1].ip);

    // Demanding netkit of a kernel without it is refused and leaves nothing.
    if !netkit {
        let tb = cluster(1, 1, &[("SWARM_ENDPOINT_INTERFACE", "netkit")], &[]);
        let h = &tb.hosts()[0];
        create_attachable(h, NET);
        let err = connect(h, NET, "ep").unwrap_err();
        assert!(err.contains("this kernel has no netkit (CONFIG_NETKIT"), "{err}");
        let links = h.run("ip", ["-o", "link", "show"]).unwrap();
        assert!(!links.contains("swe"), "left behind: {links}");
    }
}
