//! The replicated orchestrator: a service of N replicas has slots 1..N, each
//! with at most one task that should run. Slots are filled when there are
//! fewer than N, emptied (highest first among equals, preferring nodes with
//! the most of this service's tasks and tasks that are not running) when
//! there are more; a task whose node went Down, was drained or removed, or no
//! longer meets the constraints is replaced; a task that stopped is handed
//! to the restart supervisor.

use std::collections::{BTreeMap, BTreeSet};

use crate::manager::{
    orchestrator::{Working, node_keeps_tasks, restart},
    scheduler::constraint,
    store::task::{Service, Task, TaskState},
};

pub fn reconcile(w: &mut Working<'_>, svc: &Service, replicas: u64) {
    let constraints = constraint::of_service(svc);
    let mut slots: BTreeMap<u64, Vec<Task>> = BTreeMap::new();
    for t in w.tasks_of(&svc.id).filter(|t| t.slot > 0) {
        slots.entry(t.slot).or_default().push(t.clone());
    }
    let policy = svc.restart_policy();
    let mut occupied: BTreeSet<u64> = BTreeSet::new();
    for (slot, tasks) in &slots {
        let history: Vec<&Task> = tasks.iter().collect();
        let mut runs = false;
        for t in tasks.iter().filter(|t| t.is_runnable()) {
            let node = w.state.nodes.get(&t.node_id);
            let misplaced = !t.node_id.is_empty()
                && (!node_keeps_tasks(node)
                    || node.is_some_and(|n| !constraint::matches_all(&constraints, n)))
                // New networks on an unchanged task (a port published):
                // the updater handles tasks whose spec changed.
                || (crate::manager::allocator::attachments_outdated(w, svc, t)
                    && !super::update::is_dirty(svc, t));
            if misplaced {
                // Replaced right away: the restart delay is for tasks that
                // failed, not for nodes that went away.
                w.set_desired(t, TaskState::Shutdown);
                w.create_task(svc, *slot, "", TaskState::Running);
                runs = true;
            } else if t.status.state.is_terminal() {
                runs |= restart::restart(w, svc, t, &history).is_some();
            } else {
                restart::release_delayed(w, svc, t, &history);
                runs = true;
            }
        }
        if runs || restart::finished_for_good(&policy, &history, w.now) {
            occupied.insert(*slot);
        }
    }
    let have = occupied.len() as u64;
    if have < replicas {
        let mut slot = 1;
        for _ in have..replicas {
            while occupied.contains(&slot) {
                slot += 1;
            }
            occupied.insert(slot);
            w.create_task(svc, slot, "", TaskState::Running);
        }
    } else if have > replicas {
        scale_down(w, svc, &occupied, (have - replicas) as usize);
    }
}

/// Picks the slots to empty and marks their tasks for removal.
fn scale_down(w: &mut Working<'_>, svc: &Service, occupied: &BTreeSet<u64>, count: usize) {
    let current: Vec<Task> = w
        .tasks_of(&svc.id)
        .filter(|t| occupied.contains(&t.slot) && t.desired_state <= TaskState::Shutdown)
        .cloned()
        .collect();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for t in current.iter().filter(|t| t.is_runnable() && !t.node_id.is_empty()) {
        *per_node.entry(t.node_id.as_str()).or_default() += 1;
    }
    let mut order: Vec<(usize, bool, u64)> = occupied
        .iter()
        .map(|slot| {
            let live = current.iter().find(|t| t.slot == *slot && t.is_runnable());
            let load = live.map_or(0, |t| per_node.get(t.node_id.as_str()).copied().unwrap_or(0));
            let running = live.is_some_and(|t| t.status.state == TaskState::Running);
            (load, running, *slot)
        })
        .collect();
    // Most loaded node first, then not running before running, then the
    // highest slot.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    let chosen: BTreeSet<u64> = order.into_iter().take(count).map(|(_, _, s)| s).collect();
    for t in current.iter().filter(|t| chosen.contains(&t.slot)) {
        w.set_desired(t, TaskState::Remove);
    }
}

#[cfg(test)]
mod tests {
    use crate::manager::{
        orchestrator::testutil::*,
        store::{
            model::{Availability, NodeState},
            state::Command,
            task::{TaskState, TaskStatus},
        },
    };

    fn three_nodes() -> crate::manager::store::state::ClusterState {
        let mut s = cluster();
        for n in ["n1", "n2", "n3"] {
            add_node(&mut s, n);
        }
        s
    }

    #[test]
    fn creates_slots_and_spreads_them() {
        let mut s = three_nodes();
        add_service(&mut s, "svc", spec("web", Some(3)));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        let mut slots: Vec<u64> = s.tasks.values().map(|t| t.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [1, 2, 3]);
        let nodes: std::collections::BTreeSet<_> = s.tasks.values().map(|t| t.node_id.clone()).collect();
        assert_eq!(nodes.len(), 3, "one task per node");
        assert!(s.tasks.values().all(|t| t.status.state == TaskState::Assigned));
        assert!(s.tasks.values().all(|t| t.status.message == "scheduler assigned task to node"));
    }

    #[test]
    fn scale_down_removes_highest_slots_then_up_reuses_them() {
        let mut s = three_nodes();
        add_service(&mut s, "svc", spec("web", Some(3)));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        agents_run(&mut s, 1001);
        let mut sp = spec("web", Some(2));
        let v = s.services["svc"].meta.version;
        s.apply(
            10,
            &Command::UpdateService {
                id: "svc".into(),
                version: v,
                spec: Box::new(sp.clone()),
                now: 1,
                networks: None,
            },
        )
        .unwrap();
        converge(&mut s, 1002, &mut next);
        let removed: Vec<u64> =
            s.tasks.values().filter(|t| t.desired_state == TaskState::Remove).map(|t| t.slot).collect();
        assert_eq!(removed, [3]);
        agents_run(&mut s, 1003);
        converge(&mut s, 1004, &mut next);
        assert_eq!(s.tasks.len(), 2, "the reaper deleted the removed task once it stopped");
        sp = spec("web", Some(3));
        s.apply(
            11,
            &Command::UpdateService {
                id: "svc".into(),
                version: 10,
                spec: Box::new(sp),
                now: 2,
                networks: None,
            },
        )
        .unwrap();
        converge(&mut s, 1005, &mut next);
        let mut slots: Vec<u64> = s.tasks.values().map(|t| t.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [1, 2, 3]);
    }

    #[test]
    fn failed_task_restarts_after_delay_in_same_slot() {
        let mut s = three_nodes();
        add_service(&mut s, "svc", spec("web", Some(1)));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        agents_run(&mut s, 1001);
        let id = s.tasks.keys().next().unwrap().clone();
        let failed = TaskStatus {
            state: TaskState::Failed,
            err: "task: non-zero exit (137)".into(),
            timestamp: 2000,
            ..Default::default()
        };
        s.apply(20, &Command::SetTaskStatus { updates: vec![(id.clone(), failed)], now: 2000 }).unwrap();
        converge(&mut s, 2000, &mut next);
        assert_eq!(s.tasks[&id].desired_state, TaskState::Shutdown);
        let new: Vec<_> = s.tasks.values().filter(|t| t.id != id).collect();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].slot, 1);
        assert_eq!(new[0].desired_state, TaskState::Ready, "waits out the 5 s restart delay");
        let mut next2 = next;
        let mut new_id = || {
            next2 += 1;
            format!("x{next2}")
        };
        let (_, wake) = crate::manager::orchestrator::plan(&s, 2001, &mut new_id);
        assert_eq!(wake, Some(2000 + 5_000_000_000));
        converge(&mut s, 2000 + 5_000_000_000, &mut next);
        let new: Vec<_> = s.tasks.values().filter(|t| t.id != id).collect();
        assert_eq!(new[0].desired_state, TaskState::Running);
    }

    #[test]
    fn restart_condition_none_leaves_the_slot_alone() {
        let mut s = three_nodes();
        let mut sp = spec("once", Some(1));
        sp.task_template.as_mut().unwrap().restart_policy =
            Some(bollard_stubs::models::TaskSpecRestartPolicy {
                condition: Some(bollard_stubs::models::TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            });
        add_service(&mut s, "svc", sp);
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        agents_run(&mut s, 1001);
        let id = s.tasks.keys().next().unwrap().clone();
        let done = TaskStatus { state: TaskState::Complete, timestamp: 2000, ..Default::default() };
        s.apply(20, &Command::SetTaskStatus { updates: vec![(id.clone(), done)], now: 2000 }).unwrap();
        converge(&mut s, 3000, &mut next);
        assert_eq!(s.tasks.len(), 1, "no replacement");
        assert_eq!(s.tasks[&id].desired_state, TaskState::Shutdown);
    }

    #[test]
    fn node_down_or_drained_moves_tasks_without_delay() {
        for how in ["down", "drain", "removed"] {
            let mut s = three_nodes();
            add_service(&mut s, "svc", spec("web", Some(3)));
            let mut next = 0;
            converge(&mut s, 1000, &mut next);
            agents_run(&mut s, 1001);
            let victim = s.tasks.values().find(|t| t.node_id == "n2").unwrap().id.clone();
            match how {
                "down" => s.nodes.get_mut("n2").unwrap().status.state = NodeState::Down,
                "drain" => s.nodes.get_mut("n2").unwrap().spec.availability = Availability::Drain,
                _ => {
                    s.nodes.remove("n2");
                }
            }
            converge(&mut s, 2000, &mut next);
            assert_eq!(s.tasks[&victim].desired_state, TaskState::Shutdown, "{how}");
            let live: Vec<_> = s.tasks.values().filter(|t| t.is_runnable()).collect();
            assert_eq!(live.len(), 3, "{how}");
            assert!(live.iter().all(|t| t.node_id != "n2" && t.desired_state == TaskState::Running), "{how}");
            let slot = s.tasks[&victim].slot;
            assert!(live.iter().any(|t| t.slot == slot), "{how}: same slot");
        }
    }
}
