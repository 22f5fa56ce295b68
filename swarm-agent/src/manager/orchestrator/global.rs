//! The global orchestrator: one task per eligible node (Active, not Down,
//! meeting the constraints), bound to the node when created; nodes that
//! join later get theirs. A node that goes Down, is drained or stops
//! meeting the constraints has its task shut down; a task that stopped is
//! handed to the restart supervisor.

use std::collections::BTreeMap;

use crate::manager::{
    orchestrator::{Working, node_keeps_tasks, restart},
    scheduler::constraint,
    store::{
        model::{Availability, NodeState},
        task::{Service, Task, TaskState},
    },
};

pub fn reconcile(w: &mut Working<'_>, svc: &Service) {
    let constraints = constraint::of_service(svc);
    let policy = svc.restart_policy();
    let mut per_node: BTreeMap<String, Vec<Task>> = BTreeMap::new();
    for t in w.tasks_of(&svc.id).filter(|t| t.slot == 0) {
        per_node.entry(t.node_id.clone()).or_default().push(t.clone());
    }
    for (node_id, tasks) in &per_node {
        let node = w.state.nodes.get(node_id);
        let fits = node_keeps_tasks(node) && node.is_some_and(|n| constraint::matches_all(&constraints, n));
        let history: Vec<&Task> = tasks.iter().collect();
        for t in tasks.iter().filter(|t| t.is_runnable()) {
            let outdated = crate::manager::allocator::attachments_outdated(w, svc, t)
                && !super::update::is_dirty(svc, t);
            if !fits || outdated {
                w.set_desired(t, TaskState::Shutdown);
            } else if t.status.state.is_terminal() {
                restart::restart(w, svc, t, &history);
            } else {
                restart::release_delayed(w, svc, t, &history);
            }
        }
    }
    let nodes: Vec<String> = w
        .state
        .nodes
        .values()
        .filter(|n| n.status.state != NodeState::Down && n.spec.availability == Availability::Active)
        .filter(|n| constraint::matches_all(&constraints, n))
        .map(|n| n.id.clone())
        .collect();
    for node_id in nodes {
        let tasks: Vec<&Task> = per_node.get(&node_id).map(|v| v.iter().collect()).unwrap_or_default();
        // A task this round may already have replaced one.
        let live = w.tasks_of(&svc.id).any(|t| t.slot == 0 && t.node_id == node_id && t.is_runnable());
        if !live && !restart::finished_for_good(&policy, &tasks, w.now) {
            w.create_task(svc, 0, &node_id, TaskState::Running);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manager::{
        orchestrator::testutil::*,
        store::{model::Availability, task::TaskState},
    };

    #[test]
    fn one_task_per_node_and_new_nodes_get_one() {
        let mut s = cluster();
        for n in ["n1", "n2", "n3"] {
            add_node(&mut s, n);
        }
        add_service(&mut s, "g", spec("mon", None));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        let mut nodes: Vec<_> = s.tasks.values().map(|t| t.node_id.clone()).collect();
        nodes.sort();
        assert_eq!(nodes, ["n1", "n2", "n3"]);
        assert!(s.tasks.values().all(|t| t.slot == 0 && t.status.state == TaskState::Assigned));
        add_node(&mut s, "n4");
        converge(&mut s, 2000, &mut next);
        assert_eq!(s.tasks.values().filter(|t| t.node_id == "n4").count(), 1);
        s.nodes.get_mut("n1").unwrap().spec.availability = Availability::Drain;
        converge(&mut s, 3000, &mut next);
        let n1: Vec<_> = s.tasks.values().filter(|t| t.node_id == "n1").collect();
        assert_eq!(n1.len(), 1);
        assert_eq!(n1[0].desired_state, TaskState::Shutdown);
        assert_eq!(s.tasks.values().filter(|t| t.is_runnable()).count(), 3);
    }
}
