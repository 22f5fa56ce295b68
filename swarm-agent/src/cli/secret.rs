//! `secret create|ls|inspect|rm` and `config create|ls|inspect|rm` with
//! docker's output, and the `--secret`/`--config` references of `service
//! create|update` (docker's CSV syntax, names resolved to IDs).

use std::collections::BTreeMap;

use base64::Engine as _;
use bollard_stubs::models as m;
use serde_json::{Value, json};

use super::client::{CliError, Client};
use crate::{manager::store::secret::Kind, table};

#[derive(Debug, clap::Subcommand)]
pub enum BlobCmd {
    /// Create from a file or STDIN ("-") as content
    Create {
        /// Labels
        #[arg(short, long)]
        label: Vec<String>,
        name: String,
        /// The file holding the data, or "-" for STDIN
        file: Option<String>,
    },
    /// List them
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// Display detailed information on one or more
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn local(m: impl Into<String>) -> CliError {
    CliError::local(m)
}

fn path(kind: Kind) -> &'static str {
    match kind {
        Kind::Secret => "/secrets",
        Kind::Config => "/configs",
    }
}

fn read_data(kind: Kind, file: Option<&str>) -> Result<Vec<u8>, CliError> {
    use std::io::Read as _;
    let k = kind.as_str();
    let file = file.ok_or_else(|| local(format!("{k} file is required")))?;
    // Twice the limit: enough to let the daemon say it is too big.
    let cap = 2 * kind.max_size() as u64;
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .take(cap)
            .read_to_end(&mut data)
            .map_err(|e| local(format!("error reading from STDIN: {e}")))?;
        if data.is_empty() {
            return Err(local("error reading from STDIN: data is empty"));
        }
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(cap).read_to_end(&mut data))
            .map_err(|e| local(format!("error reading from {file}: {e}")))?;
        if data.is_empty() {
            return Err(local(format!("error reading from {file}: data is empty")));
        }
    }
    Ok(data)
}

pub async fn run(client: &Client, kind: Kind, cmd: BlobCmd) -> Result<(), CliError> {
    match cmd {
        BlobCmd::Create { label, name, file } => {
            let data = read_data(kind, file.as_deref())?;
            let mut labels = BTreeMap::new();
            for l in &label {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                labels.insert(k.to_owned(), v.to_owned());
            }
            let body = json!({
                "Name": name,
                "Labels": labels,
                "Data": base64::engine::general_purpose::STANDARD.encode(&data),
            });
            let resp: Value =
                serde_json::from_slice(&client.post(&format!("{}/create", path(kind)), &body).await?)
                    .map_err(|e| local(e.to_string()))?;
            println!("{}", resp["ID"].as_str().unwrap_or_default());
            Ok(())
        }
        BlobCmd::Ls { quiet } => {
            let mut list: Vec<Value> = client.get(path(kind)).await?;
            let name = |v: &Value| v["Spec"]["Name"].as_str().unwrap_or("").to_owned();
            list.sort_by(|a, b| super::fmt::natural_cmp(&name(a), &name(b)));
            if quiet {
                for v in &list {
                    println!("{}", v["ID"].as_str().unwrap_or(""));
                }
                return Ok(());
            }
            let now = crate::manager::now_nanos();
            let ago = |v: &Value| {
                v.as_str().and_then(super::fmt::parse_rfc3339).map_or_else(String::new, |t| {
                    let d = std::time::Duration::from_nanos(u64::try_from(now - t).unwrap_or(0));
                    format!("{} ago", super::fmt::human_duration(d))
                })
            };
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|v| {
                    let mut r = vec![v["ID"].as_str().unwrap_or("").to_owned(), name(v)];
                    if kind == Kind::Secret {
                        r.push(v["Spec"]["Driver"]["Name"].as_str().unwrap_or("").to_owned());
                    }
                    r.push(ago(&v["CreatedAt"]));
                    r.push(ago(&v["UpdatedAt"]));
                    r
                })
                .collect();
            let header: &[&str] = match kind {
                Kind::Secret => &["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
                Kind::Config => &["ID", "NAME", "CREATED", "UPDATED"],
            };
            print!("{}", table::render(header, &rows));
            Ok(())
        }
        BlobCmd::Inspect { names } => {
            client.inspect_each(names.iter().map(|n| format!("{}/{n}", path(kind)))).await
        }
        BlobCmd::Rm { names } => client.remove_each(path(kind), &names).await,
    }
}

/// A `--secret`/`--config` value: `NAME` or
/// `source=NAME[,target=T][,uid=U][,gid=G][,mode=M]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefOpt {
    pub source: String,
    pub target: String,
    pub uid: String,
    pub gid: String,
    pub mode: u32,
}

/// Parses docker's `--secret`/`--config` syntax.
///
/// # Errors
/// Docker's words for a malformed value.
pub fn parse_ref(kind: Kind, s: &str) -> Result<RefOpt, CliError> {
    let k = kind.as_str();
    let mut r = RefOpt {
        source: String::new(),
        target: String::new(),
        uid: "0".into(),
        gid: "0".into(),
        mode: 0o444,
    };
    if !s.contains('=') && !s.contains(',') {
        s.clone_into(&mut r.source);
        s.clone_into(&mut r.target);
        return Ok(r);
    }
    for field in s.split(',') {
        let (key, val) = field
            .split_once('=')
            .ok_or_else(|| local(format!("invalid field '{field}' must be a key=value pair")))?;
        match key.to_lowercase().as_str() {
            "source" | "src" => val.clone_into(&mut r.source),
            "target" => val.clone_into(&mut r.target),
            "uid" => val.clone_into(&mut r.uid),
            "gid" => val.clone_into(&mut r.gid),
            "mode" => {
                let parsed = if let Some(o) = val.strip_prefix("0o").or_else(|| val.strip_prefix("0O")) {
                    u32::from_str_radix(o, 8)
                } else if let Some(x) = val.strip_prefix("0x").or_else(|| val.strip_prefix("0X")) {
                    u32::from_str_radix(x, 16)
                } else if val.len() > 1 && val.starts_with('0') {
                    u32::from_str_radix(&val[1..], 8)
                } else {
                    val.parse()
                };
                r.mode = parsed.map_err(|e| {
                    local(format!("invalid mode specified: strconv.ParseUint: parsing {val:?}: {e}"))
                })?;
            }
            _ => return Err(local(format!("invalid field in {k} request: {key}"))),
        }
    }
    if r.source.is_empty() {
        return Err(local("source is required"));
    }
    if r.target.is_empty() {
        r.target.clone_from(&r.source);
    }
    Ok(r)
}

/// Resolves `refs` to the spec's references (IDs looked up by name).
///
/// # Errors
/// A duplicate target, or a name the daemon does not know.
pub async fn resolve(client: &Client, kind: Kind, refs: &[RefOpt]) -> Result<Vec<Value>, CliError> {
    let k = kind.as_str();
    let mut targets = std::collections::BTreeSet::new();
    for r in refs {
        if !targets.insert(r.target.as_str()) {
            return Err(local(format!("duplicate {k} target for {} not allowed", r.source)));
        }
    }
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<Value> = client.get(path(kind)).await?;
    let mut out = Vec::new();
    for r in refs {
        let id = all
            .iter()
            .find(|v| v["Spec"]["Name"] == r.source.as_str())
            .and_then(|v| v["ID"].as_str())
            .ok_or_else(|| local(format!("{k} not found: {}", r.source)))?;
        let file = json!({"Name": r.target, "UID": r.uid, "GID": r.gid, "Mode": r.mode});
        out.push(match kind {
            Kind::Secret => json!({"File": file, "SecretID": id, "SecretName": r.source}),
            Kind::Config => json!({"File": file, "ConfigID": id, "ConfigName": r.source}),
        });
    }
    Ok(out)
}

/// Sets or edits a spec's references: `add` (resolved) replace refs on the
/// same target, `rm` drops refs by source name.
///
/// # Errors
/// References that do not fit the spec's types.
pub fn apply(spec: &mut m::ServiceSpec, kind: Kind, add: Vec<Value>, rm: &[String]) -> Result<(), CliError> {
    let c = spec
        .task_template
        .get_or_insert_with(Default::default)
        .container_spec
        .get_or_insert_with(Default::default);
    let bad = |e: serde_json::Error| local(e.to_string());
    match kind {
        Kind::Secret => {
            let mut cur = c.secrets.take().unwrap_or_default();
            cur.retain(|s| !rm.iter().any(|r| s.secret_name.as_deref() == Some(r.as_str())));
            for v in add {
                let s: m::TaskSpecContainerSpecSecrets = serde_json::from_value(v).map_err(bad)?;
                let target = s.file.as_ref().and_then(|f| f.name.clone());
                cur.retain(|x| x.file.as_ref().and_then(|f| f.name.clone()) != target);
                cur.push(s);
            }
            c.secrets = (!cur.is_empty()).then_some(cur);
        }
        Kind::Config => {
            let mut cur = c.configs.take().unwrap_or_default();
            cur.retain(|s| !rm.iter().any(|r| s.config_name.as_deref() == Some(r.as_str())));
            for v in add {
                let s: m::TaskSpecContainerSpecConfigs = serde_json::from_value(v).map_err(bad)?;
                let target = s.file.as_ref().and_then(|f| f.name.clone());
                cur.retain(|x| x.file.as_ref().and_then(|f| f.name.clone()) != target);
                cur.push(s);
            }
            c.configs = (!cur.is_empty()).then_some(cur);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_dockers() {
        let r = parse_ref(Kind::Secret, "pw").unwrap();
        assert_eq!((r.source.as_str(), r.target.as_str(), r.uid.as_str(), r.mode), ("pw", "pw", "0", 0o444));
        let r = parse_ref(Kind::Secret, "source=pw,target=p,uid=100,gid=101,mode=0400").unwrap();
        assert_eq!((r.target.as_str(), r.uid.as_str(), r.gid.as_str(), r.mode), ("p", "100", "101", 0o400));
        assert_eq!(parse_ref(Kind::Config, "src=c,mode=292").unwrap().mode, 292);
        let e = |s: &str| parse_ref(Kind::Secret, s).unwrap_err().to_string();
        assert!(e("source=pw,what=1").contains("invalid field in secret request: what"));
        assert!(e("source=pw,target").contains("invalid field 'target' must be a key=value pair"));
        assert!(e("target=x").contains("source is required"));
        assert!(e("source=pw,mode=abc").contains("invalid mode specified"));
    }
}
