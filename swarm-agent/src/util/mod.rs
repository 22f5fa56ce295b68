//! Small helpers shared across the agent: swarm IDs, addresses.

pub mod addr;
pub mod ids;
pub mod reference;
