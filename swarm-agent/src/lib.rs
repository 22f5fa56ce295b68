//! The swarm agent: one binary that is both the node daemon and its CLI.
//!
//! This library holds everything the binary does, so integration tests can
//! drive the same code.

pub mod agent;
pub mod api;
pub mod ca;
pub mod cli;
pub mod daemon;
pub mod datapath;
pub mod error;
pub mod gossip;
pub mod manager;
pub mod node;
pub mod rpc;
pub mod table;
pub mod util;
