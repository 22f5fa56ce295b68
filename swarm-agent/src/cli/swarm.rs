//! `init`, `join`, `join-token`, `leave`: docker swarm's commands, as a
//! client of the daemon's API, with docker's output (`swarm-agent` in place
//! of `docker swarm` in printed commands).

use std::time::Duration;

use bollard_stubs::models as m;
use serde_json::json;

use super::client::{CliError, Client};
use crate::manager::store::model::Availability;

/// Options of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Advertised address (format: "<ip|interface>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip|interface>[:port]")
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active")]
    pub availability: String,
    /// Default address pool in CIDR format
    #[arg(long, value_delimiter = ',')]
    pub default_addr_pool: Vec<String>,
    /// Default address pool subnet mask length
    #[arg(long, default_value_t = 24)]
    pub default_addr_pool_mask_length: u32,
    /// Port number to use for data path traffic (1024 - 49151). If no value is set or is set to 0, the default port (4789) is used.
    #[arg(long, default_value_t = 0)]
    pub data_path_port: u32,
    /// Address or interface to use for data path traffic (format: "<ip|interface>")
    #[arg(long)]
    pub data_path_addr: Option<String>,
    /// Dispatcher heartbeat period (ns|us|ms|s|m|h)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub dispatcher_heartbeat: Duration,
    /// Task history retention limit
    #[arg(long, default_value_t = 5)]
    pub task_history_limit: i64,
    /// Validity period for node certificates (ns|us|ms|s|m|h)
    #[arg(long, default_value = "2160h0m0s", value_parser = parse_duration)]
    pub cert_expiry: Duration,
    /// Number of log entries between Raft snapshots
    #[arg(long, default_value_t = 10000)]
    pub snapshot_interval: u64,
    /// Number of additional Raft snapshots to retain
    #[arg(long, default_value_t = 0)]
    pub max_snapshots: u64,
    /// Force create a new cluster from current state
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Enable manager autolocking (requiring an unlock key to start a stopped manager)
    #[arg(long)]
    pub autolock: bool,
}

/// Go-style durations: "5s", "500ms", "2160h0m0s".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn check_availability(a: &str) -> Result<(), CliError> {
    Availability::parse(a).map(|_| ()).map_err(CliError::local)
}

pub async fn init(client: &Client, args: InitArgs) -> Result<(), CliError> {
    check_availability(&args.availability)?;
    let body = json!({
        "ListenAddr": args.listen_addr,
        "AdvertiseAddr": args.advertise_addr.unwrap_or_default(),
        "DataPathAddr": args.data_path_addr.unwrap_or_default(),
        "DataPathPort": args.data_path_port,
        "ForceNewCluster": args.force_new_cluster,
        "DefaultAddrPool": args.default_addr_pool,
        "SubnetSize": args.default_addr_pool_mask_length,
        "Availability": args.availability.to_ascii_lowercase(),
        "Spec": {
            "Orchestration": { "TaskHistoryRetentionLimit": args.task_history_limit },
            "Raft": { "SnapshotInterval": args.snapshot_interval, "KeepOldSnapshots": args.max_snapshots },
            "Dispatcher": { "HeartbeatPeriod": args.dispatcher_heartbeat.as_nanos() as i64 },
            "CAConfig": { "NodeCertExpiry": args.cert_expiry.as_nanos() as i64 },
            "EncryptionConfig": { "AutoLockManagers": args.autolock },
        },
    });
    let node_id: String = match client.post("/swarm/init", &body).await {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| CliError::local(e.to_string()))?,
        Err(CliError::Daemon(m))
            if m.contains("could not choose an IP address to advertise")
                || m.contains("could not find the system's IP address") =>
        {
            return Err(CliError::Daemon(format!("{m} - specify one with --advertise-addr")));
        }
        Err(e) => return Err(e),
    };
    print!("Swarm initialized: current node ({node_id}) is now a manager.\n\n");
    print_join_command(client, &node_id, true, false).await?;
    println!(
        "To add a manager to this swarm, run 'swarm-agent join-token manager' and follow the instructions."
    );
    Ok(())
}

/// Options of `join`.
#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// Token for entry into the swarm
    #[arg(long, default_value = "")]
    pub token: String,
    /// Advertised address (format: "<ip|interface>[:port]")
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Listen address (format: "<ip|interface>[:port]")
    #[arg(long, default_value = "0.0.0.0:2377")]
    pub listen_addr: String,
    /// Address or interface to use for data path traffic (format: "<ip|interface>")
    #[arg(long)]
    pub data_path_addr: Option<String>,
    /// Availability of the node ("active", "pause", "drain")
    #[arg(long, default_value = "active")]
    pub availability: String,
    /// HOST:PORT of a manager
    #[arg(value_name = "HOST:PORT")]
    pub remote: String,
}

pub async fn join(client: &Client, args: JoinArgs) -> Result<(), CliError> {
    check_availability(&args.availability)?;
    let body = json!({
        "ListenAddr": args.listen_addr,
        "AdvertiseAddr": args.advertise_addr.unwrap_or_default(),
        "DataPathAddr": args.data_path_addr.unwrap_or_default(),
        "RemoteAddrs": [args.remote],
        "JoinToken": args.token,
        "Availability": args.availability.to_ascii_lowercase(),
    });
    client.post("/swarm/join", &body).await?;
    let info: m::SystemInfo = client.get("/info").await?;
    if info.swarm.and_then(|s| s.control_available).unwrap_or(false) {
        println!("This node joined a swarm as a manager.");
    } else {
        println!("This node joined a swarm as a worker.");
    }
    Ok(())
}

/// Options of `join-token`.
#[derive(Debug, clap::Args)]
pub struct JoinTokenArgs {
    /// Rotate join token
    #[arg(long)]
    pub rotate: bool,
    /// Only display token
    #[arg(short, long)]
    pub quiet: bool,
    /// worker or manager
    #[arg(value_name = "worker|manager")]
    pub role: String,
}

pub async fn join_token(client: &Client, args: JoinTokenArgs) -> Result<(), CliError> {
    let worker = args.role == "worker";
    let manager = args.role == "manager";
    if !worker && !manager {
        return Err(CliError::local(format!("unknown role {}", args.role)));
    }
    if args.rotate {
        let sw: m::Swarm = client.get("/swarm").await?;
        let version = sw.version.and_then(|v| v.index).unwrap_or(0);
        let path = format!(
            "/swarm/update?version={version}&rotateWorkerToken={worker}&rotateManagerToken={manager}&rotateManagerUnlockKey=false"
        );
        client.post(&path, &sw.spec.unwrap_or_default()).await?;
        if !args.quiet {
            print!("Successfully rotated {} join token.\n\n", args.role);
        }
    }
    let sw: m::Swarm = client.get("/swarm").await?;
    let tokens = sw.join_tokens.unwrap_or_default();
    if args.quiet {
        let t = if worker { tokens.worker } else { tokens.manager };
        println!("{}", t.unwrap_or_default());
        return Ok(());
    }
    let info: m::SystemInfo = client.get("/info").await?;
    let node_id = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
    print_join_command(client, &node_id, worker, manager).await
}

/// docker's `printJoinCommand`.
async fn print_join_command(
    client: &Client,
    node_id: &str,
    worker: bool,
    manager: bool,
) -> Result<(), CliError> {
    let sw: m::Swarm = client.get("/swarm").await?;
    let node: m::Node = client.get(&format!("/nodes/{node_id}")).await?;
    let tokens = sw.join_tokens.unwrap_or_default();
    if let Some(ms) = node.manager_status {
        let addr = ms.addr.unwrap_or_default();
        if worker {
            print!(
                "To add a worker to this swarm, run the following command:\n\n    swarm-agent join --token {} {addr}\n\n",
                tokens.worker.unwrap_or_default()
            );
        }
        if manager {
            print!(
                "To add a manager to this swarm, run the following command:\n\n    swarm-agent join --token {} {addr}\n\n",
                tokens.manager.unwrap_or_default()
            );
        }
    }
    Ok(())
}

pub async fn leave(client: &Client, force: bool) -> Result<(), CliError> {
    client.post(&format!("/swarm/leave?force={force}"), &json!({})).await?;
    println!("Node left the swarm.");
    Ok(())
}
