//! Objects kept in the Raft-replicated store. Field meanings follow the
//! Docker Engine API (`Swarm`, `Node`, `Network`); the API layer converts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ca::Role;

/// Unix time in nanoseconds; set by the leader when it proposes a change, so
/// every replica applies the same value.
pub type Nanos = i64;

/// Version and timestamps of an object. `version` is the Raft log index of
/// the change that last wrote it (Docker's `Version.Index`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u64,
    pub created_at: Nanos,
    pub updated_at: Nanos,
}

/// Cluster-wide settings (Docker's `SwarmSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub task_history_limit: i64,
    /// Dispatcher heartbeat period, ns.
    pub heartbeat_period: u64,
    /// Node certificate validity, ns.
    pub node_cert_expiry: u64,
    pub snapshot_interval: u64,
    pub keep_old_snapshots: u64,
    pub log_entries_for_slow_followers: u64,
    pub heartbeat_tick: u32,
    pub election_tick: u32,
    pub autolock: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            name: "default".into(),
            labels: BTreeMap::new(),
            task_history_limit: 5,
            heartbeat_period: 5_000_000_000,
            node_cert_expiry: 2160 * 3600 * 1_000_000_000,
            snapshot_interval: 10_000,
            keep_old_snapshots: 0,
            log_entries_for_slow_followers: 500,
            heartbeat_tick: 1,
            election_tick: 10,
            autolock: false,
        }
    }
}

/// The cluster object: one per swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub meta: Meta,
    pub spec: ClusterSpec,
    pub root_ca_cert: String,
    /// The CA key; replicated among managers only (workers never see the store).
    pub root_ca_key: String,
    pub worker_token: String,
    pub manager_token: String,
    pub default_addr_pool: Vec<String>,
    pub subnet_size: u32,
    pub data_path_port: u32,
    /// Keys that authenticate and encrypt gossip on 7946, newest first
    /// (the leader rotates them and keeps three).
    #[serde(default)]
    pub gossip_keys: Vec<crate::rpc::messages::GossipKey>,
    /// When the newest gossip key was made.
    #[serde(default)]
    pub gossip_keys_rotated_at: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    /// Parses a user-given value, with Docker's error text.
    pub fn parse(s: &str) -> Result<Availability, String> {
        match s.to_ascii_lowercase().as_str() {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!("invalid availability {s:?}, only active, pause and drain are supported")),
        }
    }
}

/// What the user asks of a node (Docker's `NodeSpec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Desired role.
    pub role: Role,
    pub availability: Availability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Down => "down",
            NodeState::Ready => "ready",
            NodeState::Disconnected => "disconnected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    pub message: String,
    /// The address the node's heartbeats come from.
    pub addr: String,
}

/// What the node reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub engine_version: String,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    /// The engine's labels (`swarm-agent daemon --label k=v`), what
    /// `engine.labels.<k>` constraints match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub engine_labels: BTreeMap<String, String>,
}

/// Raft membership of a manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerInfo {
    pub raft_id: u64,
    /// Advertised `ip:port` of its 2377 endpoint.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub meta: Meta,
    pub spec: NodeSpec,
    /// Current role: the role of the certificate the node was last issued.
    pub role: Role,
    pub description: NodeDescription,
    pub status: NodeStatus,
    /// Set while the node is a Raft member.
    pub manager: Option<ManagerInfo>,
}

/// An overlay network (`ingress` exists from `init`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub meta: Meta,
    pub name: String,
    pub driver: String,
    pub ingress: bool,
    pub attachable: bool,
    pub subnet: String,
    pub gateway: String,
    pub vni: u32,
    pub labels: BTreeMap<String, String>,
    /// Driver options (`-o`), e.g. `com.docker.network.driver.mtu`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Removed while tasks that are going away still had endpoints on it:
    /// it goes with their last endpoint (swarmkit's `PendingDelete`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_delete: bool,
}

/// Option that sets an overlay network's MTU.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";

impl Network {
    /// The MTU endpoints get: the network's MTU minus the VXLAN overhead,
    /// where the network's MTU is the `-o com.docker.network.driver.mtu`
    /// value (as in docker) or else this host's underlay MTU (docker assumes
    /// 1500, which breaks on smaller underlays).
    pub fn mtu(&self, underlay_mtu: u32) -> u32 {
        let network_mtu = self.options.get(MTU_OPTION).and_then(|v| v.parse().ok()).unwrap_or(underlay_mtu);
        network_mtu.saturating_sub(swarm_common::VXLAN_OVERHEAD as u32).max(68)
    }
}

/// A network namespace attached to an overlay network on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    pub meta: Meta,
    pub network_id: String,
    pub node_id: String,
    /// The endpoint's address in the network.
    pub ip: String,
    pub mac: String,
    /// What it is for (the network namespace path, or a task).
    pub name: String,
}
