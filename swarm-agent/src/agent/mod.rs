//! The node side of the swarm: what runs on every node whatever its role —
//! the network attachment of local endpoints (overlay).

pub mod images;
pub mod overlay;
