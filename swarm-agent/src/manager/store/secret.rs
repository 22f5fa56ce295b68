//! Secrets and configs: named blobs of data that services reference and
//! their tasks get as files. One model for both ([`Kind`] tells them apart:
//! a secret's data is never shown back, its limit is 500 KiB; a config's is
//! shown, up to 1000 KiB). The store keeps the data base64-encoded; the Raft
//! files that hold it are sealed ([`crate::manager::raft::seal`]).

use std::collections::BTreeMap;

use bollard_stubs::models as m;
use serde::{Deserialize, Serialize};

use crate::{error::ApiError, manager::store::model::Meta};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    /// Data must be shorter than this (swarmkit's `MaxSecretSize`,
    /// `MaxConfigSize`).
    pub fn max_size(self) -> usize {
        match self {
            Kind::Secret => 500 * 1024,
            Kind::Config => 1000 * 1024,
        }
    }
}

/// A secret or a config (Docker's `Secret`/`Config`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Blob {
    pub id: String,
    pub meta: Meta,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The data, base64.
    pub data: String,
    /// `Spec.Driver` and `Spec.Templating` as given (kept, not acted on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templating: Option<serde_json::Value>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

/// A file a task gets: which blob, where, owned by whom, with what mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    pub kind: Kind,
    pub id: String,
    pub name: String,
    /// The target as given (a name, or an absolute path).
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

impl FileRef {
    /// Where the file appears in the container: secrets under
    /// `/run/secrets/`, configs under `/`, unless the target is absolute.
    pub fn path(&self) -> String {
        if self.target.starts_with('/') {
            self.target.clone()
        } else if self.kind == Kind::Secret {
            format!("/run/secrets/{}", self.target)
        } else {
            format!("/{}", self.target)
        }
    }
}

/// The secret and config references of a service spec, as given (refs
/// without a file target are left out; validation refuses them).
pub fn file_refs(spec: &m::ServiceSpec) -> Vec<FileRef> {
    let Some(c) = spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for s in c.secrets.iter().flatten() {
        let f = s.file.clone().unwrap_or_default();
        out.push(FileRef {
            kind: Kind::Secret,
            id: s.secret_id.clone().unwrap_or_default(),
            name: s.secret_name.clone().unwrap_or_default(),
            target: f.name.unwrap_or_default(),
            uid: f.uid.unwrap_or_else(|| "0".into()),
            gid: f.gid.unwrap_or_else(|| "0".into()),
            mode: f.mode.unwrap_or(0o444),
        });
    }
    for s in c.configs.iter().flatten() {
        // Runtime configs (credential specs) are not files.
        if s.runtime.is_some() && s.file.is_none() {
            continue;
        }
        let f = s.file.clone().unwrap_or_default();
        out.push(FileRef {
            kind: Kind::Config,
            id: s.config_id.clone().unwrap_or_default(),
            name: s.config_name.clone().unwrap_or_default(),
            target: f.name.unwrap_or_default(),
            uid: f.uid.unwrap_or_else(|| "0".into()),
            gid: f.gid.unwrap_or_else(|| "0".into()),
            mode: f.mode.unwrap_or(0o444),
        });
    }
    out
}

/// swarmkit's rule for secret and config names.
///
/// # Errors
/// Docker's words for an empty or invalid name.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid("name must be provided"));
    }
    let ok_end = |c: char| c.is_ascii_alphanumeric();
    let ok_mid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let valid =
        name.len() <= 64 && name.starts_with(ok_end) && name.ends_with(ok_end) && name.chars().all(ok_mid);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
        ))
    }
}

/// The size rule for a blob's (decoded) data.
///
/// # Errors
/// Docker's words for empty or oversized data.
pub fn validate_data(kind: Kind, len: usize) -> Result<(), ApiError> {
    if len == 0 || len >= kind.max_size() {
        return Err(ApiError::invalid(format!(
            "{} data must be larger than 0 and less than {} bytes",
            kind.as_str(),
            kind.max_size()
        )));
    }
    Ok(())
}

/// swarmkit's checks of a spec's secret and config references: well
/// formed, no two on one target, and each names an existing blob.
///
/// # Errors
/// Docker's words for the first problem found.
pub fn validate_refs(
    spec: &m::ServiceSpec,
    lookup: impl Fn(Kind, &str) -> Option<String>,
) -> Result<(), ApiError> {
    let c = spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref());
    // Refs as given, before `file_refs` fills defaults.
    if let Some(c) = c {
        for s in c.secrets.iter().flatten() {
            check_ref(
                Kind::Secret,
                s.secret_id.as_deref(),
                s.secret_name.as_deref(),
                (s.file.is_some(), s.file.as_ref().and_then(|f| f.name.as_deref())),
            )?;
        }
        for s in c.configs.iter().flatten() {
            if s.runtime.is_some() && s.file.is_none() {
                continue;
            }
            check_ref(
                Kind::Config,
                s.config_id.as_deref(),
                s.config_name.as_deref(),
                (s.file.is_some(), s.file.as_ref().and_then(|f| f.name.as_deref())),
            )?;
        }
    }
    let refs = file_refs(spec);
    for kind in [Kind::Secret, Kind::Config] {
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        let mut missing = Vec::new();
        for r in refs.iter().filter(|r| r.kind == kind) {
            if let Some(prev) = targets.insert(&r.target, &r.name) {
                return Err(ApiError::invalid(format!(
                    "{k} references '{prev}' and '{}' have a conflicting target: '{}'",
                    r.name,
                    r.target,
                    k = kind.as_str()
                )));
            }
            if lookup(kind, &r.id).as_deref() != Some(r.name.as_str()) {
                missing.push(r.name.clone());
            }
        }
        if !missing.is_empty() {
            let what =
                if missing.len() == 1 { kind.as_str().to_owned() } else { format!("{}s", kind.as_str()) };
            return Err(ApiError::invalid(format!("{what} not found: {}", missing.join(", "))));
        }
    }
    Ok(())
}

/// `file`: whether the reference has a file target, and its name.
fn check_ref(
    kind: Kind,
    id: Option<&str>,
    name: Option<&str>,
    file: (bool, Option<&str>),
) -> Result<(), ApiError> {
    let k = kind.as_str();
    if id.is_none_or(str::is_empty) || name.is_none_or(str::is_empty) {
        return Err(ApiError::invalid(format!("malformed {k} reference")));
    }
    match file {
        (false, _) => Err(ApiError::invalid(format!("malformed {k} reference, no target provided"))),
        (true, None | Some("")) => {
            Err(ApiError::invalid(format!("malformed file {k} reference, invalid target file name provided")))
        }
        (true, Some(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(secrets: &[(&str, &str, &str)]) -> m::ServiceSpec {
        m::ServiceSpec {
            task_template: Some(m::TaskSpec {
                container_spec: Some(m::TaskSpecContainerSpec {
                    secrets: Some(
                        secrets
                            .iter()
                            .map(|(id, name, target)| m::TaskSpecContainerSpecSecrets {
                                secret_id: Some((*id).into()),
                                secret_name: Some((*name).into()),
                                file: Some(m::TaskSpecContainerSpecFile {
                                    name: Some((*target).into()),
                                    ..Default::default()
                                }),
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn names_sizes_and_references_follow_swarmkit() {
        for ok in ["a", "db-pass", "x.y_z9", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "ä", &"a".repeat(65)] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid name, only 64 [a-zA-Z0-9-_.] characters allowed"), "{bad}: {e}");
        }
        assert!(validate_name("").unwrap_err().to_string().contains("name must be provided"));
        assert!(validate_data(Kind::Secret, 1).is_ok());
        let e = validate_data(Kind::Secret, 500 * 1024).unwrap_err().to_string();
        assert!(e.contains("secret data must be larger than 0 and less than 512000 bytes"), "{e}");
        assert!(validate_data(Kind::Config, 500 * 1024).is_ok());
        assert!(validate_data(Kind::Config, 0).is_err());

        let known = |k: Kind, id: &str| (k == Kind::Secret && id == "s1").then(|| "pw".to_owned());
        assert!(validate_refs(&spec(&[("s1", "pw", "pw")]), known).is_ok());
        let e = validate_refs(&spec(&[("s1", "pw", "a"), ("s1", "pw", "a")]), known).unwrap_err();
        assert!(
            e.to_string().contains("secret references 'pw' and 'pw' have a conflicting target: 'a'"),
            "{e}"
        );
        let e = validate_refs(&spec(&[("s2", "other", "o")]), known).unwrap_err();
        assert!(e.to_string().contains("secret not found: other"), "{e}");
        // The name must match the ID's.
        let e = validate_refs(&spec(&[("s1", "other", "o")]), known).unwrap_err();
        assert!(e.to_string().contains("secret not found: other"), "{e}");
        let e = validate_refs(&spec(&[("", "pw", "pw")]), known).unwrap_err();
        assert!(e.to_string().contains("malformed secret reference"), "{e}");
        let e = validate_refs(&spec(&[("s1", "pw", "")]), known).unwrap_err();
        assert!(e.to_string().contains("malformed file secret reference, invalid target file name"), "{e}");

        let r = &file_refs(&spec(&[("s1", "pw", "pw")]))[0];
        assert_eq!((r.path().as_str(), r.uid.as_str(), r.mode), ("/run/secrets/pw", "0", 0o444));
        let c = FileRef { kind: Kind::Config, target: "app.conf".into(), ..r.clone() };
        assert_eq!(c.path(), "/app.conf");
        let abs = FileRef { target: "/etc/x".into(), ..r.clone() };
        assert_eq!(abs.path(), "/etc/x");
    }
}
