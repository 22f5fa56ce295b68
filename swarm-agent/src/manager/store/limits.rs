//! Size limits on what goes into the store, checked before a command is
//! proposed so an oversized request never reaches Raft. They follow Docker:
//! swarmkit refuses store transactions over 1.5 MiB, and its gRPC messages
//! over 4 MiB (see [`crate::rpc::limits`]).

use crate::error::ApiError;
use crate::manager::store::state::Command;

/// The largest command (encoded as it is stored in the Raft log).
pub const MAX_COMMAND_BYTES: usize = 3 << 19; // 1.5 MiB

/// Refuses a command whose encoding is over [`MAX_COMMAND_BYTES`]. The
/// command that re-creates a cluster from a copy of its state is exempt: it
/// is the first entry of a group of one, and a snapshot replaces it at once.
pub fn check_command_size(cmd: &Command) -> Result<(), ApiError> {
    if matches!(cmd, Command::ForceNewCluster { .. }) {
        return Ok(());
    }
    let size = serde_json::to_vec(cmd).map_err(|e| ApiError::internal(format!("encoding: {e}")))?.len();
    if size > MAX_COMMAND_BYTES {
        return Err(ApiError::invalid(format!(
            "request too large: the change is {}, the limit is {}",
            human(size),
            human(MAX_COMMAND_BYTES)
        )));
    }
    Ok(())
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_up_to_the_limit_pass_and_larger_ones_are_refused() {
        let cmd = |n: usize| Command::RemoveNetwork { id: "x".repeat(n) };
        assert!(check_command_size(&cmd(1 << 20)).is_ok(), "a 1 MiB spec is fine");
        let e = check_command_size(&cmd(2 << 20)).unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::InvalidArgument);
        assert!(
            e.message.starts_with("request too large: the change is 2.00 MiB, the limit is 1.50 MiB"),
            "{}",
            e.message
        );
    }
}
