//! Small helpers shared across the agent: swarm IDs, addresses, mount checks.

pub mod addr;
pub mod fs;
pub mod ids;
pub mod reference;
