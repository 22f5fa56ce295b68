//! The replicated state machine: the cluster's objects and the commands that
//! change them. Pure: `apply` takes a command and the Raft index it was
//! committed at and changes the state deterministically, or refuses with
//! Docker's error text and changes nothing. Every manager applies the same
//! commands in the same order; the leader also runs the checks before
//! proposing, so users get errors without a round of consensus.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::manager::store::{
    endpoint,
    index::Index,
    ipam::{Cidr, check_ip},
    model::{
        Cluster, ClusterSpec, Endpoint, ManagerInfo, Meta, Nanos, Network, Node, NodeDescription, NodeSpec,
        NodeState,
    },
    secret::{self, Blob, Kind},
    task::{Service, Task, TaskState, TaskStatus, UpdateState, UpdateStatus},
};
use crate::{ca::Role, error::ApiError};

/// Everything the managers replicate. Networks and endpoints change only
/// through [`ClusterState::apply`], which keeps the lookup index in step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "StateData")]
pub struct ClusterState {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    /// Network attachments, by endpoint ID.
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Nodes removed from the swarm: their certificates are refused.
    pub removed_nodes: BTreeSet<String>,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub tasks: BTreeMap<String, Task>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Blob>,
    #[serde(default)]
    pub configs: BTreeMap<String, Blob>,
    #[serde(skip)]
    index: Index,
}

/// The serialized form; decoding builds the index.
#[derive(Deserialize)]
struct StateData {
    cluster: Option<Cluster>,
    nodes: BTreeMap<String, Node>,
    networks: BTreeMap<String, Network>,
    #[serde(default)]
    endpoints: BTreeMap<String, Endpoint>,
    removed_nodes: BTreeSet<String>,
    #[serde(default)]
    services: BTreeMap<String, Service>,
    #[serde(default)]
    tasks: BTreeMap<String, Task>,
    #[serde(default)]
    secrets: BTreeMap<String, Blob>,
    #[serde(default)]
    configs: BTreeMap<String, Blob>,
}

impl From<StateData> for ClusterState {
    fn from(d: StateData) -> ClusterState {
        let mut index = Index::build(d.networks.values(), d.endpoints.values());
        index.add_services(d.services.values());
        ClusterState {
            cluster: d.cluster,
            nodes: d.nodes,
            networks: d.networks,
            endpoints: d.endpoints,
            removed_nodes: d.removed_nodes,
            services: d.services,
            tasks: d.tasks,
            secrets: d.secrets,
            configs: d.configs,
            index,
        }
    }
}

/// A change to the state. `now` fields are set by the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// `swarm init`: the cluster, the first manager and the ingress network.
    CreateCluster { cluster: Box<Cluster>, node: Box<Node>, ingress: Box<Network> },
    /// A node joined (its certificate was issued).
    AddNode { node: Box<Node> },
    /// `node update`: the user's spec, guarded by the version they read.
    UpdateNodeSpec { id: String, version: u64, spec: NodeSpec, now: Nanos },
    /// Liveness as seen by the leader's dispatcher.
    SetNodeStatus { id: String, state: NodeState, message: String, addr: Option<String>, now: Nanos },
    /// What a node reports about itself.
    SetNodeDescription { id: String, description: NodeDescription, now: Nanos },
    /// The role a node's certificate carries now, and its Raft membership.
    SetNodeRole { id: String, role: Role, manager: Option<ManagerInfo>, now: Nanos },
    /// `node rm [--force]`.
    RemoveNode { id: String, force: bool, now: Nanos },
    /// `join-token --rotate`: new tokens (`None` keeps the current one).
    RotateJoinTokens { worker: Option<String>, manager: Option<String>, now: Nanos },
    /// `swarm update`.
    UpdateClusterSpec { version: u64, spec: ClusterSpec, now: Nanos },
    /// `network create`: a network with its subnet and VNI already allocated.
    CreateNetwork { network: Box<Network> },
    /// `network rm`.
    RemoveNetwork { id: String },
    /// An attachment with its address already allocated.
    AddEndpoint { endpoint: Box<Endpoint> },
    /// An attachment goes away.
    RemoveEndpoint { id: String },
    /// New gossip keys (newest first).
    SetGossipKeys { keys: Vec<crate::rpc::messages::GossipKey>, now: Nanos },
    /// `init --force-new-cluster`: the state a surviving manager had, with
    /// `node_id` as the only manager, as the first entry of a new Raft group.
    ForceNewCluster { state: Box<ClusterState>, node_id: String, manager: ManagerInfo, now: Nanos },
    /// `service create`: a new service (its networks resolved).
    CreateService { service: Box<Service> },
    /// `service update`/`scale`: a new spec, guarded by the version read.
    UpdateService {
        id: String,
        version: u64,
        spec: Box<bollard_stubs::models::ServiceSpec>,
        now: Nanos,
        /// The spec's networks, resolved to IDs (unset in entries written
        /// before networks could change: the service keeps its own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        networks: Option<Vec<String>>,
    },
    /// `service rollback` / `update --rollback`: the previous spec comes
    /// back (and the current one becomes the previous).
    RollbackService { id: String, version: u64, now: Nanos },
    /// The updater: where a rolling update stands; `rollback` also puts the
    /// previous spec back (an update rolled back on failure).
    SetUpdateStatus { id: String, status: UpdateStatus, rollback: bool },
    /// `service rm`: the service goes, its tasks are marked for removal.
    RemoveService { id: String, now: Nanos },
    /// The reconcilers' writes: tasks created or replaced whole, with the
    /// endpoints (addresses) the allocator gave them.
    PutTasks { tasks: Vec<Task>, endpoints: Vec<Endpoint> },
    /// What agents report, batched by the dispatcher. An update that would
    /// move a task's state backwards, or names a task that is gone, is
    /// skipped; the others apply.
    SetTaskStatus { updates: Vec<(String, TaskStatus)>, now: Nanos },
    /// The reaper: tasks (and their endpoints) deleted.
    RemoveTasks { ids: Vec<String> },
    /// `secret create` / `config create`.
    CreateBlob { kind: Kind, blob: Box<Blob> },
    /// `secret update` / `config update`: only the labels change.
    UpdateBlob { kind: Kind, id: String, version: u64, labels: BTreeMap<String, String>, now: Nanos },
    /// `secret rm` / `config rm` (refused while a service uses it).
    RemoveBlob { kind: Kind, id: String },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::CreateCluster { cluster, .. } => write!(f, "create-cluster({})", cluster.id),
            Command::AddNode { node } => write!(f, "add-node({})", node.id),
            Command::UpdateNodeSpec { id, .. } => write!(f, "update-node-spec({id})"),
            Command::SetNodeStatus { id, state, .. } => {
                write!(f, "set-node-status({id}, {})", state.as_str())
            }
            Command::SetNodeDescription { id, .. } => write!(f, "set-node-description({id})"),
            Command::SetNodeRole { id, role, .. } => write!(f, "set-node-role({id}, {})", role.as_str()),
            Command::RemoveNode { id, .. } => write!(f, "remove-node({id})"),
            Command::RotateJoinTokens { .. } => write!(f, "rotate-join-tokens"),
            Command::UpdateClusterSpec { .. } => write!(f, "update-cluster-spec"),
            Command::ForceNewCluster { node_id, .. } => write!(f, "force-new-cluster({node_id})"),
            Command::CreateNetwork { network } => write!(f, "create-network({})", network.name),
            Command::RemoveNetwork { id } => write!(f, "remove-network({id})"),
            Command::AddEndpoint { endpoint } => write!(f, "add-endpoint({} {})", endpoint.id, endpoint.ip),
            Command::RemoveEndpoint { id } => write!(f, "remove-endpoint({id})"),
            Command::SetGossipKeys { keys, .. } => {
                write!(f, "set-gossip-keys({})", keys.first().map_or(0, |k| k.id))
            }
            Command::CreateService { service } => write!(f, "create-service({})", service.name()),
            Command::UpdateService { id, .. } => write!(f, "update-service({id})"),
            Command::RollbackService { id, .. } => write!(f, "rollback-service({id})"),
            Command::SetUpdateStatus { id, status, .. } => {
                write!(f, "set-update-status({id}, {})", status.state.as_str())
            }
            Command::RemoveService { id, .. } => write!(f, "remove-service({id})"),
            Command::PutTasks { tasks, .. } => write!(f, "put-tasks({})", tasks.len()),
            Command::SetTaskStatus { updates, .. } => write!(f, "set-task-status({})", updates.len()),
            Command::RemoveTasks { ids } => write!(f, "remove-tasks({})", ids.len()),
            Command::CreateBlob { kind, blob } => write!(f, "create-{}({})", kind.as_str(), blob.name),
            Command::UpdateBlob { kind, id, .. } => write!(f, "update-{}({id})", kind.as_str()),
            Command::RemoveBlob { kind, id } => write!(f, "remove-{}({id})", kind.as_str()),
        }
    }
}

/// The outcome of applying a command, returned to the proposer.
pub type Outcome = Result<(), ApiError>;

impl ClusterState {
    /// Applies `cmd`, committed at Raft log index `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Outcome {
        self.check(cmd)?;
        match cmd {
            Command::CreateCluster { cluster, node, ingress } => {
                let mut cluster = (**cluster).clone();
                cluster.meta.version = index;
                let mut node = (**node).clone();
                node.meta.version = index;
                let mut ingress = (**ingress).clone();
                ingress.meta.version = index;
                self.cluster = Some(cluster);
                self.nodes.insert(node.id.clone(), node);
                self.index.add_network(&ingress);
                self.networks.insert(ingress.id.clone(), ingress);
            }
            Command::AddNode { node } => {
                let mut node = (**node).clone();
                node.meta.version = index;
                self.nodes.insert(node.id.clone(), node);
            }
            Command::UpdateNodeSpec { id, spec, now, .. } => {
                let n = self.node_mut(id)?;
                n.spec = spec.clone();
                touch(&mut n.meta, index, *now);
            }
            Command::SetNodeStatus { id, state, message, addr, now } => {
                let n = self.node_mut(id)?;
                n.status.state = *state;
                n.status.message.clone_from(message);
                if let Some(a) = addr {
                    n.status.addr.clone_from(a);
                }
                touch(&mut n.meta, index, *now);
            }
            Command::SetNodeDescription { id, description, now } => {
                let n = self.node_mut(id)?;
                n.description = description.clone();
                touch(&mut n.meta, index, *now);
            }
            Command::SetNodeRole { id, role, manager, now } => {
                let n = self.node_mut(id)?;
                n.role = *role;
                n.manager.clone_from(manager);
                touch(&mut n.meta, index, *now);
            }
            Command::RemoveNode { id, .. } => {
                self.nodes.remove(id);
                let idx = &mut self.index;
                self.endpoints.retain(|_, e| {
                    let keep = e.node_id != *id;
                    if !keep {
                        idx.remove_endpoint(e);
                    }
                    keep
                });
                self.removed_nodes.insert(id.clone());
            }
            Command::CreateNetwork { network } => {
                let mut n = (**network).clone();
                n.meta.version = index;
                self.index.add_network(&n);
                self.networks.insert(n.id.clone(), n);
            }
            Command::RemoveNetwork { id } => {
                if self.index.has_endpoints(id) {
                    // Only endpoints of tasks going away are left (checked).
                    if let Some(n) = self.networks.get_mut(id) {
                        n.pending_delete = true;
                        n.meta.version = index;
                    }
                } else if let Some(n) = self.networks.remove(id) {
                    self.index.remove_network(&n);
                }
            }
            Command::AddEndpoint { endpoint } => {
                let mut e = (**endpoint).clone();
                e.meta.version = index;
                self.index.add_endpoint(&e);
                self.endpoints.insert(e.id.clone(), e);
            }
            Command::RemoveEndpoint { id } => {
                if let Some(e) = self.endpoints.remove(id) {
                    self.index.remove_endpoint(&e);
                }
                self.reap_pending_networks();
            }
            Command::SetGossipKeys { keys, now } => {
                let c = self.cluster_mut()?;
                c.gossip_keys.clone_from(keys);
                c.gossip_keys_rotated_at = *now;
                touch(&mut c.meta, index, *now);
            }
            Command::RotateJoinTokens { worker, manager, now } => {
                let c = self.cluster_mut()?;
                if let Some(w) = worker {
                    c.worker_token.clone_from(w);
                }
                if let Some(m) = manager {
                    c.manager_token.clone_from(m);
                }
                touch(&mut c.meta, index, *now);
            }
            Command::UpdateClusterSpec { spec, now, .. } => {
                let c = self.cluster_mut()?;
                c.spec = spec.clone();
                touch(&mut c.meta, index, *now);
            }
            Command::CreateService { service } => {
                let mut svc = (**service).clone();
                svc.meta.version = index;
                let a =
                    endpoint::allocate(self, &svc.id, &svc.spec, &svc.networks, None, svc.meta.created_at)?;
                self.apply_allocation(index, &a);
                svc.endpoint = a.endpoint;
                self.index.add_service(&svc);
                self.services.insert(svc.id.clone(), svc);
            }
            Command::UpdateService { id, spec, now, networks, .. } => {
                let svc = self.services.get(id).ok_or_else(|| no_such_service(id))?;
                let networks = networks.clone().unwrap_or_else(|| svc.networks.clone());
                self.replace_spec(index, id, (**spec).clone(), networks, *now)?;
                let svc = self.services.get_mut(id).ok_or_else(|| no_such_service(id))?;
                svc.update_status = None;
            }
            Command::RollbackService { id, now, .. } => {
                let svc = self.service(id)?;
                let previous = svc.previous_spec.clone().ok_or_else(|| no_previous_spec(id))?;
                let networks = self.spec_networks(&previous)?;
                self.replace_spec(index, id, previous, networks, *now)?;
                let svc = self.services.get_mut(id).ok_or_else(|| no_such_service(id))?;
                svc.update_status = Some(UpdateStatus {
                    state: UpdateState::RollbackStarted,
                    started_at: *now,
                    completed_at: 0,
                    message: "manually requested rollback".into(),
                });
            }
            Command::SetUpdateStatus { id, status, rollback } => {
                if *rollback {
                    let svc = self.service(id)?;
                    let previous = svc.previous_spec.clone().ok_or_else(|| no_previous_spec(id))?;
                    let networks = self.spec_networks(&previous)?;
                    self.replace_spec(index, id, previous, networks, status.started_at)?;
                    // swarmkit: a rollback on failure leaves no previous spec.
                    let svc = self.services.get_mut(id).ok_or_else(|| no_such_service(id))?;
                    svc.previous_spec = None;
                }
                let svc = self.services.get_mut(id).ok_or_else(|| no_such_service(id))?;
                svc.update_status = Some(status.clone());
                svc.meta.version = index;
            }
            Command::RemoveService { id, now } => {
                if let Some(svc) = self.services.remove(id) {
                    self.index.remove_service(&svc);
                    for v in &svc.endpoint.virtual_ips {
                        if let Some(e) = self.endpoints.remove(&v.endpoint_id) {
                            self.index.remove_endpoint(&e);
                        }
                    }
                }
                for t in self.tasks.values_mut().filter(|t| t.service_id == *id) {
                    if t.desired_state < TaskState::Remove {
                        t.desired_state = TaskState::Remove;
                        touch(&mut t.meta, index, *now);
                    }
                }
            }
            Command::PutTasks { tasks, endpoints } => {
                for e in endpoints {
                    let mut e = e.clone();
                    e.meta.version = index;
                    self.index.add_endpoint(&e);
                    self.endpoints.insert(e.id.clone(), e);
                }
                for t in tasks {
                    let mut t = t.clone();
                    t.meta.version = index;
                    if let Some(old) = self.tasks.get(&t.id) {
                        merge_task(old, &mut t);
                    }
                    self.tasks.insert(t.id.clone(), t);
                }
            }
            Command::SetTaskStatus { updates, now } => {
                for (id, status) in updates {
                    let Some(t) = self.tasks.get_mut(id) else { continue };
                    if status.state < t.status.state {
                        continue;
                    }
                    if status.state == TaskState::Running && t.running_at.is_none() {
                        t.running_at = Some(status.timestamp);
                    }
                    t.status = status.clone();
                    touch(&mut t.meta, index, *now);
                }
            }
            Command::CreateBlob { kind, blob } => {
                let mut b = (**blob).clone();
                b.meta.version = index;
                self.blobs_mut(*kind).insert(b.id.clone(), b);
            }
            Command::UpdateBlob { kind, id, labels, now, .. } => {
                if let Some(b) = self.blobs_mut(*kind).get_mut(id) {
                    b.labels.clone_from(labels);
                    touch(&mut b.meta, index, *now);
                }
            }
            Command::RemoveBlob { kind, id } => {
                self.blobs_mut(*kind).remove(id);
            }
            Command::RemoveTasks { ids } => {
                for id in ids {
                    let Some(t) = self.tasks.remove(id) else { continue };
                    for n in &t.networks {
                        if let Some(e) = self.endpoints.remove(&n.endpoint_id) {
                            self.index.remove_endpoint(&e);
                        }
                    }
                }
                self.reap_pending_networks();
            }
            Command::ForceNewCluster { state, node_id, manager, now } => {
                *self = (**state).clone();
                self.index = Index::build(self.networks.values(), self.endpoints.values());
                self.index.add_services(self.services.values());
                for n in self.nodes.values_mut() {
                    if n.id == *node_id {
                        n.role = Role::Manager;
                        n.spec.role = Role::Manager;
                        n.manager = Some(manager.clone());
                    } else if n.role == Role::Manager || n.manager.is_some() || n.spec.role == Role::Manager {
                        // Former managers are out of the Raft group; they stay
                        // listed as (down) workers until removed or rejoined.
                        n.role = Role::Worker;
                        n.spec.role = Role::Worker;
                        n.manager = None;
                        n.status.state = NodeState::Down;
                        n.status.message = "removed from the raft group by --force-new-cluster".into();
                    } else {
                        continue;
                    }
                    touch(&mut n.meta, index, *now);
                }
            }
        }
        Ok(())
    }

    /// The checks `apply` makes before changing anything; the leader also
    /// calls this before proposing.
    pub fn check(&self, cmd: &Command) -> Outcome {
        match cmd {
            Command::CreateCluster { .. } => {
                if self.cluster.is_some() {
                    return Err(ApiError::unavailable(crate::error::ALREADY_IN_SWARM));
                }
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return Err(ApiError::conflict(format!("node {} already exists", node.id)));
                }
            }
            Command::UpdateNodeSpec { id, version, spec, .. } => {
                let n = self.node(id)?;
                if n.meta.version != *version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
                if n.spec.role == Role::Manager && spec.role == Role::Worker && self.desired_managers() == 1 {
                    return Err(ApiError::precondition("attempting to demote the last manager of the swarm"));
                }
            }
            Command::SetNodeStatus { id, .. }
            | Command::SetNodeDescription { id, .. }
            | Command::SetNodeRole { id, .. } => {
                self.node(id)?;
            }
            Command::RemoveNode { id, force, .. } => {
                let n = self.node(id)?;
                if n.spec.role == Role::Manager || n.manager.is_some() {
                    return Err(ApiError::precondition(format!(
                        "node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
                    )));
                }
                if !force && n.status.state == NodeState::Ready {
                    return Err(ApiError::precondition(format!(
                        "node {id} is not down and can't be removed"
                    )));
                }
            }
            Command::RotateJoinTokens { .. } | Command::SetGossipKeys { .. } => {
                self.cluster()?;
            }
            Command::CreateNetwork { network } => self.check_new_network(network)?,
            Command::RemoveNetwork { id } => {
                let n = self.network(id)?;
                // swarmkit's order and texts: a service that attaches its
                // tasks to the network holds it (ingress: one publishing
                // through it), then a task that runs or is to run on it.
                if n.ingress {
                    let needs = |s: &&Service| s.endpoint.virtual_ips.iter().any(|v| v.network_id == *id);
                    if let Some(s) = self.services.values().find(needs) {
                        return Err(ApiError::precondition(format!(
                            "rpc error: code = FailedPrecondition desc = ingress network cannot be removed because service {} depends on it",
                            s.id
                        )));
                    }
                } else if let Some(s) = self.services.values().find(|s| s.networks.contains(id)) {
                    return Err(ApiError::precondition(format!(
                        "rpc error: code = FailedPrecondition desc = network {} is in use by service {}",
                        n.id, s.id
                    )));
                }
                let on = |t: &&Task| t.networks.iter().any(|tn| tn.network_id == *id);
                let live =
                    |t: &&Task| t.desired_state <= TaskState::Running && t.status.state <= TaskState::Running;
                if let Some(t) = self.tasks.values().filter(on).find(live) {
                    return Err(ApiError::precondition(format!(
                        "rpc error: code = FailedPrecondition desc = network {} is in use by task {}",
                        n.id, t.id
                    )));
                }
                // Endpoints of tasks that are going away do not hold a
                // network: it is removed once they are gone.
                let leaving: BTreeSet<&str> = self
                    .tasks
                    .values()
                    .filter(|t| t.desired_state > TaskState::Running)
                    .flat_map(|t| t.networks.iter().map(|n| n.endpoint_id.as_str()))
                    .collect();
                let held =
                    self.endpoints.values().any(|e| e.network_id == *id && !leaving.contains(e.id.as_str()));
                if held {
                    return Err(ApiError::precondition(format!(
                        "error while removing network: network {} id {} has active endpoints",
                        n.name, n.id
                    )));
                }
            }
            Command::AddEndpoint { endpoint } => self.check_new_endpoint(endpoint)?,
            Command::RemoveEndpoint { id } => {
                if !self.endpoints.contains_key(id) {
                    return Err(ApiError::not_found(format!("endpoint {id} not found")));
                }
            }
            Command::ForceNewCluster { state, node_id, .. } => {
                if self.cluster.is_some() {
                    return Err(ApiError::unavailable(crate::error::ALREADY_IN_SWARM));
                }
                state.cluster()?;
                state.node(node_id)?;
            }
            Command::UpdateClusterSpec { version, .. } => {
                if self.cluster()?.meta.version != *version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
            }
            Command::CreateService { service } => {
                self.cluster()?;
                if self.index.service_named(service.name()).is_some() {
                    return Err(ApiError::conflict(format!(
                        "rpc error: code = AlreadyExists desc = name conflicts with an existing object: service {} already exists",
                        service.name()
                    )));
                }
                if self.services.contains_key(&service.id) {
                    return Err(ApiError::conflict(format!("service {} already exists", service.id)));
                }
                for n in &service.networks {
                    self.network(n)?;
                }
                endpoint::allocate(self, &service.id, &service.spec, &service.networks, None, 0)?;
            }
            Command::UpdateService { id, version, spec, networks, .. } => {
                let svc = self.services.get(id).ok_or_else(|| no_such_service(id))?;
                if svc.meta.version != *version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
                if spec.name != svc.spec.name {
                    return Err(ApiError::invalid(
                        "rpc error: code = Unimplemented desc = renaming services is not supported",
                    ));
                }
                if let Some(networks) = networks {
                    for n in networks {
                        self.network(n)?;
                    }
                }
                let networks = networks.as_ref().unwrap_or(&svc.networks);
                endpoint::allocate(self, id, spec, networks, Some(&svc.endpoint), 0)?;
            }
            Command::RollbackService { id, version, .. } => {
                let svc = self.service(id)?;
                if svc.meta.version != *version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
                let previous = svc.previous_spec.as_ref().ok_or_else(|| no_previous_spec(id))?;
                let networks = self.spec_networks(previous)?;
                endpoint::allocate(self, id, previous, &networks, Some(&svc.endpoint), 0)?;
            }
            Command::SetUpdateStatus { id, rollback, .. } => {
                let svc = self.service(id)?;
                if *rollback {
                    let previous = svc.previous_spec.as_ref().ok_or_else(|| no_previous_spec(id))?;
                    let networks = self.spec_networks(previous)?;
                    endpoint::allocate(self, id, previous, &networks, Some(&svc.endpoint), 0)?;
                }
            }
            Command::RemoveService { id, .. } => {
                self.services.get(id).ok_or_else(|| no_such_service(id))?;
            }
            Command::PutTasks { tasks, endpoints } => {
                let mut seen = BTreeSet::new();
                for e in endpoints {
                    self.check_new_endpoint(e)?;
                    if !seen.insert((e.network_id.as_str(), e.ip.as_str())) {
                        return Err(ApiError::conflict(format!("address {} is already in use", e.ip)));
                    }
                }
                for t in tasks {
                    if !self.tasks.contains_key(&t.id) && !self.services.contains_key(&t.service_id) {
                        return Err(no_such_service(&t.service_id));
                    }
                }
            }
            Command::SetTaskStatus { .. } | Command::RemoveTasks { .. } => {}
            Command::CreateBlob { kind, blob } => {
                let k = kind.as_str();
                let lower = blob.name.to_lowercase();
                if self.blobs(*kind).values().any(|b| b.name.to_lowercase() == lower) {
                    return Err(ApiError::conflict(format!("{k} {} already exists", blob.name)));
                }
                if self.blobs(*kind).contains_key(&blob.id) {
                    return Err(ApiError::conflict(format!("{k} {} already exists", blob.id)));
                }
            }
            Command::UpdateBlob { kind, id, version, .. } => {
                let b = self
                    .blobs(*kind)
                    .get(id)
                    .ok_or_else(|| ApiError::not_found(format!("{} {id} not found", kind.as_str())))?;
                if b.meta.version != *version {
                    return Err(ApiError::invalid("update out of sequence"));
                }
            }
            Command::RemoveBlob { kind, id } => {
                let k = kind.as_str();
                let b = self
                    .blobs(*kind)
                    .get(id)
                    .ok_or_else(|| ApiError::not_found(format!("could not find {k} {id}")))?;
                let users = self.blob_users(*kind, id);
                if !users.is_empty() {
                    let what = if users.len() == 1 { "service" } else { "services" };
                    return Err(ApiError::invalid(format!(
                        "{k} '{}' is in use by the following {what}: {}",
                        b.name,
                        users.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Removes networks marked for deletion once no endpoint is left on them.
    fn reap_pending_networks(&mut self) {
        let done: Vec<String> = self
            .networks
            .values()
            .filter(|n| n.pending_delete && !self.index.has_endpoints(&n.id))
            .map(|n| n.id.clone())
            .collect();
        for id in done {
            if let Some(n) = self.networks.remove(&id) {
                self.index.remove_network(&n);
            }
        }
    }

    pub fn blobs(&self, kind: Kind) -> &BTreeMap<String, Blob> {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }

    fn blobs_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Blob> {
        match kind {
            Kind::Secret => &mut self.secrets,
            Kind::Config => &mut self.configs,
        }
    }

    /// Names of the services whose spec references blob `id`, sorted.
    pub fn blob_users(&self, kind: Kind, id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .filter(|s| secret::file_refs(&s.spec).iter().any(|r| r.kind == kind && r.id == id))
            .map(|s| s.name().to_owned())
            .collect();
        names.sort();
        names
    }

    /// A secret or config by full ID, exact name or ID prefix (docker's order).
    ///
    /// # Errors
    /// Not found, or an ambiguous prefix.
    pub fn resolve_blob(&self, kind: Kind, input: &str) -> Result<&Blob, ApiError> {
        let blobs = self.blobs(kind);
        if let Some(b) = blobs.get(input) {
            return Ok(b);
        }
        if let Some(b) = blobs.values().find(|b| b.name == input) {
            return Ok(b);
        }
        let by_prefix: Vec<&Blob> =
            blobs.values().filter(|b| !input.is_empty() && b.id.starts_with(input)).collect();
        match by_prefix.as_slice() {
            [b] => Ok(b),
            [] => Err(ApiError::not_found(format!("{} {input} not found", kind.as_str()))),
            many => Err(ApiError::invalid(format!(
                "{} {input} is ambiguous ({} matches found)",
                kind.as_str(),
                many.len()
            ))),
        }
    }

    /// Whether `ip` is taken on network `network_id` (by any endpoint).
    pub fn address_used(&self, network_id: &str, ip: &str) -> bool {
        self.index.address_used(network_id, ip)
    }

    /// Adds and removes the store endpoints of a service's virtual IPs.
    /// A service's new spec (an update or a rollback): addresses and ports
    /// allocated for it, the old spec kept as the previous one.
    fn replace_spec(
        &mut self,
        index: u64,
        id: &str,
        spec: bollard_stubs::models::ServiceSpec,
        networks: Vec<String>,
        now: Nanos,
    ) -> Outcome {
        let svc = self.service(id)?;
        let a = endpoint::allocate(self, id, &spec, &networks, Some(&svc.endpoint), now)?;
        self.apply_allocation(index, &a);
        let svc = self.services.get_mut(id).ok_or_else(|| no_such_service(id))?;
        svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
        svc.networks = networks;
        svc.endpoint = a.endpoint;
        touch(&mut svc.meta, index, now);
        Ok(())
    }

    /// The networks a spec attaches its tasks to, as IDs, in order (the
    /// ingress network cannot be named).
    pub fn spec_networks(&self, spec: &bollard_stubs::models::ServiceSpec) -> Result<Vec<String>, ApiError> {
        let task = spec.task_template.as_ref();
        let attachments = task.and_then(|t| t.networks.as_ref()).into_iter().flatten();
        let mut networks = Vec::new();
        for a in attachments.chain(spec.networks.iter().flatten()) {
            let target = a.target.as_deref().unwrap_or("");
            let n = self.resolve_network(target).map_err(|_| {
                ApiError::not_found(format!("rpc error: code = NotFound desc = network {target} not found"))
            })?;
            if n.pending_delete {
                return Err(ApiError::not_found(format!(
                    "rpc error: code = NotFound desc = network {target} not found"
                )));
            }
            if n.ingress {
                return Err(ApiError::invalid(format!(
                    "rpc error: code = InvalidArgument desc = Service cannot be explicitly attached to the ingress network {:?}",
                    n.name
                )));
            }
            if !networks.contains(&n.id) {
                networks.push(n.id.clone());
            }
        }
        Ok(networks)
    }

    fn apply_allocation(&mut self, index: u64, a: &endpoint::Allocation) {
        for id in &a.remove {
            if let Some(e) = self.endpoints.remove(id) {
                self.index.remove_endpoint(&e);
            }
        }
        for e in &a.add {
            let mut e = e.clone();
            e.meta.version = index;
            self.index.add_endpoint(&e);
            self.endpoints.insert(e.id.clone(), e);
        }
        self.reap_pending_networks();
    }

    pub fn service(&self, id: &str) -> Result<&Service, ApiError> {
        self.services.get(id).ok_or_else(|| no_such_service(id))
    }

    /// A service by full ID, name, or unique ID prefix (docker's lookup).
    pub fn resolve_service(&self, input: &str) -> Result<&Service, ApiError> {
        if let Some(s) = self.services.get(input) {
            return Ok(s);
        }
        if let Some(id) = self.index.service_named(input) {
            return self.service(id);
        }
        let mut found = self.services.range(input.to_owned()..).take_while(|(id, _)| id.starts_with(input));
        match (found.next(), found.next()) {
            (Some((_, s)), None) if !input.is_empty() => Ok(s),
            (Some(_), Some(_)) => {
                Err(ApiError::not_found(format!("service {input} is ambiguous (2 matches found)")))
            }
            _ => Err(no_such_service(input)),
        }
    }

    /// Tasks of one service.
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks.values().filter(move |t| t.service_id == service_id)
    }

    fn check_new_network(&self, n: &Network) -> Result<(), ApiError> {
        self.cluster()?;
        if self.index.network_named(&n.name).is_some() {
            return Err(ApiError::conflict(format!("network with name {} already exists", n.name)));
        }
        if self.networks.contains_key(&n.id) {
            return Err(ApiError::conflict(format!("network {} already exists", n.id)));
        }
        if n.ingress && self.networks.values().any(|x| x.ingress) {
            return Err(ApiError::conflict("an ingress network already exists"));
        }
        let subnet = Cidr::parse(&n.subnet).map_err(ApiError::invalid)?;
        if let Some(other) = self.index.overlapping(subnet).and_then(|id| self.networks.get(id)) {
            return Err(ApiError::conflict(format!(
                "invalid pool request: Pool overlaps with other one on this address space ({subnet} and {} of network {})",
                other.subnet, other.name
            )));
        }
        if let Some(other) = self.index.vni_owner(n.vni).and_then(|id| self.networks.get(id)) {
            return Err(ApiError::conflict(format!("VNI {} is in use by network {}", n.vni, other.name)));
        }
        Ok(())
    }

    fn check_new_endpoint(&self, e: &Endpoint) -> Result<(), ApiError> {
        let n = self.network(&e.network_id)?;
        // A task's endpoint has no node until the task is scheduled.
        if !e.node_id.is_empty() || !e.name.starts_with("task:") {
            self.node(&e.node_id)?;
        }
        if self.endpoints.contains_key(&e.id) {
            return Err(ApiError::conflict(format!("endpoint {} already exists", e.id)));
        }
        let subnet = Cidr::parse(&n.subnet).map_err(ApiError::internal)?;
        let ip: std::net::Ipv4Addr =
            e.ip.parse().map_err(|_| ApiError::invalid(format!("invalid address {}", e.ip)))?;
        let gateway = n.gateway.parse().map_err(|_| ApiError::internal("bad gateway"))?;
        check_ip(subnet, gateway, ip).map_err(ApiError::invalid)?;
        if self.index.address_used(&e.network_id, &e.ip) {
            return Err(ApiError::conflict(format!(
                "Address already in use: {} in network {}",
                e.ip, n.name
            )));
        }
        Ok(())
    }

    pub fn network(&self, id: &str) -> Result<&Network, ApiError> {
        self.networks.get(id).ok_or_else(|| ApiError::not_found(format!("network {id} not found")))
    }

    /// Finds a network by full ID, then name, then unique ID prefix.
    pub fn resolve_network(&self, input: &str) -> Result<&Network, ApiError> {
        if let Some(n) = self.networks.get(input) {
            return Ok(n);
        }
        if let Some(n) = self.index.network_named(input).and_then(|id| self.networks.get(id)) {
            return Ok(n);
        }
        let by_prefix: Vec<&Network> =
            self.networks.values().filter(|n| !input.is_empty() && n.id.starts_with(input)).collect();
        match by_prefix.as_slice() {
            [n] => Ok(n),
            [] => Err(ApiError::not_found(format!("network {input} not found"))),
            many => {
                Err(ApiError::invalid(format!("network {input} is ambiguous ({} matches found)", many.len())))
            }
        }
    }

    /// The lowest VNI from [`ipam::FIRST_VNI`](crate::manager::store::ipam::FIRST_VNI) in use
    /// neither here nor in `reserved`.
    pub fn next_free_vni(&self, reserved: &BTreeSet<u32>) -> Option<u32> {
        let first = crate::manager::store::ipam::FIRST_VNI;
        let mut want = first;
        let mut used = self.index.vnis().filter(move |v| *v >= first).peekable();
        while want <= crate::manager::store::ipam::MAX_VNI {
            if used.peek() == Some(&want) {
                used.next();
            } else if !reserved.contains(&want) {
                return Some(want);
            }
            want += 1;
        }
        None
    }

    /// Whether `c` overlaps a network's subnet.
    pub fn subnet_taken(&self, c: Cidr) -> bool {
        self.index.overlapping(c).is_some()
    }

    pub fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.cluster.as_ref().ok_or_else(|| ApiError::unavailable(crate::error::NOT_IN_SWARM))
    }

    fn cluster_mut(&mut self) -> Result<&mut Cluster, ApiError> {
        self.cluster.as_mut().ok_or_else(|| ApiError::unavailable(crate::error::NOT_IN_SWARM))
    }

    pub fn node(&self, id: &str) -> Result<&Node, ApiError> {
        self.nodes.get(id).ok_or_else(|| ApiError::not_found(format!("node {id} not found")))
    }

    fn node_mut(&mut self, id: &str) -> Result<&mut Node, ApiError> {
        self.nodes.get_mut(id).ok_or_else(|| ApiError::not_found(format!("node {id} not found")))
    }

    /// Finds a node by full ID, then name or hostname, then unique ID prefix
    /// (as `docker node inspect` resolves its argument).
    pub fn resolve_node(&self, input: &str) -> Result<&Node, ApiError> {
        if let Some(n) = self.nodes.get(input) {
            return Ok(n);
        }
        let by_name: Vec<&Node> =
            self.nodes.values().filter(|n| n.spec.name == input || n.description.hostname == input).collect();
        let candidates: Vec<&Node> = if by_name.is_empty() {
            self.nodes.values().filter(|n| !input.is_empty() && n.id.starts_with(input)).collect()
        } else {
            by_name
        };
        match candidates.as_slice() {
            [n] => Ok(n),
            [] => Err(ApiError::not_found(format!("node {input} not found"))),
            many => {
                Err(ApiError::invalid(format!("node {input} is ambiguous ({} matches found)", many.len())))
            }
        }
    }

    /// Nodes whose desired role is manager.
    pub fn desired_managers(&self) -> usize {
        self.nodes.values().filter(|n| n.spec.role == Role::Manager).count()
    }

    /// Nodes that are Raft members.
    pub fn raft_members(&self) -> impl Iterator<Item = (&Node, &ManagerInfo)> {
        self.nodes.values().filter_map(|n| n.manager.as_ref().map(|m| (n, m)))
    }

    pub fn node_by_raft_id(&self, raft_id: u64) -> Option<&Node> {
        self.nodes.values().find(|n| n.manager.as_ref().is_some_and(|m| m.raft_id == raft_id))
    }
}

/// A reconciler's write of a task it read a moment ago: desired state never
/// goes back, and a status the node reported since (states from ASSIGNED
/// on are the node's) is kept unless the write moves the state forward.
fn merge_task(old: &Task, new: &mut Task) {
    new.desired_state = new.desired_state.max(old.desired_state);
    let forward = new.status.state > old.status.state;
    let managers_own = new.status.state == old.status.state && old.status.state < TaskState::Assigned;
    if !forward && !managers_own {
        new.status = old.status.clone();
    }
    if new.node_id.is_empty() {
        new.node_id.clone_from(&old.node_id);
    }
    if new.running_at.is_none() {
        new.running_at = old.running_at;
    }
}

/// swarmkit's text for a rollback with nothing to go back to.
pub fn no_previous_spec(id: &str) -> ApiError {
    ApiError::precondition(format!(
        "rpc error: code = FailedPrecondition desc = service {id} does not have a previous spec"
    ))
}

/// Docker's text for an unknown service.
pub fn no_such_service(id: &str) -> ApiError {
    ApiError::not_found(format!("service {id} not found"))
}

fn touch(meta: &mut Meta, index: u64, now: Nanos) {
    meta.version = index;
    meta.updated_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::model::{Availability, NodeStatus};

    fn node(id: &str, role: Role, state: NodeState) -> Node {
        Node {
            id: id.into(),
            meta: Meta::default(),
            spec: NodeSpec {
                name: String::new(),
                labels: BTreeMap::new(),
                role,
                availability: Availability::Active,
            },
            role,
            description: NodeDescription { hostname: format!("host-{id}"), ..Default::default() },
            status: NodeStatus { state, message: String::new(), addr: String::new() },
            manager: (role == Role::Manager)
                .then(|| ManagerInfo { raft_id: 1, addr: "198.18.0.1:2377".into() }),
        }
    }

    fn cluster() -> Cluster {
        Cluster {
            id: "c".into(),
            meta: Meta::default(),
            spec: ClusterSpec::default(),
            root_ca_cert: String::new(),
            root_ca_key: String::new(),
            worker_token: "w".into(),
            manager_token: "m".into(),
            default_addr_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
            gossip_keys: Vec::new(),
            gossip_keys_rotated_at: 0,
        }
    }

    fn ingress() -> Network {
        Network {
            id: "ing".into(),
            meta: Meta::default(),
            name: "ingress".into(),
            driver: "overlay".into(),
            ingress: true,
            attachable: false,
            subnet: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            vni: 4096,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            pending_delete: false,
        }
    }

    fn initialized() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(
            1,
            &Command::CreateCluster {
                cluster: Box::new(cluster()),
                node: Box::new(node("m1", Role::Manager, NodeState::Ready)),
                ingress: Box::new(ingress()),
            },
        )
        .unwrap();
        s
    }

    #[test]
    fn create_cluster_once() {
        let mut s = initialized();
        assert_eq!(s.cluster().unwrap().meta.version, 1);
        assert_eq!(s.nodes["m1"].meta.version, 1);
        assert_eq!(s.networks["ing"].vni, 4096);
        let again = Command::CreateCluster {
            cluster: Box::new(cluster()),
            node: Box::new(node("m2", Role::Manager, NodeState::Ready)),
            ingress: Box::new(ingress()),
        };
        let before = s.clone();
        assert!(s.apply(2, &again).unwrap_err().message.starts_with("This node is already part of a swarm"));
        assert_eq!(s, before, "a refused command changes nothing");
    }

    #[test]
    fn last_manager_cannot_be_demoted() {
        let mut s = initialized();
        let mut spec = s.nodes["m1"].spec.clone();
        spec.role = Role::Worker;
        let cmd = Command::UpdateNodeSpec { id: "m1".into(), version: 1, spec: spec.clone(), now: 5 };
        assert_eq!(
            s.apply(2, &cmd).unwrap_err().message,
            "attempting to demote the last manager of the swarm"
        );
        // With a second manager it is allowed.
        s.apply(2, &Command::AddNode { node: Box::new(node("m2", Role::Manager, NodeState::Ready)) })
            .unwrap();
        s.apply(3, &cmd).unwrap();
        assert_eq!(s.nodes["m1"].spec.role, Role::Worker);
        assert_eq!(s.nodes["m1"].meta.version, 3);
        assert_eq!(s.nodes["m1"].meta.updated_at, 5);
    }

    #[test]
    fn stale_versions_are_refused() {
        let mut s = initialized();
        let spec = s.nodes["m1"].spec.clone();
        let cmd = Command::UpdateNodeSpec { id: "m1".into(), version: 0, spec, now: 0 };
        assert_eq!(s.apply(2, &cmd).unwrap_err().message, "update out of sequence");
    }

    #[test]
    fn remove_rules_match_swarmkit() {
        let mut s = initialized();
        s.apply(2, &Command::AddNode { node: Box::new(node("w1", Role::Worker, NodeState::Ready)) }).unwrap();
        let rm = |id: &str, force| Command::RemoveNode { id: id.into(), force, now: 0 };
        assert_eq!(
            s.apply(3, &rm("m1", true)).unwrap_err().message,
            "node m1 is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"
        );
        assert_eq!(
            s.apply(3, &rm("w1", false)).unwrap_err().message,
            "node w1 is not down and can't be removed"
        );
        s.apply(3, &rm("w1", true)).unwrap();
        assert!(!s.nodes.contains_key("w1"));
        assert!(s.removed_nodes.contains("w1"));
        assert_eq!(s.apply(4, &rm("w1", true)).unwrap_err().message, "node w1 not found");
    }

    #[test]
    fn down_nodes_are_removed_without_force() {
        let mut s = initialized();
        s.apply(2, &Command::AddNode { node: Box::new(node("w1", Role::Worker, NodeState::Ready)) }).unwrap();
        let down = Command::SetNodeStatus {
            id: "w1".into(),
            state: NodeState::Down,
            message: "heartbeat failure".into(),
            addr: None,
            now: 9,
        };
        s.apply(3, &down).unwrap();
        s.apply(4, &Command::RemoveNode { id: "w1".into(), force: false, now: 0 }).unwrap();
    }

    #[test]
    fn nodes_resolve_by_id_name_and_prefix() {
        let mut s = initialized();
        s.apply(2, &Command::AddNode { node: Box::new(node("abc1", Role::Worker, NodeState::Ready)) })
            .unwrap();
        s.apply(3, &Command::AddNode { node: Box::new(node("abc2", Role::Worker, NodeState::Ready)) })
            .unwrap();
        assert_eq!(s.resolve_node("abc1").unwrap().id, "abc1");
        assert_eq!(s.resolve_node("host-abc2").unwrap().id, "abc2");
        assert_eq!(s.resolve_node("m").unwrap().id, "m1");
        assert_eq!(s.resolve_node("abc").unwrap_err().message, "node abc is ambiguous (2 matches found)");
        assert_eq!(s.resolve_node("zzz").unwrap_err().message, "node zzz not found");
    }

    fn net(id: &str, name: &str, subnet: &str, vni: u32) -> Network {
        Network { id: id.into(), name: name.into(), subnet: subnet.into(), vni, ingress: false, ..ingress() }
    }

    fn ep(id: &str, net: &str, ip: &str) -> Endpoint {
        Endpoint {
            id: id.into(),
            meta: Meta::default(),
            network_id: net.into(),
            node_id: "m1".into(),
            ip: ip.into(),
            mac: String::new(),
            name: String::new(),
        }
    }

    #[test]
    fn networks_need_unique_names_subnets_and_vnis() {
        let mut s = initialized();
        let mut a = net("a", "front", "10.0.1.0/24", 4097);
        a.gateway = "10.0.1.1".into();
        s.apply(2, &Command::CreateNetwork { network: Box::new(a) }).unwrap();
        let cases = [
            (net("b", "front", "10.0.2.0/24", 4098), "network with name front already exists"),
            (
                net("b", "back", "10.0.1.128/25", 4098),
                "invalid pool request: Pool overlaps with other one on this address space (10.0.1.128/25 and 10.0.1.0/24 of network front)",
            ),
            (net("b", "back", "10.0.2.0/24", 4097), "VNI 4097 is in use by network front"),
        ];
        for (n, msg) in cases {
            assert_eq!(
                s.apply(3, &Command::CreateNetwork { network: Box::new(n) }).unwrap_err().message,
                msg
            );
        }
        assert_eq!(s.resolve_network("front").unwrap().id, "a");
        assert_eq!(s.resolve_network("zz").unwrap_err().message, "network zz not found");
        // A state decoded from a snapshot checks the same way.
        let decoded: ClusterState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(decoded, s, "the index is rebuilt on decode");
        let dup = net("b", "front", "10.0.2.0/24", 4098);
        assert!(decoded.check(&Command::CreateNetwork { network: Box::new(dup) }).is_err());
        // Removed, the name, subnet and VNI are free again.
        s.apply(4, &Command::RemoveNetwork { id: "a".into() }).unwrap();
        s.apply(5, &Command::CreateNetwork { network: Box::new(net("c", "front", "10.0.1.0/24", 4097)) })
            .unwrap();
    }

    #[test]
    fn free_vnis_skip_used_and_reserved_ones() {
        let mut s = initialized();
        assert_eq!(s.next_free_vni(&BTreeSet::new()), Some(4097), "ingress has 4096");
        assert_eq!(s.next_free_vni(&BTreeSet::from([4097, 4098])), Some(4099));
        s.apply(2, &Command::CreateNetwork { network: Box::new(net("a", "a", "10.0.1.0/24", 4097)) })
            .unwrap();
        s.apply(3, &Command::CreateNetwork { network: Box::new(net("b", "b", "10.0.2.0/24", 4099)) })
            .unwrap();
        assert_eq!(s.next_free_vni(&BTreeSet::new()), Some(4098), "the gap");
        assert_eq!(s.next_free_vni(&BTreeSet::from([4098])), Some(4100));
    }

    #[test]
    fn endpoints_get_unique_addresses_and_block_network_removal() {
        let mut s = initialized();
        let mut a = net("a", "front", "10.0.1.0/24", 4097);
        a.gateway = "10.0.1.1".into();
        s.apply(2, &Command::CreateNetwork { network: Box::new(a) }).unwrap();
        s.apply(3, &Command::AddEndpoint { endpoint: Box::new(ep("e1", "a", "10.0.1.2")) }).unwrap();
        let dup = Command::AddEndpoint { endpoint: Box::new(ep("e2", "a", "10.0.1.2")) };
        assert_eq!(
            s.apply(4, &dup).unwrap_err().message,
            "Address already in use: 10.0.1.2 in network front"
        );
        let gw = Command::AddEndpoint { endpoint: Box::new(ep("e2", "a", "10.0.1.1")) };
        assert!(s.apply(4, &gw).unwrap_err().message.contains("reserved"));
        let rm = Command::RemoveNetwork { id: "a".into() };
        assert_eq!(
            s.apply(5, &rm).unwrap_err().message,
            "error while removing network: network front id a has active endpoints"
        );
        s.apply(5, &Command::RemoveEndpoint { id: "e1".into() }).unwrap();
        s.apply(6, &rm).unwrap();
        assert!(!s.networks.contains_key("a"));
    }

    #[test]
    fn a_network_a_service_attaches_to_is_not_removed() {
        let mut s = initialized();
        s.apply(2, &Command::CreateNetwork { network: Box::new(net("a", "front", "10.0.1.0/24", 4097)) })
            .unwrap();
        let ingress = s.networks.values().find(|n| n.ingress).unwrap().id.clone();
        let mut svc = crate::manager::controlapi::new_service(
            "s1".into(),
            bollard_stubs::models::ServiceSpec::default(),
            vec!["a".into()],
            0,
        );
        svc.endpoint.virtual_ips.push(endpoint::VirtualIp {
            network_id: ingress.clone(),
            ip: "10.0.0.2".into(),
            prefix: 24,
            endpoint_id: "e".into(),
        });
        s.services.insert("s1".into(), svc);
        let rm = |id: &str| Command::RemoveNetwork { id: id.into() };
        assert_eq!(
            s.apply(4, &rm("a")).unwrap_err().message,
            "rpc error: code = FailedPrecondition desc = network a is in use by service s1"
        );
        assert_eq!(
            s.apply(4, &rm(&ingress)).unwrap_err().message,
            "rpc error: code = FailedPrecondition desc = ingress network cannot be removed because service s1 depends on it"
        );
        assert!(s.networks.contains_key("a") && s.networks.contains_key(&ingress), "nothing changed");
        s.services.remove("s1");
        s.apply(4, &rm("a")).unwrap();
        s.apply(5, &rm(&ingress)).unwrap();
        assert!(s.networks.is_empty());
    }

    #[test]
    fn a_network_held_only_by_leaving_tasks_goes_with_their_endpoints() {
        let mut s = initialized();
        let mut a = net("a", "front", "10.0.1.0/24", 4097);
        a.gateway = "10.0.1.1".into();
        s.apply(2, &Command::CreateNetwork { network: Box::new(a) }).unwrap();
        s.apply(3, &Command::AddEndpoint { endpoint: Box::new(ep("e1", "a", "10.0.1.2")) }).unwrap();
        let mut t: Task = serde_json::from_value(serde_json::json!({
            "id": "t1", "meta": {"version": 0, "created_at": 0, "updated_at": 0}, "service_id": "gone",
            "slot": 1, "node_id": "n", "spec": {}, "spec_version": 1, "desired_state": "running",
            "status": {"state": "running", "message": "", "timestamp": 0},
        }))
        .unwrap();
        t.networks.push(crate::manager::store::task::TaskNetwork {
            network_id: "a".into(),
            endpoint_id: "e1".into(),
            ip: "10.0.1.2".into(),
            mac: String::new(),
            prefix: 24,
        });
        s.tasks.insert("t1".into(), t);
        let rm = Command::RemoveNetwork { id: "a".into() };
        assert_eq!(
            s.apply(4, &rm).unwrap_err().message,
            "rpc error: code = FailedPrecondition desc = network a is in use by task t1",
            "a running task holds it"
        );
        // A task that has ended but is to run again keeps its endpoint: held too.
        s.tasks.get_mut("t1").unwrap().status.state = TaskState::Failed;
        assert!(s.apply(4, &rm).unwrap_err().message.contains("has active endpoints"));
        s.tasks.get_mut("t1").unwrap().desired_state = TaskState::Remove;
        s.apply(5, &rm).unwrap();
        assert!(s.networks["a"].pending_delete, "kept until the task's endpoint goes");
        assert!(
            s.spec_networks(
                &serde_json::from_value(
                    serde_json::json!({"TaskTemplate": {"Networks": [{"Target": "front"}]}})
                )
                .unwrap()
            )
            .is_err()
        );
        s.apply(6, &Command::RemoveTasks { ids: vec!["t1".into()] }).unwrap();
        assert!(!s.networks.contains_key("a"));
    }

    #[test]
    fn removing_a_node_removes_its_endpoints() {
        let mut s = initialized();
        s.apply(2, &Command::AddNode { node: Box::new(node("w1", Role::Worker, NodeState::Down)) }).unwrap();
        let mut e = ep("e1", "ing", "10.0.0.2");
        e.node_id = "w1".into();
        s.apply(3, &Command::AddEndpoint { endpoint: Box::new(e) }).unwrap();
        s.apply(4, &Command::RemoveNode { id: "w1".into(), force: false, now: 0 }).unwrap();
        assert!(s.endpoints.is_empty());
    }

    #[test]
    fn force_new_cluster_keeps_nodes_and_leaves_one_manager() {
        let mut s = initialized();
        let mut m2 = node("m2", Role::Manager, NodeState::Ready);
        m2.manager = Some(ManagerInfo { raft_id: 2, addr: "198.18.0.2:2377".into() });
        s.apply(2, &Command::AddNode { node: Box::new(m2) }).unwrap();
        s.apply(3, &Command::AddNode { node: Box::new(node("w1", Role::Worker, NodeState::Ready)) }).unwrap();
        let info = ManagerInfo { raft_id: 77, addr: "198.18.0.1:2377".into() };
        let old = Box::new(s.clone());
        let mut s = ClusterState::default();
        let cmd =
            Command::ForceNewCluster { state: old, node_id: "m1".into(), manager: info.clone(), now: 1 };
        s.apply(1, &cmd).unwrap();
        assert!(s.check(&cmd).is_err(), "only on a fresh raft group");
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.nodes["m1"].manager, Some(info));
        assert_eq!(s.nodes["m2"].role, Role::Worker);
        assert_eq!(s.nodes["m2"].manager, None);
        assert_eq!(s.nodes["m2"].status.state, NodeState::Down);
        assert_eq!(s.nodes["w1"].meta.version, 3, "workers untouched");
        assert_eq!(s.raft_members().count(), 1);
        assert_eq!(s.cluster().unwrap().id, "c", "the cluster keeps its identity");
    }
}
