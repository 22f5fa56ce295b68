//! `swarm-agent daemon`: the engine and its Docker API socket.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{api, daemon::Engine, manager::raft::Timing};

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Raft heartbeat interval (tuning; default 250ms)
    #[arg(long, env = "SWARM_RAFT_HEARTBEAT", value_parser = super::swarm::parse_duration)]
    pub raft_heartbeat: Option<Duration>,
    /// Raft election timeout; each election waits between this and twice this (default 1.5s)
    #[arg(long, env = "SWARM_RAFT_ELECTION", value_parser = super::swarm::parse_duration)]
    pub raft_election: Option<Duration>,
    /// How often the leader makes a new gossip encryption key (default 12h)
    #[arg(long, env = "SWARM_GOSSIP_KEY_ROTATION", value_parser = super::swarm::parse_duration)]
    pub gossip_key_rotation: Option<Duration>,
    /// How long a node that gossip found dead keeps its endpoints in this
    /// node's datapath unless the managers mark it Down first (default 60s)
    #[arg(long, env = "SWARM_GOSSIP_DOWN_GRACE", value_parser = super::swarm::parse_duration)]
    pub gossip_down_grace: Option<Duration>,
    /// Root of this agent's pinned eBPF objects (on a bpffs)
    #[arg(long, env = "SWARM_BPFFS", default_value = crate::datapath::bpffs::DEFAULT_ROOT)]
    pub bpffs: PathBuf,
    /// XDP on the underlay interface: auto (native XDP except on veth, where
    /// it costs throughput), native, generic, or off (TC alone filters)
    #[arg(long, env = "SWARM_XDP", default_value = "auto", value_parser = ["auto", "native", "generic", "off"])]
    pub xdp: String,
    /// The interface pair of each task's endpoint: auto (netkit where the
    /// kernel has it, else veth), netkit, or veth
    #[arg(long, env = "SWARM_ENDPOINT_INTERFACE", default_value = "auto", value_parser = ["auto", "netkit", "veth"])]
    pub endpoint_interface: String,
    /// cgroup under which task containers get theirs
    #[arg(long, env = "SWARM_CGROUP_PARENT", default_value = crate::agent::runtime::CGROUP_PARENT)]
    pub cgroup_parent: String,
    /// The OCI runtime for task containers: auto (crun where installed and
    /// usable, else runc), runc, crun, or a path
    #[arg(long, env = "SWARM_RUNTIME", default_value = "auto")]
    pub runtime: String,
    /// An engine label, key=value (what `engine.labels.<key>` constraints match)
    #[arg(long = "label", env = "SWARM_ENGINE_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// A resolver (ip or ip:port) tasks' embedded DNS forwards other names to
    /// (default: the host's /etc/resolv.conf)
    #[arg(long = "dns-upstream", env = "SWARM_DNS_UPSTREAMS", value_delimiter = ',')]
    pub dns_upstreams: Vec<String>,
    /// A registry (host:port) to pull from over plain HTTP
    #[arg(long = "insecure-registry", env = "SWARM_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
}

pub async fn run(socket: PathBuf, data_root: PathBuf, args: DaemonArgs) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let mut timing = Timing::default();
    if let Some(h) = args.raft_heartbeat {
        timing.heartbeat = h;
    }
    if let Some(e) = args.raft_election {
        timing.election = e;
    }
    if let Some(r) = args.gossip_key_rotation {
        timing.gossip_key_rotation = r.max(Duration::from_millis(100));
    }
    if timing.election <= timing.heartbeat * 2 {
        eprintln!("Error: the raft election timeout must be more than twice the heartbeat interval");
        return ExitCode::FAILURE;
    }
    match crate::node::parse_engine_labels(&args.labels) {
        Ok(l) => crate::node::set_engine_labels(l),
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut dns_upstreams = Vec::new();
    for u in &args.dns_upstreams {
        let parsed = u
            .parse::<std::net::SocketAddr>()
            .ok()
            .or_else(|| u.parse::<std::net::IpAddr>().ok().map(|ip| std::net::SocketAddr::new(ip, 53)));
        if let Some(a) = parsed {
            dns_upstreams.push(a);
        } else {
            eprintln!("Error: invalid DNS upstream {u:?}: want an IP address or IP:port");
            return ExitCode::FAILURE;
        }
    }
    let oci = match crate::agent::exec::runc::pick_runtime(&args.runtime) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&data_root) {
        eprintln!("Error: creating {}: {e}", data_root.display());
        return ExitCode::FAILURE;
    }
    let pid_file = data_root.join("swarm-agent.pid");
    let _ = std::fs::write(&pid_file, format!("{}\n", std::process::id()));
    tracing::info!(runtime = %oci, "task containers run with {oci}");
    let runtime = match crate::agent::runtime::Runtime::open(
        &data_root,
        &args.cgroup_parent,
        args.insecure_registries.clone(),
        oci,
    ) {
        Ok(mut r) => {
            r.dns_upstreams = dns_upstreams;
            std::sync::Arc::new(r)
        }
        Err(e) => {
            eprintln!("Error: opening the image store and executor under {}: {e}", data_root.display());
            return ExitCode::FAILURE;
        }
    };
    let options = crate::node::NodeOptions {
        runtime: Some(runtime),
        timing,
        bpffs: args.bpffs.clone(),
        gossip_down_grace: args.gossip_down_grace.unwrap_or(crate::gossip::DOWN_GRACE),
        xdp: crate::datapath::host::XdpPolicy::parse(&args.xdp)
            .unwrap_or(crate::datapath::host::XdpPolicy::Auto),
        endpoint_pairs: crate::datapath::netlink::PairPolicy::parse(&args.endpoint_interface)
            .unwrap_or(crate::datapath::netlink::PairPolicy::Auto),
    };
    let engine = match Engine::start(data_root.clone(), options).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(socket = %socket.display(), data_root = %data_root.display(), "swarm-agent daemon listening");
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    let served = api::serve(&socket, engine.clone(), shutdown).await;
    engine.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_file);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: serving the API on {}: {e}", socket.display());
            ExitCode::FAILURE
        }
    }
}
