//! A node's overlay networking: the eBPF datapath on this host, gossip with
//! the other hosts, and this host's endpoints (network attachments).
//!
//! Connecting: the leader allocates the address, the veth pair is plumbed
//! into the namespace, the datapath learns the endpoint, gossip tells the
//! other hosts in the network. Gossip's news about other hosts' endpoints
//! goes into the datapath's tables. Local endpoints are kept in
//! `endpoints.json`, so a restarted agent republishes them; the datapath
//! itself is pinned and keeps forwarding while the agent is away.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::{sync::mpsc, task::JoinHandle};

use swarm_common::lb::FrontendKey;

use crate::datapath::{
    DatapathError, PinLayout,
    host::HostDatapath,
    netlink::{self, EndpointLink},
};
use crate::{
    datapath::balancer::Want,
    error::ApiError,
    gossip::{Gossip, GossipConfig, GossipEvent, table::EndpointRecord},
    manager::names::Balancers,
    manager::store::{ipam::Cidr, model::Network},
    rpc::messages::{AttachResponse, GossipKey},
};

/// A local endpoint, as remembered across agent restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub endpoint_id: String,
    pub network_id: String,
    pub network_name: String,
    /// The network as it was when the endpoint was attached (what a worker
    /// shows for `network ls`/`inspect`).
    pub network: Network,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
    /// The namespace file it lives in.
    pub netns: PathBuf,
    /// Host-side interface of its pair.
    pub host_iface: String,
    pub host_ifindex: u32,
    /// Its name inside the namespace.
    pub iface: String,
    /// The host's own endpoint (on ingress, for clients on the node): both
    /// veth ends stay in the host's namespace.
    #[serde(default)]
    pub host: bool,
    /// Its pair is a netkit (else a veth).
    #[serde(default)]
    pub netkit: bool,
}

impl LocalEndpoint {
    fn pair(&self) -> netlink::PairKind {
        if self.netkit { netlink::PairKind::Netkit } else { netlink::PairKind::Veth }
    }
}

/// Names of the host endpoint's veth pair: the datapath end and the end
/// with the address.
const HOST_DP_IFACE: &str = "swingress-dp";
const HOST_STACK_IFACE: &str = "swingress";

/// What an allocation says an endpoint is, checked.
struct Planned {
    mtu: u32,
    underlay_ip: Ipv4Addr,
    subnet: Cidr,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    mac: [u8; 6],
}

impl Planned {
    fn new(alloc: &AttachResponse, datapath: &Mutex<HostDatapath>) -> Result<Planned, ApiError> {
        let (mtu, underlay_ip) = {
            let d = lock(datapath);
            (alloc.network.mtu(d.underlay_mtu), d.underlay_ip)
        };
        let subnet = Cidr::parse(&alloc.network.subnet).map_err(ApiError::internal)?;
        let ip: Ipv4Addr =
            alloc.endpoint.ip.parse().map_err(|_| ApiError::internal("bad endpoint address"))?;
        let gateway: Ipv4Addr =
            alloc.network.gateway.parse().map_err(|_| ApiError::internal("bad gateway"))?;
        Ok(Planned { mtu, underlay_ip, subnet, ip, gateway, mac: crate::manager::store::ipam::mac_for(ip) })
    }

    /// The endpoint as remembered, once its link exists.
    fn endpoint(
        &self,
        alloc: &AttachResponse,
        netns: PathBuf,
        link: (String, u32, String),
        host: bool,
    ) -> LocalEndpoint {
        let (host_iface, host_ifindex, iface) = link;
        LocalEndpoint {
            endpoint_id: alloc.endpoint.id.clone(),
            network_id: alloc.network.id.clone(),
            network_name: alloc.network.name.clone(),
            network: alloc.network.clone(),
            vni: alloc.network.vni,
            ip: self.ip,
            mac: self.mac,
            netns,
            host_iface,
            host_ifindex,
            iface,
            host,
            netkit: false,
        }
    }
}

fn dp_err(e: DatapathError) -> ApiError {
    ApiError::internal(format!("datapath: {}", crate::error::chain(&e)))
}

/// Overlay state of a node; inert until [`Overlay::start`].
pub struct Overlay {
    store: PathBuf,
    inner: Mutex<Option<Running>>,
    endpoints: Mutex<Vec<LocalEndpoint>>,
    /// Serializes connect/disconnect.
    op: tokio::sync::Mutex<()>,
    /// The load balancing last asked for (applied once the datapath runs).
    balancers: Mutex<Option<Balancers>>,
    /// A host endpoint is being made.
    pub host_endpoint_pending: std::sync::atomic::AtomicBool,
}

struct Running {
    datapath: Arc<Mutex<HostDatapath>>,
    gossip: Gossip,
    events: JoinHandle<()>,
    keys: Vec<GossipKey>,
    /// The managers' Down nodes, as last passed to gossip.
    down: std::collections::BTreeSet<String>,
    /// The pairs new endpoints get.
    pairs: netlink::PairPolicy,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Overlay {
    pub fn new(store: PathBuf) -> Overlay {
        let endpoints =
            std::fs::read(&store).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        Overlay {
            store,
            inner: Mutex::new(None),
            endpoints: Mutex::new(endpoints),
            op: tokio::sync::Mutex::new(()),
            balancers: Mutex::new(None),
            host_endpoint_pending: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Starts (or adopts) the datapath and gossip; republishes this host's endpoints.
    pub async fn start(
        &self,
        node_id: &str,
        underlay_ip: Ipv4Addr,
        vxlan_port: u16,
        options: &crate::node::NodeOptions,
        keys: Vec<GossipKey>,
    ) -> Result<(), ApiError> {
        let (bpffs, xdp, down_grace) = (options.bpffs.as_path(), options.xdp, options.gossip_down_grace);
        if lock(&self.inner).is_some() {
            return Ok(());
        }
        let dp =
            HostDatapath::start(PinLayout::new(bpffs), underlay_ip, vxlan_port, xdp).await.map_err(dp_err)?;
        let datapath = Arc::new(Mutex::new(dp));
        let (tx, rx) = mpsc::unbounded_channel();
        let incarnation = crate::manager::now_nanos().unsigned_abs();
        let gossip = Gossip::start(
            GossipConfig {
                node_id: node_id.to_owned(),
                addr: underlay_ip,
                port: crate::gossip::PORT,
                incarnation,
                down_grace,
            },
            &keys,
            tx,
        )
        .await
        .map_err(|e| ApiError::internal(format!("starting gossip on port {}: {e}", crate::gossip::PORT)))?;
        let events = tokio::spawn(apply_events(datapath.clone(), rx));
        for ep in lock(&self.endpoints).iter() {
            let mut d = lock(&datapath);
            // The pinned maps normally still have it; make sure.
            let _ = if ep.host {
                d.add_host_endpoint(&ep.host_iface, ep.host_ifindex, ep.vni, ep.ip, ep.mac)
            } else {
                d.add_local_endpoint(&ep.host_iface, ep.host_ifindex, ep.pair(), ep.vni, ep.ip, ep.mac)
            };
            drop(d);
            gossip.set_local(&ep.network_id, &ep.endpoint_id, record(ep, underlay_ip));
        }
        *lock(&self.inner) = Some(Running {
            datapath,
            gossip,
            events,
            keys,
            down: std::collections::BTreeSet::new(),
            pairs: options.endpoint_pairs,
        });
        let pending = lock(&self.balancers).clone();
        if let Some(lb) = pending {
            self.apply_balancers(&lb);
        }
        Ok(())
    }

    /// What the datapath balances (from the managers): VIPs, published
    /// ports and the ingress network, which every node joins (its tables
    /// and gossip) to reach the tasks behind published ports.
    pub fn set_balancers(&self, lb: &Balancers) {
        let changed = lock(&self.balancers).as_ref() != Some(lb);
        if changed {
            *lock(&self.balancers) = Some(lb.clone());
            self.apply_balancers(lb);
        }
    }

    fn apply_balancers(&self, lb: &Balancers) {
        let Ok((datapath, gossip)) = self.running() else { return };
        let mut want = std::collections::BTreeMap::new();
        for v in &lb.vips {
            want.insert(
                FrontendKey::vip(v.vni, v.vip.octets()),
                Want { backend_vni: v.vni, target_port: 0, backends: v.backends.clone() },
            );
        }
        for h in &lb.host_ports {
            want.insert(
                FrontendKey::published(h.port, h.protocol),
                Want { backend_vni: h.vni, target_port: h.target, backends: vec![h.task] },
            );
        }
        let mut d = lock(&datapath);
        if let Some(ing) = &lb.ingress {
            for p in &lb.published {
                want.insert(
                    FrontendKey::published(p.port, p.protocol),
                    Want { backend_vni: ing.vni, target_port: p.target, backends: p.backends.clone() },
                );
            }
            if let Ok(subnet) = Cidr::parse(&ing.subnet)
                && let Err(e) = d.set_network(ing.vni, subnet.network(), subnet.prefix, ing.gateway)
            {
                tracing::warn!("datapath: ingress network: {e}");
            }
            gossip.join(&ing.id);
        }
        if let Err(e) = d.set_balancers(&want) {
            tracing::warn!("datapath: service frontends: {e}");
        }
    }

    /// The ingress network's VNI, if the managers named one.
    fn ingress_vni(&self) -> Option<u32> {
        lock(&self.balancers).as_ref().and_then(|b| b.ingress.as_ref()).map(|i| i.vni)
    }

    pub fn is_running(&self) -> bool {
        lock(&self.inner).is_some()
    }

    /// Keys from the managers; passed on when they change.
    pub fn set_keys(&self, keys: &[GossipKey]) {
        if let Some(r) = lock(&self.inner).as_mut()
            && r.keys != keys
        {
            r.keys = keys.to_vec();
            r.gossip.set_keys(keys.to_vec());
        }
    }

    /// The nodes the managers consider Down (from heartbeats).
    pub fn set_down(&self, nodes: &[String]) {
        if let Some(r) = lock(&self.inner).as_mut() {
            let set: std::collections::BTreeSet<String> = nodes.iter().cloned().collect();
            if r.down != set {
                r.down.clone_from(&set);
                r.gossip.set_down(set);
            }
        }
    }

    /// Addresses to join gossip through, when this node knows no other member.
    pub fn seeds(&self, managers: &[String]) {
        if let Some(r) = lock(&self.inner).as_ref()
            && r.gossip.members().is_empty()
        {
            let ips = managers
                .iter()
                .filter_map(|a| a.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
                .collect();
            r.gossip.seeds(ips);
        }
    }

    pub fn endpoints(&self) -> Vec<LocalEndpoint> {
        lock(&self.endpoints).clone()
    }

    fn persist(&self) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(&*lock(&self.endpoints))
            .map_err(|e| ApiError::internal(e.to_string()))?;
        std::fs::write(&self.store, bytes)
            .map_err(|e| ApiError::internal(format!("saving {}: {e}", self.store.display())))
    }

    fn running(&self) -> Result<(Arc<Mutex<HostDatapath>>, Gossip), ApiError> {
        lock(&self.inner).as_ref().map(|r| (r.datapath.clone(), r.gossip.clone())).ok_or_else(|| {
            ApiError::unavailable("the overlay datapath is not running on this node (see the daemon log)")
        })
    }

    /// Plumbs an allocated endpoint into `netns` and publishes it. On
    /// failure nothing of it is left on this host (the caller releases the
    /// address).
    pub async fn connect(&self, alloc: &AttachResponse, netns: &Path) -> Result<LocalEndpoint, ApiError> {
        let _op = self.op.lock().await;
        let (datapath, gossip) = self.running()?;
        let plan = Planned::new(alloc, &datapath)?;
        let (mtu, underlay_ip, ip, gateway, mac) =
            (plan.mtu, plan.underlay_ip, plan.ip, plan.gateway, plan.mac);
        let subnet = &plan.subnet;
        // From a hash of the whole ID: a task's endpoints on two networks
        // share the ID's first characters.
        let host_iface =
            format!("swe{}", &crate::manager::raft::network::sha256_hex(alloc.endpoint.id.as_bytes())[..12]);
        let link =
            EndpointLink { host_name: &host_iface, netns, ip, prefix_len: subnet.prefix, gateway, mac, mtu };
        let pairs = lock(&self.inner).as_ref().map_or(netlink::PairPolicy::Auto, |r| r.pairs);
        let (host_ifindex, iface, kind) = netlink::create_endpoint_link(&link, pairs)
            .await
            .map_err(|e| ApiError::invalid(format!("attaching {}: {e}", netns.display())))?;
        let mut ep = plan.endpoint(alloc, netns.to_owned(), (host_iface.clone(), host_ifindex, iface), false);
        ep.netkit = kind == netlink::PairKind::Netkit;
        let programmed = {
            let mut d = lock(&datapath);
            d.set_network(ep.vni, subnet.network(), subnet.prefix, gateway)
                .and_then(|()| d.add_local_endpoint(&host_iface, host_ifindex, kind, ep.vni, ip, mac))
        };
        if let Err(e) = programmed {
            let _ = netlink::delete_link(&host_iface).await;
            return Err(dp_err(e));
        }
        gossip.set_local(&ep.network_id, &ep.endpoint_id, record(&ep, underlay_ip));
        lock(&self.endpoints).push(ep.clone());
        self.persist()?;
        Ok(ep)
    }

    /// Whether the host has its own endpoint on the ingress network.
    pub fn has_host_endpoint(&self) -> bool {
        lock(&self.endpoints).iter().any(|e| e.host)
    }

    /// Makes the host's own endpoint on the ingress network from the
    /// leader's allocation (`ingress-sbox`), and hooks `connect()` on this
    /// node so its own processes reach published ports.
    pub async fn connect_host(&self, alloc: &AttachResponse) -> Result<(), ApiError> {
        let _op = self.op.lock().await;
        if self.has_host_endpoint() {
            return Ok(());
        }
        let (datapath, gossip) = self.running()?;
        let plan = Planned::new(alloc, &datapath)?;
        let (mtu, underlay_ip, ip, gateway, mac) =
            (plan.mtu, plan.underlay_ip, plan.ip, plan.gateway, plan.mac);
        let subnet = &plan.subnet;
        let ifindex =
            netlink::create_host_endpoint_link(HOST_DP_IFACE, HOST_STACK_IFACE, ip, subnet.prefix, mac, mtu)
                .await
                .map_err(dp_err)?;
        let cgroup = self.cgroup2_root();
        let programmed = {
            let mut d = lock(&datapath);
            let r = d
                .set_network(alloc.network.vni, subnet.network(), subnet.prefix, gateway)
                .and_then(|()| d.add_host_endpoint(HOST_DP_IFACE, ifindex, alloc.network.vni, ip, mac));
            // Without the hook, tasks still reach published ports through
            // this endpoint; only the node's own processes do not.
            let hooked = cgroup.and_then(|path| d.attach_sock(&path).map_err(|e| crate::error::chain(&e)));
            if let Err(e) = hooked {
                tracing::warn!("published ports will not answer this node's own processes: {e}");
            }
            r
        };
        if let Err(e) = programmed {
            let _ = netlink::delete_link(HOST_DP_IFACE).await;
            return Err(dp_err(e));
        }
        let link = (HOST_DP_IFACE.to_owned(), ifindex, HOST_STACK_IFACE.to_owned());
        let ep = plan.endpoint(alloc, PathBuf::from("/proc/1/ns/net"), link, true);
        gossip.set_local(&ep.network_id, &ep.endpoint_id, record(&ep, underlay_ip));
        lock(&self.endpoints).push(ep);
        self.persist()
    }

    /// The root of the cgroup v2 hierarchy: where one is mounted, else a
    /// mount of our own beside the agent's state.
    fn cgroup2_root(&self) -> Result<PathBuf, String> {
        if let Some(p) = crate::datapath::host::cgroup2_mount() {
            return Ok(p);
        }
        let dir = self.store.parent().unwrap_or(Path::new("/")).join("cgroup2");
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        nix::mount::mount(Some("cgroup2"), &dir, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| format!("mounting cgroup2 on {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The networks this host has endpoints in (a worker's view of networks).
    pub fn networks(&self) -> Vec<Network> {
        let mut out: Vec<Network> = Vec::new();
        for ep in lock(&self.endpoints).iter() {
            if !out.iter().any(|n| n.id == ep.network.id) {
                out.push(ep.network.clone());
            }
        }
        out
    }

    /// The local endpoint of `network` (ID or name) in `netns`.
    pub fn find(&self, network: &str, netns: &Path) -> Option<LocalEndpoint> {
        lock(&self.endpoints)
            .iter()
            .find(|e| {
                (e.network_id == network || e.network_name == network || e.network_id.starts_with(network))
                    && e.netns == netns
            })
            .cloned()
    }

    /// Unplumbs and withdraws a local endpoint.
    pub async fn disconnect(&self, ep: &LocalEndpoint) -> Result<(), ApiError> {
        let _op = self.op.lock().await;
        if let Ok((datapath, gossip)) = self.running() {
            gossip.remove_local(&ep.network_id, &ep.endpoint_id);
            let last_in_network =
                !lock(&self.endpoints).iter().any(|e| e.vni == ep.vni && e.endpoint_id != ep.endpoint_id);
            let mut d = lock(&datapath);
            d.remove_local_endpoint(&ep.host_iface, ep.host_ifindex, ep.vni, ep.ip).map_err(dp_err)?;
            if last_in_network && Some(ep.vni) != self.ingress_vni() {
                d.remove_network(ep.vni).map_err(dp_err)?;
            }
        }
        netlink::delete_link(&ep.host_iface).await.map_err(dp_err)?;
        lock(&self.endpoints).retain(|e| e.endpoint_id != ep.endpoint_id);
        self.persist()
    }

    /// Stops gossip and the event pump; with `remove`, also tears down every
    /// local endpoint and the underlay programs (leaving the swarm).
    pub async fn stop(&self, remove: bool) {
        if remove {
            for ep in self.endpoints() {
                let _ = self.disconnect(&ep).await;
            }
        }
        let running = lock(&self.inner).take();
        if let Some(r) = running {
            r.gossip.stop();
            r.events.abort();
            if remove {
                lock(&r.datapath).shutdown();
            }
        }
    }

    /// Counters and tables of the datapath, for `network inspect --verbose`.
    pub fn datapath(&self) -> Option<Arc<Mutex<HostDatapath>>> {
        lock(&self.inner).as_ref().map(|r| r.datapath.clone())
    }

    pub fn gossip(&self) -> Option<Gossip> {
        lock(&self.inner).as_ref().map(|r| r.gossip.clone())
    }
}

fn record(ep: &LocalEndpoint, host: Ipv4Addr) -> EndpointRecord {
    EndpointRecord { vni: ep.vni, ip: ep.ip.octets(), mac: ep.mac, host_ip: host.octets() }
}

/// How long after (re)starting the datapath only ever gains member hosts:
/// a restarted agent knows no peer for a moment, and its pinned maps still
/// hold the ones whose traffic is flowing.
const HOSTS_WARMUP: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies gossip's news to the datapath tables.
async fn apply_events(datapath: Arc<Mutex<HostDatapath>>, mut rx: mpsc::UnboundedReceiver<GossipEvent>) {
    let started = std::time::Instant::now();
    while let Some(ev) = rx.recv().await {
        let mut d = lock(&datapath);
        let r = match &ev {
            GossipEvent::Upsert(r) => d.set_remote_endpoint(r.vni, r.ip.into(), r.mac, r.host_ip.into()),
            GossipEvent::Remove(r) => d.remove_remote_endpoint(r.vni, r.ip.into()),
            GossipEvent::Hosts(h) if started.elapsed() < HOSTS_WARMUP => d.add_hosts(h),
            GossipEvent::Hosts(h) => d.set_hosts(h),
        };
        if let Err(e) = r {
            tracing::warn!("datapath update {ev:?}: {e}");
        }
    }
}
