//! Compose files (version 3) for `stack deploy`, as docker's CLI reads
//! them: YAML (anchors and `<<` merges, YAML 1.1 octals such as `0400`),
//! `$VAR`/`${VAR:-default}` interpolation with `$$` for a literal `$`, a
//! schema check with docker's messages (`services.web Additional property
//! foo is not allowed`, `services.web.deploy.replicas must be a integer`),
//! then the conversion to service specs of `docker/cli`'s `convert`
//! package: `<stack>_<name>` objects labelled `com.docker.stack.namespace`,
//! a `<stack>_default` network for services that name none, the service's
//! name as an alias on its networks. Pure: no I/O beyond reading the files
//! the compose file names (secrets and configs), given as a closure.

use std::collections::BTreeMap;

use bollard_stubs::models as m;
use serde_json::Value;

use super::{secret::RefOpt, service_flags::parse_bytes, swarm::parse_duration};

/// The label every object of a stack carries.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";
/// The image as the compose file names it (docker's `LabelImage`).
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// A network the stack uses.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkDef {
    /// The name in the swarm (`<stack>_<key>`, or `name:`).
    pub name: String,
    pub external: bool,
    /// `POST /networks/create` body (unused when external).
    pub create: Value,
}

/// A secret or config the stack uses.
#[derive(Debug, Clone, PartialEq)]
pub struct FileDef {
    pub key: String,
    pub name: String,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
    /// The file's contents (not external).
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDef {
    pub name: String,
    pub spec: m::ServiceSpec,
    /// References by the objects' names in the swarm (resolved to IDs at
    /// deploy time, as `--secret`/`--config` are).
    pub secrets: Vec<RefOpt>,
    pub configs: Vec<RefOpt>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stack {
    pub networks: Vec<NetworkDef>,
    pub secrets: Vec<FileDef>,
    pub configs: Vec<FileDef>,
    pub services: Vec<ServiceDef>,
    /// Keys docker's stack deploy ignores, for its warning.
    pub ignored: Vec<String>,
}

/// What the schema expects at a place in the file.
#[derive(Clone, Copy)]
enum S {
    Any,
    Str,
    Int,
    Num,
    Bool,
    StrOrNum,
    /// A string, or a list of strings.
    StrOrList,
    /// A list of strings, or a mapping of strings to scalars.
    ListOrDict,
    List(&'static S),
    /// A mapping of any keys to the schema (or null).
    MapOf(&'static S),
    Obj(&'static [(&'static str, S)]),
    /// Either a string or the object form (ports, secrets, networks).
    StrOr(&'static S),
    /// `networks:` of a service: a list of names, or a mapping to objects.
    ListOrMapOf(&'static S),
}

const STR: S = S::Str;
const ANY: S = S::Any;
const RESOURCE: S = S::Obj(&[
    ("cpus", S::StrOrNum),
    ("memory", S::Str),
    ("pids", S::Int),
    ("generic_resources", S::Any),
    ("devices", S::Any),
]);
const UPDATE: S = S::Obj(&[
    ("parallelism", S::Int),
    ("delay", S::Str),
    ("failure_action", S::Str),
    ("monitor", S::Str),
    ("max_failure_ratio", S::Num),
    ("order", S::Str),
]);
const PREF: S = S::Obj(&[("spread", S::Str)]);
const DEPLOY: S = S::Obj(&[
    ("mode", S::Str),
    ("endpoint_mode", S::Str),
    ("replicas", S::Int),
    ("labels", S::ListOrDict),
    ("rollback_config", UPDATE),
    ("update_config", UPDATE),
    ("resources", S::Obj(&[("limits", RESOURCE), ("reservations", RESOURCE)])),
    (
        "restart_policy",
        S::Obj(&[("condition", S::Str), ("delay", S::Str), ("max_attempts", S::Int), ("window", S::Str)]),
    ),
    (
        "placement",
        S::Obj(&[
            ("constraints", S::List(&STR)),
            ("preferences", S::List(&PREF)),
            ("max_replicas_per_node", S::Int),
        ]),
    ),
]);
const PORT: S = S::Obj(&[
    ("mode", S::Str),
    ("host_ip", S::Str),
    ("target", S::Int),
    ("published", S::StrOrNum),
    ("protocol", S::Str),
]);
const FILE_REF: S =
    S::Obj(&[("source", S::Str), ("target", S::Str), ("uid", S::Str), ("gid", S::Str), ("mode", S::Num)]);
const SVC_NET: S = S::Obj(&[
    ("aliases", S::List(&STR)),
    ("ipv4_address", S::Str),
    ("ipv6_address", S::Str),
    ("driver_opts", S::MapOf(&S::StrOrNum)),
]);
const HEALTH: S = S::Obj(&[
    ("disable", S::Bool),
    ("interval", S::Str),
    ("retries", S::Num),
    ("test", S::StrOrList),
    ("timeout", S::Str),
    ("start_period", S::Str),
    ("start_interval", S::Str),
]);
const SERVICE: S = S::Obj(&[
    ("deploy", DEPLOY),
    ("build", ANY),
    ("cap_add", S::List(&STR)),
    ("cap_drop", S::List(&STR)),
    ("cgroup_parent", S::Str),
    ("command", S::StrOrList),
    ("configs", S::List(&S::StrOr(&FILE_REF))),
    ("container_name", S::Str),
    ("credential_spec", ANY),
    ("depends_on", ANY),
    ("devices", S::List(&STR)),
    ("dns", S::StrOrList),
    ("dns_search", S::StrOrList),
    ("domainname", S::Str),
    ("entrypoint", S::StrOrList),
    ("env_file", S::StrOrList),
    ("environment", S::ListOrDict),
    ("expose", S::List(&S::StrOrNum)),
    ("external_links", S::List(&STR)),
    ("extra_hosts", S::ListOrDict),
    ("healthcheck", HEALTH),
    ("hostname", S::Str),
    ("image", S::Str),
    ("init", S::Bool),
    ("ipc", S::Str),
    ("isolation", S::Str),
    ("labels", S::ListOrDict),
    ("links", S::List(&STR)),
    ("logging", ANY),
    ("mac_address", S::Str),
    ("network_mode", S::Str),
    ("networks", S::ListOrMapOf(&SVC_NET)),
    ("pid", S::Str),
    ("ports", S::List(&S::StrOr(&PORT))),
    ("privileged", S::Bool),
    ("read_only", S::Bool),
    ("restart", S::Str),
    ("secrets", S::List(&S::StrOr(&FILE_REF))),
    ("security_opt", S::List(&STR)),
    ("shm_size", S::StrOrNum),
    ("stdin_open", S::Bool),
    ("stop_grace_period", S::Str),
    ("stop_signal", S::Str),
    ("sysctls", S::ListOrDict),
    ("tmpfs", S::StrOrList),
    ("tty", S::Bool),
    ("ulimits", ANY),
    ("user", S::Str),
    ("userns_mode", S::Str),
    ("volumes", S::List(&ANY)),
    ("working_dir", S::Str),
]);
const EXTERNAL: S = S::Any;
const NETWORK: S = S::Obj(&[
    ("name", S::Str),
    ("driver", S::Str),
    ("driver_opts", S::MapOf(&S::StrOrNum)),
    ("ipam", S::Obj(&[("driver", S::Str), ("config", S::List(&S::Obj(&[("subnet", S::Str)])))])),
    ("external", EXTERNAL),
    ("internal", S::Bool),
    ("attachable", S::Bool),
    ("labels", S::ListOrDict),
]);
const FILE_OBJ: S = S::Obj(&[
    ("name", S::Str),
    ("file", S::Str),
    ("external", EXTERNAL),
    ("labels", S::ListOrDict),
    ("driver", S::Str),
    ("driver_opts", S::MapOf(&S::StrOrNum)),
    ("template_driver", S::Str),
]);
const ROOT: S = S::Obj(&[
    ("version", S::Str),
    ("services", S::MapOf(&SERVICE)),
    ("networks", S::MapOf(&NETWORK)),
    ("volumes", S::MapOf(&ANY)),
    ("secrets", S::MapOf(&FILE_OBJ)),
    ("configs", S::MapOf(&FILE_OBJ)),
]);

fn at(path: &str, k: &str) -> String {
    if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") }
}

/// Checks `v` against `s`; docker's wording for the first problem.
fn check(path: &str, v: &Value, s: S) -> Result<(), String> {
    let shown = if path.is_empty() { "(root)" } else { path };
    let want = |what: &str| Err(format!("{shown} must be a {what}"));
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null);
    match s {
        S::Any => Ok(()),
        S::Str => {
            if v.is_string() {
                Ok(())
            } else {
                want("string")
            }
        }
        S::Int => {
            if v.is_i64() || v.is_u64() {
                Ok(())
            } else {
                want("integer")
            }
        }
        S::Num => {
            if v.is_number() {
                Ok(())
            } else {
                want("number")
            }
        }
        S::Bool => {
            if v.is_boolean() {
                Ok(())
            } else {
                want("boolean")
            }
        }
        S::StrOrNum => {
            if v.is_string() || v.is_number() {
                Ok(())
            } else {
                want("string or number")
            }
        }
        S::StrOrList => match v {
            Value::String(_) => Ok(()),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    check(&format!("{path}.{i}"), x, S::Str)?;
                }
                Ok(())
            }
            _ => want("string or array"),
        },
        S::ListOrDict => match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    check(&format!("{path}.{i}"), x, S::Str)?;
                }
                Ok(())
            }
            Value::Object(o) => {
                for (k, x) in o {
                    if !scalar(x) {
                        return Err(format!("{} must be a string, number, boolean or null", at(path, k)));
                    }
                }
                Ok(())
            }
            _ => want("object or array"),
        },
        S::List(inner) => match v {
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    check(&format!("{path}.{i}"), x, *inner)?;
                }
                Ok(())
            }
            _ => want("array"),
        },
        S::MapOf(inner) => match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k.starts_with("x-") && path.is_empty() {
                        continue;
                    }
                    if !x.is_null() {
                        check(&at(path, k), x, *inner)?;
                    }
                }
                Ok(())
            }
            Value::Null => Ok(()),
            _ => want("object"),
        },
        S::Obj(fields) => match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k.starts_with("x-") {
                        continue;
                    }
                    match fields.iter().find(|(f, _)| f == k) {
                        Some((_, fs)) => check(&at(path, k), x, *fs)?,
                        None => return Err(format!("{shown} Additional property {k} is not allowed")),
                    }
                }
                Ok(())
            }
            _ => want("object"),
        },
        S::StrOr(inner) => {
            if v.is_string() || v.is_number() {
                Ok(())
            } else {
                check(path, v, *inner)
            }
        }
        S::ListOrMapOf(inner) => match v {
            Value::Array(_) => check(path, v, S::List(&STR)),
            Value::Object(_) => check(path, v, S::MapOf(inner)),
            _ => want("array or object"),
        },
    }
}

/// `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$$`.
fn interpolate(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
    warn: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut body = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    body.push(c);
                }
                if !closed {
                    return Err(format!("Invalid template: {s:?}"));
                }
                let (name, default, when_empty) = if let Some((n, d)) = body.split_once(":-") {
                    (n, Some(d), true)
                } else if let Some((n, d)) = body.split_once('-') {
                    (n, Some(d), false)
                } else {
                    (body.as_str(), None, false)
                };
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("Invalid template: {s:?}"));
                }
                match (env(name), default) {
                    (Some(v), Some(d)) if when_empty && v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => warn.push(name.to_owned()),
                }
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let mut name = String::new();
                while let Some(c) = chars.peek().copied().filter(|c| c.is_ascii_alphanumeric() || *c == '_') {
                    name.push(c);
                    chars.next();
                }
                match env(&name) {
                    Some(v) => out.push_str(&v),
                    None => warn.push(name),
                }
            }
            _ => return Err(format!("Invalid template: {s:?}")),
        }
    }
    Ok(out)
}

fn interpolate_all(
    v: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    warn: &mut Vec<String>,
) -> Result<(), String> {
    match v {
        Value::String(s) => *s = interpolate(s, env, warn)?,
        Value::Array(a) => {
            for x in a {
                interpolate_all(x, env, warn)?;
            }
        }
        Value::Object(o) => {
            for x in o.values_mut() {
                interpolate_all(x, env, warn)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `labels`/`environment`-style values: a list of `k=v` or a mapping.
fn list_or_dict(v: Option<&Value>) -> Vec<(String, Option<String>)> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                let s = scalar_text(x);
                match s.split_once('=') {
                    Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                    None => (s, None),
                }
            })
            .collect(),
        Some(Value::Object(o)) => o
            .iter()
            .map(|(k, x)| (k.clone(), if x.is_null() { None } else { Some(scalar_text(x)) }))
            .collect(),
        _ => Vec::new(),
    }
}

fn labels_of(v: Option<&Value>) -> BTreeMap<String, String> {
    list_or_dict(v).into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect()
}

fn str_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(shlex::split(s).unwrap_or_else(|| vec![s.clone()])),
        Value::Array(a) => Some(a.iter().map(scalar_text).collect()),
        _ => None,
    }
}

fn duration(path: &str, v: Option<&Value>) -> Result<Option<i64>, String> {
    v.map(|x| {
        let s = scalar_text(x);
        parse_duration(&s).map(super::service_flags::nanos).map_err(|e| format!("{path}: {e}"))
    })
    .transpose()
}

fn external(v: Option<&Value>) -> (bool, Option<String>) {
    match v {
        Some(Value::Bool(b)) => (*b, None),
        Some(Value::Object(o)) => (true, o.get("name").and_then(Value::as_str).map(str::to_owned)),
        _ => (false, None),
    }
}

fn scoped(ns: &str, name: &str) -> String {
    format!("{ns}_{name}")
}

fn with_ns(ns: &str, mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels.insert(NAMESPACE_LABEL.into(), ns.into());
    labels
}

fn to_hash(b: BTreeMap<String, String>) -> std::collections::HashMap<String, String> {
    b.into_iter().collect()
}

/// Resources: nano CPUs, memory bytes, pids.
type Res = (Option<i64>, Option<i64>, Option<i64>);

/// Keys of a service docker's `stack deploy` ignores (it warns).
const IGNORED: &[&str] = &[
    "build",
    "cap_add",
    "cap_drop",
    "cgroup_parent",
    "container_name",
    "depends_on",
    "devices",
    "external_links",
    "links",
    "network_mode",
    "restart",
    "security_opt",
    "userns_mode",
];

/// Keys we read but do not act on yet: refused rather than dropped.
const UNSUPPORTED: &[&str] =
    &["volumes", "tmpfs", "env_file", "logging", "ulimits", "sysctls", "credential_spec"];

/// Parses, checks and converts a compose file for stack `ns`.
///
/// # Errors
/// A YAML error, a schema error in docker's words, an undefined network,
/// secret or config, or a file that cannot be read.
pub fn load(
    text: &str,
    ns: &str,
    env: &dyn Fn(&str) -> Option<String>,
    read_file: &dyn Fn(&str) -> Result<Vec<u8>, String>,
    warnings: &mut Vec<String>,
) -> Result<Stack, String> {
    let opts = serde_saphyr::options! { legacy_octal_numbers: true, strict_booleans: true };
    let mut doc: Value = serde_saphyr::from_str_with_options(text, opts).map_err(|e| format!("yaml: {e}"))?;
    if doc.is_null() {
        return Err("Top-level object must be a mapping".into());
    }
    if !doc.is_object() {
        return Err("Top-level object must be a mapping".into());
    }
    let mut unset = Vec::new();
    interpolate_all(&mut doc, env, &mut unset)?;
    for v in unset {
        let w = format!("The \"{v}\" variable is not set. Defaulting to a blank string.");
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    check("", &doc, ROOT)?;
    if doc.get("services").is_none_or(|s| s.as_object().is_none_or(serde_json::Map::is_empty)) {
        // docker: a stack needs services.
        return Err("services must be a mapping".into());
    }
    let mut stack = Stack::default();

    // Networks (the default one only when a service uses it).
    let nets = doc.get("networks").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut net_names: BTreeMap<String, String> = BTreeMap::new();
    let mut net_defs: BTreeMap<String, NetworkDef> = BTreeMap::new();
    for (key, n) in &nets {
        let (ext, ext_name) = external(n.get("external"));
        let name = n
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(ext_name)
            .unwrap_or_else(|| if ext { key.clone() } else { scoped(ns, key) });
        let subnets: Vec<Value> = n
            .pointer("/ipam/config")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("subnet").and_then(Value::as_str))
            .map(|s| serde_json::json!({ "Subnet": s }))
            .collect();
        let create = serde_json::json!({
            "Name": name,
            "Driver": n.get("driver").and_then(Value::as_str).unwrap_or("overlay"),
            "Attachable": n.get("attachable").and_then(Value::as_bool).unwrap_or(false),
            "Internal": n.get("internal").and_then(Value::as_bool).unwrap_or(false),
            "Labels": with_ns(ns, labels_of(n.get("labels"))),
            "Options": n.get("driver_opts").and_then(Value::as_object).map(|o| o.iter().map(|(k, v)| (k.clone(), Value::String(scalar_text(v)))).collect::<serde_json::Map<_, _>>()).unwrap_or_default(),
            "IPAM": { "Driver": "default", "Config": subnets },
        });
        net_names.insert(key.clone(), name.clone());
        net_defs.insert(key.clone(), NetworkDef { name, external: ext, create });
    }

    // Secrets and configs.
    for (section, out) in [("secrets", &mut stack.secrets), ("configs", &mut stack.configs)] {
        for (key, o) in doc.get(section).and_then(Value::as_object).into_iter().flatten() {
            let (ext, ext_name) = external(o.get("external"));
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(ext_name)
                .unwrap_or_else(|| if ext { key.clone() } else { scoped(ns, key) });
            let data = if ext {
                Vec::new()
            } else {
                let file = o
                    .get("file")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{section}.{key}: a file is required unless it is external"))?;
                read_file(file)?
            };
            out.push(FileDef {
                key: key.clone(),
                name,
                external: ext,
                labels: with_ns(ns, labels_of(o.get("labels"))),
                data,
            });
        }
    }

    let services = doc.get("services").and_then(Value::as_object).cloned().unwrap_or_default();
    let mut ignored = std::collections::BTreeSet::new();
    for (key, s) in &services {
        for k in s.as_object().into_iter().flat_map(|o| o.keys()) {
            if IGNORED.contains(&k.as_str()) {
                ignored.insert(k.clone());
            }
            if UNSUPPORTED.contains(&k.as_str()) {
                return Err(format!("service {key}: {k} is not supported by this stack deploy yet"));
            }
        }
        let def = service(ns, key, s, &net_names, &mut net_defs, &stack)
            .map_err(|e| format!("service {key}: {e}"))?;
        stack.services.push(def);
    }
    stack.ignored = ignored.into_iter().collect();
    stack.networks = net_defs.into_values().collect();
    stack.networks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(stack)
}

fn file_refs(section: &str, refs: Option<&Value>, defined: &[FileDef]) -> Result<Vec<RefOpt>, String> {
    let k = &section[..section.len() - 1];
    let mut out = Vec::new();
    for r in refs.and_then(Value::as_array).into_iter().flatten() {
        let (source, target, uid, gid, mode) = match r {
            Value::Object(o) => (
                o.get("source").and_then(Value::as_str).unwrap_or("").to_owned(),
                o.get("target").and_then(Value::as_str).unwrap_or("").to_owned(),
                o.get("uid").and_then(Value::as_str).unwrap_or("0").to_owned(),
                o.get("gid").and_then(Value::as_str).unwrap_or("0").to_owned(),
                o.get("mode").and_then(Value::as_u64).and_then(|m| u32::try_from(m).ok()).unwrap_or(0o444),
            ),
            other => (scalar_text(other), String::new(), "0".into(), "0".into(), 0o444),
        };
        let def =
            defined.iter().find(|d| d.key == source).ok_or_else(|| format!("undefined {k} {source:?}"))?;
        let target = if target.is_empty() { source.clone() } else { target };
        out.push(RefOpt { source: def.name.clone(), target, uid, gid, mode });
    }
    out.sort_by(|a, b| a.source.cmp(&b.source));
    Ok(out)
}

#[allow(clippy::many_single_char_names)]
fn parse_port(path: &str, v: &Value) -> Result<Vec<m::EndpointPortConfig>, String> {
    use m::{EndpointPortConfigProtocolEnum as P, EndpointPortConfigPublishModeEnum as M};
    let proto = |s: &str| match s {
        "" | "tcp" => Ok(P::TCP),
        "udp" => Ok(P::UDP),
        "sctp" => Ok(P::SCTP),
        other => Err(format!("{path}: invalid proto: {other}")),
    };
    let num = |s: &str| s.parse::<i64>().map_err(|_| format!("{path}: invalid port {s:?}"));
    match v {
        Value::Object(o) => {
            let published = o.get("published").map(scalar_text).filter(|s| !s.is_empty());
            Ok(vec![m::EndpointPortConfig {
                protocol: Some(proto(o.get("protocol").and_then(Value::as_str).unwrap_or(""))?),
                target_port: o.get("target").and_then(Value::as_i64),
                published_port: published.as_deref().map(num).transpose()?,
                publish_mode: Some(if o.get("mode").and_then(Value::as_str) == Some("host") {
                    M::HOST
                } else {
                    M::INGRESS
                }),
                ..Default::default()
            }])
        }
        other => {
            let s = scalar_text(other);
            let (ports, pr) = s.split_once('/').unwrap_or((s.as_str(), ""));
            let pr = proto(pr)?;
            let parts: Vec<&str> = ports.split(':').collect();
            let (published, target) = match parts.as_slice() {
                [t] => (None, *t),
                [p, t] => (Some(*p), *t),
                [_ip, p, t] => (Some(*p).filter(|p| !p.is_empty()), *t),
                _ => return Err(format!("{path}: invalid port {s:?}")),
            };
            let range = |r: &str| -> Result<(i64, i64), String> {
                match r.split_once('-') {
                    Some((a, b)) => Ok((num(a)?, num(b)?)),
                    None => num(r).map(|n| (n, n)),
                }
            };
            let (t0, t1) = range(target)?;
            let (p0, p1) = match published {
                Some(p) => {
                    let (a, b) = range(p)?;
                    (Some(a), Some(b))
                }
                None => (None, None),
            };
            if t1 < t0 || p1.zip(p0).is_some_and(|(b, a)| b - a != t1 - t0) {
                return Err(format!("{path}: invalid port range {s:?}"));
            }
            Ok((0..=(t1 - t0))
                .map(|i| m::EndpointPortConfig {
                    protocol: Some(pr),
                    target_port: Some(t0 + i),
                    published_port: p0.map(|p| p + i),
                    publish_mode: Some(M::INGRESS),
                    ..Default::default()
                })
                .collect())
        }
    }
}

fn cpus(path: &str, v: Option<&Value>) -> Result<Option<i64>, String> {
    v.map(|x| {
        let s = scalar_text(x);
        s.parse::<f64>()
            .ok()
            .filter(|c| c.is_finite() && *c >= 0.0)
            .map(|c| (c * 1e9).round() as i64)
            .ok_or_else(|| format!("{path}: invalid cpus value {s:?}"))
    })
    .transpose()
}

/// `update_config` / `rollback_config` as Docker's `UpdateConfig` or
/// `RollbackConfig` (they share one JSON shape); parallelism defaults to 1.
fn pace<T: serde::de::DeserializeOwned>(
    path: &str,
    u: Option<&Value>,
    what: &str,
    actions: &[&str],
) -> Result<Option<T>, String> {
    let Some(u) = u else { return Ok(None) };
    let mut c = serde_json::Map::new();
    c.insert("Parallelism".into(), u.get("parallelism").and_then(Value::as_i64).unwrap_or(1).into());
    if let Some(d) = duration(&format!("{path}.delay"), u.get("delay"))? {
        c.insert("Delay".into(), d.into());
    }
    if let Some(d) = duration(&format!("{path}.monitor"), u.get("monitor"))? {
        c.insert("Monitor".into(), d.into());
    }
    if let Some(r) = u.get("max_failure_ratio").and_then(Value::as_f64) {
        c.insert("MaxFailureRatio".into(), r.into());
    }
    if let Some(a) = u.get("failure_action").and_then(Value::as_str) {
        if !actions.contains(&a) {
            return Err(format!("unrecognized {what} failure action {a}"));
        }
        c.insert("FailureAction".into(), a.into());
    }
    if let Some(o) = u.get("order").and_then(Value::as_str) {
        if !["stop-first", "start-first"].contains(&o) {
            return Err(format!("unrecognized {what} order {o}"));
        }
        c.insert("Order".into(), o.into());
    }
    serde_json::from_value(Value::Object(c)).map(Some).map_err(|e| format!("{path}: {e}"))
}

fn service(
    ns: &str,
    key: &str,
    s: &Value,
    net_names: &BTreeMap<String, String>,
    net_defs: &mut BTreeMap<String, NetworkDef>,
    stack: &Stack,
) -> Result<ServiceDef, String> {
    let get = |k: &str| s.get(k);
    let image = get("image").and_then(Value::as_str).unwrap_or("").to_owned();
    let deploy = get("deploy");
    let d = |k: &str| deploy.and_then(|x| x.get(k));

    // Networks: the service's, or the stack's default one.
    let mut attach: Vec<(String, Vec<String>)> = match get("networks") {
        Some(Value::Array(a)) => a.iter().map(|n| (scalar_text(n), Vec::new())).collect(),
        Some(Value::Object(o)) => {
            o.iter().map(|(n, c)| (n.clone(), str_list(c.get("aliases")).unwrap_or_default())).collect()
        }
        _ => vec![("default".to_owned(), Vec::new())],
    };
    let mut networks = Vec::new();
    for (n, aliases) in &mut attach {
        let target = match net_names.get(n.as_str()) {
            Some(t) => t.clone(),
            None if n == "default" => {
                let name = scoped(ns, "default");
                net_defs.entry("default".into()).or_insert_with(|| NetworkDef {
                    name: name.clone(),
                    external: false,
                    create: serde_json::json!({
                        "Name": name, "Driver": "overlay", "Attachable": false,
                        "Labels": with_ns(ns, BTreeMap::new()), "IPAM": {"Driver": "default", "Config": []},
                    }),
                });
                name
            }
            None => return Err(format!("undefined network {n:?}")),
        };
        aliases.push(key.to_owned());
        networks.push(m::NetworkAttachmentConfig {
            target: Some(target),
            aliases: Some(aliases.clone()),
            ..Default::default()
        });
    }
    networks.sort_by(|a, b| a.target.cmp(&b.target));

    let mut env: Vec<String> = list_or_dict(get("environment"))
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    env.sort();

    let mut ports = Vec::new();
    for (i, p) in get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
        ports.extend(parse_port(&format!("ports.{i}"), p)?);
    }
    ports.sort_by_key(|p| (p.published_port, p.target_port));
    let endpoint_mode = match d("endpoint_mode").and_then(Value::as_str) {
        None | Some("vip") => m::EndpointSpecModeEnum::VIP,
        Some("dnsrr") => m::EndpointSpecModeEnum::DNSRR,
        Some(other) => return Err(format!("invalid endpoint mode {other:?}")),
    };

    let mode = match d("mode").and_then(Value::as_str).unwrap_or("replicated") {
        "replicated" => m::ServiceSpecMode {
            replicated: Some(m::ServiceSpecModeReplicated {
                replicas: Some(d("replicas").and_then(Value::as_i64).unwrap_or(1)),
            }),
            ..Default::default()
        },
        "global" => {
            if d("replicas").is_some() {
                return Err("replicas can only be used with replicated mode".into());
            }
            #[allow(clippy::zero_sized_map_values)]
            m::ServiceSpecMode { global: Some(std::collections::HashMap::new()), ..Default::default() }
        }
        other => return Err(format!("unknown mode: {other}")),
    };

    let res = |which: &str| -> Result<Option<Res>, String> {
        let Some(r) = deploy.and_then(|x| x.pointer(&format!("/resources/{which}"))) else { return Ok(None) };
        let mem = r
            .get("memory")
            .map(|x| parse_bytes(&scalar_text(x)).map_err(|e| format!("resources.{which}.memory: {e}")))
            .transpose()?;
        Ok(Some((
            cpus(&format!("resources.{which}.cpus"), r.get("cpus"))?,
            mem,
            r.get("pids").and_then(Value::as_i64),
        )))
    };
    let resources = match (res("limits")?, res("reservations")?) {
        (None, None) => None,
        (l, r) => Some(m::TaskSpecResources {
            limits: l.map(|(c, mem, pids)| m::Limit { nano_cpus: c, memory_bytes: mem, pids }),
            reservations: r.map(|(c, mem, _)| m::ResourceObject {
                nano_cpus: c,
                memory_bytes: mem,
                ..Default::default()
            }),
            ..Default::default()
        }),
    };

    let restart_policy = match d("restart_policy") {
        None => None,
        Some(r) => Some(m::TaskSpecRestartPolicy {
            condition: match r.get("condition").and_then(Value::as_str) {
                None => None,
                Some("none") => Some(m::TaskSpecRestartPolicyConditionEnum::NONE),
                Some("on-failure") => Some(m::TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                Some("any") => Some(m::TaskSpecRestartPolicyConditionEnum::ANY),
                Some(other) => return Err(format!("invalid restart policy condition {other:?}")),
            },
            delay: duration("restart_policy.delay", r.get("delay"))?,
            max_attempts: r.get("max_attempts").and_then(Value::as_i64),
            window: duration("restart_policy.window", r.get("window"))?,
        }),
    };

    let placement = d("placement").map(|p| m::TaskSpecPlacement {
        constraints: str_list(p.get("constraints")),
        preferences: p.get("preferences").and_then(Value::as_array).map(|a| {
            a.iter()
                .map(|x| m::TaskSpecPlacementPreferences {
                    spread: Some(m::TaskSpecPlacementSpread {
                        spread_descriptor: x.get("spread").and_then(Value::as_str).map(str::to_owned),
                    }),
                })
                .collect()
        }),
        max_replicas: p.get("max_replicas_per_node").and_then(Value::as_i64),
        ..Default::default()
    });

    let health = match get("healthcheck") {
        None => None,
        Some(h) => {
            let disable = h.get("disable").and_then(Value::as_bool).unwrap_or(false);
            let test = match h.get("test") {
                Some(Value::String(s)) => Some(vec!["CMD-SHELL".to_owned(), s.clone()]),
                Some(Value::Array(a)) => Some(a.iter().map(scalar_text).collect()),
                _ => None,
            };
            if disable && test.is_some() {
                return Err("test and disable can't be set at the same time".into());
            }
            Some(m::HealthConfig {
                test: if disable { Some(vec!["NONE".into()]) } else { test },
                interval: duration("healthcheck.interval", h.get("interval"))?,
                timeout: duration("healthcheck.timeout", h.get("timeout"))?,
                retries: h.get("retries").and_then(Value::as_i64),
                start_period: duration("healthcheck.start_period", h.get("start_period"))?,
                start_interval: duration("healthcheck.start_interval", h.get("start_interval"))?,
            })
        }
    };

    let mut labels = with_ns(ns, labels_of(d("labels")));
    labels.insert(IMAGE_LABEL.into(), image.clone());
    let container_labels = with_ns(ns, labels_of(get("labels")));

    let update_config =
        pace("deploy.update_config", d("update_config"), "update", &["pause", "continue", "rollback"])?;
    let rollback_config =
        pace("deploy.rollback_config", d("rollback_config"), "rollback", &["pause", "continue"])?;

    let spec = m::ServiceSpec {
        name: Some(scoped(ns, key)),
        labels: Some(to_hash(labels)),
        task_template: Some(m::TaskSpec {
            container_spec: Some(m::TaskSpecContainerSpec {
                image: Some(image),
                command: str_list(get("entrypoint")),
                args: str_list(get("command")),
                hostname: get("hostname").and_then(Value::as_str).map(str::to_owned),
                env: (!env.is_empty()).then_some(env),
                labels: Some(to_hash(container_labels)),
                dir: get("working_dir").and_then(Value::as_str).map(str::to_owned),
                user: get("user").and_then(Value::as_str).map(str::to_owned),
                stop_grace_period: duration("stop_grace_period", get("stop_grace_period"))?,
                stop_signal: get("stop_signal").and_then(Value::as_str).map(str::to_owned),
                read_only: get("read_only").and_then(Value::as_bool),
                health_check: health,
                ..Default::default()
            }),
            resources,
            restart_policy,
            placement,
            networks: Some(networks),
            ..Default::default()
        }),
        mode: Some(mode),
        update_config,
        rollback_config,
        endpoint_spec: Some(m::EndpointSpec {
            mode: Some(endpoint_mode),
            ports: (!ports.is_empty()).then_some(ports),
        }),
        ..Default::default()
    };
    Ok(ServiceDef {
        name: scoped(ns, key),
        spec,
        secrets: file_refs("secrets", get("secrets"), &stack.secrets)?,
        configs: file_refs("configs", get("configs"), &stack.configs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Stack, String> {
        let env = |k: &str| (k == "TAG").then(|| "v2".to_owned());
        let read = |f: &str| {
            if f == "./pw.txt" { Ok(b"s3cret".to_vec()) } else { Err(format!("open {f}: no such file")) }
        };
        load(text, "app", &env, &read, &mut Vec::new())
    }

    const GOOD: &str = r#"
version: "3.8"
x-common: &common
  stop_grace_period: 1s
services:
  web:
    <<: *common
    image: "busybox:${TAG}"
    command: sh -c 'echo $$HOME'
    environment: {B: "2", A: "1"}
    ports: ["8080:80", {target: 53, published: 5353, protocol: udp}]
    networks: [front]
    secrets: [{source: pw, target: p, mode: 0400}]
    deploy:
      replicas: 3
      labels: [tier=web]
      resources: {limits: {cpus: "0.5", memory: 64M}}
      update_config: {parallelism: 2, delay: 1s, order: start-first}
      placement: {constraints: [node.role==worker]}
  db:
    image: busybox
networks:
  front: {driver: overlay}
secrets:
  pw: {file: ./pw.txt}
"#;

    #[test]
    fn a_compose_file_becomes_dockers_specs() {
        let s = load_str(GOOD).unwrap();
        let names: Vec<&str> = s.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["app_default", "app_front"], "db has no networks: the default one");
        assert_eq!(s.secrets[0].name, "app_pw");
        assert_eq!(s.secrets[0].data, b"s3cret");
        let web = s.services.iter().find(|x| x.name == "app_web").unwrap();
        let c = web.spec.task_template.as_ref().unwrap().container_spec.as_ref().unwrap();
        assert_eq!(c.image.as_deref(), Some("busybox:v2"));
        assert_eq!(c.args.as_deref(), Some(&["sh".to_owned(), "-c".into(), "echo $HOME".into()][..]));
        assert_eq!(c.env.as_deref(), Some(&["A=1".to_owned(), "B=2".into()][..]));
        assert_eq!(c.stop_grace_period, Some(1_000_000_000), "merged from the anchor");
        assert_eq!(
            web.secrets[0],
            RefOpt {
                source: "app_pw".into(),
                target: "p".into(),
                uid: "0".into(),
                gid: "0".into(),
                mode: 0o400
            }
        );
        let labels = web.spec.labels.as_ref().unwrap();
        assert_eq!(labels[NAMESPACE_LABEL], "app");
        assert_eq!(labels["tier"], "web");
        assert_eq!(labels[IMAGE_LABEL], "busybox:v2");
        let ports = web.spec.endpoint_spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert_eq!(
            ports.iter().map(|p| (p.published_port, p.target_port)).collect::<Vec<_>>(),
            [(Some(5353), Some(53)), (Some(8080), Some(80))]
        );
        let t = web.spec.task_template.as_ref().unwrap();
        assert_eq!(t.resources.as_ref().unwrap().limits.as_ref().unwrap().nano_cpus, Some(500_000_000));
        assert_eq!(t.resources.as_ref().unwrap().limits.as_ref().unwrap().memory_bytes, Some(64 << 20));
        let n = &t.networks.as_ref().unwrap()[0];
        assert_eq!(
            (n.target.as_deref(), n.aliases.as_deref()),
            (Some("app_front"), Some(&["web".to_owned()][..]))
        );
        assert_eq!(web.spec.update_config.as_ref().unwrap().parallelism, Some(2));
        assert_eq!(web.spec.mode.as_ref().unwrap().replicated.as_ref().unwrap().replicas, Some(3));
    }

    #[test]
    fn bad_files_get_dockers_words() {
        let e = |t: &str| load_str(t).unwrap_err();
        assert_eq!(
            e("version: '3'\nfoo: 1\nservices: {a: {image: x}}\n"),
            "(root) Additional property foo is not allowed"
        );
        assert_eq!(
            e("services:\n  web:\n    image: x\n    foo: 1\n"),
            "services.web Additional property foo is not allowed"
        );
        assert_eq!(
            e("services:\n  web:\n    image: x\n    deploy: {replicas: two}\n"),
            "services.web.deploy.replicas must be a integer"
        );
        assert_eq!(
            e("services:\n  web:\n    image: x\n    networks: [nosuch]\n"),
            "service web: undefined network \"nosuch\""
        );
        assert_eq!(
            e("services:\n  web:\n    image: x\n    secrets: [nosuch]\n"),
            "service web: undefined secret \"nosuch\""
        );
        assert!(e("services: [1,\n").starts_with("yaml: "));
        assert!(e("services:\n  web:\n    image: x\n    ports: ['80:abc']\n").contains("invalid port"));
        assert!(e("services:\n  web:\n    image: x\n    command: 'echo ${'\n").contains("Invalid template"));
        assert!(e("services:\n  web:\n    image: x\n    volumes: [a:/b]\n").contains("not supported"));
        assert!(e("secrets:\n  pw: {file: ./nope}\nservices: {a: {image: x}}\n").contains("no such file"));
    }
}
