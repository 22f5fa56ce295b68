//! The node side of the swarm: what runs on every node whatever its role —
//! the network attachment of local endpoints (overlay), the session with
//! the dispatcher, the worker that runs assigned tasks, the executor and
//! the image store.

pub mod distribution;
pub mod dns;
pub mod exec;
pub mod images;
pub mod overlay;
pub mod registry;
pub mod runtime;
pub mod session;
pub mod worker;
