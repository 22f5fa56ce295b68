//! Gossip on port 7946: SWIM membership (foca) over UDP among all nodes, and
//! the per-network endpoint tables ([`table::NetworkDb`]) on top, with TCP
//! for bulk syncs. Every packet is encrypted with the managers' keys
//! ([`wire`]).
//!
//! The runtime is one task that owns foca and the tables and turns their
//! outputs into packets, timers, and [`GossipEvent`]s for the datapath.

pub mod table;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use foca::{AccumulatingRuntime, Config, Foca, Identity, OwnedNotification, PostcardCodec, Timer};
use rand_foca::SeedableRng as _;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
};

use crate::gossip::{
    table::{EndpointRecord, NetworkDb, Out},
    wire::{Keyring, Packet},
};
use crate::rpc::messages::GossipKey;

/// The gossip port (Docker's memberlist default).
pub const PORT: u16 = 7946;
const SYNC_INTERVAL: Duration = Duration::from_secs(2);
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
const REAP_INTERVAL: Duration = Duration::from_secs(60);
/// How long a member that SWIM declared dead keeps its endpoints in this
/// node's datapath, unless the managers mark it Down first: an agent that
/// crashes and restarts within it breaks no flow. (SWIM notices a silent
/// agent in about 2 s; the dispatcher marks it Down after 3 heartbeats,
/// 15 s by default.)
pub const DOWN_GRACE: Duration = Duration::from_secs(60);
const GRACE_CHECK: Duration = Duration::from_secs(1);
/// The largest table sync response read from a member we asked (read as
/// it arrives: nothing is reserved for what a length prefix announces).
const MAX_SYNC_RESPONSE: usize = 16 << 20;
/// The largest frame read from a connection we accepted, before it is
/// authenticated: a sync request names one network.
const MAX_SYNC_REQUEST: usize = 4 << 10;
/// Inbound TCP connections served at once, in total and per address.
const MAX_INBOUND: usize = 64;
const MAX_INBOUND_PER_PEER: usize = 4;
/// How long an accepted connection may take to send its request.
const INBOUND_DEADLINE: Duration = Duration::from_secs(5);

/// A node as SWIM knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub addr: SocketAddrV4,
    /// Grows with every restart or rejoin; newer wins address conflicts.
    pub incarnation: u64,
}

impl Identity for Member {
    type Addr = SocketAddrV4;

    fn renew(&self) -> Option<Self> {
        Some(Member { incarnation: self.incarnation + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What gossip tells the datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    Upsert(EndpointRecord),
    Remove(EndpointRecord),
    /// The underlay addresses of the live members (this node included).
    Hosts(Vec<Ipv4Addr>),
}

enum Cmd {
    SetLocal { network: String, key: String, record: EndpointRecord },
    RemoveLocal { network: String, key: String },
    Join(String),
    Keys(Vec<GossipKey>),
    Seeds(Vec<Ipv4Addr>),
    Down(BTreeSet<String>),
    Stop,
}

/// A handle on the running gossip.
#[derive(Clone)]
pub struct Gossip {
    cmds: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

struct Shared {
    db: Mutex<NetworkDb>,
    keys: Mutex<Keyring>,
    members: Mutex<BTreeMap<String, Member>>,
    /// Members SWIM declared dead whose endpoints are kept for now, with when.
    dying: Mutex<BTreeMap<String, (Member, tokio::time::Instant)>>,
    /// Nodes the managers have marked Down.
    down: Mutex<BTreeSet<String>>,
    /// The last address of every node heard of, live or not, with when it
    /// was last a member: table messages go to a node that is alive in the
    /// tables' view even while SWIM here has yet to take it back.
    addrs: Mutex<BTreeMap<String, (SocketAddrV4, tokio::time::Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gossip settings.
pub struct GossipConfig {
    pub node_id: String,
    /// The underlay address others reach this node at.
    pub addr: Ipv4Addr,
    pub port: u16,
    /// Grows with every start of this node.
    pub incarnation: u64,
    /// See [`DOWN_GRACE`].
    pub down_grace: Duration,
}

fn foca_config() -> Config {
    // Faster than memberlist's LAN defaults: a dead node is noticed within
    // about two seconds.
    let mut c = Config::new_lan(NonZeroU32::new(16).expect("non-zero"));
    c.probe_period = Duration::from_millis(300);
    c.probe_rtt = Duration::from_millis(150);
    c.suspect_to_down_after = Duration::from_millis(1200);
    c.remove_down_after = Some(Duration::from_secs(60));
    c
}

impl Gossip {
    /// Binds UDP and TCP on the port and starts gossiping. `events` receives
    /// what the datapath must change.
    pub async fn start(
        cfg: GossipConfig,
        keys: &[GossipKey],
        events: mpsc::UnboundedSender<GossipEvent>,
    ) -> std::io::Result<Gossip> {
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, cfg.port)).await?;
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, cfg.port)).await?;
        let me = Member {
            node_id: cfg.node_id.clone(),
            addr: SocketAddrV4::new(cfg.addr, cfg.port),
            incarnation: cfg.incarnation,
        };
        let shared = Arc::new(Shared {
            db: Mutex::new(NetworkDb::new(&cfg.node_id, cfg.incarnation)),
            keys: Mutex::new(Keyring::new(keys)),
            members: Mutex::new(BTreeMap::new()),
            dying: Mutex::new(BTreeMap::new()),
            down: Mutex::new(BTreeSet::new()),
            addrs: Mutex::new(BTreeMap::new()),
        });
        let (cmds, rx) = mpsc::unbounded_channel();
        let rt = Runtime {
            me: me.clone(),
            udp: Arc::new(udp),
            shared: shared.clone(),
            events,
            port: cfg.port,
            down_grace: cfg.down_grace,
        };
        tokio::spawn(rt.clone().serve_tcp(tcp));
        tokio::spawn(rt.run(me, rx));
        Ok(Gossip { cmds, shared })
    }

    /// Publishes (or changes) one of this node's endpoints.
    pub fn set_local(&self, network: &str, key: &str, record: EndpointRecord) {
        let _ = self.cmds.send(Cmd::SetLocal { network: network.into(), key: key.into(), record });
    }

    /// Stays in `network`'s table without endpoints of this node's own.
    pub fn join(&self, network: &str) {
        let _ = self.cmds.send(Cmd::Join(network.into()));
    }

    /// Withdraws one of this node's endpoints.
    pub fn remove_local(&self, network: &str, key: &str) {
        let _ = self.cmds.send(Cmd::RemoveLocal { network: network.into(), key: key.into() });
    }

    /// New keys from the managers (newest first).
    pub fn set_keys(&self, keys: Vec<GossipKey>) {
        let _ = self.cmds.send(Cmd::Keys(keys));
    }

    /// Addresses to join through (the managers').
    pub fn seeds(&self, seeds: Vec<Ipv4Addr>) {
        let _ = self.cmds.send(Cmd::Seeds(seeds));
    }

    /// The nodes the managers consider Down: a dead member among them loses
    /// its endpoints at once instead of after [`DOWN_GRACE`].
    pub fn set_down(&self, nodes: BTreeSet<String>) {
        let _ = self.cmds.send(Cmd::Down(nodes));
    }

    /// Live members other than this node.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.shared.members).values().cloned().collect()
    }

    /// The id of the key packets are encrypted with now.
    pub fn primary_key(&self) -> Option<u32> {
        lock(&self.shared.keys).primary()
    }

    pub fn stop(&self) {
        let _ = self.cmds.send(Cmd::Stop);
    }
}

#[derive(Clone)]
struct Runtime {
    me: Member,
    udp: Arc<UdpSocket>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<GossipEvent>,
    port: u16,
    down_grace: Duration,
}

type FocaT = Foca<Member, PostcardCodec, rand_foca::rngs::StdRng, foca::NoCustomBroadcast>;

/// How long the address of a node that is no longer a member is kept.
const FORGET_ADDR_AFTER: Duration = Duration::from_secs(600);

/// SWIM's state and where its timers go. Timers carry the generation of
/// the instance that set them: after a rejoin the old instance's are dropped.
struct Swim {
    foca: FocaT,
    generation: u64,
    timers: mpsc::UnboundedSender<(u64, Timer<Member>)>,
}

fn new_foca(me: Member) -> FocaT {
    let rng = rand_foca::rngs::StdRng::seed_from_u64(rand::random());
    Foca::new(me, foca_config(), rng, PostcardCodec)
}

impl Runtime {
    async fn run(self, me: Member, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut acc = AccumulatingRuntime::new();
        let (timer_tx, mut timers) = mpsc::unbounded_channel();
        let mut swim = Swim { foca: new_foca(me), generation: 0, timers: timer_tx };
        let mut buf = vec![0u8; 65536];
        let mut sync = tokio::time::interval(SYNC_INTERVAL);
        let mut announce = tokio::time::interval(ANNOUNCE_INTERVAL);
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        let mut grace = tokio::time::interval(GRACE_CHECK);
        let syncing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.publish_hosts();
        loop {
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => {
                    let Ok((n, _from)) = r else { continue };
                    let opened = lock(&self.shared.keys).open(&buf[..n]);
                    match opened {
                        Ok(Packet::Swim(data)) => { let _ = swim.foca.handle_data(&data, &mut acc); }
                        Ok(Packet::Table(msg)) => {
                            let outs = lock(&self.shared.db).receive(msg);
                            self.apply(outs).await;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!("gossip packet dropped: {e}"),
                    }
                }
                Some((generation, t)) = timers.recv() => {
                    if generation == swim.generation {
                        let _ = swim.foca.handle_timer(t, &mut acc);
                    }
                }
                cmd = cmds.recv() => match cmd {
                    None | Some(Cmd::Stop) => {
                        let _ = swim.foca.leave_cluster(&mut acc);
                        self.drain(&mut swim, &mut acc).await;
                        return;
                    }
                    Some(Cmd::SetLocal { network, key, record }) => {
                        let outs = lock(&self.shared.db).set_local(&network, &key, record);
                        self.apply(outs).await;
                    }
                    Some(Cmd::RemoveLocal { network, key }) => {
                        let outs = lock(&self.shared.db).remove_local(&network, &key);
                        self.apply(outs).await;
                    }
                    Some(Cmd::Join(network)) => {
                        let outs = lock(&self.shared.db).join(&network);
                        self.apply(outs).await;
                    }
                    Some(Cmd::Keys(keys)) => {
                        *lock(&self.shared.keys) = Keyring::new(&keys);
                    }
                    Some(Cmd::Down(nodes)) => {
                        *lock(&self.shared.down) = nodes;
                        self.withdraw_dead().await;
                    }
                    Some(Cmd::Seeds(seeds)) => {
                        for ip in seeds {
                            let seed = Member { node_id: String::new(), addr: SocketAddrV4::new(ip, self.port), incarnation: 0 };
                            if seed.addr != self.me.addr {
                                let _ = swim.foca.announce(seed, &mut acc);
                            }
                        }
                    }
                },
                _ = sync.tick() => {
                    // Off this loop: a pull from a member that has just gone
                    // takes up to its timeout, and SWIM must not wait for it.
                    if !syncing.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        let (rt, flag) = (self.clone(), syncing.clone());
                        tokio::spawn(async move {
                            rt.anti_entropy().await;
                            flag.store(false, std::sync::atomic::Ordering::SeqCst);
                        });
                    }
                }
                _ = announce.tick() => {
                    let outs = lock(&self.shared.db).reannounce();
                    self.apply(outs).await;
                }
                _ = reap.tick() => {
                    lock(&self.shared.db).reap_tombstones();
                    self.forget_old_addrs();
                }
                _ = grace.tick() => {
                    if swim.foca.num_members() == 0 {
                        // Alone (a partition, a rejoin whose announcements
                        // were lost): ask everyone we knew, every second,
                        // rather than only the managers at each heartbeat.
                        self.announce_to_known(&mut swim, &mut acc);
                    }
                    self.withdraw_dead().await;
                    // Also ends the datapath's start-up phase, in which
                    // hosts are only ever added (see `datapath::host`).
                    self.publish_hosts();
                }
            }
            self.drain(&mut swim, &mut acc).await;
        }
    }

    /// Sends what foca wants sent, schedules its timers, handles membership changes.
    async fn drain(&self, swim: &mut Swim, acc: &mut AccumulatingRuntime<Member>) {
        // Notifications first: after a rejoin, what the old instance wanted
        // sent or scheduled is void.
        while let Some(n) = acc.to_notify() {
            if let OwnedNotification::Rejoin(me) = n {
                self.rejoin(swim, acc, me);
                continue;
            }
            self.notified(n).await;
        }
        while let Some((to, data)) = acc.to_send() {
            self.send(to.addr, &Packet::Swim(data.to_vec())).await;
        }
        while let Some((after, t)) = acc.to_schedule() {
            let (tx, generation) = (swim.timers.clone(), swim.generation);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send((generation, t));
            });
        }
    }

    /// The others declared this node dead and foca renewed its identity.
    /// foca would keep everyone it had declared dead (during a partition,
    /// everyone) and make them renew in turn when they answer; a fresh
    /// instance under the new identity asks every address it knows to take
    /// it back instead. Until they answer, the members are dying, as if
    /// SWIM had declared them dead now.
    fn rejoin(&self, swim: &mut Swim, acc: &mut AccumulatingRuntime<Member>, me: Member) {
        tracing::info!(incarnation = me.incarnation, "gossip: the others declared this node dead; rejoining");
        while acc.to_send().is_some() {}
        while acc.to_schedule().is_some() {}
        swim.foca = new_foca(me);
        swim.generation += 1;
        let now = tokio::time::Instant::now();
        {
            let mut members = lock(&self.shared.members);
            let mut dying = lock(&self.shared.dying);
            for (id, m) in std::mem::take(&mut *members) {
                dying.insert(id, (m, now));
            }
        }
        self.announce_to_known(swim, acc);
    }

    /// Announces this node to every address in the address book.
    fn announce_to_known(&self, swim: &mut Swim, acc: &mut AccumulatingRuntime<Member>) {
        let addrs: Vec<SocketAddrV4> = lock(&self.shared.addrs).values().map(|(a, _)| *a).collect();
        for addr in addrs {
            let seed = Member { node_id: String::new(), addr, incarnation: 0 };
            let _ = swim.foca.announce(seed, &mut *acc);
        }
    }

    /// Forgets the addresses of nodes that have not been members for
    /// [`FORGET_ADDR_AFTER`].
    fn forget_old_addrs(&self) {
        let members = lock(&self.shared.members);
        let dying = lock(&self.shared.dying);
        let now = tokio::time::Instant::now();
        lock(&self.shared.addrs).retain(|id, (_, seen)| {
            if members.contains_key(id) || dying.contains_key(id) {
                *seen = now;
            }
            now.duration_since(*seen) < FORGET_ADDR_AFTER
        });
    }

    /// Notes a member's address in the address book.
    fn remember(&self, m: &Member) {
        lock(&self.shared.addrs).insert(m.node_id.clone(), (m.addr, tokio::time::Instant::now()));
    }

    /// Acts on a membership change.
    async fn notified(&self, n: OwnedNotification<Member>) {
        let outs = match n {
            OwnedNotification::MemberUp(m) => {
                self.remember(&m);
                let id = m.node_id.clone();
                if lock(&self.shared.dying).remove(&id).is_some() {
                    tracing::info!(node = %id, "gossip: member back within its grace; endpoints kept");
                } else {
                    tracing::info!(node = %id, addr = %m.addr, "gossip: member up");
                }
                let addr = m.addr;
                lock(&self.shared.members).insert(id.clone(), m);
                self.publish_hosts();
                let outs = lock(&self.shared.db).node_up(&id);
                // A lost datagram must not leave us without its endpoints
                // until anti-entropy happens to pick it: pull its tables now.
                let rt = self.clone();
                tokio::spawn(async move { rt.sync_from(addr).await });
                outs
            }
            OwnedNotification::MemberDown(m) => {
                let known = lock(&self.shared.members)
                    .get(&m.node_id)
                    .is_some_and(|x| x.incarnation <= m.incarnation);
                if !known {
                    return;
                }
                lock(&self.shared.members).remove(&m.node_id);
                tracing::info!(
                    node = %m.node_id,
                    grace = ?self.down_grace,
                    "gossip: member down; its endpoints stay until the managers mark it Down or the grace ends"
                );
                let id = m.node_id.clone();
                lock(&self.shared.dying).insert(id, (m, tokio::time::Instant::now()));
                self.publish_hosts();
                Box::pin(self.withdraw_dead()).await;
                Vec::new()
            }
            OwnedNotification::Rename(_, m) => {
                // Only a live member's identity changes here; a renamed dead
                // one stays dead (a live one is announced by `MemberUp`).
                let mut members = lock(&self.shared.members);
                if let Some(known) = members.get_mut(&m.node_id) {
                    self.remember(&m);
                    *known = m;
                }
                Vec::new()
            }
            _ => Vec::new(),
        };
        Box::pin(self.apply(outs)).await;
    }

    /// Withdraws the endpoints of dead members that the managers marked
    /// Down or whose grace is over.
    async fn withdraw_dead(&self) {
        let gone: Vec<String> = {
            let down = lock(&self.shared.down);
            let mut dying = lock(&self.shared.dying);
            let gone: Vec<String> = dying
                .iter()
                .filter(|(id, (_, since))| down.contains(*id) || since.elapsed() >= self.down_grace)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                dying.remove(id);
            }
            gone
        };
        if gone.is_empty() {
            return;
        }
        self.publish_hosts();
        for id in gone {
            tracing::info!(node = %id, "gossip: withdrawing a dead member's endpoints");
            let outs = lock(&self.shared.db).node_down(&id);
            self.apply(outs).await;
        }
    }

    fn publish_hosts(&self) {
        let mut hosts: BTreeSet<Ipv4Addr> =
            lock(&self.shared.members).values().map(|m| *m.addr.ip()).collect();
        hosts.extend(lock(&self.shared.dying).values().map(|(m, _)| *m.addr.ip()));
        hosts.insert(*self.me.addr.ip());
        let _ = self.events.send(GossipEvent::Hosts(hosts.into_iter().collect()));
    }

    async fn send(&self, to: SocketAddrV4, packet: &Packet) {
        let sealed = lock(&self.shared.keys).seal(packet);
        match sealed {
            Ok(bytes) => {
                let _ = self.udp.send_to(&bytes, to).await;
            }
            Err(e) => tracing::debug!("gossip: not sending: {e}"),
        }
    }

    /// Carries out the tables' outputs.
    async fn apply(&self, outs: Vec<Out>) {
        for o in outs {
            match o {
                Out::Send { to, msg } => {
                    let addr = lock(&self.shared.addrs).get(&to).map(|(a, _)| *a);
                    if let Some(addr) = addr {
                        self.send(addr, &Packet::Table(msg)).await;
                    } else {
                        tracing::debug!(node = %to, "gossip: no address for a table message");
                    }
                }
                Out::Upsert { record, .. } => {
                    let _ = self.events.send(GossipEvent::Upsert(record));
                }
                Out::Remove { record, .. } => {
                    let _ = self.events.send(GossipEvent::Remove(record));
                }
            }
        }
    }

    /// Repairs lost updates: pulls each of our networks' table from a
    /// random member over TCP.
    async fn anti_entropy(&self) {
        let networks: Vec<String> = lock(&self.shared.db).networks().iter().cloned().collect();
        futures::future::join_all(networks.iter().map(|net| self.sync_network(net))).await;
    }

    /// Pulls one network's table from a random member of it.
    async fn sync_network(&self, net: &str) {
        {
            let members = lock(&self.shared.db).members_of(net);
            if members.is_empty() {
                return;
            }
            let pick = &members[rand::random_range(0..members.len())];
            let Some(addr) = lock(&self.shared.members).get(pick).map(|m| m.addr) else { return };
            self.pull_and_merge(addr, net).await;
        }
    }

    /// Pulls every one of our networks' table from a member that just
    /// came up (it answers with nothing for networks it is not in).
    async fn sync_from(&self, addr: SocketAddrV4) {
        let networks: Vec<String> = lock(&self.shared.db).networks().iter().cloned().collect();
        futures::future::join_all(networks.iter().map(|net| self.pull_and_merge(addr, net))).await;
    }

    async fn pull_and_merge(&self, addr: SocketAddrV4, net: &str) {
        match tokio::time::timeout(Duration::from_secs(2), self.pull(addr, net)).await {
            Ok(Ok(entries)) => {
                let outs = lock(&self.shared.db).merge(net, entries);
                self.apply(outs).await;
            }
            Ok(Err(e)) => tracing::debug!(%addr, "gossip sync: {e}"),
            Err(_) => tracing::debug!(%addr, "gossip sync timed out"),
        }
    }

    async fn pull(&self, addr: SocketAddrV4, network: &str) -> std::io::Result<Vec<table::Entry>> {
        let mut s = TcpStream::connect(addr).await?;
        let req = lock(&self.shared.keys).seal(&Packet::SyncRequest { network: network.to_owned() });
        write_frame(&mut s, &req.map_err(std::io::Error::other)?).await?;
        let frame = read_frame(&mut s, MAX_SYNC_RESPONSE).await?;
        let opened = lock(&self.shared.keys).open(&frame);
        match opened.map_err(std::io::Error::other)? {
            Packet::SyncResponse { entries, .. } => Ok(entries),
            _ => Err(std::io::Error::other("unexpected sync response")),
        }
    }

    /// Answers table sync requests. Before a frame is authenticated at most
    /// [`MAX_SYNC_REQUEST`] bytes are read from a connection, for at most
    /// [`INBOUND_DEADLINE`], and at most [`MAX_INBOUND`] connections
    /// ([`MAX_INBOUND_PER_PEER`] per address) are served at once; others are
    /// closed at once.
    async fn serve_tcp(self, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
        let per_peer: Arc<Mutex<BTreeMap<std::net::IpAddr, usize>>> = Arc::default();
        loop {
            let Ok((mut s, from)) = listener.accept().await else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%from, "gossip: too many connections, closing");
                continue;
            };
            let Some(peer) = PeerSlot::take(&per_peer, from.ip()) else {
                tracing::debug!(%from, "gossip: too many connections from this address, closing");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _held = (slot, peer);
                let Ok(Ok(frame)) =
                    tokio::time::timeout(INBOUND_DEADLINE, read_frame(&mut s, MAX_SYNC_REQUEST)).await
                else {
                    return;
                };
                let opened = lock(&me.shared.keys).open(&frame);
                let Ok(Packet::SyncRequest { network }) = opened else { return };
                let entries = lock(&me.shared.db).entries(&network);
                let resp = lock(&me.shared.keys).seal(&Packet::SyncResponse { network, entries });
                if let Ok(bytes) = resp {
                    let _ = write_frame(&mut s, &bytes).await;
                }
            });
        }
    }
}

/// One of an address's inbound connection slots, given back on drop.
struct PeerSlot {
    map: Arc<Mutex<BTreeMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    fn take(map: &Arc<Mutex<BTreeMap<std::net::IpAddr, usize>>>, ip: std::net::IpAddr) -> Option<PeerSlot> {
        let mut m = lock(map);
        let n = m.entry(ip).or_default();
        if *n >= MAX_INBOUND_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot { map: map.clone(), ip })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = lock(&self.map);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

async fn write_frame(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(&u32::try_from(data.len()).map_err(std::io::Error::other)?.to_be_bytes()).await?;
    s.write_all(data).await
}

/// Reads a length-prefixed frame of at most `max` bytes. The buffer grows
/// with the bytes that arrive, never to what the prefix claims up front.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(s: &mut R, max: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::other(format!("gossip frame of {len} bytes is over the limit of {max}")));
    }
    let mut buf = Vec::with_capacity(len.min(64 << 10));
    let got = s.take(len as u64).read_to_end(&mut buf).await?;
    if got != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    #[tokio::test]
    async fn frames_over_the_limit_are_refused_before_anything_is_allocated() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let e = read_frame(&mut b, MAX_SYNC_REQUEST).await.unwrap_err();
        assert!(e.to_string().contains("over the limit of 4096"), "{e}");
    }

    #[tokio::test]
    async fn frames_are_read_whole_or_not_at_all() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&5u32.to_be_bytes()).await.unwrap();
        a.write_all(b"hello").await.unwrap();
        assert_eq!(read_frame(&mut b, 16).await.unwrap(), b"hello");
        // A frame cut short: the announced length never arrives.
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let e = read_frame(&mut b, MAX_SYNC_RESPONSE).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn an_address_gets_a_bounded_number_of_slots_back_on_drop() {
        let map = Arc::default();
        let ip: std::net::IpAddr = Ipv4Addr::new(198, 18, 0, 9).into();
        let held: Vec<PeerSlot> =
            (0..MAX_INBOUND_PER_PEER).map(|_| PeerSlot::take(&map, ip).unwrap()).collect();
        assert!(PeerSlot::take(&map, ip).is_none());
        assert!(
            PeerSlot::take(&map, Ipv4Addr::new(198, 18, 0, 10).into()).is_some(),
            "others are not affected"
        );
        drop(held);
        assert!(lock(&map).get(&ip).is_none());
        assert!(PeerSlot::take(&map, ip).is_some());
    }
}
