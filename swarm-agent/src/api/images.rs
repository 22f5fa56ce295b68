//! `/images`: this node's image store — `docker import`, `load`, `save`,
//! `images`, `image inspect`, `tag`, `rmi`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json,
    body::Body,
    extract::{Path as UrlPath, Query, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{S, convert::rfc3339, flag};
use crate::{
    agent::{images::Image, runtime::Runtime},
    daemon::Engine,
    error::ApiError,
};

pub(super) fn runtime(e: &Engine) -> Result<Arc<Runtime>, ApiError> {
    e.options().runtime.ok_or_else(|| ApiError::unavailable("this daemon runs no containers"))
}

/// A request body as a blocking reader (the image store reads synchronously).
async fn body_to_file(body: Body) -> Result<std::fs::File, ApiError> {
    let mut f = tempfile::tempfile().map_err(|e| ApiError::internal(format!("buffering the upload: {e}")))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
        std::io::Write::write_all(&mut f, &chunk)
            .map_err(|e| ApiError::internal(format!("buffering the upload: {e}")))?;
    }
    std::io::Seek::rewind(&mut f).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(f)
}

fn stream_lines(lines: Vec<Value>) -> Response {
    let mut body = String::new();
    for l in lines {
        body.push_str(&l.to_string());
        body.push_str("\r\n");
    }
    ([("content-type", "application/json")], body).into_response()
}

/// `POST /images/create`: `fromSrc` imports a rootfs tarball (the body, or
/// `-`); `fromImage` pulls from a registry.
pub(super) async fn create(
    State(e): S,
    RawQuery(raw): RawQuery,
    Query(q): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    if let Some(src) = q.get("fromSrc") {
        if src != "-" {
            return Err(ApiError::invalid("importing from a URL is not supported: send the tarball"));
        }
        let repo = q.get("repo").cloned().unwrap_or_default();
        let reference = match q.get("tag").filter(|t| !t.is_empty()) {
            Some(t) if !repo.is_empty() => format!("{repo}:{t}"),
            _ => repo,
        };
        let changes: Vec<String> = form_values(raw.as_deref().unwrap_or(""), "changes");
        let file = body_to_file(body).await?;
        let images = rt.images.clone();
        let id = tokio::task::spawn_blocking(move || {
            images.import(std::io::BufReader::new(file), Some(reference.as_str()), &changes)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        return Ok(stream_lines(vec![json!({ "status": id })]));
    }
    if let Some(image) = q.get("fromImage") {
        let tag = q.get("tag").filter(|t| !t.is_empty());
        let reference = match tag {
            Some(t) if !image.contains('@') => format!("{image}:{t}"),
            _ => image.clone(),
        };
        let familiar = crate::agent::images::normalize(&reference)?;
        let parsed = crate::util::reference::parse(&reference).map_err(ApiError::invalid)?;
        let id = crate::agent::registry::pull(&rt.images, &reference, &rt.insecure_registries).await?;
        return Ok(stream_lines(vec![
            json!({ "status": format!("Pulling from {}", parsed.path), "id": parsed.tag.clone().unwrap_or_else(|| "latest".into()) }),
            json!({ "status": format!("Digest: {id}") }),
            json!({ "status": format!("Status: Downloaded newer image for {familiar}") }),
        ]));
    }
    Err(ApiError::invalid("either fromSrc or fromImage must be given"))
}

/// Values of a repeated query key (`changes=a&changes=b`), URL-decoded.
fn form_values(raw: &str, key: &str) -> Vec<String> {
    raw.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) async fn load(State(e): S, body: Body) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    let file = body_to_file(body).await?;
    let images = rt.images.clone();
    let lines = tokio::task::spawn_blocking(move || images.load(std::io::BufReader::new(file)))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(stream_lines(lines.into_iter().map(|l| json!({ "stream": format!("{l}\n") })).collect()))
}

fn summary(i: &Image) -> Value {
    json!({
        "Id": i.id,
        "ParentId": "",
        "RepoTags": i.repo_tags,
        "RepoDigests": [],
        "Created": i.created(),
        "Size": i.size,
        "SharedSize": -1,
        "VirtualSize": i.size,
        "Labels": i.config["config"]["Labels"].as_object().cloned().unwrap_or_default(),
        "Containers": -1,
    })
}

pub(super) async fn list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let rt = runtime(&e)?;
    let filters = super::parse_filters(&q)?;
    let mut images = rt.images.list();
    if let Some(refs) = filters.get("reference") {
        images.retain(|i| {
            i.repo_tags.iter().any(|t| refs.iter().any(|r| t == r || t.starts_with(&format!("{r}:"))))
        });
    }
    Ok(Json(images.iter().map(summary).collect()))
}

fn inspect_json(i: &Image) -> Value {
    json!({
        "Id": i.id,
        "RepoTags": i.repo_tags,
        "RepoDigests": [],
        "Parent": "",
        "Comment": i.config["history"][0]["comment"].as_str().unwrap_or(""),
        "Created": i.config["created"].as_str().map_or_else(|| rfc3339(0), str::to_owned),
        "Config": i.config["config"],
        "Architecture": i.config["architecture"],
        "Os": i.config["os"],
        "Size": i.size,
        "RootFS": {"Type": "layers", "Layers": i.layers},
        "Metadata": {"LastTagTime": rfc3339(0)},
    })
}

/// `/images/{name}/json|tag|get|history` and `DELETE /images/{name}`: names
/// may have slashes, so the action is the last path part.
pub(super) async fn by_name(
    State(e): S,
    method: axum::http::Method,
    UrlPath(rest): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    let (name, action) = match rest.rsplit_once('/') {
        Some((n, a)) if ["json", "tag", "get", "history", "push"].contains(&a) => (n.to_owned(), a),
        _ => (rest.clone(), ""),
    };
    match (method.as_str(), action) {
        ("GET", "json") => Ok(Json(inspect_json(&rt.images.resolve(&name)?)).into_response()),
        ("POST", "tag") => {
            let repo = q.get("repo").cloned().unwrap_or_default();
            let target = match q.get("tag").filter(|t| !t.is_empty()) {
                Some(t) => format!("{repo}:{t}"),
                None => repo,
            };
            rt.images.tag(&name, &target)?;
            Ok(StatusCode::CREATED.into_response())
        }
        ("GET", "get") => save(&rt, vec![name]).await,
        ("GET", "history") => {
            let i = rt.images.resolve(&name)?;
            Ok(Json(json!([{"Id": i.id, "Created": i.created(), "CreatedBy": "", "Tags": i.repo_tags, "Size": i.size, "Comment": ""}]))
                .into_response())
        }
        ("DELETE", "") => {
            let exec = rt.exec.clone();
            let force = flag(&q, "force");
            let in_use = move |id: &str| {
                !force
                    && crate::agent::exec::Executor::list(exec.as_ref())
                        .iter()
                        .any(|c| c.config.image_id == id)
            };
            let out = rt.images.remove(&name, &in_use)?;
            Ok(Json(out.into_iter().map(|(k, v)| json!({ k: v })).collect::<Vec<_>>()).into_response())
        }
        _ => Err(ApiError::not_found("page not found")),
    }
}

/// `GET /images/get?names=…` (docker save with several images).
pub(super) async fn get_many(State(e): S, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let rt = runtime(&e)?;
    let names = form_values(raw.as_deref().unwrap_or(""), "names");
    if names.is_empty() {
        return Err(ApiError::invalid("no images named"));
    }
    save(&rt, names).await
}

async fn save(rt: &Arc<Runtime>, names: Vec<String>) -> Result<Response, ApiError> {
    for n in &names {
        rt.images.resolve(n)?;
    }
    let images = rt.images.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        images.save(&names, &mut out).map(|()| out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(([("content-type", "application/x-tar")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_values_are_decoded() {
        assert_eq!(
            form_values("changes=CMD%20%5B%22sh%22%5D&x=1&changes=ENV+A%3D1", "changes"),
            ["CMD [\"sh\"]", "ENV A=1"]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
