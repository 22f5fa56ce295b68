//! The manager's service work: the control API for services and tasks, the
//! leader's reconcile loop (running the pure reconcilers of
//! `orchestrator::plan` on every store change), and the dispatcher session
//! (assignments down, batched task status up).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use axum::{Json, extract::State};
use tokio::sync::{mpsc, oneshot};

use super::{Manager, now_nanos};
use crate::{
    ca::Role,
    error::ApiError,
    manager::{
        controlapi, dispatcher, orchestrator,
        store::{
            state::{ClusterState, Command},
            task::{Mode, Service, TaskState, TaskStatus},
        },
    },
    rpc::{
        Caller,
        messages::{ControlResponse, ServiceView, SessionRequest, SessionResponse, path},
    },
    util::ids,
};

/// Status updates waiting for the batcher, with who to tell once committed.
pub(super) type StatusBatch = (Vec<(String, TaskStatus)>, oneshot::Sender<Result<(), ApiError>>);

/// How long the batcher gathers updates from all nodes into one entry.
const STATUS_BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Most updates in one Raft entry.
const STATUS_BATCH_MAX: usize = 2000;
/// Most tasks in one `PutTasks` entry (keeps entries under the size limit).
const PUT_TASKS_MAX: usize = 500;

pub(super) fn view(s: &ClusterState, svc: &Service) -> ServiceView {
    let mut running = 0;
    let mut completed = 0;
    let mut nodes = std::collections::BTreeSet::new();
    for t in s.tasks_of(&svc.id) {
        if t.desired_state == TaskState::Running && t.status.state == TaskState::Running {
            running += 1;
        }
        if t.status.state == TaskState::Complete {
            completed += 1;
        }
        if t.is_runnable() {
            nodes.insert(t.node_id.clone());
        }
    }
    let desired = match svc.mode() {
        Mode::Replicated { replicas, .. } => replicas,
        Mode::Global => s
            .nodes
            .values()
            .filter(|n| orchestrator::node_keeps_tasks(Some(n)))
            .filter(|n| {
                n.spec.availability == crate::manager::store::model::Availability::Active
                    || nodes.contains(&n.id)
            })
            .filter(|n| {
                crate::manager::scheduler::constraint::matches_all(
                    &crate::manager::scheduler::constraint::of_service(svc),
                    n,
                )
            })
            .count() as u64,
    };
    ServiceView { service: svc.clone(), running, desired, completed }
}

impl Manager {
    pub(super) fn services_control_list(&self) -> ControlResponse {
        ControlResponse::Services(self.state.read(|s| s.services.values().map(|svc| view(s, svc)).collect()))
    }

    pub(super) fn get_service(&self, id: &str) -> Result<ControlResponse, ApiError> {
        let v = self.state.read(|s| s.resolve_service(id).map(|svc| view(s, svc)))?;
        Ok(ControlResponse::Service(Box::new(v)))
    }

    pub(super) fn list_tasks(&self) -> ControlResponse {
        self.state.read(|s| ControlResponse::Tasks {
            tasks: s.tasks.values().cloned().collect(),
            services: s.services.values().map(|svc| (svc.id.clone(), svc.name().to_owned())).collect(),
        })
    }

    pub(super) fn get_task(&self, id: &str) -> Result<ControlResponse, ApiError> {
        self.state.read(|s| {
            let t = s.tasks.get(id).or_else(|| {
                let mut found = s.tasks.range(id.to_owned()..).take_while(|(k, _)| k.starts_with(id));
                match (found.next(), found.next()) {
                    (Some((_, t)), None) if !id.is_empty() => Some(t),
                    _ => None,
                }
            });
            let t = t.ok_or_else(|| ApiError::not_found(format!("task {id} not found")))?;
            let service_name =
                s.services.get(&t.service_id).map(|svc| svc.name().to_owned()).unwrap_or_default();
            Ok(ControlResponse::Task { task: Box::new(t.clone()), service_name })
        })
    }

    pub(super) async fn create_service(
        &self,
        mut spec: bollard_stubs::models::ServiceSpec,
    ) -> Result<ControlResponse, ApiError> {
        if spec.name.as_deref().is_none_or(str::is_empty) {
            spec.name = Some(self.state.read(|s| controlapi::random_name(s, &mut rand::rng())));
        }
        let networks = self.state.read(|s| controlapi::validate_spec(s, &spec))?;
        controlapi::normalize_image(&mut spec);
        let id = ids::new_id();
        let service = controlapi::new_service(id.clone(), spec, networks, now_nanos());
        self.propose(Command::CreateService { service: Box::new(service) }).await?;
        Ok(ControlResponse::Created { id })
    }

    pub(super) async fn update_service(
        &self,
        id: &str,
        version: u64,
        mut spec: bollard_stubs::models::ServiceSpec,
        rollback: bool,
    ) -> Result<ControlResponse, ApiError> {
        let svc_id = self.state.read(|s| s.resolve_service(id).map(|svc| svc.id.clone()))?;
        if rollback {
            self.propose(Command::RollbackService { id: svc_id, version, now: now_nanos() }).await?;
            return Ok(ControlResponse::Done);
        }
        controlapi::normalize_image(&mut spec);
        let networks = self.state.read(|s| -> Result<Vec<String>, ApiError> {
            let svc = s.service(&svc_id)?;
            controlapi::check_update(svc, &spec)?;
            controlapi::validate_spec(s, &spec)
        })?;
        self.propose(Command::UpdateService {
            id: svc_id,
            version,
            spec: Box::new(spec),
            now: now_nanos(),
            networks: Some(networks),
        })
        .await?;
        Ok(ControlResponse::Done)
    }

    pub(super) async fn remove_service(&self, id: &str) -> Result<ControlResponse, ApiError> {
        let id = self.state.read(|s| s.resolve_service(id).map(|svc| svc.id.clone()))?;
        self.propose(Command::RemoveService { id, now: now_nanos() }).await?;
        Ok(ControlResponse::Done)
    }

    /// The leader's reconcile loop: plans on every store change (and when a
    /// restart delay is due), proposes, and plans again.
    pub(super) async fn orchestrate(self: Arc<Self>) {
        let mut changes = self.state.subscribe();
        loop {
            let now = now_nanos();
            let (cmds, wake) = self.state.read(|s| orchestrator::plan(s, now, &mut ids::new_id));
            let mut failed = false;
            for cmd in split_puts(cmds) {
                if let Err(e) = self.propose(cmd).await {
                    tracing::warn!("reconciling services: {e}");
                    failed = true;
                    break;
                }
            }
            let mut wait = wake.map_or(Duration::from_secs(10), |w| {
                Duration::from_nanos(u64::try_from(w.saturating_sub(now_nanos())).unwrap_or(0))
            });
            if failed {
                wait = wait.min(Duration::from_millis(500));
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Gathers task status updates from every node's session into one Raft
    /// entry per window.
    pub(super) async fn batch_statuses(self: Arc<Self>) {
        let mut rx = self.status_rx.lock().await;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + STATUS_BATCH_WINDOW;
            let mut count = batch[0].0.len();
            while count < STATUS_BATCH_MAX {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(b)) => {
                        count += b.0.len();
                        batch.push(b);
                    }
                    _ => break,
                }
            }
            let mut latest: BTreeMap<String, TaskStatus> = BTreeMap::new();
            let mut waiters = Vec::new();
            for (updates, tx) in batch {
                for (id, st) in updates {
                    match latest.get(&id) {
                        Some(old) if old.state > st.state => {}
                        _ => {
                            latest.insert(id, st);
                        }
                    }
                }
                waiters.push(tx);
            }
            let r = self
                .propose(Command::SetTaskStatus { updates: latest.into_iter().collect(), now: now_nanos() })
                .await;
            for w in waiters {
                let _ = w.send(r.clone());
            }
        }
    }

    /// The names a node's tasks resolve, by long poll.
    async fn names(
        &self,
        caller: Caller,
        req: crate::rpc::messages::NamesRequest,
    ) -> Result<crate::rpc::messages::NamesResponse, ApiError> {
        use crate::manager::names;
        let node = self.caller_node(&caller, &[Role::Worker, Role::Manager])?.node_id;
        let (fingerprint, view) = self
            .long_poll(
                req.known,
                req.wait_ms,
                |s| names::node_view(s, &node).fingerprint(),
                |s| names::node_view(s, &node),
            )
            .await?;
        Ok(crate::rpc::messages::NamesResponse { fingerprint, view })
    }

    /// A long poll on the store: at once if `fingerprint` differs from
    /// `known`, else when it changes or `wait_ms` pass; `value` only when it
    /// changed.
    async fn long_poll<T>(
        &self,
        known: Option<u64>,
        wait_ms: u64,
        fingerprint: impl Fn(&crate::manager::store::state::ClusterState) -> u64,
        value: impl Fn(&crate::manager::store::state::ClusterState) -> T,
    ) -> Result<(u64, Option<T>), ApiError> {
        let wait = Duration::from_millis(wait_ms).min(self.write_timeout() / 2);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changes = self.state.subscribe();
        loop {
            let fp = self.state.read(&fingerprint);
            if known != Some(fp) || tokio::time::Instant::now() >= deadline {
                let changed = known != Some(fp);
                return Ok((fp, changed.then(|| self.state.read(&value))));
            }
            if !self.is_leader() {
                return Err(ApiError::no_leader());
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Err(ApiError::no_leader()) },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// A node's session call: its statuses are committed (batched with other
    /// nodes'), then it gets its assignments, at once if they changed since
    /// `known`, else when they do or `wait_ms` pass.
    async fn session(&self, caller: Caller, req: SessionRequest) -> Result<SessionResponse, ApiError> {
        let id = self.caller_node(&caller, &[Role::Worker, Role::Manager])?;
        let node = id.node_id.clone();
        let statuses = self.state.read(|s| dispatcher::own_statuses(s, &node, req.statuses));
        if !statuses.is_empty() {
            let (tx, rx) = oneshot::channel();
            self.status_tx.send((statuses, tx)).await.map_err(|_| ApiError::no_leader())?;
            rx.await.map_err(|_| ApiError::no_leader())??;
        }
        let (fingerprint, assignments) = self
            .long_poll(
                req.known,
                req.wait_ms,
                |s| dispatcher::fingerprint(s, &node),
                |s| dispatcher::assignments(s, &node),
            )
            .await?;
        Ok(SessionResponse { fingerprint, assignments })
    }
}

/// Splits big `PutTasks` so each entry stays well under the command size
/// limit; endpoints travel with their tasks.
fn split_puts(cmds: Vec<Command>) -> Vec<Command> {
    let mut out = Vec::new();
    for c in cmds {
        match c {
            Command::PutTasks { tasks, endpoints } if tasks.len() > PUT_TASKS_MAX => {
                let mut by_task: BTreeMap<String, Vec<_>> = BTreeMap::new();
                for e in endpoints {
                    let task = e.name.strip_prefix("task:").unwrap_or("").to_owned();
                    by_task.entry(task).or_default().push(e);
                }
                for chunk in tasks.chunks(PUT_TASKS_MAX) {
                    let endpoints =
                        chunk.iter().flat_map(|t| by_task.remove(&t.id).unwrap_or_default()).collect();
                    out.push(Command::PutTasks { tasks: chunk.to_vec(), endpoints });
                }
                // Endpoints of no task in the list (none are made so).
                let rest: Vec<_> = by_task.into_values().flatten().collect();
                if !rest.is_empty() {
                    out.push(Command::PutTasks { tasks: Vec::new(), endpoints: rest });
                }
            }
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn h_names(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<crate::rpc::messages::NamesRequest>,
) -> Result<Json<crate::rpc::messages::NamesResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let (c, mm) = (caller.clone(), m.clone());
    m.on_leader(&caller, path::NAMES, false, req, |req| async move { mm.names(c, req).await }).await.map(Json)
}

pub(super) async fn h_session(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<SessionRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let c = caller.clone();
    let mm = m.clone();
    let write = !req.statuses.is_empty();
    m.on_leader(&caller, path::SESSION, write, req, |req| async move { mm.session(c, req).await })
        .await
        .map(Json)
}

pub(super) fn status_channel() -> (mpsc::Sender<StatusBatch>, mpsc::Receiver<StatusBatch>) {
    mpsc::channel(1024)
}

fn image_store(m: &Manager) -> Result<&Arc<crate::agent::images::ImageStore>, ApiError> {
    m.cfg.images.as_ref().ok_or_else(|| ApiError::not_found("this manager keeps no images"))
}

pub(super) async fn h_image_manifest(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<crate::agent::distribution::ManifestRequest>,
) -> Result<Json<crate::agent::distribution::ImageManifest>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let store = image_store(&m)?.clone();
    tokio::task::spawn_blocking(move || crate::agent::distribution::describe(&store, &req.reference))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map(Json)
}

pub(super) async fn h_image_layer(
    State(m): State<Arc<Manager>>,
    caller: Caller,
    Json(req): Json<crate::agent::distribution::LayerRequest>,
) -> Result<Vec<u8>, ApiError> {
    m.caller_node(&caller, &[Role::Worker, Role::Manager])?;
    let store = image_store(&m)?.clone();
    tokio::task::spawn_blocking(move || crate::agent::distribution::read_layer(&store, &req))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
}
