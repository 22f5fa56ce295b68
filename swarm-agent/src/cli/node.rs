//! `node ls|inspect|ps|promote|demote|rm|update`, with docker's tables and messages.

use std::collections::HashMap;

use bollard_stubs::models as m;

use super::{
    client::{CliError, Client},
    fmt::{bytes_size, natural_cmp, pretty},
};
use crate::table;

#[derive(Debug, clap::Subcommand)]
pub enum NodeCmd {
    /// List nodes in the swarm
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided
        #[arg(short, long)]
        filter: Vec<String>,
    },
    /// Display detailed information on one or more nodes
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
        #[arg(required = true, value_name = "self|NODE")]
        nodes: Vec<String>,
    },
    /// List tasks running on one or more nodes, defaults to current node
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        nodes: Vec<String>,
    },
    /// Promote one or more nodes to manager in the swarm
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager in the swarm
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    #[command(alias = "remove")]
    Rm {
        /// Force remove a node from the swarm
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node
    Update {
        /// Availability of the node ("active", "pause", "drain")
        #[arg(long)]
        availability: Option<String>,
        /// Role of the node ("worker", "manager")
        #[arg(long)]
        role: Option<String>,
        /// Add or update a node label (key=value)
        #[arg(long)]
        label_add: Vec<String>,
        /// Remove a node label if exists
        #[arg(long)]
        label_rm: Vec<String>,
        node: String,
    },
}

pub async fn run(client: &Client, cmd: NodeCmd) -> Result<(), CliError> {
    match cmd {
        NodeCmd::Ls { quiet, filter } => ls(client, quiet, &filter).await,
        NodeCmd::Inspect { pretty, nodes } => inspect(client, pretty, &nodes).await,
        NodeCmd::Ps { quiet, nodes } => ps(client, quiet, &nodes).await,
        NodeCmd::Promote { nodes } => change_role(client, &nodes, m::NodeSpecRoleEnum::MANAGER).await,
        NodeCmd::Demote { nodes } => change_role(client, &nodes, m::NodeSpecRoleEnum::WORKER).await,
        NodeCmd::Rm { force, nodes } => rm(client, force, &nodes).await,
        NodeCmd::Update { availability, role, label_add, label_rm, node } => {
            update(client, &node, availability, role, &label_add, &label_rm).await
        }
    }
}

async fn self_id(client: &Client) -> Result<String, CliError> {
    let info: m::SystemInfo = client.get("/info").await?;
    Ok(info.swarm.and_then(|s| s.node_id).unwrap_or_default())
}

/// `self` means this node, as in docker.
async fn resolve(client: &Client, node: &str) -> Result<String, CliError> {
    if node == "self" { self_id(client).await } else { Ok(node.to_owned()) }
}

pub(crate) fn filters_query(filters: &[String]) -> Result<String, CliError> {
    if filters.is_empty() {
        return Ok(String::new());
    }
    let mut map: HashMap<String, HashMap<String, bool>> = HashMap::new();
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| CliError::local("bad format of filter (expected name=value)".to_string()))?;
        map.entry(k.to_owned()).or_default().insert(v.to_owned(), true);
    }
    let json = serde_json::to_string(&map).map_err(|e| CliError::local(e.to_string()))?;
    Ok(format!("?filters={}", url_escape(&json)))
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The MANAGER STATUS cell.
fn manager_status(n: &m::Node) -> String {
    let r = match &n.manager_status {
        Some(ms) if ms.leader == Some(true) => "Leader".to_owned(),
        Some(ms) => ms.reachability.map(|r| r.to_string()).unwrap_or_default(),
        None => String::new(),
    };
    pretty(&r)
}

async fn ls(client: &Client, quiet: bool, filters: &[String]) -> Result<(), CliError> {
    let mut nodes: Vec<m::Node> = client.get(&format!("/nodes{}", filters_query(filters)?)).await?;
    let hostname = |n: &m::Node| n.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or_default();
    nodes.sort_by(|a, b| natural_cmp(&hostname(a), &hostname(b)));
    if quiet {
        for n in nodes {
            println!("{}", n.id.unwrap_or_default());
        }
        return Ok(());
    }
    let me = self_id(client).await?;
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let id = n.id.clone().unwrap_or_default();
            let star = if id == me { "*" } else { " " };
            vec![
                format!("{id} {star}"),
                hostname(n),
                pretty(&n.status.as_ref().and_then(|s| s.state).map(|s| s.to_string()).unwrap_or_default()),
                pretty(
                    &n.spec.as_ref().and_then(|s| s.availability).map(|a| a.to_string()).unwrap_or_default(),
                ),
                manager_status(n),
                n.description
                    .as_ref()
                    .and_then(|d| d.engine.as_ref())
                    .and_then(|e| e.engine_version.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"],
            &rows
        )
    );
    Ok(())
}

async fn inspect(client: &Client, pretty_fmt: bool, nodes: &[String]) -> Result<(), CliError> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for n in nodes {
        let id = resolve(client, n).await?;
        match client.get::<m::Node>(&format!("/nodes/{id}")).await {
            Ok(node) => found.push(node),
            Err(e @ CliError::Daemon(_)) => errors.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    if pretty_fmt {
        for (i, n) in found.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", pretty_node(n));
        }
    } else {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&found, &mut ser).map_err(|e| CliError::local(e.to_string()))?;
        println!("{}", String::from_utf8_lossy(&buf));
    }
    if errors.is_empty() { Ok(()) } else { Err(CliError::local(errors.join("\n"))) }
}

/// `docker node inspect --pretty`.
fn pretty_node(n: &m::Node) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let spec = n.spec.clone().unwrap_or_default();
    let desc = n.description.clone().unwrap_or_default();
    let status = n.status.clone().unwrap_or_default();
    let _ = writeln!(s, "ID:\t\t\t{}", n.id.clone().unwrap_or_default());
    if let Some(name) = spec.name.as_ref().filter(|x| !x.is_empty()) {
        let _ = writeln!(s, "Name:\t\t\t{name}");
    }
    if let Some(labels) = spec.labels.as_ref().filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "Labels:");
        let mut l: Vec<_> = labels.iter().collect();
        l.sort();
        for (k, v) in l {
            if v.is_empty() {
                let _ = writeln!(s, " - {k}");
            } else {
                let _ = writeln!(s, " - {k}={v}");
            }
        }
    }
    let _ = writeln!(s, "Hostname:              \t{}", desc.hostname.clone().unwrap_or_default());
    let _ = writeln!(
        s,
        "Joined at:             \t{}",
        pretty(&go_time(n.created_at.as_deref().unwrap_or_default()))
    );
    let _ = writeln!(s, "Status:");
    let _ = writeln!(s, " State:\t\t\t{}", pretty(&status.state.map(|x| x.to_string()).unwrap_or_default()));
    if let Some(msg) = status.message.as_ref().filter(|m| !m.is_empty()) {
        let _ = writeln!(s, " Message:              \t{}", pretty(msg));
    }
    let _ = writeln!(
        s,
        " Availability:         \t{}",
        pretty(&spec.availability.map(|a| a.to_string()).unwrap_or_default())
    );
    if let Some(addr) = status.addr.as_ref().filter(|a| !a.is_empty()) {
        let _ = writeln!(s, " Address:\t\t{addr}");
    }
    if let Some(ms) = &n.manager_status {
        let _ = writeln!(s, "Manager Status:");
        let _ = writeln!(s, " Address:\t\t{}", ms.addr.clone().unwrap_or_default());
        let _ = writeln!(
            s,
            " Raft Status:\t\t{}",
            pretty(&ms.reachability.map(|r| r.to_string()).unwrap_or_default())
        );
        let _ = writeln!(s, " Leader:\t\t{}", if ms.leader == Some(true) { "Yes" } else { "No" });
    }
    let platform = desc.platform.clone().unwrap_or_default();
    let _ = writeln!(s, "Platform:");
    let _ = writeln!(s, " Operating System:\t{}", platform.os.unwrap_or_default());
    let _ = writeln!(s, " Architecture:\t\t{}", platform.architecture.unwrap_or_default());
    let res = desc.resources.clone().unwrap_or_default();
    let _ = writeln!(s, "Resources:");
    let _ = writeln!(s, " CPUs:\t\t\t{}", res.nano_cpus.unwrap_or(0) / 1_000_000_000);
    let _ = writeln!(s, " Memory:\t\t{}", bytes_size(res.memory_bytes.unwrap_or(0) as f64));
    let engine = desc.engine.clone().unwrap_or_default();
    let _ = writeln!(s, "Engine Version:\t\t{}", engine.engine_version.unwrap_or_default());
    if let Some(tls) = &desc.tls_info {
        let _ = writeln!(s, "TLS Info:");
        let _ = writeln!(s, " TrustRoot:");
        let _ = writeln!(s, "{}", tls.trust_root.clone().unwrap_or_default());
        let _ = writeln!(s, " Issuer Subject:\t{}", tls.cert_issuer_subject.clone().unwrap_or_default());
        let _ =
            writeln!(s, " Issuer Public Key:\t{}", tls.cert_issuer_public_key.clone().unwrap_or_default());
    }
    s
}

/// An RFC 3339 time as Go prints a `time.Time` with `%s`.
fn go_time(rfc: &str) -> String {
    let Ok(t) = time::OffsetDateTime::parse(rfc, &time::format_description::well_known::Rfc3339) else {
        return rfc.to_owned();
    };
    let nanos = t.nanosecond();
    let frac =
        if nanos == 0 { String::new() } else { format!(".{nanos:09}").trim_end_matches('0').to_owned() };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}{frac} +0000 UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

async fn ps(client: &Client, quiet: bool, nodes: &[String]) -> Result<(), CliError> {
    let nodes = if nodes.is_empty() { vec!["self".to_owned()] } else { nodes.to_vec() };
    let mut all = Vec::new();
    for n in &nodes {
        let id = resolve(client, n).await?;
        let node: m::Node = client.get(&format!("/nodes/{id}")).await?;
        let id = node.id.unwrap_or_default();
        let tasks: Vec<serde_json::Value> =
            client.get(&format!("/tasks{}", filters_query(&[format!("node={id}")])?)).await?;
        all.extend(tasks);
    }
    super::service::print_tasks(client, all, quiet, false).await
}

async fn get_node(client: &Client, node: &str) -> Result<(String, u64, m::NodeSpec), CliError> {
    let id = resolve(client, node).await?;
    let n: m::Node = client.get(&format!("/nodes/{id}")).await?;
    Ok((n.id.unwrap_or_default(), n.version.and_then(|v| v.index).unwrap_or(0), n.spec.unwrap_or_default()))
}

/// Sets an enum field of a spec from user text, going through JSON so
/// unknown values reach the daemon (and its error message) unchanged.
fn spec_set(spec: &mut m::NodeSpec, field: &str, value: &str) -> Result<(), CliError> {
    let mut v = serde_json::to_value(&*spec).map_err(|e| CliError::local(e.to_string()))?;
    v[field] = serde_json::Value::String(value.to_owned());
    match serde_json::from_value::<m::NodeSpec>(v) {
        Ok(s) => {
            *spec = s;
            Ok(())
        }
        Err(_) => Err(CliError::Daemon(format!("invalid {field}: {value:?}"))),
    }
}

async fn post_spec(client: &Client, id: &str, version: u64, spec: &m::NodeSpec) -> Result<(), CliError> {
    client.post(&format!("/nodes/{id}/update?version={version}"), spec).await.map(|_| ())
}

async fn change_role(client: &Client, nodes: &[String], role: m::NodeSpecRoleEnum) -> Result<(), CliError> {
    for node in nodes {
        let (id, version, mut spec) = get_node(client, node).await?;
        if spec.role == Some(role) {
            match role {
                m::NodeSpecRoleEnum::MANAGER => println!("Node {id} is already a manager."),
                _ => println!("Node {id} is already a worker."),
            }
            continue;
        }
        spec.role = Some(role);
        post_spec(client, &id, version, &spec).await?;
        match role {
            m::NodeSpecRoleEnum::MANAGER => println!("Node {node} promoted to a manager in the swarm."),
            _ => println!("Manager {node} demoted in the swarm."),
        }
    }
    Ok(())
}

async fn rm(client: &Client, force: bool, nodes: &[String]) -> Result<(), CliError> {
    let mut errs = Vec::new();
    for node in nodes {
        let id = resolve(client, node).await?;
        match client.delete(&format!("/nodes/{id}?force={force}")).await {
            Ok(_) => println!("{node}"),
            Err(e) => errs.push(e.to_string()),
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(CliError::local(errs.join("\n"))) }
}

async fn update(
    client: &Client,
    node: &str,
    availability: Option<String>,
    role: Option<String>,
    label_add: &[String],
    label_rm: &[String],
) -> Result<(), CliError> {
    let (id, version, mut spec) = get_node(client, node).await?;
    // Like docker's CLI, values go to the daemon as given; it validates them.
    if let Some(a) = availability {
        spec_set(&mut spec, "Availability", &a)?;
    }
    if let Some(r) = role {
        spec_set(&mut spec, "Role", &r)?;
    }
    let labels = spec.labels.get_or_insert_with(HashMap::new);
    for l in label_add {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_owned(), v.to_owned());
    }
    for k in label_rm {
        if labels.remove(k).is_none() {
            return Err(CliError::local(format!("key {k} doesn't exist in node's labels")));
        }
    }
    post_spec(client, &id, version, &spec).await?;
    println!("{node}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_time_format() {
        assert_eq!(go_time("2026-11-22T02:10:30.1234Z"), "2026-11-22 02:10:30.1234 +0000 UTC");
        assert_eq!(go_time("2026-11-22T02:10:30Z"), "2026-11-22 02:10:30 +0000 UTC");
    }

    #[test]
    fn filters_are_url_encoded_json() {
        let q = filters_query(&["role=manager".into()]).unwrap();
        assert_eq!(q, "?filters=%7B%22role%22%3A%7B%22manager%22%3Atrue%7D%7D");
        assert!(filters_query(&["nokey".into()]).is_err());
    }
}
