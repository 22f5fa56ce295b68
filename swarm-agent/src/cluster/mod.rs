//! The swarm control plane: identities, join tokens, the CA and mTLS, the
//! Raft-replicated store, node-to-node RPC, managers and the node agent.

pub mod ca;
pub mod error;
pub mod ids;
pub mod raft;
pub mod store;
pub mod tls;
pub mod token;
