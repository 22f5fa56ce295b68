//! The embedded DNS server of task network namespaces: 127.0.0.11:53 over
//! UDP and TCP in each task's namespace, answering from the names the
//! dispatcher sends this node (`manager::names`), scoped to the task's
//! networks, and forwarding the rest to the host's own resolvers (a clean
//! SERVFAIL when none answers).
//!
//! [`respond`] is the pure core: query bytes in, an answer or "forward"
//! out. The sockets are made on a short-lived thread that entered the
//! namespace, then served on the runtime.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rand::seq::SliceRandom as _;
use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE, rdata::RData};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::manager::names::NamesView;

/// Where the server listens inside each task's namespace (docker's address).
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);
/// Answers' TTL (docker's `respTTL`).
pub const TTL: u32 = 600;
/// How long one upstream resolver gets to answer a forwarded query.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many upstreams are tried (docker's `maxExtDNS`).
const MAX_UPSTREAMS: usize = 3;

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not ours: ask the upstream resolvers.
    Forward,
    /// Not even a DNS header: say nothing.
    Drop,
}

/// The node's names and upstream resolvers, shared by every task's server.
pub struct Resolver {
    view: RwLock<NamesView>,
    upstreams: Vec<SocketAddr>,
}

impl Resolver {
    /// With the host's resolvers from `/etc/resolv.conf` (loopback ones
    /// left out: they are not reachable from the agent's forwarder's view).
    pub fn from_host() -> Arc<Resolver> {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Resolver::with_upstreams(upstreams_of(&conf))
    }

    /// With these upstream resolvers (`daemon --dns-upstream`).
    pub fn with_upstreams(upstreams: Vec<SocketAddr>) -> Arc<Resolver> {
        Arc::new(Resolver { view: RwLock::new(NamesView::default()), upstreams })
    }

    pub fn set(&self, view: NamesView) {
        *self.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    fn respond(&self, networks: &[String], query: &[u8]) -> Reply {
        let view = self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        respond(&view, networks, query, &mut rand::rng())
    }

    /// Asks the upstreams in turn; SERVFAIL when none answers.
    async fn forward(&self, query: &[u8]) -> Vec<u8> {
        for up in self.upstreams.iter().take(MAX_UPSTREAMS) {
            let Ok(sock) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else { continue };
            if sock.send_to(query, up).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) = tokio::time::timeout(FORWARD_TIMEOUT, sock.recv(&mut buf)).await {
                buf.truncate(n);
                return buf;
            }
        }
        error_reply(query, RCODE::ServerFailure).unwrap_or_default()
    }

    async fn handle(&self, networks: &[String], query: &[u8]) -> Option<Vec<u8>> {
        match self.respond(networks, query) {
            Reply::Answer(b) => Some(b),
            Reply::Forward => Some(self.forward(query).await),
            Reply::Drop => None,
        }
    }
}

/// `nameserver` lines that are not loopback.
pub fn upstreams_of(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The task's `/etc/resolv.conf`: the embedded server, the host's search
/// domains, `ndots:0` (as docker writes it).
pub fn task_resolv_conf(host_resolv_conf: &str) -> String {
    let mut out = String::new();
    for l in host_resolv_conf.lines().filter(|l| l.trim_start().starts_with("search")) {
        out.push_str(l.trim());
        out.push('\n');
    }
    out.push_str(&format!("nameserver {ADDRESS}\noptions ndots:0\n"));
    out
}

fn error_reply(query: &[u8], rcode: RCODE) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let mut r = q.into_reply();
    r.set_flags(PacketFlag::RECURSION_AVAILABLE);
    *r.rcode_mut() = rcode;
    r.build_bytes_vec().ok()
}

/// `a.b.c.d.in-addr.arpa` → `d.c.b.a`.
fn ptr_address(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_suffix(".in-addr.arpa")?;
    let mut o: Vec<u8> = rest.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if o.len() != 4 {
        return None;
    }
    o.reverse();
    Some(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
}

/// Answers `query` for a task on `networks` from `view` (pure but for the
/// shuffle's randomness).
pub fn respond(view: &NamesView, networks: &[String], query: &[u8], rng: &mut impl rand::Rng) -> Reply {
    let Ok(q) = Packet::parse(query) else {
        // A header we can echo gets FORMERR; less than that, silence.
        if query.len() >= 12 {
            let mut b = query[..12].to_vec();
            b[2] |= 0x80; // QR
            b[3] = (b[3] & 0xf0) | 1; // FORMERR
            b[4..12].fill(0);
            return Reply::Answer(b);
        }
        return Reply::Drop;
    };
    let Some(question) = q.questions.first() else {
        return error_reply(query, RCODE::FormatError).map_or(Reply::Drop, Reply::Answer);
    };
    let qname = question.qname.to_string().trim_end_matches('.').to_ascii_lowercase();
    let qtype = question.qtype;
    let nets: Vec<&crate::manager::names::NetworkNames> =
        networks.iter().filter_map(|n| view.networks.get(n)).collect();
    let mut answers: Vec<ResourceRecord<'_>> = Vec::new();
    let owned_name = question.qname.clone();
    if let Some(ip) = ptr_address(&qname) {
        let Some(target) = nets.iter().find_map(|n| n.ptr.get(&ip)) else { return Reply::Forward };
        if matches!(qtype, QTYPE::TYPE(TYPE::PTR) | QTYPE::ANY) {
            let Ok(t) = Name::new(target) else { return Reply::Forward };
            answers.push(ResourceRecord::new(
                owned_name,
                CLASS::IN,
                TTL,
                RData::PTR(simple_dns::rdata::PTR(t.into_owned())),
            ));
        }
    } else {
        let Some(ips) = nets.iter().find_map(|n| n.names.get(&qname)) else { return Reply::Forward };
        if matches!(qtype, QTYPE::TYPE(TYPE::A) | QTYPE::ANY) {
            let mut ips = ips.clone();
            ips.shuffle(rng);
            for ip in ips {
                answers.push(ResourceRecord::new(
                    owned_name.clone(),
                    CLASS::IN,
                    TTL,
                    RData::A(simple_dns::rdata::A { address: u32::from(ip) }),
                ));
            }
        }
        // Other types of a name we own (AAAA: no IPv6 here) answer empty.
    }
    let mut r = Packet::new_reply(q.id());
    r.set_flags(PacketFlag::AUTHORITATIVE_ANSWER | PacketFlag::RECURSION_AVAILABLE);
    if q.has_flags(PacketFlag::RECURSION_DESIRED) {
        r.set_flags(PacketFlag::RECURSION_DESIRED);
    }
    r.questions.push(question.clone());
    r.answers = answers;
    r.build_bytes_vec().map_or(Reply::Drop, Reply::Answer)
}

/// Serves 127.0.0.11:53 (UDP and TCP) in the namespace at `netns` for a
/// task on `networks` until the returned handle is dropped. Called on the
/// runtime (the sockets join its reactor); blocks only while a thread opens
/// them.
pub fn serve(resolver: Arc<Resolver>, netns: &Path, networks: Vec<String>) -> Result<Server, String> {
    let path: PathBuf = netns.to_owned();
    let (udp, tcp) = std::thread::spawn(move || -> std::io::Result<_> {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let udp = std::net::UdpSocket::bind((ADDRESS, 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((ADDRESS, 53))?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
    .join()
    .map_err(|_| "the DNS socket thread panicked".to_owned())?
    .map_err(|e| format!("opening the embedded DNS server in {}: {e}", netns.display()))?;
    let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).map_err(|e| e.to_string())?);
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| e.to_string())?;
    let networks = Arc::new(networks);
    let (r, n) = (resolver.clone(), networks.clone());
    let udp_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((len, from)) = udp.recv_from(&mut buf).await else { continue };
            let query = buf[..len].to_vec();
            let (r, n, udp) = (r.clone(), n.clone(), udp.clone());
            tokio::spawn(async move {
                if let Some(out) = r.handle(&n, &query).await {
                    let _ = udp.send_to(&out, from).await;
                }
            });
        }
    });
    let tcp_task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = tcp.accept().await else { continue };
            let (r, n) = (resolver.clone(), networks.clone());
            tokio::spawn(async move {
                loop {
                    let Ok(len) = conn.read_u16().await else { return };
                    let mut query = vec![0u8; usize::from(len)];
                    if conn.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let Some(out) = r.handle(&n, &query).await else { return };
                    let Ok(len) = u16::try_from(out.len()) else { return };
                    if conn.write_u16(len).await.is_err() || conn.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(Server { tasks: vec![udp_task, tcp_task] })
}

/// A running server; dropping it stops it.
pub struct Server {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::names::NetworkNames;

    fn view() -> NamesView {
        let mut app = NetworkNames::default();
        app.names.insert("web".into(), vec![Ipv4Addr::new(10, 0, 1, 2)]);
        app.names.insert("tasks.web".into(), vec![Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]);
        app.ptr.insert(Ipv4Addr::new(10, 0, 1, 3), "web.1.abc.app".into());
        let mut other = NetworkNames::default();
        other.names.insert("db".into(), vec![Ipv4Addr::new(10, 0, 2, 2)]);
        NamesView {
            networks: [("app".to_owned(), app), ("other".to_owned(), other)].into(),
            ..NamesView::default()
        }
    }

    fn query(name: &str, t: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(7);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(t),
            simple_dns::QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    fn ask(name: &str, t: TYPE, nets: &[&str]) -> Reply {
        let nets: Vec<String> = nets.iter().map(|n| (*n).to_owned()).collect();
        respond(&view(), &nets, &query(name, t), &mut rand::rng())
    }

    fn addresses(r: &Reply) -> Vec<Ipv4Addr> {
        let Reply::Answer(b) = r else { panic!("{r:?}") };
        let p = Packet::parse(b).unwrap();
        assert_eq!(p.id(), 7);
        p.answers
            .iter()
            .map(|a| match &a.rdata {
                RData::A(a) => Ipv4Addr::from(a.address),
                o => panic!("{o:?}"),
            })
            .collect()
    }

    #[test]
    fn names_on_the_tasks_networks_are_answered_the_rest_forwarded() {
        assert_eq!(addresses(&ask("web", TYPE::A, &["app"])), [Ipv4Addr::new(10, 0, 1, 2)]);
        assert_eq!(addresses(&ask("WEB.", TYPE::A, &["app"])), [Ipv4Addr::new(10, 0, 1, 2)], "case, dot");
        let mut t = addresses(&ask("tasks.web", TYPE::A, &["app"]));
        t.sort();
        assert_eq!(t, [Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(10, 0, 1, 4)]);
        assert_eq!(ask("db", TYPE::A, &["app"]), Reply::Forward, "not on the task's networks");
        assert_eq!(addresses(&ask("db", TYPE::A, &["app", "other"])), [Ipv4Addr::new(10, 0, 2, 2)]);
        assert_eq!(ask("example.org", TYPE::A, &["app"]), Reply::Forward);
        assert!(addresses(&ask("web", TYPE::AAAA, &["app"])).is_empty(), "ours, no IPv6: empty NOERROR");
    }

    #[test]
    fn ptr_for_task_addresses() {
        let Reply::Answer(b) = ask("3.1.0.10.in-addr.arpa", TYPE::PTR, &["app"]) else { panic!() };
        let p = Packet::parse(&b).unwrap();
        match &p.answers[0].rdata {
            RData::PTR(n) => assert_eq!(n.0.to_string(), "web.1.abc.app"),
            o => panic!("{o:?}"),
        }
        assert_eq!(ask("9.1.0.10.in-addr.arpa", TYPE::PTR, &["app"]), Reply::Forward);
    }

    #[test]
    fn multi_address_answers_are_shuffled() {
        let firsts: std::collections::BTreeSet<Ipv4Addr> =
            (0..64).map(|_| addresses(&ask("tasks.web", TYPE::A, &["app"]))[0]).collect();
        assert_eq!(firsts.len(), 2, "both orders seen");
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        assert_eq!(respond(&view(), &[], b"xy", &mut rand::rng()), Reply::Drop);
        let Reply::Answer(b) =
            respond(&view(), &[], &[0x12, 0x34, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0xff], &mut rand::rng())
        else {
            panic!()
        };
        assert_eq!(&b[..2], &[0x12, 0x34]);
        assert_eq!(b[3] & 0x0f, 1, "FORMERR");
    }

    #[test]
    fn resolv_conf_points_at_the_embedded_server() {
        let host = "search corp.example\nnameserver 127.0.0.53\nnameserver 198.18.0.250\n";
        assert_eq!(task_resolv_conf(host), "search corp.example\nnameserver 127.0.0.11\noptions ndots:0\n");
        assert_eq!(upstreams_of(host), ["198.18.0.250:53".parse::<SocketAddr>().unwrap()]);
    }
}
