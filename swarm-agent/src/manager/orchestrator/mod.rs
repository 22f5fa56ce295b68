//! The leader's reconcilers for services, as pure functions of the store:
//! the replicated and global orchestrators (with the restart supervisor and
//! the constraint enforcer folded in), the allocator, the scheduler and the
//! task reaper. [`plan`] runs them in that order over one working copy, so a
//! new task can go NEW → PENDING → ASSIGNED in one Raft entry, and returns
//! the commands to propose plus when to look again (restart delays).
//!
//! Nothing here touches Raft, sockets or the clock: `now` and the ID source
//! are arguments, so every decision is unit-tested.

pub mod global;
pub mod reaper;
pub mod replicated;
pub mod restart;
pub mod update;

use std::collections::BTreeMap;

use crate::manager::{
    allocator, scheduler,
    store::{
        model::{Availability, Endpoint, Meta, Nanos, Node, NodeState},
        state::{ClusterState, Command},
        task::{Mode, Service, Task, TaskState, TaskStatus, UpdateStatus},
    },
};

/// The tasks as the store has them, plus this round's changes.
pub struct Working<'a> {
    pub state: &'a ClusterState,
    pub now: Nanos,
    /// Tasks created or changed this round, by ID.
    pub changed: BTreeMap<String, Task>,
    /// Endpoints the allocator made this round.
    pub endpoints: Vec<Endpoint>,
    /// Tasks to delete.
    pub removed: Vec<String>,
    /// The earliest time something is due (a restart delay ending).
    pub wake_at: Option<Nanos>,
    /// Update statuses the updater set this round (and whether the
    /// previous spec comes back with it), by service.
    pub update_statuses: BTreeMap<String, (UpdateStatus, bool)>,
    new_id: &'a mut dyn FnMut() -> String,
}

impl<'a> Working<'a> {
    pub fn new(state: &'a ClusterState, now: Nanos, new_id: &'a mut dyn FnMut() -> String) -> Working<'a> {
        Working {
            state,
            now,
            changed: BTreeMap::new(),
            endpoints: Vec::new(),
            removed: Vec::new(),
            wake_at: None,
            update_statuses: BTreeMap::new(),
            new_id,
        }
    }

    /// The current version of every task (store, overridden by this round).
    pub fn tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.state
            .tasks
            .values()
            .map(|t| self.changed.get(&t.id).unwrap_or(t))
            .chain(self.changed.values().filter(|t| !self.state.tasks.contains_key(&t.id)))
    }

    pub fn tasks_of<'s>(&'s self, service_id: &'s str) -> impl Iterator<Item = &'s Task> + 's {
        self.tasks().filter(move |t| t.service_id == service_id)
    }

    pub fn put(&mut self, t: Task) {
        self.changed.insert(t.id.clone(), t);
    }

    pub fn wake(&mut self, at: Nanos) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    pub fn set_update_status(&mut self, service_id: &str, status: UpdateStatus) {
        let rollback = self.update_statuses.get(service_id).is_some_and(|(_, r)| *r);
        self.update_statuses.insert(service_id.to_owned(), (status, rollback));
    }

    /// An update rolled back on failure: the previous spec comes back.
    pub fn roll_back(&mut self, service_id: &str, status: UpdateStatus) {
        self.update_statuses.insert(service_id.to_owned(), (status, true));
    }

    /// Marks a task's desired state (never backwards).
    pub fn set_desired(&mut self, t: &Task, desired: TaskState) {
        if t.desired_state >= desired {
            return;
        }
        let mut t = t.clone();
        t.desired_state = desired;
        self.put(t);
    }

    /// A new task for `service` in `slot` (or on `node_id` for global).
    pub fn create_task(&mut self, service: &Service, slot: u64, node_id: &str, desired: TaskState) -> Task {
        let now = self.now;
        let t = Task {
            id: (self.new_id)(),
            meta: Meta { version: 0, created_at: now, updated_at: now },
            service_id: service.id.clone(),
            slot,
            node_id: node_id.to_owned(),
            spec: service.task_spec(),
            spec_version: service.meta.version,
            desired_state: desired,
            status: TaskStatus {
                state: TaskState::New,
                message: "created".into(),
                timestamp: now,
                ..Default::default()
            },
            networks: Vec::new(),
            running_at: None,
            start_at: None,
        };
        self.put(t.clone());
        t
    }

    pub fn into_commands(self) -> (Vec<Command>, Option<Nanos>) {
        let mut cmds = Vec::new();
        if !self.changed.is_empty() || !self.endpoints.is_empty() {
            cmds.push(Command::PutTasks {
                tasks: self.changed.into_values().collect(),
                endpoints: self.endpoints,
            });
        }
        if !self.removed.is_empty() {
            cmds.push(Command::RemoveTasks { ids: self.removed });
        }
        for (id, (status, rollback)) in self.update_statuses {
            cmds.push(Command::SetUpdateStatus { id, status, rollback });
        }
        (cmds, self.wake_at)
    }
}

/// Can a node keep running tasks? Not when it is gone, Down or drained
/// (swarmkit's `InvalidNode`).
pub fn node_keeps_tasks(node: Option<&Node>) -> bool {
    node.is_some_and(|n| n.status.state != NodeState::Down && n.spec.availability != Availability::Drain)
}

/// One round of every reconciler. Returns the commands to propose (at most
/// one `PutTasks` and one `RemoveTasks`) and when a delayed action is due.
pub fn plan(
    state: &ClusterState,
    now: Nanos,
    new_id: &mut dyn FnMut() -> String,
) -> (Vec<Command>, Option<Nanos>) {
    let mut w = Working::new(state, now, new_id);
    for svc in state.services.values() {
        match svc.mode() {
            Mode::Replicated { replicas, .. } => replicated::reconcile(&mut w, svc, replicas),
            Mode::Global => global::reconcile(&mut w, svc),
        }
        update::reconcile(&mut w, svc);
    }
    allocator::allocate(&mut w);
    scheduler::schedule(&mut w);
    reaper::reap(&mut w);
    w.into_commands()
}

pub mod testutil {
    //! Synthetic cluster states, for reconciler tests and the scheduling
    //! benchmark (`swarm-agent debug bench-scheduler`).
    use std::collections::HashMap;

    use bollard_stubs::models as m;

    use super::{
        Availability, ClusterState, Meta, Nanos, Node, NodeState, Service, Task, TaskState, TaskStatus, plan,
    };
    use crate::{
        ca::Role,
        manager::store::{
            model::{Cluster, ClusterSpec, Network, NodeDescription, NodeSpec, NodeStatus},
            state::Command,
        },
    };

    pub fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        s.cluster = Some(Cluster {
            id: "cluster".into(),
            meta: Meta::default(),
            spec: ClusterSpec::default(),
            root_ca_cert: String::new(),
            root_ca_key: String::new(),
            worker_token: String::new(),
            manager_token: String::new(),
            default_addr_pool: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
            gossip_keys: Vec::new(),
            gossip_keys_rotated_at: 0,
        });
        s
    }

    /// An overlay network `id` called `name`.
    pub fn network(id: &str, name: &str, subnet: &str, gateway: &str, vni: u32, ingress: bool) -> Network {
        Network {
            id: id.into(),
            meta: Meta::default(),
            name: name.into(),
            driver: "overlay".into(),
            ingress,
            attachable: false,
            subnet: subnet.into(),
            gateway: gateway.into(),
            vni,
            labels: std::collections::BTreeMap::default(),
            options: std::collections::BTreeMap::default(),
            pending_delete: false,
        }
    }

    pub fn add_node(s: &mut ClusterState, id: &str) {
        let node = Node {
            id: id.into(),
            meta: Meta::default(),
            spec: NodeSpec {
                name: String::new(),
                labels: std::collections::BTreeMap::default(),
                role: Role::Worker,
                availability: Availability::Active,
            },
            role: Role::Worker,
            description: NodeDescription {
                hostname: format!("host-{id}"),
                os: "linux".into(),
                arch: "x86_64".into(),
                nano_cpus: 2_000_000_000,
                memory_bytes: 4 << 30,
                ..Default::default()
            },
            status: NodeStatus { state: NodeState::Ready, message: String::new(), addr: "198.18.0.1".into() },
            manager: None,
        };
        s.apply(1, &Command::AddNode { node: Box::new(node) }).unwrap();
    }

    pub fn spec(name: &str, replicas: Option<i64>) -> m::ServiceSpec {
        m::ServiceSpec {
            name: Some(name.into()),
            task_template: Some(m::TaskSpec {
                container_spec: Some(m::TaskSpecContainerSpec {
                    image: Some("busybox".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            mode: Some(match replicas {
                Some(n) => m::ServiceSpecMode {
                    replicated: Some(m::ServiceSpecModeReplicated { replicas: Some(n) }),
                    ..Default::default()
                },
                #[allow(clippy::zero_sized_map_values)]
                None => m::ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() },
            }),
            ..Default::default()
        }
    }

    pub fn add_service(s: &mut ClusterState, id: &str, spec: m::ServiceSpec) {
        let svc = Service {
            id: id.into(),
            meta: Meta::default(),
            spec,
            previous_spec: None,
            update_status: None,
            networks: Vec::new(),
            endpoint: crate::manager::store::endpoint::ServiceEndpoint::default(),
        };
        s.apply(2, &Command::CreateService { service: Box::new(svc) }).unwrap();
    }

    /// Runs `plan` and applies its commands until nothing changes; returns
    /// the number of rounds.
    pub fn converge(s: &mut ClusterState, now: Nanos, next: &mut u64) -> usize {
        for round in 0..50 {
            let mut new_id = || {
                *next += 1;
                format!("task{:04}", *next)
            };
            let (cmds, _) = plan(s, now, &mut new_id);
            if cmds.is_empty() {
                return round;
            }
            for c in cmds {
                s.apply(100 + round as u64, &c).unwrap();
            }
        }
        panic!("did not converge");
    }

    /// Moves every assigned task whose desired state is RUNNING to RUNNING
    /// and every one that should stop to SHUTDOWN, as agents would.
    pub fn agents_run(s: &mut ClusterState, now: Nanos) {
        let updates: Vec<(String, TaskStatus)> = s
            .tasks
            .values()
            .filter(|t| t.status.state >= TaskState::Assigned && !t.status.state.is_terminal())
            .filter_map(|t| {
                let state = match t.desired_state.cmp(&TaskState::Running) {
                    std::cmp::Ordering::Equal => TaskState::Running,
                    std::cmp::Ordering::Greater => TaskState::Shutdown,
                    std::cmp::Ordering::Less => return None,
                };
                (state != t.status.state).then(|| {
                    (
                        t.id.clone(),
                        TaskStatus {
                            state,
                            message: state.as_str().into(),
                            timestamp: now,
                            ..Default::default()
                        },
                    )
                })
            })
            .collect();
        if !updates.is_empty() {
            s.apply(500, &Command::SetTaskStatus { updates, now }).unwrap();
        }
    }

    pub fn running<'a>(s: &'a ClusterState, service: &str) -> Vec<&'a Task> {
        s.tasks
            .values()
            .filter(|t| t.service_id == service && t.status.state == TaskState::Running && t.is_runnable())
            .collect()
    }
}
