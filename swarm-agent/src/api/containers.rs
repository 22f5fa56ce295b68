//! `/containers`: the task containers on this node, for `docker ps`,
//! `inspect`, `logs`, `kill`, `stop` and `rm`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{S, convert::rfc3339, flag, images::runtime, parse_filters};
use crate::{
    agent::{
        exec::{Container, ContainerState, Executor, shim::LogLine},
        runtime::Runtime,
    },
    error::ApiError,
};

/// `No such container: <id>`, docker's text.
pub fn no_such_container(id: &str) -> ApiError {
    ApiError::not_found(format!("No such container: {id}"))
}

/// A container by ID, unique ID prefix, or name (with or without `/`).
pub fn find(rt: &Runtime, id: &str) -> Result<Container, ApiError> {
    let name = id.trim_start_matches('/');
    let all = rt.exec.list();
    if let Some(c) = all.iter().find(|c| c.config.id == id || c.config.name == name) {
        return Ok(c.clone());
    }
    let mut found = all.iter().filter(|c| !id.is_empty() && c.config.id.starts_with(id));
    match (found.next(), found.next()) {
        (Some(c), None) => Ok(c.clone()),
        (Some(_), Some(_)) => {
            Err(ApiError::not_found(format!("Multiple IDs found with provided prefix: {id}")))
        }
        _ => Err(no_such_container(id)),
    }
}

fn human_duration(secs: i64) -> String {
    // go-units HumanDuration.
    let s = secs.max(0);
    match s {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        2..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        _ if s < 3600 => format!("{} minutes", s / 60),
        _ if s < 2 * 3600 => "About an hour".into(),
        _ if s < 48 * 3600 => format!("{} hours", s / 3600),
        _ if s < 14 * 86400 => format!("{} days", s / 86400),
        _ if s < 60 * 86400 => format!("{} weeks", s / (7 * 86400)),
        _ if s < 2 * 365 * 86400 => format!("{} months", s / (30 * 86400)),
        _ => format!("{} years", s / (365 * 86400)),
    }
}

fn now_secs() -> i64 {
    crate::manager::now_nanos() / 1_000_000_000
}

fn state_name(s: &ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "created",
        ContainerState::Running { .. } => "running",
        ContainerState::Exited { .. } => "exited",
    }
}

fn status_text(s: &ContainerState) -> String {
    match s {
        ContainerState::Created => "Created".into(),
        ContainerState::Running { started_at, .. } => {
            format!("Up {}", human_duration(now_secs() - started_at / 1_000_000_000))
        }
        ContainerState::Exited { code, finished_at, .. } => {
            format!("Exited ({code}) {} ago", human_duration(now_secs() - finished_at / 1_000_000_000))
        }
    }
}

fn command_line(c: &Container) -> String {
    c.config.args.join(" ")
}

fn summary(c: &Container) -> Value {
    json!({
        "Id": c.config.id,
        "Names": [format!("/{}", c.config.name)],
        "Image": c.config.image,
        "ImageID": c.config.image_id,
        "Command": command_line(c),
        "Created": c.config.created / 1_000_000_000,
        "Ports": [],
        "Labels": c.config.labels,
        "State": state_name(&c.state),
        "Status": status_text(&c.state),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    })
}

fn matches(c: &Container, filters: &HashMap<String, Vec<String>>) -> bool {
    filters.iter().all(|(k, vals)| match k.as_str() {
        "id" => vals.iter().any(|v| c.config.id.starts_with(v.as_str())),
        "name" => vals.iter().any(|v| c.config.name.contains(v.trim_start_matches('/'))),
        "status" => vals.iter().any(|v| v == state_name(&c.state)),
        "label" => vals.iter().all(|v| match v.split_once('=') {
            Some((k, val)) => c.config.labels.get(k).is_some_and(|x| x == val),
            None => c.config.labels.contains_key(v),
        }),
        "ancestor" => vals.iter().any(|v| c.config.image == *v || c.config.image_id.contains(v.as_str())),
        "exited" => vals
            .iter()
            .any(|v| matches!(c.state, ContainerState::Exited { code, .. } if code.to_string() == *v)),
        _ => true,
    })
}

pub(super) async fn list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let rt = runtime(&e)?;
    let filters = parse_filters(&q)?;
    for k in filters.keys() {
        if !["id", "name", "status", "label", "ancestor", "exited"].contains(&k.as_str()) {
            return Err(ApiError::invalid(format!("invalid filter '{k}'")));
        }
    }
    let all = flag(&q, "all") || filters.contains_key("status") || filters.contains_key("exited");
    let mut list: Vec<Container> = rt
        .exec
        .list()
        .into_iter()
        .filter(|c| all || matches!(c.state, ContainerState::Running { .. }))
        .filter(|c| matches(c, &filters))
        .collect();
    list.sort_by_key(|c| std::cmp::Reverse(c.config.created));
    if let Some(n) = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|n| *n > 0) {
        list.truncate(n);
    }
    Ok(Json(list.iter().map(summary).collect()))
}

pub(super) async fn inspect(State(e): S, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let rt = runtime(&e)?;
    let c = find(&rt, &id)?;
    let (running, pid, code, started, finished) = match c.state {
        ContainerState::Created => (false, 0, 0, 0, 0),
        ContainerState::Running { pid, started_at } => (true, pid, 0, started_at, 0),
        ContainerState::Exited { code, started_at, finished_at } => (false, 0, code, started_at, finished_at),
    };
    let when = |ns: i64| if ns == 0 { "0001-01-01T00:00:00Z".to_owned() } else { rfc3339(ns) };
    Ok(Json(json!({
        "Id": c.config.id,
        "Created": rfc3339(c.config.created),
        "Path": c.config.args.first().cloned().unwrap_or_default(),
        "Args": c.config.args.iter().skip(1).collect::<Vec<_>>(),
        "State": {
            "Status": state_name(&c.state),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": pid,
            "ExitCode": code,
            "Error": "",
            "StartedAt": when(started),
            "FinishedAt": when(finished),
        },
        "Image": c.config.image_id,
        "Name": format!("/{}", c.config.name),
        "RestartCount": 0,
        "Driver": "overlay",
        "Platform": "linux",
        "Config": {
            "Hostname": c.config.hostname,
            "User": c.config.user,
            "Env": c.config.env,
            "Cmd": c.config.args,
            "Image": c.config.image,
            "WorkingDir": c.config.cwd,
            "Labels": c.config.labels,
            "StopSignal": if c.config.stop_signal.is_empty() { "SIGTERM" } else { c.config.stop_signal.as_str() },
        },
        "HostConfig": {
            "NetworkMode": "default",
            "Memory": c.config.memory,
            "NanoCpus": c.config.nano_cpus,
            "Runtime": if c.config.runtime.is_empty() { "runc" } else { c.config.runtime.as_str() },
        },
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    })))
}

pub(super) async fn kill(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let rt = runtime(&e)?;
    let c = find(&rt, &id)?;
    let signal = q.get("signal").cloned().unwrap_or_else(|| "SIGKILL".into());
    if crate::agent::exec::parse_signal(&signal).is_none() {
        return Err(ApiError::invalid(format!("Invalid signal: {signal}")));
    }
    if !matches!(c.state, ContainerState::Running { .. }) {
        return Err(ApiError::conflict(format!(
            "Cannot kill container: {id}: Container {} is not running",
            c.config.id
        )));
    }
    rt.exec.kill(&c.config.id, &signal).await.map_err(|e| ApiError::internal(e.message))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn stop(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let rt = runtime(&e)?;
    let c = find(&rt, &id)?;
    if !matches!(c.state, ContainerState::Running { .. }) {
        return Ok(StatusCode::NOT_MODIFIED);
    }
    let grace =
        q.get("t").and_then(|t| t.parse::<u64>().ok()).map_or(c.config.stop_grace, Duration::from_secs);
    let signal = q.get("signal").cloned().unwrap_or_else(|| c.config.stop_signal.clone());
    rt.exec.stop(&c.config.id, &signal, grace).await.map_err(|e| ApiError::internal(e.message))?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let rt = runtime(&e)?;
    let c = find(&rt, &id)?;
    if matches!(c.state, ContainerState::Running { .. }) && !flag(&q, "force") {
        return Err(ApiError::conflict(format!(
            "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
            c.config.name
        )));
    }
    rt.exec.remove(&c.config.id).await.map_err(|e| ApiError::internal(e.message))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Docker's multiplexed stream frame: stream type, 3 zero bytes, length.
pub fn frame(stream: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.len());
    out.push(stream);
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Log lines of a container, filtered as `docker logs` asks.
pub fn read_log(
    path: &std::path::Path,
    stdout: bool,
    stderr: bool,
    tail: Option<usize>,
) -> (Vec<LogLine>, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<LogLine> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
        .filter(|l| (l.stream == "stdout" && stdout) || (l.stream == "stderr" && stderr))
        .collect();
    let skip = tail.map_or(0, |n| lines.len().saturating_sub(n));
    (lines.into_iter().skip(skip).collect(), text.len() as u64)
}

pub fn render_line(l: &LogLine, timestamps: bool) -> Vec<u8> {
    let mut data = Vec::new();
    if timestamps {
        data.extend_from_slice(l.time.as_bytes());
        data.push(b' ');
    }
    data.extend_from_slice(l.log.as_bytes());
    frame(if l.stream == "stderr" { 2 } else { 1 }, &data)
}

pub(super) async fn logs(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    let c = find(&rt, &id)?;
    let (stdout, stderr) = (flag(&q, "stdout"), flag(&q, "stderr"));
    if !stdout && !stderr {
        return Err(ApiError::invalid("You must choose at least one stream"));
    }
    let timestamps = flag(&q, "timestamps");
    let tail = q.get("tail").filter(|t| t.as_str() != "all").and_then(|t| t.parse::<usize>().ok());
    let path = Executor::log_path(rt.exec.as_ref(), &c.config.id);
    let (lines, mut offset) = read_log(&path, stdout, stderr, tail);
    let first: Vec<u8> = lines.iter().flat_map(|l| render_line(l, timestamps)).collect();
    let headers = [("content-type", "application/vnd.docker.multiplexed-stream")];
    if !flag(&q, "follow") {
        return Ok((headers, first).into_response());
    }
    let exec: Arc<crate::agent::exec::runc::Runc> = rt.exec.clone();
    let cid = c.config.id.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(Ok(bytes::Bytes::from(first))).await.is_err() {
            return;
        }
        loop {
            let done = !matches!(exec.inspect(&cid).map(|c| c.state), Some(ContainerState::Running { .. }));
            let text = std::fs::read(&path).unwrap_or_default();
            let new = text.get(usize::try_from(offset).unwrap_or(usize::MAX)..).unwrap_or(&[]);
            // Only whole lines.
            if let Some(end) = new.iter().rposition(|b| *b == b'\n') {
                let whole = &new[..=end];
                offset += whole.len() as u64;
                let out: Vec<u8> = String::from_utf8_lossy(whole)
                    .lines()
                    .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
                    .filter(|l| (l.stream == "stdout" && stdout) || (l.stream == "stderr" && stderr))
                    .flat_map(|l| render_line(&l, timestamps))
                    .collect();
                if !out.is_empty() && tx.send(Ok(bytes::Bytes::from(out))).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok((headers, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(70), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(5000), "About an hour");
    }

    #[test]
    fn frames() {
        assert_eq!(frame(1, b"hi\n"), [1, 0, 0, 0, 0, 0, 0, 3, b'h', b'i', b'\n']);
    }
}
