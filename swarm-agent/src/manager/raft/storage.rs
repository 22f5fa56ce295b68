//! Raft log and state machine on disk: a redb file and a snapshot file.
//!
//! ```text
//! raft.redb  log    u64 -> sealed JSON entry     the Raft log
//!            meta   "vote" | "committed" | "purged" -> JSON
//!            sm     (only stores of earlier versions: the whole state)
//! snapshot   the latest snapshot: meta and sealed state bytes (see SNAPSHOT_FILE)
//! ```
//!
//! Entries and the snapshot's state are sealed with the manager's data key
//! ([`super::seal`]): the files never hold the store's contents in plain text.
//!
//! Every write is a redb transaction committed with fsync before openraft is
//! told it happened. The state machine keeps its data in memory too, behind a
//! lock the rest of the manager reads from, and publishes the applied index on
//! a watch channel.

use std::{
    io,
    ops::{Bound, RangeBounds},
    path::{Path, PathBuf},
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

use crate::manager::raft::{TypeConfig, seal::Dek};
use crate::manager::store::state::ClusterState;

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

fn seal<T: Serialize>(dek: &Dek, v: &T) -> io::Result<Vec<u8>> {
    dek.seal(&encode(v)?)
}

fn unseal<T: DeserializeOwned>(dek: &Dek, b: &[u8]) -> io::Result<T> {
    decode(&dek.open(b)?)
}

/// Opens (creating if needed) the Raft database and both handles on it;
/// `dek` seals what they write.
pub fn open(path: &Path, dek: Dek) -> io::Result<(LogStore, StateMachine)> {
    let dek = Arc::new(dek);
    let db = Arc::new(Database::create(path).map_err(io_err)?);
    {
        // Create the tables so readers never see them missing.
        let tx = db.begin_write().map_err(io_err)?;
        tx.open_table(LOG).map_err(io_err)?;
        tx.open_table(META).map_err(io_err)?;
        tx.open_table(SM).map_err(io_err)?;
        tx.commit().map_err(io_err)?;
    }
    let log = LogStore { db: db.clone(), dek: dek.clone() };
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let sm = StateMachine::load(db, dir, dek)?;
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
    dek: Arc<Dek>,
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
        iter.map(|r| r.map_err(io_err).and_then(|(_, v)| unseal(&self.dek, v.value()))).collect()
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

    /// What replication sends in one AppendEntries: entries from `start` up
    /// to [`MAX_APPEND_BYTES`] of them (always at least one), so a batch
    /// fits the peer's body limit whatever the entries' sizes.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<EntryOf<C>>, io::Error> {
        self.entries_bounded(start, end, MAX_APPEND_BYTES)
    }
}

/// The most entry bytes (as stored, i.e. as encoded) one AppendEntries
/// carries; a single larger entry still goes alone.
pub const MAX_APPEND_BYTES: usize = 2 << 20;

impl LogStore {
    fn entries_bounded(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<EntryOf<C>>> {
        if end <= start {
            return Ok(Vec::new());
        }
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for r in t.range(start..end).map_err(io_err)? {
            let (_, v) = r.map_err(io_err)?;
            let raw = v.value();
            if !out.is_empty() && bytes + raw.len() > max_bytes {
                break;
            }
            bytes += raw.len();
            out.push(unseal(&self.dek, raw)?);
        }
        Ok(out)
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
                .map(|(_, v)| unseal::<EntryOf<C>>(&self.dek, v.value()))
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
                    t.insert(e.index(), seal(&self.dek, &e)?.as_slice()).map_err(io_err)?;
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

/// What `debug store` shows of a manager's copy of the state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreDigest {
    pub applied: u64,
    pub nodes: usize,
    pub networks: usize,
    pub endpoints: usize,
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub tasks: usize,
    pub bytes: usize,
    pub sha256: String,
    /// Every network's name, with `debug store --objects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_names: Option<Vec<String>>,
    /// Every service's name and replica count (global: none), with
    /// `debug store --objects`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_replicas: Option<std::collections::BTreeMap<String, Option<u64>>>,
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

    /// The applied index and a digest of the state at that index, taken
    /// together (to compare managers' copies).
    pub fn digest(&self, with_names: bool) -> io::Result<StoreDigest> {
        let a = self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = encode(&a.state)?;
        Ok(StoreDigest {
            applied: a.last_applied.as_ref().map_or(0, openraft::LogId::index),
            nodes: a.state.nodes.len(),
            networks: a.state.networks.len(),
            endpoints: a.state.endpoints.len(),
            services: a.state.services.len(),
            tasks: a.state.tasks.len(),
            bytes: bytes.len(),
            sha256: crate::manager::raft::network::sha256_hex(&bytes),
            network_names: with_names.then(|| a.state.networks.values().map(|n| n.name.clone()).collect()),
            service_replicas: with_names.then(|| {
                a.state
                    .services
                    .values()
                    .map(|s| {
                        let replicas = match s.mode() {
                            crate::manager::store::task::Mode::Replicated { replicas, .. } => Some(replicas),
                            crate::manager::store::task::Mode::Global => None,
                        };
                        (s.name().to_owned(), replicas)
                    })
                    .collect()
            }),
        })
    }

    /// Notified after every applied batch, with the last applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_index.clone()
    }
}

/// The state machine openraft drives. The state lives in memory; what makes
/// it durable is the Raft log plus the latest snapshot: on start the state
/// is the snapshot's, and openraft re-applies the committed entries after
/// it. Applying a batch therefore writes nothing to disk, and costs the same
/// whatever the size of the state.
pub struct StateMachine {
    db: Arc<Database>,
    /// Where the snapshot file lives (beside the database).
    dir: PathBuf,
    dek: Arc<Dek>,
    data: Arc<RwLock<Applied>>,
    applied_tx: watch::Sender<u64>,
    applied_rx: watch::Receiver<u64>,
}

/// Snapshot payload: the whole state as bytes (JSON). Sent to other managers
/// as raw chunks ([`crate::manager::raft::network`]), never inside a JSON document.
pub type SnapshotData = Vec<u8>;

/// Encodes the state as snapshot bytes.
pub fn encode_state(state: &ClusterState) -> io::Result<SnapshotData> {
    encode(state)
}

/// The latest snapshot lives in its own file beside the database
/// (`snapshot`: magic, meta length, meta JSON, state bytes), written to a
/// temporary file, synced and renamed into place: writing tens of MB never
/// holds up the log's write transactions.
const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"SWSNAP1\n";

fn read_snapshot(dir: &Path, dek: &Dek) -> io::Result<Option<(SnapshotMetaOf<C>, SnapshotData)>> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "corrupt snapshot file");
    if bytes.len() < 16 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad());
    }
    let meta_len = usize::try_from(u64::from_le_bytes(bytes[8..16].try_into().map_err(|_| bad())?))
        .map_err(|_| bad())?;
    let meta_end = 16usize.checked_add(meta_len).filter(|e| *e <= bytes.len()).ok_or_else(bad)?;
    let meta: SnapshotMetaOf<C> = decode(&bytes[16..meta_end])?;
    Ok(Some((meta, dek.open(&bytes[meta_end..])?.into_owned())))
}

fn write_snapshot(dir: &Path, dek: &Dek, meta: &SnapshotMetaOf<C>, data: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let meta = encode(meta)?;
    let data = dek.seal(data)?;
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(SNAPSHOT_MAGIC)?;
        f.write_all(&(meta.len() as u64).to_le_bytes())?;
        f.write_all(&meta)?;
        f.write_all(&data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Drops what earlier versions kept in the `sm` table (the whole state,
/// persisted per batch) once a snapshot file replaces it.
fn drop_legacy_state(db: &Database) -> io::Result<()> {
    const OLD: [&str; 6] = ["applied", "membership", "state", "snapshot", "snapshot_meta", "snapshot_data"];
    let present = {
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(SM).map_err(io_err)?;
        let mut any = false;
        for k in OLD {
            any |= t.get(k).map_err(io_err)?.is_some();
        }
        any
    };
    if !present {
        return Ok(());
    }
    let tx = db.begin_write().map_err(io_err)?;
    {
        let mut t = tx.open_table(SM).map_err(io_err)?;
        for k in OLD {
            t.remove(k).map_err(io_err)?;
        }
    }
    tx.commit().map_err(io_err)
}

impl StateMachine {
    fn load(db: Arc<Database>, dir: PathBuf, dek: Arc<Dek>) -> io::Result<StateMachine> {
        let data = if let Some((meta, bytes)) = read_snapshot(&dir, &dek)? {
            Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
                state: decode(&bytes)?,
            }
        } else {
            // A store written before snapshots held the state: its last
            // persisted state (nothing after it was purged from the log).
            Applied {
                last_applied: get(&db, SM, "applied")?.flatten(),
                membership: get(&db, SM, "membership")?.unwrap_or_default(),
                state: get(&db, SM, "state")?.unwrap_or_default(),
            }
        };
        let index = data.last_applied.as_ref().map_or(0, openraft::LogId::index);
        let (applied_tx, applied_rx) = watch::channel(index);
        Ok(StateMachine { db, dir, dek, data: Arc::new(RwLock::new(data)), applied_tx, applied_rx })
    }

    /// A reader of the applied state for the rest of the manager.
    pub fn reader(&self) -> StateReader {
        StateReader { data: self.data.clone(), applied_index: self.applied_rx.clone() }
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.data.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, last_applied: Option<&LogIdOf<C>>) {
        self.applied_tx.send_replace(last_applied.map_or(0, openraft::LogId::index));
    }
}

pub struct SnapshotBuilder {
    db: Arc<Database>,
    dir: PathBuf,
    dek: Arc<Dek>,
    data: Arc<RwLock<Applied>>,
}

impl RaftSnapshotBuilder<C> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        // A copy taken under the read lock (applying waits only for the
        // copy), encoded and written without it: the bytes are exactly the
        // state at `last_applied`.
        let started = std::time::Instant::now();
        let (meta, state) = {
            let a = self.data.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let meta =
                SnapshotMetaOf::<C> { last_log_id: a.last_applied, last_membership: a.membership.clone() };
            (meta, a.state.clone())
        };
        let data = encode(&state)?;
        drop(state);
        write_snapshot(&self.dir, &self.dek, &meta, &data)?;
        drop_legacy_state(&self.db)?;
        tracing::info!(
            bytes = data.len(),
            index = meta.last_log_id.as_ref().map_or(0, openraft::LogId::index),
            ms = started.elapsed().as_millis() as u64,
            "snapshot built"
        );
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
        let last = {
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
            a.last_applied
        };
        self.publish(last.as_ref());
        for (r, outcome) in responders {
            r.send(outcome);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.dir.clone(),
            dek: self.dek.clone(),
            data: self.data.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let started = std::time::Instant::now();
        let state: ClusterState = decode(&snapshot)?;
        write_snapshot(&self.dir, &self.dek, meta, &snapshot)?;
        drop_legacy_state(&self.db)?;
        tracing::info!(
            bytes = snapshot.len(),
            index = meta.last_log_id.as_ref().map_or(0, openraft::LogId::index),
            ms = started.elapsed().as_millis() as u64,
            "snapshot installed"
        );
        let applied =
            Applied { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), state };
        *self.lock() = applied;
        self.publish(meta.last_log_id.as_ref());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        Ok(read_snapshot(&self.dir, &self.dek)?
            .map(|(meta, snapshot)| SnapshotOf::<C, SnapshotData> { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::{StorageError, testing::log::StoreBuilder};

    use super::*;
    use crate::manager::store::state::Command;

    struct RedbBuilder;

    impl StoreBuilder<C, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<C>> {
            let dir = tempfile::tempdir().expect("tempdir");
            let (log, sm) = open(&dir.path().join("raft.redb"), key(&KEY)).expect("open store");
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        openraft::testing::log::Suite::test_all(RedbBuilder).await.expect("storage conformance");
    }

    const KEY: [u8; 32] = [7; 32];

    fn key(k: &[u8]) -> Dek {
        Dek::new(k).unwrap()
    }

    fn entry(index: u64, cmd: Command) -> EntryOf<C> {
        EntryOf::<C>::new_normal(openraft::testing::log_id::<C>(1, 1, index), cmd)
    }

    fn label_cmd(n: usize, size: usize) -> Command {
        Command::RemoveNetwork { id: format!("{n}-{}", "x".repeat(size)) }
    }

    #[tokio::test]
    async fn state_survives_reopening_through_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (_log, mut sm) = open(&path, key(&KEY)).unwrap();
            sm.lock().state.removed_nodes.insert("gone".into());
            sm.lock().last_applied = Some(openraft::testing::log_id::<C>(1, 1, 7));
            let mut b = sm.get_snapshot_builder().await;
            let snap = b.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index()), Some(7));
            // Applied after the snapshot: only the log makes it durable.
            sm.lock().state.removed_nodes.insert("later".into());
        }
        let (_log, mut sm) = open(&path, key(&KEY)).unwrap();
        assert!(sm.reader().read(|s| s.removed_nodes.contains("gone")));
        assert!(!sm.reader().read(|s| s.removed_nodes.contains("later")), "not persisted by apply");
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index()), Some(7));
        let current = sm.get_current_snapshot().await.unwrap().expect("snapshot");
        assert_eq!(current.meta.last_log_id.map(|l| l.index()), Some(7));
    }

    #[tokio::test]
    async fn append_batches_are_bounded_in_bytes_but_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _sm) = open(&dir.path().join("raft.redb"), key(&KEY)).unwrap();
        // 10 entries of ~700 KiB, then one of 3 MiB.
        let mut entries: Vec<EntryOf<C>> =
            (1..=10).map(|i| entry(i, label_cmd(i as usize, 700 << 10))).collect();
        entries.push(entry(11, label_cmd(11, 3 << 20)));
        log.append(entries, IOFlushed::noop()).await.unwrap();
        let got = log.limited_get_log_entries(1, 12).await.unwrap();
        let idx: Vec<u64> = got.iter().map(openraft::entry::RaftEntry::index).collect();
        assert_eq!(idx, vec![1, 2], "2 MiB hold two 700 KiB entries, not three");
        let got = log.limited_get_log_entries(11, 12).await.unwrap();
        assert_eq!(got.len(), 1, "an entry larger than the bound still goes, alone");
        assert!(log.limited_get_log_entries(5, 5).await.unwrap().is_empty());
        // The unbounded reader still returns everything.
        assert_eq!(log.try_get_log_entries(1..12).await.unwrap().len(), 11);
    }

    #[tokio::test]
    async fn the_files_hold_no_plain_text_and_need_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        {
            let (mut log, mut sm) = open(&path, key(&KEY)).unwrap();
            let cmd = Command::RemoveNetwork { id: "plaintext-marker-in-the-log".into() };
            log.append(vec![entry(1, cmd)], IOFlushed::noop()).await.unwrap();
            sm.lock().state.removed_nodes.insert("plaintext-marker-in-the-snapshot".into());
            sm.lock().last_applied = Some(openraft::testing::log_id::<C>(1, 1, 1));
            sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        }
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(15).any(|w| w == b"plaintext-marke"), "plain text on disk");
        }
        // Another key opens neither the log nor the snapshot.
        assert!(open(&path, key(&[8; 32])).is_err(), "the snapshot needs this key");
        let (mut log, sm) = open(&path, key(&KEY)).unwrap();
        assert!(sm.reader().read(|s| s.removed_nodes.contains("plaintext-marker-in-the-snapshot")));
        assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
    }
}
