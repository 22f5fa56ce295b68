//! Raft network (filled in with the RPC layer).
