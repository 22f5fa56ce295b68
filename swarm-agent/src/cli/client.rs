//! The CLI's side of the Docker API: HTTP/1.1 over the daemon's unix socket,
//! found through `-H` or `DOCKER_HOST` like docker's, and starting the daemon
//! when `init`/`join` find none.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

/// Default socket of the daemon.
pub const DEFAULT_SOCKET: &str = "/run/swarm-agent/docker.sock";
/// Default state directory of the daemon.
pub const DEFAULT_DATA_ROOT: &str = "/var/lib/swarm-agent";

/// A failed CLI operation, printed as docker prints them.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon answered with an error (`Error response from daemon: ...`).
    #[error("Error response from daemon: {0}")]
    Daemon(String),
    /// A client-side problem, printed as is.
    #[error("{0}")]
    Local(String),
}

impl CliError {
    pub fn local(m: impl Into<String>) -> CliError {
        CliError::Local(m.into())
    }

    /// The daemon's message, if it was one.
    pub fn daemon_message(&self) -> Option<&str> {
        match self {
            CliError::Daemon(m) => Some(m),
            CliError::Local(_) => None,
        }
    }
}

/// Where the daemon listens: `unix:///path` (the only kind supported).
pub fn socket_path(host: &str) -> Result<PathBuf, CliError> {
    match host.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(CliError::local(format!(
            "unsupported host {host:?}: only unix:///path sockets are supported"
        ))),
    }
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> CliError {
        CliError::local(format!(
            "Cannot connect to the swarm-agent daemon at unix://{}. Is the daemon running? ({e})",
            self.socket.display()
        ))
    }

    /// Sends a request; returns the status and body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), CliError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/v{}{path}", crate::api::API_VERSION))
            .header("Host", "docker");
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::local(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| self.unreachable(e))?.to_bytes();
        Ok((status, bytes))
    }

    /// GET whose body is read as it arrives (`logs -f`); `each` gets every chunk.
    pub async fn get_stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> Result<(), CliError> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| self.unreachable(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(Method::GET)
            .uri(format!("/v{}{path}", crate::api::API_VERSION))
            .header("Host", "docker")
            .body(Full::new(Bytes::new()))
            .map_err(|e| CliError::local(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let bytes = resp.into_body().collect().await.map_err(|e| self.unreachable(e))?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            return Err(CliError::Daemon(
                v["message"]
                    .as_str()
                    .map_or_else(|| String::from_utf8_lossy(&bytes).into_owned(), str::to_owned),
            ));
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.unreachable(e))?;
            if let Some(d) = frame.data_ref() {
                each(d);
            }
        }
        Ok(())
    }

    /// A request whose error responses become [`CliError::Daemon`].
    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes, CliError> {
        let (status, bytes) = self.request(method, path, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        #[derive(serde::Deserialize)]
        struct E {
            message: String,
        }
        let msg = serde_json::from_slice::<E>(&bytes)
            .map_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned(), |e| e.message);
        Err(CliError::Daemon(msg))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        let b = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&b)
            .map_err(|e| CliError::local(format!("unexpected response from the daemon: {e}")))
    }

    /// GET, returning the raw JSON (for `inspect`).
    pub async fn get_raw(&self, path: &str) -> Result<Bytes, CliError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post<B: Serialize>(&self, path: &str, body: &B) -> Result<Bytes, CliError> {
        let b = serde_json::to_vec(body).map_err(|e| CliError::local(e.to_string()))?;
        self.call(Method::POST, path, Some(b)).await
    }

    /// `inspect` of several objects: their JSON as one indented array,
    /// then the daemon's errors for those it does not know (non-zero exit).
    pub async fn inspect_each(&self, paths: impl IntoIterator<Item = String>) -> Result<(), CliError> {
        let mut found = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match self.get_raw(&path).await {
                Ok(raw) => found.push(String::from_utf8_lossy(&raw).into_owned()),
                Err(e @ CliError::Daemon(_)) => errors.push(e.to_string()),
                Err(e) => return Err(e),
            }
        }
        println!("{}", super::fmt::indent_json(&format!("[{}]", found.join(","))));
        if errors.is_empty() { Ok(()) } else { Err(CliError::local(errors.join("\n"))) }
    }

    /// `rm` of several objects under `prefix`: each name printed once
    /// removed, the errors after.
    pub async fn remove_each(&self, prefix: &str, names: &[String]) -> Result<(), CliError> {
        let mut errs = Vec::new();
        for n in names {
            match self.delete(&format!("{prefix}/{n}")).await {
                Ok(_) => println!("{n}"),
                Err(e) => errs.push(e.to_string()),
            }
        }
        if errs.is_empty() { Ok(()) } else { Err(CliError::local(errs.join("\n"))) }
    }

    pub async fn delete(&self, path: &str) -> Result<Bytes, CliError> {
        self.call(Method::DELETE, path, None).await
    }

    /// True if a daemon answers `/_ping`.
    pub async fn ping(&self) -> bool {
        matches!(self.request(Method::GET, "/_ping", None).await, Ok((s, _)) if s.is_success())
    }

    /// Starts a daemon for this socket and `data_root` if none answers,
    /// detached, logging to `<data_root>/swarm-agent.log`.
    pub async fn ensure_daemon(&self, data_root: &Path) -> Result<(), CliError> {
        if self.ping().await {
            return Ok(());
        }
        std::fs::create_dir_all(data_root)
            .map_err(|e| CliError::local(format!("creating {}: {e}", data_root.display())))?;
        let log_path = data_root.join("swarm-agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| CliError::local(format!("opening {}: {e}", log_path.display())))?;
        let exe = std::env::current_exe().map_err(|e| CliError::local(e.to_string()))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("daemon")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--data-root")
            .arg(data_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| CliError::local(e.to_string()))?)
            .stderr(log);
        // SAFETY: setsid is async-signal-safe; it detaches the daemon from our session.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from)
            });
        }
        cmd.spawn().map_err(|e| CliError::local(format!("starting the daemon: {e}")))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            if self.ping().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(CliError::local(format!("the daemon did not start within 15s; see {}", log_path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(socket_path("unix:///run/x.sock").unwrap(), PathBuf::from("/run/x.sock"));
        assert!(socket_path("tcp://1.2.3.4:2375").is_err());
        assert!(socket_path("unix://").is_err());
    }
}
