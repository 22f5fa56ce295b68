//! The control API for secrets and configs: validated here, written by the
//! store's commands (which refuse a taken name, a stale version, a blob in
//! use). A secret's data never leaves a manager except to the node of a task
//! that uses it (the dispatcher's assignments).

use base64::Engine as _;

use super::{Manager, now_nanos};
use crate::{
    error::ApiError,
    manager::store::{
        secret::{self, Blob, Kind},
        state::Command,
    },
    rpc::messages::{BlobSpec, ControlResponse},
    util::ids,
};

/// A copy fit to show: a secret's data is never returned.
fn shown(kind: Kind, b: &Blob) -> Blob {
    let mut b = b.clone();
    if kind == Kind::Secret {
        b.data.clear();
    }
    b
}

impl Manager {
    pub(super) fn list_blobs(&self, kind: Kind) -> ControlResponse {
        ControlResponse::Blobs(self.state.read(|s| s.blobs(kind).values().map(|b| shown(kind, b)).collect()))
    }

    pub(super) fn get_blob(&self, kind: Kind, id: &str) -> Result<ControlResponse, ApiError> {
        let b = self.state.read(|s| s.resolve_blob(kind, id).map(|b| shown(kind, b)))?;
        Ok(ControlResponse::Blob(Box::new(b)))
    }

    pub(super) async fn create_blob(&self, kind: Kind, spec: BlobSpec) -> Result<ControlResponse, ApiError> {
        secret::validate_name(&spec.name)?;
        let data = spec.data.unwrap_or_default();
        let len = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| ApiError::invalid(format!("{} data is not valid base64: {e}", kind.as_str())))?
            .len();
        let has_driver = spec.driver.as_ref().is_some_and(|d| !d.is_null());
        if has_driver {
            if spec
                .driver
                .as_ref()
                .and_then(|d| d.get("Name"))
                .and_then(|n| n.as_str())
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::invalid("secret driver must have a name"));
            }
            return Err(ApiError::invalid("secret drivers are not supported"));
        }
        secret::validate_data(kind, len)?;
        let id = ids::new_id();
        let now = now_nanos();
        let blob = Blob {
            id: id.clone(),
            meta: crate::manager::store::model::Meta { version: 0, created_at: now, updated_at: now },
            name: spec.name,
            labels: spec.labels,
            data,
            driver: None,
            templating: spec.templating.filter(|t| !t.is_null()),
        };
        self.propose(Command::CreateBlob { kind, blob: Box::new(blob) }).await?;
        Ok(ControlResponse::Created { id })
    }

    pub(super) async fn update_blob(
        &self,
        kind: Kind,
        id: &str,
        version: u64,
        spec: BlobSpec,
    ) -> Result<ControlResponse, ApiError> {
        let id = self.state.read(|s| -> Result<String, ApiError> {
            let b = s.resolve_blob(kind, id)?;
            let data_changed = spec.data.as_ref().is_some_and(|d| !d.is_empty() && *d != b.data);
            if spec.name != b.name || data_changed {
                return Err(ApiError::invalid("only updates to Labels are allowed"));
            }
            Ok(b.id.clone())
        })?;
        self.propose(Command::UpdateBlob { kind, id, version, labels: spec.labels, now: now_nanos() })
            .await?;
        Ok(ControlResponse::Done)
    }

    pub(super) async fn remove_blob(&self, kind: Kind, id: &str) -> Result<ControlResponse, ApiError> {
        let id = self.state.read(|s| s.resolve_blob(kind, id).map(|b| b.id.clone()))?;
        self.propose(Command::RemoveBlob { kind, id }).await?;
        Ok(ControlResponse::Done)
    }
}
