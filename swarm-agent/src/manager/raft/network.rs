//! openraft's network over the node-to-node RPC (mutual TLS on 2377).
//!
//! - AppendEntries: JSON, at most [`crate::manager::raft::storage::MAX_APPEND_BYTES`] of
//!   entries per request (the log reader bounds each batch); a batch whose
//!   encoding still exceeds the peer's body limit is cut to a prefix that
//!   fits and reported as a partial success, so replication moves on
//!   instead of resending the same request forever.
//! - Snapshots: raw bytes in [`CHUNK`]-sized pieces to
//!   `/raft/snapshot/chunk`, then a small JSON request to `/raft/snapshot`
//!   that names the transfer, its length and SHA-256; the receiver checks
//!   both before installing.
//! - Errors: a peer that cannot be reached is `Unreachable` (openraft backs
//!   off), a timeout or broken request is a `Network` error (retried soon).

use std::future::Future;

use bytes::Bytes;
use openraft::{
    OptionalSend,
    alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, VoteOf},
    errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable},
    network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2},
    raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse},
};
use serde::{Deserialize, Serialize};

use crate::manager::raft::{RaftPeer, TypeConfig, storage::SnapshotData};
use crate::rpc::{RpcClient, RpcError, limits, messages::path};

type C = TypeConfig;

/// Snapshot bytes per chunk request.
pub const CHUNK: usize = 1 << 20;
/// The largest snapshot a manager accepts.
pub const MAX_SNAPSHOT: u64 = 1 << 30;
/// Header of a chunk request: [`ChunkHeader`] as JSON.
pub const CHUNK_HEADER: &str = "x-swarm-snapshot-chunk";

/// A Raft request with the Raft ID it is meant for: a manager that rejoined
/// under a new ID at the same address refuses what was meant for its old
/// seat (its log is not that seat's log).
#[derive(Debug, Serialize, Deserialize)]
pub struct Addressed<T> {
    pub to: u64,
    pub req: T,
}

/// Where a chunk goes in which transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub to: u64,
    pub transfer: u64,
    pub offset: u64,
    pub total: u64,
}

/// The end of a snapshot transfer: install what was received.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub vote: VoteOf<C>,
    pub meta: SnapshotMetaOf<C>,
    pub transfer: u64,
    pub len: u64,
    /// SHA-256 of the whole snapshot, hex.
    pub sha256: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
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

/// How openraft should treat a failed call.
fn classify(e: &RpcError) -> RPCError<C> {
    match e {
        RpcError::Lost(_) => RPCError::Network(NetworkError::new(&Msg(e.to_string()))),
        RpcError::Transport(_) | RpcError::NotAnswered(_) | RpcError::TooLarge(_) | RpcError::Api(_) => {
            RPCError::Unreachable(Unreachable::new(&Msg(e.to_string())))
        }
    }
}

fn streaming(e: &RpcError) -> StreamingError<C> {
    match classify(e) {
        RPCError::Network(n) => StreamingError::Network(n),
        _ => StreamingError::Unreachable(Unreachable::new(&Msg(e.to_string()))),
    }
}

/// The number of leading entries whose encoding fits in `budget` bytes
/// (at least one when there are any).
fn prefix_within<T: Serialize>(entries: &[T], budget: usize) -> usize {
    let mut used = 0;
    for (i, e) in entries.iter().enumerate() {
        used += serde_json::to_vec(e).map_or(usize::MAX / 2, |v| v.len() + 1);
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

impl RaftNetworkV2<C> for PeerConn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // Room for the vote, log ids and framing.
        let budget = limits::RAFT_APPEND - (64 << 10);
        let keep = prefix_within(&rpc.entries, budget);
        let mut cut: Option<LogIdOf<C>> = (keep < rpc.entries.len())
            .then(|| {
                rpc.entries.truncate(keep);
                rpc.entries.last().map(openraft::entry::RaftEntry::log_id)
            })
            .flatten();
        if let Some(last) = &cut {
            tracing::debug!(target = self.target, %last, "append batch cut to fit the peer's body limit");
        }
        let mut req = Addressed { to: self.target, req: rpc };
        let resp: AppendEntriesResponse<C> = loop {
            match self.rpc.call(&self.addr, path::RAFT_APPEND, &req, option.hard_ttl(), None).await {
                Ok(r) => break r,
                // The peer's limit is smaller than ours: send half at once,
                // and let replication go on from what it took.
                Err(RpcError::TooLarge(_)) if req.req.entries.len() > 1 => {
                    let keep = req.req.entries.len() / 2;
                    req.req.entries.truncate(keep);
                    cut = req.req.entries.last().map(openraft::entry::RaftEntry::log_id);
                    tracing::info!(
                        target = self.target,
                        keep,
                        "peer refused an append as too large; halving it"
                    );
                }
                Err(e) => return Err(classify(&e)),
            }
        };
        Ok(match (resp, cut) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (r, _) => r,
        })
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
            .map_err(|e| classify(&e))
    }

    /// Pre-Vote (enabled in [`crate::manager::raft::config`]): a manager that was cut off
    /// or restarted asks first whether it could win, so it does not bump
    /// the term and unseat a healthy leader when it comes back.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc
            .call(
                &self.addr,
                path::RAFT_PRE_VOTE,
                &Addressed { to: self.target, req: rpc },
                option.hard_ttl(),
                None,
            )
            .await
            .map_err(|e| classify(&e))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let data = Bytes::from(snapshot.snapshot);
        let total = data.len() as u64;
        let transfer: u64 = rand::random();
        let sha256 = sha256_hex(&data);
        let per_call = option.hard_ttl();
        let send = async {
            let mut offset = 0usize;
            // An empty snapshot still opens its transfer with one empty chunk.
            loop {
                let end = (offset + CHUNK).min(data.len());
                let header = ChunkHeader { to: self.target, transfer, offset: offset as u64, total };
                let header =
                    serde_json::to_string(&header).map_err(|e| RpcError::Transport(e.to_string()))?;
                let () = self
                    .rpc
                    .call_bytes(
                        &self.addr,
                        path::RAFT_SNAPSHOT_CHUNK,
                        &[(CHUNK_HEADER, header)],
                        data.slice(offset..end),
                        per_call,
                    )
                    .await?;
                offset = end;
                if offset >= data.len() {
                    break;
                }
            }
            let req = SnapshotRequest { vote, meta: snapshot.meta, transfer, len: total, sha256 };
            self.rpc
                .call::<_, SnapshotResponse<C>>(
                    &self.addr,
                    path::RAFT_SNAPSHOT,
                    &Addressed { to: self.target, req },
                    per_call,
                    None,
                )
                .await
        };
        tokio::select! {
            r = send => r.map_err(|e| streaming(&e)),
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// The receiving end of snapshot transfers: one at a time; a chunk at
/// offset 0 starts a new transfer and drops any unfinished one.
#[derive(Default)]
pub struct SnapshotReceiver {
    current: Option<Incoming>,
}

struct Incoming {
    transfer: u64,
    total: u64,
    data: Vec<u8>,
}

impl SnapshotReceiver {
    /// Adds a chunk; chunks must come in order.
    pub fn chunk(&mut self, h: ChunkHeader, bytes: &[u8]) -> Result<(), String> {
        if h.total > MAX_SNAPSHOT {
            return Err(format!("snapshot of {} bytes is over the limit of {MAX_SNAPSHOT}", h.total));
        }
        if h.offset == 0 {
            // Reserve as it arrives, not what the header claims.
            self.current = Some(Incoming { transfer: h.transfer, total: h.total, data: Vec::new() });
        }
        let Some(cur) = self.current.as_mut().filter(|c| c.transfer == h.transfer && c.total == h.total)
        else {
            return Err(format!("snapshot chunk for unknown transfer {:x}", h.transfer));
        };
        if h.offset != cur.data.len() as u64 {
            return Err(format!("snapshot chunk at offset {}, expected {}", h.offset, cur.data.len()));
        }
        if cur.data.len() as u64 + bytes.len() as u64 > cur.total {
            return Err("snapshot chunk past the announced length".into());
        }
        cur.data.extend_from_slice(bytes);
        Ok(())
    }

    /// The complete snapshot of `transfer`, if its length and digest match.
    pub fn finish(&mut self, transfer: u64, len: u64, sha256: &str) -> Result<Vec<u8>, String> {
        let cur = self.current.take().filter(|c| c.transfer == transfer);
        let Some(cur) = cur else { return Err(format!("no snapshot transfer {transfer:x} in progress")) };
        if cur.data.len() as u64 != len || cur.total != len {
            return Err(format!("snapshot incomplete: {} of {len} bytes", cur.data.len()));
        }
        if sha256_hex(&cur.data) != sha256 {
            return Err("snapshot digest mismatch".into());
        }
        Ok(cur.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(transfer: u64, offset: u64, total: u64) -> ChunkHeader {
        ChunkHeader { to: 1, transfer, offset, total }
    }

    #[test]
    fn chunks_assemble_in_order_and_are_verified() {
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut r = SnapshotReceiver::default();
        for (i, c) in data.chunks(1000).enumerate() {
            r.chunk(h(7, i as u64 * 1000, 2500), c).unwrap();
        }
        assert_eq!(r.finish(7, 2500, &sha256_hex(&data)).unwrap(), data);
        assert!(r.finish(7, 2500, &sha256_hex(&data)).is_err(), "taken once");
    }

    #[test]
    fn out_of_order_foreign_oversized_and_corrupt_transfers_are_refused() {
        let mut r = SnapshotReceiver::default();
        assert!(r.chunk(h(1, 10, 20), b"x").is_err(), "no transfer open");
        r.chunk(h(1, 0, 20), &[0; 10]).unwrap();
        assert!(r.chunk(h(1, 5, 20), &[0; 5]).is_err(), "gap or overlap");
        assert!(r.chunk(h(2, 10, 20), &[0; 5]).is_err(), "another transfer");
        assert!(r.chunk(h(1, 10, 20), &[0; 11]).is_err(), "past the length");
        r.chunk(h(1, 10, 20), &[0; 10]).unwrap();
        assert!(r.finish(1, 20, &sha256_hex(&[1; 20])).is_err(), "digest");
        assert!(r.chunk(h(3, 0, MAX_SNAPSHOT + 1), b"").is_err());
        // A new transfer replaces an unfinished one.
        r.chunk(h(4, 0, 4), b"ab").unwrap();
        r.chunk(h(5, 0, 2), b"cd").unwrap();
        assert!(r.finish(4, 4, &sha256_hex(b"abcd")).is_err());
    }

    #[test]
    fn an_empty_snapshot_is_one_empty_chunk() {
        let mut r = SnapshotReceiver::default();
        r.chunk(h(9, 0, 0), b"").unwrap();
        assert_eq!(r.finish(9, 0, &sha256_hex(b"")).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn batches_are_cut_to_what_fits() {
        let entries: Vec<String> = (0..10).map(|_| "y".repeat(100)).collect();
        assert_eq!(prefix_within(&entries, 10_000), 10);
        assert_eq!(prefix_within(&entries, 350), 3);
        assert_eq!(prefix_within(&entries, 10), 1, "never nothing");
        assert_eq!(prefix_within::<String>(&[], 10), 0);
    }
}

/// Fuzzing what Raft peers send: bodies and chunk sequences.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn request_bodies_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = serde_json::from_slice::<Addressed<AppendEntriesRequest<C>>>(&data);
            let _ = serde_json::from_slice::<Addressed<VoteRequest<C>>>(&data);
            let _ = serde_json::from_slice::<Addressed<SnapshotRequest>>(&data);
            let _ = serde_json::from_slice::<ChunkHeader>(&data);
        }

        #[test]
        fn chunk_sequences_never_yield_a_wrong_snapshot(
            ops in proptest::collection::vec((0u64..3, 0u64..40, 0u64..40, proptest::collection::vec(any::<u8>(), 0..20)), 0..30),
            want in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut r = SnapshotReceiver::default();
            for (transfer, offset, total, bytes) in ops {
                let _ = r.chunk(ChunkHeader { to: 1, transfer, offset, total }, &bytes);
            }
            for t in 0..3 {
                if let Ok(got) = r.finish(t, want.len() as u64, &sha256_hex(&want)) {
                    prop_assert_eq!(&got, &want);
                }
            }
        }
    }
}
