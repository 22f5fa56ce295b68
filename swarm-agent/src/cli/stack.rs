//! `stack deploy|ls|services|ps|rm`, as docker's CLI does them: the compose
//! file is read here ([`super::compose`]) and becomes network, secret,
//! config and service API calls, every object labelled with the stack's
//! namespace; a redeploy updates the services that exist.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Value, json};

use super::{
    client::{CliError, Client},
    compose::{self, NAMESPACE_LABEL},
    node::filters_query,
};
use crate::{manager::store::secret::Kind, table};

#[derive(Debug, clap::Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing stack
    #[command(alias = "up")]
    Deploy {
        /// Path to a Compose file, or "-" to read from stdin
        #[arg(short = 'c', long = "compose-file", required = true)]
        compose_file: Vec<String>,
        /// Prune services that are no longer referenced
        #[arg(long)]
        prune: bool,
        /// Exit immediately instead of waiting for the stack services to converge
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// List stacks
    #[command(alias = "list")]
    Ls,
    /// List the services in the stack
    Services {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        stack: String,
    },
    /// List the tasks in the stack
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        stack: String,
    },
    /// Remove one or more stacks
    #[command(aliases = ["remove", "down"])]
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

fn local(m: impl Into<String>) -> CliError {
    CliError::local(m)
}

fn ns_filter(ns: &str) -> Result<String, CliError> {
    filters_query(&[format!("label={NAMESPACE_LABEL}={ns}")])
}

fn parse<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, CliError> {
    serde_json::from_slice(b).map_err(|e| local(e.to_string()))
}

pub async fn run(client: &Client, cmd: StackCmd) -> Result<(), CliError> {
    match cmd {
        StackCmd::Deploy { compose_file, prune, detach: _, quiet: _, stack } => {
            deploy(client, &compose_file, prune, &stack).await
        }
        StackCmd::Ls => {
            let services: Vec<Value> = client.get("/services").await?;
            let mut count: BTreeMap<String, usize> = BTreeMap::new();
            for s in &services {
                if let Some(ns) = s["Spec"]["Labels"][NAMESPACE_LABEL].as_str() {
                    *count.entry(ns.to_owned()).or_default() += 1;
                }
            }
            let mut rows: Vec<Vec<String>> = count.into_iter().map(|(n, c)| vec![n, c.to_string()]).collect();
            rows.sort_by(|a, b| super::fmt::natural_cmp(&a[0], &b[0]));
            print!("{}", table::render(&["NAME", "SERVICES"], &rows));
            Ok(())
        }
        StackCmd::Services { quiet, stack } => {
            let q: Vec<Value> = client.get(&format!("/services{}", ns_filter(&stack)?)).await?;
            if q.is_empty() {
                eprintln!("Nothing found in stack: {stack}");
                return Ok(());
            }
            super::service::ls(client, quiet, &[format!("label={NAMESPACE_LABEL}={stack}")]).await
        }
        StackCmd::Ps { quiet, no_trunc, stack } => {
            let tasks: Vec<Value> = client.get(&format!("/tasks{}", ns_filter(&stack)?)).await?;
            if tasks.is_empty() {
                return Err(local(format!("nothing found in stack: {stack}")));
            }
            super::service::print_tasks(client, tasks, quiet, no_trunc).await
        }
        StackCmd::Rm { stacks } => {
            let mut failed = false;
            for ns in &stacks {
                failed |= !remove(client, ns).await?;
            }
            if failed { Err(local("failed to remove some resources from stack")) } else { Ok(()) }
        }
    }
}

/// Removes a stack's services, secrets, configs and networks; false when
/// some could not be removed (each error printed).
async fn remove(client: &Client, ns: &str) -> Result<bool, CliError> {
    let q = ns_filter(ns)?;
    let mut services: Vec<Value> = client.get(&format!("/services{q}")).await?;
    let mut networks: Vec<Value> = client.get(&format!("/networks{q}")).await?;
    let mut secrets: Vec<Value> = client.get(&format!("/secrets{q}")).await?;
    let mut configs: Vec<Value> = client.get(&format!("/configs{q}")).await?;
    if services.is_empty() && networks.is_empty() && secrets.is_empty() && configs.is_empty() {
        eprintln!("Nothing found in stack: {ns}");
        return Ok(true);
    }
    let name = |v: &Value| v["Spec"]["Name"].as_str().or(v["Name"].as_str()).unwrap_or("").to_owned();
    for list in [&mut services, &mut networks, &mut secrets, &mut configs] {
        list.sort_by_key(|v| name(v));
    }
    let mut ok = true;
    for (what, path, list) in [
        ("service", "/services", &services),
        ("secret", "/secrets", &secrets),
        ("config", "/configs", &configs),
        ("network", "/networks", &networks),
    ] {
        for v in list {
            println!("Removing {what} {}", name(v));
            let id = v["ID"].as_str().or(v["Id"].as_str()).unwrap_or("");
            if let Err(e) = client.delete(&format!("{path}/{id}")).await {
                eprintln!("Failed to remove {what} {id}: {e}");
                ok = false;
            }
        }
    }
    Ok(ok)
}

async fn deploy(client: &Client, files: &[String], prune: bool, ns: &str) -> Result<(), CliError> {
    if files.len() != 1 {
        return Err(local("only one compose file is supported"));
    }
    let file = &files[0];
    let (text, dir) = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| local(e.to_string()))?;
        (s, std::env::current_dir().unwrap_or_default())
    } else {
        let p = std::path::Path::new(file);
        let text = std::fs::read_to_string(p).map_err(|e| local(format!("open {file}: {e}")))?;
        (text, p.parent().map(std::path::Path::to_path_buf).unwrap_or_default())
    };
    let env = |k: &str| std::env::var(k).ok();
    let read = |f: &str| {
        let p = dir.join(f);
        std::fs::read(&p).map_err(|e| format!("open {}: {e}", p.display()))
    };
    let mut warnings = Vec::new();
    let stack = compose::load(&text, ns, &env, &read, &mut warnings).map_err(local)?;
    for w in &warnings {
        eprintln!("{w}");
    }
    if !stack.ignored.is_empty() {
        eprintln!("Ignoring unsupported options: {}\n", stack.ignored.join(", "));
    }

    // Networks: external ones must exist; the others are made if missing.
    let existing: Vec<Value> = client.get("/networks").await?;
    for n in &stack.networks {
        let found = existing.iter().any(|e| e["Name"] == n.name.as_str());
        if n.external {
            if !found {
                return Err(local(format!(
                    "network {:?} is declared as external, but could not be found. You need to create a swarm-scoped network before the stack is deployed",
                    n.name
                )));
            }
        } else if !found {
            println!("Creating network {}", n.name);
            client.post("/networks/create", &n.create).await?;
        }
    }

    // Secrets and configs: made, or their labels updated.
    for (is_secret, path, defs) in [(true, "/secrets", &stack.secrets), (false, "/configs", &stack.configs)] {
        let have: Vec<Value> = client.get(path).await?;
        let what = if is_secret { "secret" } else { "config" };
        for d in defs {
            let cur = have.iter().find(|v| v["Spec"]["Name"] == d.name.as_str());
            if d.external {
                if cur.is_none() {
                    return Err(local(format!("{what} not found: {}", d.name)));
                }
                continue;
            }
            let spec = json!({
                "Name": d.name,
                "Labels": d.labels,
                "Data": base64::engine::general_purpose::STANDARD.encode(&d.data),
            });
            if let Some(cur) = cur {
                let id = cur["ID"].as_str().unwrap_or("").to_owned();
                let version = cur["Version"]["Index"].as_u64().unwrap_or(0);
                client
                    .post(&format!("{path}/{id}/update?version={version}"), &spec)
                    .await
                    .map_err(|e| local(format!("failed to update {what} {}: {e}", d.name)))?;
            } else {
                println!("Creating {what} {}", d.name);
                client.post(&format!("{path}/create"), &spec).await?;
            }
        }
    }

    // Services: created, or updated from the version read.
    let current: Vec<Value> = client.get(&format!("/services{}", ns_filter(ns)?)).await?;
    for s in &stack.services {
        // References resolved to IDs as `--secret`/`--config` are.
        let mut spec = s.spec.clone();
        for (kind, refs) in [(Kind::Secret, &s.secrets), (Kind::Config, &s.configs)] {
            let resolved = super::secret::resolve(client, kind, refs).await?;
            super::secret::apply(&mut spec, kind, resolved, &[])?;
        }
        let spec = serde_json::to_value(&spec).map_err(|e| local(e.to_string()))?;
        if let Some(cur) = current.iter().find(|v| v["Spec"]["Name"] == s.name.as_str()) {
            let id = cur["ID"].as_str().unwrap_or("");
            println!("Updating service {} (id: {id})", s.name);
            let version = cur["Version"]["Index"].as_u64().unwrap_or(0);
            let r: Value =
                parse(&client.post(&format!("/services/{id}/update?version={version}"), &spec).await?)?;
            for w in r["Warnings"].as_array().into_iter().flatten() {
                eprintln!("{}", w.as_str().unwrap_or(""));
            }
        } else {
            println!("Creating service {}", s.name);
            client.post("/services/create", &spec).await?;
        }
    }
    if prune {
        for cur in &current {
            let name = cur["Spec"]["Name"].as_str().unwrap_or("");
            if !stack.services.iter().any(|s| s.name == name) {
                println!("Removing service {name}");
                client.delete(&format!("/services/{}", cur["ID"].as_str().unwrap_or(""))).await?;
            }
        }
    }
    Ok(())
}
