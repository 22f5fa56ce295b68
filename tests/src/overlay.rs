//! Overlay networks on testbed hosts: endpoints in extra namespaces, traffic
//! between them from this process (sockets opened inside the namespaces),
//! and the datapath's view through `network inspect --verbose`.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{swarm::agent, testbed::Host};

/// An endpoint: a namespace on a host, attached to an overlay network.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: Host,
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
}

/// Makes namespace `name` on `host` and connects it to `network`.
pub fn connect(host: &Host, network: &str, name: &str) -> Result<Endpoint, String> {
    let netns = host.add_netns(name).map_err(|e| e.to_string())?;
    connect_netns(host, network, &netns)
}

/// Connects an existing namespace of `host` to `network`.
pub fn connect_netns(host: &Host, network: &str, netns: &Path) -> Result<Endpoint, String> {
    let path = netns.display().to_string();
    agent(host, &["network", "connect", network, "--netns", &path]).map_err(|e| e.to_string())?;
    let ip = ipv4_of(host, netns, "eth0")?;
    Ok(Endpoint { host: host.clone(), netns: netns.to_owned(), ip })
}

/// The IPv4 address of `iface` in `netns`.
pub fn ipv4_of(host: &Host, netns: &Path, iface: &str) -> Result<Ipv4Addr, String> {
    let out =
        host.run_in(netns, "ip", ["-4", "-o", "addr", "show", "dev", iface]).map_err(|e| e.to_string())?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no IPv4 address on {iface} in {}: {out:?}", netns.display()))
}

impl Endpoint {
    /// One ping (1 s timeout) from this endpoint to `ip`.
    pub fn ping(&self, ip: Ipv4Addr) -> Result<(), String> {
        self.host
            .run_in(&self.netns, "ping", ["-c1", "-W1", &ip.to_string()])
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Runs `f` on a thread inside this endpoint's namespace.
    pub fn within<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.netns, f)
    }
}

/// Runs `f` on a thread that entered the network namespace at `path`; the
/// sockets it opens live there.
pub fn in_netns<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> R {
    let ns = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("entering {}: {e}", path.display()));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A deterministic payload of `len` bytes.
pub fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Sends `len` bytes over TCP from `client` to `server`, which echoes them;
/// checks they come back intact. Exercises large (GSO) and small segments.
pub fn tcp_echo(client: &Endpoint, server: &Endpoint, len: usize) -> Result<(), String> {
    let listener = server.within(|| TcpListener::bind((server.ip, 0))).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let data = payload(len);
    std::thread::scope(|s| {
        let echo = s.spawn(move || -> Result<(), String> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = conn.read(&mut buf).map_err(|e| format!("server read: {e}"))?;
                if n == 0 {
                    return Ok(());
                }
                conn.write_all(&buf[..n]).map_err(|e| format!("server write: {e}"))?;
            }
        });
        let got = client.within(|| -> Result<Vec<u8>, String> {
            let mut conn = TcpStream::connect_timeout(&SocketAddr::V4(into_v4(addr)), Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
            let mut reader = conn.try_clone().map_err(|e| e.to_string())?;
            let want = data.len();
            let read = std::thread::spawn(move || -> Result<Vec<u8>, String> {
                let mut got = Vec::with_capacity(want);
                let mut buf = vec![0u8; 64 * 1024];
                while got.len() < want {
                    let n = reader.read(&mut buf).map_err(|e| format!("client read: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                Ok(got)
            });
            conn.write_all(&data).map_err(|e| format!("client write: {e}"))?;
            conn.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
            read.join().map_err(|_| "reader panicked".to_owned())?
        });
        let echoed = echo.join().map_err(|_| "echo server panicked".to_owned())?;
        let got = got?;
        echoed?;
        if got == data {
            Ok(())
        } else {
            Err(format!(
                "TCP echo from {} to {}: got {} of {len} bytes back, or different ones",
                client.ip,
                server.ip,
                got.len()
            ))
        }
    })
}

fn into_v4(a: SocketAddr) -> std::net::SocketAddrV4 {
    match a {
        SocketAddr::V4(v) => v,
        SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
    }
}

/// A UDP datagram of `len` bytes from `client` to `server` and its echo back
/// (a few tries: UDP may lose the first one while neighbours resolve).
pub fn udp_echo(client: &Endpoint, server: &Endpoint, len: usize) -> Result<(), String> {
    let srv = server.within(|| UdpSocket::bind((server.ip, 0))).map_err(|e| e.to_string())?;
    let addr = srv.local_addr().map_err(|e| e.to_string())?;
    srv.set_read_timeout(Some(Duration::from_millis(300))).map_err(|e| e.to_string())?;
    let cli = client.within(|| UdpSocket::bind((client.ip, 0))).map_err(|e| e.to_string())?;
    cli.set_read_timeout(Some(Duration::from_millis(300))).map_err(|e| e.to_string())?;
    let data = payload(len);
    let mut last = String::new();
    for _ in 0..10 {
        cli.send_to(&data, addr).map_err(|e| format!("send: {e}"))?;
        let mut buf = vec![0u8; 65536];
        match srv.recv_from(&mut buf) {
            Ok((n, from)) => {
                if buf[..n] != data[..] {
                    return Err(format!("server got a different datagram ({n} bytes)"));
                }
                srv.send_to(&buf[..n], from).map_err(|e| format!("echo: {e}"))?;
            }
            Err(e) => {
                last = format!("server: {e}");
                continue;
            }
        }
        let mut buf = vec![0u8; 65536];
        match cli.recv_from(&mut buf) {
            Ok((n, _)) if buf[..n] == data[..] => return Ok(()),
            Ok((n, _)) => return Err(format!("client got a different echo ({n} bytes)")),
            Err(e) => last = format!("client: {e}"),
        }
    }
    Err(format!("UDP echo {} -> {} ({len} bytes) failed: {last}", client.ip, server.ip))
}

/// Names of the programs attached with TCX to `iface` of `host` (ingress or egress).
pub fn tcx_programs(host: &Host, iface: &str, ingress: bool) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let kind = if ingress { TcAttachType::Ingress } else { TcAttachType::Egress };
    host.in_netns(|| {
        let (_, progs) = SchedClassifier::query_tcx(iface, kind)
            .unwrap_or_else(|e| panic!("querying TCX programs on {iface} of {}: {e}", host.name));
        progs.iter().map(|p| p.name_as_str().unwrap_or("?").to_owned()).collect()
    })
    .expect("entering the host")
}

/// A TCP connection between two endpoints that stays open: the client side
/// lives in this process, the server side echoes on its own thread.
pub struct TcpFlow {
    conn: TcpStream,
    _server: std::thread::JoinHandle<()>,
}

impl TcpFlow {
    pub fn open(client: &Endpoint, server: &Endpoint) -> Result<TcpFlow, String> {
        let listener = server.within(|| TcpListener::bind((server.ip, 0))).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let server = std::thread::spawn(move || {
            if let Ok((mut c, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        });
        let conn = client
            .within(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        Ok(TcpFlow { conn, _server: server })
    }

    /// Sends `msg` and reads the echo back (10 s timeout).
    pub fn exchange(&self, msg: &[u8]) -> Result<(), String> {
        let mut c = &self.conn;
        c.write_all(msg).map_err(|e| format!("write: {e}"))?;
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        if back == msg { Ok(()) } else { Err(format!("echo differs: {back:?}")) }
    }
}

/// `network inspect --verbose` of `network` on `host`, the first element.
pub fn inspect(host: &Host, network: &str) -> Result<serde_json::Value, String> {
    let out = agent(host, &["network", "inspect", "--verbose", network]).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    Ok(v[0].clone())
}

/// Endpoint IPs in `host`'s datapath table for `network`, with their host
/// (`"local"` or the underlay address).
pub fn datapath_endpoints(host: &Host, network: &str) -> Result<Vec<(Ipv4Addr, String)>, String> {
    let v = inspect(host, network)?;
    let eps = v["Datapath"]["Endpoints"].as_array().ok_or_else(|| format!("no Datapath.Endpoints in {v}"))?;
    Ok(eps
        .iter()
        .filter_map(|e| Some((e["IP"].as_str()?.parse().ok()?, e["Host"].as_str()?.to_owned())))
        .collect())
}

/// The packet count of datapath counter `section` (`Drops`/`Events`) `name` on `host`.
pub fn counter(host: &Host, network: &str, section: &str, name: &str) -> Result<u64, String> {
    let v = inspect(host, network)?;
    v["Datapath"][section][name]["Packets"]
        .as_u64()
        .ok_or_else(|| format!("no Datapath.{section}.{name} in {}", v["Datapath"]))
}

/// Fails if any namespace of `host` (its own, and those it made) has a
/// vxlan, bridge, geneve or other tunnel device: the overlay must not use them.
pub fn assert_no_tunnel_devices(host: &Host) {
    let mut namespaces = vec![host.netns_path()];
    if let Ok(dir) = std::fs::read_dir(host.netns_dir()) {
        namespaces.extend(dir.flatten().map(|e| e.path()));
    }
    for ns in namespaces {
        let out = host.run_in(&ns, "ip", ["-d", "link", "show"]).expect("ip -d link");
        for kind in ["vxlan ", "bridge ", "geneve ", "ipip ", "gretap "] {
            assert!(
                !out.lines().any(|l| l.trim_start().starts_with(kind)),
                "{} has a {kind}device in {}:\n{out}",
                host.name,
                ns.display()
            );
        }
    }
}
