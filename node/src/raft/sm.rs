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
use serde::{Deserialize, Serialize};
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;

use super::logfile::{read_atomic, write_atomic_parts};
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
    /// Chunked writes whose last part is not applied yet.
    pub chunks: Chunks,
}

/// How long the parts of an unfinished chunked write are kept (by entry
/// timestamps): a leader that died mid-way never logs the rest.
const CHUNKS_KEPT_MS: i64 = 5 * 60 * 1000;

/// Parts of chunked writes being assembled, by write id. Part of the
/// snapshot, so a replica that installs one mid-write can finish it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Chunks {
    pending: std::collections::BTreeMap<u64, Pending>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pending {
    parts: u32,
    started: i64,
    /// The term its parts were logged in: a leader logs all of a write's
    /// parts in its own term, so once an entry of a later term applies,
    /// the rest can never come.
    term: u64,
    data: Vec<bytes::Bytes>,
    /// A write this replica proposed (see [`LocalWrite`]): its parts are
    /// counted, not kept. Never in a snapshot (filled in for one).
    #[serde(skip)]
    local: bool,
}

impl Chunks {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets the parts of writes that can no longer finish, before an
    /// entry of `term` (logged at `ts`) applies: those logged in an earlier
    /// term (their leader lost its leadership; the next leader's first
    /// entry drops them), and those started more than [`CHUNKS_KEPT_MS`]
    /// before `ts` (a leader that stopped logging them). Called for every
    /// applied entry, so an interrupted write's parts leave memory (and
    /// snapshots) at once, not when another chunked write comes.
    pub fn prune(&mut self, ts: i64, term: u64) {
        if !self.pending.is_empty() {
            self.pending.retain(|_, p| p.term >= term && p.started >= ts - CHUNKS_KEPT_MS);
        }
    }

    /// Appends this value's encoding (postcard's) to `out`, sharing the
    /// parts' bytes rather than copying them.
    fn encode_to(&self, out: &mut super::Pieces) {
        let mut head = Vec::new();
        tessera_common::put_varint(&mut head, self.pending.len() as u64);
        for (id, w) in &self.pending {
            head.extend_from_slice(&encode(id));
            let mut fields =
                encode(&Pending { parts: w.parts, started: w.started, term: w.term, data: Vec::new(), local: false });
            // The parts are a write's last field: the empty list's length
            // (one zero byte) ends the encoding, and the parts take its place.
            assert_eq!(fields.pop(), Some(0), "a pending write's parts end its encoding");
            head.extend_from_slice(&fields);
            tessera_common::put_varint(&mut head, w.data.len() as u64);
            for part in &w.data {
                tessera_common::put_varint(&mut head, part.len() as u64);
                out.extend(&std::mem::take(&mut head));
                out.share(part);
            }
        }
        out.extend(&head);
    }

    /// Adds one part (logged at `ts` in `term`). The last part yields every
    /// part, to [`join`]; a part out of order drops its write (an error
    /// reply).
    pub fn add(
        &mut self,
        id: u64,
        part: u32,
        parts: u32,
        data: bytes::Bytes,
        ts: i64,
        term: u64,
    ) -> Option<Result<Vec<bytes::Bytes>, Reply>> {
        self.add_part(id, part, parts, data, ts, term, false).map(|r| r.map(|(data, _)| data))
    }

    /// [`Chunks::add`], for a write that is `local` (this replica proposed
    /// it and keeps it whole: its parts are only counted) if this is its
    /// first part. The last part yields the parts and whether it is local.
    #[allow(clippy::too_many_arguments)]
    fn add_part(
        &mut self,
        id: u64,
        part: u32,
        parts: u32,
        data: bytes::Bytes,
        ts: i64,
        term: u64,
        local: bool,
    ) -> Option<Result<(Vec<bytes::Bytes>, bool), Reply>> {
        self.prune(ts, term);
        if part == 0 {
            self.pending.insert(id, Pending { parts, started: ts, term, data: Vec::new(), local });
        }
        let Some(p) = self.pending.get_mut(&id).filter(|p| p.parts == parts && p.data.len() == part as usize) else {
            self.pending.remove(&id);
            return Some(Err(Reply::err(INTERRUPTED)));
        };
        p.data.push(if p.local { bytes::Bytes::new() } else { data });
        if part + 1 < parts {
            return None;
        }
        let p = self.pending.remove(&id).expect("present");
        Some(Ok((p.data, p.local)))
    }

    /// Gives the local writes among these their parts (from `local`), or
    /// drops them if `local` no longer has them: for a snapshot.
    fn fill_local(&mut self, local: &LocalWrites) {
        self.pending.retain(|id, p| {
            if !p.local {
                return true;
            }
            match local.parts_of(*id, p.data.len()) {
                Some(parts) => {
                    (p.data, p.local) = (parts, false);
                    true
                }
                None => false,
            }
        });
    }
}

/// A chunked write this replica proposed as leader, until its last part
/// applies here: the write itself (its parts are slices of its model's
/// bytes) and its model, loaded when the leader checked it. It then
/// applies as it is, and the model as it was loaded: the parts are not
/// joined into a second copy of the model, nor is the model loaded again.
pub struct LocalWrite {
    pub op: LogOp,
    pub loaded: Option<Arc<dyn tessera_backend::Model>>,
    /// The term its parts were logged in, once one applied here (the rest
    /// can never come once an entry of a later term applies).
    term: Option<u64>,
    at: std::time::Instant,
}

/// Chunked writes this replica proposed, by write id (see [`LocalWrite`]).
#[derive(Clone, Default)]
pub struct LocalWrites(Arc<Mutex<std::collections::HashMap<u64, LocalWrite>>>);

impl LocalWrites {
    /// Keeps `op` (and its loaded model) for write `id`; forgets writes
    /// none of whose parts applied here in [`CHUNKS_KEPT_MS`] (a write
    /// whose first part applied goes with its parts, see
    /// [`LocalWrites::applying`]).
    pub fn insert(&self, id: u64, op: LogOp, loaded: Option<Arc<dyn tessera_backend::Model>>) {
        let mut m = self.0.lock();
        m.retain(|_, w| w.term.is_some() || w.at.elapsed().as_millis() < CHUNKS_KEPT_MS as u128);
        m.insert(id, LocalWrite { op, loaded, term: None, at: std::time::Instant::now() });
    }

    /// Forgets write `id` (its proposal failed).
    pub fn remove(&self, id: u64) {
        self.0.lock().remove(&id);
    }

    /// Before an entry of `term` applies (`chunks` pruned for it): notes
    /// the term of a write whose part it is, and forgets writes whose
    /// parts `chunks` no longer holds (dropped there, on every replica
    /// alike, by term or by age). A write whose first part applied thus
    /// stays exactly as long as its unfinished parts do: whether its last
    /// part applies here as proposed or fails is what it is elsewhere.
    fn applying(&self, term: u64, part_of: Option<u64>, chunks: &Chunks) {
        let mut m = self.0.lock();
        if m.is_empty() {
            return;
        }
        if let Some(w) = part_of.and_then(|id| m.get_mut(&id)) {
            w.term.get_or_insert(term);
        }
        m.retain(|id, w| w.term.is_none() || part_of == Some(*id) || chunks.pending.contains_key(id));
    }

    fn take(&self, id: u64) -> Option<LocalWrite> {
        self.0.lock().remove(&id)
    }

    fn contains(&self, id: u64) -> bool {
        self.0.lock().contains_key(&id)
    }

    /// The first `n` parts of write `id`, as the leader logged them.
    fn parts_of(&self, id: u64, n: usize) -> Option<Vec<bytes::Bytes>> {
        let m = self.0.lock();
        let mut parts = super::encode_parts(&m.get(&id)?.op, crate::shard::CHUNK_BYTES);
        parts.truncate(n);
        Some(parts)
    }

    pub fn len(&self) -> usize {
        self.0.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Joins the parts of a chunked write and decodes it. Each part is dropped
/// once copied, and a model blob in the write stays where the join put it
/// (a slice, see [`tessera_common::shared`]), laid out there for its
/// runtime ([`crate::models::arrange`]): about one copy of the write in
/// memory at any time. Takes a while for a large model: the caller holds no
/// lock.
pub fn join(parts: Vec<bytes::Bytes>) -> Result<LogOp, Reply> {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut whole = Vec::with_capacity(len + tessera_common::blob::layout_room(len));
    for p in parts {
        whole.extend_from_slice(&p);
    }
    let whole = bytes::Bytes::from(whole);
    let mut op = match tessera_common::shared::decode::<LogOp>(&whole) {
        Ok(op @ (LogOp::Command(_) | LogOp::Fenced { .. })) => op,
        Ok(_) => return Err(Reply::err("ERR a chunked write must carry a command")),
        Err(e) => return Err(Reply::err(format!("ERR chunked write does not decode: {e}"))),
    };
    // The model's bytes are now all that holds the buffer.
    drop(whole);
    if let LogOp::Command(NodeCommand::ModelStore { model, .. }) = &mut op {
        crate::models::arrange(model);
    }
    Ok(op)
}

/// Applies `op`, logged in `term`; a fenced command only in its own term.
fn apply_in_term(ks: &mut crate::keyspace::Keyspace, ts: i64, term: u64, op: LogOp) -> Reply {
    match op {
        LogOp::Fenced { term: fence, cmd } if fence == term => exec::apply(ks, ts, &LogOp::Command(cmd)),
        LogOp::Fenced { .. } => Reply::err(FENCED_OUT),
        op => exec::apply(ks, ts, &op),
    }
}

/// The answer to a chunked write whose parts can no longer all apply.
const INTERRUPTED: &str = "TRYAGAIN chunked write interrupted; the command did not run";

/// The answer to a fenced write logged after leadership changed.
pub const FENCED_OUT: &str = "TRYAGAIN leadership changed while the model ran; its outputs were not written";

/// A snapshot file's layout: its metadata, then its payload (postcard,
/// written in pieces by [`StateMachine::persist`]).
#[cfg(test)]
#[derive(Serialize)]
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

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Snapshot payload: `last_ts`, then the cluster map and the unfinished
/// chunked writes (each a length and its encoding), then the keyspace dump;
/// as pieces that share the models' bytes and the writes' parts (the file
/// is written from them: a shard's models are never copied into one buffer).
fn snapshot_pieces(d: &ShardData) -> Vec<bytes::Bytes> {
    let mut out = super::Pieces::default();
    out.extend(&d.last_ts.to_le_bytes());
    let map = encode(&d.map);
    out.extend(&(map.len() as u64).to_le_bytes());
    out.extend(&map);
    let size = postcard::experimental::serialized_size(&d.chunks).expect("chunks always serialize");
    out.extend(&(size as u64).to_le_bytes());
    let before = out.len();
    d.chunks.encode_to(&mut out);
    debug_assert_eq!(out.len() - before, size, "chunks encoded as postcard does");
    d.ks.dump_to(&mut out);
    out.finish()
}

/// Restores a snapshot payload; model blobs stay in `b` (slices of it, see
/// [`Keyspace::load_shared`]).
fn load_snapshot_bytes(b: bytes::Bytes) -> io::Result<(i64, ClusterMap, Chunks, Keyspace)> {
    let truncated = || invalid("snapshot is truncated");
    let word = |at: usize| -> io::Result<u64> {
        let bytes = b.get(at..at + 8).ok_or_else(truncated)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    };
    let ts = word(0)? as i64;
    let mut at = 8usize;
    let mut section = || -> io::Result<&[u8]> {
        let len = usize::try_from(word(at)?).map_err(invalid)?;
        let s = b.get(at + 8..(at + 8).saturating_add(len)).ok_or_else(truncated)?;
        at += 8 + len;
        Ok(s)
    };
    let map = decode(section()?)?;
    let chunks = decode(section()?)?;
    let dump = b.slice(at..);
    drop(b);
    Ok((ts, map, chunks, Keyspace::load_shared(dump).map_err(invalid)?))
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
            chunks: Chunks::default(),
        };
        let mut current = None;
        if let Some((meta, payload)) = read_snapshot(dir)? {
            let (ts, map, chunks, ks) = load_snapshot_bytes(payload.into())?;
            data = ShardData {
                ks,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_ts: ts,
                map,
                chunks,
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
            let state = ShardData {
                ks: d.ks.clone(),
                last_applied: d.last_applied,
                last_membership: d.last_membership.clone(),
                last_ts: d.last_ts,
                map: d.map.clone(),
                chunks: d.chunks.clone(),
            };
            drop(d);
            // (Between entries: a local write cannot apply meanwhile.)
            let mut state = state;
            state.chunks.fill_local(&self.local);
            (meta, state)
        };
        let bytes = super::heavy(|| snapshot_pieces(&state));
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
            let reply = {
                let mut d = self.data.lock();
                let reply = match entry.payload {
                    EntryPayload::Blank => {
                        let (ts, term) = (d.last_ts, entry.log_id.committed_leader_id().term);
                        d.chunks.prune(ts, term);
                        self.local.applying(term, None, &d.chunks);
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
                        self.local.applying(term, part_of, &d.chunks);
                        match p.op {
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
                                        let mut handed = None;
                                        let op = match self.local.take(id) {
                                            Some(w) => {
                                                drop(parts);
                                                if let (
                                                    Some(m),
                                                    LogOp::Command(NodeCommand::ModelStore { model, .. }),
                                                ) = (w.loaded, &w.op)
                                                {
                                                    crate::models::registry().hand_over(model, m);
                                                    handed = Some(model.clone());
                                                }
                                                Ok(w.op)
                                            }
                                            // Its parts were not kept.
                                            None if local => Err(Reply::err(INTERRUPTED)),
                                            None => super::heavy(|| join(parts)),
                                        };
                                        d = self.data.lock();
                                        let reply = match op {
                                            Ok(op) => apply_in_term(&mut d.ks, ts, term, op),
                                            Err(e) => e,
                                        };
                                        // Not taken (the store failed): not kept.
                                        if let Some(def) = handed {
                                            crate::models::registry().forget_handed(&def);
                                        }
                                        reply
                                    }
                                }
                            }
                            op => apply_in_term(&mut d.ks, ts, term, op),
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
        let (ts, map, chunks, ks) = super::heavy(move || load_snapshot_bytes(bytes))?;
        {
            let mut d = self.data.lock();
            *d = ShardData {
                ks,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
                last_ts: ts,
                map,
                chunks,
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
mod tests {
    use bytes::Bytes;
    use tessera_common::command::NodeCommand;

    use super::*;

    fn parts(op: &LogOp, n: usize) -> Vec<Bytes> {
        let whole = Bytes::from(encode(op));
        let size = whole.len().div_ceil(n);
        (0..n).map(|i| whole.slice(i * size..((i + 1) * size).min(whole.len()))).collect()
    }

    #[test]
    fn chunks_assemble_in_order_and_interrupted_writes_are_dropped() {
        let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from("k"); 100] });
        let p = parts(&op, 3);
        let mut c = Chunks::default();
        assert!(c.add(1, 0, 3, p[0].clone(), 10, 1).is_none());
        assert!(c.add(1, 1, 3, p[1].clone(), 11, 1).is_none());
        assert_eq!(join(c.add(1, 2, 3, p[2].clone(), 12, 1).unwrap().unwrap()).unwrap(), op);
        assert!(c.is_empty());
        // A part out of order (a new leader's retry) drops the write.
        assert!(c.add(2, 0, 3, p[0].clone(), 20, 1).is_none());
        assert!(matches!(c.add(2, 2, 3, p[2].clone(), 21, 1), Some(Err(_))));
        assert!(c.is_empty());
        // An abandoned write is forgotten once its parts are old.
        assert!(c.add(3, 0, 3, p[0].clone(), 30, 1).is_none());
        assert!(c.add(4, 0, 3, p[0].clone(), 30 + CHUNKS_KEPT_MS + 1, 1).is_none());
        assert_eq!(c.len(), 1);
        // Any later entry forgets it too (each applied entry prunes).
        c.prune(30 + 2 * CHUNKS_KEPT_MS, 1);
        assert_eq!(c.len(), 1, "write 4 started later");
        c.prune(31 + 2 * CHUNKS_KEPT_MS + 1, 1);
        assert!(c.is_empty());
        // A write whose leader lost its leadership is forgotten as soon as
        // an entry of a later term applies (the next leader's first); a
        // part of it logged after that is an error, never half a write.
        assert!(c.add(5, 0, 3, p[0].clone(), 40, 7).is_none());
        c.prune(41, 7);
        assert_eq!(c.len(), 1, "same term: it may go on");
        c.prune(42, 8);
        assert!(c.is_empty());
        assert!(matches!(c.add(5, 1, 3, p[1].clone(), 43, 9), Some(Err(_))));
    }

    #[test]
    fn a_snapshot_shares_its_large_bytes_and_reads_back() {
        let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from(vec![7u8; 100_000]); 3] });
        let p = parts(&op, 3);
        let mut chunks = Chunks::default();
        assert!(chunks.add(9, 0, 3, p[0].clone(), 10, 2).is_none());
        assert!(chunks.add(9, 1, 3, p[1].clone(), 10, 2).is_none());
        assert!(chunks.add(4, 0, 5, Bytes::from_static(b"tiny"), 11, 2).is_none());
        let mut out = crate::raft::Pieces::default();
        chunks.encode_to(&mut out);
        let pieces = out.finish();
        assert_eq!(pieces.concat(), encode(&chunks), "postcard's encoding");
        assert!(pieces.iter().any(|x| x.as_ptr() == p[1].as_ptr()), "a large part is shared, not copied");
        let mut ks = Keyspace::new();
        exec::apply(&mut ks, 1, &LogOp::Command(NodeCommand::Del { keys: vec![] }));
        let d = ShardData {
            ks,
            last_applied: None,
            last_membership: StoredMembership::default(),
            last_ts: 77,
            map: ClusterMap::default(),
            chunks,
        };
        let (ts, _, back, _) = load_snapshot_bytes(snapshot_pieces(&d).concat().into()).unwrap();
        assert_eq!((ts, back.len()), (77, 2));
        assert_eq!(encode(&back), encode(&d.chunks));
    }

    #[test]
    fn a_local_write_keeps_no_parts_and_a_snapshot_gets_them() {
        let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from(vec![7u8; 100_000]); 100] });
        let p = crate::raft::encode_parts(&op, crate::shard::CHUNK_BYTES);
        assert!(p.len() >= 3);
        let local = LocalWrites::default();
        local.insert(5, op.clone(), None);
        let (mut mine, mut theirs) = (Chunks::default(), Chunks::default());
        assert!(mine.add_part(5, 0, p.len() as u32, p[0].clone(), 1, 1, true).is_none());
        assert!(mine.add_part(5, 1, p.len() as u32, p[1].clone(), 1, 1, false).is_none());
        for (i, part) in p.iter().enumerate().take(2) {
            assert!(theirs.add(5, i as u32, p.len() as u32, part.clone(), 1, 1).is_none());
        }
        assert!(mine.pending[&5].data.iter().all(|d| d.is_empty()), "counted, not kept");
        // A snapshot taken now holds the parts, as another replica's does.
        let mut snap = mine.clone();
        snap.fill_local(&local);
        assert_eq!(encode(&snap), encode(&theirs));
        // The last part yields the write as local; without its local copy
        // (never: only after a term change drops both) it is dropped.
        let last = p.len() - 1;
        for i in 2..last {
            assert!(mine.add_part(5, i as u32, p.len() as u32, p[i].clone(), 1, 1, false).is_none());
        }
        let done = mine.add_part(5, last as u32, p.len() as u32, p[last].clone(), 1, 1, false);
        assert!(matches!(done, Some(Ok((_, true)))));
        local.remove(5);
        let mut gone = Chunks::default();
        assert!(gone.add_part(6, 0, 3, p[0].clone(), 1, 1, true).is_none());
        gone.fill_local(&local);
        assert!(gone.is_empty(), "a local write whose copy is gone is not snapshotted half");
    }

    #[test]
    fn the_snapshot_file_is_written_in_pieces_and_read_back_in_place() {
        let dir = std::env::temp_dir().join(format!("tessera-sm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        super::super::logfile::write_atomic_parts(&dir.join("snapshot"), &[&snapshot_header(&meta, data.len()), &data])
            .unwrap();
        // The layout files had before, so they stay readable.
        let file = read_atomic(&dir.join("snapshot")).unwrap().unwrap();
        assert_eq!(file, encode(&SnapshotFileRef { meta: &meta, data: &data }));
        let (back, payload) = read_snapshot(&dir).unwrap().unwrap();
        assert_eq!((back, payload), (meta, data));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The store of an ONNX model for the CPU whose bytes are `blob`.
    fn onnx_store(blob: Vec<u8>) -> LogOp {
        let model = tessera_common::model::ModelDef {
            backend: tessera_common::model::BackendKind::Onnx,
            device_name: "CPU".into(),
            device: tessera_common::model::Device::Cpu(None),
            tag: Bytes::new(),
            batchsize: 0,
            minbatchsize: 0,
            minbatchtimeout: 0,
            inputs: vec![],
            outputs: vec![],
            blob: Bytes::from(blob).into(),
        };
        LogOp::Command(NodeCommand::ModelStore { key: Bytes::from("m"), model })
    }

    #[test]
    fn a_chunked_model_store_keeps_its_blob_in_the_joined_parts() {
        let op = onnx_store(vec![9u8; 10_000]);
        let mut c = Chunks::default();
        let p = parts(&op, 4);
        for (i, part) in p.iter().enumerate().take(3) {
            assert!(c.add(1, i as u32, 4, part.clone(), 1, 1).is_none());
        }
        let joined = c.add(1, 3, 4, p[3].clone(), 1, 1).map(|parts| join(parts.unwrap()));
        let Some(Ok(LogOp::Command(NodeCommand::ModelStore { model, .. }))) = joined else {
            panic!("the last part yields the model store");
        };
        assert_eq!(model.blob, vec![9u8; 10_000][..]);
        // Not in any of the parts: a slice of the one buffer they were joined in.
        let at = model.blob.parts()[0].as_ptr() as usize;
        assert!(p.iter().all(|p| !(p.as_ptr() as usize..p.as_ptr() as usize + p.len()).contains(&at)));
    }

    /// An ONNX model whose weights lie misaligned comes out of the join
    /// laid out for ONNX Runtime in the join's own buffer: the same bytes,
    /// as parts, each weight at a 64-byte boundary (so its load copies
    /// nothing).
    #[cfg(feature = "onnx")]
    #[test]
    fn a_joined_onnx_model_is_laid_out_where_it_was_joined() {
        let bytes = tessera_tests::onnx::embeddings(8, 256, 64);
        let op = onnx_store(bytes.clone());
        let Ok(LogOp::Command(NodeCommand::ModelStore { model, .. })) = join(parts(&op, 3)) else {
            panic!("the parts join into the model store");
        };
        assert!(model.blob == bytes[..], "the same bytes");
        let parts = model.blob.parts();
        assert_eq!(parts.len(), 17, "eight tables and the bytes around them");
        assert!(parts.iter().skip(1).step_by(2).all(|w| (w.as_ptr() as usize).is_multiple_of(64)));
        // One buffer: each part lies after the one before it.
        assert!(parts.windows(2).all(|w| w[1].as_ptr() as usize >= w[0].as_ptr() as usize + w[0].len()));
        let span = parts[16].as_ptr() as usize + parts[16].len() - parts[0].as_ptr() as usize;
        assert!(span <= bytes.len() + tessera_common::blob::layout_room(bytes.len()));
    }

    #[test]
    fn a_fenced_write_applies_only_in_its_term() {
        let set = |v: &str| NodeCommand::Set {
            key: Bytes::from("k"),
            value: Bytes::from(v.to_owned()),
            expire: None,
            keep_ttl: false,
            cond: tessera_common::command::node::SetCond::Always,
            get: false,
        };
        let mut ks = crate::keyspace::Keyspace::default();
        let get = |ks: &crate::keyspace::Keyspace| match ks.get(b"k", 0).map(|e| &e.value) {
            Some(crate::keyspace::Value::Str(s)) => Some(s.clone()),
            _ => None,
        };
        assert_eq!(apply_in_term(&mut ks, 0, 5, LogOp::Fenced { term: 5, cmd: set("a") }), Reply::ok());
        assert_eq!(get(&ks), Some(Bytes::from("a")));
        // Logged by a later leader of the same node: refused, nothing written.
        assert_eq!(apply_in_term(&mut ks, 0, 6, LogOp::Fenced { term: 5, cmd: set("b") }), Reply::err(FENCED_OUT));
        assert_eq!(get(&ks), Some(Bytes::from("a")));
        // Chunked: the assembled operation keeps its fence.
        let op = LogOp::Fenced { term: 6, cmd: set("c") };
        let p = parts(&op, 2);
        let mut c = Chunks::default();
        assert!(c.add(1, 0, 2, p[0].clone(), 1, 1).is_none());
        let whole = join(c.add(1, 1, 2, p[1].clone(), 1, 1).unwrap().unwrap()).unwrap();
        assert_eq!(apply_in_term(&mut ks, 0, 6, whole), Reply::ok());
        assert_eq!(get(&ks), Some(Bytes::from("c")));
    }
}
