//! Node-to-node RPC on port 2377: JSON over HTTP/2 over TLS 1.3 with client
//! certificates.
//!
//! Every request is a POST of a JSON body to a path; a success is `200` with
//! the JSON response, a failure any other status with an [`ApiError`] body,
//! so errors reach the far end with their kind and Docker wording intact.
//!
//! The server learns the caller from its certificate (CN = node ID, OU =
//! role, O = cluster). A follower that forwards a request to the leader adds
//! the original caller in [`FORWARDED_HEADER`]; the leader believes that
//! header only from a manager certificate.

pub mod messages;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::FromRequestParts, http::request::Parts};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::{
    ca::{CertInfo, Role},
    error::ApiError,
};

/// Header carrying the original caller of a forwarded request.
pub const FORWARDED_HEADER: &str = "x-swarm-forwarded-for";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// TLS handshakes in progress at once; connections beyond are closed at once
/// (each costs tens of KiB before the peer has proven anything).
const MAX_HANDSHAKES: usize = 256;

/// Who is calling, as proven by a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

/// The caller of a request: a node, or anonymous (a node that is joining).
/// `direct` is the TLS peer; `forwarded_by` is set when a manager relayed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub identity: Option<Identity>,
    pub forwarded_by: Option<Identity>,
}

impl Caller {
    pub fn anonymous() -> Caller {
        Caller { identity: None, forwarded_by: None }
    }

    pub fn node(id: Identity) -> Caller {
        Caller { identity: Some(id), forwarded_by: None }
    }

    /// The caller must hold a certificate of `cluster_id` with one of `roles`.
    pub fn require(&self, cluster_id: &str, roles: &[Role]) -> Result<&Identity, ApiError> {
        let id = self
            .identity
            .as_ref()
            .ok_or_else(|| ApiError::denied("permission denied: this request needs a node certificate"))?;
        if id.cluster_id != cluster_id {
            return Err(ApiError::denied("permission denied: remote certificate not part of organization"));
        }
        if !roles.contains(&id.role) {
            let wanted: Vec<&str> = roles.iter().map(|r| r.ou()).collect();
            return Err(ApiError::denied(format!(
                "permission denied: unauthorized peer role: {} (this request needs {})",
                id.role.ou(),
                wanted.join(" or ")
            )));
        }
        Ok(id)
    }
}

/// The TLS peer of a connection, attached to every request on it.
#[derive(Debug, Clone)]
struct Peer(Option<Identity>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        let peer = parts.extensions.get::<Peer>().cloned().unwrap_or(Peer(None)).0;
        let Some(fwd) = parts.headers.get(FORWARDED_HEADER) else {
            return Ok(Caller { identity: peer, forwarded_by: None });
        };
        match &peer {
            Some(p) if p.role == Role::Manager => {
                let original: Option<Identity> = serde_json::from_slice(fwd.as_bytes())
                    .map_err(|e| ApiError::invalid(format!("bad {FORWARDED_HEADER} header: {e}")))?;
                Ok(Caller { identity: original, forwarded_by: peer })
            }
            _ => Err(ApiError::denied("permission denied: only managers may forward requests")),
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let status = axum::http::StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self)).into_response()
    }
}

fn identity_from_der(der: &[u8]) -> Option<Identity> {
    let info = CertInfo::from_der(der).ok()?;
    Some(Identity { role: info.role()?, node_id: info.common_name, cluster_id: info.organization })
}

/// Serves `router` on `listener` until `shutdown` becomes true.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Ok((tcp, remote)) = accepted else { continue };
        let Ok(handshaking) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many TLS handshakes in progress; closing");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let mut stop = shutdown.clone();
        conns.spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                tracing::debug!(%remote, "TLS handshake failed");
                return;
            };
            drop(handshaking);
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| identity_from_der(c));
            let svc =
                hyper_util::service::TowerToHyperService::new(router.layer(axum::Extension(Peer(peer))));
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(Duration::from_secs(2)))
                .keep_alive_timeout(Duration::from_secs(4))
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
        // Reap finished connections.
        while conns.try_join_next().is_some() {}
    }
    conns.abort_all();
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// Could not reach the node or talk to it: connection, TLS, a broken
    /// connection. The request may not have arrived.
    #[error("{0}")]
    Transport(String),
    /// The request was sent but no answer came (deadline, broken
    /// connection): it may or may not have been carried out.
    #[error("{0}")]
    Lost(String),
    /// The connection broke before it carried any answer: with TLS 1.3 that
    /// is how a refused certificate shows, but a peer that took the request
    /// and died before answering looks the same, so a write may have been
    /// carried out.
    #[error("{0}")]
    NotAnswered(String),
    /// The node refused the request's size (its body limit for the path).
    #[error("{0}")]
    TooLarge(String),
    /// The node answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl RpcError {
    /// The error as the user should see it.
    pub fn into_api(self, what: &str) -> ApiError {
        match self {
            RpcError::Api(e) => e,
            RpcError::TooLarge(t) => ApiError::invalid(format!("{what}: {t}")),
            RpcError::Transport(t) | RpcError::Lost(t) | RpcError::NotAnswered(t) => {
                ApiError::unavailable(format!("{what}: {t}"))
            }
        }
    }
}

/// Request body limits on 2377, per path (bytes). Everything else gets
/// [`BODY_LIMIT`]. Docker's own limit on its gRPC messages is 4 MiB.
pub mod limits {
    /// Default for every path: requests carry one object at most.
    pub const BODY_LIMIT: usize = 4 << 20;
    /// `/raft/append`: entries are sent in batches of at most
    /// [`crate::manager::raft::storage::MAX_APPEND_BYTES`] (a single larger
    /// entry alone), and no entry exceeds [`crate::manager::store::limits::MAX_COMMAND_BYTES`].
    pub const RAFT_APPEND: usize = 8 << 20;
    /// `/raft/snapshot/chunk`: one raw chunk of a snapshot.
    pub const SNAPSHOT_CHUNK: usize = 2 << 20;
}

/// A pooled connection, and whether it died of a TLS refusal.
#[derive(Clone)]
struct Conn {
    sender: http2::SendRequest<Full<Bytes>>,
    refused: Arc<tokio::sync::Notify>,
    refused_flag: Arc<std::sync::atomic::AtomicBool>,
    /// Whether any response came back on it.
    answered: Arc<std::sync::atomic::AtomicBool>,
}

/// A client for other nodes' 2377 endpoints; keeps one HTTP/2 connection per
/// address and reconnects when it breaks.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    tls: Mutex<Arc<rustls::ClientConfig>>,
    conns: Mutex<HashMap<String, Conn>>,
}

impl RpcClient {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> RpcClient {
        RpcClient { inner: Arc::new(ClientInner { tls: Mutex::new(tls), conns: Mutex::new(HashMap::new()) }) }
    }

    /// Uses a new TLS configuration for new connections and drops the old ones.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) {
        *self.inner.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = tls;
        self.inner.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Calls `path` on `addr` with `req`, within `timeout`.
    pub async fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &Q,
        timeout: Duration,
        forwarded_for: Option<&Option<Identity>>,
    ) -> Result<R, RpcError> {
        let body =
            serde_json::to_vec(req).map_err(|e| RpcError::Transport(format!("encoding request: {e}")))?;
        let mut headers = Vec::new();
        if let Some(f) = forwarded_for {
            let v = serde_json::to_string(f).map_err(|e| RpcError::Transport(e.to_string()))?;
            headers.push((FORWARDED_HEADER, v));
        }
        self.send(addr, path, "application/json", &headers, Bytes::from(body), timeout).await
    }

    /// Calls `path` on `addr` with raw bytes (snapshot chunks) and `headers`.
    pub async fn call_bytes<R: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        self.send(addr, path, "application/octet-stream", headers, body, timeout).await
    }

    /// Calls `path` on `addr` with a JSON request; the answer is raw bytes
    /// (image layers).
    pub async fn call_raw<Q: Serialize>(
        &self,
        addr: &str,
        path: &str,
        req: &Q,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let body =
            serde_json::to_vec(req).map_err(|e| RpcError::Transport(format!("encoding request: {e}")))?;
        self.send_raw(addr, path, "application/json", &[], Bytes::from(body), timeout).await
    }

    async fn send<R: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let bytes = self.send_raw(addr, path, content_type, headers, body, timeout).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| RpcError::Transport(format!("bad response from {addr}: {e}")))
    }

    async fn send_raw(
        &self,
        addr: &str,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let fut = async {
            let conn = self.connection(addr).await?;
            let mut sender = conn.sender.clone();
            let mut request = hyper::Request::post(format!("https://{addr}{path}"))
                .header(hyper::header::CONTENT_TYPE, content_type);
            for (k, v) in headers {
                request = request.header(*k, v);
            }
            let request = request.body(Full::new(body)).map_err(|e| RpcError::Transport(e.to_string()))?;
            let resp = match sender.send_request(request).await {
                Ok(r) => r,
                Err(e) => {
                    self.forget(addr);
                    let msg = format!("request to {addr} failed: {e}");
                    // The TLS session was refused (TLS 1.3 checks the client
                    // certificate after the client thinks it is connected):
                    // the server never took the request. The connection's
                    // own task sees why it ended; give it a moment to say.
                    let flag = conn.refused_flag.clone();
                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
                            conn.refused.notified().await;
                        }
                    })
                    .await;
                    // A connection that never carried an answer died at its
                    // start: with TLS 1.3 that is how a refused certificate
                    // shows (as an alert, or a broken pipe while sending).
                    let never_answered = !conn.answered.load(std::sync::atomic::Ordering::SeqCst);
                    let refused =
                        tls_refused(&e) || conn.refused_flag.load(std::sync::atomic::Ordering::SeqCst);
                    return Err(if refused {
                        RpcError::Transport(msg)
                    } else if never_answered {
                        RpcError::NotAnswered(msg)
                    } else {
                        RpcError::Lost(msg)
                    });
                }
            };
            conn.answered.store(true, std::sync::atomic::Ordering::SeqCst);
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| RpcError::Lost(format!("reading response from {addr}: {e}")))?
                .to_bytes();
            if status.is_success() {
                Ok(bytes)
            } else if status == hyper::StatusCode::PAYLOAD_TOO_LARGE {
                Err(RpcError::TooLarge(format!("{addr} refused a {path} request as too large")))
            } else {
                let e: ApiError = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    ApiError::internal(format!(
                        "{addr} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ))
                });
                Err(RpcError::Api(e))
            }
        };
        if let Ok(r) = tokio::time::timeout(timeout, fut).await {
            r
        } else {
            self.forget(addr);
            Err(RpcError::Lost(format!("{addr} did not answer within {timeout:?}")))
        }
    }

    /// Drops every pooled connection: the next calls handshake again (with
    /// a renewed certificate).
    pub fn reset_connections(&self) {
        self.inner.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    fn forget(&self, addr: &str) {
        self.inner.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(addr);
    }

    async fn connection(&self, addr: &str) -> Result<Conn, RpcError> {
        let existing =
            self.inner.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(addr).cloned();
        if let Some(c) = existing
            && !c.sender.is_closed()
        {
            return Ok(c);
        }
        let tls = self.inner.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| RpcError::Transport(format!("connecting to {addr}: timed out")))?
            .map_err(|e| RpcError::Transport(format!("connecting to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio::time::timeout(
            TLS_HANDSHAKE_TIMEOUT,
            TlsConnector::from(tls).connect(crate::ca::tls::manager_server_name(), tcp),
        )
        .await
        .map_err(|_| RpcError::Transport(format!("TLS handshake with {addr}: timed out")))?
        .map_err(|e| RpcError::Transport(format!("TLS handshake with {addr}: {e}")))?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| RpcError::Transport(format!("HTTP/2 handshake with {addr}: {e}")))?;
        let c = Conn {
            sender,
            refused: Arc::new(tokio::sync::Notify::new()),
            refused_flag: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            answered: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let (notify, flag) = (c.refused.clone(), c.refused_flag.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await
                && tls_refused(&e)
            {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            notify.notify_waiters();
        });
        self.inner
            .conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(addr.to_owned(), c.clone());
        Ok(c)
    }
}

/// Whether a failed request died of a TLS error (an alert from the peer,
/// a certificate it refused) rather than after it was sent.
fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        // tokio-rustls reports a TLS failure as an InvalidData I/O error
        // carrying rustls' message ("received fatal alert: …").
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
            && io.get_ref().is_some_and(|inner| {
                inner.downcast_ref::<rustls::Error>().is_some() || inner.to_string().contains("fatal alert")
            })
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The local address this host uses to reach `addr` (to pick an advertise
/// address when joining).
pub async fn local_addr_towards(addr: &str) -> Result<SocketAddr, RpcError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| RpcError::Transport(format!("connecting to {addr}: timed out")))?
        .map_err(|e| RpcError::Transport(format!("connecting to {addr}: {e}")))?;
    tcp.local_addr().map_err(|e| RpcError::Transport(e.to_string()))
}
