//! The Raft state machine of one shard: its keyspace, the last applied log id
//! and membership, and its snapshot — a file holding a compact dump of the
//! keyspace, replaced atomically.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, StoredMembership};
use parking_lot::Mutex;
use tessera_backend::Model;
use tessera_common::reply::Reply;

use super::logfile::{read_atomic, write_atomic_parts};
use super::types::C;
use crate::data::keyspace::Keyspace;
use crate::error::Error as NodeError;
use crate::state::apply as exec;
pub use crate::state::chunks::{join, Chunks, LocalWrites};
use crate::state::meta::{ClusterMap, MetaOp};
use crate::state::users::Users;
use crate::state::Effect;
use crate::state::{snapshot, LogOp};
use crate::util::encode;

/// A group's Raft over this state machine.
pub type Raft = openraft::Raft<C, StateMachine>;

/// A snapshot's payload: in memory (built here, or received), or the
/// group's snapshot file, read only if a follower needs it sent. openraft
/// asks for the current snapshot when a group starts, and uses only its
/// metadata then: read at that point, the payload would hold every model
/// of the shard once more while they load.
#[derive(Debug)]
pub enum SnapshotData {
    Bytes(Vec<u8>),
    /// The folder of the group's snapshot file.
    File(std::path::PathBuf),
}

impl SnapshotData {
    /// The payload of the snapshot `meta` describes, read from its file if
    /// need be (blocking). An error if the file holds another snapshot by
    /// now (a newer one replaced it: openraft asks again).
    pub fn into_bytes(self, meta: &openraft::type_config::alias::SnapshotMetaOf<C>) -> std::io::Result<Vec<u8>> {
        match self {
            SnapshotData::Bytes(b) => Ok(b),
            SnapshotData::File(dir) => match read_snapshot(&dir)? {
                Some((on_disk, payload)) if on_disk == *meta => Ok(payload),
                _ => Err(std::io::Error::other("the snapshot was replaced by a newer one")),
            },
        }
    }
}

/// A shard's applied state, shared with the shard handle that serves reads.
pub struct ShardData {
    pub ks: Keyspace,
    pub last_applied: Option<LogIdOf<C>>,
    pub last_membership: StoredMembershipOf<C>,
    /// Timestamp of the last applied proposal: new proposals never go below it.
    pub last_ts: i64,
    /// The cluster map and users (meta group only; empty in shards).
    pub map: ClusterMap,
    pub users: Users,
    /// Chunked writes whose last part is not applied yet.
    pub chunks: Chunks,
}

/// A snapshot file's layout: its metadata, then its payload (postcard,
/// written in pieces by [`StateMachine::persist`]).
#[cfg(test)]
#[derive(serde::Serialize)]
struct SnapshotFileRef<'a> {
    meta: &'a SnapshotMetaOf<C>,
    data: &'a [u8],
}

#[derive(Clone)]
pub struct StateMachine {
    pub data: Arc<Mutex<ShardData>>,
    dir: PathBuf,
    /// Chunked writes this replica proposed as leader.
    pub local: LocalWrites,
    /// The latest snapshot's metadata; its payload is read from its file
    /// when a follower needs it (a payload holds every model of the shard:
    /// kept in memory it would be one more copy of each).
    current: Arc<Mutex<Option<SnapshotMetaOf<C>>>>,
    /// Held while one entry applies, including the join of a chunked write
    /// that runs without the shard lock: a snapshot (built by a task of its
    /// own) copies the state between entries, never inside one.
    applying: Arc<tokio::sync::Mutex<()>>,
    /// The last log id of the newest snapshot file written: one writer at a
    /// time (a snapshot being built and one being installed both write it),
    /// and an older snapshot never replaces a newer one.
    persisted: Arc<Mutex<Option<LogIdOf<C>>>>,
}

/// Does what applied entries asked of the node ([`Effect`]); `handed` is
/// the model this replica loaded for the write, if it proposed it (the write
/// stores at most one model). If that write failed, it goes unused.
fn carry_out(effects: Vec<Effect>, mut handed: Option<Arc<dyn Model>>) {
    for effect in effects {
        match effect {
            Effect::LoadModel(m) => m.start_loading(handed.take()),
            Effect::CompileScript(s) => s.start_compiling(),
        }
    }
}

/// Starts loading the models, and compiling the scripts, of a keyspace
/// restored from a snapshot.
fn load_models(ks: &Keyspace) {
    let models = ks.models().cloned().map(Effect::LoadModel);
    carry_out(models.chain(ks.scripts().cloned().map(Effect::CompileScript)).collect(), None);
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The start of a snapshot file: `SnapshotFileRef`'s encoding up to its data.
fn snapshot_header(meta: &SnapshotMetaOf<C>, data_len: usize) -> Vec<u8> {
    let mut h = encode(meta);
    h.extend_from_slice(&encode(&data_len));
    h
}

/// Reads the group's snapshot file: its metadata and payload (moved to the
/// front of the buffer the file was read into, not copied).
pub(super) fn read_snapshot(dir: &Path) -> io::Result<Option<(SnapshotMetaOf<C>, Vec<u8>)>> {
    let Some(mut bytes) = read_atomic(&dir.join("snapshot"))? else {
        return Ok(None);
    };
    let (meta, rest) = postcard::take_from_bytes::<SnapshotMetaOf<C>>(&bytes).map_err(invalid)?;
    let (len, data) = postcard::take_from_bytes::<usize>(rest).map_err(invalid)?;
    if data.len() != len {
        return Err(invalid("snapshot file's payload length does not match"));
    }
    let at = bytes.len() - len;
    bytes.drain(..at);
    Ok(Some((meta, bytes)))
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
            users: Users::default(),
            chunks: Chunks::default(),
        };
        let mut current = None;
        if let Some((meta, payload)) = read_snapshot(dir)? {
            let r = snapshot::load(payload.into())?;
            load_models(&r.ks);
            data = ShardData {
                ks: r.ks,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_ts: r.last_ts,
                map: r.map,
                users: r.users,
                chunks: r.chunks,
            };
            current = Some(meta);
        }
        let current_log_id = current.as_ref().and_then(|m| m.last_log_id);
        Ok(StateMachine {
            data: Arc::new(Mutex::new(data)),
            local: LocalWrites::default(),
            dir: dir.to_path_buf(),
            current: Arc::new(Mutex::new(current)),
            applying: Arc::default(),
            persisted: Arc::new(Mutex::new(current_log_id)),
        })
    }

    /// The write whose last part just applied, and the model handed over
    /// for it if any: the write this replica proposed, as it proposed it,
    /// with its model as loaded then; else the parts joined.
    fn completed(
        &self,
        id: u64,
        parts: Vec<bytes::Bytes>,
        local: bool,
    ) -> (Result<LogOp, Reply>, Option<Arc<dyn Model>>) {
        let Some(w) = self.local.take(id) else {
            // (A local write's parts were counted, not kept.)
            return (
                if local {
                    Err(NodeError::ChunkedWriteInterrupted.to_reply())
                } else {
                    crate::util::heavy(|| join(parts))
                },
                None,
            );
        };
        (Ok(w.op), w.loaded)
    }

    /// Writes the snapshot file (laid out as `SnapshotFileRef`) from the
    /// payload's pieces, without joining them; hands them back.
    async fn persist(&self, meta: &SnapshotMetaOf<C>, data: Vec<bytes::Bytes>) -> io::Result<Vec<bytes::Bytes>> {
        let path = self.dir.join("snapshot");
        let header = snapshot_header(meta, data.iter().map(|p| p.len()).sum());
        let (persisted, last) = (self.persisted.clone(), meta.last_log_id);
        tokio::task::spawn_blocking(move || {
            let mut newest = persisted.lock();
            if *newest > last {
                return Ok(data);
            }
            let parts: Vec<&[u8]> = std::iter::once(&header[..]).chain(data.iter().map(|p| &p[..])).collect();
            write_atomic_parts(&path, &parts)?;
            *newest = last;
            Ok(data)
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl RaftSnapshotBuilder<C> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, SnapshotData>, io::Error> {
        // A copy of the state (values are shared, not copied) is taken under
        // the lock and encoded after it: encoding a shard with large models
        // takes long enough to stall every reader (and, on a small runtime,
        // the heartbeats) if done under it.
        let (meta, state) = {
            let _between_entries = self.applying.lock().await;
            let d = self.data.lock();
            let meta = SnapshotMeta { last_log_id: d.last_applied, last_membership: d.last_membership.clone() };
            let mut state = ShardData {
                ks: d.ks.clone(),
                last_applied: d.last_applied,
                last_membership: d.last_membership.clone(),
                last_ts: d.last_ts,
                map: d.map.clone(),
                users: d.users.clone(),
                chunks: d.chunks.clone(),
            };
            drop(d);
            // (Between entries: a local write cannot apply meanwhile.)
            state.chunks.fill_local(&self.local);
            (meta, state)
        };
        let bytes =
            crate::util::heavy(|| snapshot::pieces(state.last_ts, &state.map, &state.users, &state.chunks, &state.ks));
        drop(state);
        self.persist(&meta, bytes).await?;
        *self.current.lock() = Some(meta.clone());
        metrics::counter!("tessera_raft_snapshots_built_total").increment(1);
        // (openraft only reads the metadata of a snapshot it had built.)
        Ok(Snapshot { meta, snapshot: SnapshotData::File(self.dir.clone()) })
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
            let _applying = self.applying.lock().await;
            let mut effects = Vec::new();
            // The model this replica loaded for the write, if it proposed it.
            let mut handed = None;
            let reply = {
                let mut d = self.data.lock();
                let reply = match entry.payload {
                    EntryPayload::Blank => {
                        let (ts, term) = (d.last_ts, entry.log_id.committed_leader_id().term);
                        d.chunks.prune(ts, term);
                        self.local.applying(None, &d.chunks);
                        Reply::Null
                    }
                    EntryPayload::Normal(p) => {
                        // The clock of the state machine never goes backwards,
                        // whatever order concurrent proposals were logged in.
                        let ts = p.ts.max(d.last_ts);
                        d.last_ts = ts;
                        let term = entry.log_id.committed_leader_id().term;
                        d.chunks.prune(ts, term);
                        let part_of = if let LogOp::Chunk { id, .. } = &p.op { Some(*id) } else { None };
                        self.local.applying(part_of, &d.chunks);
                        match p.op {
                            LogOp::Meta(MetaOp::Users(op)) => d.users.apply(&op),
                            LogOp::Meta(op) => d.map.apply(&op),
                            LogOp::Chunk { id, part, parts, data } => {
                                let local = part == 0 && self.local.contains(id);
                                match d.chunks.add_part(id, part, parts, data, ts, term, local) {
                                    None => Reply::Null,
                                    Some(Err(e)) => e,
                                    Some(Ok((parts, local))) => {
                                        // Joined without the lock (it can take a
                                        // while); nothing else changes the state
                                        // meanwhile, and this entry counts as
                                        // applied only once it is. A write this
                                        // replica proposed applies as it was
                                        // proposed, with its model as loaded.
                                        drop(d);
                                        let (op, loaded) = self.completed(id, parts, local);
                                        handed = loaded;
                                        d = self.data.lock();
                                        match op {
                                            Ok(op) => exec::apply_in_term(&mut d.ks, ts, term, op, &mut effects),
                                            Err(e) => e,
                                        }
                                    }
                                }
                            }
                            op => exec::apply_in_term(&mut d.ks, ts, term, op, &mut effects),
                        }
                    }
                    EntryPayload::Membership(m) => {
                        d.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Reply::Null
                    }
                };
                d.last_applied = Some(entry.log_id);
                reply
            };
            carry_out(effects, handed);
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
        // Written first and restored after, so that its models' bytes are
        // all that holds the buffer when they are laid out in it (a payload
        // that does not restore is then on disk: it is an error for this
        // node either way).
        let bytes = self.persist(meta, vec![snapshot.into_bytes(meta)?.into()]).await?.pop().unwrap_or_default();
        let r = crate::util::heavy(move || snapshot::load(bytes))?;
        load_models(&r.ks);
        {
            let mut d = self.data.lock();
            *d = ShardData {
                ks: r.ks,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_ts: r.last_ts,
                map: r.map,
                users: r.users,
                chunks: r.chunks,
            };
        }
        *self.current.lock() = Some(meta.clone());
        metrics::counter!("tessera_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, SnapshotData>>, io::Error> {
        let Some(meta) = self.current.lock().clone() else { return Ok(None) };
        Ok(Some(Snapshot { meta, snapshot: SnapshotData::File(self.dir.clone()) }))
    }
}

#[cfg(test)]
mod tests;
