//! `docker service logs`: a log broker on the leader, as swarmkit has one.
//! A manager's engine subscribes (the tasks and nodes come from the store);
//! each node with some of those tasks learns of the subscription by long
//! poll, reads its containers' logs and publishes the lines; the engine
//! polls the broker and streams them to the client. Subscriptions live in
//! the leader's memory and end when nobody polls them.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Json, extract::State};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::Manager;
use crate::{
    ca::Role,
    error::ApiError,
    manager::store::{model::NodeState, task::TaskState},
    rpc::{Caller, messages::path},
};

/// An unpolled subscription goes after this long.
const IDLE: Duration = Duration::from_secs(15);
/// Most lines buffered per subscription.
const MAX_BUFFER: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMsg {
    pub task_id: String,
    pub node_id: String,
    pub service_id: String,
    pub stream: String,
    /// RFC 3339 with nanoseconds.
    pub time: String,
    pub log: String,
}

/// What a node is asked to send for one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogWork {
    pub sub_id: String,
    pub tasks: Vec<String>,
    pub tail: Option<usize>,
    pub follow: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkRequest {
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkResponse {
    pub subs: Vec<LogWork>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    pub sub_id: String,
    pub lines: Vec<LogMsg>,
    /// This node has sent everything (no follow).
    pub done: bool,
}

struct Sub {
    /// Node -> its tasks in the subscription.
    nodes: BTreeMap<String, Vec<String>>,
    tail: Option<usize>,
    follow: bool,
    lines: VecDeque<LogMsg>,
    done: BTreeSet<String>,
    last_poll: Instant,
}

/// The leader's subscriptions.
#[derive(Default)]
pub struct Broker {
    subs: std::sync::Mutex<BTreeMap<String, Sub>>,
    /// Wakes node long polls (a new subscription) and engine polls (lines).
    changed: Notify,
}

impl Broker {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Sub>> {
        self.subs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expire(&self) {
        self.lock().retain(|_, s| s.last_poll.elapsed() < IDLE);
    }

    fn work_for(&self, node: &str) -> Vec<LogWork> {
        self.lock()
            .iter()
            .filter(|(_, s)| !s.done.contains(node))
            .filter_map(|(id, s)| {
                s.nodes.get(node).map(|tasks| LogWork {
                    sub_id: id.clone(),
                    tasks: tasks.clone(),
                    tail: s.tail,
                    follow: s.follow,
                })
            })
            .collect()
    }
}

impl Manager {
    /// A subscription for the tasks of `service_id` (or one task).
    pub(super) fn log_subscribe(
        &self,
        service_id: Option<String>,
        task_id: Option<String>,
        tail: Option<usize>,
        follow: bool,
    ) -> Result<String, ApiError> {
        let nodes = self.state.read(|s| -> Result<BTreeMap<String, Vec<String>>, ApiError> {
            let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let down: BTreeSet<&str> = s
                .nodes
                .values()
                .filter(|n| n.status.state == NodeState::Down)
                .map(|n| n.id.as_str())
                .collect();
            let tasks: Vec<_> = match (&service_id, &task_id) {
                (_, Some(t)) => {
                    vec![s.tasks.get(t).ok_or_else(|| ApiError::not_found(format!("task {t} not found")))?]
                }
                (Some(svc), None) => s.tasks_of(svc).collect(),
                (None, None) => Vec::new(),
            };
            for t in tasks {
                if t.node_id.is_empty()
                    || t.status.state < TaskState::Starting
                    || down.contains(t.node_id.as_str())
                {
                    continue;
                }
                nodes.entry(t.node_id.clone()).or_default().push(t.id.clone());
            }
            Ok(nodes)
        })?;
        self.logs.expire();
        let id = crate::util::ids::new_id();
        self.logs.lock().insert(
            id.clone(),
            Sub {
                nodes,
                tail,
                follow,
                lines: VecDeque::new(),
                done: BTreeSet::new(),
                last_poll: Instant::now(),
            },
        );
        self.logs.changed.notify_waiters();
        Ok(id)
    }

    /// Lines gathered for a subscription (waiting a little for some), and
    /// whether it has ended.
    pub(super) async fn log_poll(&self, sub: &str) -> Result<(Vec<LogMsg>, bool), ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            let notified = self.logs.changed.notified();
            {
                let mut subs = self.logs.lock();
                let s = subs
                    .get_mut(sub)
                    .ok_or_else(|| ApiError::not_found(format!("log subscription {sub} not found")))?;
                s.last_poll = Instant::now();
                let finished = !s.follow && s.nodes.keys().all(|n| s.done.contains(n));
                if !s.lines.is_empty() || finished || tokio::time::Instant::now() >= deadline {
                    let lines: Vec<LogMsg> = s.lines.drain(..).collect();
                    if finished {
                        subs.remove(sub);
                    }
                    return Ok((lines, finished));
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    async fn log_work(&self, caller: Caller, req: WorkRequest) -> Result<WorkResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(req.wait_ms).min(self.write_timeout() / 2);
        loop {
            let notified = self.logs.changed.notified();
            let subs = self.logs.work_for(&id.node_id);
            if !subs.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(WorkResponse { subs });
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    fn log_publish(&self, caller: Caller, req: PublishRequest) -> Result<WorkResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        {
            let mut subs = self.logs.lock();
            let s = subs.get_mut(&req.sub_id).ok_or_else(|| ApiError::not_found("log subscription gone"))?;
            let mine = s.nodes.get(&id.node_id).cloned().unwrap_or_default();
            for l in req.lines.into_iter().filter(|l| mine.contains(&l.task_id)) {
                if s.lines.len() < MAX_BUFFER {
                    s.lines.push_back(LogMsg { node_id: id.node_id.clone(), ..l });
                }
            }
            if req.done {
                s.done.insert(id.node_id.clone());
            }
        }
        self.logs.changed.notify_waiters();
        Ok(WorkResponse::default())
    }
}

pub(super) async fn h_log_work(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<WorkRequest>,
) -> Result<Json<WorkResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let (c, mm) = (caller.clone(), m.clone());
    m.on_leader(&caller, path::LOG_WORK, false, req, |req| async move { mm.log_work(c, req).await })
        .await
        .map(Json)
}

pub(super) async fn h_log_publish(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<PublishRequest>,
) -> Result<Json<WorkResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let (c, mm) = (caller.clone(), m.clone());
    m.on_leader(&caller, path::LOG_PUBLISH, false, req, |req| async move { mm.log_publish(c, req) })
        .await
        .map(Json)
}
