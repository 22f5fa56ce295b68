//! The swarm control plane: identities, join tokens, the CA and mTLS, the
//! Raft-replicated store, node-to-node RPC, managers and the node agent.

pub mod addr;
pub mod ca;
pub mod dispatcher;
pub mod error;
pub mod gossip;
pub mod ids;
pub mod local;
pub mod manager;
pub mod messages;
pub mod node;
pub mod overlay;
pub mod raft;
pub mod rpc;
pub mod store;
pub mod tls;
pub mod token;
