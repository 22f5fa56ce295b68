//! `docker exec`: `POST /containers/{id}/exec` makes an exec instance,
//! `POST /exec/{id}/start` runs it on docker's hijacked connection (HTTP
//! 101, then the raw stream: multiplexed frames without a TTY, the bytes of
//! a pseudo-terminal with one), `GET /exec/{id}/json` gives its exit code.

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
};

use axum::{
    Json,
    extract::{Path as UrlPath, Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    S,
    containers::{find, frame},
    images::runtime,
};
use crate::{
    agent::exec::{ContainerState, ExecSpec, Executor},
    error::ApiError,
};

/// One `docker exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecInstance {
    pub container_id: String,
    pub spec: ExecSpec,
    pub tty: bool,
    pub stdin: bool,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: i64,
}

/// The exec instances of this daemon.
#[derive(Default)]
pub struct Execs(Mutex<HashMap<String, ExecInstance>>);

impl Execs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ExecInstance>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, id: &str) -> Result<ExecInstance, ApiError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("No such exec instance: {id}")))
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut ExecInstance)) {
        if let Some(e) = self.lock().get_mut(id) {
            f(e);
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    attach_stdin: Option<bool>,
    tty: Option<bool>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
}

pub(super) async fn create(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let rt = runtime(&e)?;
    let req: CreateBody = super::json_body(&body)?;
    let c = find(&rt, &id)?;
    if !matches!(c.state, ContainerState::Running { .. }) {
        return Err(ApiError::conflict(format!("Container {} is not running", c.config.id)));
    }
    let cmd = req.cmd.unwrap_or_default();
    if cmd.is_empty() {
        return Err(ApiError::invalid("No exec command specified"));
    }
    let exec_id =
        crate::agent::exec::container_id(&format!("{}-{}", c.config.id, crate::util::ids::new_id()));
    let inst = ExecInstance {
        container_id: c.config.id.clone(),
        spec: ExecSpec {
            args: cmd,
            env: req.env.unwrap_or_default(),
            cwd: req.working_dir.unwrap_or_default(),
            user: req.user.unwrap_or_default(),
        },
        tty: req.tty.unwrap_or(false),
        stdin: req.attach_stdin.unwrap_or(false),
        ..ExecInstance::default()
    };
    e.execs().lock().insert(exec_id.clone(), inst);
    Ok((StatusCode::CREATED, Json(json!({ "Id": exec_id }))))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartBody {
    detach: Option<bool>,
}

pub(super) async fn start(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    let inst = e.execs().get(&id)?;
    if inst.running || inst.exit_code.is_some() {
        return Err(ApiError::conflict(format!("exec {id} has already run")));
    }
    let upgrade = hyper::upgrade::on(&mut req);
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the request: {e}")))?;
    let start: StartBody = super::json_body(&body)?;
    let execs = e.execs_arc();
    if start.detach.unwrap_or(false) {
        let mut child = rt
            .exec
            .exec(&inst.container_id, &inst.spec, [Stdio::null(), Stdio::null(), Stdio::null()])
            .map_err(|e| ApiError::internal(e.message))?;
        execs.update(&id, |x| {
            x.running = true;
            x.pid = child.id().map_or(0, i64::from);
        });
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code()).map_or(126, i64::from);
            execs.update(&id, |x| {
                x.running = false;
                x.exit_code = Some(code);
            });
        });
        return Ok(StatusCode::OK.into_response());
    }
    let content_type = if inst.tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    let exec = rt.exec.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let code = if inst.tty {
            run_tty(exec.as_ref(), &inst, io, &execs, &id).await
        } else {
            run_plain(exec.as_ref(), &inst, io, &execs, &id).await
        };
        execs.update(&id, |x| {
            x.running = false;
            x.exit_code = Some(code);
        });
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONTENT_TYPE, content_type), (header::CONNECTION, "Upgrade"), (header::UPGRADE, "tcp")],
    )
        .into_response())
}

type Io = TokioIo<hyper::upgrade::Upgraded>;

async fn run_plain(exec: &dyn Executor, inst: &ExecInstance, io: Io, execs: &Execs, id: &str) -> i64 {
    let stdin = if inst.stdin { Stdio::piped() } else { Stdio::null() };
    let mut child = match exec.exec(&inst.container_id, &inst.spec, [stdin, Stdio::piped(), Stdio::piped()]) {
        Ok(c) => c,
        Err(e) => {
            let (_, mut w) = tokio::io::split(io);
            let _ = w.write_all(&frame(2, format!("{}\n", e.message).as_bytes())).await;
            let _ = w.shutdown().await;
            return 126;
        }
    };
    execs.update(id, |x| {
        x.running = true;
        x.pid = child.id().map_or(0, i64::from);
    });
    let (mut r, w) = tokio::io::split(io);
    let w = Arc::new(tokio::sync::Mutex::new(w));
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 || stdin.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }
    let pump = |mut src: Box<dyn tokio::io::AsyncRead + Unpin + Send>, stream: u8| {
        let w = w.clone();
        async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = src.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if w.lock().await.write_all(&frame(stream, &buf[..n])).await.is_err() {
                    break;
                }
            }
        }
    };
    let out = child.stdout.take().map(|s| pump(Box::new(s), 1));
    let err = child.stderr.take().map(|s| pump(Box::new(s), 2));
    let status = child.wait();
    let (status, (), ()) = tokio::join!(
        status,
        async {
            if let Some(o) = out {
                o.await;
            }
        },
        async {
            if let Some(e) = err {
                e.await;
            }
        }
    );
    let _ = w.lock().await.shutdown().await;
    status.ok().and_then(|s| s.code()).map_or(137, i64::from)
}

async fn run_tty(exec: &dyn Executor, inst: &ExecInstance, io: Io, execs: &Execs, id: &str) -> i64 {
    let Ok(pty) = nix::pty::openpty(None, None) else { return 126 };
    let slave = std::fs::File::from(pty.slave);
    let stdio = |f: &std::fs::File| f.try_clone().map(Stdio::from);
    let (Ok(sin), Ok(sout), Ok(serr)) = (stdio(&slave), stdio(&slave), stdio(&slave)) else { return 126 };
    let mut child = match exec.exec(&inst.container_id, &inst.spec, [sin, sout, serr]) {
        Ok(c) => c,
        Err(err) => {
            let (_, mut w) = tokio::io::split(io);
            let _ = w.write_all(format!("{}\r\n", err.message).as_bytes()).await;
            let _ = w.shutdown().await;
            return 126;
        }
    };
    drop(slave);
    execs.update(id, |x| {
        x.running = true;
        x.pid = child.id().map_or(0, i64::from);
    });
    let master = std::fs::File::from(pty.master);
    let Ok(master2) = master.try_clone() else { return 126 };
    let (mut from_client, mut to_client) = tokio::io::split(io);
    let mut m_read = tokio::fs::File::from_std(master);
    let mut m_write = tokio::fs::File::from_std(master2);
    let input = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = from_client.read(&mut buf).await {
            if n == 0 || m_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let _ = m_write.flush().await;
        }
    });
    let output = async {
        let mut buf = vec![0u8; 4096];
        // EIO once the last slave holder is gone.
        while let Ok(n) = m_read.read(&mut buf).await {
            if n == 0 || to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let status = child.wait();
    let (status, ()) = tokio::join!(status, output);
    input.abort();
    let _ = to_client.shutdown().await;
    status.ok().and_then(|s| s.code()).map_or(137, i64::from)
}

pub(super) async fn inspect(State(e): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let inst = e.execs().get(&id)?;
    Ok(Json(json!({
        "ID": id,
        "Running": inst.running,
        "ExitCode": inst.exit_code,
        "ProcessConfig": {
            "tty": inst.tty,
            "entrypoint": inst.spec.args.first(),
            "arguments": inst.spec.args.iter().skip(1).collect::<Vec<_>>(),
            "user": inst.spec.user,
        },
        "OpenStdin": inst.stdin,
        "OpenStderr": true,
        "OpenStdout": true,
        "CanRemove": false,
        "ContainerID": inst.container_id,
        "DetachKeys": "",
        "Pid": inst.pid,
    })))
}

pub(super) async fn resize() -> StatusCode {
    StatusCode::OK
}
