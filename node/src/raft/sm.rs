//! The Raft state machine of one shard: its keyspace, the last applied log id
//! and membership, and its snapshot — a file holding a compact dump of the
//! keyspace, replaced atomically.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, StoredMembership};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_common::reply::Reply;

use super::logfile::{read_atomic, write_atomic};
use super::{decode, encode, LogOp, SnapshotData, C};
use crate::exec;
use crate::keyspace::Keyspace;
use crate::meta::ClusterMap;

/// A shard's applied state, shared with the shard handle that serves reads.
pub struct ShardData {
    pub ks: Keyspace,
    pub last_applied: Option<LogIdOf<C>>,
    pub last_membership: StoredMembershipOf<C>,
    /// Timestamp of the last applied proposal: new proposals never go below it.
    pub last_ts: i64,
    /// The cluster map (meta group only; empty in shards).
    pub map: ClusterMap,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<C>,
    data: Vec<u8>,
}

/// The latest snapshot: its metadata and payload.
type CurrentSnapshot = (SnapshotMetaOf<C>, Arc<Vec<u8>>);

#[derive(Clone)]
pub struct StateMachine {
    pub data: Arc<Mutex<ShardData>>,
    dir: PathBuf,
    current: Arc<Mutex<Option<CurrentSnapshot>>>,
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Snapshot payload: `last_ts`, the length of the encoded cluster map, the
/// map, then the keyspace dump.
fn snapshot_bytes(d: &ShardData) -> Vec<u8> {
    let map = encode(&d.map);
    let mut out = d.last_ts.to_le_bytes().to_vec();
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    out.extend_from_slice(&map);
    out.extend_from_slice(&d.ks.dump());
    out
}

fn load_snapshot_bytes(b: &[u8]) -> io::Result<(i64, ClusterMap, Keyspace)> {
    let word = |at: usize| -> io::Result<u64> {
        let bytes = b.get(at..at + 8).ok_or_else(|| invalid("snapshot is truncated"))?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    };
    let ts = word(0)? as i64;
    let map_len = usize::try_from(word(8)?).map_err(invalid)?;
    let map_bytes = b.get(16..16usize.saturating_add(map_len)).ok_or_else(|| invalid("snapshot is truncated"))?;
    let map = decode(map_bytes)?;
    Ok((ts, map, Keyspace::load(&b[16 + map_len..]).map_err(invalid)?))
}

impl StateMachine {
    /// Opens the state machine, restoring it from the group's snapshot file.
    pub fn open(dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let mut data = ShardData {
            ks: Keyspace::new(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            last_ts: 0,
            map: ClusterMap::default(),
        };
        let mut current = None;
        if let Some(bytes) = read_atomic(&dir.join("snapshot"))? {
            let file: SnapshotFile = decode(&bytes)?;
            let (ts, map, ks) = load_snapshot_bytes(&file.data)?;
            data = ShardData {
                ks,
                last_applied: file.meta.last_log_id,
                last_membership: file.meta.last_membership.clone(),
                last_ts: ts,
                map,
            };
            current = Some((file.meta, Arc::new(file.data)));
        }
        Ok(StateMachine {
            data: Arc::new(Mutex::new(data)),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
        })
    }

    async fn persist(&self, meta: &SnapshotMetaOf<C>, data: Arc<Vec<u8>>) -> io::Result<()> {
        let path = self.dir.join("snapshot");
        let meta = meta.clone();
        let d = data.clone();
        tokio::task::spawn_blocking(move || {
            let file = SnapshotFile { meta, data: d.to_vec() };
            write_atomic(&path, &encode(&file))
        })
        .await
        .map_err(io::Error::other)??;
        Ok(())
    }
}

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        let (meta, bytes) = {
            let d = self.data.lock();
            let meta = SnapshotMeta { last_log_id: d.last_applied, last_membership: d.last_membership.clone() };
            (meta, Arc::new(snapshot_bytes(&d)))
        };
        self.persist(&meta, bytes.clone()).await?;
        *self.current.lock() = Some((meta.clone(), bytes.clone()));
        metrics::counter!("tessera_raft_snapshots_built_total").increment(1);
        Ok(Snapshot { meta, snapshot: Cursor::new(bytes.to_vec()) })
    }
}

impl RaftStateMachine<C> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let d = self.data.lock();
        Ok((d.last_applied, d.last_membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let reply = {
                let mut d = self.data.lock();
                d.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => Reply::Null,
                    EntryPayload::Normal(p) => {
                        // The clock of the state machine never goes backwards,
                        // whatever order concurrent proposals were logged in.
                        let ts = p.ts.max(d.last_ts);
                        d.last_ts = ts;
                        match &p.op {
                            LogOp::Meta(op) => d.map.apply(op),
                            op => exec::apply(&mut d.ks, ts, op),
                        }
                    }
                    EntryPayload::Membership(m) => {
                        d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Reply::Null
                    }
                }
            };
            if let Some(r) = responder {
                r.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: SnapshotData) -> Result<(), io::Error> {
        let bytes = Arc::new(snapshot.into_inner());
        let (ts, map, ks) = load_snapshot_bytes(&bytes)?;
        self.persist(meta, bytes.clone()).await?;
        {
            let mut d = self.data.lock();
            *d = ShardData {
                ks,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_ts: ts,
                map,
            };
        }
        *self.current.lock() = Some((meta.clone(), bytes));
        metrics::counter!("tessera_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        Ok(self.current.lock().clone().map(|(meta, b)| Snapshot { meta, snapshot: Cursor::new(b.to_vec()) }))
    }
}
