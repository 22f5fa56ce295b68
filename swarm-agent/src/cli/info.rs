//! `info`: the daemon's view, with docker's swarm block.

use std::{fmt::Write as _, time::Duration};

use bollard_stubs::models as m;

use super::{
    client::{CliError, Client},
    fmt::human_duration,
};

pub async fn info(client: &Client) -> Result<(), CliError> {
    let info: m::SystemInfo = client.get("/info").await?;
    print!("{}", render(&info));
    Ok(())
}

/// docker's `info` server section, swarm part included.
pub fn render(info: &m::SystemInfo) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Server:");
    let _ = writeln!(s, " Server Version: {}", info.server_version.clone().unwrap_or_default());
    let sw = info.swarm.clone().unwrap_or_default();
    let state = sw.local_node_state.map(|x| x.to_string()).unwrap_or_default();
    let _ = writeln!(s, " Swarm: {state}");
    if state == "active" || state == "pending" || state == "error" {
        let _ = writeln!(s, "  NodeID: {}", sw.node_id.clone().unwrap_or_default());
        if let Some(e) = sw.error.as_ref().filter(|e| !e.is_empty()) {
            let _ = writeln!(s, "  Error: {e}");
        }
        let _ = writeln!(s, "  Is Manager: {}", sw.control_available.unwrap_or(false));
        if let (Some(true), Some(c)) = (sw.control_available, &sw.cluster) {
            let spec = c.spec.clone().unwrap_or_default();
            let _ = writeln!(s, "  ClusterID: {}", c.id.clone().unwrap_or_default());
            let _ = writeln!(s, "  Managers: {}", sw.managers.unwrap_or(0));
            let _ = writeln!(s, "  Nodes: {}", sw.nodes.unwrap_or(0));
            let pools = c.default_addr_pool.clone().unwrap_or_default();
            let _ = writeln!(s, "  Default Address Pool: {}  ", pools.join("  "));
            let _ = writeln!(s, "  SubnetSize: {}", c.subnet_size.unwrap_or(0));
            let _ = writeln!(s, "  Data Path Port: {}", c.data_path_port.unwrap_or(0));
            let _ = writeln!(s, "  Orchestration:");
            let limit = spec.orchestration.and_then(|o| o.task_history_retention_limit).unwrap_or(0);
            let _ = writeln!(s, "   Task History Retention Limit: {limit}");
            let raft = spec.raft.unwrap_or_default();
            let _ = writeln!(s, "  Raft:");
            let _ = writeln!(s, "   Snapshot Interval: {}", raft.snapshot_interval.unwrap_or(0));
            let _ =
                writeln!(s, "   Number of Old Snapshots to Retain: {}", raft.keep_old_snapshots.unwrap_or(0));
            let _ = writeln!(s, "   Heartbeat Tick: {}", raft.heartbeat_tick.unwrap_or(0));
            let _ = writeln!(s, "   Election Tick: {}", raft.election_tick.unwrap_or(0));
            let hb = spec.dispatcher.and_then(|d| d.heartbeat_period).unwrap_or(0).max(0) as u64;
            let _ = writeln!(s, "  Dispatcher:");
            let _ = writeln!(
                s,
                "   Heartbeat Period: {}",
                human_duration(Duration::from_nanos(hb)).to_lowercase()
            );
            let ca = spec.ca_config.unwrap_or_default();
            let _ = writeln!(s, "  CA Configuration:");
            let exp = ca.node_cert_expiry.unwrap_or(0).max(0) as u64;
            let _ = writeln!(
                s,
                "   Expiry Duration: {}",
                human_duration(Duration::from_nanos(exp)).to_lowercase()
            );
            let _ = writeln!(s, "   Force Rotate: {}", ca.force_rotate.unwrap_or(0));
            let autolock = spec.encryption_config.and_then(|e| e.auto_lock_managers).unwrap_or(false);
            let _ = writeln!(s, "  Autolock Managers: {autolock}");
            let _ =
                writeln!(s, "  Root Rotation In Progress: {}", c.root_rotation_in_progress.unwrap_or(false));
        }
        let _ = writeln!(s, "  Node Address: {}", sw.node_addr.clone().unwrap_or_default());
        let managers = sw.remote_managers.clone().unwrap_or_default();
        if !managers.is_empty() {
            let _ = writeln!(s, "  Manager Addresses:");
            let mut addrs: Vec<String> = managers.into_iter().filter_map(|p| p.addr).collect();
            addrs.sort();
            for a in addrs {
                let _ = writeln!(s, "   {a}");
            }
        }
    }
    let _ = writeln!(s, " Kernel Version: {}", info.kernel_version.clone().unwrap_or_default());
    let _ = writeln!(s, " Operating System: {}", info.operating_system.clone().unwrap_or_default());
    let _ = writeln!(s, " Architecture: {}", info.architecture.clone().unwrap_or_default());
    let _ = writeln!(s, " CPUs: {}", info.ncpu.unwrap_or(0));
    let _ = writeln!(s, " Name: {}", info.name.clone().unwrap_or_default());
    let _ = writeln!(s, " Docker Root Dir: {}", info.docker_root_dir.clone().unwrap_or_default());
    s
}
