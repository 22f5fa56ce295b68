//! Pulling from a registry (the distribution API v2): manifest (an index
//! picks this platform), config, then each layer — every blob checked
//! against its digest, every layer's uncompressed digest against the
//! config's `diff_ids`. Plain HTTP, for registries the daemon is told are
//! insecure (`--insecure-registry`, as docker's daemon option); anonymous.

use std::io::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::{
    agent::images::{ImageStore, sha256_hex},
    error::ApiError,
    util::reference::{self, Reference},
};

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or config read into memory.
const MAX_DOC: usize = 4 << 20;

fn err(reference: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("pulling {reference}: {e}"))
}

/// Whether `domain` (`host:port`) may be pulled from.
pub fn allowed(domain: &str, insecure: &[String]) -> bool {
    insecure.iter().any(|i| i == domain)
}

/// One GET; follows up to 5 redirects. Returns the status and body.
async fn get(
    url: &str,
    accept: &str,
    limit: usize,
    out: Option<&mut std::fs::File>,
) -> Result<(u16, Bytes, String), String> {
    let mut url = url.to_owned();
    let mut out = out;
    for _ in 0..5 {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("{url}: only plain-HTTP registries (--insecure-registry) are supported"));
        }
        let host = uri.host().ok_or("URL without host")?.to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| format!("connecting to {host}:{port} timed out"))?
        .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
        let req = hyper::Request::get(uri.clone())
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, accept)
            .header(hyper::header::USER_AGENT, concat!("swarm-agent/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let loc = resp
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or("redirect without Location")?;
            url = if loc.starts_with("http") {
                loc.to_owned()
            } else {
                format!("http://{}{loc}", uri.authority().map(ToString::to_string).unwrap_or_default())
            };
            continue;
        }
        let ctype = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if let Some(d) = frame.data_ref() {
                match out.as_deref_mut() {
                    Some(f) if status == 200 => f.write_all(d).map_err(|e| e.to_string())?,
                    _ => {
                        if buf.len() + d.len() > limit {
                            return Err(format!("{url}: response larger than {limit} bytes"));
                        }
                        buf.extend_from_slice(d);
                    }
                }
            }
        }
        return Ok((status, Bytes::from(buf), ctype));
    }
    Err(format!("{url}: too many redirects"))
}

fn go_arch() -> &'static str {
    crate::api::go_arch()
}

/// Pulls `reference` into `store`; returns the image ID.
pub async fn pull(store: &ImageStore, reference_text: &str, insecure: &[String]) -> Result<String, ApiError> {
    let r: Reference = reference::parse(reference_text).map_err(ApiError::invalid)?;
    if !allowed(&r.domain, insecure) {
        return Err(ApiError::not_found(format!(
            "pull access denied for {}: registry {} is not reachable from here (pulls go to registries given with --insecure-registry)",
            r.familiar_name(),
            r.domain
        )));
    }
    let base = format!("http://{}/v2/{}", r.domain, r.path);
    let tag = r.digest.clone().or_else(|| r.tag.clone()).unwrap_or_else(|| "latest".into());
    let (status, mut doc, mut ctype) = get(&format!("{base}/manifests/{tag}"), ACCEPT, MAX_DOC, None)
        .await
        .map_err(|e| err(reference_text, e))?;
    if status == 404 {
        return Err(ApiError::not_found(format!(
            "manifest for {} not found: manifest unknown",
            r.familiar()
        )));
    }
    if status != 200 {
        return Err(err(reference_text, format!("registry answered {status} for the manifest")));
    }
    if let Some(d) = &r.digest
        && format!("sha256:{}", sha256_hex(&doc)) != *d
    {
        return Err(err(reference_text, "the manifest does not match its digest"));
    }
    let mut manifest: Value = serde_json::from_slice(&doc).map_err(|e| err(reference_text, e))?;
    if manifest["manifests"].is_array() || ctype.contains("index") || ctype.contains("list") {
        let pick = manifest["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == go_arch())
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "no matching manifest for linux/{} in the manifest list entries",
                    go_arch()
                ))
            })?
            .to_owned();
        (_, doc, ctype) = get(&format!("{base}/manifests/{pick}"), ACCEPT, MAX_DOC, None)
            .await
            .map_err(|e| err(reference_text, e))?;
        if format!("sha256:{}", sha256_hex(&doc)) != pick {
            return Err(err(reference_text, "the platform manifest does not match its digest"));
        }
        manifest = serde_json::from_slice(&doc).map_err(|e| err(reference_text, e))?;
    }
    let _ = ctype;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| err(reference_text, "manifest without a config"))?
        .to_owned();
    let (status, config, _) = get(&format!("{base}/blobs/{config_digest}"), "*/*", MAX_DOC, None)
        .await
        .map_err(|e| err(reference_text, e))?;
    if status != 200 || format!("sha256:{}", sha256_hex(&config)) != config_digest {
        return Err(err(
            reference_text,
            format!("the config blob {config_digest} is missing or does not match its digest"),
        ));
    }
    let config_doc: Value = serde_json::from_slice(&config).map_err(|e| err(reference_text, e))?;
    let diff_ids: Vec<String> = config_doc["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.len() != diff_ids.len() {
        return Err(err(reference_text, "the manifest and the config disagree on the layers"));
    }
    for (layer, diff_id) in layers.iter().zip(&diff_ids) {
        if store.layer_dir(diff_id).exists() {
            continue;
        }
        let digest = layer["digest"].as_str().unwrap_or("").to_owned();
        let mut tmp = tempfile::tempfile().map_err(|e| err(reference_text, e))?;
        let (status, _, _) = get(&format!("{base}/blobs/{digest}"), "*/*", 0, Some(&mut tmp))
            .await
            .map_err(|e| err(reference_text, e))?;
        if status != 200 {
            return Err(err(reference_text, format!("registry answered {status} for layer {digest}")));
        }
        let got = crate::agent::images::file_digest(&mut tmp).map_err(|e| err(reference_text, e))?;
        if got != digest {
            return Err(err(reference_text, format!("layer {digest} arrived with digest {got}")));
        }
        std::io::Seek::rewind(&mut tmp).map_err(|e| err(reference_text, e))?;
        let stored = store.add_layer(std::io::BufReader::new(tmp))?;
        if &stored != diff_id {
            return Err(err(
                reference_text,
                format!("layer {digest} unpacks to {stored}, the config says {diff_id}"),
            ));
        }
    }
    store.add_image(&config, &[r.familiar()])
}
