//! `service update` and `service rollback`: docker's flags applied to the
//! service's current spec, sent with its version (so a concurrent change
//! gets `update out of sequence`), then docker's progress until the update
//! converges, pauses or rolls back.

use std::{collections::BTreeMap, time::Duration};

use bollard_stubs::models as m;
use serde_json::Value;

use super::{
    client::{CliError, Client},
    progress::converge,
    service::{mode_of, parse_mount, parse_publish},
    service_flags::{HealthArgs, PolicyArgs, ResourceArgs, RestartArgs, nanos},
    swarm::parse_duration,
};

fn local(m: impl Into<String>) -> CliError {
    CliError::local(m.into())
}

#[derive(Debug, Default, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct UpdateArgs {
    /// Service image tag
    #[arg(long)]
    image: Option<String>,
    /// Service command args
    #[arg(long)]
    args: Option<String>,
    /// Number of tasks
    #[arg(long, allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<i64>,
    /// Add or update an environment variable
    #[arg(long)]
    env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long)]
    env_rm: Vec<String>,
    /// Add or update a service label
    #[arg(long)]
    label_add: Vec<String>,
    /// Remove a label by its key
    #[arg(long)]
    label_rm: Vec<String>,
    /// Add or update a container label
    #[arg(long)]
    container_label_add: Vec<String>,
    /// Remove a container label by its key
    #[arg(long)]
    container_label_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long)]
    constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long)]
    constraint_rm: Vec<String>,
    /// Add a placement preference
    #[arg(long)]
    placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long)]
    placement_pref_rm: Vec<String>,
    /// Add or update a mount on a service
    #[arg(long)]
    mount_add: Vec<String>,
    /// Remove a mount by its target path
    #[arg(long)]
    mount_rm: Vec<String>,
    /// Add or update a secret on a service
    #[arg(long)]
    secret_add: Vec<String>,
    /// Remove a secret
    #[arg(long)]
    secret_rm: Vec<String>,
    /// Add or update a config file on a service
    #[arg(long)]
    config_add: Vec<String>,
    /// Remove a configuration file
    #[arg(long)]
    config_rm: Vec<String>,
    /// Add a network
    #[arg(long)]
    network_add: Vec<String>,
    /// Remove a network
    #[arg(long)]
    network_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long)]
    publish_add: Vec<String>,
    /// Remove a published port by its target port
    #[arg(long)]
    publish_rm: Vec<String>,
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    restart: RestartArgs,
    #[command(flatten)]
    health: HealthArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    stop_grace_period: Option<Duration>,
    /// Signal to stop the container
    #[arg(long)]
    stop_signal: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    user: Option<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// Container hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    entrypoint: Option<String>,
    /// Endpoint mode (vip or dnsrr)
    #[arg(long)]
    endpoint_mode: Option<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    force: bool,
    /// Rollback to previous specification
    #[arg(long)]
    rollback: bool,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    pub service: String,
}

/// `KEY=VALUE` list entries by key, later ones winning.
fn env_key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

fn update_map(map: &mut Option<std::collections::HashMap<String, String>>, add: &[String], rm: &[String]) {
    if add.is_empty() && rm.is_empty() {
        return;
    }
    let m = map.get_or_insert_with(Default::default);
    for k in rm {
        m.remove(env_key(k));
    }
    for kv in add {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        m.insert(k.to_owned(), v.to_owned());
    }
}

fn words(what: &str, s: &str) -> Result<Vec<String>, CliError> {
    shlex::split(s)
        .ok_or_else(|| local(format!("invalid argument {s:?} for \"--{what}\" flag: unbalanced quotes")))
}

/// What the flags make of the current spec. `networks` resolves a name or
/// ID to the network's (ID, name).
pub fn apply(
    a: &UpdateArgs,
    spec: &mut m::ServiceSpec,
    global: bool,
    networks: &dyn Fn(&str) -> Option<(String, String)>,
) -> Result<(), CliError> {
    if let Some(r) = a.replicas {
        if global {
            return Err(local("replicas can only be used with replicated or replicated-job mode"));
        }
        if r < 0 {
            return Err(local(format!(
                "invalid argument \"{r}\" for \"--replicas\" flag: strconv.ParseUint: parsing \"{r}\": invalid syntax"
            )));
        }
        spec.mode.get_or_insert_with(Default::default).replicated =
            Some(m::ServiceSpecModeReplicated { replicas: Some(r) });
    }
    update_map(&mut spec.labels, &a.label_add, &a.label_rm);
    if let Some(mode) = &a.endpoint_mode {
        let ep = spec.endpoint_spec.get_or_insert_with(Default::default);
        ep.mode = Some(match mode.to_ascii_lowercase().as_str() {
            "vip" => m::EndpointSpecModeEnum::VIP,
            "dnsrr" => m::EndpointSpecModeEnum::DNSRR,
            _ => return Err(local(format!("invalid resolution mode: {mode:?}"))),
        });
    }
    update_ports(spec, &a.publish_add, &a.publish_rm)?;
    a.policy.apply(spec)?;
    let task = spec.task_template.get_or_insert_with(Default::default);
    a.resources.apply(task)?;
    a.restart.apply(task)?;
    update_placement(task, a)?;
    update_networks(task, &a.network_add, &a.network_rm, networks)?;
    if a.force {
        task.force_update = Some(task.force_update.unwrap_or(0) + 1);
    }
    let c = task.container_spec.get_or_insert_with(Default::default);
    a.health.apply(c)?;
    if let Some(i) = &a.image {
        c.image = Some(i.clone());
    }
    if let Some(args) = &a.args {
        c.args = Some(words("args", args)?);
    }
    if let Some(e) = &a.entrypoint {
        c.command = Some(words("entrypoint", e)?);
    }
    if !a.env_add.is_empty() || !a.env_rm.is_empty() {
        let mut env: BTreeMap<String, String> =
            c.env.iter().flatten().map(|e| (env_key(e).to_owned(), e.clone())).collect();
        for k in &a.env_rm {
            env.remove(env_key(k));
        }
        for e in &a.env_add {
            env.insert(env_key(e).to_owned(), e.clone());
        }
        c.env = Some(env.into_values().collect());
    }
    update_map(&mut c.labels, &a.container_label_add, &a.container_label_rm);
    if !a.mount_add.is_empty() || !a.mount_rm.is_empty() {
        let mut mounts = c.mounts.take().unwrap_or_default();
        mounts.retain(|mnt| !a.mount_rm.iter().any(|t| mnt.target.as_deref() == Some(t)));
        for s in &a.mount_add {
            let new = parse_mount(s).map_err(local)?;
            mounts.retain(|mnt| mnt.target != new.target);
            mounts.push(new);
        }
        c.mounts = Some(mounts);
    }
    if let Some(d) = a.stop_grace_period {
        c.stop_grace_period = Some(nanos(d));
    }
    for (field, value) in [
        (&mut c.stop_signal, &a.stop_signal),
        (&mut c.user, &a.user),
        (&mut c.dir, &a.workdir),
        (&mut c.hostname, &a.hostname),
    ] {
        if let Some(v) = value {
            *field = Some(v.clone());
        }
    }
    Ok(())
}

fn update_placement(task: &mut m::TaskSpec, a: &UpdateArgs) -> Result<(), CliError> {
    let changes = !a.constraint_add.is_empty()
        || !a.constraint_rm.is_empty()
        || !a.placement_pref_add.is_empty()
        || !a.placement_pref_rm.is_empty()
        || a.replicas_max_per_node.is_some();
    if !changes {
        return Ok(());
    }
    let p = task.placement.get_or_insert_with(Default::default);
    if let Some(n) = a.replicas_max_per_node {
        p.max_replicas = Some(n);
    }
    if !a.constraint_add.is_empty() || !a.constraint_rm.is_empty() {
        let mut cons = p.constraints.take().unwrap_or_default();
        for c in &a.constraint_add {
            if !cons.contains(c) {
                cons.push(c.clone());
            }
        }
        cons.retain(|c| !a.constraint_rm.contains(c));
        p.constraints = (!cons.is_empty()).then_some(cons);
    }
    let spread = |s: &str| -> Result<String, CliError> {
        let (strategy, arg) = s
            .split_once('=')
            .ok_or_else(|| local("placement preference must be of the format \"<strategy>=<arg>\""))?;
        if strategy != "spread" {
            return Err(local(format!(
                "unsupported placement preference {strategy} (only spread is supported)"
            )));
        }
        Ok(arg.to_owned())
    };
    if !a.placement_pref_add.is_empty() || !a.placement_pref_rm.is_empty() {
        let mut prefs = p.preferences.take().unwrap_or_default();
        for r in &a.placement_pref_rm {
            let d = spread(r)?;
            prefs.retain(|p| p.spread.as_ref().and_then(|s| s.spread_descriptor.as_deref()) != Some(&d));
        }
        for s in &a.placement_pref_add {
            prefs.push(m::TaskSpecPlacementPreferences {
                spread: Some(m::TaskSpecPlacementSpread { spread_descriptor: Some(spread(s)?) }),
            });
        }
        p.preferences = (!prefs.is_empty()).then_some(prefs);
    }
    Ok(())
}

fn update_networks(
    task: &mut m::TaskSpec,
    add: &[String],
    rm: &[String],
    resolve: &dyn Fn(&str) -> Option<(String, String)>,
) -> Result<(), CliError> {
    if add.is_empty() && rm.is_empty() {
        return Ok(());
    }
    let mut nets = task.networks.take().unwrap_or_default();
    let same = |target: &str, id: &str| resolve(target).is_some_and(|(i, _)| i == id) || target == id;
    for r in rm {
        let id = resolve(r).map_or_else(|| r.clone(), |(id, _)| id);
        nets.retain(|n| !same(n.target.as_deref().unwrap_or(""), &id));
    }
    for a in add {
        let (id, name) = resolve(a).ok_or_else(|| CliError::Daemon(format!("network {a} not found")))?;
        if nets.iter().any(|n| same(n.target.as_deref().unwrap_or(""), &id)) {
            return Err(local(format!("service is already attached to network {name}")));
        }
        nets.push(m::NetworkAttachmentConfig { target: Some(id), ..Default::default() });
    }
    task.networks = (!nets.is_empty()).then_some(nets);
    Ok(())
}

fn update_ports(spec: &mut m::ServiceSpec, add: &[String], rm: &[String]) -> Result<(), CliError> {
    if add.is_empty() && rm.is_empty() {
        return Ok(());
    }
    let mut remove = Vec::new();
    for r in rm {
        remove.extend(parse_publish(r).map_err(local)?);
    }
    let ep = spec.endpoint_spec.get_or_insert_with(Default::default);
    let mut ports = ep.ports.take().unwrap_or_default();
    ports.retain(|p| !remove.iter().any(|r| r.target_port == p.target_port && r.protocol == p.protocol));
    for a in add {
        for p in parse_publish(a).map_err(local)? {
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    ports.sort_by_key(|p| (p.published_port, p.target_port));
    ep.ports = (!ports.is_empty()).then_some(ports);
    Ok(())
}

pub async fn update(client: &Client, a: UpdateArgs) -> Result<(), CliError> {
    let svc: Value =
        client.get(&format!("/services/{}", a.service)).await.map_err(|e| match e.daemon_message() {
            Some(msg) if msg.contains("not found") => {
                CliError::Daemon(format!("service {} not found", a.service))
            }
            _ => e,
        })?;
    let current: m::ServiceSpec =
        serde_json::from_value(svc["Spec"].clone()).map_err(|e| local(e.to_string()))?;
    let mut spec = current.clone();
    let mut nets: Vec<Value> = Vec::new();
    if !a.network_add.is_empty() || !a.network_rm.is_empty() {
        nets = client.get("/networks").await?;
    }
    let resolve = |n: &str| {
        nets.iter()
            .find(|v| v["Id"] == n || v["Name"] == n || v["Id"].as_str().is_some_and(|i| i.starts_with(n)))
            .map(|v| (v["Id"].as_str().unwrap_or("").to_owned(), v["Name"].as_str().unwrap_or("").to_owned()))
    };
    apply(&a, &mut spec, mode_of(&svc) == "global", &resolve)?;
    {
        use crate::manager::store::secret::Kind;
        for (kind, add, rm) in
            [(Kind::Secret, &a.secret_add, &a.secret_rm), (Kind::Config, &a.config_add, &a.config_rm)]
        {
            if add.is_empty() && rm.is_empty() {
                continue;
            }
            let refs =
                add.iter().map(|s| super::secret::parse_ref(kind, s)).collect::<Result<Vec<_>, _>>()?;
            let resolved = super::secret::resolve(client, kind, &refs).await?;
            super::secret::apply(&mut spec, kind, resolved, rm)?;
        }
    }
    if a.rollback && spec != current {
        return Err(local("other flags may not be combined with --rollback"));
    }
    send(client, &svc, &spec, a.rollback, &a.service, a.detach, a.quiet).await
}

/// `service rollback`: the server puts the previous spec back.
pub async fn rollback(client: &Client, service: &str, detach: bool, quiet: bool) -> Result<(), CliError> {
    let svc: Value = client.get(&format!("/services/{service}")).await?;
    let spec: m::ServiceSpec =
        serde_json::from_value(svc["Spec"].clone()).map_err(|e| local(e.to_string()))?;
    send(client, &svc, &spec, true, service, detach, quiet).await
}

async fn send(
    client: &Client,
    svc: &Value,
    spec: &m::ServiceSpec,
    rollback: bool,
    name: &str,
    detach: bool,
    quiet: bool,
) -> Result<(), CliError> {
    let id = svc["ID"].as_str().unwrap_or("");
    let version = svc["Version"]["Index"].as_u64().unwrap_or(0);
    let extra = if rollback { "&rollback=previous" } else { "" };
    let resp = client.post(&format!("/services/{id}/update?version={version}{extra}"), spec).await?;
    println!("{name}");
    let v: Value = serde_json::from_slice(&resp).unwrap_or_default();
    for w in v["Warnings"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        eprintln!("{w}");
    }
    if !detach {
        converge(client, id, quiet).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        a: UpdateArgs,
    }

    fn args(v: &[&str]) -> UpdateArgs {
        Cmd::try_parse_from(std::iter::once("update").chain(v.iter().copied()).chain(["web"])).unwrap().a
    }

    fn spec() -> m::ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "web",
            "Labels": {"a": "1", "b": "2"},
            "Mode": {"Replicated": {"Replicas": 2}},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "busybox", "Env": ["A=1", "B=2"], "Args": ["sleep", "1"]},
                "Placement": {"Constraints": ["node.role==worker"]},
                "Networks": [{"Target": "n1"}]
            },
            "EndpointSpec": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080, "PublishMode": "ingress"}]}
        }))
        .unwrap()
    }

    fn nets(n: &str) -> Option<(String, String)> {
        match n {
            "n1" | "front" => Some(("n1".into(), "front".into())),
            "n2" | "back" => Some(("n2".into(), "back".into())),
            _ => None,
        }
    }

    fn updated(v: &[&str]) -> Result<m::ServiceSpec, CliError> {
        let mut s = spec();
        apply(&args(v), &mut s, false, &nets).map(|()| s)
    }

    #[test]
    fn each_flag_changes_its_field_and_only_that() {
        let base = spec();
        let s = updated(&["--env-add", "B=3", "--env-add", "C=4", "--env-rm", "A"]).unwrap();
        let c = s.task_template.as_ref().unwrap().container_spec.as_ref().unwrap();
        assert_eq!(c.env.as_deref().unwrap(), ["B=3", "C=4"]);
        assert_eq!(s.labels, base.labels);
        let s = updated(&["--args", "sh -c 'exit 1'"]).unwrap();
        let c = s.task_template.as_ref().unwrap().container_spec.as_ref().unwrap();
        assert_eq!(c.args.as_deref().unwrap(), ["sh", "-c", "exit 1"]);
        let mut expect = base.clone();
        expect.task_template.as_mut().unwrap().container_spec.as_mut().unwrap().args = c.args.clone();
        assert_eq!(s, expect, "--args changed something else");
        let s = updated(&["--label-add", "c=3", "--label-rm", "a"]).unwrap();
        assert_eq!(s.labels.unwrap().into_iter().collect::<BTreeMap<_, _>>().len(), 2);
        let s = updated(&["--constraint-rm", "node.role==worker", "--constraint-add", "node.labels.x==y"])
            .unwrap();
        let p = s.task_template.unwrap().placement.unwrap();
        assert_eq!(p.constraints.unwrap(), ["node.labels.x==y"]);
        let s = updated(&["--network-add", "back", "--network-rm", "front"]).unwrap();
        let n = s.task_template.unwrap().networks.unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].target.as_deref(), Some("n2"));
        let s = updated(&["--publish-rm", "80", "--publish-add", "9090:90"]).unwrap();
        let ports = s.endpoint_spec.unwrap().ports.unwrap();
        assert_eq!((ports.len(), ports[0].published_port, ports[0].target_port), (1, Some(9090), Some(90)));
        let s = updated(&["--force"]).unwrap();
        assert_eq!(s.task_template.unwrap().force_update, Some(1));
        let s = updated(&["--limit-memory", "64m", "--update-parallelism", "0"]).unwrap();
        let limits = s.task_template.unwrap().resources.unwrap().limits.unwrap();
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(s.update_config.unwrap().parallelism, Some(0));
        assert_eq!(updated(&[]).unwrap(), base, "no flags, no change");
    }

    #[test]
    fn bad_values_get_dockers_errors() {
        let e = |v: &[&str]| updated(v).unwrap_err().to_string();
        assert_eq!(e(&["--network-add", "front"]), "service is already attached to network front");
        assert_eq!(e(&["--network-add", "nope"]), "Error response from daemon: network nope not found");
        assert_eq!(e(&["--update-failure-action", "explode"]), "unrecognized update failure action explode");
        assert_eq!(e(&["--update-order", "sideways"]), "unrecognized update order sideways");
        assert!(e(&["--args", "sh -c 'exit"]).contains("unbalanced quotes"));
        let mut s = spec();
        let err = apply(&args(&["--replicas", "3"]), &mut s, true, &nets).unwrap_err();
        assert_eq!(err.to_string(), "replicas can only be used with replicated or replicated-job mode");
        assert!(Cmd::try_parse_from(["update", "--update-parallelism", "-1", "web"]).is_err());
        assert!(Cmd::try_parse_from(["update", "--update-delay", "soon", "web"]).is_err());
    }
}
