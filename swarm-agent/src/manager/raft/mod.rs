//! Raft (openraft) for the managers: type configuration, the redb-backed log
//! and state machine, and the network over the node-to-node RPC.

pub mod network;
pub mod seal;
pub mod storage;

use std::{fmt, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::manager::store::state::{Command, Outcome};

/// A Raft member as openraft knows it: where to reach it, and which swarm
/// node it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftPeer {
    /// `ip:port` of the node's 2377 endpoint.
    pub addr: String,
    /// Swarm node ID.
    pub node_id: String,
}

impl fmt::Display for RaftPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node_id, self.addr)
    }
}

openraft::declare_raft_types!(
    /// openraft types of the swarm store.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = RaftPeer,
);

pub type Raft = openraft::Raft<TypeConfig, storage::StateMachine>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;

/// Raft timing. Docker's defaults are a 1 s tick, heartbeat every tick and
/// elections after 10-20 ticks; ours are faster by default and can be tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    /// Election timeout; openraft picks each timeout in [this, 2 × this).
    pub election: Duration,
    /// How often the leader makes a new gossip key (Docker: 12 h).
    pub gossip_key_rotation: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(250),
            election: Duration::from_millis(1500),
            gossip_key_rotation: Duration::from_secs(12 * 3600),
        }
    }
}

/// When to snapshot: every `interval` entries (`--snapshot-interval`), keeping
/// `keep_logs` entries after the snapshot for slow followers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotSettings {
    pub interval: u64,
    pub keep_logs: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings { interval: 10_000, keep_logs: 500 }
    }
}

impl SnapshotSettings {
    /// From the cluster spec; never keeps more logs than the interval.
    pub fn from_spec(spec: &crate::manager::store::model::ClusterSpec) -> SnapshotSettings {
        let interval = spec.snapshot_interval.max(1);
        SnapshotSettings { interval, keep_logs: spec.log_entries_for_slow_followers.min(interval) }
    }
}

/// openraft configuration for the given timing and snapshot settings.
pub fn config(timing: Timing, snapshots: SnapshotSettings) -> Arc<openraft::Config> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let cfg = openraft::Config {
        cluster_name: "swarm".into(),
        heartbeat_interval: ms(timing.heartbeat),
        election_timeout_min: ms(timing.election),
        election_timeout_max: ms(timing.election) * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshots.interval.max(1)),
        max_in_snapshot_log_to_keep: snapshots.keep_logs,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    Arc::new(cfg.validate().expect("valid raft config"))
}
