//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::time::{Duration, Instant};

/// Calls `check` until it returns `Ok`, or until `timeout` has passed; then
/// returns the last error. `what` names the condition for the message.
pub fn until<T, E: std::fmt::Display>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("timed out after {timeout:?} waiting for {what}: {e}"));
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// Checks that `check` keeps returning `Ok` for the whole of `window`
/// (observing a steady state, e.g. a node that must stay up).
pub fn holds<E: std::fmt::Display>(
    what: &str,
    window: Duration,
    mut check: impl FnMut() -> Result<(), E>,
) -> Result<(), String> {
    let end = Instant::now() + window;
    loop {
        check().map_err(|e| format!("{what} stopped holding: {e}"))?;
        if Instant::now() >= end {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
