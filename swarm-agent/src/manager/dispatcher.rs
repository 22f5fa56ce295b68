//! Node liveness as the leader's dispatcher tracks it (swarmkit
//! manager/dispatcher): each heartbeat extends a node's deadline to three
//! heartbeat periods from now; a node whose deadline passes is down. Sans-I/O:
//! the caller passes the time in and turns the answers into store commands.

use crate::{
    manager::store::{
        state::ClusterState,
        task::{TaskState, TaskStatus},
    },
    rpc::messages::{Assignment, AttachResponse},
};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Missed periods after which a node is down (swarmkit's grace multiplier).
pub const GRACE_MULTIPLIER: u32 = 3;

#[derive(Debug, Default)]
pub struct Liveness {
    deadlines: HashMap<String, Instant>,
}

impl Liveness {
    /// Records a heartbeat from `node` at `now`, with the current `period`.
    pub fn heartbeat(&mut self, node: &str, now: Instant, period: Duration) {
        self.deadlines.insert(node.to_owned(), now + period * GRACE_MULTIPLIER);
    }

    /// Starts tracking `nodes` as if they had just sent a heartbeat, with a
    /// longer grace (a new leader gives nodes time to find it).
    pub fn start(&mut self, nodes: impl IntoIterator<Item = String>, now: Instant, period: Duration) {
        self.deadlines.clear();
        for n in nodes {
            self.deadlines.insert(n, now + period * GRACE_MULTIPLIER * 2);
        }
    }

    /// Nodes whose deadline has passed at `now`. They stay expired (and are
    /// not reported again) until their next heartbeat.
    pub fn expired(&mut self, now: Instant) -> Vec<String> {
        let mut gone: Vec<String> =
            self.deadlines.iter().filter(|(_, d)| **d <= now).map(|(n, _)| n.clone()).collect();
        gone.sort();
        for n in &gone {
            self.deadlines.remove(n);
        }
        gone
    }

    /// The leader's own check ran late (its process was starved or paused):
    /// heartbeats that arrived meanwhile may not have been seen yet, so no
    /// node is judged on the stalled interval. Deadlines that fell inside it
    /// move to `now` plus one period.
    pub fn stalled(&mut self, now: Instant, period: Duration) {
        for d in self.deadlines.values_mut() {
            if *d < now + period {
                *d = now + period;
            }
        }
    }

    /// Stops tracking a node (removed from the swarm).
    pub fn forget(&mut self, node: &str) {
        self.deadlines.remove(node);
    }

    pub fn is_tracked(&self, node: &str) -> bool {
        self.deadlines.contains_key(node)
    }
}

/// How often the leader checks deadlines: a tenth of the period, within 20-500 ms.
pub fn check_interval(period: Duration) -> Duration {
    (period / 10).clamp(Duration::from_millis(20), Duration::from_millis(500))
}

/// The tasks assigned to a node, with what it needs to run them.
pub fn assignments(state: &ClusterState, node_id: &str) -> Vec<Assignment> {
    state
        .tasks
        .values()
        .filter(|t| t.node_id == node_id && t.status.state >= TaskState::Assigned)
        .map(|t| Assignment {
            task: t.clone(),
            service_name: state.services.get(&t.service_id).map(|s| s.name().to_owned()).unwrap_or_default(),
            attachments: t
                .networks
                .iter()
                .filter_map(|n| {
                    Some(AttachResponse {
                        endpoint: state.endpoints.get(&n.endpoint_id)?.clone(),
                        network: state.networks.get(&n.network_id)?.clone(),
                    })
                })
                .collect(),
            files: files(state, t),
        })
        .collect()
}

/// The secrets and configs `t` needs, if it is to run.
fn files(state: &ClusterState, t: &crate::manager::store::task::Task) -> Vec<crate::rpc::messages::FileData> {
    if t.desired_state > TaskState::Running {
        return Vec::new();
    }
    let spec =
        bollard_stubs::models::ServiceSpec { task_template: Some(t.spec.clone()), ..Default::default() };
    let mut out: Vec<crate::rpc::messages::FileData> = Vec::new();
    for r in crate::manager::store::secret::file_refs(&spec) {
        if out.iter().any(|f| f.id == r.id) {
            continue;
        }
        if let Some(b) = state.blobs(r.kind).get(&r.id) {
            out.push(crate::rpc::messages::FileData { id: b.id.clone(), data: b.data.clone() });
        }
    }
    out
}

/// Changes when what the node must do changes: a task comes or goes, or
/// its desired state moves.
pub fn fingerprint(state: &ClusterState, node_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in state.tasks.values().filter(|t| t.node_id == node_id && t.status.state >= TaskState::Assigned) {
        t.id.hash(&mut h);
        t.desired_state.hash(&mut h);
        t.spec_version.hash(&mut h);
    }
    h.finish()
}

/// Keeps only the updates for tasks assigned to `node_id`: a node reports
/// for its own tasks only.
pub fn own_statuses(
    state: &ClusterState,
    node_id: &str,
    statuses: Vec<(String, TaskStatus)>,
) -> Vec<(String, TaskStatus)> {
    statuses.into_iter().filter(|(id, _)| state.tasks.get(id).is_some_and(|t| t.node_id == node_id)).collect()
}

/// Whether the check after `last` ran so late (at `now`: more than a
/// heartbeat period) that the leader itself was stalled.
pub fn is_stall(last: Instant, now: Instant, period: Duration) -> bool {
    now.saturating_duration_since(last) > (check_interval(period) * 3).max(period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_leader_does_not_expire_nodes_on_the_stall() {
        let t0 = Instant::now();
        let p = Duration::from_millis(500);
        let mut l = Liveness::default();
        l.heartbeat("a", t0, p);
        let late = t0 + Duration::from_secs(5);
        assert!(is_stall(t0, late, p));
        assert!(!is_stall(t0, t0 + Duration::from_millis(300), p));
        l.stalled(late, p);
        assert!(l.expired(late).is_empty(), "judged after the stall, not during it");
        assert_eq!(l.expired(late + p), ["a"], "still expires if no heartbeat comes after");
    }

    const P: Duration = Duration::from_secs(5);

    #[test]
    fn a_node_is_down_after_three_missed_periods() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heartbeat("a", t0, P);
        assert!(l.expired((t0 + P * 3).checked_sub(Duration::from_millis(1)).unwrap()).is_empty());
        assert_eq!(l.expired(t0 + P * 3), vec!["a".to_owned()]);
        assert!(l.expired(t0 + P * 10).is_empty(), "reported once");
        l.heartbeat("a", t0 + P * 10, P);
        assert!(l.is_tracked("a"));
    }

    #[test]
    fn heartbeats_keep_a_node_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        for i in 0..10 {
            l.heartbeat("a", t0 + P * i, P);
            assert!(l.expired(t0 + P * i + P).is_empty());
        }
    }

    #[test]
    fn a_new_leader_gives_double_grace() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.start(["a".to_owned(), "b".to_owned()], t0, P);
        assert!(l.expired(t0 + P * 5).is_empty());
        l.heartbeat("a", t0 + P * 5, P);
        assert_eq!(l.expired(t0 + P * 6), vec!["b".to_owned()]);
        l.forget("a");
        assert!(l.expired(t0 + P * 100).is_empty());
    }

    #[test]
    fn check_interval_is_bounded() {
        assert_eq!(check_interval(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(check_interval(Duration::from_millis(500)), Duration::from_millis(50));
        assert_eq!(check_interval(Duration::from_millis(10)), Duration::from_millis(20));
    }
}
