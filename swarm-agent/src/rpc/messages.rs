//! Requests and responses of the node-to-node RPC, and which certificate
//! roles may send each (enforced by the manager's handlers).
//!
//! | path | who may call | served by |
//! |---|---|---|
//! | `/ca/root` | anyone (joining nodes) | any manager |
//! | `/ca/issue` | anyone with a join token; nodes renewing with their certificate | leader |
//! | `/dispatcher/heartbeat` | workers and managers | leader |
//! | `/raft/append`, `/raft/vote`, `/raft/prevote`, `/raft/snapshot/chunk`, `/raft/snapshot` | Raft members (managers) | any manager |
//! | `/raft/join` | managers | leader |
//! | `/control` | managers | leader |
//! | `/network/attach`, `/network/detach` | workers and managers (for themselves) | leader |

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::{
    ca::Role,
    manager::store::{
        model::{Availability, Cluster, ClusterSpec, Endpoint, Network, Node, NodeDescription, NodeSpec},
        task::{Service, Task, TaskStatus},
    },
};

pub mod path {
    pub const ROOT_CA: &str = "/ca/root";
    pub const ISSUE_CERT: &str = "/ca/issue";
    pub const HEARTBEAT: &str = "/dispatcher/heartbeat";
    pub const RAFT_APPEND: &str = "/raft/append";
    pub const RAFT_VOTE: &str = "/raft/vote";
    pub const RAFT_PRE_VOTE: &str = "/raft/prevote";
    pub const RAFT_SNAPSHOT: &str = "/raft/snapshot";
    pub const RAFT_SNAPSHOT_CHUNK: &str = "/raft/snapshot/chunk";
    pub const RAFT_JOIN: &str = "/raft/join";
    pub const CONTROL: &str = "/control";
    pub const ATTACH: &str = "/network/attach";
    pub const DETACH: &str = "/network/detach";
    pub const SESSION: &str = "/dispatcher/session";
    /// Long poll: the names this node's tasks resolve.
    pub const NAMES: &str = "/dispatcher/names";
    pub const IMAGE_MANIFEST: &str = "/images/manifest";
    pub const IMAGE_LAYER: &str = "/images/layer";
    pub const LOG_WORK: &str = "/logs/work";
    pub const LOG_PUBLISH: &str = "/logs/publish";
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootCaResponse {
    pub ca_pem: String,
}

/// A certificate request: a join (with a token, no certificate) or a
/// renewal (with the node's certificate, no token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueCertRequest {
    pub token: Option<String>,
    pub csr_pem: String,
    pub availability: Availability,
    pub description: NodeDescription,
    /// `ip:port` the node advertises (its Raft address if it is a manager).
    pub advertise_addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssueCertResponse {
    pub node_id: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Only managers receive the CA key.
    pub ca_key_pem: Option<String>,
    pub role: Role,
    pub cluster_id: String,
    /// Advertised addresses of the managers.
    pub managers: Vec<String>,
    /// The swarm's Raft snapshot settings, for a manager's Raft.
    pub snapshots: crate::manager::raft::SnapshotSettings,
    /// The swarm's VXLAN port.
    pub data_path_port: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub description: NodeDescription,
    /// The node's advertised address.
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Send the next heartbeat within this period.
    pub period_ms: u64,
    /// Advertised addresses of the managers, leader first.
    pub managers: Vec<String>,
    /// The role the node's certificate should carry; a node whose
    /// certificate says otherwise renews it.
    pub role: Role,
    /// The node's Raft member ID in the store, if it is a member; a manager
    /// whose own ID differs (or that runs no Raft) (re)joins Raft.
    pub raft_id: Option<u64>,
    /// Gossip encryption keys, the one to encrypt with first.
    #[serde(default)]
    pub gossip_keys: Vec<GossipKey>,
    /// Nodes the managers have marked Down: gossip withdraws their
    /// endpoints without waiting out its grace.
    #[serde(default)]
    pub down_nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRaftRequest {
    pub raft_id: u64,
    pub addr: String,
}

/// How the leader sees a manager's Raft connectivity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reachability {
    Unknown,
    Unreachable,
    Reachable,
}

/// A node as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node: Node,
    pub leader: bool,
    pub reachability: Reachability,
}

/// The cluster-state API that `docker swarm`/`docker node` use, served by the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlRequest {
    GetSwarm,
    ListNodes,
    GetNode {
        id: String,
    },
    UpdateNode {
        id: String,
        version: u64,
        spec: NodeSpec,
    },
    RemoveNode {
        id: String,
        force: bool,
    },
    UpdateSwarm {
        version: u64,
        spec: ClusterSpec,
        rotate_worker_token: bool,
        rotate_manager_token: bool,
    },
    ListNetworks,
    GetNetwork {
        id: String,
    },
    CreateNetwork {
        spec: NetworkSpec,
    },
    RemoveNetwork {
        id: String,
    },
    ListServices,
    GetService {
        id: String,
    },
    CreateService {
        spec: Box<bollard_stubs::models::ServiceSpec>,
    },
    UpdateService {
        id: String,
        version: u64,
        spec: Box<bollard_stubs::models::ServiceSpec>,
        /// `rollback=previous`: the spec sent is ignored, the previous one
        /// comes back.
        #[serde(default)]
        rollback: bool,
    },
    RemoveService {
        id: String,
    },
    ListTasks,
    GetTask {
        id: String,
    },
    /// `service logs`: subscribe to the logs of a service's tasks (or one task).
    LogSubscribe {
        service: Option<String>,
        task: Option<String>,
        tail: Option<usize>,
        follow: bool,
    },
    LogPoll {
        id: String,
    },
    ListBlobs {
        kind: crate::manager::store::secret::Kind,
    },
    GetBlob {
        kind: crate::manager::store::secret::Kind,
        id: String,
    },
    CreateBlob {
        kind: crate::manager::store::secret::Kind,
        spec: BlobSpec,
    },
    UpdateBlob {
        kind: crate::manager::store::secret::Kind,
        id: String,
        version: u64,
        spec: BlobSpec,
    },
    RemoveBlob {
        kind: crate::manager::store::secret::Kind,
        id: String,
    },
}

/// A secret's or config's spec as the API gives it (data base64; `None`
/// on an update that leaves it alone).
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct BlobSpec {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub data: Option<String>,
    pub driver: Option<serde_json::Value>,
    pub templating: Option<serde_json::Value>,
}

impl std::fmt::Debug for BlobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobSpec").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ControlRequest {
    /// Whether the request only reads the state.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            ControlRequest::GetSwarm
                | ControlRequest::ListNodes
                | ControlRequest::GetNode { .. }
                | ControlRequest::ListNetworks
                | ControlRequest::GetNetwork { .. }
                | ControlRequest::ListServices
                | ControlRequest::GetService { .. }
                | ControlRequest::ListTasks
                | ControlRequest::GetTask { .. }
                | ControlRequest::LogSubscribe { .. }
                | ControlRequest::LogPoll { .. }
                | ControlRequest::ListBlobs { .. }
                | ControlRequest::GetBlob { .. }
        )
    }
}

/// `network create` as the user asked for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub attachable: bool,
    pub ingress: bool,
    pub labels: std::collections::BTreeMap<String, String>,
    pub options: std::collections::BTreeMap<String, String>,
}

/// [`AttachRequest::name`] of a node's own endpoint on the ingress network
/// (docker's `ingress-sbox`): one per node, for clients on the node itself;
/// asking again returns the same one.
pub const INGRESS_SBOX: &str = "ingress-sbox";

/// Attach the calling node to a network (served by the leader; any node may call).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    pub network: String,
    /// A specific address, or the next free one.
    pub ip: Option<String>,
    /// What the attachment is for (the network namespace).
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachResponse {
    pub endpoint: Endpoint,
    pub network: Network,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetachRequest {
    pub endpoint_id: String,
}

/// A gossip encryption key, as managers hand them out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKey {
    pub id: u32,
    /// 32 bytes, hex.
    pub key: String,
}

impl GossipKey {
    /// A new random AES-256 key.
    pub fn generate(id: u32) -> GossipKey {
        use rand::RngCore as _;
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        GossipKey { id, key: crate::ca::token::hex(&k) }
    }

    /// The key bytes, if the hex is valid.
    pub fn bytes(&self) -> Option<[u8; 32]> {
        if self.key.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.key[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ControlResponse {
    Swarm(Box<Cluster>),
    Nodes(Vec<NodeView>),
    Node(Box<NodeView>),
    Networks(Vec<Network>),
    Network(Box<Network>),
    Created {
        id: String,
    },
    Done,
    Services(Vec<ServiceView>),
    Service(Box<ServiceView>),
    /// Tasks, with the names of their services (for task names).
    Tasks {
        tasks: Vec<Task>,
        services: BTreeMap<String, String>,
    },
    Task {
        task: Box<Task>,
        service_name: String,
    },
    LogSubscribed {
        id: String,
    },
    LogLines {
        lines: Vec<crate::manager::logs::LogMsg>,
        finished: bool,
    },
    /// Secrets or configs (a secret's data left out).
    Blobs(Vec<crate::manager::store::secret::Blob>),
    Blob(Box<crate::manager::store::secret::Blob>),
}

/// A service with its task counts (Docker's `ServiceStatus`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub service: Service,
    pub running: u64,
    pub desired: u64,
    pub completed: u64,
}

/// The dispatcher session: a node reports task statuses and asks for its
/// assignments. With `known` equal to the current assignment set's
/// fingerprint the leader holds the request until the set changes or
/// `wait_ms` pass (a long poll).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRequest {
    #[serde(default)]
    pub statuses: Vec<(String, TaskStatus)>,
    pub known: Option<u64>,
    #[serde(default)]
    pub wait_ms: u64,
}

/// A node asks for the names of its tasks' networks: at once if they
/// changed since `known`, else when they do or `wait_ms` pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamesRequest {
    pub known: Option<u64>,
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamesResponse {
    pub fingerprint: u64,
    /// `None` when unchanged.
    pub view: Option<crate::manager::names::NamesView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    pub fingerprint: u64,
    /// `None` when the set is still the one the node knows.
    pub assignments: Option<Vec<Assignment>>,
}

/// A task assigned to a node, with what it needs to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task: Task,
    pub service_name: String,
    /// The task's addresses, as network attachments.
    pub attachments: Vec<AttachResponse>,
    /// The data (base64) of the secrets and configs the task references,
    /// by ID; only for tasks that are to run, only to their node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileData>,
}

/// A secret's or config's data handed to the node that runs a task using it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub id: String,
    pub data: String,
}

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileData").field("id", &self.id).finish_non_exhaustive()
    }
}
