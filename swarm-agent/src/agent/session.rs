//! The node's session with the dispatcher: task statuses go up (batched:
//! everything that changed since the last call, the latest status of each
//! task), assignments come down by long poll. Both survive leader changes:
//! a failed call is retried, through whichever manager answers.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use crate::{
    agent::worker::Worker,
    error::ApiError,
    manager::store::task::TaskStatus,
    rpc::messages::{SessionRequest, SessionResponse},
};

/// The call to the dispatcher (through any manager).
pub trait Dispatcher: Send + Sync + 'static {
    fn call(&self, req: SessionRequest) -> BoxFuture<'_, Result<SessionResponse, ApiError>>;
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
