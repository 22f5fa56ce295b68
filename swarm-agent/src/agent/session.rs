//! The node's session with the dispatcher: task statuses go up (batched:
//! everything that changed since the last call, the latest status of each
//! task), assignments come down by long poll. Both survive leader changes:
//! a failed call is retried, through whichever manager answers.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use crate::{
    agent::{
        exec::{self, shim::read_lines},
        worker::Worker,
    },
    error::ApiError,
    manager::logs::{LogMsg, LogWork, PublishRequest, WorkRequest, WorkResponse},
    manager::store::task::TaskStatus,
    rpc::messages::{SessionRequest, SessionResponse},
};

/// The call to the dispatcher (through any manager).
pub trait Dispatcher: Send + Sync + 'static {
    fn call(&self, req: SessionRequest) -> BoxFuture<'_, Result<SessionResponse, ApiError>>;
    fn log_work(&self, req: WorkRequest) -> BoxFuture<'_, Result<WorkResponse, ApiError>>;
    fn names(
        &self,
        req: crate::rpc::messages::NamesRequest,
    ) -> BoxFuture<'_, Result<crate::rpc::messages::NamesResponse, ApiError>>;
    fn log_publish(&self, req: PublishRequest) -> BoxFuture<'_, Result<(), ApiError>>;
}

/// How long the leader may hold an assignment poll.
const POLL_WAIT: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Pulls assignments and hands them to the worker, forever.
pub async fn assignments(d: Arc<dyn Dispatcher>, worker: Arc<Worker>) {
    let mut known = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let req = SessionRequest { statuses: Vec::new(), known, wait_ms: POLL_WAIT.as_millis() as u64 };
        match d.call(req).await {
            Ok(resp) => {
                backoff = Duration::from_millis(50);
                if let Some(a) = resp.assignments {
                    worker.assign(&a);
                }
                known = Some(resp.fingerprint);
            }
            Err(e) => {
                tracing::debug!("assignments: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Pulls the names this node's tasks resolve into the worker's resolver, forever.
pub async fn names(d: Arc<dyn Dispatcher>, worker: Arc<Worker>) {
    let mut known = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let req = crate::rpc::messages::NamesRequest { known, wait_ms: POLL_WAIT.as_millis() as u64 };
        match d.names(req).await {
            Ok(resp) => {
                backoff = Duration::from_millis(50);
                if let Some(v) = resp.view {
                    worker.balance(&v.lb);
                    worker.resolver().set(v);
                }
                known = Some(resp.fingerprint);
            }
            Err(e) => {
                tracing::debug!("names: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sends status updates as they come, coalescing what piles up meanwhile.
pub async fn statuses(d: Arc<dyn Dispatcher>, worker: Arc<Worker>) {
    let mut rx = worker.reports.lock().await;
    let mut pending: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((id, st)) => {
                    pending.insert(id, st);
                }
                None => return,
            }
        }
        while let Ok((id, st)) = rx.try_recv() {
            pending.insert(id, st);
        }
        let batch: Vec<(String, TaskStatus)> = pending.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match d.call(SessionRequest { statuses: batch.clone(), known: None, wait_ms: 0 }).await {
            Ok(_) => {
                backoff = Duration::from_millis(50);
                for (id, st) in batch {
                    if pending.get(&id) == Some(&st) {
                        pending.remove(&id);
                    }
                }
            }
            Err(e) => {
                tracing::debug!("reporting task status: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Serves the leader's log subscriptions for this node's tasks, forever.
pub async fn logs(d: Arc<dyn Dispatcher>, worker: Arc<Worker>) {
    let mut running: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut backoff = Duration::from_millis(50);
    loop {
        match d.log_work(WorkRequest { wait_ms: POLL_WAIT.as_millis() as u64 }).await {
            Ok(resp) => {
                backoff = Duration::from_millis(50);
                let listed: std::collections::BTreeSet<String> =
                    resp.subs.iter().map(|s| s.sub_id.clone()).collect();
                running.retain(|id, h| {
                    let keep = listed.contains(id) || !h.is_finished();
                    if !listed.contains(id) {
                        h.abort();
                    }
                    keep && listed.contains(id)
                });
                for sub in resp.subs {
                    if !running.contains_key(&sub.sub_id) {
                        let (d, w) = (d.clone(), worker.clone());
                        let id = sub.sub_id.clone();
                        running.insert(id, tokio::spawn(async move { publish(d, w, sub).await }));
                    }
                }
            }
            Err(e) => {
                tracing::debug!("log subscriptions: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Most lines per publish call.
const LOG_BATCH: usize = 1000;

async fn publish(d: Arc<dyn Dispatcher>, worker: Arc<Worker>, sub: LogWork) {
    let exec = worker.executor().clone();
    let mut offsets: BTreeMap<String, u64> = BTreeMap::new();
    let mut first = true;
    loop {
        let mut lines = Vec::new();
        for task in &sub.tasks {
            let cid = exec::container_id(task);
            let service_id = exec.inspect(&cid).map(|c| c.config.service_id).unwrap_or_default();
            let offset = offsets.entry(task.clone()).or_insert(0);
            let (new, end) = read_lines(&exec.log_path(&cid), *offset);
            *offset = end;
            let skip = match (first, sub.tail) {
                (true, Some(n)) => new.len().saturating_sub(n),
                _ => 0,
            };
            lines.extend(new.into_iter().skip(skip).map(|l| LogMsg {
                task_id: task.clone(),
                node_id: String::new(),
                service_id: service_id.clone(),
                stream: l.stream,
                time: l.time,
                log: l.log,
            }));
        }
        first = false;
        lines.sort_by(|a, b| a.time.cmp(&b.time));
        let mut chunks: Vec<Vec<LogMsg>> = lines.chunks(LOG_BATCH).map(<[LogMsg]>::to_vec).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            if chunk.is_empty() && sub.follow {
                continue;
            }
            let done = !sub.follow && i + 1 == n;
            if d.log_publish(PublishRequest { sub_id: sub.sub_id.clone(), lines: chunk, done }).await.is_err()
            {
                return;
            }
        }
        if !sub.follow {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
