//! The swarm agent: one binary that is both the node daemon and its CLI.
//!
//! This library holds everything the binary does, so integration tests can
//! drive the same code.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod daemon;
pub mod datapath;
pub mod table;
