//! The task reaper (swarmkit `orchestrator/taskreaper`): deletes tasks that
//! were removed (scale down, `service rm`) once they no longer run, and
//! keeps each slot's history (per node for global services) to the
//! cluster's task history limit, counting the current task. With
//! `--restart-max-attempts N` at least N+1 are kept, so the attempts can be
//! counted.

use std::collections::BTreeMap;

use crate::manager::{
    orchestrator::Working,
    store::{
        model::NodeState,
        task::{Task, TaskState},
    },
};

/// Has a task that should not run stopped (or never reached a node that
/// could run it)?
fn stopped(w: &Working<'_>, t: &Task) -> bool {
    t.status.state.is_terminal()
        || t.status.state < TaskState::Assigned
        || w.state.nodes.get(&t.node_id).is_none_or(|n| n.status.state == NodeState::Down)
}

pub fn reap(w: &mut Working<'_>) {
    let limit = w.state.cluster.as_ref().map_or(5, |c| c.spec.task_history_limit);
    let mut removed = Vec::new();
    let mut groups: BTreeMap<(&str, u64, &str), Vec<&Task>> = BTreeMap::new();
    for t in w.tasks() {
        if t.desired_state >= TaskState::Remove {
            if stopped(w, t) {
                removed.push(t.id.clone());
            }
            continue;
        }
        let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
        groups.entry((t.service_id.as_str(), t.slot, node)).or_default().push(t);
    }
    if limit >= 0 {
        for ((service_id, _, _), mut tasks) in groups {
            let keep = w.state.services.get(service_id).map_or(limit as u64, |s| {
                let max = s.restart_policy().max_attempts;
                if max > 0 { (limit as u64).max(max + 1) } else { limit as u64 }
            });
            if tasks.len() as u64 <= keep {
                continue;
            }
            tasks.sort_by_key(|t| std::cmp::Reverse((t.meta.created_at, t.id.as_str())));
            for t in tasks.into_iter().skip(keep as usize) {
                if !t.is_runnable() && stopped(w, t) {
                    removed.push(t.id.clone());
                }
            }
        }
    }
    // Changes this round to a task that is deleted are moot.
    for id in &removed {
        w.changed.remove(id);
    }
    w.removed.extend(removed);
}

#[cfg(test)]
mod tests {
    use crate::manager::{
        orchestrator::testutil::*,
        store::{
            state::Command,
            task::{TaskState, TaskStatus},
        },
    };

    #[test]
    fn history_is_kept_to_the_limit() {
        let mut s = cluster();
        add_node(&mut s, "n1");
        s.cluster.as_mut().unwrap().spec.task_history_limit = 3;
        let mut sp = spec("web", Some(1));
        sp.task_template.as_mut().unwrap().restart_policy =
            Some(bollard_stubs::models::TaskSpecRestartPolicy { delay: Some(0), ..Default::default() });
        add_service(&mut s, "svc", sp);
        let mut next = 0;
        let mut now = 1000;
        for _ in 0..6 {
            converge(&mut s, now, &mut next);
            agents_run(&mut s, now + 1);
            let live = running(&s, "svc")[0].id.clone();
            now += 10;
            let failed = TaskStatus { state: TaskState::Failed, timestamp: now, ..Default::default() };
            s.apply(30, &Command::SetTaskStatus { updates: vec![(live, failed)], now }).unwrap();
            now += 10;
        }
        converge(&mut s, now, &mut next);
        assert_eq!(s.tasks.len(), 3, "the current task and two stopped ones");
        assert_eq!(s.tasks.values().filter(|t| t.is_runnable()).count(), 1);
    }

    #[test]
    fn service_rm_deletes_tasks_once_stopped() {
        let mut s = cluster();
        add_node(&mut s, "n1");
        add_service(&mut s, "svc", spec("web", Some(2)));
        let mut next = 0;
        converge(&mut s, 1000, &mut next);
        agents_run(&mut s, 1001);
        s.apply(40, &Command::RemoveService { id: "svc".into(), now: 1002 }).unwrap();
        converge(&mut s, 1003, &mut next);
        assert_eq!(s.tasks.len(), 2, "still running: kept until the agent stops them");
        assert!(s.tasks.values().all(|t| t.desired_state == TaskState::Remove));
        agents_run(&mut s, 1004);
        converge(&mut s, 1005, &mut next);
        assert!(s.tasks.is_empty());
    }
}
