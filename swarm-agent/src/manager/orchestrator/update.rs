//! The updater (swarmkit `orchestrator/update`): after `service update`
//! changed what a service's tasks run, its slots (nodes, for global
//! services) are replaced at the pace of its `UpdateConfig` — `Parallelism`
//! at a time, `Delay` after each, stop-first or start-first — while the new
//! tasks are watched for `Monitor`: a new task that fails or ends within it
//! counts, and once the failures exceed `MaxFailureRatio` of the slots the
//! `FailureAction` pauses the update, rolls it back, or carries on. A
//! rollback runs the same way with `RollbackConfig`.
//!
//! swarmkit keeps an updater per service in memory (its workers, timers and
//! counts); here everything it needs is in the store (`UpdateStatus`, each
//! task's creation, first RUNNING and last state), so a new leader carries
//! on where the old one stopped and the logic is a pure function.

use std::collections::BTreeMap;

use bollard_stubs::models as m;

use crate::manager::{
    orchestrator::Working,
    store::{
        model::Nanos,
        task::{Mode, Service, Task, TaskState, UpdateState, UpdateStatus},
    },
};

/// Docker's default `Monitor`: 5 s.
pub const DEFAULT_MONITOR: Nanos = 5_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    Pause,
    Continue,
    Rollback,
}

/// An `UpdateConfig` (or `RollbackConfig`) with docker's defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// 0 = every slot at once.
    pub parallelism: u64,
    pub delay: Nanos,
    pub monitor: Nanos,
    pub failure_action: FailureAction,
    pub max_failure_ratio: f64,
    pub start_first: bool,
}

impl Pace {
    pub fn of(spec: &m::ServiceSpec, rollback: bool) -> Pace {
        use m::{
            ServiceSpecRollbackConfigFailureActionEnum as RF, ServiceSpecRollbackConfigOrderEnum as RO,
            ServiceSpecUpdateConfigFailureActionEnum as UF, ServiceSpecUpdateConfigOrderEnum as UO,
        };
        let (parallelism, delay, monitor, ratio, action, start_first) = if rollback {
            let c = spec.rollback_config.clone().unwrap_or_default();
            let action = match c.failure_action {
                Some(RF::CONTINUE) => FailureAction::Continue,
                _ => FailureAction::Pause,
            };
            (c.parallelism, c.delay, c.monitor, c.max_failure_ratio, action, c.order == Some(RO::START_FIRST))
        } else {
            let c = spec.update_config.clone().unwrap_or_default();
            let action = match c.failure_action {
                Some(UF::CONTINUE) => FailureAction::Continue,
                Some(UF::ROLLBACK) => FailureAction::Rollback,
                _ => FailureAction::Pause,
            };
            (c.parallelism, c.delay, c.monitor, c.max_failure_ratio, action, c.order == Some(UO::START_FIRST))
        };
        Pace {
            parallelism: parallelism.and_then(|p| u64::try_from(p).ok()).unwrap_or(1),
            delay: delay.unwrap_or(0).max(0),
            monitor: monitor.filter(|m| *m > 0).unwrap_or(DEFAULT_MONITOR),
            failure_action: action,
            max_failure_ratio: ratio.unwrap_or(0.0),
            start_first,
        }
    }
}

/// Does `t` run something other than what its service now asks for
/// (swarmkit's `IsTaskDirty`)? Placement alone does not count: a task
/// that still meets new constraints stays (the orchestrators move those
/// that do not).
pub fn is_dirty(svc: &Service, t: &Task) -> bool {
    let Some(want) = svc.spec.task_template.as_ref() else {
        return t.spec != m::TaskSpec::default();
    };
    let placement_only = |a: &m::TaskSpec, b: &m::TaskSpec| {
        m::TaskSpec { placement: None, ..a.clone() } == m::TaskSpec { placement: None, ..b.clone() }
    };
    t.spec != *want && !placement_only(&t.spec, want)
}

/// When a task stopped being in flight: its first RUNNING, or when it
/// ended if it never ran.
fn settled_at(t: &Task) -> Option<Nanos> {
    t.running_at.or_else(|| t.status.state.is_terminal().then_some(t.status.timestamp))
}

/// Did `t`, one of the update's new tasks, fail (or end) within `monitor`
/// of starting?
fn failed_in_monitor(t: &Task, monitor: Nanos) -> bool {
    matches!(t.status.state, TaskState::Failed | TaskState::Rejected | TaskState::Complete)
        && t.running_at.is_none_or(|r| t.status.timestamp.saturating_sub(r) <= monitor)
}

fn status(state: UpdateState, started_at: Nanos, completed_at: Nanos, message: String) -> UpdateStatus {
    UpdateStatus { state, started_at, completed_at, message }
}

/// One round of the updater for `svc`.
#[allow(clippy::too_many_lines)]
pub fn reconcile(w: &mut Working<'_>, svc: &Service) {
    let current = svc.update_status.as_ref();
    if current.is_some_and(|s| matches!(s.state, UpdateState::Paused | UpdateState::RollbackPaused)) {
        // A paused update resumes only with the next `service update`.
        return;
    }
    let rolling_back = current.is_some_and(|s| s.state == UpdateState::RollbackStarted);
    let pace = Pace::of(&svc.spec, rolling_back);
    let global = matches!(svc.mode(), Mode::Global);

    // Every task of the service by slot (by node for global services).
    let mut slots: BTreeMap<(u64, String), Vec<Task>> = BTreeMap::new();
    for t in w.tasks_of(&svc.id) {
        if global && t.node_id.is_empty() {
            continue;
        }
        let key = if global { (0, t.node_id.clone()) } else { (t.slot, String::new()) };
        slots.entry(key).or_default().push(t.clone());
    }
    slots.retain(|_, tasks| tasks.iter().any(Task::is_runnable));
    // Slots still running the old spec, with nothing new in them yet.
    let dirty: Vec<(u64, String)> = slots
        .iter()
        .filter(|(_, ts)| {
            let runnable = || ts.iter().filter(|t| t.is_runnable());
            runnable().any(|t| is_dirty(svc, t)) && !runnable().any(|t| !is_dirty(svc, t))
        })
        .map(|(k, _)| k.clone())
        .collect();

    let mut started_at = match current {
        Some(s) if matches!(s.state, UpdateState::Updating | UpdateState::RollbackStarted) => s.started_at,
        _ => {
            if dirty.is_empty() {
                return;
            }
            w.set_update_status(
                &svc.id,
                status(UpdateState::Updating, w.now, 0, "update in progress".into()),
            );
            w.now
        }
    };
    if started_at > w.now {
        started_at = w.now;
    }

    // The update's own tasks: made from the current spec since it began.
    let new_tasks = |ts: &[Task]| -> Vec<Task> {
        ts.iter().filter(|t| t.meta.created_at >= started_at && !is_dirty(svc, t)).cloned().collect()
    };

    // Failures.
    let mut failed: Vec<&Task> = slots
        .values()
        .flatten()
        .filter(|t| {
            t.meta.created_at >= started_at && !is_dirty(svc, t) && failed_in_monitor(t, pace.monitor)
        })
        .collect();
    failed.sort_by_key(|t| (t.status.timestamp, t.id.clone()));
    if let Some(first) = failed.first() {
        let ratio = failed.len() as f64 / slots.len().max(1) as f64;
        if ratio > pace.max_failure_ratio {
            let task = &first.id;
            match (pace.failure_action, rolling_back) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Pause, false) => {
                    let msg = format!("update paused due to failure or early termination of task {task}");
                    w.set_update_status(&svc.id, status(UpdateState::Paused, started_at, 0, msg));
                    return;
                }
                (FailureAction::Pause | FailureAction::Rollback, true) => {
                    let msg = format!("rollback paused due to failure or early termination of task {task}");
                    w.set_update_status(&svc.id, status(UpdateState::RollbackPaused, started_at, 0, msg));
                    return;
                }
                (FailureAction::Rollback, false) => {
                    if svc.previous_spec.is_some() {
                        let msg =
                            format!("update rolled back due to failure or early termination of task {task}");
                        w.roll_back(&svc.id, status(UpdateState::RollbackStarted, w.now, 0, msg));
                    } else {
                        let msg = format!("update paused due to failure or early termination of task {task}");
                        w.set_update_status(&svc.id, status(UpdateState::Paused, started_at, 0, msg));
                    }
                    return;
                }
            }
        }
    }

    // start-first: a slot's old task stops once its replacement runs.
    for ts in slots.values() {
        if ts.iter().any(|t| t.is_runnable() && !is_dirty(svc, t) && t.status.state == TaskState::Running) {
            for old in ts.iter().filter(|t| t.is_runnable() && is_dirty(svc, t)) {
                w.set_desired(old, TaskState::Shutdown);
            }
        }
    }

    // Pace: a slot is in flight from its replacement's creation until it
    // first runs (or fails), plus `Delay`.
    let mut busy = 0usize;
    let mut last_settled: Option<Nanos> = None;
    let mut unsettled = false;
    for ts in slots.values() {
        let news = new_tasks(ts);
        if news.is_empty() {
            continue;
        }
        let settled = news.iter().filter_map(settled_at).min();
        match settled {
            None => {
                busy += 1;
                unsettled = true;
            }
            Some(at) => {
                last_settled = Some(last_settled.map_or(at, |l: Nanos| l.max(at)));
                let free_at = at.saturating_add(pace.delay);
                if w.now < free_at {
                    busy += 1;
                    w.wake(free_at);
                }
            }
        }
    }
    let free = if pace.parallelism == 0 {
        usize::MAX
    } else {
        usize::try_from(pace.parallelism).unwrap_or(usize::MAX).saturating_sub(busy)
    };
    let starting = dirty.len().min(free);
    for (slot, node) in dirty.iter().take(free) {
        let Some(ts) = slots.get(&(*slot, node.clone())) else { continue };
        if pace.start_first {
            w.create_task(svc, *slot, node, TaskState::Running);
        } else {
            for old in ts.iter().filter(|t| t.is_runnable()) {
                w.set_desired(old, TaskState::Shutdown);
            }
            let mut t = w.create_task(svc, *slot, node, TaskState::Ready);
            t.start_at = Some(w.now);
            w.put(t);
        }
    }

    // Done once every slot is new and the last new task has been watched
    // for `Monitor`.
    if dirty.len() == starting && starting == 0 && !unsettled {
        let done_at = last_settled.map_or(w.now, |l| l.saturating_add(pace.monitor));
        if w.now >= done_at {
            let (state, msg) = if rolling_back {
                (UpdateState::RollbackCompleted, "rollback completed")
            } else {
                (UpdateState::Completed, "update completed")
            };
            w.set_update_status(&svc.id, status(state, started_at, w.now, msg.into()));
        } else {
            w.wake(done_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::{
        orchestrator::testutil::*,
        store::{
            state::{ClusterState, Command},
            task::TaskStatus,
        },
    };

    const S: Nanos = 1_000_000_000;

    fn cluster3() -> ClusterState {
        let mut s = cluster();
        for n in ["n1", "n2", "n3"] {
            add_node(&mut s, n);
        }
        s
    }

    fn image(s: &ClusterState, id: &str) -> Vec<String> {
        let mut v: Vec<String> = s
            .tasks
            .values()
            .filter(|t| t.service_id == id && t.is_runnable())
            .map(|t| crate::manager::store::task::image_of(&t.spec).to_owned())
            .collect();
        v.sort();
        v
    }

    fn update(s: &mut ClusterState, id: &str, f: impl FnOnce(&mut m::ServiceSpec), now: Nanos) {
        let svc = &s.services[id];
        let mut spec = svc.spec.clone();
        f(&mut spec);
        let version = svc.meta.version;
        s.apply(
            version + 1,
            &Command::UpdateService { id: id.into(), version, spec: Box::new(spec), now, networks: None },
        )
        .unwrap();
    }

    fn set_image(spec: &mut m::ServiceSpec, img: &str) {
        spec.task_template.as_mut().unwrap().container_spec.as_mut().unwrap().image = Some(img.into());
    }

    fn fail_new(s: &mut ClusterState, img: &str, now: Nanos) {
        let updates: Vec<(String, TaskStatus)> = s
            .tasks
            .values()
            .filter(|t| {
                crate::manager::store::task::image_of(&t.spec) == img && !t.status.state.is_terminal()
            })
            .filter(|t| t.status.state >= TaskState::Assigned)
            .map(|t| {
                let st = TaskStatus { state: TaskState::Failed, timestamp: now, ..Default::default() };
                (t.id.clone(), st)
            })
            .collect();
        s.apply(600, &Command::SetTaskStatus { updates, now }).unwrap();
    }

    /// Plans, applies and lets agents act, a few times at `now`.
    fn step(s: &mut ClusterState, now: Nanos, next: &mut u64) {
        for _ in 0..12 {
            converge(s, now, next);
            agents_run(s, now);
        }
    }

    fn state(s: &ClusterState, id: &str) -> Option<UpdateState> {
        s.services[id].update_status.as_ref().map(|u| u.state)
    }

    #[test]
    fn rolls_one_slot_at_a_time_then_completes_after_monitor() {
        let mut s = cluster3();
        add_service(&mut s, "svc", spec("web", Some(3)));
        let mut next = 0;
        step(&mut s, S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox"; 3]);
        update(&mut s, "svc", |sp| set_image(sp, "busybox:2"), 2 * S);
        // One round: one slot replaced (stop-first), the others untouched.
        converge(&mut s, 2 * S, &mut next);
        assert_eq!(state(&s, "svc"), Some(UpdateState::Updating));
        let live: Vec<&Task> = s.tasks.values().filter(|t| t.is_runnable()).collect();
        assert_eq!(live.len(), 3, "stop-first: the old task of the slot is shut down");
        let new: Vec<&&Task> = live.iter().filter(|t| is_dirty(&s.services["svc"], t)).collect();
        assert_eq!(new.len(), 2, "two old tasks still run");
        let ready: Vec<&&Task> = live.iter().filter(|t| t.desired_state == TaskState::Ready).collect();
        assert_eq!(ready.len(), 1, "the new one waits for the old one to stop");
        step(&mut s, 2 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox:2"; 3]);
        // Completed only `Monitor` after the last task ran.
        assert_eq!(state(&s, "svc"), Some(UpdateState::Updating));
        step(&mut s, 7 * S + 1, &mut next);
        assert_eq!(state(&s, "svc"), Some(UpdateState::Completed));
        assert_eq!(s.services["svc"].update_status.as_ref().unwrap().message, "update completed");
    }

    #[test]
    fn scaling_is_not_an_update() {
        let mut s = cluster3();
        add_service(&mut s, "svc", spec("web", Some(2)));
        let mut next = 0;
        step(&mut s, S, &mut next);
        let before: Vec<String> = s.tasks.keys().cloned().collect();
        update(
            &mut s,
            "svc",
            |sp| sp.mode.as_mut().unwrap().replicated.as_mut().unwrap().replicas = Some(3),
            2 * S,
        );
        step(&mut s, 2 * S, &mut next);
        assert_eq!(state(&s, "svc"), None);
        assert!(before.iter().all(|id| s.tasks[id].is_runnable()), "old tasks kept");
    }

    #[test]
    fn delay_spaces_the_slots() {
        let mut s = cluster3();
        let mut sp = spec("web", Some(3));
        sp.update_config = Some(m::ServiceSpecUpdateConfig {
            parallelism: Some(1),
            delay: Some(10 * S),
            ..Default::default()
        });
        add_service(&mut s, "svc", sp);
        let mut next = 0;
        step(&mut s, S, &mut next);
        update(&mut s, "svc", |sp| set_image(sp, "busybox:2"), 2 * S);
        step(&mut s, 2 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox", "busybox", "busybox:2"]);
        step(&mut s, 11 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox", "busybox", "busybox:2"], "delay not over");
        step(&mut s, 12 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox", "busybox:2", "busybox:2"]);
    }

    #[test]
    fn parallelism_zero_replaces_all_and_start_first_keeps_old_until_new_runs() {
        let mut s = cluster3();
        let mut sp = spec("web", Some(3));
        sp.update_config = Some(m::ServiceSpecUpdateConfig {
            parallelism: Some(0),
            order: Some(m::ServiceSpecUpdateConfigOrderEnum::START_FIRST),
            ..Default::default()
        });
        add_service(&mut s, "svc", sp);
        let mut next = 0;
        step(&mut s, S, &mut next);
        update(&mut s, "svc", |sp| set_image(sp, "busybox:2"), 2 * S);
        converge(&mut s, 2 * S, &mut next);
        let live = s.tasks.values().filter(|t| t.is_runnable()).count();
        assert_eq!(live, 6, "start-first: old and new side by side");
        step(&mut s, 2 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox:2"; 3]);
    }

    #[test]
    fn a_failing_update_pauses_or_rolls_back() {
        for (action, want) in [
            (m::ServiceSpecUpdateConfigFailureActionEnum::PAUSE, UpdateState::Paused),
            (m::ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK, UpdateState::RollbackCompleted),
            (m::ServiceSpecUpdateConfigFailureActionEnum::CONTINUE, UpdateState::Updating),
        ] {
            let mut s = cluster3();
            let mut sp = spec("web", Some(3));
            sp.update_config =
                Some(m::ServiceSpecUpdateConfig { failure_action: Some(action), ..Default::default() });
            add_service(&mut s, "svc", sp);
            let mut next = 0;
            step(&mut s, S, &mut next);
            update(&mut s, "svc", |sp| set_image(sp, "bad"), 2 * S);
            step(&mut s, 2 * S, &mut next);
            fail_new(&mut s, "bad", 3 * S);
            step(&mut s, 3 * S, &mut next);
            let u = s.services["svc"].update_status.clone().unwrap();
            match want {
                UpdateState::Paused => {
                    assert_eq!(u.state, UpdateState::Paused);
                    assert!(
                        u.message.starts_with("update paused due to failure or early termination of task ")
                    );
                    // Stays paused.
                    step(&mut s, 30 * S, &mut next);
                    assert_eq!(state(&s, "svc"), Some(UpdateState::Paused));
                }
                UpdateState::RollbackCompleted => {
                    assert_eq!(u.state, UpdateState::RollbackStarted, "{u:?}");
                    assert!(u.message.starts_with("update rolled back due to failure or early termination"));
                    assert!(s.services["svc"].previous_spec.is_none());
                    step(&mut s, 4 * S, &mut next);
                    step(&mut s, 10 * S, &mut next);
                    assert_eq!(state(&s, "svc"), Some(UpdateState::RollbackCompleted));
                    assert_eq!(image(&s, "svc"), ["busybox"; 3]);
                }
                _ => assert_eq!(u.state, UpdateState::Updating),
            }
        }
    }

    #[test]
    fn manual_rollback_restores_the_previous_spec() {
        let mut s = cluster3();
        add_service(&mut s, "svc", spec("web", Some(2)));
        let mut next = 0;
        step(&mut s, S, &mut next);
        let v = s.services["svc"].meta.version;
        assert!(s.apply(v + 1, &Command::RollbackService { id: "svc".into(), version: v, now: S }).is_err());
        update(&mut s, "svc", |sp| set_image(sp, "busybox:2"), 2 * S);
        step(&mut s, 2 * S, &mut next);
        step(&mut s, 8 * S, &mut next);
        assert_eq!(state(&s, "svc"), Some(UpdateState::Completed));
        let v = s.services["svc"].meta.version;
        s.apply(v + 1, &Command::RollbackService { id: "svc".into(), version: v, now: 9 * S }).unwrap();
        let u = s.services["svc"].update_status.clone().unwrap();
        assert_eq!(
            (u.state, u.message.as_str()),
            (UpdateState::RollbackStarted, "manually requested rollback")
        );
        step(&mut s, 9 * S, &mut next);
        step(&mut s, 15 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox"; 2]);
        assert_eq!(state(&s, "svc"), Some(UpdateState::RollbackCompleted));
        let prev = s.services["svc"].previous_spec.as_ref().unwrap();
        assert_eq!(crate::manager::store::task::image_of(prev.task_template.as_ref().unwrap()), "busybox:2");
    }

    #[test]
    fn a_new_update_interrupts_a_running_one() {
        let mut s = cluster3();
        let mut sp = spec("web", Some(3));
        sp.update_config = Some(m::ServiceSpecUpdateConfig { delay: Some(100 * S), ..Default::default() });
        add_service(&mut s, "svc", sp);
        let mut next = 0;
        step(&mut s, S, &mut next);
        update(&mut s, "svc", |sp| set_image(sp, "busybox:2"), 2 * S);
        step(&mut s, 2 * S, &mut next);
        assert_eq!(image(&s, "svc"), ["busybox", "busybox", "busybox:2"]);
        update(&mut s, "svc", |sp| set_image(sp, "busybox:3"), 3 * S);
        step(&mut s, 3 * S, &mut next);
        assert_eq!(image(&s, "svc").iter().filter(|i| *i == "busybox:3").count(), 1);
        assert_eq!(state(&s, "svc"), Some(UpdateState::Updating));
    }

    #[test]
    fn force_update_and_placement() {
        let svc_of = |sp: m::ServiceSpec| Service {
            id: "s".into(),
            meta: crate::manager::store::model::Meta::default(),
            spec: sp,
            previous_spec: None,
            update_status: None,
            networks: vec![],
            endpoint: crate::manager::store::endpoint::ServiceEndpoint::default(),
        };
        let base = spec("web", Some(1));
        let mut s = cluster3();
        add_service(&mut s, "svc", base.clone());
        let mut next = 0;
        step(&mut s, S, &mut next);
        let t = s.tasks.values().next().unwrap().clone();
        let mut forced = base.clone();
        forced.task_template.as_mut().unwrap().force_update = Some(1);
        assert!(is_dirty(&svc_of(forced), &t));
        let mut placed = base;
        placed.task_template.as_mut().unwrap().placement = Some(m::TaskSpecPlacement {
            constraints: Some(vec!["node.role==worker".into()]),
            ..Default::default()
        });
        assert!(!is_dirty(&svc_of(placed), &t), "placement alone is not dirty");
    }
}
