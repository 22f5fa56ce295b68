//! The Docker Engine API subset the swarm commands use, on a unix socket:
//! `_ping`, `version`, `info`, `swarm`, `nodes`, `tasks`. Paths work with and
//! without a `/v1.NN` prefix; errors are `{"message": ...}` as docker's CLI
//! expects.

pub mod containers;
pub mod convert;
pub mod exec;
pub mod images;
pub mod secrets;
pub mod services;

use std::{collections::HashMap, path::Path, sync::Arc};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bollard_stubs::models as m;
use serde::Deserialize;

use crate::{
    daemon::{Engine, LocalNodeState},
    error::ApiError,
    manager::store::model::{Availability, ClusterSpec},
    node::{InitParams, JoinParams},
    rpc::messages::{ControlRequest, ControlResponse, NodeView},
    util::addr::DEFAULT_LISTEN_ADDR,
};

/// The API version this daemon speaks (what `docker version` negotiates to).
pub const API_VERSION: &str = "1.50";
pub const MIN_API_VERSION: &str = "1.24";

pub(crate) type S = State<Arc<Engine>>;

/// The router, with a layer that strips `/vX.Y` prefixes.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/_ping", get(ping))
        .route("/version", get(version))
        .route("/info", get(info))
        .route("/swarm", get(swarm_inspect))
        .route("/swarm/init", post(swarm_init))
        .route("/swarm/join", post(swarm_join))
        .route("/swarm/leave", post(swarm_leave))
        .route("/swarm/update", post(swarm_update))
        .route("/swarm/unlockkey", get(swarm_unlockkey))
        .route("/nodes", get(nodes_list))
        .route("/nodes/{id}", get(node_inspect).delete(node_remove))
        .route("/nodes/{id}/update", post(node_update))
        .route("/tasks", get(services::tasks_list))
        .route("/tasks/{id}", get(services::task_inspect))
        .route("/tasks/{id}/logs", get(services::task_logs))
        .route("/networks", get(networks_list))
        .route("/networks/create", post(network_create))
        .route("/networks/{id}", get(network_inspect).delete(network_remove))
        .route("/networks/{id}/connect", post(network_connect))
        .route("/networks/{id}/disconnect", post(network_disconnect))
        .route("/services", get(services::services_list))
        .route("/services/create", post(services::service_create))
        .route("/services/{id}", get(services::service_inspect).delete(services::service_remove))
        .route("/services/{id}/update", post(services::service_update))
        .route("/services/{id}/logs", get(services::service_logs))
        .route("/secrets", get(secrets::secrets_list))
        .route("/secrets/create", post(secrets::secret_create))
        .route("/secrets/{id}", get(secrets::secret_inspect).delete(secrets::secret_remove))
        .route("/secrets/{id}/update", post(secrets::secret_update))
        .route("/configs", get(secrets::configs_list))
        .route("/configs/create", post(secrets::config_create))
        .route("/configs/{id}", get(secrets::config_inspect).delete(secrets::config_remove))
        .route("/configs/{id}/update", post(secrets::config_update))
        .route("/swarm-agent/store", get(store_digest))
        .route("/containers/json", get(containers::list))
        .route("/containers/{id}/json", get(containers::inspect))
        .route("/containers/{id}/kill", post(containers::kill))
        .route("/containers/{id}/stop", post(containers::stop))
        .route("/containers/{id}/logs", get(containers::logs))
        .route("/containers/{id}", axum::routing::delete(containers::remove))
        .route("/containers/{id}/exec", post(exec::create))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/images/json", get(images::list))
        .route("/images/create", post(images::create))
        .route("/images/load", post(images::load))
        .route("/images/get", get(images::get_many))
        .route("/images/{*rest}", get(images::by_name).post(images::by_name).delete(images::by_name))
        .fallback(not_found)
        .layer(axum::middleware::map_response(explain_too_large))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::extract::DefaultBodyLimit::max(API_BODY_LIMIT))
        .with_state(engine)
}

/// The largest request body the API reads (Docker's gRPC limit; objects
/// themselves are limited further, see `store::limits`).
pub const API_BODY_LIMIT: usize = 4 << 20;

/// A request that says it is larger than the limit is read to its end
/// (discarding it, up to 16× the limit) and answered 413: answering while the
/// client still writes would reset the connection before it reads the answer.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let len = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match len {
        Some(n) if n > API_BODY_LIMIT => {
            use http_body_util::BodyExt as _;
            let mut body = req.into_body();
            let mut read = 0usize;
            while read <= API_BODY_LIMIT * 16 {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, bytes::Bytes::len),
                    _ => break,
                }
            }
            explain_too_large(StatusCode::PAYLOAD_TOO_LARGE.into_response()).await
        }
        _ => next.run(req).await,
    }
}

/// axum answers an oversized body with a plain-text 413; clients print
/// Docker's `{"message": …}`.
async fn explain_too_large(resp: Response) -> Response {
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return resp;
    }
    let msg = format!("request body too large: the limit is {} MiB", API_BODY_LIMIT >> 20);
    (StatusCode::PAYLOAD_TOO_LARGE, Json(serde_json::json!({ "message": msg }))).into_response()
}

/// Serves the API on a unix socket until `shutdown` completes.
pub async fn serve(
    socket: &Path,
    engine: Arc<Engine>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    let app = tower::ServiceBuilder::new().map_request(strip_version).service(router(engine));
    axum::serve(listener, axum::ServiceExt::<axum::extract::Request>::into_make_service(app))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `/v1.47/swarm` -> `/swarm`.
fn strip_version(mut req: axum::extract::Request) -> axum::extract::Request {
    let path = req.uri().path();
    let rest = path.strip_prefix("/v").and_then(|r| {
        let (ver, tail) = r.split_once('/')?;
        ver.chars().all(|c| c.is_ascii_digit() || c == '.').then(|| format!("/{tail}"))
    });
    if let Some(new_path) = rest {
        let pq = match req.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(uri) = pq.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
    req
}

async fn not_found() -> ApiError {
    ApiError::not_found("page not found")
}

fn swarm_header(state: LocalNodeState, manager: bool) -> &'static str {
    match (state, manager) {
        (LocalNodeState::Inactive, _) => "inactive",
        (LocalNodeState::Pending, _) => "pending",
        (LocalNodeState::Active, true) => "active/manager",
        (LocalNodeState::Active, false) => "active/worker",
    }
}

async fn ping(State(e): S) -> Response {
    let manager = match e.node().await {
        Some(n) => n.manager().await.is_some(),
        None => false,
    };
    let mut h = HeaderMap::new();
    h.insert("API-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("OSType", HeaderValue::from_static("linux"));
    h.insert("Swarm", HeaderValue::from_static(swarm_header(e.state().await, manager)));
    h.insert("Cache-Control", HeaderValue::from_static("no-cache, no-store, must-revalidate"));
    h.insert("Pragma", HeaderValue::from_static("no-cache"));
    (StatusCode::OK, h, "OK").into_response()
}

fn kernel_version() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

async fn version() -> Json<m::SystemVersion> {
    Json(m::SystemVersion {
        platform: Some(m::SystemVersionPlatform { name: "swarm-agent".into() }),
        components: None,
        version: Some(env!("CARGO_PKG_VERSION").into()),
        api_version: Some(API_VERSION.into()),
        min_api_version: Some(MIN_API_VERSION.into()),
        git_commit: Some(String::new()),
        go_version: Some(String::new()),
        os: Some("linux".into()),
        arch: Some(go_arch().into()),
        kernel_version: Some(kernel_version()),
        experimental: Some(false),
        build_time: None,
    })
}

pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

pub(crate) async fn control(e: &Engine, req: ControlRequest) -> Result<ControlResponse, ApiError> {
    e.control(req).await
}

pub(crate) async fn list_views(e: &Engine) -> Result<Vec<NodeView>, ApiError> {
    match control(e, ControlRequest::ListNodes).await? {
        ControlResponse::Nodes(v) => Ok(v),
        _ => Err(ApiError::internal("unexpected response")),
    }
}

async fn get_cluster(e: &Engine) -> Result<crate::manager::store::model::Cluster, ApiError> {
    match control(e, ControlRequest::GetSwarm).await? {
        ControlResponse::Swarm(c) => Ok(*c),
        _ => Err(ApiError::internal("unexpected response")),
    }
}

async fn swarm_info(e: &Engine) -> m::SwarmInfo {
    let state = e.state().await;
    let local_state = match state {
        LocalNodeState::Inactive => m::LocalNodeState::INACTIVE,
        LocalNodeState::Pending => m::LocalNodeState::PENDING,
        LocalNodeState::Active => m::LocalNodeState::ACTIVE,
    };
    let Some(node) = e.node().await else {
        return m::SwarmInfo {
            node_id: Some(String::new()),
            node_addr: Some(String::new()),
            local_node_state: Some(local_state),
            control_available: Some(false),
            error: Some(String::new()),
            remote_managers: None,
            nodes: None,
            managers: None,
            cluster: None,
        };
    };
    let local = node.local();
    let node_addr =
        local.advertise_addr.rsplit_once(':').map_or(local.advertise_addr.as_str(), |(h, _)| h).to_owned();
    let mut info = m::SwarmInfo {
        node_id: Some(local.node_id.clone()),
        node_addr: Some(node_addr),
        local_node_state: Some(local_state),
        control_available: Some(node.manager().await.is_some()),
        error: Some(String::new()),
        remote_managers: Some(
            local
                .managers
                .iter()
                .map(|a| m::PeerNode { node_id: Some(String::new()), addr: Some(a.clone()) })
                .collect(),
        ),
        nodes: None,
        managers: None,
        cluster: None,
    };
    if info.control_available == Some(true) {
        match (list_views(e).await, get_cluster(e).await) {
            (Ok(views), Ok(cluster)) => {
                let managers: Vec<m::PeerNode> = views
                    .iter()
                    .filter_map(|v| {
                        v.node.manager.as_ref().map(|mi| m::PeerNode {
                            node_id: Some(v.node.id.clone()),
                            addr: Some(mi.addr.clone()),
                        })
                    })
                    .collect();
                info.nodes = Some(views.len() as i64);
                info.managers = Some(managers.len() as i64);
                info.remote_managers = Some(managers);
                info.cluster = Some(convert::cluster_info(&cluster));
            }
            (Err(err), _) | (_, Err(err)) => info.error = Some(err.message),
        }
    }
    info
}

async fn info(State(e): S) -> Json<m::SystemInfo> {
    let swarm = swarm_info(&e).await;
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let d = crate::node::describe();
    let rt = e.options().runtime;
    let containers =
        rt.as_ref().map(|r| crate::agent::exec::Executor::list(r.exec.as_ref())).unwrap_or_default();
    let count = |f: fn(&crate::agent::exec::ContainerState) -> bool| {
        i64::try_from(containers.iter().filter(|c| f(&c.state)).count()).unwrap_or(i64::MAX)
    };
    let oci = rt.as_ref().map(|r| r.exec.runtime().to_owned());
    Json(m::SystemInfo {
        id: Some(swarm.node_id.clone().unwrap_or_default()),
        containers: Some(count(|_| true)),
        containers_running: Some(count(|s| matches!(s, crate::agent::exec::ContainerState::Running { .. }))),
        containers_paused: Some(0),
        containers_stopped: Some(count(|s| !matches!(s, crate::agent::exec::ContainerState::Running { .. }))),
        images: Some(rt.as_ref().map_or(0, |r| i64::try_from(r.images.list().len()).unwrap_or(i64::MAX))),
        labels: Some(d.engine_labels.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        default_runtime: oci.clone(),
        runtimes: oci.map(|o| {
            std::iter::once((o.clone(), m::Runtime { path: Some(o), ..Default::default() })).collect()
        }),
        name: Some(hostname),
        server_version: Some(env!("CARGO_PKG_VERSION").into()),
        operating_system: Some("swarm-agent".into()),
        os_type: Some("linux".into()),
        architecture: Some(d.arch),
        kernel_version: Some(kernel_version()),
        ncpu: Some(d.nano_cpus / 1_000_000_000),
        mem_total: Some(d.memory_bytes),
        docker_root_dir: Some(e.data_root().display().to_string()),
        swarm: Some(swarm),
        ..Default::default()
    })
}

async fn swarm_inspect(State(e): S) -> Result<Json<m::Swarm>, ApiError> {
    Ok(Json(convert::swarm(&get_cluster(&e).await?)))
}

/// `POST /swarm/init`; docker's CLI also sends `Availability`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InitRequest {
    listen_addr: String,
    advertise_addr: String,
    data_path_addr: String,
    data_path_port: u32,
    default_addr_pool: Vec<String>,
    force_new_cluster: bool,
    subnet_size: u32,
    spec: Option<m::SwarmSpec>,
    availability: String,
}

fn parse_availability(a: &str) -> Result<Availability, ApiError> {
    if a.is_empty() { Ok(Availability::Active) } else { Availability::parse(a).map_err(ApiError::invalid) }
}

pub(crate) fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))
}

async fn swarm_init(State(e): S, body: axum::body::Bytes) -> Result<Json<String>, ApiError> {
    let req: InitRequest = json_body(&body)?;
    if !req.data_path_addr.is_empty() {
        return Err(ApiError::invalid("--data-path-addr is not supported yet"));
    }
    let spec = convert::cluster_spec(req.spec.as_ref(), &ClusterSpec::default())?;
    let p = InitParams {
        listen_addr: if req.listen_addr.is_empty() { DEFAULT_LISTEN_ADDR.into() } else { req.listen_addr },
        advertise_addr: (!req.advertise_addr.is_empty()).then_some(req.advertise_addr),
        availability: parse_availability(&req.availability)?,
        default_addr_pool: req.default_addr_pool,
        subnet_size: req.subnet_size,
        data_path_port: req.data_path_port,
        spec,
        options: e.options(),
    };
    e.init(p, req.force_new_cluster).await.map(Json)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct JoinRequest {
    listen_addr: String,
    advertise_addr: String,
    data_path_addr: String,
    remote_addrs: Vec<String>,
    join_token: String,
    availability: String,
}

async fn swarm_join(State(e): S, body: axum::body::Bytes) -> Result<StatusCode, ApiError> {
    let req: JoinRequest = json_body(&body)?;
    if !req.data_path_addr.is_empty() {
        return Err(ApiError::invalid("--data-path-addr is not supported yet"));
    }
    let remote = req
        .remote_addrs
        .first()
        .cloned()
        .ok_or_else(|| ApiError::invalid("at least 1 RemoteAddr is required to join"))?;
    let p = JoinParams {
        remote,
        token: req.join_token,
        listen_addr: if req.listen_addr.is_empty() { DEFAULT_LISTEN_ADDR.into() } else { req.listen_addr },
        advertise_addr: (!req.advertise_addr.is_empty()).then_some(req.advertise_addr),
        availability: parse_availability(&req.availability)?,
        options: e.options(),
    };
    e.join(p).await?;
    Ok(StatusCode::OK)
}

pub(crate) fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE"))
}

async fn swarm_leave(State(e): S, Query(q): Query<HashMap<String, String>>) -> Result<StatusCode, ApiError> {
    e.leave(flag(&q, "force")).await?;
    Ok(StatusCode::OK)
}

pub(crate) fn version_param(q: &HashMap<String, String>) -> Result<u64, ApiError> {
    let v = q.get("version").ok_or_else(|| ApiError::invalid("missing version parameter"))?;
    v.parse().map_err(|_| ApiError::invalid(format!("invalid version: {v}")))
}

async fn swarm_update(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let version = version_param(&q)?;
    let spec: Option<m::SwarmSpec> = if body.is_empty() { None } else { Some(json_body(&body)?) };
    let current = get_cluster(&e).await?;
    let spec = convert::cluster_spec(spec.as_ref(), &current.spec)?;
    if flag(&q, "rotateManagerUnlockKey") {
        return Err(ApiError::invalid("cannot rotate because autolock is not turned on"));
    }
    control(
        &e,
        ControlRequest::UpdateSwarm {
            version,
            spec,
            rotate_worker_token: flag(&q, "rotateWorkerToken"),
            rotate_manager_token: flag(&q, "rotateManagerToken"),
        },
    )
    .await?;
    Ok(StatusCode::OK)
}

async fn swarm_unlockkey(State(e): S) -> Result<Json<serde_json::Value>, ApiError> {
    get_cluster(&e).await?;
    Ok(Json(serde_json::json!({ "UnlockKey": "" })))
}

/// Docker's `filters` query: `{"role":{"manager":true}}` (or the old list form).
pub(crate) fn parse_filters(q: &HashMap<String, String>) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let Some(raw) = q.get("filters").filter(|s| !s.is_empty()) else { return Ok(HashMap::new()) };
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| ApiError::invalid(format!("invalid filter: {e}")))?;
    let mut out = HashMap::new();
    for (k, val) in v.as_object().into_iter().flatten() {
        let vals: Vec<String> = match val {
            serde_json::Value::Object(o) => o.keys().cloned().collect(),
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        out.insert(k.clone(), vals);
    }
    Ok(out)
}

fn node_matches(v: &NodeView, filters: &HashMap<String, Vec<String>>) -> Result<bool, ApiError> {
    for (k, vals) in filters {
        let ok = match k.as_str() {
            "id" => vals.iter().any(|x| v.node.id.starts_with(x.as_str())),
            "name" => vals.iter().any(|x| {
                v.node.description.hostname.contains(x.as_str()) || v.node.spec.name.contains(x.as_str())
            }),
            "role" => vals.iter().any(|x| x == v.node.spec.role.as_str()),
            "membership" => vals.iter().any(|x| x == "accepted"),
            "label" | "node.label" => vals.iter().all(|x| match x.split_once('=') {
                Some((lk, lv)) => v.node.spec.labels.get(lk).is_some_and(|val| val == lv),
                None => v.node.spec.labels.contains_key(x),
            }),
            other => return Err(ApiError::invalid(format!("invalid filter '{other}'"))),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn ca_pem(e: &Engine) -> String {
    e.node().await.map(|n| n.ca_cert()).unwrap_or_default()
}

async fn nodes_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<m::Node>>, ApiError> {
    let filters = parse_filters(&q)?;
    let views = list_views(&e).await?;
    let ca = ca_pem(&e).await;
    let mut out = Vec::new();
    for v in &views {
        if node_matches(v, &filters)? {
            out.push(convert::node(v, &ca));
        }
    }
    Ok(Json(out))
}

async fn node_inspect(State(e): S, UrlPath(id): UrlPath<String>) -> Result<Json<m::Node>, ApiError> {
    match control(&e, ControlRequest::GetNode { id }).await? {
        ControlResponse::Node(v) => Ok(Json(convert::node(&v, &ca_pem(&e).await))),
        _ => Err(ApiError::internal("unexpected response")),
    }
}

async fn node_update(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let version = version_param(&q)?;
    let spec = convert::node_spec_json(&body)?;
    control(&e, ControlRequest::UpdateNode { id, version, spec }).await?;
    Ok(StatusCode::OK)
}

async fn node_remove(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    control(&e, ControlRequest::RemoveNode { id, force: flag(&q, "force") }).await?;
    Ok(StatusCode::OK)
}

/// Every network (managers), or those this node has endpoints in (workers,
/// as docker's workers list the overlays they have tasks on).
async fn networks(e: &Engine) -> Result<Vec<crate::manager::store::model::Network>, ApiError> {
    if let Some(node) = e.node().await
        && node.manager().await.is_none()
    {
        return Ok(node.overlay().networks());
    }
    match control(e, ControlRequest::ListNetworks).await? {
        ControlResponse::Networks(v) => Ok(v),
        _ => Err(ApiError::internal("unexpected response")),
    }
}

/// One network by ID, name or ID prefix; see [`networks`] for workers.
async fn network(e: &Engine, id: String) -> Result<crate::manager::store::model::Network, ApiError> {
    if let Some(node) = e.node().await
        && node.manager().await.is_none()
    {
        let local = node.overlay().networks();
        let found = local
            .iter()
            .find(|n| n.id == id)
            .or_else(|| local.iter().find(|n| n.name == id))
            .or_else(|| local.iter().find(|n| n.id.starts_with(&id)));
        return found.cloned().ok_or_else(|| ApiError::not_found(format!("network {id} not found")));
    }
    match control(e, ControlRequest::GetNetwork { id }).await? {
        ControlResponse::Network(n) => Ok(*n),
        _ => Err(ApiError::internal("unexpected response")),
    }
}

async fn networks_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<convert::NetworkView>>, ApiError> {
    let filters = parse_filters(&q)?;
    let mut out = Vec::new();
    for n in networks(&e).await? {
        let mut ok = true;
        for (k, vals) in &filters {
            ok &= match k.as_str() {
                "driver" => vals.contains(&n.driver),
                "name" => vals.iter().any(|v| n.name.contains(v.as_str())),
                "id" => vals.iter().any(|v| n.id.starts_with(v.as_str())),
                "scope" => vals.iter().any(|v| v == "swarm"),
                // Docker counts `ingress` among its predefined ("builtin") networks.
                "type" => vals.iter().any(|v| (v == "builtin") == n.ingress),
                "label" => vals.iter().all(|x| match x.split_once('=') {
                    Some((lk, lv)) => n.labels.get(lk).is_some_and(|v| v == lv),
                    None => n.labels.contains_key(x),
                }),
                other => return Err(ApiError::invalid(format!("invalid filter '{other}'"))),
            };
        }
        if ok {
            out.push(convert::network(&n));
        }
    }
    Ok(Json(out))
}

async fn network_inspect(
    State(engine): S,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<convert::NetworkView>, ApiError> {
    let n = network(&engine, id).await?;
    let mut v = convert::network(&n);
    let Some(node) = engine.node().await else { return Ok(Json(v)) };
    // This node's endpoints in the network, as docker lists its containers.
    let prefix = n.subnet.rsplit_once('/').map_or("32", |x| x.1);
    for ep in node.overlay().endpoints().into_iter().filter(|ep| ep.network_id == n.id) {
        v.containers.insert(
            ep.endpoint_id.clone(),
            convert::ContainerView {
                name: ep.netns.display().to_string(),
                endpoint_id: ep.endpoint_id.clone(),
                mac_address: crate::manager::store::ipam::format_mac(ep.mac),
                ipv4_address: format!("{}/{prefix}", ep.ip),
                ipv6_address: String::new(),
            },
        );
    }
    if flag(&query, "verbose") {
        if let Some(dp) = node.overlay().datapath() {
            let mut d = dp.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            v.datapath = Some(datapath_json(&mut d, n.vni));
        }
        if let Some(g) = node.overlay().gossip() {
            let members: Vec<String> = g.members().iter().map(|m| m.addr.ip().to_string()).collect();
            v.gossip = Some(serde_json::json!({ "Members": members, "KeyId": g.primary_key() }));
        }
    }
    Ok(Json(v))
}

/// The `Datapath` section of `network inspect --verbose`: this host's drop and
/// event counters and the endpoint table entries of the network's VNI.
fn datapath_json(d: &mut crate::datapath::host::HostDatapath, vni: u32) -> serde_json::Value {
    fn counters<R>(
        v: Vec<(R, swarm_common::stats::Counter)>,
        name: impl Fn(&R) -> &'static str,
    ) -> serde_json::Map<String, serde_json::Value> {
        v.into_iter()
            .map(|(r, c)| (name(&r).to_owned(), serde_json::json!({"Packets": c.packets, "Bytes": c.bytes})))
            .collect()
    }
    let drops = counters(d.drops().unwrap_or_default(), |r| r.name());
    let events = counters(d.events().unwrap_or_default(), |r| r.name());
    let peers: Vec<serde_json::Value> = d
        .endpoints()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k.vni == vni)
        .map(|(k, i)| {
            let host = if i.is_local() {
                "local".to_owned()
            } else {
                std::net::Ipv4Addr::from(i.host_ip).to_string()
            };
            serde_json::json!({ "IP": std::net::Ipv4Addr::from(k.ip).to_string(), "Host": host })
        })
        .collect();
    // The VIPs of this network and the published ports balanced over it.
    let frontends: Vec<serde_json::Value> = d
        .frontends()
        .into_iter()
        .filter(|(_, f, _)| f.backend_vni == vni)
        .map(|(k, f, b)| {
            let backends: Vec<String> =
                b.iter().map(|ip| std::net::Ipv4Addr::from(*ip).to_string()).collect();
            if k.vni == swarm_common::lb::PUBLISHED_SCOPE {
                let proto = if k.proto == swarm_common::wire::IPPROTO_UDP { "udp" } else { "tcp" };
                serde_json::json!({
                    "Published": format!("{}/{proto}", u16::from_be_bytes(k.port)),
                    "Target": u16::from_be_bytes(f.target_port),
                    "Backends": backends,
                })
            } else {
                serde_json::json!({ "VIP": std::net::Ipv4Addr::from(k.ip).to_string(), "Backends": backends })
            }
        })
        .collect();
    serde_json::json!({
        "Drops": drops,
        "Events": events,
        "Endpoints": peers,
        "Frontends": frontends,
        "Underlay": d.underlay,
        "XDP": d.xdp.map(|m| format!("{m:?}")),
    })
}

/// `POST /networks/create`.
#[allow(clippy::struct_excessive_bools, reason = "the Docker API body")]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkCreate {
    name: String,
    driver: String,
    attachable: bool,
    ingress: bool,
    internal: bool,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<m::Ipam>,
    options: Option<HashMap<String, String>>,
    labels: Option<HashMap<String, String>>,
}

async fn network_create(
    State(e): S,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let req: NetworkCreate = json_body(&body)?;
    if req.internal {
        return Err(ApiError::invalid("internal overlay networks are not supported yet"));
    }
    if req.enable_ipv6 {
        return Err(ApiError::invalid("IPv6 overlay networks are not supported yet"));
    }
    let configs = req.ipam.and_then(|i| i.config).unwrap_or_default();
    if configs.len() > 1 {
        return Err(ApiError::invalid("only one subnet per overlay network is supported"));
    }
    let cfg = configs.into_iter().next().unwrap_or_default();
    if cfg.gateway.is_some() && cfg.subnet.is_none() {
        return Err(ApiError::invalid("a gateway needs a subnet (--subnet)"));
    }
    let spec = crate::rpc::messages::NetworkSpec {
        name: req.name,
        driver: if req.driver.is_empty() { "bridge".into() } else { req.driver },
        subnet: cfg.subnet,
        gateway: cfg.gateway,
        attachable: req.attachable,
        ingress: req.ingress,
        labels: req.labels.unwrap_or_default().into_iter().collect(),
        options: req.options.unwrap_or_default().into_iter().collect(),
    };
    match control(&e, ControlRequest::CreateNetwork { spec }).await? {
        ControlResponse::Created { id } => {
            Ok((StatusCode::CREATED, Json(serde_json::json!({ "Id": id, "Warning": "" }))))
        }
        _ => Err(ApiError::internal("unexpected response")),
    }
}

async fn network_remove(State(e): S, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    control(&e, ControlRequest::RemoveNetwork { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /networks/{id}/connect` with a network namespace instead of a container.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NetworkConnect {
    net_ns: String,
    endpoint_config: Option<m::EndpointSettings>,
}

async fn network_connect(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let req: NetworkConnect = json_body(&body)?;
    if req.net_ns.is_empty() {
        return Err(ApiError::invalid("a network namespace (NetNs) is needed"));
    }
    let ip = req
        .endpoint_config
        .and_then(|c| c.ipam_config)
        .and_then(|c| c.ipv4_address)
        .filter(|s| !s.is_empty());
    let node = e.node().await.ok_or_else(|| ApiError::unavailable(crate::error::INACTIVE))?;
    node.connect(&id, Path::new(&req.net_ns), ip).await?;
    Ok(StatusCode::OK)
}

async fn network_disconnect(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let req: NetworkConnect = json_body(&body)?;
    let node = e.node().await.ok_or_else(|| ApiError::unavailable(crate::error::INACTIVE))?;
    node.disconnect(&id, Path::new(&req.net_ns)).await?;
    Ok(StatusCode::OK)
}

/// Not Docker's: this manager's own copy of the store (`debug store`).
async fn store_digest(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<crate::manager::raft::storage::StoreDigest>, ApiError> {
    let node = e.node().await.ok_or_else(|| ApiError::unavailable(crate::error::INACTIVE))?;
    let mgr = node.manager().await.ok_or_else(|| ApiError::unavailable(crate::error::NOT_A_MANAGER))?;
    mgr.state().digest(flag(&q, "objects")).map(Json).map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_stripped() {
        let req = |p: &str| axum::extract::Request::builder().uri(p).body(axum::body::Body::empty()).unwrap();
        assert_eq!(strip_version(req("/v1.47/swarm")).uri(), "/swarm");
        assert_eq!(strip_version(req("/v1.50/nodes?filters=x")).uri(), "/nodes?filters=x");
        assert_eq!(strip_version(req("/_ping")).uri(), "/_ping");
        assert_eq!(strip_version(req("/volumes")).uri(), "/volumes");
    }

    #[test]
    fn filters_in_both_shapes() {
        let q = HashMap::from([("filters".to_owned(), r#"{"role":{"manager":true}}"#.to_owned())]);
        assert_eq!(parse_filters(&q).unwrap()["role"], vec!["manager".to_owned()]);
        let q = HashMap::from([("filters".to_owned(), r#"{"role":["worker"]}"#.to_owned())]);
        assert_eq!(parse_filters(&q).unwrap()["role"], vec!["worker".to_owned()]);
    }
}

/// Fuzzing request parsing: filters and bodies from any client.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn filters_parse_or_fail_cleanly(raw in "\\PC{0,80}", json in any::<bool>()) {
            let raw = if json { format!("{{\"{raw}\": [\"{raw}\"]}}") } else { raw };
            let q = HashMap::from([("filters".to_owned(), raw)]);
            let _ = parse_filters(&q);
        }

        #[test]
        fn bodies_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let body = axum::body::Bytes::from(data);
            let _ = json_body::<InitRequest>(&body);
            let _ = json_body::<NetworkCreate>(&body);
            let _ = convert::node_spec_json(&body);
        }
    }
}
