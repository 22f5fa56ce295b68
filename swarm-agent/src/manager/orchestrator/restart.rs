//! The restart supervisor (swarmkit `orchestrator/restart`): whether a task
//! that stopped gets a replacement, and when the replacement may start.
//! The attempt count comes from the slot's history in the store, so it
//! survives leader changes (swarmkit keeps it in memory).

use crate::manager::{
    orchestrator::Working,
    store::{
        model::Nanos,
        task::{RestartCondition, RestartPolicy, Service, Task, TaskState},
    },
};

/// Should `task`, which stopped, be replaced? `history` is every task of its
/// slot (replicated) or of its service on its node (global).
pub fn should_restart(policy: &RestartPolicy, task: &Task, history: &[&Task], now: Nanos) -> bool {
    match policy.condition {
        RestartCondition::None => return false,
        RestartCondition::OnFailure if task.status.state == TaskState::Complete => return false,
        _ => {}
    }
    if policy.max_attempts == 0 {
        return true;
    }
    let since = if policy.window > 0 { now.saturating_sub(policy.window) } else { Nanos::MIN };
    let earlier = history
        .iter()
        .filter(|t| t.id != task.id && t.status.state.is_terminal() && t.status.timestamp >= since)
        .filter(|t| t.meta.created_at <= task.meta.created_at)
        .count() as u64;
    earlier < policy.max_attempts
}

/// Is the newest task of a slot finished for good (it stopped and the policy
/// says not to replace it)? Such a slot stays taken: `--restart-condition
/// none` must not be undone by the orchestrator filling the slot again.
pub fn finished_for_good(policy: &RestartPolicy, history: &[&Task], now: Nanos) -> bool {
    let Some(newest) = history.iter().max_by_key(|t| (t.meta.created_at, t.id.as_str())) else {
        return false;
    };
    newest.desired_state <= TaskState::Shutdown
        && newest.status.state.is_terminal()
        && !should_restart(policy, newest, history, now)
}

/// A task that should run has stopped: shut it down and, if the policy
/// says so, start a replacement in the same slot (or on the same node)
/// after the restart delay. Returns the replacement.
pub fn restart(w: &mut Working<'_>, svc: &Service, task: &Task, history: &[&Task]) -> Option<Task> {
    let policy = svc.restart_policy();
    w.set_desired(task, TaskState::Shutdown);
    if !should_restart(&policy, task, history, w.now) {
        return None;
    }
    let delayed = policy.delay > 0;
    let desired = if delayed { TaskState::Ready } else { TaskState::Running };
    let t = w.create_task(svc, task.slot, if task.slot == 0 { &task.node_id } else { "" }, desired);
    if delayed {
        w.wake(w.now.saturating_add(policy.delay));
    }
    Some(t)
}

/// How long a replacement waits for the task it replaces to stop before it
/// starts anyway (swarmkit's `DelayStart` gives up after a minute too).
pub const OLD_TASK_TIMEOUT: Nanos = 60_000_000_000;

/// A replacement waiting out its restart delay (or, made by the updater
/// stop-first, for the old task of its slot to stop) starts once it may.
/// `history` is the rest of its slot.
pub fn release_delayed(w: &mut Working<'_>, svc: &Service, task: &Task, history: &[&Task]) {
    if task.desired_state != TaskState::Ready {
        return;
    }
    let mut due =
        task.start_at.unwrap_or_else(|| task.meta.created_at.saturating_add(svc.restart_policy().delay));
    for old in history.iter().filter(|o| o.id != task.id && o.meta.created_at <= task.meta.created_at) {
        // Still on a node that will report it stopping.
        let running = old.status.state >= TaskState::Assigned
            && !old.status.state.is_terminal()
            && super::node_keeps_tasks(w.state.nodes.get(&old.node_id));
        if running {
            due = due.max(old.meta.updated_at.saturating_add(OLD_TASK_TIMEOUT));
        }
    }
    if w.now >= due {
        w.set_desired(task, TaskState::Running);
    } else {
        w.wake(due);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::store::{
        model::Meta,
        task::{DEFAULT_RESTART_DELAY, TaskStatus},
    };

    fn task(id: &str, created: Nanos, state: TaskState) -> Task {
        Task {
            id: id.into(),
            meta: Meta { version: 1, created_at: created, updated_at: created },
            service_id: "s".into(),
            slot: 1,
            node_id: "n".into(),
            spec: bollard_stubs::models::TaskSpec::default(),
            spec_version: 1,
            desired_state: TaskState::Running,
            status: TaskStatus { state, timestamp: created + 1, ..Default::default() },
            networks: vec![],
            running_at: None,
            start_at: None,
        }
    }

    fn policy(condition: RestartCondition, max_attempts: u64, window: i64) -> RestartPolicy {
        RestartPolicy { condition, delay: DEFAULT_RESTART_DELAY, max_attempts, window }
    }

    #[test]
    fn conditions() {
        let failed = task("a", 1, TaskState::Failed);
        let done = task("b", 1, TaskState::Complete);
        for (cond, f, c) in [
            (RestartCondition::Any, true, true),
            (RestartCondition::OnFailure, true, false),
            (RestartCondition::None, false, false),
        ] {
            let p = policy(cond, 0, 0);
            assert_eq!(should_restart(&p, &failed, &[&failed], 10), f, "{cond:?} failed");
            assert_eq!(should_restart(&p, &done, &[&done], 10), c, "{cond:?} complete");
        }
    }

    #[test]
    fn max_attempts_counts_earlier_stops() {
        let p = policy(RestartCondition::Any, 2, 0);
        let t1 = task("t1", 1, TaskState::Failed);
        let t2 = task("t2", 2, TaskState::Failed);
        let t3 = task("t3", 3, TaskState::Failed);
        assert!(should_restart(&p, &t1, &[&t1], 10));
        assert!(should_restart(&p, &t2, &[&t1, &t2], 10));
        assert!(!should_restart(&p, &t3, &[&t1, &t2, &t3], 10), "1 + 2 restarts, then no more");
        assert!(finished_for_good(
            &p,
            &[&t1, &t2, &Task { desired_state: TaskState::Shutdown, ..t3.clone() }],
            10
        ));
    }

    #[test]
    fn window_forgets_old_attempts() {
        let p = policy(RestartCondition::Any, 1, 100);
        let old = task("old", 1, TaskState::Failed);
        let new = task("new", 500, TaskState::Failed);
        assert!(should_restart(&p, &new, &[&old, &new], 550), "the old stop is outside the window");
        assert!(!should_restart(&p, &new, &[&old, &new], 50));
    }
}
