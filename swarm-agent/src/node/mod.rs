//! This host's membership in a swarm: its identity and certificates, the
//! agent that keeps a session with the managers (heartbeats, certificate
//! renewal, role changes), and the manager when this node is one.

pub mod local;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rand::Rng as _;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    datapath::host::XdpPolicy,
    rpc::messages::{AttachRequest, AttachResponse, DetachRequest, GossipKey},
};

use crate::{
    ca::{
        self, CertInfo, Role, RootCa,
        tls::{self, CertResolver},
        token::{JoinToken, hex},
    },
    error::{ALREADY_IN_SWARM, ApiError, NOT_A_MANAGER},
    manager::{
        Manager, ManagerConfig, now_nanos,
        raft::Timing,
        store::{
            model::{
                Availability, Cluster, ClusterSpec, ManagerInfo, Meta, Network, Node, NodeDescription,
                NodeSpec, NodeState, NodeStatus,
            },
            state::Command,
        },
    },
    node::local::{Certs, LocalState, SwarmDir},
    rpc::{
        self, Caller, Identity, RpcClient,
        messages::{
            ControlRequest, ControlResponse, HeartbeatRequest, HeartbeatResponse, IssueCertRequest,
            IssueCertResponse, JoinRaftRequest, Reachability, RootCaResponse, path,
        },
    },
    util::{addr, ids},
};

const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// `swarm init` parameters, already parsed.
#[derive(Debug, Clone)]
pub struct InitParams {
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    pub availability: Availability,
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    pub data_path_port: u32,
    pub spec: ClusterSpec,
    pub options: NodeOptions,
}

/// How this node runs, from the daemon's flags.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub timing: Timing,
    /// Root of the pinned eBPF objects.
    pub bpffs: PathBuf,
    pub xdp: XdpPolicy,
    /// netkit or veth pairs for endpoints.
    pub endpoint_pairs: crate::datapath::netlink::PairPolicy,
    /// See [`crate::gossip::DOWN_GRACE`].
    pub gossip_down_grace: Duration,
    /// Images and the executor; without them the node runs no tasks.
    pub runtime: Option<Arc<crate::agent::runtime::Runtime>>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            timing: Timing::default(),
            bpffs: PathBuf::from(crate::datapath::bpffs::DEFAULT_ROOT),
            xdp: XdpPolicy::Auto,
            endpoint_pairs: crate::datapath::netlink::PairPolicy::Auto,
            gossip_down_grace: crate::gossip::DOWN_GRACE,
            runtime: None,
        }
    }
}

/// `swarm join` parameters.
#[derive(Debug, Clone)]
pub struct JoinParams {
    pub remote: String,
    pub token: String,
    pub listen_addr: String,
    pub advertise_addr: Option<String>,
    pub availability: Availability,
    pub options: NodeOptions,
}

/// A running swarm membership.
pub struct SwarmNode {
    dir: SwarmDir,
    local: Mutex<LocalState>,
    certs: Mutex<Certs>,
    resolver: Arc<CertResolver>,
    rpc: RpcClient,
    manager: tokio::sync::Mutex<Option<Arc<Manager>>>,
    options: NodeOptions,
    agent: Mutex<Option<JoinHandle<()>>>,
    overlay: crate::agent::overlay::Overlay,
    /// Runs this node's tasks (when the engine has a runtime).
    worker: Option<Arc<crate::agent::worker::Worker>>,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> ApiError {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

fn ca_err(e: ca::CaError) -> ApiError {
    ApiError::internal(e.to_string())
}

fn tls_err(e: tls::TlsError) -> ApiError {
    ApiError::internal(e.to_string())
}

/// What this host says about itself.
static ENGINE_LABELS: std::sync::OnceLock<std::collections::BTreeMap<String, String>> =
    std::sync::OnceLock::new();

/// Sets the engine labels this process reports (once, at daemon start).
pub fn set_engine_labels(labels: std::collections::BTreeMap<String, String>) {
    let _ = ENGINE_LABELS.set(labels);
}

/// Parses `key=value` engine labels (docker's wording for a bad one).
pub fn parse_engine_labels(list: &[String]) -> Result<std::collections::BTreeMap<String, String>, String> {
    list.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
            _ => Err(format!("bad attribute format: {l}")),
        })
        .collect()
}

pub fn describe() -> NodeDescription {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<i64>().ok())
        })
        .unwrap_or(0);
    NodeDescription {
        hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        engine_version: env!("CARGO_PKG_VERSION").into(),
        nano_cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1_000_000_000,
        memory_bytes: mem * 1024,
        engine_labels: ENGINE_LABELS.get().cloned().unwrap_or_default(),
    }
}

/// The longest mask a pool's subnets may have: Docker keeps 29 so that the
/// smallest overlay still has 8 addresses.
pub const MAX_SUBNET_SIZE: u32 = 29;

/// Checks the address pool options the way moby does (its
/// `validateDefaultAddrPool`): mask length 1-29 (0 means 24), every pool a
/// CIDR no longer than the mask.
pub fn validate_pool(pool: &[String], subnet_size: u32) -> Result<(Vec<String>, u32), ApiError> {
    let subnet_size = if subnet_size == 0 { 24 } else { subnet_size };
    if subnet_size > MAX_SUBNET_SIZE {
        return Err(ApiError::invalid(format!("subnet size is out of range: {subnet_size}")));
    }
    let pool: Vec<String> = if pool.is_empty() {
        vec!["10.0.0.0/8".to_owned()]
    } else {
        pool.iter().map(|p| p.trim().to_owned()).collect()
    };
    for p in &pool {
        let (_, len) = parse_cidr(p)
            .ok_or_else(|| ApiError::invalid(format!("invalid base pool {p}: invalid CIDR address: {p}")))?;
        if len > subnet_size {
            return Err(ApiError::invalid(format!(
                "invalid CIDR: {p:?}. Subnet size is too small for pool: {subnet_size}"
            )));
        }
    }
    Ok((pool, subnet_size))
}

fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then_some((ip, len))
}

/// The first subnet of the pool: the ingress network's.
fn first_subnet(pool: &str, size: u32) -> (String, String) {
    let (ip, len) = parse_cidr(pool).expect("validated");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let base = u32::from(ip) & mask;
    let net = std::net::Ipv4Addr::from(base);
    // A /29 at most (validated), so the first host never wraps around.
    (format!("{net}/{size}"), std::net::Ipv4Addr::from(base.saturating_add(1)).to_string())
}

/// Data path port: 0 means 4789; otherwise 1024-49151.
pub fn validate_data_path_port(port: u32) -> Result<u32, ApiError> {
    match port {
        0 => Ok(u32::from(swarm_common::VXLAN_UDP_PORT)),
        1024..=49151 => Ok(port),
        p => Err(ApiError::invalid(format!("Datapath port number is not in valid range (1024-49151) : {p}"))),
    }
}

async fn bind(listen: &str) -> Result<TcpListener, ApiError> {
    TcpListener::bind(listen).await.map_err(|e| ApiError::invalid(format!("listen tcp {listen}: bind: {e}")))
}

fn addresses(listen: &str, advertise: Option<&str>) -> Result<(String, String), ApiError> {
    let sys = addr::system_addrs();
    let l = addr::resolve_listen(listen, &sys).map_err(ApiError::invalid)?;
    let a = addr::resolve_advertise(advertise, l, &sys).map_err(ApiError::invalid)?;
    Ok((addr::join_host_port(l.0, l.1), addr::join_host_port(a.0, a.1)))
}

impl SwarmNode {
    fn new(
        dir: SwarmDir,
        local: LocalState,
        certs: Certs,
        options: NodeOptions,
    ) -> Result<Arc<SwarmNode>, ApiError> {
        let ca = RootCa::from_pem(&certs.ca_cert, None).map_err(ca_err)?;
        let resolver = CertResolver::new(&certs.node_cert, &certs.node_key).map_err(tls_err)?;
        let rpc = RpcClient::new(tls::client_config(&ca, resolver.clone()).map_err(tls_err)?);
        let overlay = crate::agent::overlay::Overlay::new(dir.root().join("endpoints.json"));
        let node_id = local.node_id.clone();
        let node = Arc::new_cyclic(|me: &std::sync::Weak<SwarmNode>| {
            let worker = options.runtime.as_ref().map(|rt| {
                crate::agent::worker::Worker::new(
                    rt.exec.clone(),
                    rt.images.clone(),
                    Arc::new(NodeLink(me.clone())),
                    rt.netns_dir.clone(),
                    node_id,
                    rt.dns_upstreams.clone(),
                )
            });
            SwarmNode {
                dir,
                local: Mutex::new(local),
                certs: Mutex::new(certs),
                resolver,
                rpc,
                manager: tokio::sync::Mutex::new(None),
                overlay,
                options,
                agent: Mutex::new(None),
                worker,
            }
        });
        Ok(node)
    }

    /// `swarm init`: a new cluster with this node as its only manager.
    pub async fn init(data_root: PathBuf, p: InitParams) -> Result<Arc<SwarmNode>, ApiError> {
        let dir = SwarmDir::new(&data_root);
        if dir.exists() {
            return Err(ApiError::unavailable(ALREADY_IN_SWARM));
        }
        let (listen, advertise) = addresses(&p.listen_addr, p.advertise_addr.as_deref())?;
        let data_path_port = validate_data_path_port(p.data_path_port)?;
        let (pool, subnet_size) = validate_pool(&p.default_addr_pool, p.subnet_size)?;
        let listener = bind(&listen).await?;

        let node_id = ids::new_id();
        let cluster_id = ids::new_id();
        let root = RootCa::generate().map_err(ca_err)?;
        let (key, csr) = ca::new_key_and_csr().map_err(ca_err)?;
        let expiry = Duration::from_nanos(p.spec.node_cert_expiry);
        let cert = root.sign_node_csr(&csr, &node_id, Role::Manager, &cluster_id, expiry).map_err(ca_err)?;
        let certs = Certs {
            node_cert: cert,
            node_key: key,
            ca_cert: root.cert_pem().to_owned(),
            ca_key: root.key_pem().map(str::to_owned),
        };
        let raft_id = rand::rng().random::<u64>() >> 1;
        let local = LocalState {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            raft_id: Some(raft_id),
            advertise_addr: advertise.clone(),
            listen_addr: listen,
            data_path_port,
            managers: vec![advertise.clone()],
            snapshots: crate::manager::raft::SnapshotSettings::from_spec(&p.spec),
        };
        let result = async {
            dir.save_certs(&certs).map_err(io("saving certificates"))?;
            dir.save_state(&local).map_err(io("saving state"))?;
            let node = SwarmNode::new(dir.clone(), local.clone(), certs.clone(), p.options.clone())?;
            let mgr = node.start_manager(listener).await?;
            mgr.initialize().await?;
            mgr.wait_for_leader(Duration::from_secs(10)).await?;
            let now = now_nanos();
            let meta = Meta { version: 0, created_at: now, updated_at: now };
            let (subnet, gateway) = first_subnet(&pool[0], subnet_size);
            let cluster = Cluster {
                id: cluster_id.clone(),
                meta: meta.clone(),
                spec: p.spec.clone(),
                root_ca_cert: root.cert_pem().to_owned(),
                root_ca_key: root.key_pem().unwrap_or_default().to_owned(),
                worker_token: JoinToken::generate(root.cert_pem().as_bytes()).as_str().to_owned(),
                manager_token: JoinToken::generate(root.cert_pem().as_bytes()).as_str().to_owned(),
                default_addr_pool: pool.clone(),
                subnet_size,
                data_path_port,
                gossip_keys: vec![crate::rpc::messages::GossipKey::generate(1)],
                gossip_keys_rotated_at: now,
            };
            let me = Node {
                id: node_id.clone(),
                meta: meta.clone(),
                spec: NodeSpec {
                    name: String::new(),
                    labels: BTreeMap::new(),
                    role: Role::Manager,
                    availability: p.availability,
                },
                role: Role::Manager,
                description: describe(),
                status: NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                    addr: host(&advertise),
                },
                manager: Some(ManagerInfo { raft_id, addr: advertise.clone() }),
            };
            let ingress = Network {
                id: ids::new_id(),
                meta,
                name: "ingress".into(),
                driver: "overlay".into(),
                ingress: true,
                attachable: false,
                subnet,
                gateway,
                vni: 4096,
                labels: BTreeMap::new(),
                options: BTreeMap::new(),
                pending_delete: false,
            };
            let keys = cluster.gossip_keys.clone();
            let cmd = Command::CreateCluster {
                cluster: Box::new(cluster),
                node: Box::new(me),
                ingress: Box::new(ingress),
            };
            node.propose_local(cmd).await?;
            // Ready when init returns, as after a join: endpoints can be
            // attached at once, not only after the first heartbeat.
            node.start_overlay(keys).await;
            node.start_agent();
            Ok(node)
        }
        .await;
        if result.is_err() {
            let _ = dir.wipe();
        }
        result
    }

    /// `swarm join`: get the CA (checked against the token), a certificate
    /// for a key made here, and for managers a seat in Raft.
    pub async fn join(data_root: PathBuf, p: JoinParams) -> Result<Arc<SwarmNode>, ApiError> {
        let dir = SwarmDir::new(&data_root);
        if dir.exists() {
            return Err(ApiError::unavailable(ALREADY_IN_SWARM));
        }
        let token = JoinToken::parse(&p.token).map_err(|e| ApiError::invalid(e.to_string()))?;
        let remote = addr::normalize_remote(&p.remote);
        let sys = addr::system_addrs();
        let listen = addr::resolve_listen(&p.listen_addr, &sys).map_err(ApiError::invalid)?;
        let advertise = match addr::resolve_advertise(p.advertise_addr.as_deref(), listen, &sys) {
            Ok(a) => a,
            // Ambiguous: use the address this host reaches the manager from.
            Err(_) if p.advertise_addr.is_none() => {
                let local = rpc::local_addr_towards(&remote).await.map_err(|e| e.into_api("joining"))?;
                (local.ip(), listen.1)
            }
            Err(e) => return Err(ApiError::invalid(e)),
        };
        let advertise = addr::join_host_port(advertise.0, advertise.1);
        let listen = addr::join_host_port(listen.0, listen.1);

        // The root CA, from a server we cannot verify yet; the token says what it must be.
        let bootstrap = RpcClient::new(tls::bootstrap_client_config().map_err(tls_err)?);
        let got: RootCaResponse = bootstrap
            .call(&remote, path::ROOT_CA, &(), RPC_TIMEOUT, None)
            .await
            .map_err(|e| e.into_api(&format!("could not reach the manager at {remote}")))?;
        if crate::ca::token::ca_digest(got.ca_pem.as_bytes()) != token.ca_digest {
            return Err(ApiError::invalid(format!(
                "remote CA does not match fingerprint. Expected: {}",
                hex(&token.ca_digest)
            )));
        }
        let root = RootCa::from_pem(&got.ca_pem, None).map_err(ca_err)?;
        let (key, csr) = ca::new_key_and_csr().map_err(ca_err)?;
        let anon = RpcClient::new(tls::anonymous_client_config(&root).map_err(tls_err)?);
        let req = IssueCertRequest {
            token: Some(p.token.clone()),
            csr_pem: csr,
            availability: p.availability,
            description: describe(),
            advertise_addr: advertise.clone(),
        };
        let issued: IssueCertResponse = anon
            .call(&remote, path::ISSUE_CERT, &req, RPC_TIMEOUT * 2, None)
            .await
            .map_err(|e| e.into_api(&format!("could not reach the manager at {remote}")))?;

        let listener = if issued.role == Role::Manager { Some(bind(&listen).await?) } else { None };
        let certs = Certs {
            node_cert: issued.cert_pem,
            node_key: key,
            ca_cert: got.ca_pem,
            ca_key: issued.ca_key_pem,
        };
        let mut managers = issued.managers.clone();
        if !managers.contains(&remote) {
            managers.push(remote.clone());
        }
        let local = LocalState {
            node_id: issued.node_id,
            cluster_id: issued.cluster_id,
            role: issued.role,
            raft_id: None,
            advertise_addr: advertise,
            listen_addr: listen,
            data_path_port: issued.data_path_port,
            managers,
            snapshots: issued.snapshots,
        };
        let result = async {
            dir.save_certs(&certs).map_err(io("saving certificates"))?;
            dir.save_state(&local).map_err(io("saving state"))?;
            let node = SwarmNode::new(dir.clone(), local, certs, p.options.clone())?;
            if let Some(listener) = listener {
                node.become_manager(listener).await?;
            }
            node.start_overlay(Vec::new()).await;
            node.start_agent();
            Ok(node)
        }
        .await;
        if result.is_err() {
            let _ = dir.wipe();
        }
        result
    }

    /// Picks up a membership from disk after a daemon restart.
    pub async fn resume(
        data_root: PathBuf,
        options: NodeOptions,
    ) -> Result<Option<Arc<SwarmNode>>, ApiError> {
        let dir = SwarmDir::new(&data_root);
        let Some((local, certs)) = dir.load().map_err(io("reading swarm state"))? else { return Ok(None) };
        let node = SwarmNode::new(dir, local.clone(), certs, options)?;
        if local.role == Role::Manager && local.raft_id.is_some() {
            let listener = bind(&local.listen_addr).await?;
            node.start_manager(listener).await?;
        }
        node.start_overlay(Vec::new()).await;
        node.start_agent();
        Ok(Some(node))
    }

    /// `init --force-new-cluster` on a manager that lost its quorum: a new
    /// Raft group of one, seeded with this manager's copy of the state.
    pub async fn force_new_cluster(self: &Arc<Self>, advertise: Option<&str>) -> Result<(), ApiError> {
        if self.local().role != Role::Manager {
            return Err(ApiError::invalid("--force-new-cluster can only be used on a manager"));
        }
        // This manager's copy of the state: everything it has applied.
        let state = match self.manager().await {
            Some(m) => m.state().snapshot(),
            None => {
                return Err(ApiError::invalid(
                    "this manager is not running raft; restart the daemon and retry",
                ));
            }
        };
        state
            .cluster()
            .map_err(|_| ApiError::invalid("this manager has no copy of the swarm state to recover"))?;
        self.stop().await;
        self.dir.wipe_raft().map_err(io("removing the raft store"))?;
        let raft_id = rand::rng().random::<u64>() >> 1;
        {
            let mut l = self.local_mut();
            if let Some(a) = advertise {
                let (_, adv) = addresses(&l.listen_addr, Some(a))?;
                l.advertise_addr = adv;
            }
            l.raft_id = Some(raft_id);
            l.managers = vec![l.advertise_addr.clone()];
            self.dir.save_state(&l).map_err(io("saving state"))?;
        }
        let local = self.local();
        let listener = bind(&local.listen_addr).await?;
        let mgr = self.start_manager(listener).await?;
        mgr.initialize().await?;
        mgr.wait_for_leader(Duration::from_secs(10)).await?;
        let cmd = Command::ForceNewCluster {
            state: Box::new(state),
            node_id: local.node_id.clone(),
            manager: ManagerInfo { raft_id, addr: local.advertise_addr.clone() },
            now: now_nanos(),
        };
        self.propose_local(cmd).await?;
        // That entry holds the whole state: managers that join later get a
        // snapshot instead of an entry of any size.
        mgr.compact_now().await?;
        self.start_agent();
        Ok(())
    }

    pub fn local(&self) -> LocalState {
        self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn local_mut(&self) -> std::sync::MutexGuard<'_, LocalState> {
        self.local.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn identity(&self) -> Identity {
        let l = self.local();
        Identity { node_id: l.node_id, role: l.role, cluster_id: l.cluster_id }
    }

    pub fn ca_cert(&self) -> String {
        self.certs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ca_cert.clone()
    }

    /// The running manager, if this node is one.
    pub async fn manager(&self) -> Option<Arc<Manager>> {
        self.manager.lock().await.clone()
    }

    async fn start_manager(&self, listener: TcpListener) -> Result<Arc<Manager>, ApiError> {
        let local = self.local();
        let certs = self.certs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let ca = RootCa::from_pem(&certs.ca_cert, certs.ca_key.as_deref()).map_err(ca_err)?;
        let server_tls = tls::server_config(&ca, self.resolver.clone()).map_err(tls_err)?;
        let cfg = ManagerConfig {
            node_id: local.node_id.clone(),
            cluster_id: local.cluster_id.clone(),
            raft_id: local.raft_id.ok_or_else(|| ApiError::internal("manager without a raft id"))?,
            advertise_addr: local.advertise_addr.clone(),
            raft_dir: self.dir.raft_dir(),
            raft_dek: self.dir.raft_dek().map_err(io("reading the raft store's key"))?,
            timing: self.options.timing,
            snapshots: local.snapshots,
            ca,
            images: self.options.runtime.as_ref().map(|r| r.images.clone()),
        };
        let mgr = Manager::start(cfg, listener, server_tls, self.rpc.clone()).await?;
        *self.manager.lock().await = Some(mgr.clone());
        Ok(mgr)
    }

    /// Starts a manager with an empty store and asks the leader to add it to Raft.
    async fn become_manager(&self, listener: TcpListener) -> Result<(), ApiError> {
        let raft_id = rand::rng().random::<u64>() >> 1;
        {
            let mut l = self.local_mut();
            l.raft_id = Some(raft_id);
            self.dir.save_state(&l).map_err(io("saving state"))?;
        }
        self.dir.wipe_raft().map_err(io("removing old raft store"))?;
        let mgr = self.start_manager(listener).await?;
        let req = JoinRaftRequest { raft_id, addr: self.local().advertise_addr };
        let mut last = ApiError::no_leader();
        for _ in 0..3 {
            for addr in self.local().managers {
                if addr == req.addr {
                    continue;
                }
                match self
                    .rpc
                    .call::<_, ControlResponse>(&addr, path::RAFT_JOIN, &req, RPC_TIMEOUT * 12, None)
                    .await
                {
                    Ok(_) => {
                        mgr.wait_for_state(Duration::from_secs(60)).await?;
                        return Ok(());
                    }
                    Err(e) => last = e.into_api(&format!("joining raft via {addr}")),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        mgr.shutdown().await;
        *self.manager.lock().await = None;
        Err(last)
    }

    async fn stop_manager(&self) {
        if let Some(m) = self.manager.lock().await.take() {
            m.shutdown().await;
        }
    }

    /// Proposes through the local manager (which must be the leader).
    async fn propose_local(&self, cmd: Command) -> Result<(), ApiError> {
        let mgr = self.manager().await.ok_or_else(|| ApiError::internal("no local manager"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match mgr.propose_as_leader(cmd.clone()).await {
                Err(e) if e.message == crate::error::NO_LEADER && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                r => return r,
            }
        }
    }

    /// A control-API request from this node's CLI: served by the leader,
    /// through the local manager; workers cannot make them.
    pub async fn control(&self, req: ControlRequest) -> Result<ControlResponse, ApiError> {
        let Some(mgr) = self.manager().await else {
            return Err(ApiError::unavailable(NOT_A_MANAGER));
        };
        mgr.handle_control(Caller::node(self.identity()), req).await
    }

    /// `swarm leave`.
    pub async fn leave(&self, force: bool) -> Result<(), ApiError> {
        if !force && self.local().role == Role::Manager {
            let mut msg = String::from(
                "You are attempting to leave the swarm on a node that is participating as a manager. ",
            );
            if let Ok(ControlResponse::Nodes(nodes)) = self.control(ControlRequest::ListNodes).await {
                let managers = nodes.iter().filter(|n| n.node.manager.is_some());
                let (mut reachable, mut unreachable) = (0usize, 0usize);
                for m in managers {
                    if m.reachability == Reachability::Reachable {
                        reachable += 1;
                    } else {
                        unreachable += 1;
                    }
                }
                if reachable.saturating_sub(2) <= unreachable && reachable >= 1 {
                    if reachable == 1 && unreachable == 0 {
                        msg.push_str("Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ");
                        return Err(ApiError::unavailable(msg));
                    }
                    msg.push_str(&format!(
                        "Removing this node leaves {} managers out of {}. Without a Raft quorum your swarm will be inaccessible. ",
                        reachable - 1,
                        reachable + unreachable
                    ));
                }
            } else {
                msg.push_str("Doing so may lose the consensus of your cluster. ");
            }
            msg.push_str("The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message.");
            return Err(ApiError::unavailable(msg));
        }
        // The agent loop first: it would start the overlay again.
        self.stop_agent().await;
        if let Some(w) = &self.worker {
            w.remove_all().await;
        }
        self.overlay.stop(true).await;
        self.stop().await;
        self.dir.wipe().map_err(io("removing swarm state"))
    }

    /// Stops the agent and the manager (daemon shutdown, leave). The
    /// datapath stays, pinned, for the next start.
    pub async fn stop(&self) {
        self.stop_agent().await;
        self.overlay.stop(false).await;
        self.stop_manager().await;
    }

    /// Stops the agent loop and waits until it is gone (it may be midway
    /// through starting the overlay or a manager). Never called from it.
    async fn stop_agent(&self) {
        let agent = self.agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(a) = agent {
            a.abort();
            let _ = a.await;
        }
    }

    /// Starts the overlay datapath and gossip; a failure is logged and
    /// retried from the agent loop (the control plane works without it).
    async fn start_overlay(&self, keys: Vec<GossipKey>) {
        let l = self.local();
        let Ok(ip) = host(&l.advertise_addr).parse::<std::net::Ipv4Addr>() else {
            tracing::warn!("overlay: advertise address {} is not IPv4", l.advertise_addr);
            return;
        };
        let port = u16::try_from(l.data_path_port).unwrap_or(swarm_common::VXLAN_UDP_PORT);
        let started = self.overlay.start(&l.node_id, ip, port, &self.options, keys).await;
        match started {
            Ok(()) => self.overlay.seeds(&l.managers),
            Err(e) => tracing::warn!("overlay not started: {e}"),
        }
    }

    /// Attaches a network namespace on this host to an attachable network.
    pub async fn connect(
        &self,
        network: &str,
        netns: &std::path::Path,
        ip: Option<String>,
    ) -> Result<crate::agent::overlay::LocalEndpoint, ApiError> {
        if self.overlay.find(network, netns).is_some() {
            return Err(ApiError::conflict(format!(
                "{} is already attached to network {network}",
                netns.display()
            )));
        }
        if !netns.exists() {
            return Err(ApiError::invalid(format!("no such network namespace: {}", netns.display())));
        }
        let req = AttachRequest { network: network.to_owned(), ip, name: netns.display().to_string() };
        let alloc: AttachResponse = self.call_managers(path::ATTACH, &req).await?;
        match self.overlay.connect(&alloc, netns).await {
            Ok(ep) => Ok(ep),
            Err(e) => {
                let _ = self
                    .call_managers::<_, ControlResponse>(
                        path::DETACH,
                        &DetachRequest { endpoint_id: alloc.endpoint.id },
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Detaches a network namespace from a network.
    pub async fn disconnect(&self, network: &str, netns: &std::path::Path) -> Result<(), ApiError> {
        let ep = self.overlay.find(network, netns).ok_or_else(|| {
            ApiError::not_found(format!(
                "{} is not attached to network {network} on this node",
                netns.display()
            ))
        })?;
        self.overlay.disconnect(&ep).await?;
        self.call_managers::<_, ControlResponse>(
            path::DETACH,
            &DetachRequest { endpoint_id: ep.endpoint_id },
        )
        .await?;
        Ok(())
    }

    pub fn overlay(&self) -> &crate::agent::overlay::Overlay {
        &self.overlay
    }

    pub fn worker(&self) -> Option<&Arc<crate::agent::worker::Worker>> {
        self.worker.as_ref()
    }

    /// Calls a leader-served RPC through the managers this node knows.
    async fn call_managers<Q: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        p: &str,
        req: &Q,
    ) -> Result<R, ApiError> {
        let mut last = ApiError::no_leader();
        for addr in self.local().managers {
            match self.rpc.call(&addr, p, req, RPC_TIMEOUT * 2, None).await {
                Ok(r) => return Ok(r),
                Err(rpc::RpcError::Api(e)) => return Err(e),
                Err(e) => last = e.into_api(&addr),
            }
        }
        Err(last)
    }

    // ---- the agent ------------------------------------------------------------

    fn start_agent(self: &Arc<Self>) {
        let me = self.clone();
        let worker = self.worker.clone();
        let link: Arc<dyn crate::agent::session::Dispatcher> = Arc::new(NodeLink(Arc::downgrade(self)));
        let h = tokio::spawn(async move {
            match worker {
                Some(w) => {
                    tokio::select! {
                        () = me.run_agent() => {}
                        () = crate::agent::session::assignments(link.clone(), w.clone()) => {}
                        () = crate::agent::session::statuses(link.clone(), w.clone()) => {}
                        () = crate::agent::session::names(link.clone(), w.clone()) => {}
                        () = crate::agent::session::logs(link, w) => {}
                    }
                }
                None => me.run_agent().await,
            }
        });
        if let Some(old) = self.agent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(h) {
            old.abort();
        }
    }

    /// Heartbeats to the leader (through any manager), and acts on what it
    /// says: the manager list, and a role this node's certificate lacks.
    async fn run_agent(self: Arc<Self>) {
        let mut period = Duration::from_secs(1);
        let mut renew_at = self.renewal_time();
        loop {
            let started = tokio::time::Instant::now();
            match self.heartbeat(period).await {
                Ok(resp) => {
                    period = Duration::from_millis(resp.period_ms.max(10));
                    self.update_managers(resp.managers.clone());
                    if self.overlay.is_running() {
                        self.overlay.set_keys(&resp.gossip_keys);
                        self.overlay.seeds(&resp.managers);
                        self.overlay.set_down(&resp.down_nodes);
                    } else {
                        self.start_overlay(resp.gossip_keys.clone()).await;
                    }
                    if resp.role != self.local().role || SystemTime::now() >= renew_at {
                        if let Err(e) = self.renew(resp.role).await {
                            tracing::warn!("renewing the node certificate: {e}");
                        } else {
                            renew_at = self.renewal_time();
                        }
                    }
                    if let Err(e) = self.check_raft_seat(&resp).await {
                        tracing::warn!("joining raft: {e}");
                    }
                }
                Err(e) => tracing::debug!("heartbeat: {e}"),
            }
            tokio::time::sleep_until(started + period).await;
        }
    }

    /// A manager whose seat in Raft is gone (demoted and promoted again
    /// before it noticed, or removed by `--force-new-cluster`) takes a new one.
    async fn check_raft_seat(&self, resp: &HeartbeatResponse) -> Result<(), ApiError> {
        let local = self.local();
        if resp.role != Role::Manager || local.role != Role::Manager {
            return Ok(());
        }
        let running = self.manager().await.is_some();
        if running && resp.raft_id.is_some() && resp.raft_id == local.raft_id {
            return Ok(());
        }
        tracing::info!("this manager has no seat in raft; joining");
        self.stop_manager().await;
        let listener = bind(&local.listen_addr).await?;
        self.become_manager(listener).await
    }

    async fn heartbeat(&self, period: Duration) -> Result<HeartbeatResponse, ApiError> {
        let req = HeartbeatRequest { description: describe(), addr: host(&self.local().advertise_addr) };
        let mut last = ApiError::no_leader();
        for addr in self.local().managers {
            match self
                .rpc
                .call(&addr, path::HEARTBEAT, &req, period.max(Duration::from_millis(200)), None)
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => last = e.into_api(&addr),
            }
        }
        Err(last)
    }

    fn update_managers(&self, managers: Vec<String>) {
        if managers.is_empty() {
            return;
        }
        let mut l = self.local_mut();
        if l.managers != managers {
            l.managers = managers;
            if let Err(e) = self.dir.save_state(&l) {
                tracing::warn!("saving manager list: {e}");
            }
        }
    }

    /// When to renew this node's certificate.
    fn renewal_time(&self) -> SystemTime {
        let pem = self.certs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).node_cert.clone();
        let Ok(info) = CertInfo::from_pem(&pem) else { return SystemTime::now() };
        renewal_point(info.not_before, info.not_after, rand::rng().random_range(0.5..0.8))
    }

    /// Gets a new certificate (same key pair is not reused: a new CSR) with
    /// the role the managers assigned, and starts or stops the manager.
    async fn renew(&self, role: Role) -> Result<(), ApiError> {
        let (key, csr) = ca::new_key_and_csr().map_err(ca_err)?;
        let req = IssueCertRequest {
            token: None,
            csr_pem: csr,
            availability: Availability::Active,
            description: describe(),
            advertise_addr: self.local().advertise_addr,
        };
        let mut last = ApiError::no_leader();
        let mut issued = None;
        for addr in self.local().managers {
            match self
                .rpc
                .call::<_, IssueCertResponse>(&addr, path::ISSUE_CERT, &req, RPC_TIMEOUT, None)
                .await
            {
                Ok(r) => {
                    issued = Some(r);
                    break;
                }
                Err(e) => last = e.into_api(&addr),
            }
        }
        let issued = issued.ok_or(last)?;
        let certs = {
            let mut c = self.certs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            c.node_cert = issued.cert_pem;
            c.node_key = key;
            c.ca_key = issued.ca_key_pem;
            c.clone()
        };
        self.dir.save_certs(&certs).map_err(io("saving certificates"))?;
        self.resolver.set(&certs.node_cert, &certs.node_key).map_err(tls_err)?;
        // Connections made with the old certificate keep its role: start over.
        self.rpc.reset_connections();
        let old_role = {
            let mut l = self.local_mut();
            let old = l.role;
            l.role = issued.role;
            if issued.role == Role::Worker {
                l.raft_id = None;
            }
            self.dir.save_state(&l).map_err(io("saving state"))?;
            old
        };
        tracing::info!(role = issued.role.as_str(), "node certificate renewed");
        debug_assert_eq!(issued.role, role);
        if old_role == Role::Manager && issued.role == Role::Worker {
            self.stop_manager().await;
            self.dir.wipe_raft().map_err(io("removing the raft store"))?;
        }
        // A new manager takes its Raft seat in `check_raft_seat`.
        Ok(())
    }
}

/// A point `fraction` of the way through a certificate's life (swarmkit
/// renews at a random point between 50% and 80%).
/// The node as the worker and the session see it: endpoints through the
/// overlay, dispatcher calls through the managers.
struct NodeLink(std::sync::Weak<SwarmNode>);

impl NodeLink {
    fn node(&self) -> Result<Arc<SwarmNode>, ApiError> {
        self.0.upgrade().ok_or_else(|| ApiError::unavailable("the node is shutting down"))
    }
}

impl crate::agent::worker::NodeServices for NodeLink {
    fn balance(&self, lb: &crate::manager::names::Balancers) {
        use std::sync::atomic::Ordering;
        let Ok(node) = self.node() else { return };
        node.overlay.set_balancers(lb);
        // Published ports: this node's own processes reach them through
        // the node's endpoint on ingress, made once.
        let Some(ingress) = lb.ingress.clone() else { return };
        if (lb.published.is_empty() && lb.host_ports.is_empty())
            || !node.overlay.is_running()
            || node.overlay.has_host_endpoint()
            || node.overlay.host_endpoint_pending.swap(true, Ordering::SeqCst)
        {
            return;
        }
        tokio::spawn(async move {
            let req = AttachRequest {
                network: ingress.id.clone(),
                ip: None,
                name: crate::rpc::messages::INGRESS_SBOX.to_owned(),
            };
            let made = match node.call_managers::<_, AttachResponse>(path::ATTACH, &req).await {
                Ok(alloc) => node.overlay.connect_host(&alloc).await,
                Err(e) => Err(e),
            };
            if let Err(e) = made {
                tracing::warn!("the node's endpoint on ingress: {e}");
            }
            node.overlay.host_endpoint_pending.store(false, Ordering::SeqCst);
        });
    }

    fn attach<'a>(
        &'a self,
        a: &'a AttachResponse,
        netns: &'a std::path::Path,
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let node = self.node().map_err(|e| e.message)?;
            if node.overlay.endpoints().iter().any(|e| e.endpoint_id == a.endpoint.id) {
                return Ok(());
            }
            node.overlay.connect(a, netns).await.map(|_| ()).map_err(|e| e.message)
        })
    }

    fn fetch_image<'a>(&'a self, reference: &'a str) -> futures::future::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let node = self.node().map_err(|e| e.message)?;
            let Some(rt) = node.options.runtime.clone() else { return Ok(false) };
            let mut last = None;
            for addr in node.local().managers {
                let source = ManagerImages { rpc: node.rpc.clone(), addr: addr.clone() };
                match crate::agent::distribution::fetch(&rt.images, &source, reference).await {
                    Ok(true) => {
                        tracing::info!(image = reference, manager = %addr, "image fetched from a manager");
                        return Ok(true);
                    }
                    Ok(false) => {}
                    Err(e) => last = Some(e.message),
                }
            }
            let domain = crate::util::reference::parse(reference).map(|r| r.domain).unwrap_or_default();
            if crate::agent::registry::allowed(&domain, &rt.insecure_registries) {
                return match crate::agent::registry::pull(&rt.images, reference, &rt.insecure_registries)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind == crate::error::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e.message),
                };
            }
            match last {
                Some(e) => Err(e),
                None => Ok(false),
            }
        })
    }

    fn detach<'a>(&'a self, endpoint_id: &'a str) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let node = self.node().map_err(|e| e.message)?;
            match node.overlay.endpoints().into_iter().find(|e| e.endpoint_id == endpoint_id) {
                Some(ep) => node.overlay.disconnect(&ep).await.map_err(|e| e.message),
                None => Ok(()),
            }
        })
    }
}

impl crate::agent::session::Dispatcher for NodeLink {
    fn call(
        &self,
        req: crate::rpc::messages::SessionRequest,
    ) -> futures::future::BoxFuture<'_, Result<crate::rpc::messages::SessionResponse, ApiError>> {
        Box::pin(async move { self.node()?.call_managers(path::SESSION, &req).await })
    }

    fn names(
        &self,
        req: crate::rpc::messages::NamesRequest,
    ) -> futures::future::BoxFuture<'_, Result<crate::rpc::messages::NamesResponse, ApiError>> {
        Box::pin(async move { self.node()?.call_managers(path::NAMES, &req).await })
    }

    fn log_work(
        &self,
        req: crate::manager::logs::WorkRequest,
    ) -> futures::future::BoxFuture<'_, Result<crate::manager::logs::WorkResponse, ApiError>> {
        Box::pin(async move { self.node()?.call_managers(path::LOG_WORK, &req).await })
    }

    fn log_publish(
        &self,
        req: crate::manager::logs::PublishRequest,
    ) -> futures::future::BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async move {
            self.node()?
                .call_managers::<_, crate::manager::logs::WorkResponse>(path::LOG_PUBLISH, &req)
                .await
                .map(|_| ())
        })
    }
}

/// A manager as a source of images.
struct ManagerImages {
    rpc: RpcClient,
    addr: String,
}

impl crate::agent::distribution::Source for ManagerImages {
    fn manifest<'a>(
        &'a self,
        reference: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<crate::agent::distribution::ImageManifest>, ApiError>>
    {
        Box::pin(async move {
            let req = crate::agent::distribution::ManifestRequest { reference: reference.to_owned() };
            match self.rpc.call(&self.addr, path::IMAGE_MANIFEST, &req, RPC_TIMEOUT, None).await {
                Ok(m) => Ok(Some(m)),
                Err(rpc::RpcError::Api(e)) if e.kind == crate::error::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into_api(&self.addr)),
            }
        })
    }

    fn layer(
        &self,
        req: crate::agent::distribution::LayerRequest,
    ) -> futures::future::BoxFuture<'_, Result<bytes::Bytes, ApiError>> {
        Box::pin(async move {
            self.rpc
                .call_raw(&self.addr, path::IMAGE_LAYER, &req, RPC_TIMEOUT * 6)
                .await
                .map_err(|e| e.into_api(&self.addr))
        })
    }
}

fn renewal_point(not_before: i64, not_after: i64, fraction: f64) -> SystemTime {
    let life = (not_after - not_before).max(0) as f64;
    let at = not_before as f64 + life * fraction;
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at.max(0.0))
}

fn host(addr: &str) -> String {
    addr.parse::<std::net::SocketAddr>().map_or_else(
        |_| addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned(),
        |s| match s.ip() {
            IpAddr::V4(v) => v.to_string(),
            IpAddr::V6(v) => v.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_renewed_between_half_and_four_fifths_of_their_life() {
        let (nb, na) = (1_000_000, 1_000_000 + 100 * 3600);
        let at = |f| renewal_point(nb, na, f).duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(at(0.5), 1_000_000 + 50 * 3600);
        assert_eq!(at(0.8), 1_000_000 + 80 * 3600);
    }

    #[test]
    fn pools_and_ports_follow_moby() {
        assert_eq!(validate_pool(&[], 0).unwrap(), (vec!["10.0.0.0/8".to_owned()], 24));
        assert_eq!(validate_pool(&[], 33).unwrap_err().message, "subnet size is out of range: 33");
        // What was once accepted, with a gateway outside the subnet or wrapped around.
        for (pool, size) in
            [("255.255.255.255/32", 32), ("0.0.0.0/0", 32), ("255.255.255.254/31", 31), ("10.0.0.0/8", 30)]
        {
            assert_eq!(
                validate_pool(&[pool.into()], size).unwrap_err().message,
                format!("subnet size is out of range: {size}")
            );
        }
        assert_eq!(
            validate_pool(&["255.255.255.248/29".into()], 29).unwrap(),
            (vec!["255.255.255.248/29".to_owned()], 29)
        );
        assert_eq!(
            first_subnet("255.255.255.248/29", 29),
            ("255.255.255.248/29".into(), "255.255.255.249".into())
        );
        assert_eq!(
            validate_pool(&["10.0.0.0".into()], 24).unwrap_err().message,
            "invalid base pool 10.0.0.0: invalid CIDR address: 10.0.0.0"
        );
        assert_eq!(validate_pool(&[" 10.9.0.0/16 ".into()], 24).unwrap().0, vec!["10.9.0.0/16".to_owned()]);
        assert_eq!(
            validate_pool(&["10.20.0.0/16".into()], 12).unwrap_err().message,
            "invalid CIDR: \"10.20.0.0/16\". Subnet size is too small for pool: 12"
        );
        assert_eq!(first_subnet("10.0.0.0/8", 24), ("10.0.0.0/24".into(), "10.0.0.1".into()));
        assert_eq!(first_subnet("10.20.0.0/16", 26), ("10.20.0.0/26".into(), "10.20.0.1".into()));
        assert_eq!(validate_data_path_port(0).unwrap(), 4789);
        assert_eq!(validate_data_path_port(7789).unwrap(), 7789);
        assert_eq!(
            validate_data_path_port(80).unwrap_err().message,
            "Datapath port number is not in valid range (1024-49151) : 80"
        );
    }
}
