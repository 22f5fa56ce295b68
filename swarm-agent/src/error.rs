//! Errors that cross process boundaries: from the store and the managers,
//! over node-to-node RPC, to the Docker API and the CLI. The message is what
//! the user reads, in Docker's words where Docker has them.

use serde::{Deserialize, Serialize};

/// What kind of failure; decides the HTTP status on the Docker API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    Conflict,
    FailedPrecondition,
    /// Not in a swarm, not a manager, no leader: retry elsewhere or later.
    Unavailable,
    PermissionDenied,
    Internal,
}

impl ErrorKind {
    /// The HTTP status the Docker API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidArgument | ErrorKind::FailedPrecondition => 400,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// An error with its kind and the user-facing message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }
    pub fn invalid(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::InvalidArgument, m)
    }
    pub fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, m)
    }
    pub fn precondition(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::FailedPrecondition, m)
    }
    pub fn unavailable(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, m)
    }
    pub fn denied(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::PermissionDenied, m)
    }
    pub fn internal(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, m)
    }
    pub fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, m)
    }

    pub fn no_leader() -> ApiError {
        ApiError::unavailable(NO_LEADER)
    }

    /// The same error with what was being done in front (for internal
    /// errors; users' errors keep Docker's exact text).
    #[must_use]
    pub fn context(self, what: &str) -> ApiError {
        if self.kind == ErrorKind::Internal {
            ApiError { kind: self.kind, message: format!("{what}: {}", self.message) }
        } else {
            self
        }
    }

    /// A write that was handed to Raft (or to the leader) whose fate is not
    /// known: the leader was lost before it answered.
    pub fn unknown_outcome() -> ApiError {
        ApiError::unavailable(UNKNOWN_OUTCOME)
    }
}

/// Docker's texts (moby daemon/cluster/errors.go, swarmkit).
pub const NOT_A_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
pub const INACTIVE: &str = "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";
pub const NOT_IN_SWARM: &str = "This node is not part of a swarm";
pub const ALREADY_IN_SWARM: &str = "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.";
pub const NO_LEADER: &str = "The swarm does not have a leader. It's possible that too few managers are online. Make sure more than half of the managers are online.";
pub const UNKNOWN_OUTCOME: &str = "The swarm lost its leader before the request was confirmed: the request may or may not have been applied. Check the swarm's state before retrying.";
pub const INVALID_JOIN_SECRET: &str = "A valid join token is necessary to join this cluster";
pub const PENDING: &str = "This node is joining a swarm; try again when it has joined.";

/// An error with its causes, `a: b: c`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
