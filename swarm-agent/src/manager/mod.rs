//! A manager: a Raft member holding the store, serving the node-to-node RPC
//! on 2377, and — while it is the leader — running the CA signer, the
//! dispatcher (node liveness) and the role reconciler. Followers forward
//! leader-only requests to the leader, as swarmkit's raft proxy does.

pub mod allocator;
pub mod controlapi;
pub mod dispatcher;
pub mod logs;
pub mod names;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
mod secrets;
mod services;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Json, Router, extract::State, routing::post};
use openraft::{Instant as _, ServerState, async_runtime::WatchReceiver as _};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    ca::{
        Role, RootCa,
        token::{JoinToken, tokens_equal},
    },
    error::{ApiError, ErrorKind, INVALID_JOIN_SECRET},
    manager::{
        dispatcher::Liveness,
        raft::{
            Raft, RaftPeer, Timing,
            network::{Addressed, CHUNK_HEADER, ChunkHeader, SnapshotReceiver, SnapshotRequest},
            storage::StateReader,
        },
        store::{
            ipam::{self, Cidr},
            model::{
                Endpoint, MTU_OPTION, ManagerInfo, Meta, Network, Node, NodeSpec, NodeState, NodeStatus,
            },
            state::{ClusterState, Command},
        },
    },
    rpc::{
        self, Caller, Identity, RpcClient,
        messages::{
            AttachRequest, AttachResponse, ControlRequest, ControlResponse, DetachRequest, HeartbeatRequest,
            HeartbeatResponse, IssueCertRequest, IssueCertResponse, JoinRaftRequest, NetworkSpec, NodeView,
            Reachability, RootCaResponse, path,
        },
    },
    util::ids,
};

/// How long a leader works on one manager's join: catching up (a
/// snapshot of any size) plus the membership changes.
const JOIN_BUDGET: Duration = Duration::from_secs(50);

/// How a manager is set up.
#[derive(Clone)]
pub struct ManagerConfig {
    pub node_id: String,
    pub cluster_id: String,
    pub raft_id: u64,
    /// `ip:port` other managers reach this one at.
    pub advertise_addr: String,
    pub raft_dir: PathBuf,
    /// The key sealing the Raft store's files ([`raft::seal`]).
    pub raft_dek: [u8; raft::seal::DEK_LEN],
    pub timing: Timing,
    /// Snapshot settings to use while the store does not have the cluster yet.
    pub snapshots: raft::SnapshotSettings,
    pub ca: RootCa,
    /// This manager's image store, served to nodes that lack an image.
    pub images: Option<Arc<crate::agent::images::ImageStore>>,
}

pub struct Manager {
    cfg: ManagerConfig,
    raft: Raft,
    state: StateReader,
    rpc: RpcClient,
    liveness: Mutex<Liveness>,
    /// Held across "read what is free, propose it" for subnets, VNIs and
    /// addresses, so concurrent requests on this leader never pick the same one.
    allocation: tokio::sync::Mutex<()>,
    /// Subnets and VNIs picked for networks being proposed.
    reserved: Mutex<Reserved>,
    /// A snapshot being received from the leader.
    incoming_snapshot: Mutex<SnapshotReceiver>,
    /// When a leader's AppendEntries (or heartbeat) last reached this
    /// manager: a follower that has not heard from its leader for two
    /// election timeouts does not claim to know one.
    leader_contact: Mutex<Option<Instant>>,
    /// Held across a membership change (join, demotion).
    membership_change: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Task status updates from node sessions, for the leader's batcher.
    status_tx: tokio::sync::mpsc::Sender<services::StatusBatch>,
    status_rx: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<services::StatusBatch>>,
    /// `service logs` subscriptions (the leader's).
    logs: logs::Broker,
}

/// What the leader has picked for networks not yet committed.
#[derive(Default)]
struct Reserved {
    subnets: Vec<Cidr>,
    vnis: BTreeSet<u32>,
}

/// One network's picks, released when its proposal is over.
struct Reservation<'a> {
    reserved: &'a Mutex<Reserved>,
    subnet: Cidr,
    vni: u32,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut r = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = r.subnets.iter().position(|s| *s == self.subnet) {
            r.subnets.swap_remove(i);
        }
        r.vnis.remove(&self.vni);
    }
}

/// This manager's view of the leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leadership {
    Leading,
    /// The leader's address.
    Following(String),
    None,
}

/// Now, as the store records times.
pub fn now_nanos() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn internal(what: &str) -> impl FnOnce(String) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

impl Manager {
    /// Opens the Raft store under `cfg.raft_dir`, starts Raft and serves RPC
    /// on `listener`. A brand-new store needs [`Manager::initialize`] (first
    /// manager) or a leader adding it (joining manager).
    pub async fn start(
        cfg: ManagerConfig,
        listener: TcpListener,
        server_tls: Arc<rustls::ServerConfig>,
        rpc: RpcClient,
    ) -> Result<Arc<Manager>, ApiError> {
        std::fs::create_dir_all(&cfg.raft_dir)
            .map_err(|e| internal("creating raft directory")(e.to_string()))?;
        let dek = raft::seal::Dek::new(&cfg.raft_dek)
            .map_err(|e| internal("the raft store's key")(e.to_string()))?;
        let (log, sm) = raft::storage::open(&cfg.raft_dir.join("raft.redb"), dek)
            .map_err(|e| internal("opening the raft store")(e.to_string()))?;
        let state = sm.reader();
        let snapshots =
            state.read(|s| s.cluster.as_ref().map(|c| raft::SnapshotSettings::from_spec(&c.spec)));
        let raft = Raft::new(
            cfg.raft_id,
            raft::config(cfg.timing, snapshots.unwrap_or(cfg.snapshots)),
            raft::network::Network::new(rpc.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| internal("starting raft")(e.to_string()))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (status_tx, status_rx) = services::status_channel();
        let mgr = Arc::new(Manager {
            cfg,
            raft,
            state,
            rpc,
            liveness: Mutex::new(Liveness::default()),
            allocation: tokio::sync::Mutex::new(()),
            reserved: Mutex::new(Reserved::default()),
            incoming_snapshot: Mutex::new(SnapshotReceiver::default()),
            leader_contact: Mutex::new(None),
            membership_change: tokio::sync::Mutex::new(()),
            status_tx,
            status_rx: tokio::sync::Mutex::new(status_rx),
            logs: logs::Broker::default(),
            shutdown,
            tasks: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(rpc::serve(listener, server_tls, mgr.clone().router(), shutdown_rx));
        let supervisor = tokio::spawn(mgr.clone().supervise_leadership());
        mgr.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend([server, supervisor]);
        Ok(mgr)
    }

    /// Makes this the only member of a new Raft group (`swarm init`, or
    /// `--force-new-cluster` on an emptied store).
    pub async fn initialize(&self) -> Result<(), ApiError> {
        let peer = RaftPeer { addr: self.cfg.advertise_addr.clone(), node_id: self.cfg.node_id.clone() };
        self.raft
            .initialize(BTreeMap::from([(self.cfg.raft_id, peer)]))
            .await
            .map_err(|e| internal("initializing raft")(e.to_string()))
    }

    /// Waits until some manager (this one or another) is the leader.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<(), ApiError> {
        let mut m = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if m.borrow_watched().current_leader.is_some() {
                    return;
                }
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| ApiError::no_leader())
    }

    /// Waits until the store has the cluster (a joining manager catching up).
    pub async fn wait_for_state(&self, timeout: Duration) -> Result<(), ApiError> {
        let mut sub = self.state.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.state.read(|s| s.cluster.is_some()) {
                    return;
                }
                if sub.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| ApiError::unavailable("timed out waiting for the swarm state to replicate"))
    }

    pub fn state(&self) -> &StateReader {
        &self.state
    }

    pub fn raft_id(&self) -> u64 {
        self.cfg.raft_id
    }

    /// Stops serving and leaves Raft running no more.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let _ = self.raft.shutdown().await;
        let tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for t in &tasks {
            t.abort();
        }
        // Wait until they are gone: the server task owns the listener, and a
        // restart (`--force-new-cluster`) binds the same port right after.
        for t in tasks {
            let _ = t.await;
        }
    }

    /// The 2377 routes, each with its body limit ([`rpc::limits`]).
    fn router(self: Arc<Self>) -> Router {
        use axum::extract::DefaultBodyLimit;
        Router::new()
            .route(path::ROOT_CA, post(h_root_ca))
            .route(path::ISSUE_CERT, post(h_issue_cert))
            .route(path::HEARTBEAT, post(h_heartbeat))
            .route(
                path::RAFT_APPEND,
                post(h_raft_append).layer(DefaultBodyLimit::max(rpc::limits::RAFT_APPEND)),
            )
            .route(path::RAFT_VOTE, post(h_raft_vote))
            .route(path::RAFT_PRE_VOTE, post(h_raft_pre_vote))
            .route(
                path::RAFT_SNAPSHOT_CHUNK,
                post(h_raft_snapshot_chunk).layer(DefaultBodyLimit::max(rpc::limits::SNAPSHOT_CHUNK)),
            )
            .route(path::RAFT_SNAPSHOT, post(h_raft_snapshot))
            .route(path::RAFT_JOIN, post(h_raft_join))
            .route(path::CONTROL, post(h_control))
            .route(path::ATTACH, post(h_attach))
            .route(path::DETACH, post(h_detach))
            .route(path::SESSION, post(services::h_session))
            .route(path::NAMES, post(services::h_names))
            .route(path::IMAGE_MANIFEST, post(services::h_image_manifest))
            .route(path::LOG_WORK, post(logs::h_log_work))
            .route(path::LOG_PUBLISH, post(logs::h_log_publish))
            .route(path::IMAGE_LAYER, post(services::h_image_layer))
            .layer(DefaultBodyLimit::max(rpc::limits::BODY_LIMIT))
            .with_state(self)
    }

    // ---- leadership -------------------------------------------------------

    /// Proposes a command on this manager, which must be the leader.
    pub async fn propose_as_leader(&self, cmd: Command) -> Result<(), ApiError> {
        self.propose(cmd).await
    }

    /// A control-API request from this node on behalf of `caller`, served
    /// here if this is the leader, else by the leader.
    pub async fn handle_control(
        self: &Arc<Self>,
        caller: Caller,
        req: ControlRequest,
    ) -> Result<ControlResponse, ApiError> {
        let c = caller.clone();
        let me = self.clone();
        self.on_leader(
            &caller,
            path::CONTROL,
            !req.is_read(),
            req,
            |req| async move { me.control(c, req).await },
        )
        .await
    }

    /// Raft leader with a quorum heard from within two election timeouts.
    pub fn is_leader(&self) -> bool {
        self.leadership() == Leadership::Leading
    }

    /// Who leads, as far as this manager can vouch for it. Raft keeps a cut
    /// off leader in the Leader state, and a cut off follower keeps its
    /// leader, until they hear of a newer term; both would answer with a
    /// stale view. Like swarmkit's check-quorum, a leader without a recent
    /// quorum, and a follower that has not heard from its leader for two
    /// election timeouts, report that there is no leader.
    fn leadership(&self) -> Leadership {
        let m = self.raft.metrics().borrow_watched().clone();
        let window = self.quorum_window();
        if m.state == ServerState::Leader {
            let voters = m.membership_config.membership().voter_ids().count();
            let fresh = m.last_quorum_acked.as_ref().is_some_and(|t| t.elapsed() < window);
            return if voters <= 1 || fresh { Leadership::Leading } else { Leadership::None };
        }
        let contact = *self.leader_contact.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match (m.current_leader, contact) {
            (Some(l), Some(t)) if t.elapsed() < window => m
                .membership_config
                .membership()
                .get_node(&l)
                .map_or(Leadership::None, |p| Leadership::Following(p.addr.clone())),
            _ => Leadership::None,
        }
    }

    /// Where the leader is: `Ok(None)` if it is this manager.
    fn leader_addr(&self) -> Result<Option<String>, ApiError> {
        match self.leadership() {
            Leadership::Leading => Ok(None),
            Leadership::Following(addr) => Ok(Some(addr)),
            Leadership::None => Err(ApiError::no_leader()),
        }
    }

    /// Writes need a leader that has heard from a quorum recently; otherwise
    /// they would hang, so they fail fast instead.
    fn leader_with_quorum(&self) -> Result<(), ApiError> {
        if self.is_leader() { Ok(()) } else { Err(ApiError::no_leader()) }
    }

    fn quorum_window(&self) -> Duration {
        self.cfg.timing.election * 2
    }

    fn write_timeout(&self) -> Duration {
        (self.cfg.timing.election * 4).clamp(Duration::from_secs(2), Duration::from_secs(20))
    }

    /// Runs `local` here if this is the leader, else forwards the request to
    /// the leader on behalf of `caller`. `write`: whether the request changes
    /// the state (a forwarded write that got no answer may have happened).
    async fn on_leader<Q, R, F, Fut>(
        &self,
        caller: &Caller,
        path: &str,
        write: bool,
        req: Q,
        local: F,
    ) -> Result<R, ApiError>
    where
        Q: serde::Serialize,
        R: serde::de::DeserializeOwned,
        F: FnOnce(Q) -> Fut,
        Fut: std::future::Future<Output = Result<R, ApiError>>,
    {
        match self.leader_addr()? {
            None => local(req).await,
            Some(addr) => {
                if caller.forwarded_by.is_some() {
                    // Already forwarded once: the leader moved. Let the caller retry.
                    return Err(ApiError::no_leader());
                }
                self.rpc.call(&addr, path, &req, self.write_timeout(), Some(&caller.identity)).await.map_err(
                    |e| match e {
                        rpc::RpcError::Api(a) => a,
                        rpc::RpcError::TooLarge(t) => ApiError::invalid(t),
                        rpc::RpcError::Transport(_) => ApiError::no_leader(),
                        // Sent, never answered: a write may have gone through.
                        rpc::RpcError::Lost(_) | rpc::RpcError::NotAnswered(_) if write => {
                            ApiError::unknown_outcome()
                        }
                        rpc::RpcError::Lost(_) | rpc::RpcError::NotAnswered(_) => ApiError::no_leader(),
                    },
                )
            }
        }
    }

    /// Proposes a change; returns once it is committed and applied.
    ///
    /// Fails with the no-leader error when nothing was proposed, and with
    /// [`ApiError::unknown_outcome`] when the entry was handed to Raft but
    /// leadership was lost before it was known to be committed.
    async fn propose(&self, cmd: Command) -> Result<(), ApiError> {
        use openraft::errors::{ClientWriteError, RaftError};
        crate::manager::store::limits::check_command_size(&cmd)?;
        self.state.read(|s| s.check(&cmd))?;
        self.leader_with_quorum()?;
        match tokio::time::timeout(self.write_timeout(), self.raft.client_write(cmd)).await {
            Ok(Ok(resp)) => resp.data,
            // Refused before it was appended: nothing happened.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => Err(ApiError::no_leader()),
            Ok(Err(e)) => {
                tracing::warn!("raft write failed: {e}");
                Err(ApiError::unknown_outcome())
            }
            Err(_) => Err(ApiError::unknown_outcome()),
        }
    }

    /// Snapshots the state now and drops the log before it, so that no
    /// entry before this point is ever replicated again (used after
    /// `--force-new-cluster`, whose first entry holds the whole state).
    pub async fn compact_now(&self) -> Result<(), ApiError> {
        let applied = self.raft.metrics().borrow_watched().last_applied.map_or(0, |l| l.index());
        let fatal = |e: openraft::errors::Fatal<raft::TypeConfig>| ApiError::internal(e.to_string());
        self.raft.trigger().snapshot().await.map_err(fatal)?;
        let mut m = self.raft.metrics();
        tokio::time::timeout(Duration::from_secs(30), async {
            while m.borrow_watched().snapshot.is_none_or(|s| s.index() < applied) {
                if m.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| ApiError::internal("timed out building a snapshot"))?;
        self.raft.trigger().purge_log(applied).await.map_err(fatal)
    }

    /// Watches Raft for leadership changes and runs the leader's loops while
    /// this manager leads.
    async fn supervise_leadership(self: Arc<Self>) {
        /// Aborts the leader's loops when dropped, also when this task is aborted.
        struct Leading(JoinHandle<()>);
        impl Drop for Leading {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut metrics = self.raft.metrics();
        let mut leading: Option<Leading> = None;
        // Losing the quorum changes no metric: look again regularly.
        let mut recheck =
            tokio::time::interval((self.cfg.timing.election / 4).max(Duration::from_millis(20)));
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let raft_leader = metrics.borrow_watched().state == ServerState::Leader;
            match (self.is_leader(), leading.is_some()) {
                (true, false) => {
                    tracing::info!(node = %self.cfg.node_id, "became the leader");
                    leading = Some(Leading(tokio::spawn(self.clone().lead())));
                }
                (false, true) if raft_leader => {
                    tracing::warn!(node = %self.cfg.node_id, "leader without a quorum: stepping down");
                    leading = None;
                }
                (false, true) => {
                    tracing::info!(node = %self.cfg.node_id, "no longer the leader");
                    leading = None;
                }
                _ => {}
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { break },
                _ = recheck.tick() => {}
            }
        }
        drop(leading);
    }

    /// The leader's loops: liveness and role reconciliation, the service
    /// reconcilers and the task status batcher.
    async fn lead(self: Arc<Self>) {
        tokio::select! {
            () = self.clone().lead_nodes() => {}
            () = self.clone().orchestrate() => {}
            () = self.clone().batch_statuses() => {}
        }
    }

    async fn lead_nodes(self: Arc<Self>) {
        let period = self.heartbeat_period();
        let nodes: Vec<String> = self.state.read(|s| s.nodes.keys().cloned().collect());
        self.liveness().start(nodes, Instant::now(), period);
        let mut changes = self.state.subscribe();
        let mut tick = tokio::time::interval(dispatcher::check_interval(period));
        let mut last_check = Instant::now();
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile = tokio::time::interval(Duration::from_secs(1));
        let mut keys = tokio::time::interval(
            (self.cfg.timing.gossip_key_rotation / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(60)),
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = Instant::now();
                    if dispatcher::is_stall(last_check, now, period) {
                        tracing::warn!("the leader's liveness check ran {:?} late; not judging nodes on it", now - last_check);
                        self.liveness().stalled(now, period);
                    }
                    last_check = now;
                    self.expire_nodes().await;
                }
                _ = reconcile.tick() => self.reconcile_roles().await,
                _ = keys.tick() => self.rotate_gossip_keys().await,
                r = changes.changed() => {
                    if r.is_err() { return; }
                    self.reconcile_roles().await;
                }
            }
        }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn heartbeat_period(&self) -> Duration {
        let ns = self.state.read(|s| s.cluster.as_ref().map_or(5_000_000_000, |c| c.spec.heartbeat_period));
        Duration::from_nanos(ns.max(1_000_000))
    }

    async fn expire_nodes(&self) {
        let expired = self.liveness().expired(Instant::now());
        for id in expired {
            let ready =
                self.state.read(|s| s.nodes.get(&id).is_some_and(|n| n.status.state == NodeState::Ready));
            if !ready {
                continue;
            }
            tracing::info!(node = %id, "heartbeat failure: node is down");
            let cmd = Command::SetNodeStatus {
                id: id.clone(),
                state: NodeState::Down,
                message: "heartbeat failure".into(),
                addr: None,
                now: now_nanos(),
            };
            if let Err(e) = self.propose(cmd).await {
                tracing::warn!(node = %id, "marking node down: {e}");
            }
        }
    }

    /// Makes a new gossip key when the newest is older than the rotation
    /// interval; keeps the three newest (Docker's keyring size).
    async fn rotate_gossip_keys(&self) {
        let Some((keys, at)) = self
            .state
            .read(|s| s.cluster.as_ref().map(|c| (c.gossip_keys.clone(), c.gossip_keys_rotated_at)))
        else {
            return;
        };
        let age = Duration::from_nanos(u64::try_from(now_nanos() - at).unwrap_or(0));
        if !keys.is_empty() && age < self.cfg.timing.gossip_key_rotation {
            return;
        }
        let next = keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        let mut new = vec![crate::rpc::messages::GossipKey::generate(next)];
        new.extend(keys.into_iter().take(2));
        if let Err(e) = self.propose(Command::SetGossipKeys { keys: new, now: now_nanos() }).await {
            tracing::warn!("rotating gossip keys: {e}");
        } else {
            tracing::info!(key = next, "gossip key rotated");
        }
    }

    /// Moves each node's role towards the role the user asked for.
    async fn reconcile_roles(&self) {
        let pending: Vec<Node> =
            self.state.read(|s| s.nodes.values().filter(|n| n.spec.role != n.role).cloned().collect());
        for n in pending {
            let result = match n.spec.role {
                // Promotion: the node renews its certificate as a manager, then joins Raft.
                Role::Manager => {
                    self.propose(Command::SetNodeRole {
                        id: n.id.clone(),
                        role: Role::Manager,
                        manager: None,
                        now: now_nanos(),
                    })
                    .await
                }
                Role::Worker => self.demote(&n).await,
            };
            if let Err(e) = result {
                tracing::warn!(node = %n.id, "changing role: {e}");
                return;
            }
        }
    }

    async fn demote(&self, n: &Node) -> Result<(), ApiError> {
        if let Some(m) = &n.manager {
            let voters: BTreeSet<u64> =
                self.raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
            if voters.contains(&m.raft_id) {
                let remaining: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != m.raft_id).collect();
                if remaining.is_empty() {
                    return Err(ApiError::precondition("attempting to demote the last manager of the swarm"));
                }
                tracing::info!(node = %n.id, raft_id = m.raft_id, "removing manager from raft");
                let _changing = self.membership_change.lock().await;
                let deadline = tokio::time::Instant::now() + self.write_timeout();
                self.change_membership_retrying(deadline, || {
                    let r = remaining.clone();
                    async move { self.raft.change_membership(r, false).await.map(|_| ()) }
                })
                .await
                .map_err(|e| e.context("removing raft member"))?;
                if m.raft_id == self.cfg.raft_id {
                    // This leader just left the group; the next leader finishes the demotion.
                    return Ok(());
                }
            }
        }
        self.propose(Command::SetNodeRole {
            id: n.id.clone(),
            role: Role::Worker,
            manager: None,
            now: now_nanos(),
        })
        .await
    }

    // ---- request handling ----------------------------------------------------

    fn cluster_id(&self) -> &str {
        &self.cfg.cluster_id
    }

    /// The caller's node, refusing removed nodes.
    fn caller_node(&self, caller: &Caller, roles: &[Role]) -> Result<Identity, ApiError> {
        let id = caller.require(self.cluster_id(), roles)?.clone();
        self.state.read(|s| {
            if s.removed_nodes.contains(&id.node_id) {
                Err(ApiError::denied(format!(
                    "permission denied: node {} was removed from the swarm",
                    id.node_id
                )))
            } else {
                Ok(())
            }
        })?;
        Ok(id)
    }

    async fn issue_cert(&self, caller: Caller, req: IssueCertRequest) -> Result<IssueCertResponse, ApiError> {
        let cluster = self.state.read(|s| s.cluster().cloned())?;
        let expiry = Duration::from_nanos(cluster.spec.node_cert_expiry);
        let (node_id, role) = if let Some(token) = &req.token {
            JoinToken::parse(token).map_err(|e| ApiError::invalid(e.to_string()))?;
            let role = if tokens_equal(token, &cluster.manager_token) {
                Role::Manager
            } else if tokens_equal(token, &cluster.worker_token) {
                Role::Worker
            } else {
                return Err(ApiError::invalid(INVALID_JOIN_SECRET));
            };
            let node_id = ids::new_id();
            let now = now_nanos();
            let node = Node {
                id: node_id.clone(),
                meta: Meta { version: 0, created_at: now, updated_at: now },
                spec: NodeSpec {
                    name: String::new(),
                    labels: BTreeMap::new(),
                    role,
                    availability: req.availability,
                },
                role,
                description: req.description.clone(),
                status: NodeStatus {
                    state: NodeState::Unknown,
                    message: String::new(),
                    addr: host_of(&req.advertise_addr),
                },
                manager: None,
            };
            self.propose(Command::AddNode { node: Box::new(node) }).await?;
            (node_id, role)
        } else {
            // Renewal: the node proves who it is with its current certificate.
            let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
            let role = self.state.read(|s| s.node(&id.node_id).map(|n| n.role))?;
            (id.node_id.clone(), role)
        };
        let cert_pem = self
            .cfg
            .ca
            .sign_node_csr(&req.csr_pem, &node_id, role, &cluster.id, expiry)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(IssueCertResponse {
            node_id,
            cert_pem,
            ca_pem: cluster.root_ca_cert.clone(),
            ca_key_pem: (role == Role::Manager).then(|| cluster.root_ca_key.clone()),
            role,
            cluster_id: cluster.id.clone(),
            managers: self.state.read(|s| manager_addrs(s, self.leader_raft_id())),
            snapshots: raft::SnapshotSettings::from_spec(&cluster.spec),
            data_path_port: cluster.data_path_port,
        })
    }

    fn leader_raft_id(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    async fn heartbeat(&self, caller: Caller, req: HeartbeatRequest) -> Result<HeartbeatResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        let period = self.heartbeat_period();
        let node = self.state.read(|s| s.node(&id.node_id).cloned())?;
        self.liveness().heartbeat(&id.node_id, Instant::now(), period);
        if node.status.state != NodeState::Ready || node.status.addr != req.addr {
            self.propose(Command::SetNodeStatus {
                id: id.node_id.clone(),
                state: NodeState::Ready,
                message: String::new(),
                addr: Some(req.addr.clone()),
                now: now_nanos(),
            })
            .await?;
        }
        if node.description != req.description {
            self.propose(Command::SetNodeDescription {
                id: id.node_id.clone(),
                description: req.description,
                now: now_nanos(),
            })
            .await?;
        }
        let managers = self.state.read(|s| manager_addrs(s, self.leader_raft_id()));
        Ok(HeartbeatResponse {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            managers,
            role: node.role,
            raft_id: node.manager.as_ref().map(|m| m.raft_id),
            gossip_keys: self
                .state
                .read(|s| s.cluster.as_ref().map(|c| c.gossip_keys.clone()).unwrap_or_default()),
            down_nodes: self.state.read(|s| {
                s.nodes.values().filter(|n| n.status.state == NodeState::Down).map(|n| n.id.clone()).collect()
            }),
        })
    }

    async fn join_raft(&self, caller: Caller, req: JoinRaftRequest) -> Result<ControlResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Manager])?;
        let node = self.state.read(|s| s.node(&id.node_id).cloned())?;
        if node.role != Role::Manager {
            return Err(ApiError::denied(format!("node {} is not a manager", node.id)));
        }
        let info = ManagerInfo { raft_id: req.raft_id, addr: req.addr.clone() };
        if node.manager.as_ref() != Some(&info) {
            self.propose(Command::SetNodeRole {
                id: node.id.clone(),
                role: Role::Manager,
                manager: Some(info),
                now: now_nanos(),
            })
            .await?;
        }
        let peer = RaftPeer { addr: req.addr, node_id: node.id.clone() };
        // One membership change at a time on this leader; one started by an
        // earlier leader is waited for (and retried after) below.
        let _changing = self.membership_change.lock().await;
        let deadline = tokio::time::Instant::now() + JOIN_BUDGET;
        self.change_membership_retrying(deadline, || {
            let (id, peer) = (req.raft_id, peer.clone());
            async move { self.raft.add_learner(id, peer, false).await.map(|_| ()) }
        })
        .await
        .map_err(|e| e.context("adding raft learner"))?;
        self.wait_caught_up(req.raft_id, deadline).await?;
        let membership = self.raft.metrics().borrow_watched().membership_config.membership().clone();
        let (voters, stale) = voters_with_seat(
            membership.nodes().map(|(id, p)| (*id, p.node_id.as_str())),
            membership.voter_ids(),
            &node.id,
            req.raft_id,
        );
        if let Some(voters) = voters {
            self.change_membership_retrying(deadline, || {
                let v = voters.clone();
                async move {
                    self.raft
                        .change_membership(openraft::ChangeMembers::ReplaceAllVoters(v), false)
                        .await
                        .map(|_| ())
                }
            })
            .await
            .map_err(|e| e.context("adding raft voter"))?;
        }
        let learners: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .learner_ids()
            .filter(|id| stale.contains(id))
            .collect();
        if !learners.is_empty() {
            self.change_membership_retrying(deadline, || {
                let l = learners.clone();
                async move {
                    self.raft
                        .change_membership(openraft::ChangeMembers::RemoveNodes(l), false)
                        .await
                        .map(|_| ())
                }
            })
            .await
            .map_err(|e| e.context("removing a stale raft seat"))?;
        }
        tracing::info!(node = %node.id, raft_id = req.raft_id, "manager joined raft");
        Ok(ControlResponse::Done)
    }

    /// Runs a membership change, waiting out one already in progress (a
    /// promotion, a re-seat, a change an earlier leader left uncommitted)
    /// until `deadline`.
    async fn change_membership_retrying<F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        mut change: F,
    ) -> Result<(), ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<
                Output = Result<
                    (),
                    openraft::errors::RaftError<
                        raft::TypeConfig,
                        openraft::errors::ClientWriteError<raft::TypeConfig>,
                    >,
                >,
            >,
    {
        use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(ApiError::unavailable(
                    "timed out waiting for another raft membership change to finish",
                ));
            }
            match tokio::time::timeout(left, change()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                )))) => {
                    tracing::info!("raft membership change waits for the one in progress: {p}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    return Err(ApiError::no_leader());
                }
                Ok(Err(e)) => return Err(ApiError::internal(e.to_string())),
                Err(_) => return Err(ApiError::unknown_outcome()),
            }
        }
    }

    /// Waits until learner `id` has every entry the leader had when asked
    /// (a big state arrives as a snapshot first).
    async fn wait_caught_up(&self, id: u64, deadline: tokio::time::Instant) -> Result<(), ApiError> {
        let target = self.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
        let mut m = self.raft.metrics();
        let caught_up = tokio::time::timeout_at(deadline, async {
            loop {
                let w = m.borrow_watched().clone();
                if w.state != ServerState::Leader {
                    return Err(ApiError::no_leader());
                }
                let matched = w.replication.as_ref().and_then(|r| r.get(&id).copied().flatten());
                if matched.is_some_and(|l| l.index() >= target) {
                    return Ok(());
                }
                if m.changed().await.is_err() {
                    return Err(ApiError::no_leader());
                }
            }
        })
        .await;
        caught_up.unwrap_or_else(|_| {
            Err(ApiError::unavailable("timed out waiting for the new manager to catch up"))
        })
    }

    async fn control(&self, caller: Caller, req: ControlRequest) -> Result<ControlResponse, ApiError> {
        self.caller_node(&caller, &[Role::Manager])?;
        match req {
            ControlRequest::GetSwarm => {
                Ok(ControlResponse::Swarm(Box::new(self.state.read(|s| s.cluster().cloned())?)))
            }
            // Read in place: a copy of the whole state would cost as much
            // as the state is big.
            ControlRequest::ListNodes => Ok(ControlResponse::Nodes(
                self.state.read(|s| s.nodes.values().map(|n| self.view(n)).collect()),
            )),
            ControlRequest::GetNode { id } => {
                let view = self.state.read(|s| s.resolve_node(&id).map(|n| self.view(n)))?;
                Ok(ControlResponse::Node(Box::new(view)))
            }
            ControlRequest::ListNetworks => {
                Ok(ControlResponse::Networks(self.state.read(|s| s.networks.values().cloned().collect())))
            }
            ControlRequest::GetNetwork { id } => {
                Ok(ControlResponse::Network(Box::new(self.state.read(|s| s.resolve_network(&id).cloned())?)))
            }
            ControlRequest::CreateNetwork { spec } => self.create_network(spec).await,
            ControlRequest::RemoveNetwork { id } => {
                let id = self.state.read(|s| s.resolve_network(&id).map(|n| n.id.clone()))?;
                self.propose(Command::RemoveNetwork { id }).await?;
                Ok(ControlResponse::Done)
            }
            ControlRequest::ListServices => Ok(self.services_control_list()),
            ControlRequest::GetService { id } => self.get_service(&id),
            ControlRequest::CreateService { spec } => self.create_service(*spec).await,
            ControlRequest::UpdateService { id, version, spec, rollback } => {
                self.update_service(&id, version, *spec, rollback).await
            }
            ControlRequest::RemoveService { id } => self.remove_service(&id).await,
            ControlRequest::ListTasks => Ok(self.list_tasks()),
            ControlRequest::GetTask { id } => self.get_task(&id),
            ControlRequest::LogSubscribe { service, task, tail, follow } => {
                Ok(ControlResponse::LogSubscribed { id: self.log_subscribe(service, task, tail, follow)? })
            }
            ControlRequest::LogPoll { id } => {
                let (lines, finished) = self.log_poll(&id).await?;
                Ok(ControlResponse::LogLines { lines, finished })
            }
            ControlRequest::ListBlobs { kind } => Ok(self.list_blobs(kind)),
            ControlRequest::GetBlob { kind, id } => self.get_blob(kind, &id),
            ControlRequest::CreateBlob { kind, spec } => self.create_blob(kind, spec).await,
            ControlRequest::UpdateBlob { kind, id, version, spec } => {
                self.update_blob(kind, &id, version, spec).await
            }
            ControlRequest::RemoveBlob { kind, id } => self.remove_blob(kind, &id).await,
            ControlRequest::UpdateNode { id, version, spec } => {
                let id = self.state.read(|s| s.resolve_node(&id).map(|n| n.id.clone()))?;
                self.propose(Command::UpdateNodeSpec { id, version, spec, now: now_nanos() }).await?;
                Ok(ControlResponse::Done)
            }
            ControlRequest::RemoveNode { id, force } => {
                let id = self.state.read(|s| s.resolve_node(&id).map(|n| n.id.clone()))?;
                self.propose(Command::RemoveNode { id: id.clone(), force, now: now_nanos() }).await?;
                self.liveness().forget(&id);
                Ok(ControlResponse::Done)
            }
            ControlRequest::UpdateSwarm { version, spec, rotate_worker_token, rotate_manager_token } => {
                let cluster = self.state.read(|s| s.cluster().cloned())?;
                if cluster.meta.version != version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
                if spec.node_cert_expiry < crate::ca::MIN_NODE_CERT_EXPIRY.as_nanos() as u64 {
                    return Err(ApiError::invalid("minimum certificate expiry time is: 1h0m0s"));
                }
                if spec != cluster.spec {
                    self.propose(Command::UpdateClusterSpec { version, spec, now: now_nanos() }).await?;
                }
                if rotate_worker_token || rotate_manager_token {
                    let ca = cluster.root_ca_cert.as_bytes();
                    let new = |yes: bool| yes.then(|| JoinToken::generate(ca).as_str().to_owned());
                    self.propose(Command::RotateJoinTokens {
                        worker: new(rotate_worker_token),
                        manager: new(rotate_manager_token),
                        now: now_nanos(),
                    })
                    .await?;
                }
                Ok(ControlResponse::Done)
            }
        }
    }

    /// `network create`: validates, allocates a subnet, gateway and VNI, and
    /// commits; retries if a concurrent create took the same ones.
    async fn create_network(&self, spec: NetworkSpec) -> Result<ControlResponse, ApiError> {
        validate_name(&spec.name)?;
        if spec.driver != "overlay" {
            return Err(ApiError::invalid(format!(
                "network driver {:?} is not supported for swarm networks: use the overlay driver",
                spec.driver
            )));
        }
        if let Some(mtu) = spec.options.get(MTU_OPTION) {
            match mtu.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => {}
                _ => {
                    return Err(ApiError::invalid(format!(
                        "invalid MTU {mtu:?}: it must be a number from 68 to 65535"
                    )));
                }
            }
        }
        let user_subnet = spec.subnet.as_deref().map(Cidr::parse).transpose().map_err(ApiError::invalid)?;
        if let Some(c) = user_subnet
            && c.prefix > 30
        {
            return Err(ApiError::invalid(format!(
                "invalid subnet {c}: an overlay subnet needs room for a gateway and an endpoint (a /30 or larger)"
            )));
        }
        for attempt in 0..3 {
            // Picked under the lock and reserved until proposed, so creates
            // on this leader run concurrently without picking the same ones.
            let picked = {
                let _allocating = self.allocation.lock().await;
                let mut r = self.reserved.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (subnet, vni) = self.state.read(|s| -> Result<(Cidr, u32), ApiError> {
                    let cluster = s.cluster()?;
                    let subnet = if let Some(c) = user_subnet {
                        if r.subnets.iter().any(|x| x.overlaps(c)) {
                            return Err(ApiError::conflict(format!(
                                "invalid pool request: Pool overlaps with other one on this address space ({c} is being allocated)"
                            )));
                        }
                        c
                    } else {
                        let mut used: Vec<Cidr> =
                            s.networks.values().filter_map(|n| Cidr::parse(&n.subnet).ok()).collect();
                        used.extend(r.subnets.iter().copied());
                        let pools: Vec<Cidr> =
                            cluster.default_addr_pool.iter().filter_map(|p| Cidr::parse(p).ok()).collect();
                        ipam::next_subnet(&pools, cluster.subnet_size as u8, &used).ok_or_else(|| {
                            ApiError::invalid(
                                "could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network",
                            )
                        })?
                    };
                    let vni = s.next_free_vni(&r.vnis).ok_or_else(|| ApiError::invalid("no VNI left"))?;
                    Ok((subnet, vni))
                })?;
                r.subnets.push(subnet);
                r.vnis.insert(vni);
                Reservation { reserved: &self.reserved, subnet, vni }
            };
            let (subnet, vni) = (picked.subnet, picked.vni);
            let gateway = match spec.gateway.as_deref() {
                Some(g) => {
                    let ip: std::net::Ipv4Addr =
                        g.parse().map_err(|_| ApiError::invalid(format!("invalid gateway address {g}")))?;
                    if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() {
                        return Err(ApiError::invalid(format!(
                            "invalid gateway address {g}: it does not belong to subnet {subnet}"
                        )));
                    }
                    ip
                }
                None => subnet.first_host(),
            };
            let now = now_nanos();
            let network = Network {
                id: ids::new_id(),
                meta: Meta { version: 0, created_at: now, updated_at: now },
                name: spec.name.clone(),
                driver: "overlay".into(),
                ingress: spec.ingress,
                attachable: spec.attachable,
                subnet: subnet.to_string(),
                gateway: gateway.to_string(),
                vni,
                labels: spec.labels.clone(),
                options: spec.options.clone(),
                pending_delete: false,
            };
            let id = network.id.clone();
            match self.propose(Command::CreateNetwork { network: Box::new(network) }).await {
                Ok(()) => return Ok(ControlResponse::Created { id }),
                // Someone else took this subnet or VNI meanwhile: allocate again.
                Err(e)
                    if attempt < 2
                        && user_subnet.is_none()
                        && e.kind == ErrorKind::Conflict
                        && !e.message.starts_with("network with name") => {}
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict("could not allocate a subnet for the network"))
    }

    /// Attaches the calling node to a network: an address for a new endpoint.
    async fn attach(&self, caller: Caller, req: AttachRequest) -> Result<AttachResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        let _allocating = self.allocation.lock().await;
        for attempt in 0..5 {
            let host_endpoint = req.name == crate::rpc::messages::INGRESS_SBOX;
            let found = self.state.read(|s| {
                let n = s.networks.values().find(|n| n.ingress)?;
                let e = s
                    .endpoints
                    .values()
                    .find(|e| e.network_id == n.id && e.node_id == id.node_id && e.name == req.name)?;
                Some(AttachResponse { endpoint: e.clone(), network: n.clone() })
            });
            if host_endpoint && let Some(existing) = found {
                return Ok(existing);
            }
            let (network, ip) = self.state.read(|s| -> Result<(Network, std::net::Ipv4Addr), ApiError> {
                let n = s.resolve_network(&req.network)?.clone();
                if !(n.attachable || host_endpoint && n.ingress) {
                    return Err(ApiError::denied(format!(
                        "Could not attach to network {}: network {} not manually attachable",
                        req.network, n.name
                    )));
                }
                let subnet = Cidr::parse(&n.subnet).map_err(ApiError::internal)?;
                let gateway: std::net::Ipv4Addr =
                    n.gateway.parse().map_err(|_| ApiError::internal("bad gateway"))?;
                let ip = if let Some(ip) = &req.ip {
                    ip.parse().map_err(|_| ApiError::invalid(format!("invalid IPv4 address {ip}")))?
                } else {
                    let used = s
                        .endpoints
                        .values()
                        .filter(|e| e.network_id == n.id)
                        .filter_map(|e| e.ip.parse().ok())
                        .collect();
                    ipam::next_ip(subnet, gateway, &used).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "no available IPv4 addresses on this network's address pools: {} ({})",
                            n.name, n.id
                        ))
                    })?
                };
                Ok((n, ip))
            })?;
            let now = now_nanos();
            let endpoint = Endpoint {
                id: ids::new_id(),
                meta: Meta { version: 0, created_at: now, updated_at: now },
                network_id: network.id.clone(),
                node_id: id.node_id.clone(),
                ip: ip.to_string(),
                mac: ipam::format_mac(ipam::mac_for(ip)),
                name: req.name.clone(),
            };
            match self.propose(Command::AddEndpoint { endpoint: Box::new(endpoint.clone()) }).await {
                Ok(()) => return Ok(AttachResponse { endpoint, network }),
                // Another node got this address first: take the next one.
                Err(e) if attempt < 4 && req.ip.is_none() && e.kind == ErrorKind::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict("could not allocate an address"))
    }

    async fn detach(&self, caller: Caller, req: DetachRequest) -> Result<ControlResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        let owner = self.state.read(|s| {
            s.endpoints
                .get(&req.endpoint_id)
                .map(|e| e.node_id.clone())
                .ok_or_else(|| ApiError::not_found(format!("endpoint {} not found", req.endpoint_id)))
        })?;
        if owner != id.node_id && id.role != Role::Manager {
            return Err(ApiError::denied("permission denied: the endpoint belongs to another node"));
        }
        self.propose(Command::RemoveEndpoint { id: req.endpoint_id }).await?;
        Ok(ControlResponse::Done)
    }

    /// The request inside `a`, if it is meant for this manager's Raft seat.
    fn addressed_here<T>(&self, a: Addressed<T>) -> Result<T, ApiError> {
        if a.to != self.cfg.raft_id {
            return Err(ApiError::unavailable(format!(
                "raft request for member {:x}, this manager is {:x}",
                a.to, self.cfg.raft_id
            )));
        }
        Ok(a.req)
    }

    /// A node with its manager status, as seen from here.
    fn view(&self, n: &Node) -> NodeView {
        let m = self.raft.metrics().borrow_watched().clone();
        let Some(info) = &n.manager else {
            return NodeView { node: n.clone(), leader: false, reachability: Reachability::Unknown };
        };
        let leader = m.current_leader == Some(info.raft_id);
        // A manager counts once it is a voter in a settled configuration: a
        // learner still catching up, or a change still in joint consensus,
        // would not survive losing another manager yet.
        let membership = m.membership_config.membership();
        let joint = membership.get_joint_config();
        let voter = joint.len() == 1 && joint[0].contains(&info.raft_id);
        let reachability = if !voter {
            Reachability::Unknown
        } else if info.raft_id == self.cfg.raft_id {
            Reachability::Reachable
        } else if m.state == ServerState::Leader {
            match m.heartbeat.as_ref().and_then(|h| h.get(&info.raft_id)) {
                Some(Some(t)) if t.elapsed() < self.quorum_window() => Reachability::Reachable,
                Some(_) => Reachability::Unreachable,
                None => Reachability::Unknown,
            }
        } else {
            Reachability::Unknown
        };
        NodeView { node: n.clone(), leader, reachability }
    }

    /// Raft requests are accepted from managers of this swarm that were not
    /// removed. Membership is not checked against this manager's copy of the
    /// store: a learner still catching up does not know the managers that
    /// joined after the point it has reached, and one of them may lead. Old
    /// managers left out by `--force-new-cluster` cannot disturb the new
    /// group anyway: their requests are addressed to Raft IDs that no longer
    /// exist ([`Addressed`]).
    fn raft_peer_allowed(&self, caller: &Caller) -> Result<(), ApiError> {
        self.caller_node(caller, &[Role::Manager]).map(drop)
    }
}

fn host_of(addr: &str) -> String {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned()
}

/// Advertised manager addresses, the leader's first.
fn manager_addrs(state: &ClusterState, leader: Option<u64>) -> Vec<String> {
    let mut v: Vec<(bool, String)> =
        state.raft_members().map(|(_, m)| (Some(m.raft_id) != leader, m.addr.clone())).collect();
    v.sort();
    v.into_iter().map(|(_, a)| a).collect()
}

// ---- axum handlers -------------------------------------------------------------

type S = State<Arc<Manager>>;

async fn h_root_ca(State(m): S) -> Json<RootCaResponse> {
    Json(RootCaResponse { ca_pem: m.cfg.ca.cert_pem().to_owned() })
}

async fn h_issue_cert(
    State(m): S,
    caller: Caller,
    Json(req): Json<IssueCertRequest>,
) -> Result<Json<IssueCertResponse>, ApiError> {
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::ISSUE_CERT, true, req, |req| async move { mm.issue_cert(c, req).await })
        .await
        .map(Json)
}

async fn h_heartbeat(
    State(m): S,
    caller: Caller,
    Json(req): Json<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::HEARTBEAT, false, req, |req| async move { mm.heartbeat(c, req).await })
        .await
        .map(Json)
}

async fn h_raft_join(
    State(m): S,
    caller: Caller,
    Json(req): Json<JoinRaftRequest>,
) -> Result<Json<ControlResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::RAFT_JOIN, true, req, |req| async move { mm.join_raft(c, req).await })
        .await
        .map(Json)
}

async fn h_control(
    State(m): S,
    caller: Caller,
    Json(req): Json<ControlRequest>,
) -> Result<Json<ControlResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::CONTROL, !req.is_read(), req, |req| async move { mm.control(c, req).await })
        .await
        .map(Json)
}

async fn h_attach(
    State(m): S,
    caller: Caller,
    Json(req): Json<AttachRequest>,
) -> Result<Json<AttachResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::ATTACH, true, req, |req| async move { mm.attach(c, req).await })
        .await
        .map(Json)
}

async fn h_detach(
    State(m): S,
    caller: Caller,
    Json(req): Json<DetachRequest>,
) -> Result<Json<ControlResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    m.on_leader(&caller, path::DETACH, true, req, |req| async move { mm.detach(c, req).await })
        .await
        .map(Json)
}

/// Docker's rule for service and network names (swarmkit controlapi).
fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid("meta: name must be provided"));
    }
    let bytes = name.as_bytes();
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let valid = alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes.iter().all(|&b| alnum(b) || b == b'-' || b == b'_');
    if !valid {
        return Err(ApiError::invalid("name must be valid as a DNS name component"));
    }
    if name.len() > 63 {
        return Err(ApiError::invalid("name must be 63 characters or fewer"));
    }
    Ok(())
}

async fn h_raft_append(
    State(m): S,
    caller: Caller,
    Json(req): Json<Addressed<openraft::raft::AppendEntriesRequest<raft::TypeConfig>>>,
) -> Result<Json<openraft::raft::AppendEntriesResponse<raft::TypeConfig>>, ApiError> {
    m.raft_peer_allowed(&caller)?;
    let req = m.addressed_here(req)?;
    let resp = m.raft.append_entries(req).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
        *m.leader_contact.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
    }
    Ok(Json(resp))
}

async fn h_raft_vote(
    State(m): S,
    caller: Caller,
    Json(req): Json<Addressed<openraft::raft::VoteRequest<raft::TypeConfig>>>,
) -> Result<Json<openraft::raft::VoteResponse<raft::TypeConfig>>, ApiError> {
    m.raft_peer_allowed(&caller)?;
    let req = m.addressed_here(req)?;
    m.raft.vote(req).await.map(Json).map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn h_raft_pre_vote(
    State(m): S,
    caller: Caller,
    Json(req): Json<Addressed<openraft::raft::VoteRequest<raft::TypeConfig>>>,
) -> Result<Json<openraft::raft::VoteResponse<raft::TypeConfig>>, ApiError> {
    m.raft_peer_allowed(&caller)?;
    let req = m.addressed_here(req)?;
    m.raft.pre_vote(req).await.map(Json).map_err(|e| ApiError::unavailable(e.to_string()))
}

async fn h_raft_snapshot_chunk(
    State(m): S,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
) -> Result<Json<()>, ApiError> {
    m.raft_peer_allowed(&caller)?;
    let header: ChunkHeader = headers
        .get(CHUNK_HEADER)
        .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
        .ok_or_else(|| ApiError::invalid(format!("missing or bad {CHUNK_HEADER} header")))?;
    m.addressed_here(Addressed { to: header.to, req: () })?;
    m.incoming_snapshot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .chunk(header, &body)
        .map_err(ApiError::invalid)?;
    Ok(Json(()))
}

async fn h_raft_snapshot(
    State(m): S,
    caller: Caller,
    Json(req): Json<Addressed<SnapshotRequest>>,
) -> Result<Json<openraft::raft::SnapshotResponse<raft::TypeConfig>>, ApiError> {
    m.raft_peer_allowed(&caller)?;
    let req = m.addressed_here(req)?;
    let data = m
        .incoming_snapshot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .finish(req.transfer, req.len, &req.sha256)
        .map_err(ApiError::invalid)?;
    let snapshot = openraft::alias::SnapshotOf::<raft::TypeConfig, raft::storage::SnapshotData> {
        meta: req.meta,
        snapshot: data,
    };
    m.raft
        .install_full_snapshot(req.vote, snapshot)
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// The voter set once `node` holds Raft seat `seat` (`None`: unchanged), and
/// the other seats `node` held before, which it gives up. A manager that
/// restarted its join under a new Raft ID leaves a stale seat at its own
/// address; kept, it would count against the quorum forever.
fn voters_with_seat<'a>(
    members: impl Iterator<Item = (u64, &'a str)>,
    voters: impl Iterator<Item = u64>,
    node: &str,
    seat: u64,
) -> (Option<BTreeSet<u64>>, BTreeSet<u64>) {
    let stale: BTreeSet<u64> =
        members.filter(|(id, n)| *id != seat && *n == node).map(|(id, _)| id).collect();
    let before: BTreeSet<u64> = voters.collect();
    let mut after: BTreeSet<u64> = before.difference(&stale).copied().collect();
    after.insert(seat);
    let change = (after != before).then_some(after);
    (change, stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seats(members: &[(u64, &str)], voters: &[u64], seat: u64) -> (Option<Vec<u64>>, Vec<u64>) {
        let (v, s) = voters_with_seat(members.iter().copied(), voters.iter().copied(), "n3", seat);
        (v.map(|v| v.into_iter().collect()), s.into_iter().collect())
    }

    #[test]
    fn a_new_manager_becomes_a_voter() {
        assert_eq!(seats(&[(1, "n1"), (2, "n2"), (3, "n3")], &[1, 2], 3), (Some(vec![1, 2, 3]), vec![]));
    }

    #[test]
    fn a_manager_already_seated_changes_nothing() {
        assert_eq!(seats(&[(1, "n1"), (3, "n3")], &[1, 3], 3), (None, vec![]));
    }

    #[test]
    fn a_rejoining_manager_gives_up_its_old_voter_and_learner_seats() {
        // Seat 30 was a voter, 31 a learner that never got promoted.
        let members = [(1, "n1"), (2, "n2"), (30, "n3"), (31, "n3"), (32, "n3")];
        assert_eq!(seats(&members, &[1, 2, 30], 32), (Some(vec![1, 2, 32]), vec![30, 31]));
        // Re-sent after the change went through: nothing more to do.
        assert_eq!(seats(&[(1, "n1"), (2, "n2"), (32, "n3")], &[1, 2, 32], 32), (None, vec![]));
    }
}
