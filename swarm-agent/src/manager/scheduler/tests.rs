use std::collections::BTreeMap;

use bollard_stubs::models as m;
use proptest::prelude::*;

use crate::manager::{
    orchestrator::{Working, testutil::*},
    scheduler::constraint::Constraint,
    store::{
        model::{Availability, NodeState},
        state::ClusterState,
        task::TaskState,
    },
};

fn with_placement(name: &str, replicas: i64, constraints: Vec<String>, cpu: i64, max: i64) -> m::ServiceSpec {
    let mut sp = spec(name, Some(replicas));
    let t = sp.task_template.as_mut().unwrap();
    t.placement = Some(m::TaskSpecPlacement {
        constraints: Some(constraints),
        max_replicas: Some(max),
        ..Default::default()
    });
    if cpu > 0 {
        t.resources = Some(m::TaskSpecResources {
            reservations: Some(m::ResourceObject { nano_cpus: Some(cpu), ..Default::default() }),
            ..Default::default()
        });
    }
    sp
}

#[test]
fn unschedulable_task_explains_and_waits() {
    let mut s = cluster();
    for n in ["n1", "n2", "n3"] {
        add_node(&mut s, n);
    }
    s.nodes.get_mut("n3").unwrap().status.state = NodeState::Down;
    add_service(&mut s, "svc", with_placement("web", 1, vec!["node.labels.disk==ssd".into()], 0, 0));
    let mut next = 0;
    converge(&mut s, 1000, &mut next);
    let t = s.tasks.values().next().unwrap();
    assert_eq!(t.status.state, TaskState::Pending);
    assert_eq!(
        t.status.err,
        "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
    );
    s.nodes.get_mut("n2").unwrap().spec.labels.insert("disk".into(), "ssd".into());
    converge(&mut s, 2000, &mut next);
    let t = s.tasks.values().next().unwrap();
    assert_eq!((t.status.state, t.node_id.as_str(), t.status.err.as_str()), (TaskState::Assigned, "n2", ""));
}

#[test]
fn reservations_and_max_per_node_are_respected() {
    let mut s = cluster();
    for n in ["n1", "n2"] {
        add_node(&mut s, n);
    }
    // 2 CPUs per node, 1.5 CPUs per task: one task per node, the third waits.
    add_service(&mut s, "svc", with_placement("big", 3, vec![], 1_500_000_000, 0));
    let mut next = 0;
    converge(&mut s, 1000, &mut next);
    let pending: Vec<_> = s.tasks.values().filter(|t| t.status.state == TaskState::Pending).collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].status.err, "no suitable node (insufficient resources on 2 nodes)");
    let mut s = cluster();
    add_node(&mut s, "n1");
    add_service(&mut s, "svc", with_placement("one", 2, vec![], 0, 1));
    converge(&mut s, 1000, &mut next);
    let pending: Vec<_> = s.tasks.values().filter(|t| t.status.state == TaskState::Pending).collect();
    assert_eq!(pending[0].status.err, "no suitable node (max replicas per node limit exceed)");
}

#[test]
fn spread_preference_splits_across_label_values() {
    let mut s = cluster();
    for (n, zone) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        add_node(&mut s, n);
        s.nodes.get_mut(n).unwrap().spec.labels.insert("zone".into(), zone.into());
    }
    let mut sp = spec("web", Some(4));
    sp.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
        preferences: Some(vec![m::TaskSpecPlacementPreferences {
            spread: Some(m::TaskSpecPlacementSpread { spread_descriptor: Some("node.labels.zone".into()) }),
        }]),
        ..Default::default()
    });
    add_service(&mut s, "svc", sp);
    let mut next = 0;
    converge(&mut s, 1000, &mut next);
    let on_b = s.tasks.values().filter(|t| t.node_id == "b1").count();
    assert_eq!(on_b, 2, "half the tasks in zone b, even though it has one node of four");
}

fn random_cluster(nodes: &[(bool, bool, Option<&'static str>, i64)]) -> ClusterState {
    let mut s = cluster();
    for (i, (ready, active, label, cpus)) in nodes.iter().enumerate() {
        let id = format!("n{i:02}");
        add_node(&mut s, &id);
        let n = s.nodes.get_mut(&id).unwrap();
        if !ready {
            n.status.state = NodeState::Down;
        }
        if !active {
            n.spec.availability = Availability::Pause;
        }
        if let Some(l) = label {
            n.spec.labels.insert("tier".into(), (*l).into());
        }
        n.description.nano_cpus = *cpus;
    }
    s
}

fn node_strategy() -> impl Strategy<Value = (bool, bool, Option<&'static str>, i64)> {
    (
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.9),
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        prop::sample::select(vec![1_000_000_000i64, 2_000_000_000, 4_000_000_000]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn never_violates_filters_and_is_deterministic(
        nodes in prop::collection::vec(node_strategy(), 1..12),
        replicas in 1i64..40,
        constraint in prop::option::of(prop::sample::select(vec!["node.labels.tier==web", "node.labels.tier!=db", "node.role==worker", "node.role==manager"])),
        cpu in prop::sample::select(vec![0i64, 500_000_000, 1_000_000_000]),
        max in 0i64..4,
    ) {
        let constraints: Vec<String> = constraint.into_iter().map(String::from).collect();
        let build = || {
            let mut s = random_cluster(&nodes);
            add_service(&mut s, "svc", with_placement("p", replicas, constraints.clone(), cpu, max));
            let mut next = 0;
            converge(&mut s, 1000, &mut next);
            s
        };
        let s = build();
        let parsed = Constraint::parse_all(&constraints).unwrap();
        let mut per_node: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for t in s.tasks.values().filter(|t| t.status.state == TaskState::Assigned) {
            let n = &s.nodes[&t.node_id];
            prop_assert_eq!(n.status.state, NodeState::Ready);
            prop_assert_eq!(n.spec.availability, Availability::Active);
            prop_assert!(parsed.iter().all(|c| c.matches(n)), "constraint violated on {}", n.id);
            let e = per_node.entry(n.id.as_str()).or_default();
            e.0 += 1;
            e.1 += cpu;
        }
        for (id, (count, used)) in &per_node {
            prop_assert!(*used <= s.nodes[*id].description.nano_cpus, "over-reserved {}", id);
            prop_assert!(max == 0 || *count <= max, "max per node exceeded on {}", id);
        }
        // Every task not placed has an explanation.
        for t in s.tasks.values().filter(|t| t.status.state == TaskState::Pending) {
            prop_assert!(t.status.err.starts_with("no suitable node"));
        }
        // Deterministic: the same input places the same tasks on the same nodes.
        let again = build();
        let place = |s: &ClusterState| s.tasks.values().map(|t| (t.slot, t.node_id.clone())).collect::<Vec<_>>();
        prop_assert_eq!(place(&s), place(&again));
    }

    #[test]
    fn spreads_evenly_without_constraints(n_nodes in 1usize..15, replicas in 1i64..60) {
        let mut s = cluster();
        for i in 0..n_nodes {
            add_node(&mut s, &format!("n{i:02}"));
        }
        add_service(&mut s, "svc", spec("even", Some(replicas)));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        let mut counts: BTreeMap<&str, usize> = s.nodes.keys().map(|k| (k.as_str(), 0)).collect();
        for t in s.tasks.values() {
            prop_assert_eq!(t.status.state, TaskState::Assigned);
            *counts.get_mut(t.node_id.as_str()).unwrap() += 1;
        }
        let (min, max) = (counts.values().min().unwrap(), counts.values().max().unwrap());
        prop_assert!(max - min <= 1, "uneven: {:?}", counts);
    }
}

#[test]
fn working_sees_its_own_changes() {
    let mut s = cluster();
    add_node(&mut s, "n1");
    add_service(&mut s, "svc", spec("web", Some(1)));
    let mut id = || "t1".to_string();
    let svc = s.services["svc"].clone();
    let mut w = Working::new(&s, 5, &mut id);
    w.create_task(&svc, 1, "", TaskState::Running);
    assert_eq!(w.tasks().count(), 1);
}
