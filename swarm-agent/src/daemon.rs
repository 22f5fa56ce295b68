//! The engine behind the Docker API: this host's swarm membership (none,
//! joining, or a running [`SwarmNode`]) and the operations that change it.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use crate::{
    error::{ALREADY_IN_SWARM, ApiError, INACTIVE, NOT_IN_SWARM, PENDING},
    node::{InitParams, JoinParams, NodeOptions, SwarmNode},
    rpc::messages::{ControlRequest, ControlResponse},
};

/// What `docker info` calls `LocalNodeState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalNodeState {
    Inactive,
    Pending,
    Active,
}

pub struct Engine {
    data_root: PathBuf,
    options: NodeOptions,
    node: tokio::sync::RwLock<Option<Arc<SwarmNode>>>,
    /// Serializes init, join, leave.
    op: tokio::sync::Mutex<()>,
    joining: AtomicBool,
    /// `docker exec` instances.
    execs: Arc<crate::api::exec::Execs>,
}

impl Engine {
    /// The engine for `data_root`, resuming a swarm membership found there.
    pub async fn start(data_root: PathBuf, options: NodeOptions) -> Result<Arc<Engine>, ApiError> {
        let node = SwarmNode::resume(data_root.clone(), options.clone()).await?;
        Ok(Arc::new(Engine {
            data_root,
            options,
            node: tokio::sync::RwLock::new(node),
            op: tokio::sync::Mutex::new(()),
            joining: AtomicBool::new(false),
            execs: Arc::default(),
        }))
    }

    pub fn data_root(&self) -> &PathBuf {
        &self.data_root
    }

    pub fn options(&self) -> NodeOptions {
        self.options.clone()
    }

    pub fn execs(&self) -> &crate::api::exec::Execs {
        &self.execs
    }

    pub fn execs_arc(&self) -> Arc<crate::api::exec::Execs> {
        self.execs.clone()
    }

    pub async fn node(&self) -> Option<Arc<SwarmNode>> {
        self.node.read().await.clone()
    }

    pub async fn state(&self) -> LocalNodeState {
        if self.node.read().await.is_some() {
            LocalNodeState::Active
        } else if self.joining.load(Ordering::SeqCst) {
            LocalNodeState::Pending
        } else {
            LocalNodeState::Inactive
        }
    }

    /// `swarm init`; with `force_new_cluster` on a manager of an existing
    /// swarm, recovers it as a single-manager swarm. Returns the node ID.
    pub async fn init(&self, p: InitParams, force_new_cluster: bool) -> Result<String, ApiError> {
        let _op = self.op.lock().await;
        if let Some(node) = self.node().await {
            if !force_new_cluster {
                return Err(ApiError::unavailable(ALREADY_IN_SWARM));
            }
            node.force_new_cluster(p.advertise_addr.as_deref()).await?;
            return Ok(node.local().node_id);
        }
        let node = SwarmNode::init(self.data_root.clone(), p).await?;
        let id = node.local().node_id;
        *self.node.write().await = Some(node);
        Ok(id)
    }

    /// `swarm join`.
    pub async fn join(&self, p: JoinParams) -> Result<(), ApiError> {
        let _op = self.op.lock().await;
        if self.node().await.is_some() {
            return Err(ApiError::unavailable(ALREADY_IN_SWARM));
        }
        self.joining.store(true, Ordering::SeqCst);
        let r = SwarmNode::join(self.data_root.clone(), p).await;
        self.joining.store(false, Ordering::SeqCst);
        *self.node.write().await = Some(r?);
        Ok(())
    }

    /// `swarm leave [--force]`.
    pub async fn leave(&self, force: bool) -> Result<(), ApiError> {
        let _op = self.op.lock().await;
        let node = self.node().await.ok_or_else(|| ApiError::unavailable(NOT_IN_SWARM))?;
        node.leave(force).await?;
        *self.node.write().await = None;
        Ok(())
    }

    /// A control-API request (managers only).
    pub async fn control(&self, req: ControlRequest) -> Result<ControlResponse, ApiError> {
        match self.node().await {
            Some(n) => n.control(req).await,
            None if self.joining.load(Ordering::SeqCst) => Err(ApiError::unavailable(PENDING)),
            None => Err(ApiError::unavailable(INACTIVE)),
        }
    }

    /// Stops the swarm components (daemon shutdown); state stays on disk.
    pub async fn shutdown(&self) {
        if let Some(n) = self.node().await {
            n.stop().await;
        }
    }
}
