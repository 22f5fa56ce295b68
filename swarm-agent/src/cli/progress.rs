//! docker's service convergence progress (`overall progress: …`, one bar
//! per slot or node, `verify: …`), as a pure tracker fed with snapshots of
//! the service and its up-to-date tasks, and the loop that draws it.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{
    client::{CliError, Client},
    node::filters_query,
};

/// The numbered task states of docker's progress bars.
fn state_number(s: &str) -> u32 {
    match s {
        "new" => 1,
        "allocated" => 2,
        "pending" => 3,
        "assigned" => 4,
        "accepted" => 5,
        "preparing" => 6,
        "ready" => 7,
        "starting" => 8,
        "running" => 9,
        _ => 0,
    }
}

/// One frame of bars: the lines to show, and whether every slot runs.
pub fn progress_lines(
    service: &Value,
    tasks: &[Value],
    nodes: &[String],
    rollback: bool,
) -> (Vec<String>, bool) {
    let global = service["Spec"]["Mode"]["Global"].is_object();
    let replicas = service["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64().unwrap_or(0);
    let live: Vec<&Value> =
        tasks.iter().filter(|t| t["DesiredState"] == "running" || t["DesiredState"] == "ready").collect();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let keys: Vec<String> =
        if global { nodes.to_vec() } else { (1..=replicas).map(|s| s.to_string()).collect() };
    let total = keys.len();
    let mut running = 0;
    for (i, key) in keys.iter().enumerate() {
        let t = live.iter().find(|t| {
            if global {
                t["NodeID"].as_str() == Some(key.as_str())
            } else {
                t["Slot"].as_u64().map(|s| s.to_string()).as_deref() == Some(key.as_str())
            }
        });
        let label = if global { key[..key.len().min(12)].to_owned() } else { format!("{}/{total}", i + 1) };
        let (state, err) = t.map_or((String::new(), String::new()), |t| {
            (
                t["Status"]["State"].as_str().unwrap_or("").to_owned(),
                t["Status"]["Err"].as_str().unwrap_or("").to_owned(),
            )
        });
        if state == "running" {
            running += 1;
        }
        rows.push((label, state, err));
    }
    let what = if rollback { "rolling back update: " } else { "" };
    let mut lines = vec![format!("overall progress: {what}{running} out of {total} tasks")];
    if total <= 20 {
        for (label, state, err) in rows {
            if !err.is_empty() {
                let err = err.replace('\n', " ");
                let err = if err.len() > 75 {
                    format!("{}…", err.chars().take(74).collect::<String>())
                } else {
                    err
                };
                lines.push(format!("{label}: {err}"));
            } else if state.is_empty() {
                lines.push(format!("{label}:   "));
            } else {
                let n = state_number(&state) as usize;
                let filled = (n * 100 / 9) / 2;
                lines.push(format!(
                    "{label}: {state:<9} [{}>{}] ",
                    "=".repeat(filled),
                    " ".repeat(50 - filled.min(50))
                ));
            }
        }
    }
    (lines, running == total)
}

/// Where the wait stands after a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Waiting,
    Converged,
    Failed(String),
}

/// docker's `ServiceProgress` state: convergence must hold for the
/// service's update monitor (5 s by default) before it counts, and the
/// update status ends the wait early on a pause or a rollback.
#[derive(Debug, Default)]
pub struct Tracker {
    converged_at: Option<Duration>,
    rollback: bool,
    /// `rollback: …` shown at the top once a rollback is seen.
    banner: Option<String>,
    /// Printed after `verify`, for a rollback that finished.
    message: Option<String>,
}

impl Tracker {
    /// One snapshot at `now` (time since the wait began).
    pub fn step(
        &mut self,
        service: &Value,
        tasks: &[Value],
        nodes: &[String],
        now: Duration,
    ) -> (Vec<String>, Outcome) {
        let monitor = service["Spec"]["UpdateConfig"]["Monitor"]
            .as_u64()
            .filter(|m| *m > 0)
            .map_or(Duration::from_secs(5), Duration::from_nanos);
        let id = service["ID"].as_str().unwrap_or("");
        let status = &service["UpdateStatus"];
        let message = status["Message"].as_str().unwrap_or("").to_owned();
        let converged = self.converged_at.is_some();
        match status["State"].as_str().unwrap_or("") {
            "updating" => self.rollback = false,
            "completed" if !converged => return (Vec::new(), Outcome::Converged),
            "paused" => return (Vec::new(), Outcome::Failed(format!("service update paused: {message}"))),
            "rollback_started" => {
                if !self.rollback && !message.is_empty() {
                    self.banner = Some(format!("rollback: {message}"));
                }
                self.rollback = true;
            }
            "rollback_paused" => {
                return (Vec::new(), Outcome::Failed(format!("service rollback paused: {message}")));
            }
            "rollback_completed" => {
                if !converged {
                    self.message = Some(format!("rollback: {message}"));
                }
                self.rollback = true;
            }
            _ => {}
        }
        let (bars, all_running) = progress_lines(service, tasks, nodes, self.rollback);
        let mut lines: Vec<String> = self.banner.iter().cloned().collect();
        lines.extend(bars);
        if let Some(at) = self.converged_at
            && all_running
            && now.saturating_sub(at) >= monitor
        {
            lines.push(format!("verify: Service {id} converged"));
            lines.extend(self.message.iter().cloned());
            return (lines, Outcome::Converged);
        }
        if all_running {
            let at = *self.converged_at.get_or_insert(now);
            let waited = now.saturating_sub(at);
            if waited < monitor {
                let wait = monitor.saturating_sub(waited).as_secs() + 1;
                lines.push(format!("verify: Waiting {wait} seconds to verify that tasks are stable..."));
            }
        } else {
            if self.converged_at.is_some() {
                lines.push("verify: Detected task failure".into());
            }
            self.converged_at = None;
        }
        (lines, Outcome::Waiting)
    }
}

async fn snapshot(client: &Client, id: &str) -> Result<(Value, Vec<Value>, Vec<String>), CliError> {
    let service: Value = client.get(&format!("/services/{id}")).await?;
    let q = filters_query(&[format!("service={id}"), "_up-to-date=true".into()])?;
    let tasks: Vec<Value> = client.get(&format!("/tasks{q}")).await?;
    let nodes = if service["Spec"]["Mode"]["Global"].is_object() {
        let mut ids: Vec<String> = tasks
            .iter()
            .filter(|t| t["DesiredState"] == "running")
            .filter_map(|t| t["NodeID"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    } else {
        Vec::new()
    };
    Ok((service, tasks, nodes))
}

/// Waits for the service to converge: redrawn in place on a terminal, the
/// final frame once otherwise, nothing with `quiet`. A paused update or
/// rollback ends it with docker's error.
pub async fn converge(client: &Client, id: &str, quiet: bool) -> Result<(), CliError> {
    let tty = !quiet && std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut tracker = Tracker::default();
    let mut shown = 0usize;
    loop {
        let (s, t, n) = snapshot(client, id).await?;
        let (lines, outcome) = tracker.step(&s, &t, &n, started.elapsed());
        if tty {
            if shown > 0 {
                print!("\x1b[{shown}A");
            }
            for l in &lines {
                println!("\x1b[2K{l}");
            }
            shown = lines.len();
        } else if !quiet && outcome != Outcome::Waiting {
            for l in &lines {
                println!("{l}");
            }
        }
        match outcome {
            Outcome::Waiting => tokio::time::sleep(Duration::from_millis(200)).await,
            Outcome::Converged => return Ok(()),
            Outcome::Failed(e) => return Err(CliError::Local(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn task(slot: u64, state: &str) -> Value {
        json!({"Slot": slot, "DesiredState": "running", "Status": {"State": state}})
    }

    #[test]
    fn bars_like_dockers() {
        let svc = json!({"Spec": {"Mode": {"Replicated": {"Replicas": 2}}}});
        let (lines, done) = progress_lines(&svc, &[task(1, "running"), task(2, "preparing")], &[], false);
        assert!(!done);
        assert_eq!(lines[0], "overall progress: 1 out of 2 tasks");
        assert_eq!(lines[1], format!("1/2: running   [{}>] ", "=".repeat(50)));
        assert_eq!(lines[2], format!("2/2: preparing [{}>{}] ", "=".repeat(33), " ".repeat(17)));
        let (lines, _) = progress_lines(&svc, &[], &[], true);
        assert_eq!(lines[0], "overall progress: rolling back update: 0 out of 2 tasks");
    }

    #[test]
    fn convergence_must_hold_for_the_monitor() {
        let svc = json!({"ID": "s1", "Spec": {"Mode": {"Replicated": {"Replicas": 1}},
            "UpdateConfig": {"Monitor": 2_000_000_000u64}}});
        let mut t = Tracker::default();
        let s = Duration::from_secs;
        let (l, o) = t.step(&svc, &[task(1, "running")], &[], s(0));
        assert_eq!(
            (l.last().unwrap().as_str(), o),
            ("verify: Waiting 3 seconds to verify that tasks are stable...", Outcome::Waiting)
        );
        let (l, o) = t.step(&svc, &[task(1, "starting")], &[], s(1));
        assert_eq!((l.last().unwrap().as_str(), o), ("verify: Detected task failure", Outcome::Waiting));
        t.step(&svc, &[task(1, "running")], &[], s(2));
        let (_, o) = t.step(&svc, &[task(1, "running")], &[], s(3));
        assert_eq!(o, Outcome::Waiting, "the clock restarted at the failure");
        let (l, o) = t.step(&svc, &[task(1, "running")], &[], s(4));
        assert_eq!((l.last().unwrap().as_str(), o), ("verify: Service s1 converged", Outcome::Converged));
    }

    #[test]
    fn update_status_ends_or_labels_the_wait() {
        let mut svc = json!({"ID": "s1", "Spec": {"Mode": {"Replicated": {"Replicas": 1}}},
            "UpdateStatus": {"State": "paused", "Message": "update paused due to failure or early termination of task t1"}});
        let (_, o) = Tracker::default().step(&svc, &[], &[], Duration::ZERO);
        assert_eq!(
            o,
            Outcome::Failed(
                "service update paused: update paused due to failure or early termination of task t1".into()
            )
        );
        svc["UpdateStatus"] = json!({"State": "rollback_started", "Message": "manually requested rollback"});
        let mut t = Tracker::default();
        let (l, _) = t.step(&svc, &[task(1, "starting")], &[], Duration::ZERO);
        assert_eq!(l[0], "rollback: manually requested rollback");
        assert_eq!(l[1], "overall progress: rolling back update: 0 out of 1 tasks");
        svc["UpdateStatus"] = json!({"State": "rollback_completed", "Message": "rollback completed"});
        let (_, o) = t.step(&svc, &[task(1, "running")], &[], Duration::from_secs(1));
        assert_eq!(o, Outcome::Waiting);
        let (l, o) = t.step(&svc, &[task(1, "running")], &[], Duration::from_secs(6));
        assert_eq!(o, Outcome::Converged);
        assert_eq!(&l[l.len() - 2..], ["verify: Service s1 converged", "rollback: rollback completed"]);
    }
}
