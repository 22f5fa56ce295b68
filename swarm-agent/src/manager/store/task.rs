//! Services and tasks as the store keeps them. A service's spec is Docker's
//! own `ServiceSpec` (what `service inspect` shows is what was given, as
//! swarmkit keeps its API object); tasks are ours, with swarmkit's state
//! machine: observed state only moves forward, desired state never goes back.

use bollard_stubs::models as m;
use serde::{Deserialize, Serialize};

use crate::manager::store::model::{Meta, Nanos};

/// swarmkit's task states, in their order (`api/types.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Past RUNNING: the task will not run (again).
    pub fn is_terminal(self) -> bool {
        self > TaskState::Running
    }
}

/// What a task last reported (or what the manager side set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    /// When the state was entered.
    pub timestamp: Nanos,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
}

/// An address a task holds on one of its networks (an endpoint in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNetwork {
    pub network_id: String,
    pub endpoint_id: String,
    pub ip: String,
    pub mac: String,
    /// The network's prefix length.
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub meta: Meta,
    pub service_id: String,
    /// Replicated services: 1..N. Global services: 0.
    pub slot: u64,
    /// Empty until the scheduler assigns it (preset for global tasks).
    pub node_id: String,
    /// The service's task template when this task was made.
    pub spec: m::TaskSpec,
    /// The service's spec version this task was made from.
    pub spec_version: u64,
    pub desired_state: TaskState,
    pub status: TaskStatus,
    #[serde(default)]
    pub networks: Vec<TaskNetwork>,
    /// When it first reported RUNNING (what the updater's `Monitor` counts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_at: Option<Nanos>,
    /// A task made with desired state READY may be released to RUNNING from
    /// then on (the updater's stop-first tasks: at once). Unset: the restart
    /// policy's delay after it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<Nanos>,
}

impl Task {
    /// Desired state at most RUNNING: the orchestrator wants it to run.
    pub fn is_runnable(&self) -> bool {
        self.desired_state <= TaskState::Running
    }

    /// `<service>.<slot>` or `<service>.<node>` (docker's task name).
    pub fn name(&self, service_name: &str) -> String {
        if self.slot > 0 {
            format!("{service_name}.{}", self.slot)
        } else {
            format!("{service_name}.{}", self.node_id)
        }
    }

    /// `<service>.<slot|node>.<task id>`: the container's name.
    pub fn container_name(&self, service_name: &str) -> String {
        format!("{}.{}", self.name(service_name), self.id)
    }
}

/// Where a rolling update stands (Docker's `UpdateStatus.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

/// A service's rollout status (Docker's `UpdateStatus`); set by the updater
/// and by `service rollback`, cleared by every other update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    pub started_at: Nanos,
    /// 0 until the update is over.
    #[serde(default)]
    pub completed_at: Nanos,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub meta: Meta,
    pub spec: m::ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<m::ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<UpdateStatus>,
    /// Network IDs the service's tasks attach to (resolved from the spec).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Virtual IPs and published ports (allocated by the store).
    #[serde(default)]
    pub endpoint: crate::manager::store::endpoint::ServiceEndpoint,
}

/// How a service runs its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replicated { replicas: u64, max_per_node: u64 },
    Global,
}

impl Service {
    pub fn name(&self) -> &str {
        self.spec.name.as_deref().unwrap_or("")
    }

    pub fn mode(&self) -> Mode {
        let max_per_node = self
            .spec
            .task_template
            .as_ref()
            .and_then(|t| t.placement.as_ref())
            .and_then(|p| p.max_replicas)
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        match self.spec.mode.as_ref() {
            Some(mode) if mode.global.is_some() => Mode::Global,
            Some(mode) => Mode::Replicated {
                replicas: mode
                    .replicated
                    .as_ref()
                    .and_then(|r| r.replicas)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(1),
                max_per_node,
            },
            None => Mode::Replicated { replicas: 1, max_per_node },
        }
    }

    pub fn task_spec(&self) -> m::TaskSpec {
        self.spec.task_template.clone().unwrap_or_default()
    }

    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::from_spec(self.spec.task_template.as_ref().and_then(|t| t.restart_policy.as_ref()))
    }
}

/// `--restart-condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartCondition {
    None,
    OnFailure,
    Any,
}

/// A service's restart policy with docker's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// ns; default 5 s.
    pub delay: i64,
    /// 0 = unlimited.
    pub max_attempts: u64,
    /// ns; 0 = unbounded.
    pub window: i64,
}

pub const DEFAULT_RESTART_DELAY: i64 = 5_000_000_000;

impl RestartPolicy {
    pub fn from_spec(p: Option<&m::TaskSpecRestartPolicy>) -> RestartPolicy {
        use m::TaskSpecRestartPolicyConditionEnum as C;
        let condition = match p.and_then(|p| p.condition) {
            Some(C::NONE) => RestartCondition::None,
            Some(C::ON_FAILURE) => RestartCondition::OnFailure,
            _ => RestartCondition::Any,
        };
        RestartPolicy {
            condition,
            delay: p.and_then(|p| p.delay).unwrap_or(DEFAULT_RESTART_DELAY).max(0),
            max_attempts: p.and_then(|p| p.max_attempts).and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
            window: p.and_then(|p| p.window).unwrap_or(0).max(0),
        }
    }
}

/// The image a task spec runs.
pub fn image_of(spec: &m::TaskSpec) -> &str {
    spec.container_spec.as_ref().and_then(|c| c.image.as_deref()).unwrap_or("")
}
