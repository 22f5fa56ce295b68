//! openraft's network over the node-to-node RPC (mutual TLS on 2377).

use std::future::Future;

use openraft::{
    OptionalSend,
    alias::{SnapshotMetaOf, SnapshotOf, VoteOf},
    errors::{RPCError, ReplicationClosed, StreamingError, Unreachable},
    network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2},
    raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse},
};
use serde::{Deserialize, Serialize};

use super::{RaftPeer, TypeConfig, storage::SnapshotData};
use crate::cluster::{
    messages::path,
    rpc::{RpcClient, RpcError},
};

type C = TypeConfig;

/// A Raft request with the Raft ID it is meant for: a manager that rejoined
/// under a new ID at the same address refuses what was meant for its old
/// seat (its log is not that seat's log).
#[derive(Debug, Serialize, Deserialize)]
pub struct Addressed<T> {
    pub to: u64,
    pub req: T,
}

/// A snapshot sent in one piece (the store is small).
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub data: SnapshotData,
}

/// Makes a connection handle per peer; all share one RPC client.
#[derive(Clone)]
pub struct Network {
    rpc: RpcClient,
}

impl Network {
    pub fn new(rpc: RpcClient) -> Network {
        Network { rpc }
    }
}

impl RaftNetworkFactory<C> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &RaftPeer) -> PeerConn {
        PeerConn { rpc: self.rpc.clone(), addr: node.addr.clone(), target }
    }
}

pub struct PeerConn {
    rpc: RpcClient,
    addr: String,
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn unreachable(e: &RpcError) -> Unreachable<C> {
    Unreachable::new(&Msg(e.to_string()))
}

impl RaftNetworkV2<C> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.rpc
            .call(
                &self.addr,
                path::RAFT_APPEND,
                &Addressed { to: self.target, req: rpc },
                option.hard_ttl(),
                None,
            )
            .await
            .map_err(|e| RPCError::Unreachable(unreachable(&e)))
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc
            .call(
                &self.addr,
                path::RAFT_VOTE,
                &Addressed { to: self.target, req: rpc },
                option.hard_ttl(),
                None,
            )
            .await
            .map_err(|e| RPCError::Unreachable(unreachable(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = SnapshotRequest { vote, meta: snapshot.meta, data: snapshot.snapshot };
        let req = Addressed { to: self.target, req };
        let send = self.rpc.call(&self.addr, path::RAFT_SNAPSHOT, &req, option.hard_ttl(), None);
        tokio::select! {
            r = send => r.map_err(|e| StreamingError::Unreachable(unreachable(&e))),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
