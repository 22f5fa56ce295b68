//! `/services` and `/tasks`: Docker's JSON for services (with
//! `ServiceStatus` when asked, as `service ls` does) and tasks (what
//! `service ps` and the CLI's convergence progress read), with docker's
//! filters.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
};
use bollard_stubs::models as m;
use serde_json::{Value, json};

use super::{S, control, convert::rfc3339, flag, parse_filters};
use crate::{
    error::ApiError,
    manager::store::task::{Task, TaskState},
    rpc::messages::{ControlRequest, ControlResponse, ServiceView},
};

fn unexpected() -> ApiError {
    ApiError::internal("unexpected response")
}

pub fn service_json(v: &ServiceView, with_status: bool) -> Value {
    let s = &v.service;
    let endpoint_spec = s
        .spec
        .endpoint_spec
        .clone()
        .unwrap_or(m::EndpointSpec { mode: Some(m::EndpointSpecModeEnum::VIP), ports: None });
    let mut out = json!({
        "ID": s.id,
        "Version": {"Index": s.meta.version},
        "CreatedAt": rfc3339(s.meta.created_at),
        "UpdatedAt": rfc3339(s.meta.updated_at),
        "Spec": s.spec,
        "Endpoint": {"Spec": endpoint_spec},
    });
    if !s.endpoint.ports.is_empty() {
        out["Endpoint"]["Ports"] = json!(s.endpoint.ports);
    }
    if !s.endpoint.virtual_ips.is_empty() {
        out["Endpoint"]["VirtualIPs"] = s
            .endpoint
            .virtual_ips
            .iter()
            .map(|v| json!({"NetworkID": v.network_id, "Addr": v.addr()}))
            .collect();
    }
    if let Some(p) = &s.previous_spec {
        out["PreviousSpec"] = json!(p);
    }
    if let Some(u) = &s.update_status {
        out["UpdateStatus"] = json!({
            "State": u.state.as_str(),
            "StartedAt": rfc3339(u.started_at),
            "Message": u.message,
        });
        if u.completed_at != 0 {
            out["UpdateStatus"]["CompletedAt"] = json!(rfc3339(u.completed_at));
        }
    }
    if with_status {
        out["ServiceStatus"] = json!({
            "RunningTasks": v.running,
            "DesiredTasks": v.desired,
            "CompletedTasks": v.completed,
        });
    }
    out
}

/// The host-mode ports of a service (what its running tasks hold on their nodes).
pub fn host_ports(
    s: &crate::manager::store::task::Service,
) -> Vec<bollard_stubs::models::EndpointPortConfig> {
    use bollard_stubs::models::EndpointPortConfigPublishModeEnum as M;
    s.endpoint.ports.iter().filter(|p| p.publish_mode == Some(M::HOST)).cloned().collect()
}

/// A task as docker shows it; a running task's `PortStatus` lists the
/// host-mode ports it holds.
pub fn task_json(
    t: &Task,
    service_name: &str,
    host_ports: &[bollard_stubs::models::EndpointPortConfig],
) -> Value {
    let port_status = if t.status.state == TaskState::Running && !host_ports.is_empty() {
        json!({ "Ports": host_ports })
    } else {
        json!({})
    };
    let mut status = json!({
        "Timestamp": rfc3339(t.status.timestamp),
        "State": t.status.state.as_str(),
        "Message": t.status.message,
        "PortStatus": port_status,
    });
    if !t.status.err.is_empty() {
        status["Err"] = json!(t.status.err);
    }
    if t.status.container_id.is_some() || t.status.exit_code.is_some() {
        status["ContainerStatus"] = json!({
            "ContainerID": t.status.container_id.clone().unwrap_or_default(),
            "PID": t.status.pid.unwrap_or(0),
            "ExitCode": t.status.exit_code.unwrap_or(0),
        });
    }
    let mut out = json!({
        "ID": t.id,
        "Version": {"Index": t.meta.version},
        "CreatedAt": rfc3339(t.meta.created_at),
        "UpdatedAt": rfc3339(t.meta.updated_at),
        "Labels": {},
        "Spec": t.spec,
        "ServiceID": t.service_id,
        "NodeID": t.node_id,
        "Status": status,
        "DesiredState": t.desired_state.as_str(),
    });
    if t.slot > 0 {
        out["Slot"] = json!(t.slot);
    }
    if !service_name.is_empty() {
        out["Name"] = json!(t.name(service_name));
    }
    if !t.networks.is_empty() {
        out["NetworksAttachments"] = json!(
            t.networks
                .iter()
                .map(|n| json!({"Network": {"ID": n.network_id}, "Addresses": [format!("{}/{}", n.ip, n.prefix)]}))
                .collect::<Vec<_>>()
        );
    }
    out
}

async fn list_views(e: &crate::daemon::Engine) -> Result<Vec<ServiceView>, ApiError> {
    match control(e, ControlRequest::ListServices).await? {
        ControlResponse::Services(v) => Ok(v),
        _ => Err(unexpected()),
    }
}

async fn get_view(e: &crate::daemon::Engine, id: String) -> Result<ServiceView, ApiError> {
    match control(e, ControlRequest::GetService { id }).await? {
        ControlResponse::Service(v) => Ok(*v),
        _ => Err(unexpected()),
    }
}

fn mode_name(v: &ServiceView) -> &'static str {
    match v.service.mode() {
        crate::manager::store::task::Mode::Global => "global",
        crate::manager::store::task::Mode::Replicated { .. } => "replicated",
    }
}

fn labels_match(labels: Option<&HashMap<String, String>>, wanted: &[String]) -> bool {
    wanted.iter().all(|w| match w.split_once('=') {
        Some((k, v)) => labels.and_then(|l| l.get(k)).is_some_and(|x| x == v),
        None => labels.is_some_and(|l| l.contains_key(w)),
    })
}

pub(super) async fn services_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = parse_filters(&q)?;
    for k in filters.keys() {
        if !["id", "label", "mode", "name"].contains(&k.as_str()) {
            return Err(ApiError::invalid(format!("invalid filter '{k}'")));
        }
    }
    let status = flag(&q, "status");
    let mut views = list_views(&e).await?;
    views.retain(|v| {
        filters.iter().all(|(k, vals)| match k.as_str() {
            "id" => vals.iter().any(|x| v.service.id.starts_with(x.as_str())),
            "name" => vals.iter().any(|x| v.service.name().starts_with(x.as_str())),
            "mode" => vals.iter().any(|x| x == mode_name(v)),
            _ => labels_match(v.service.spec.labels.as_ref(), vals),
        })
    });
    views.sort_by(|a, b| a.service.name().cmp(b.service.name()));
    Ok(Json(views.iter().map(|v| service_json(v, status)).collect()))
}

pub(super) async fn service_inspect(
    State(e): S,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let v = get_view(&e, id).await?;
    Ok(Json(service_json(&v, true)))
}

fn service_spec(body: &axum::body::Bytes) -> Result<m::ServiceSpec, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("the request has no service spec"));
    }
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?;
    // The daemon reads these case-insensitively and names the bad value.
    for (config, what, actions) in [
        ("UpdateConfig", "update", &["pause", "continue", "rollback"][..]),
        ("RollbackConfig", "rollback", &["pause", "continue"][..]),
    ] {
        let Some(c) = v.get_mut(config).and_then(Value::as_object_mut) else { continue };
        for (field, allowed, kind) in [
            ("FailureAction", actions, "failure action"),
            ("Order", &["stop-first", "start-first"][..], "order"),
        ] {
            let Some(given) = c.get(field).and_then(Value::as_str).map(str::to_owned) else { continue };
            let lower = given.to_ascii_lowercase();
            if !lower.is_empty() && !allowed.contains(&lower.as_str()) {
                return Err(ApiError::invalid(format!("unrecognized {what} {kind} {given}")));
            }
            c.insert(field.to_owned(), Value::from(lower));
        }
    }
    // Docker's CLI sends Go's field name `Healthcheck`; the API's (and
    // bollard's) is `HealthCheck`. Go decodes either.
    if let Some(c) = v.pointer_mut("/TaskTemplate/ContainerSpec").and_then(Value::as_object_mut)
        && let Some(h) = c.remove("Healthcheck")
    {
        c.entry("HealthCheck").or_insert(h);
    }
    serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))
}

pub(super) async fn service_create(
    State(e): S,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = service_spec(&body)?;
    match control(&e, ControlRequest::CreateService { spec: Box::new(spec) }).await? {
        ControlResponse::Created { id } => Ok((StatusCode::CREATED, Json(json!({ "ID": id })))),
        _ => Err(unexpected()),
    }
}

pub(super) async fn service_update(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let version = super::version_param(&q)?;
    let rollback = match q.get("rollback").map(String::as_str) {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!("unrecognized rollback option {other}")));
        }
    };
    let spec = service_spec(&body)?;
    control(&e, ControlRequest::UpdateService { id, version, spec: Box::new(spec), rollback }).await?;
    Ok(Json(json!({})))
}

pub(super) async fn service_remove(
    State(e): S,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, ApiError> {
    control(&e, ControlRequest::RemoveService { id }).await?;
    Ok(StatusCode::OK)
}

async fn all_tasks(e: &crate::daemon::Engine) -> Result<(Vec<Task>, BTreeMap<String, String>), ApiError> {
    match control(e, ControlRequest::ListTasks).await? {
        ControlResponse::Tasks { tasks, services } => Ok((tasks, services)),
        _ => Err(unexpected()),
    }
}

pub(super) async fn tasks_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = parse_filters(&q)?;
    for k in filters.keys() {
        if !["id", "name", "node", "service", "label", "desired-state", "_up-to-date"].contains(&k.as_str()) {
            return Err(ApiError::invalid(format!("invalid filter '{k}'")));
        }
    }
    if let Some(ds) = filters.get("desired-state") {
        for d in ds {
            if !["running", "shutdown", "accepted"].contains(&d.as_str()) {
                return Err(ApiError::invalid(format!(
                    "Invalid task desired state filter: {d}, must be one of 'running', 'shutdown', 'accepted'"
                )));
            }
        }
    }
    let (tasks, services) = all_tasks(&e).await?;
    let ports: BTreeMap<String, Vec<bollard_stubs::models::EndpointPortConfig>> = list_views(&e)
        .await?
        .into_iter()
        .map(|v| (v.service.id.clone(), host_ports(&v.service)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    // Service and node filters take IDs or names, as docker's do.
    let service_ids: Option<Vec<String>> = filters.get("service").map(|vals| {
        vals.iter()
            .flat_map(|v| {
                services
                    .iter()
                    .filter(move |(id, name)| *id == v || *name == v || id.starts_with(v.as_str()))
                    .map(|(id, _)| id.clone())
            })
            .collect()
    });
    let node_ids: Option<Vec<String>> = match filters.get("node") {
        Some(vals) => {
            let views = super::list_views(&e).await.unwrap_or_default();
            Some(
                vals.iter()
                    .flat_map(|v| {
                        views
                            .iter()
                            .filter(move |n| {
                                n.node.id == *v
                                    || n.node.description.hostname == *v
                                    || n.node.id.starts_with(v.as_str())
                            })
                            .map(|n| n.node.id.clone())
                            .chain(std::iter::once(v.clone()))
                    })
                    .collect(),
            )
        }
        None => None,
    };
    let service_labels: BTreeMap<String, HashMap<String, String>> = if filters.contains_key("label") {
        list_views(&e)
            .await?
            .into_iter()
            .map(|v| (v.service.id.clone(), v.service.spec.labels.clone().unwrap_or_default()))
            .collect()
    } else {
        BTreeMap::new()
    };
    let up_to_date = filters.contains_key("_up-to-date");
    // swarmkit's `_up-to-date`: tasks that run what their service asks for.
    let current: BTreeMap<String, crate::manager::store::task::Service> = if up_to_date {
        list_views(&e).await?.into_iter().map(|v| (v.service.id.clone(), v.service)).collect()
    } else {
        BTreeMap::new()
    };
    let out = tasks
        .iter()
        .filter(|t| service_ids.as_ref().is_none_or(|ids| ids.contains(&t.service_id)))
        .filter(|t| node_ids.as_ref().is_none_or(|ids| ids.contains(&t.node_id)))
        .filter(|t| filters.get("id").is_none_or(|ids| ids.iter().any(|i| t.id.starts_with(i.as_str()))))
        .filter(|t| {
            filters.get("name").is_none_or(|names| {
                let n = t.name(services.get(&t.service_id).map_or("", String::as_str));
                names.iter().any(|x| n.starts_with(x.as_str()))
            })
        })
        .filter(|t| {
            filters.get("desired-state").is_none_or(|ds| {
                ds.iter().any(|d| match d.as_str() {
                    "running" => t.desired_state == TaskState::Running,
                    "shutdown" => t.desired_state >= TaskState::Shutdown,
                    _ => t.desired_state == TaskState::Accepted,
                })
            })
        })
        // swarmkit matches a task's labels filter on its service's labels.
        .filter(|t| {
            filters.get("label").is_none_or(|want| {
                let labels = service_labels.get(&t.service_id);
                want.iter().all(|x| {
                    let (k, v) = x.split_once('=').map_or((x.as_str(), None), |(k, v)| (k, Some(v)));
                    labels.and_then(|l| l.get(k)).is_some_and(|have| v.is_none_or(|v| have == v))
                })
            })
        })
        .filter(|t| {
            !up_to_date
                || current
                    .get(&t.service_id)
                    .is_none_or(|s| !crate::manager::orchestrator::update::is_dirty(s, t))
        })
        .map(|t| {
            let ports = ports.get(&t.service_id).map_or(&[][..], Vec::as_slice);
            task_json(t, services.get(&t.service_id).map_or("", String::as_str), ports)
        })
        .collect();
    Ok(Json(out))
}

pub(super) async fn task_inspect(State(e): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    match control(&e, ControlRequest::GetTask { id }).await? {
        ControlResponse::Task { task, service_name } => {
            let ports = get_view(&e, task.service_id.clone())
                .await
                .map(|v| host_ports(&v.service))
                .unwrap_or_default();
            Ok(Json(task_json(&task, &service_name, &ports)))
        }
        _ => Err(unexpected()),
    }
}

/// `GET /services/{id}/logs`.
pub(super) async fn service_logs(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    let v = get_view(&e, id).await?;
    logs(e, Some(v.service.id.clone()), None, &q).await
}

/// `GET /tasks/{id}/logs`.
pub(super) async fn task_logs(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    let ControlResponse::Task { task, .. } = control(&e, ControlRequest::GetTask { id }).await? else {
        return Err(unexpected());
    };
    logs(e, None, Some(task.id.clone()), &q).await
}

/// One line as docker's `WriteLogStream` writes it: `[time ][details ]log`,
/// details being the task's context (`key=value,…`, sorted by key).
pub fn log_line(l: &crate::manager::logs::LogMsg, timestamps: bool, details: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if timestamps {
        out.extend_from_slice(l.time.as_bytes());
        out.push(b' ');
    }
    if details {
        out.extend_from_slice(
            format!(
                "com.docker.swarm.node.id={},com.docker.swarm.service.id={},com.docker.swarm.task.id={} ",
                l.node_id, l.service_id, l.task_id
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(l.log.as_bytes());
    super::containers::frame(if l.stream == "stderr" { 2 } else { 1 }, &out)
}

async fn logs(
    e: std::sync::Arc<crate::daemon::Engine>,
    service: Option<String>,
    task: Option<String>,
    q: &HashMap<String, String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let (stdout, stderr) = (flag(q, "stdout"), flag(q, "stderr"));
    if !stdout && !stderr {
        return Err(ApiError::invalid("You must choose at least one stream"));
    }
    let (timestamps, details, follow) = (flag(q, "timestamps"), flag(q, "details"), flag(q, "follow"));
    let tail = q.get("tail").filter(|t| t.as_str() != "all").and_then(|t| t.parse::<usize>().ok());
    let ControlResponse::LogSubscribed { id } =
        control(&e, ControlRequest::LogSubscribe { service, task, tail, follow }).await?
    else {
        return Err(unexpected());
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        loop {
            let Ok(ControlResponse::LogLines { lines, finished }) =
                control(&e, ControlRequest::LogPoll { id: id.clone() }).await
            else {
                return;
            };
            let out: Vec<u8> = lines
                .iter()
                .filter(|l| (l.stream == "stdout" && stdout) || (l.stream == "stderr" && stderr))
                .flat_map(|l| log_line(l, timestamps, details))
                .collect();
            if !out.is_empty() && tx.send(Ok(bytes::Bytes::from(out))).await.is_err() {
                return;
            }
            if finished {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok((
        [("content-type", "application/vnd.docker.multiplexed-stream")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
