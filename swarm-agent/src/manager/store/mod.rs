//! The replicated store: object model and state machine.

pub mod endpoint;
pub mod index;
pub mod ipam;
pub mod limits;
pub mod model;
pub mod secret;
pub mod state;
pub mod task;
