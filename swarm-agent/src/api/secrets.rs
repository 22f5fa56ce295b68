//! `/secrets` and `/configs`: Docker's `Secret` and `Config` objects over
//! the store's blobs. A secret's `Spec.Data` is never returned.

use std::collections::{BTreeMap, HashMap};

use axum::{
    Json,
    extract::{Path as UrlPath, Query, State},
    http::StatusCode,
};
use serde_json::{Value, json};

use super::{S, control, convert::rfc3339, parse_filters, version_param};
use crate::{
    error::ApiError,
    manager::store::secret::{Blob, Kind},
    rpc::messages::{BlobSpec, ControlRequest, ControlResponse},
};

fn unexpected() -> ApiError {
    ApiError::internal("unexpected response")
}

/// Docker's JSON for a blob.
pub fn object(kind: Kind, b: &Blob) -> Value {
    let mut spec = json!({ "Name": b.name, "Labels": b.labels });
    if kind == Kind::Config {
        spec["Data"] = json!(b.data);
    }
    if let Some(t) = &b.templating {
        spec["Templating"] = t.clone();
    }
    json!({
        "ID": b.id,
        "Version": { "Index": b.meta.version },
        "CreatedAt": rfc3339(b.meta.created_at),
        "UpdatedAt": rfc3339(b.meta.updated_at),
        "Spec": spec,
    })
}

/// The body of a create or update: Docker's `SecretSpec`/`ConfigSpec`.
fn blob_spec(body: &[u8]) -> Result<BlobSpec, ApiError> {
    let v: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?
    };
    let o = v.as_object().ok_or_else(|| ApiError::invalid("invalid JSON: the spec must be an object"))?;
    let text = |k: &str| -> Result<Option<String>, ApiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError::invalid(format!("invalid JSON: {k} must be a string"))),
        }
    };
    let labels: BTreeMap<String, String> = match o.get("Labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(l) => serde_json::from_value(l.clone())
            .map_err(|_| ApiError::invalid("invalid JSON: Labels must map strings to strings"))?,
    };
    Ok(BlobSpec {
        name: text("Name")?.unwrap_or_default(),
        labels,
        data: text("Data")?,
        driver: o.get("Driver").cloned(),
        templating: o.get("Templating").cloned(),
    })
}

async fn list(
    e: &crate::daemon::Engine,
    kind: Kind,
    q: &HashMap<String, String>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let filters = parse_filters(q)?;
    let allowed: &[&str] = match kind {
        Kind::Secret => &["id", "label", "name", "names"],
        Kind::Config => &["id", "label", "name"],
    };
    if let Some(k) = filters.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(format!("invalid filter '{k}'")));
    }
    let ControlResponse::Blobs(blobs) = control(e, ControlRequest::ListBlobs { kind }).await? else {
        return Err(unexpected());
    };
    let keep = |b: &Blob| {
        // name, names and id filters are alternatives (swarmkit ORs them).
        let by_name: Vec<bool> = [
            filters.get("names").map(|v| v.contains(&b.name)),
            filters.get("name").map(|v| v.iter().any(|x| b.name.starts_with(x.as_str()))),
            filters.get("id").map(|v| v.iter().any(|x| b.id.starts_with(x.as_str()))),
        ]
        .into_iter()
        .flatten()
        .collect();
        (by_name.is_empty() || by_name.contains(&true))
            && filters.get("label").is_none_or(|v| v.iter().all(|x| label_matches(&b.labels, x)))
    };
    Ok(Json(blobs.iter().filter(|b| keep(b)).map(|b| object(kind, b)).collect()))
}

fn label_matches(labels: &BTreeMap<String, String>, x: &str) -> bool {
    match x.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|l| l == v),
        None => labels.contains_key(x),
    }
}

async fn inspect(e: &crate::daemon::Engine, kind: Kind, id: String) -> Result<Json<Value>, ApiError> {
    match control(e, ControlRequest::GetBlob { kind, id }).await? {
        ControlResponse::Blob(b) => Ok(Json(object(kind, &b))),
        _ => Err(unexpected()),
    }
}

async fn create(
    e: &crate::daemon::Engine,
    kind: Kind,
    body: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let spec = blob_spec(body)?;
    match control(e, ControlRequest::CreateBlob { kind, spec }).await? {
        ControlResponse::Created { id } => Ok((StatusCode::CREATED, Json(json!({ "ID": id })))),
        _ => Err(unexpected()),
    }
}

async fn update(
    e: &crate::daemon::Engine,
    kind: Kind,
    id: String,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<StatusCode, ApiError> {
    let version =
        version_param(q).map_err(|_| ApiError::invalid(format!("invalid {} version", kind.as_str())))?;
    let spec = blob_spec(body)?;
    control(e, ControlRequest::UpdateBlob { kind, id, version, spec }).await?;
    Ok(StatusCode::OK)
}

async fn remove(e: &crate::daemon::Engine, kind: Kind, id: String) -> Result<StatusCode, ApiError> {
    control(e, ControlRequest::RemoveBlob { kind, id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn secrets_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    list(&e, Kind::Secret, &q).await
}
pub(super) async fn configs_list(
    State(e): S,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    list(&e, Kind::Config, &q).await
}
pub(super) async fn secret_inspect(
    State(e): S,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    inspect(&e, Kind::Secret, id).await
}
pub(super) async fn config_inspect(
    State(e): S,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    inspect(&e, Kind::Config, id).await
}
pub(super) async fn secret_create(
    State(e): S,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(&e, Kind::Secret, &body).await
}
pub(super) async fn config_create(
    State(e): S,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    create(&e, Kind::Config, &body).await
}
pub(super) async fn secret_update(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    update(&e, Kind::Secret, id, &q, &body).await
}
pub(super) async fn config_update(
    State(e): S,
    UrlPath(id): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    update(&e, Kind::Config, id, &q, &body).await
}
pub(super) async fn secret_remove(State(e): S, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    remove(&e, Kind::Secret, id).await
}
pub(super) async fn config_remove(State(e): S, UrlPath(id): UrlPath<String>) -> Result<StatusCode, ApiError> {
    remove(&e, Kind::Config, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_strictly_and_secrets_hide_their_data() {
        let s = blob_spec(br#"{"Name":"pw","Labels":{"a":"1"},"Data":"aHVudGVyMg=="}"#).unwrap();
        assert_eq!((s.name.as_str(), s.data.as_deref()), ("pw", Some("aHVudGVyMg==")));
        assert!(blob_spec(br#"{"Name":3}"#).is_err());
        assert!(blob_spec(br#"{"Labels":{"a":1}}"#).is_err());
        assert!(blob_spec(b"[1]").is_err());
        assert!(blob_spec(b"{").is_err());
        let b = Blob {
            id: "x".into(),
            meta: crate::manager::store::model::Meta::default(),
            name: "pw".into(),
            labels: BTreeMap::new(),
            data: "aHVudGVyMg==".into(),
            driver: None,
            templating: None,
        };
        assert!(object(Kind::Secret, &b)["Spec"].get("Data").is_none());
        assert_eq!(object(Kind::Config, &b)["Spec"]["Data"], "aHVudGVyMg==");
    }
}
