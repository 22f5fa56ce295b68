//! The scheduler (swarmkit `manager/scheduler`): assigns each PENDING task
//! to a node. A node must pass swarmkit's filters, in its order — ready
//! (Ready and Active), resources (reservations), constraints, platform,
//! max replicas per node — and among those that do, the task goes where its
//! service has the fewest tasks (level by level through `spread`
//! preferences first), then where there are fewest tasks at all; nodes
//! where this service failed five times in five minutes come last. A task
//! that fits nowhere stays PENDING with docker's explanation, and is placed
//! in a later round once a node fits.

pub mod constraint;

use std::collections::BTreeMap;

use bollard_stubs::models as m;

use crate::manager::{
    orchestrator::Working,
    store::{
        model::{Availability, Nanos, Node, NodeState},
        task::{Task, TaskState},
    },
};
use constraint::Constraint;

pub const ASSIGNED_MESSAGE: &str = "scheduler assigned task to node";
const MONITOR_FAILURES: Nanos = 5 * 60 * 1_000_000_000;
const MAX_FAILURES: usize = 5;

/// What a task needs of a node.
struct Needs {
    constraints: Vec<Constraint>,
    cpu: i64,
    memory: i64,
    platforms: Vec<(String, String)>,
    max_per_node: u64,
    spread: Vec<String>,
    /// Host-mode published ports (port, protocol).
    host_ports: Vec<HostPort>,
}

type HostPort = (i64, m::EndpointPortConfigProtocolEnum);

/// The host-mode published ports a service's tasks take on their node.
fn host_ports(svc: &crate::manager::store::task::Service) -> Vec<HostPort> {
    use crate::manager::store::endpoint;
    endpoint::spec_ports(&svc.spec)
        .map(|(_, ports)| ports)
        .unwrap_or_default()
        .iter()
        .filter(|p| !endpoint::is_ingress(p) && p.published_port.unwrap_or(0) > 0)
        .map(|p| {
            (p.published_port.unwrap_or(0), p.protocol.unwrap_or(m::EndpointPortConfigProtocolEnum::TCP))
        })
        .collect()
}

impl Needs {
    fn of(spec: &m::TaskSpec, host_ports: Vec<HostPort>) -> Needs {
        let placement = spec.placement.as_ref();
        let reservations = spec.resources.as_ref().and_then(|r| r.reservations.as_ref());
        let list = placement.and_then(|p| p.constraints.clone()).unwrap_or_default();
        Needs {
            constraints: list
                .iter()
                .map(|c| {
                    Constraint::parse(c).unwrap_or(Constraint {
                        key: "node.id".into(),
                        equal: true,
                        value: String::new(),
                    })
                })
                .collect(),
            cpu: reservations.and_then(|r| r.nano_cpus).unwrap_or(0),
            memory: reservations.and_then(|r| r.memory_bytes).unwrap_or(0),
            platforms: placement
                .and_then(|p| p.platforms.as_ref())
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (p.os.clone().unwrap_or_default(), p.architecture.clone().unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default(),
            max_per_node: placement
                .and_then(|p| p.max_replicas)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0),
            spread: placement
                .and_then(|p| p.preferences.as_ref())
                .map(|prefs| {
                    prefs
                        .iter()
                        .filter_map(|p| p.spread.as_ref().and_then(|s| s.spread_descriptor.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            host_ports,
        }
    }
}

/// What is on a node.
#[derive(Default, Clone)]
struct Load {
    tasks: usize,
    per_service: BTreeMap<String, usize>,
    cpu: i64,
    memory: i64,
    recent_failures: BTreeMap<String, usize>,
    host_ports: std::collections::BTreeSet<HostPort>,
}

/// The filters, in swarmkit's order, with their explanations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Filter {
    Ready,
    Resources,
    Constraints,
    Platform,
    HostPorts,
    MaxReplicas,
}

impl Filter {
    const ALL: [Filter; 6] = [
        Filter::Ready,
        Filter::Resources,
        Filter::Constraints,
        Filter::Platform,
        Filter::HostPorts,
        Filter::MaxReplicas,
    ];

    fn explain(self, n: usize) -> String {
        let nodes = if n == 1 { "1 node".to_owned() } else { format!("{n} nodes") };
        match self {
            Filter::Ready => format!("{nodes} not available for new tasks"),
            Filter::Resources => format!("insufficient resources on {nodes}"),
            Filter::Constraints => format!("scheduling constraints not satisfied on {nodes}"),
            Filter::Platform => format!("unsupported platform on {nodes}"),
            Filter::HostPorts => format!("host-mode port already in use on {nodes}"),
            Filter::MaxReplicas => "max replicas per node limit exceed".to_owned(),
        }
    }

    fn passes(self, node: &Node, load: &Load, needs: &Needs, service_id: &str) -> bool {
        match self {
            Filter::Ready => {
                node.status.state == NodeState::Ready && node.spec.availability == Availability::Active
            }
            Filter::Resources => {
                (needs.cpu == 0 || load.cpu + needs.cpu <= node.description.nano_cpus)
                    && (needs.memory == 0 || load.memory + needs.memory <= node.description.memory_bytes)
            }
            Filter::Constraints => constraint::matches_all(&needs.constraints, node),
            Filter::Platform => {
                needs.platforms.is_empty()
                    || needs.platforms.iter().any(|(os, arch)| {
                        (os.is_empty() || os.eq_ignore_ascii_case(&node.description.os))
                            && (arch.is_empty() || same_arch(arch, &node.description.arch))
                    })
            }
            Filter::HostPorts => needs.host_ports.iter().all(|p| !load.host_ports.contains(p)),
            Filter::MaxReplicas => {
                needs.max_per_node == 0
                    || (load.per_service.get(service_id).copied().unwrap_or(0) as u64) < needs.max_per_node
            }
        }
    }
}

fn same_arch(a: &str, b: &str) -> bool {
    let norm = |s: &str| match s.to_ascii_lowercase().as_str() {
        "x86_64" | "amd64" => "amd64".to_owned(),
        "aarch64" | "arm64" => "arm64".to_owned(),
        o => o.to_owned(),
    };
    norm(a) == norm(b)
}

/// Counts as load on its node: assigned, and neither stopped nor stopping.
fn occupies(t: &Task) -> bool {
    !t.node_id.is_empty()
        && t.status.state >= TaskState::Assigned
        && !t.status.state.is_terminal()
        && t.is_runnable()
}

fn label_of(node: &Node, descriptor: &str) -> String {
    match descriptor.strip_prefix("node.labels.") {
        Some(l) => node.spec.labels.get(l).cloned(),
        None => descriptor
            .strip_prefix("engine.labels.")
            .and_then(|l| node.description.engine_labels.get(l).cloned()),
    }
    .unwrap_or_default()
}

#[allow(clippy::single_match_else)]
pub fn schedule(w: &mut Working<'_>) {
    let mut pending: Vec<Task> =
        w.tasks().filter(|t| t.status.state == TaskState::Pending && t.is_runnable()).cloned().collect();
    if pending.is_empty() {
        return;
    }
    // Pre-assigned (global) tasks first, then by service and slot, so that
    // placement is deterministic.
    pending.sort_by(|a, b| {
        (a.node_id.is_empty(), &a.service_id, a.slot, &a.id).cmp(&(
            b.node_id.is_empty(),
            &b.service_id,
            b.slot,
            &b.id,
        ))
    });
    let ports: BTreeMap<String, Vec<HostPort>> = w
        .state
        .services
        .values()
        .map(|s| (s.id.clone(), host_ports(s)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    let mut loads: BTreeMap<String, Load> =
        w.state.nodes.keys().map(|id| (id.clone(), Load::default())).collect();
    let since = w.now.saturating_sub(MONITOR_FAILURES);
    for t in w.tasks() {
        let Some(load) = loads.get_mut(&t.node_id) else { continue };
        if occupies(t) {
            add_load(load, t, &ports);
        } else if matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            && t.status.timestamp >= since
        {
            *load.recent_failures.entry(t.service_id.clone()).or_default() += 1;
        }
    }
    let nodes: Vec<&Node> = w.state.nodes.values().collect();
    // Tasks that need nothing that changes as tasks are placed (no
    // reservations, per-node maximum or spread) take the best node from an
    // ordered set, kept per service version: O(log n) per task.
    let mut fast: Option<((String, u64), FastSet)> = None;
    let mut needs_cache: Option<((String, u64), Needs)> = None;
    for mut t in pending {
        let key = (t.service_id.clone(), t.spec_version);
        if needs_cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let hp = ports.get(&t.service_id).cloned().unwrap_or_default();
            needs_cache = Some((key.clone(), Needs::of(&t.spec, hp)));
        }
        let needs = &needs_cache.as_ref().expect("just set").1;
        if t.node_id.is_empty()
            && needs.cpu == 0
            && needs.memory == 0
            && needs.max_per_node == 0
            && needs.spread.is_empty()
            && needs.host_ports.is_empty()
        {
            if fast.as_ref().is_none_or(|(k, _)| *k != key) {
                fast = Some((key.clone(), FastSet::build(&nodes, &loads, needs, &t.service_id)));
            }
            let set = &mut fast.as_mut().expect("just set").1;
            match set.order.pop_first() {
                Some((flaky, svc, total, idx)) => {
                    let n = nodes[idx];
                    t.node_id.clone_from(&n.id);
                    t.status.state = TaskState::Assigned;
                    t.status.message = ASSIGNED_MESSAGE.into();
                    t.status.err.clear();
                    t.status.timestamp = w.now;
                    if let Some(load) = loads.get_mut(&n.id) {
                        add_load(load, &t, &ports);
                    }
                    set.order.insert((flaky, svc + 1, total + 1, idx));
                    w.put(t);
                }
                None => {
                    let err = explain(&set.failed);
                    if t.status.err != err {
                        t.status.err = err;
                        w.put(t);
                    }
                }
            }
            continue;
        }
        fast = None;
        let mut failed: BTreeMap<Filter, usize> = BTreeMap::new();
        let candidates: Vec<&Node> = nodes
            .iter()
            .copied()
            .filter(|n| t.node_id.is_empty() || n.id == t.node_id)
            .filter(|n| {
                let load = &loads[&n.id];
                match Filter::ALL.into_iter().find(|f| !f.passes(n, load, needs, &t.service_id)) {
                    Some(f) => {
                        *failed.entry(f).or_default() += 1;
                        false
                    }
                    None => true,
                }
            })
            .collect();
        // This service's tasks per label value, for each spread level.
        let branches: Vec<BTreeMap<String, usize>> = needs
            .spread
            .iter()
            .map(|d| {
                let mut m: BTreeMap<String, usize> = BTreeMap::new();
                for o in &nodes {
                    let c = loads[&o.id].per_service.get(&t.service_id).copied().unwrap_or(0);
                    *m.entry(label_of(o, d)).or_default() += c;
                }
                m
            })
            .collect();
        let chosen = candidates.into_iter().min_by_key(|n| {
            let load = &loads[&n.id];
            let spread: Vec<usize> = needs
                .spread
                .iter()
                .zip(&branches)
                .map(|(d, m)| m.get(&label_of(n, d)).copied().unwrap_or(0))
                .collect();
            let flaky = load.recent_failures.get(&t.service_id).copied().unwrap_or(0) >= MAX_FAILURES;
            (
                flaky,
                spread,
                load.per_service.get(&t.service_id).copied().unwrap_or(0),
                load.tasks,
                n.id.as_str(),
            )
        });
        if let Some(n) = chosen {
            t.node_id.clone_from(&n.id);
            t.status.state = TaskState::Assigned;
            t.status.message = ASSIGNED_MESSAGE.into();
            t.status.err.clear();
            t.status.timestamp = w.now;
            if let Some(load) = loads.get_mut(&n.id) {
                add_load(load, &t, &ports);
            }
            w.put(t);
        } else {
            let err = explain(&failed);
            if t.status.err != err {
                t.status.err = err;
                w.put(t);
            }
        }
    }
}

/// The nodes a service version may use, best first.
struct FastSet {
    order: std::collections::BTreeSet<(bool, usize, usize, usize)>,
    failed: BTreeMap<Filter, usize>,
}

impl FastSet {
    #[allow(clippy::single_match_else)]
    fn build(nodes: &[&Node], loads: &BTreeMap<String, Load>, needs: &Needs, service: &str) -> FastSet {
        let mut order = std::collections::BTreeSet::new();
        let mut failed: BTreeMap<Filter, usize> = BTreeMap::new();
        for (idx, n) in nodes.iter().enumerate() {
            let load = &loads[&n.id];
            match Filter::ALL.into_iter().find(|f| !f.passes(n, load, needs, service)) {
                Some(f) => *failed.entry(f).or_default() += 1,
                None => {
                    let flaky = load.recent_failures.get(service).copied().unwrap_or(0) >= MAX_FAILURES;
                    order.insert((
                        flaky,
                        load.per_service.get(service).copied().unwrap_or(0),
                        load.tasks,
                        idx,
                    ));
                }
            }
        }
        FastSet { order, failed }
    }
}

fn add_load(load: &mut Load, t: &Task, ports: &BTreeMap<String, Vec<HostPort>>) {
    let needs = t.spec.resources.as_ref().and_then(|r| r.reservations.as_ref());
    load.host_ports.extend(ports.get(&t.service_id).into_iter().flatten().copied());
    load.tasks += 1;
    *load.per_service.entry(t.service_id.clone()).or_default() += 1;
    load.cpu += needs.and_then(|r| r.nano_cpus).unwrap_or(0);
    load.memory += needs.and_then(|r| r.memory_bytes).unwrap_or(0);
}

/// `no suitable node (…)`: the filters that turned nodes away, most first.
fn explain(failed: &BTreeMap<Filter, usize>) -> String {
    let mut list: Vec<(&Filter, &usize)> = failed.iter().collect();
    list.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if list.is_empty() {
        return "no suitable node".into();
    }
    let parts: Vec<String> = list.into_iter().map(|(f, n)| f.explain(*n)).collect();
    format!("no suitable node ({})", parts.join("; "))
}

#[cfg(test)]
mod tests;
