//! Getting an image a node lacks. Beyond Docker (which needs a registry for
//! this): any manager that has the image serves it over the cluster's
//! mutually authenticated RPC — its config, then each layer in chunks — and
//! the node checks every blob against its digest before storing it. The
//! same flow pulls from a registry ([`crate::agent::registry`]).

use std::io::{Seek, Write};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::{
    agent::images::{ImageStore, file_digest, no_such_image, normalize, sha256_hex},
    error::ApiError,
};

/// Largest layer chunk one RPC carries.
pub const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestRequest {
    pub reference: String,
}

/// An image as a manager describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageManifest {
    /// `sha256:` of `config`.
    pub id: String,
    /// The config's bytes, base64.
    pub config: String,
    /// Diff IDs, bottom first, with each layer tar's size.
    pub layers: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRequest {
    pub diff_id: String,
    pub offset: u64,
    pub len: u64,
}

/// Where images come from.
pub trait Source: Send + Sync {
    fn manifest<'a>(&'a self, reference: &'a str) -> BoxFuture<'a, Result<Option<ImageManifest>, ApiError>>;
    fn layer(&self, req: LayerRequest) -> BoxFuture<'_, Result<bytes::Bytes, ApiError>>;
}

/// What a manager answers for `reference`.
pub fn describe(store: &ImageStore, reference: &str) -> Result<ImageManifest, ApiError> {
    let img = store.resolve(reference)?;
    let config = std::fs::read(store.config_file(&img.id)).map_err(|e| ApiError::internal(e.to_string()))?;
    let layers = img
        .layers
        .iter()
        .map(|l| (l.clone(), std::fs::metadata(store.layer_tar(l)).map_or(0, |m| m.len())))
        .collect();
    Ok(ImageManifest { id: img.id, config: base64::engine::general_purpose::STANDARD.encode(config), layers })
}

/// A chunk of a layer tar.
pub fn read_layer(store: &ImageStore, req: &LayerRequest) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    if !req.diff_id.starts_with("sha256:")
        || req.diff_id.len() != 71
        || !req.diff_id[7..].bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ApiError::invalid(format!("bad layer digest {:?}", req.diff_id)));
    }
    let mut f = std::fs::File::open(store.layer_tar(&req.diff_id))
        .map_err(|_| ApiError::not_found(format!("no layer {}", req.diff_id)))?;
    f.seek(std::io::SeekFrom::Start(req.offset)).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut buf = Vec::new();
    f.take(req.len.min(CHUNK)).read_to_end(&mut buf).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(buf)
}

/// Fetches `reference` from `source` into `store`, verifying the config and
/// every layer; tags it as `reference`. `Ok(false)` if the source lacks it.
pub async fn fetch(store: &ImageStore, source: &dyn Source, reference: &str) -> Result<bool, ApiError> {
    let name = normalize(reference)?;
    let Some(m) = source.manifest(reference).await? else { return Ok(false) };
    let config = base64::engine::general_purpose::STANDARD
        .decode(&m.config)
        .map_err(|e| ApiError::invalid(format!("image config of {reference}: {e}")))?;
    let got = format!("sha256:{}", sha256_hex(&config));
    if got != m.id {
        return Err(ApiError::invalid(format!(
            "image config of {reference} has digest {got}, expected {}",
            m.id
        )));
    }
    let doc: serde_json::Value = serde_json::from_slice(&config)
        .map_err(|e| ApiError::invalid(format!("image config of {reference}: {e}")))?;
    let want: Vec<String> = doc["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    if want != m.layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>() {
        return Err(ApiError::invalid(format!("the layers of {reference} do not match its config")));
    }
    for (diff_id, size) in &m.layers {
        if store.layer_dir(diff_id).exists() {
            continue;
        }
        let mut tmp = tempfile::tempfile().map_err(|e| ApiError::internal(e.to_string()))?;
        let mut offset = 0;
        while offset < *size {
            let chunk = source.layer(LayerRequest { diff_id: diff_id.clone(), offset, len: CHUNK }).await?;
            if chunk.is_empty() {
                return Err(ApiError::invalid(format!("layer {diff_id} ended early")));
            }
            tmp.write_all(&chunk).map_err(|e| ApiError::internal(e.to_string()))?;
            offset += chunk.len() as u64;
        }
        let digest = file_digest(&mut tmp).map_err(|e| ApiError::internal(e.to_string()))?;
        if &digest != diff_id {
            return Err(ApiError::invalid(format!("layer {diff_id} arrived with digest {digest}")));
        }
        tmp.rewind().map_err(|e| ApiError::internal(e.to_string()))?;
        let stored = store.add_layer(std::io::BufReader::new(tmp))?;
        if &stored != diff_id {
            return Err(ApiError::invalid(format!("layer {diff_id} stored as {stored}")));
        }
    }
    store.add_image(&config, &[name])?;
    Ok(true)
}

/// `No such image`, for a task whose image no source has.
pub fn missing(reference: &str) -> ApiError {
    no_such_image(reference)
}
