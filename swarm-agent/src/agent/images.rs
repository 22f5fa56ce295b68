//! This node's images: a content-addressed store, no registry needed.
//!
//! ```text
//! <root>/repositories.json     familiar reference (busybox:latest) -> image ID
//! <root>/configs/<hex>         image config JSON; the ID is sha256 of these bytes
//! <root>/layers/<hex>.tar      a layer as an uncompressed tar; <hex> is its diff ID
//! <root>/layers/<hex>/         the same layer unpacked, for overlayfs (whiteouts
//!                              turned into overlayfs's 0:0 devices and opaque xattrs)
//! ```
//!
//! Images come in by `docker load` (docker-save archives, legacy and OCI
//! layout) and `docker import` (a rootfs tarball), go out by `docker save`.
//! Every layer is checked against the digest the image config names.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufReader, Read, Seek, Write},
    path::{Path, PathBuf},
    sync::Mutex,
};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, util::reference};

/// An image as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// `sha256:<hex>` of the config.
    pub id: String,
    pub config: serde_json::Value,
    /// Layer diff IDs (`sha256:<hex>`), bottom first.
    pub layers: Vec<String>,
    pub repo_tags: Vec<String>,
    pub size: u64,
}

impl Image {
    /// What the image runs by default: (entrypoint, cmd, env, workdir, user).
    pub fn run_config(&self) -> RunConfig {
        let c = &self.config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                .unwrap_or_default()
        };
        RunConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            workdir: c["WorkingDir"].as_str().unwrap_or("").to_owned(),
            user: c["User"].as_str().unwrap_or("").to_owned(),
            stop_signal: c["StopSignal"].as_str().unwrap_or("").to_owned(),
        }
    }

    pub fn created(&self) -> i64 {
        self.config["created"]
            .as_str()
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
            .map_or(0, time::OffsetDateTime::unix_timestamp)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub stop_signal: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Repositories {
    refs: BTreeMap<String, String>,
}

pub struct ImageStore {
    root: PathBuf,
    repos: Mutex<Repositories>,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> ApiError + '_ {
    move |e| ApiError::internal(format!("{what}: {e}"))
}

fn hex(d: &[u8]) -> String {
    use std::fmt::Write as _;
    d.iter().fold(String::with_capacity(d.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The SHA-256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&SHA256, data).as_ref())
}

/// `No such image: <ref>`, docker's text.
pub fn no_such_image(r: &str) -> ApiError {
    ApiError::not_found(format!("No such image: {r}"))
}

/// The familiar `name:tag` form of a user-given reference.
pub fn normalize(r: &str) -> Result<String, ApiError> {
    reference::parse(r).map(|p| p.familiar()).map_err(ApiError::invalid)
}

fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b])
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    ctx: Context,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

impl ImageStore {
    pub fn open(root: PathBuf) -> io::Result<ImageStore> {
        fs::create_dir_all(root.join("configs"))?;
        fs::create_dir_all(root.join("layers"))?;
        fs::create_dir_all(root.join("tmp"))?;
        let repos = match fs::read(root.join("repositories.json")) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Repositories::default(),
            Err(e) => return Err(e),
        };
        Ok(ImageStore { root, repos: Mutex::new(repos) })
    }

    fn repos(&self) -> std::sync::MutexGuard<'_, Repositories> {
        self.repos.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save_repos(&self, r: &Repositories) -> Result<(), ApiError> {
        let tmp = self.root.join("repositories.json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(r).unwrap_or_default())
            .map_err(io_err("saving image references"))?;
        fs::rename(&tmp, self.root.join("repositories.json")).map_err(io_err("saving image references"))
    }

    pub fn layer_dir(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(diff_id.trim_start_matches("sha256:"))
    }

    pub fn layer_tar(&self, diff_id: &str) -> PathBuf {
        self.root.join("layers").join(format!("{}.tar", diff_id.trim_start_matches("sha256:")))
    }

    /// The stored config of image `id`.
    pub fn config_file(&self, id: &str) -> PathBuf {
        self.config_path(id)
    }

    /// Stores an image whose layers are already here; tags it.
    pub fn add_image(&self, config: &[u8], tags: &[String]) -> Result<String, ApiError> {
        let id = self.add_config(config)?;
        self.tag_id(&id, tags)?;
        Ok(id)
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.root.join("configs").join(id.trim_start_matches("sha256:"))
    }

    fn tmp(&self) -> Result<tempfile::TempDir, ApiError> {
        tempfile::Builder::new()
            .prefix("in-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(io_err("making a temporary directory"))
    }

    /// Stores a layer from a tar (gzip or not); returns its diff ID. The
    /// layer is unpacked once; a layer already present is kept.
    pub fn add_layer(&self, mut r: impl Read) -> Result<String, ApiError> {
        let mut head = [0u8; 2];
        let n = read_full(&mut r, &mut head).map_err(io_err("reading a layer"))?;
        let chained = io::Cursor::new(head[..n].to_vec()).chain(r);
        let plain: Box<dyn Read> = if is_gzip(&head[..n]) {
            Box::new(flate2::read::GzDecoder::new(chained))
        } else {
            Box::new(chained)
        };
        let tmp_dir = self.tmp()?;
        let tmp_tar = tmp_dir.path().join("layer.tar");
        let mut hashing = Hashing { inner: plain, ctx: Context::new(&SHA256), len: 0 };
        {
            let mut f = File::create(&tmp_tar).map_err(io_err("writing a layer"))?;
            io::copy(&mut hashing, &mut f).map_err(|e| ApiError::invalid(format!("reading a layer: {e}")))?;
            f.sync_all().map_err(io_err("writing a layer"))?;
        }
        let diff_id = format!("sha256:{}", hex(hashing.ctx.finish().as_ref()));
        let dir = self.layer_dir(&diff_id);
        if !dir.exists() {
            let unpack = tmp_dir.path().join("rootfs");
            fs::create_dir_all(&unpack).map_err(io_err("unpacking a layer"))?;
            unpack_layer(File::open(&tmp_tar).map_err(io_err("unpacking a layer"))?, &unpack)
                .map_err(|e| ApiError::invalid(format!("unpacking a layer: {}", crate::error::chain(&e))))?;
            fs::rename(&tmp_tar, self.layer_tar(&diff_id)).map_err(io_err("storing a layer"))?;
            fs::rename(&unpack, &dir).map_err(io_err("storing a layer"))?;
        }
        Ok(diff_id)
    }

    /// Stores an image config; returns the image ID.
    fn add_config(&self, bytes: &[u8]) -> Result<String, ApiError> {
        let id = format!("sha256:{}", hex(ring::digest::digest(&SHA256, bytes).as_ref()));
        let p = self.config_path(&id);
        if !p.exists() {
            let tmp = p.with_extension("tmp");
            fs::write(&tmp, bytes).map_err(io_err("storing an image config"))?;
            fs::rename(&tmp, &p).map_err(io_err("storing an image config"))?;
        }
        Ok(id)
    }

    fn tag_id(&self, id: &str, refs: &[String]) -> Result<(), ApiError> {
        let mut r = self.repos();
        for name in refs {
            r.refs.insert(name.clone(), id.to_owned());
        }
        self.save_repos(&r)
    }

    /// `docker import`: a rootfs tarball becomes a one-layer image.
    /// `changes` are Dockerfile instructions (`CMD`, `ENTRYPOINT`, `ENV`,
    /// `WORKDIR`, `USER`, `LABEL`, `STOPSIGNAL`).
    pub fn import(
        &self,
        r: impl Read,
        reference: Option<&str>,
        changes: &[String],
    ) -> Result<String, ApiError> {
        let name = reference.filter(|r| !r.is_empty()).map(normalize).transpose()?;
        let mut config = serde_json::json!({});
        for c in changes {
            apply_change(&mut config, c)?;
        }
        let diff_id = self.add_layer(r)?;
        let created = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let doc = serde_json::json!({
            "architecture": crate::api::go_arch(),
            "os": "linux",
            "created": created,
            "config": config,
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
            "history": [{ "created": created, "comment": "Imported from -" }],
        });
        let id = self.add_config(&serde_json::to_vec(&doc).unwrap_or_default())?;
        if let Some(n) = name {
            self.tag_id(&id, &[n])?;
        }
        Ok(id)
    }

    /// `docker load`: a `docker save` archive (legacy `manifest.json`, or
    /// an OCI layout). Returns `Loaded image: …` lines.
    pub fn load(&self, r: impl Read) -> Result<Vec<String>, ApiError> {
        let tmp = self.tmp()?;
        let mut ar = tar::Archive::new(r);
        ar.unpack(tmp.path()).map_err(|e| ApiError::invalid(format!("reading the archive: {e}")))?;
        let manifest: Vec<SaveManifest> = match fs::read(tmp.path().join("manifest.json")) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| ApiError::invalid(format!("manifest.json: {e}")))?
            }
            Err(_) => oci_manifests(tmp.path())?,
        };
        if manifest.is_empty() {
            return Err(ApiError::invalid("the archive holds no images"));
        }
        let mut out = Vec::new();
        for m in manifest {
            let config_bytes = read_inside(tmp.path(), &m.config)?;
            let config: serde_json::Value = serde_json::from_slice(&config_bytes)
                .map_err(|e| ApiError::invalid(format!("image config {}: {e}", m.config)))?;
            let want: Vec<String> = config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            if want.len() != m.layers.len() {
                return Err(ApiError::invalid(format!(
                    "image config names {} layers, the manifest {}",
                    want.len(),
                    m.layers.len()
                )));
            }
            for (layer, expect) in m.layers.iter().zip(&want) {
                let path = inside(tmp.path(), layer)?;
                let f = File::open(&path).map_err(|e| ApiError::invalid(format!("layer {layer}: {e}")))?;
                let got = self.add_layer(BufReader::new(f))?;
                if &got != expect {
                    return Err(ApiError::invalid(format!(
                        "layer {layer} has digest {got}, the config says {expect}"
                    )));
                }
            }
            let id = self.add_config(&config_bytes)?;
            let tags: Vec<String> =
                m.repo_tags.iter().flatten().map(|t| normalize(t)).collect::<Result<_, _>>()?;
            self.tag_id(&id, &tags)?;
            if tags.is_empty() {
                out.push(format!("Loaded image ID: {id}"));
            }
            out.extend(tags.into_iter().map(|t| format!("Loaded image: {t}")));
        }
        Ok(out)
    }

    /// `docker save`: a legacy-layout archive of the given images.
    pub fn save(&self, refs: &[String], w: impl Write) -> Result<(), ApiError> {
        let mut b = tar::Builder::new(w);
        let mut manifest = Vec::new();
        let mut added = std::collections::BTreeSet::new();
        for r in refs {
            let img = self.resolve(r)?;
            let hexid = img.id.trim_start_matches("sha256:").to_owned();
            let cfg_name = format!("{hexid}.json");
            if added.insert(cfg_name.clone()) {
                let bytes = fs::read(self.config_path(&img.id)).map_err(io_err("reading an image config"))?;
                append_bytes(&mut b, &cfg_name, &bytes)?;
            }
            let mut layers = Vec::new();
            for l in &img.layers {
                let name = format!("{}/layer.tar", l.trim_start_matches("sha256:"));
                if added.insert(name.clone()) {
                    let mut f = File::open(self.layer_tar(l)).map_err(io_err("reading a layer"))?;
                    b.append_file(&name, &mut f).map_err(io_err("writing the archive"))?;
                }
                layers.push(name);
            }
            let tags = if r.starts_with("sha256:") { None } else { Some(vec![normalize(r)?]) };
            manifest.push(SaveManifest { config: cfg_name, repo_tags: tags, layers });
        }
        append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest).unwrap_or_default())?;
        b.finish().map_err(io_err("writing the archive"))
    }

    /// An image by reference, ID or unique ID prefix.
    pub fn resolve(&self, r: &str) -> Result<Image, ApiError> {
        let id = {
            let repos = self.repos();
            let by_name = reference::parse(r).ok().and_then(|p| repos.refs.get(&p.familiar()).cloned());
            by_name.or_else(|| {
                let want = r.trim_start_matches("sha256:");
                if want.len() < 4 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let mut found = fs::read_dir(self.root.join("configs"))
                    .ok()?
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(want) && n.len() == 64);
                match (found.next(), found.next()) {
                    (Some(one), None) => Some(format!("sha256:{one}")),
                    _ => None,
                }
            })
        };
        let id = id.ok_or_else(|| no_such_image(r))?;
        self.image(&id).ok_or_else(|| no_such_image(r))
    }

    fn image(&self, id: &str) -> Option<Image> {
        let bytes = fs::read(self.config_path(id)).ok()?;
        let config: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
        let layers: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let size = layers.iter().filter_map(|l| fs::metadata(self.layer_tar(l)).ok()).map(|m| m.len()).sum();
        let repo_tags = self.repos().refs.iter().filter(|(_, v)| *v == id).map(|(k, _)| k.clone()).collect();
        Some(Image { id: id.to_owned(), config, layers, repo_tags, size })
    }

    pub fn list(&self) -> Vec<Image> {
        let Ok(dir) = fs::read_dir(self.root.join("configs")) else { return Vec::new() };
        let mut out: Vec<Image> = dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.len() == 64)
            .filter_map(|n| self.image(&format!("sha256:{n}")))
            .collect();
        out.sort_by_key(|i| std::cmp::Reverse(i.created()));
        out
    }

    /// `docker tag`.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ApiError> {
        let img = self.resolve(source)?;
        let t = normalize(target)?;
        self.tag_id(&img.id, &[t])
    }

    /// `docker rmi`: untags a reference; the image goes with its last tag
    /// (or at once when given by ID). Returns docker's `Untagged`/`Deleted`
    /// records.
    pub fn remove(&self, r: &str, in_use: &dyn Fn(&str) -> bool) -> Result<Vec<(String, String)>, ApiError> {
        let img = self.resolve(r)?;
        let mut out = Vec::new();
        let by_name = reference::parse(r).ok().map(|p| p.familiar()).filter(|n| img.repo_tags.contains(n));
        let mut repos = self.repos();
        if let Some(n) = &by_name
            && img.repo_tags.len() > 1
        {
            repos.refs.remove(n);
            self.save_repos(&repos)?;
            return Ok(vec![("Untagged".into(), n.clone())]);
        }
        if in_use(&img.id) {
            return Err(ApiError::conflict(format!(
                "conflict: unable to remove repository reference \"{r}\" (must force) - container is using its referenced image {}",
                &img.id.trim_start_matches("sha256:")[..12]
            )));
        }
        for t in &img.repo_tags {
            repos.refs.remove(t);
            out.push(("Untagged".into(), t.clone()));
        }
        self.save_repos(&repos)?;
        drop(repos);
        let _ = fs::remove_file(self.config_path(&img.id));
        out.push(("Deleted".into(), img.id.clone()));
        // Layers stay while another image uses them.
        let still: std::collections::BTreeSet<String> =
            self.list().into_iter().flat_map(|i| i.layers).collect();
        for l in img.layers.iter().filter(|l| !still.contains(*l)) {
            let _ = fs::remove_file(self.layer_tar(l));
            let _ = fs::remove_dir_all(self.layer_dir(l));
            out.push(("Deleted".into(), l.clone()));
        }
        Ok(out)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn append_bytes(b: &mut tar::Builder<impl Write>, name: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, bytes).map_err(io_err("writing the archive"))
}

#[derive(Debug, Serialize, Deserialize)]
struct SaveManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// A path named by an archive, which must stay inside it.
fn inside(root: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ApiError::invalid(format!("the archive names a path outside itself: {rel}")));
    }
    Ok(root.join(p))
}

fn read_inside(root: &Path, rel: &str) -> Result<Vec<u8>, ApiError> {
    fs::read(inside(root, rel)?).map_err(|e| ApiError::invalid(format!("{rel}: {e}")))
}

/// The images of an OCI layout (`index.json` → manifests → config, layers).
fn oci_manifests(root: &Path) -> Result<Vec<SaveManifest>, ApiError> {
    let blob = |digest: &str| -> Result<String, ApiError> {
        let hexd = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| ApiError::invalid(format!("unsupported digest {digest}")))?;
        Ok(format!("blobs/sha256/{hexd}"))
    };
    let index: serde_json::Value = serde_json::from_slice(&read_inside(root, "index.json")?)
        .map_err(|e| ApiError::invalid(format!("index.json: {e}")))?;
    let mut out = Vec::new();
    let mut stack: Vec<serde_json::Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    while let Some(desc) = stack.pop() {
        let digest = desc["digest"].as_str().unwrap_or("");
        let doc: serde_json::Value = serde_json::from_slice(&read_inside(root, &blob(digest)?)?)
            .map_err(|e| ApiError::invalid(format!("{digest}: {e}")))?;
        if let Some(children) = doc["manifests"].as_array() {
            stack.extend(children.iter().cloned());
            continue;
        }
        let name = desc["annotations"]["io.containerd.image.name"]
            .as_str()
            .or_else(|| {
                desc["annotations"]["org.opencontainers.image.ref.name"].as_str().filter(|n| n.contains(':'))
            })
            .map(str::to_owned);
        let layers = doc["layers"]
            .as_array()
            .map(|a| {
                a.iter().map(|l| blob(l["digest"].as_str().unwrap_or(""))).collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        out.push(SaveManifest {
            config: blob(doc["config"]["digest"].as_str().unwrap_or(""))?,
            repo_tags: name.map(|n| vec![n]),
            layers,
        });
    }
    Ok(out)
}

/// Unpacks a layer tar into `dest`, turning whiteouts into what overlayfs
/// reads as deletions: `.wh.NAME` → a 0:0 character device NAME, and
/// `.wh..wh..opq` → the directory marked opaque.
pub fn unpack_layer(r: impl Read, dest: &Path) -> io::Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let parent = inside(dest, path.parent().and_then(Path::to_str).unwrap_or(""))
                .map_err(|e| io::Error::other(e.message))?;
            fs::create_dir_all(&parent)?;
            if hidden == ".wh..opq" {
                set_xattr(&parent, "trusted.overlay.opaque", b"y")?;
            } else {
                let target = parent.join(hidden);
                let _ = fs::remove_file(&target);
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(io::Error::from)?;
            }
            continue;
        }
        entry.unpack_in(dest)?;
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let n = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: both strings are NUL-terminated and live across the call;
    // value points at value.len() readable bytes.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// One Dockerfile instruction applied to an image config (`docker import -c`).
fn apply_change(config: &mut serde_json::Value, change: &str) -> Result<(), ApiError> {
    let (instr, rest) = change.trim().split_once(char::is_whitespace).unwrap_or((change.trim(), ""));
    let rest = rest.trim();
    let list = || -> Vec<String> {
        serde_json::from_str::<Vec<String>>(rest)
            .unwrap_or_else(|_| vec!["/bin/sh".into(), "-c".into(), rest.into()])
    };
    match instr.to_ascii_uppercase().as_str() {
        "CMD" => config["Cmd"] = serde_json::json!(list()),
        "ENTRYPOINT" => config["Entrypoint"] = serde_json::json!(list()),
        "WORKDIR" => config["WorkingDir"] = serde_json::json!(rest),
        "USER" => config["User"] = serde_json::json!(rest),
        "STOPSIGNAL" => config["StopSignal"] = serde_json::json!(rest),
        "ENV" => {
            let kv = match rest.split_once('=') {
                Some(_) => rest.to_owned(),
                None => rest.replacen(char::is_whitespace, "=", 1),
            };
            let mut env: Vec<serde_json::Value> = config["Env"].as_array().cloned().unwrap_or_default();
            env.push(serde_json::json!(kv));
            config["Env"] = serde_json::json!(env);
        }
        "LABEL" => {
            let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
            config["Labels"][k] = serde_json::json!(v.trim_matches('"'));
        }
        other => return Err(ApiError::invalid(format!("{other} is not a valid change command"))),
    }
    Ok(())
}

/// Reads a whole seekable file's digest.
pub fn file_digest(f: &mut File) -> io::Result<String> {
    f.rewind()?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(ctx.finish().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn import_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("a")).unwrap();
        let tar = rootfs_tar(&[("bin/hello", b"#!/bin/sh\necho hi\n"), ("etc/motd", b"hello")]);
        let id = store.import(&tar[..], Some("hello"), &["CMD [\"/bin/hello\"]".into()]).unwrap();
        let img = store.resolve("hello").unwrap();
        assert_eq!(img.id, id);
        assert_eq!(img.repo_tags, ["hello:latest"]);
        assert_eq!(img.run_config().cmd, ["/bin/hello"]);
        assert_eq!(fs::read(store.layer_dir(&img.layers[0]).join("etc/motd")).unwrap(), b"hello");
        assert_eq!(store.resolve(&id[7..19]).unwrap().id, id, "by short ID");
        let mut archive = Vec::new();
        store.save(&["hello".into()], &mut archive).unwrap();
        let other = ImageStore::open(dir.path().join("b")).unwrap();
        assert_eq!(other.load(&archive[..]).unwrap(), ["Loaded image: hello:latest"]);
        assert_eq!(other.resolve("docker.io/library/hello:latest").unwrap().id, id, "same content, same ID");
        assert_eq!(store.resolve("nope").unwrap_err().message, "No such image: nope");
    }

    #[test]
    fn load_refuses_a_layer_that_does_not_match_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().join("a")).unwrap();
        let layer = rootfs_tar(&[("x", b"1")]);
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]}});
        let manifest =
            serde_json::json!([{"Config": "c.json", "RepoTags": ["bad:1"], "Layers": ["l/layer.tar"]}]);
        let mut b = tar::Builder::new(Vec::new());
        append_bytes(&mut b, "c.json", &serde_json::to_vec(&config).unwrap()).unwrap();
        append_bytes(&mut b, "l/layer.tar", &layer).unwrap();
        append_bytes(&mut b, "manifest.json", &serde_json::to_vec(&manifest).unwrap()).unwrap();
        let archive = b.into_inner().unwrap();
        let e = store.load(&archive[..]).unwrap_err();
        assert!(e.message.contains("has digest"), "{}", e.message);
        assert!(store.resolve("bad:1").is_err(), "nothing was tagged");
    }

    #[test]
    fn whiteouts_become_overlay_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let tar = rootfs_tar(&[("etc/.wh.gone", b""), ("var/.wh..wh..opq", b""), ("var/new", b"n")]);
        unpack_layer(&tar[..], dir.path()).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(dir.path().join("etc/gone")).unwrap().file_type().is_char_device());
        assert!(!dir.path().join("etc/.wh.gone").exists());
        assert!(dir.path().join("var/new").exists());
    }

    #[test]
    fn bad_references_and_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().to_path_buf()).unwrap();
        assert_eq!(
            store.import(&b""[..], Some("Bad Ref"), &[]).unwrap_err().message,
            "invalid reference format"
        );
        assert!(
            store
                .import(&b""[..], None, &["FROM x".into()])
                .unwrap_err()
                .message
                .contains("not a valid change")
        );
    }
}
