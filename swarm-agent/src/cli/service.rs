//! `service create|ls|ps|inspect|rm|scale|logs` (update and rollback live in
//! `service_update`), with docker's flags, tables,
//! messages and convergence progress.

use std::{collections::HashMap, time::Duration};

use bollard_stubs::models as m;
use serde_json::Value;

use super::{
    client::{CliError, Client},
    fmt::{human_duration, indent_json, natural_cmp, parse_rfc3339, pretty},
    node::filters_query,
    progress::converge,
    service_flags::{HealthArgs, PolicyArgs, ResourceArgs, RestartArgs, nanos, parse_bytes},
    swarm::parse_duration,
};
use crate::table;

#[derive(Debug, clap::Subcommand)]
pub enum ServiceCmd {
    /// Create a new service
    Create(Box<CreateArgs>),
    /// List services
    #[command(alias = "list")]
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided
        #[arg(short, long)]
        filter: Vec<String>,
    },
    /// List the tasks of one or more services
    Ps {
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        /// Filter output based on conditions provided
        #[arg(short, long)]
        filter: Vec<String>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Remove one or more services
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Fetch the logs of a service or task
    Logs {
        /// Follow log output
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        /// Show timestamps
        #[arg(short, long)]
        timestamps: bool,
        /// Do not neatly format logs
        #[arg(long)]
        raw: bool,
        #[arg(value_name = "SERVICE|TASK")]
        target: String,
    },
    /// Update a service
    Update(Box<super::service_update::UpdateArgs>),
    /// Revert changes to a service's configuration
    Rollback {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        service: String,
    },
    /// Scale one or multiple replicated services
    Scale {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true, value_name = "SERVICE=REPLICAS")]
        scales: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
#[allow(clippy::struct_excessive_bools)]
pub struct CreateArgs {
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Service mode ("replicated", "global")
    #[arg(long, default_value = "replicated")]
    mode: String,
    /// Number of tasks
    #[arg(long, allow_negative_numbers = true)]
    replicas: Option<i64>,
    /// Maximum number of tasks per node (default 0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<i64>,
    /// Network attachments
    #[arg(long)]
    network: Vec<String>,
    /// Publish a port as a node port
    #[arg(short, long)]
    publish: Vec<String>,
    /// Endpoint mode (vip or dnsrr)
    #[arg(long, default_value = "vip")]
    endpoint_mode: String,
    /// Set environment variables
    #[arg(short, long)]
    env: Vec<String>,
    /// Service labels
    #[arg(short, long)]
    label: Vec<String>,
    /// Container labels
    #[arg(long)]
    container_label: Vec<String>,
    /// Placement constraints
    #[arg(long)]
    constraint: Vec<String>,
    /// Add a placement preference
    #[arg(long)]
    placement_pref: Vec<String>,
    #[command(flatten)]
    restart: RestartArgs,
    #[command(flatten)]
    resources: ResourceArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Attach a filesystem mount to the service
    #[arg(long)]
    mount: Vec<String>,
    /// Specify secrets to expose to the service
    #[arg(long)]
    secret: Vec<String>,
    /// Specify configurations to expose to the service
    #[arg(long)]
    config: Vec<String>,
    /// Working directory inside the container
    #[arg(short, long)]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short, long)]
    user: Option<String>,
    /// Container hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Overwrite the default ENTRYPOINT of the image
    #[arg(long)]
    entrypoint: Option<String>,
    /// Signal to stop the container
    #[arg(long)]
    stop_signal: Option<String>,
    /// Time to wait before force killing a container (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_duration)]
    stop_grace_period: Option<Duration>,
    #[command(flatten)]
    health: HealthArgs,
    /// Mount the container's root filesystem as read only
    #[arg(long)]
    read_only: bool,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short, long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short, long)]
    quiet: bool,
    image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub async fn run(client: &Client, cmd: ServiceCmd) -> Result<(), CliError> {
    match cmd {
        ServiceCmd::Create(a) => create(client, *a).await,
        ServiceCmd::Ls { quiet, filter } => ls(client, quiet, &filter).await,
        ServiceCmd::Ps { quiet, no_trunc, filter, services } => {
            ps(client, quiet, no_trunc, &filter, &services).await
        }
        ServiceCmd::Inspect { pretty, services } => inspect(client, pretty, &services).await,
        ServiceCmd::Rm { services } => rm(client, &services).await,
        ServiceCmd::Update(a) => super::service_update::update(client, *a).await,
        ServiceCmd::Rollback { detach, quiet, service } => {
            super::service_update::rollback(client, &service, detach, quiet).await
        }
        ServiceCmd::Scale { detach, scales } => scale(client, detach, &scales).await,
        ServiceCmd::Logs { follow, tail, timestamps, raw, target } => {
            logs(client, follow, &tail, timestamps, raw, &target).await
        }
    }
}

fn local(m: impl Into<String>) -> CliError {
    CliError::local(m.into())
}

pub(super) fn parse_mount(s: &str) -> Result<m::Mount, String> {
    let mut mount = m::Mount::default();
    let mut typ = "volume".to_owned();
    for field in s.split(',') {
        let (k, v) = field.split_once('=').map_or((field, "true"), |(k, v)| (k, v));
        match k.to_ascii_lowercase().as_str() {
            "type" => typ = v.to_ascii_lowercase(),
            "source" | "src" => mount.source = Some(v.to_owned()),
            "target" | "dst" | "destination" => mount.target = Some(v.to_owned()),
            "readonly" | "ro" => mount.read_only = Some(v != "false" && v != "0"),
            "tmpfs-size" => {
                mount.tmpfs_options.get_or_insert_with(Default::default).size_bytes = Some(parse_bytes(v)?);
            }
            "tmpfs-mode" => {
                let mode = i64::from_str_radix(v, 8).map_err(|_| format!("invalid value for {k}: {v}"))?;
                mount.tmpfs_options.get_or_insert_with(Default::default).mode = Some(mode);
            }
            _ => return Err(format!("unexpected key '{k}' in '{field}'")),
        }
    }
    mount.typ = Some(match typ.as_str() {
        "bind" => m::MountType::BIND,
        "volume" => m::MountType::VOLUME,
        "tmpfs" => m::MountType::TMPFS,
        other => return Err(format!("invalid mount type: {other}")),
    });
    if mount.target.is_none() {
        return Err("target is required".into());
    }
    Ok(mount)
}

fn kv_map(list: &[String]) -> Option<HashMap<String, String>> {
    if list.is_empty() {
        return None;
    }
    Some(
        list.iter()
            .map(|l| l.split_once('=').map_or((l.clone(), String::new()), |(k, v)| (k.into(), v.into())))
            .collect(),
    )
}

/// The spec `docker service create` sends for these flags.
pub fn spec_of(a: &CreateArgs) -> Result<m::ServiceSpec, CliError> {
    let mode = match a.mode.as_str() {
        "replicated" => m::ServiceSpecMode {
            replicated: Some(m::ServiceSpecModeReplicated { replicas: Some(a.replicas.unwrap_or(1)) }),
            ..Default::default()
        },
        "global" => {
            if a.replicas.is_some() {
                return Err(local("replicas can only be used with replicated or replicated-job mode"));
            }
            #[allow(clippy::zero_sized_map_values)]
            m::ServiceSpecMode { global: Some(HashMap::new()), ..Default::default() }
        }
        other => return Err(local(format!("unknown mode: {other}, only replicated and global supported"))),
    };
    if let Some(r) = a.replicas
        && r < 0
    {
        return Err(local(format!(
            "invalid argument \"{r}\" for \"--replicas\" flag: strconv.ParseUint: parsing \"{r}\": invalid syntax"
        )));
    }
    let mut preferences = Vec::new();
    for p in &a.placement_pref {
        let (strategy, arg) = p
            .split_once('=')
            .ok_or_else(|| local("placement preference must be of the format \"<strategy>=<arg>\""))?;
        if strategy != "spread" {
            return Err(local(format!(
                "unsupported placement preference {strategy} (only spread is supported)"
            )));
        }
        preferences.push(m::TaskSpecPlacementPreferences {
            spread: Some(m::TaskSpecPlacementSpread { spread_descriptor: Some(arg.to_owned()) }),
        });
    }
    let mounts: Vec<m::Mount> =
        a.mount.iter().map(|s| parse_mount(s)).collect::<Result<_, _>>().map_err(local)?;
    let networks: Vec<m::NetworkAttachmentConfig> = a
        .network
        .iter()
        .map(|n| m::NetworkAttachmentConfig { target: Some(n.clone()), ..Default::default() })
        .collect();
    let mut ports = Vec::new();
    for p in &a.publish {
        ports.extend(parse_publish(p).map_err(local)?);
    }
    let endpoint_mode = match a.endpoint_mode.to_ascii_lowercase().as_str() {
        "vip" => m::EndpointSpecModeEnum::VIP,
        "dnsrr" => m::EndpointSpecModeEnum::DNSRR,
        _ => return Err(local(format!("invalid resolution mode: {:?}", a.endpoint_mode))),
    };
    let mut spec = m::ServiceSpec {
        name: a.name.clone(),
        labels: kv_map(&a.label),
        mode: Some(mode),
        endpoint_spec: Some(m::EndpointSpec {
            mode: Some(endpoint_mode),
            ports: (!ports.is_empty()).then_some(ports),
        }),
        task_template: Some(m::TaskSpec {
            container_spec: Some(m::TaskSpecContainerSpec {
                image: Some(a.image.clone()),
                labels: kv_map(&a.container_label),
                command: a.entrypoint.as_ref().map(|e| e.split_whitespace().map(String::from).collect()),
                args: (!a.args.is_empty()).then(|| a.args.clone()),
                hostname: a.hostname.clone(),
                env: (!a.env.is_empty()).then(|| a.env.clone()),
                dir: a.workdir.clone(),
                user: a.user.clone(),
                read_only: a.read_only.then_some(true),
                mounts: (!mounts.is_empty()).then_some(mounts),
                stop_signal: a.stop_signal.clone(),
                stop_grace_period: a.stop_grace_period.map(nanos),
                ..Default::default()
            }),
            resources: Some(m::TaskSpecResources {
                limits: Some(m::Limit::default()),
                reservations: Some(m::ResourceObject::default()),
                ..Default::default()
            }),
            placement: Some(m::TaskSpecPlacement {
                constraints: (!a.constraint.is_empty()).then(|| a.constraint.clone()),
                preferences: (!preferences.is_empty()).then_some(preferences),
                max_replicas: a.replicas_max_per_node,
                platforms: None,
            }),
            networks: (!networks.is_empty()).then_some(networks),
            ..Default::default()
        }),
        ..Default::default()
    };
    let task = spec.task_template.get_or_insert_with(Default::default);
    a.resources.apply(task)?;
    a.restart.apply(task)?;
    a.health.apply(task.container_spec.get_or_insert_with(Default::default))?;
    a.policy.apply(&mut spec)?;
    Ok(spec)
}

/// `-p`: docker's short form `[published:]target[/protocol]` (ranges
/// `a-b` on both sides) or its long form
/// `published=P,target=T,protocol=tcp|udp|sctp,mode=ingress|host`.
pub fn parse_publish(s: &str) -> Result<Vec<m::EndpointPortConfig>, String> {
    use m::{EndpointPortConfigProtocolEnum as P, EndpointPortConfigPublishModeEnum as M};
    let protocol = |v: &str| match v.to_ascii_lowercase().as_str() {
        "tcp" => Ok(P::TCP),
        "udp" => Ok(P::UDP),
        "sctp" => Ok(P::SCTP),
        _ => Err(format!("invalid protocol value '{v}'")),
    };
    let port = |v: &str| -> Result<i64, String> {
        v.parse::<u16>().map(i64::from).map_err(|_| format!("invalid containerPort: {v}"))
    };
    if s.contains('=') {
        let mut p = m::EndpointPortConfig {
            protocol: Some(P::TCP),
            publish_mode: Some(M::INGRESS),
            ..Default::default()
        };
        for field in s.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(|| format!("invalid field {field}"))?;
            match k.to_ascii_lowercase().as_str() {
                "mode" => {
                    p.publish_mode = Some(match v.to_ascii_lowercase().as_str() {
                        "ingress" => M::INGRESS,
                        "host" => M::HOST,
                        _ => {
                            return Err(format!(
                                "invalid publish mode value ({v}): must be either 'ingress' or 'host'"
                            ));
                        }
                    });
                }
                "target" => p.target_port = Some(port(v)?),
                "published" => p.published_port = Some(port(v)?),
                "protocol" => p.protocol = Some(protocol(v)?),
                _ => return Err(format!("invalid field key {k}")),
            }
        }
        if p.target_port.is_none() {
            return Err("missing mandatory field 'target'".into());
        }
        return Ok(vec![p]);
    }
    let (ports, proto) = match s.split_once('/') {
        Some((p, proto)) => (p, protocol(proto)?),
        None => (s, P::TCP),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [t] => ("", *t),
        [p, t] => (*p, *t),
        _ => return Err("hostip is not supported".into()),
    };
    let range = |v: &str| -> Result<(i64, i64), String> {
        match v.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if b < a { Err(format!("invalid range specified for port: {v}")) } else { Ok((a, b)) }
            }
            None => port(v).map(|p| (p, p)),
        }
    };
    let (t0, t1) = range(target)?;
    let published_text = published;
    let published = if published.is_empty() { None } else { Some(range(published)?) };
    if let Some((p0, p1)) = published
        && p1 - p0 != t1 - t0
    {
        return Err(format!(
            "invalid ranges specified for container and host Ports: {target} and {published_text}"
        ));
    }
    Ok((t0..=t1)
        .map(|t| m::EndpointPortConfig {
            protocol: Some(proto),
            target_port: Some(t),
            published_port: published.map(|(p0, _)| p0 + (t - t0)),
            publish_mode: Some(M::INGRESS),
            ..Default::default()
        })
        .collect())
}

/// docker's `service ps` PORTS: the host-mode ports a task holds.
fn task_ports(task: &Value) -> String {
    task["Status"]["PortStatus"]["Ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "*:{}->{}/{}",
                p["PublishedPort"].as_u64().unwrap_or(0),
                p["TargetPort"].as_u64().unwrap_or(0),
                p["Protocol"].as_str().unwrap_or("tcp")
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// docker's `service ls` PORTS: ingress ports, sorted by protocol and
/// published port, consecutive ones folded into ranges (`*:30000-30001->80-81/tcp`).
pub fn ports_column(service: &Value) -> String {
    let mut ports: Vec<(String, u64, u64)> = service["Endpoint"]["Ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["PublishMode"].as_str().unwrap_or("ingress") == "ingress")
        .map(|p| {
            (
                p["Protocol"].as_str().unwrap_or("tcp").to_owned(),
                p["PublishedPort"].as_u64().unwrap_or(0),
                p["TargetPort"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ports.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    struct Range {
        proto: String,
        p: (u64, u64),
        t: (u64, u64),
    }
    let show = |r: &Range| {
        let span = |(a, b): (u64, u64)| if b > a { format!("{a}-{b}") } else { a.to_string() };
        format!("*:{}->{}/{}", span(r.p), span(r.t), r.proto)
    };
    let mut out = Vec::new();
    let mut cur: Option<Range> = None;
    for (proto, published, target) in ports {
        if let Some(r) = cur.as_mut() {
            let is_range = r.t.1 != r.t.0;
            let overlaps = target <= r.t.1;
            let extends = proto == r.proto
                && published.wrapping_sub(r.p.1) <= 1
                && target.wrapping_sub(r.t.1) <= 1
                && !(is_range && overlaps);
            if extends {
                r.p.1 = published;
                r.t.1 = target;
                continue;
            }
            if r.p.0 > 0 {
                out.push(show(r));
            }
        }
        cur = Some(Range { proto, p: (published, published), t: (target, target) });
    }
    if let Some(r) = cur.as_ref().filter(|r| r.p.0 > 0) {
        out.push(show(r));
    }
    out.join(", ")
}

async fn create(client: &Client, a: CreateArgs) -> Result<(), CliError> {
    use crate::manager::store::secret::Kind;
    let mut spec = spec_of(&a)?;
    for (kind, given) in [(Kind::Secret, &a.secret), (Kind::Config, &a.config)] {
        let refs = given.iter().map(|s| super::secret::parse_ref(kind, s)).collect::<Result<Vec<_>, _>>()?;
        let resolved = super::secret::resolve(client, kind, &refs).await?;
        super::secret::apply(&mut spec, kind, resolved, &[])?;
    }
    let resp = client.post("/services/create", &spec).await?;
    let v: Value = serde_json::from_slice(&resp).map_err(|e| local(e.to_string()))?;
    let id = v["ID"].as_str().unwrap_or_default().to_owned();
    println!("{id}");
    if !a.detach {
        converge(client, &id, a.quiet).await?;
    }
    Ok(())
}

pub(super) fn mode_of(s: &Value) -> &'static str {
    if s["Spec"]["Mode"]["Global"].is_object() { "global" } else { "replicated" }
}

pub(super) async fn ls(client: &Client, quiet: bool, filter: &[String]) -> Result<(), CliError> {
    let q = filters_query(filter)?;
    let sep = if q.is_empty() { "?" } else { "&" };
    let mut services: Vec<Value> = client.get(&format!("/services{q}{sep}status=true")).await?;
    services.sort_by(|a, b| {
        natural_cmp(a["Spec"]["Name"].as_str().unwrap_or(""), b["Spec"]["Name"].as_str().unwrap_or(""))
    });
    if quiet {
        for s in &services {
            println!("{}", s["ID"].as_str().unwrap_or("").chars().take(12).collect::<String>());
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let running = s["ServiceStatus"]["RunningTasks"].as_u64().unwrap_or(0);
            let desired = s["ServiceStatus"]["DesiredTasks"].as_u64().unwrap_or(0);
            let max = s["Spec"]["TaskTemplate"]["Placement"]["MaxReplicas"].as_u64().unwrap_or(0);
            let replicas = if max > 0 {
                format!("{running}/{desired} (max {max} per node)")
            } else {
                format!("{running}/{desired}")
            };
            let image = s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].as_str().unwrap_or("");
            vec![
                s["ID"].as_str().unwrap_or("").chars().take(12).collect(),
                s["Spec"]["Name"].as_str().unwrap_or("").to_owned(),
                mode_of(s).to_owned(),
                replicas,
                image.split('@').next().unwrap_or("").to_owned(),
                ports_column(s),
            ]
        })
        .collect();
    print!("{}", table::render(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows));
    Ok(())
}

/// `service ps` / `node ps` rows: by name (natural), newest first; later
/// rows of the same name get ` \_ `.
pub async fn print_tasks(
    client: &Client,
    mut tasks: Vec<Value>,
    quiet: bool,
    no_trunc: bool,
) -> Result<(), CliError> {
    let mut services: HashMap<String, String> = HashMap::new();
    let mut nodes: HashMap<String, String> = HashMap::new();
    for t in &tasks {
        let sid = t["ServiceID"].as_str().unwrap_or("").to_owned();
        if !services.contains_key(&sid) {
            let s: Value = client.get(&format!("/services/{sid}")).await.unwrap_or_default();
            services.insert(sid.clone(), s["Spec"]["Name"].as_str().unwrap_or(&sid).to_owned());
        }
        let nid = t["NodeID"].as_str().unwrap_or("").to_owned();
        if !nid.is_empty() && !nodes.contains_key(&nid) {
            let n: Value = client.get(&format!("/nodes/{nid}")).await.unwrap_or_default();
            nodes.insert(nid.clone(), n["Description"]["Hostname"].as_str().unwrap_or(&nid).to_owned());
        }
    }
    let name_of = |t: &Value| {
        let svc = services.get(t["ServiceID"].as_str().unwrap_or("")).cloned().unwrap_or_default();
        match t["Slot"].as_u64() {
            Some(slot) if slot > 0 => format!("{svc}.{slot}"),
            _ => format!("{svc}.{}", t["NodeID"].as_str().unwrap_or("")),
        }
    };
    tasks.sort_by(|a, b| {
        natural_cmp(&name_of(a), &name_of(b))
            .then_with(|| b["CreatedAt"].as_str().unwrap_or("").cmp(a["CreatedAt"].as_str().unwrap_or("")))
    });
    if quiet {
        for t in &tasks {
            println!("{}", t["ID"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    let now = crate::manager::now_nanos();
    let mut prev = String::new();
    let mut rows = Vec::new();
    for t in &tasks {
        let name = name_of(t);
        let shown = if name == prev { format!(" \\_ {name}") } else { name.clone() };
        prev = name;
        let id = t["ID"].as_str().unwrap_or("");
        let image = t["Spec"]["ContainerSpec"]["Image"].as_str().unwrap_or("");
        let state = t["Status"]["State"].as_str().unwrap_or("");
        let ts = t["Status"]["Timestamp"].as_str().and_then(parse_rfc3339).unwrap_or(now);
        let ago = Duration::from_nanos(u64::try_from(now - ts).unwrap_or(0));
        let err = t["Status"]["Err"].as_str().unwrap_or("");
        let err = if err.is_empty() {
            String::new()
        } else if no_trunc || err.chars().count() <= 30 {
            format!("\"{err}\"")
        } else {
            format!("\"{}…\"", err.chars().take(29).collect::<String>())
        };
        rows.push(vec![
            if no_trunc { id.to_owned() } else { id.chars().take(12).collect() },
            shown,
            if no_trunc { image.to_owned() } else { image.split('@').next().unwrap_or("").to_owned() },
            nodes.get(t["NodeID"].as_str().unwrap_or("")).cloned().unwrap_or_default(),
            pretty(t["DesiredState"].as_str().unwrap_or("")),
            format!("{} {} ago", pretty(state), human_duration(ago).to_lowercase()),
            err,
            task_ports(t),
        ]);
    }
    print!(
        "{}",
        table::render(
            &["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"],
            &rows
        )
    );
    Ok(())
}

async fn ps(
    client: &Client,
    quiet: bool,
    no_trunc: bool,
    filter: &[String],
    services: &[String],
) -> Result<(), CliError> {
    let mut all = Vec::new();
    for s in services {
        let svc: Value =
            client.get(&format!("/services/{s}")).await.map_err(|e| match e.daemon_message() {
                Some(m) if m.contains("not found") => CliError::Daemon(format!("no such service: {s}")),
                _ => e,
            })?;
        let id = svc["ID"].as_str().unwrap_or("").to_owned();
        let mut f = filter.to_vec();
        f.push(format!("service={id}"));
        let tasks: Vec<Value> = client.get(&format!("/tasks{}", filters_query(&f)?)).await?;
        all.extend(tasks);
    }
    print_tasks(client, all, quiet, no_trunc).await
}

async fn inspect(client: &Client, pretty_out: bool, services: &[String]) -> Result<(), CliError> {
    let mut raws = Vec::new();
    for s in services {
        let raw = client.get_raw(&format!("/services/{s}")).await.map_err(|e| match e.daemon_message() {
            Some(m) if m.contains("not found") => CliError::Daemon(format!("no such service: {s}")),
            _ => e,
        })?;
        raws.push(raw);
    }
    if pretty_out {
        for raw in &raws {
            let v: Value = serde_json::from_slice(raw).map_err(|e| local(e.to_string()))?;
            print!("{}", pretty_service(&v));
        }
        return Ok(());
    }
    let joined: Vec<String> = raws.iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
    println!("{}", indent_json(&format!("[{}]", joined.join(","))));
    Ok(())
}

/// `service inspect --pretty`.
pub fn pretty_service(v: &Value) -> String {
    let spec = &v["Spec"];
    let c = &spec["TaskTemplate"]["ContainerSpec"];
    let mut out = String::new();
    out.push('\n');
    out.push_str(&format!("ID:\t\t{}\n", v["ID"].as_str().unwrap_or("")));
    out.push_str(&format!("Name:\t\t{}\n", spec["Name"].as_str().unwrap_or("")));
    if mode_of(v) == "global" {
        out.push_str("Service Mode:\tGlobal\n");
    } else {
        out.push_str("Service Mode:\tReplicated\n");
        out.push_str(&format!(
            " Replicas:\t{}\n",
            spec["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(cons) = spec["TaskTemplate"]["Placement"]["Constraints"].as_array() {
        out.push_str("Placement:\n Constraints:\t[");
        out.push_str(&cons.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
        out.push_str("]\n");
    } else {
        out.push_str("Placement:\n");
    }
    out.push_str("ContainerSpec:\n");
    out.push_str(&format!(" Image:\t\t{}\n", c["Image"].as_str().unwrap_or("")));
    if let Some(args) = c["Args"].as_array() {
        out.push_str(&format!(
            " Args:\t\t{}\n",
            args.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
        ));
    }
    if let Some(env) = c["Env"].as_array() {
        out.push_str(" Env:\t\t");
        out.push_str(&env.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
        out.push('\n');
    }
    out.push_str("Resources:\n");
    if let Some(nets) = spec["TaskTemplate"]["Networks"].as_array() {
        out.push_str("Networks:");
        for n in nets {
            out.push_str(&format!(" {}", n["Target"].as_str().unwrap_or("")));
        }
        out.push('\n');
    }
    out.push_str(&format!("Endpoint Mode:\t{}\n", spec["EndpointSpec"]["Mode"].as_str().unwrap_or("")));
    if let Some(ports) = v["Endpoint"]["Ports"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("Ports:");
        for p in ports {
            out.push_str(&format!(
                "\n PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                p["PublishedPort"].as_u64().unwrap_or(0),
                p["Protocol"].as_str().unwrap_or(""),
                p["TargetPort"].as_u64().unwrap_or(0),
                p["PublishMode"].as_str().unwrap_or(""),
            ));
        }
        out.push_str(" \n");
    }
    out.push('\n');
    out
}

async fn rm(client: &Client, services: &[String]) -> Result<(), CliError> {
    let mut errors = Vec::new();
    for s in services {
        match client.delete(&format!("/services/{s}")).await {
            Ok(_) => println!("{s}"),
            Err(e) => errors.push(e.to_string()),
        }
    }
    // Each error already says where it came from (docker prints them as is).
    if errors.is_empty() { Ok(()) } else { Err(local(errors.join("\n"))) }
}

async fn scale(client: &Client, detach: bool, scales: &[String]) -> Result<(), CliError> {
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for s in scales {
        let Some((name, n)) = s.split_once('=') else {
            return Err(local(format!(
                "invalid scale specifier '{s}'.\nSee 'swarm-agent service scale --help'."
            )));
        };
        let n: i64 = n
            .parse()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| local(format!("invalid replicas value {n}: invalid syntax")))?;
        parsed.push((name.to_owned(), n));
    }
    let mut converge_ids = Vec::new();
    for (name, n) in parsed {
        let svc: Value = match client.get(&format!("/services/{name}")).await {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        if mode_of(&svc) == "global" {
            errors.push(format!("{name}: scale can only be used with replicated or replicated-job mode"));
            continue;
        }
        let mut spec: m::ServiceSpec =
            serde_json::from_value(svc["Spec"].clone()).map_err(|e| local(e.to_string()))?;
        if let Some(mode) = spec.mode.as_mut() {
            mode.replicated = Some(m::ServiceSpecModeReplicated { replicas: Some(n) });
        }
        let id = svc["ID"].as_str().unwrap_or("").to_owned();
        let version = svc["Version"]["Index"].as_u64().unwrap_or(0);
        match client.post(&format!("/services/{id}/update?version={version}"), &spec).await {
            Ok(_) => {
                println!("{name} scaled to {n}");
                converge_ids.push(id);
            }
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if !detach {
        for id in converge_ids {
            converge(client, &id, false).await?;
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(CliError::Daemon(errors.join("\n"))) }
}

/// Splits docker's multiplexed stream into (stream, payload) frames.
#[derive(Default)]
struct Demux {
    buf: Vec<u8>,
}

impl Demux {
    fn push(&mut self, data: &[u8]) -> Vec<(u8, Vec<u8>)> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        while self.buf.len() >= 8 {
            let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
            if self.buf.len() < 8 + len {
                break;
            }
            let payload = self.buf[8..8 + len].to_vec();
            out.push((self.buf[0], payload));
            self.buf.drain(..8 + len);
        }
        out
    }
}

/// `task.slot.shortid@node    | line`, as docker's CLI prefixes service logs.
fn format_log_line(line: &str, timestamps: bool, names: &HashMap<String, (String, String)>) -> String {
    let (ts, rest) = if timestamps { line.split_once(' ').unwrap_or(("", line)) } else { ("", line) };
    let (details, msg) = rest.split_once(' ').unwrap_or((rest, ""));
    let attrs: HashMap<&str, &str> = details.split(',').filter_map(|kv| kv.split_once('=')).collect();
    let task = attrs.get("com.docker.swarm.task.id").copied().unwrap_or("");
    let (name, node) = names.get(task).cloned().unwrap_or_default();
    let short: String = task.chars().take(12).collect();
    let ts = if timestamps { format!("{ts} ") } else { String::new() };
    format!("{ts}{name}.{short}@{node}    | {msg}")
}

async fn logs(
    client: &Client,
    follow: bool,
    tail: &str,
    timestamps: bool,
    raw: bool,
    target: &str,
) -> Result<(), CliError> {
    let not_found = |e: CliError| match e.daemon_message() {
        Some(m) if m.contains("not found") => CliError::Daemon(format!("no such task or service: {target}")),
        _ => e,
    };
    let (kind, id) = if let Ok(s) = client.get::<Value>(&format!("/services/{target}")).await {
        ("services", s["ID"].as_str().unwrap_or("").to_owned())
    } else {
        let t: Value = client.get(&format!("/tasks/{target}")).await.map_err(not_found)?;
        ("tasks", t["ID"].as_str().unwrap_or("").to_owned())
    };
    // Names of the tasks and nodes for the prefixes.
    let mut names: HashMap<String, (String, String)> = HashMap::new();
    if !raw {
        let filter = if kind == "services" { format!("service={id}") } else { format!("id={id}") };
        let tasks: Vec<Value> = client.get(&format!("/tasks{}", filters_query(&[filter])?)).await?;
        let mut nodes: HashMap<String, String> = HashMap::new();
        for t in &tasks {
            let nid = t["NodeID"].as_str().unwrap_or("").to_owned();
            if !nodes.contains_key(&nid) {
                let n: Value = client.get(&format!("/nodes/{nid}")).await.unwrap_or_default();
                nodes.insert(nid.clone(), n["Description"]["Hostname"].as_str().unwrap_or(&nid).to_owned());
            }
            let name = t["Name"].as_str().unwrap_or("").to_owned();
            names.insert(t["ID"].as_str().unwrap_or("").to_owned(), (name, nodes[&nid].clone()));
        }
    }
    let q = format!(
        "/{kind}/{id}/logs?stdout=1&stderr=1&tail={tail}&details={}&follow={}&timestamps={}",
        u8::from(!raw),
        u8::from(follow),
        u8::from(timestamps)
    );
    let mut demux = Demux::default();
    let mut pending: HashMap<u8, Vec<u8>> = HashMap::new();
    client
        .get_stream(&q, |chunk| {
            for (stream, payload) in demux.push(chunk) {
                let buf = pending.entry(stream).or_default();
                buf.extend_from_slice(&payload);
                while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                    let shown = if raw { text } else { format_log_line(&text, timestamps, &names) };
                    if stream == 2 {
                        eprintln!("{shown}");
                    } else {
                        println!("{shown}");
                    }
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_get_dockers_prefix() {
        let names = HashMap::from([(
            "abcdefghijklmnopqrstuvwxy".to_owned(),
            ("web.1".to_owned(), "node2".to_owned()),
        )]);
        let line = "com.docker.swarm.node.id=n,com.docker.swarm.service.id=s,com.docker.swarm.task.id=abcdefghijklmnopqrstuvwxy hello world";
        assert_eq!(format_log_line(line, false, &names), "web.1.abcdefghijkl@node2    | hello world");
        let mut d = Demux::default();
        assert_eq!(d.push(&[1, 0, 0, 0, 0, 0, 0, 2, b'h']), vec![]);
        assert_eq!(d.push(b"i"), vec![(1, b"hi".to_vec())]);
    }

    #[test]
    fn mounts() {
        let mnt = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!(mnt.typ, Some(m::MountType::TMPFS));
        assert_eq!(mnt.tmpfs_options.unwrap().size_bytes, Some(1 << 20));
        assert!(parse_mount("type=bind,source=/x").unwrap_err().contains("target"));
        assert!(parse_mount("type=nfs,target=/x").unwrap_err().contains("invalid mount type"));
    }
}
