//! Raft log and state machine on disk, in one redb file.
//!
//! ```text
//! log    u64 -> JSON entry            the Raft log
//! meta   "vote" | "committed" | "purged" -> JSON
//! sm     "applied" | "membership" | "state" | "snapshot_meta" | "snapshot" -> JSON
//! ```
//!
//! Every write is a redb transaction committed with fsync before openraft is
//! told it happened. The state machine keeps its data in memory too, behind a
//! lock the rest of the manager reads from, and publishes the applied index on
//! a watch channel.

use std::{
    io,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, RwLock},
};

use futures::{Stream, TryStreamExt as _};
use openraft::{
    EntryPayload, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf},
    entry::RaftEntry as _,
    storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine},
};
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::watch;

use super::TypeConfig;
use crate::cluster::store::state::ClusterState;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("sm");

type C = TypeConfig;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(io_err)
}

/// Opens (creating if needed) the Raft database and both handles on it.
pub fn open(path: &Path) -> io::Result<(LogStore, StateMachine)> {
    let db = Arc::new(Database::create(path).map_err(io_err)?);
    {
        // Create the tables so readers never see them missing.
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.open_table(SM).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    let log = LogStore { db: db.clone() };
    let sm = StateMachine::load(db)?;
    Ok((log, sm))
}

fn get<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    let tx = db.begin_read().map_err(io_err)?;
    let t = tx.open_table(table).map_err(io_err)?;
    t.get(key).map_err(io_err)?.map(|v| decode(v.value())).transpose()
}

fn put_many(db: &Database, table: TableDefinition<&str, &[u8]>, kv: &[(&str, Vec<u8>)]) -> io::Result<()> {
    let tx = db.begin_write().map_err(io_err)?;
    {
        let mut t = tx.open_table(table).map_err(io_err)?;
        for (k, v) in kv {
            t.insert(*k, v.as_slice()).map_err(io_err)?;
        }
    }
    tx.commit().map_err(io_err)
}

/// The Raft log.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    fn entries(&self, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<C>>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Some(e),
            Bound::Excluded(&e) => {
                if e == 0 {
                    return Ok(Vec::new());
                }
                Some(e - 1)
            }
            Bound::Unbounded => None,
        };
        if end.is_some_and(|e| e < start) {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let iter = match end {
            Some(e) => t.range(start..=e),
            None => t.range(start..),
        }
        .map_err(io_err)?;
        iter.map(|r| r.map_err(io_err).and_then(|(_, v)| decode(v.value()))).collect()
    }
}

impl RaftLogReader<C> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<C>>, io::Error> {
        self.entries(range)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        get(&self.db, META, "vote")
    }
}

impl RaftLogStorage<C> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let purged: Option<LogIdOf<C>> = get(&self.db, META, "purged")?;
        let last = {
            let tx = self.db.begin_read().map_err(io_err)?;
            let t = tx.open_table(LOG).map_err(io_err)?;
            t.last()
                .map_err(io_err)?
                .map(|(_, v)| decode::<EntryOf<C>>(v.value()))
                .transpose()?
                .map(|e| e.log_id())
        };
        Ok(LogState { last_log_id: last.or(purged), last_purged_log_id: purged })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        put_many(&self.db, META, &[("vote", encode(vote)?)])
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        put_many(&self.db, META, &[("committed", encode(&committed)?)])
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(get::<Option<LogIdOf<C>>>(&self.db, META, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let result = (|| {
            let tx = self.db.begin_write().map_err(io_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(io_err)?;
                for e in entries {
                    t.insert(e.index(), encode(&e)?.as_slice()).map_err(io_err)?;
                }
            }
            // Durable (fsync) before openraft hears about it.
            tx.commit().map_err(io_err)
        })();
        let reported = result.as_ref().copied().map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reported);
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(from.., |_, _| false).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = tx.open_table(META).map_err(io_err)?;
            m.insert("purged", encode(&log_id)?.as_slice()).map_err(io_err)?;
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(..=log_id.index(), |_, _| false).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}

/// The state machine's data: what has been applied, and the result.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    pub last_applied: Option<LogIdOf<C>>,
    pub membership: StoredMembershipOf<C>,
    pub state: ClusterState,
}

/// A read handle on the applied state, shared with the rest of the manager.
#[derive(Clone)]
pub struct StateReader {
    data: Arc<RwLock<Applied>>,
    applied_index: watch::Receiver<u64>,
}

impl StateReader {
    /// Runs `f` on the current state.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner).state)
    }

    /// A clone of the current state.
    pub fn snapshot(&self) -> ClusterState {
        self.read(Clone::clone)
    }

    /// Notified after every applied batch, with the last applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_index.clone()
    }
}

/// The state machine openraft drives.
pub struct StateMachine {
    db: Arc<Database>,
    data: Arc<RwLock<Applied>>,
    applied_tx: watch::Sender<u64>,
    applied_rx: watch::Receiver<u64>,
}

impl StateMachine {
    fn load(db: Arc<Database>) -> io::Result<StateMachine> {
        let data = Applied {
            last_applied: get(&db, SM, "applied")?.flatten(),
            membership: get(&db, SM, "membership")?.unwrap_or_default(),
            state: get(&db, SM, "state")?.unwrap_or_default(),
        };
        let index = data.last_applied.as_ref().map_or(0, openraft::LogId::index);
        let (applied_tx, applied_rx) = watch::channel(index);
        Ok(StateMachine { db, data: Arc::new(RwLock::new(data)), applied_tx, applied_rx })
    }

    /// A reader of the applied state for the rest of the manager.
    pub fn reader(&self) -> StateReader {
        StateReader { data: self.data.clone(), applied_index: self.applied_rx.clone() }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.data.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn persist(&self, a: &Applied) -> io::Result<()> {
        put_many(
            &self.db,
            SM,
            &[
                ("applied", encode(&a.last_applied)?),
                ("membership", encode(&a.membership)?),
                ("state", encode(&a.state)?),
            ],
        )
    }

    fn publish(&self, a: &Applied) {
        let index = a.last_applied.as_ref().map_or(0, openraft::LogId::index);
        self.applied_tx.send_replace(index);
    }
}

/// Snapshot payload: the whole state, JSON.
pub type SnapshotData = Vec<u8>;

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    applied: Applied,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        let data = encode(&self.applied.state)?;
        let meta = SnapshotMetaOf::<C> {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        put_many(&self.db, SM, &[("snapshot", encode(&stored)?)])?;
        Ok(SnapshotOf::<C, SnapshotData> { meta, snapshot: data })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let a = self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let mut responders = Vec::new();
        let snapshot = {
            let mut a = self.lock();
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                let outcome = match &entry.payload {
                    EntryPayload::Blank => Ok(()),
                    EntryPayload::Normal(cmd) => a.state.apply(log_id.index(), cmd),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembershipOf::<C>::new(Some(log_id), m.clone());
                        Ok(())
                    }
                };
                a.last_applied = Some(log_id);
                if let Some(r) = responder {
                    responders.push((r, outcome));
                }
            }
            a.clone()
        };
        self.persist(&snapshot)?;
        self.publish(&snapshot);
        for (r, outcome) in responders {
            r.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let applied = self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        SnapshotBuilder { db: self.db.clone(), applied }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let state: ClusterState = decode(&snapshot)?;
        let applied =
            Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        self.persist(&applied)?;
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot };
        put_many(&self.db, SM, &[("snapshot", encode(&stored)?)])?;
        *self.lock() = applied.clone();
        self.publish(&applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        let stored: Option<StoredSnapshot> = get(&self.db, SM, "snapshot")?;
        Ok(stored.map(|s| SnapshotOf::<C, SnapshotData> { meta: s.meta, snapshot: s.data }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{StorageError, testing::log::StoreBuilder};

    use super::*;

    struct RedbBuilder;

    impl StoreBuilder<C, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<C>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, sm) = open(&dir.path().join("raft.redb")).expect("open store");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        openraft::testing::log::Suite::test_all(RedbBuilder).await.expect("storage conformance");
    }

    #[tokio::test]
    async fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (_log, sm) = open(&path).unwrap();
            let mut a = sm.lock();
            a.state.removed_nodes.insert("gone".into());
            let snap = a.clone();
            drop(a);
            sm.persist(&snap).unwrap();
        }
        let (_log, sm) = open(&path).unwrap();
        assert!(sm.reader().read(|s| s.removed_nodes.contains("gone")));
    }
}
