//! Writes too large for one log entry: their parts as they apply
//! ([`Chunks`]), their join, and the writes this replica proposed itself
//! ([`LocalWrites`]).

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;

use super::LogOp;
use crate::error::Error;
use crate::util::encode;

/// Largest log entry a write becomes; larger writes are chunked.
pub const CHUNK_BYTES: usize = 4 << 20;

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
    pub(crate) fn encode_to(&self, out: &mut crate::data::Pieces) {
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
    #[cfg(test)]
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
    pub(crate) fn add_part(
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
            return Some(Err(Error::ChunkedWriteInterrupted.to_reply()));
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
    pub(crate) fn fill_local(&mut self, local: &LocalWrites) {
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
    /// Whether one of its parts applied here (from then on it goes with
    /// its unfinished parts, see [`LocalWrites::applying`]).
    applied: bool,
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
        m.retain(|_, w| w.applied || w.at.elapsed().as_millis() < CHUNKS_KEPT_MS as u128);
        m.insert(id, LocalWrite { op, loaded, applied: false, at: std::time::Instant::now() });
    }

    /// Forgets write `id` (its proposal failed).
    pub fn remove(&self, id: u64) {
        self.0.lock().remove(&id);
    }

    /// Before an entry applies (`chunks` pruned for it): marks the write
    /// it is a part of, and forgets writes whose parts `chunks` no longer
    /// holds (dropped there, on every replica alike, by term or by age). A
    /// write whose first part applied thus stays exactly as long as its
    /// unfinished parts do: whether its last part applies here as proposed
    /// or fails is what it is elsewhere.
    pub(crate) fn applying(&self, part_of: Option<u64>, chunks: &Chunks) {
        let mut m = self.0.lock();
        if m.is_empty() {
            return;
        }
        if let Some(w) = part_of.and_then(|id| m.get_mut(&id)) {
            w.applied = true;
        }
        m.retain(|id, w| !w.applied || part_of == Some(*id) || chunks.pending.contains_key(id));
    }

    pub(crate) fn take(&self, id: u64) -> Option<LocalWrite> {
        self.0.lock().remove(&id)
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.0.lock().contains_key(&id)
    }

    /// The first `n` parts of write `id`, as the leader logged them.
    pub(crate) fn parts_of(&self, id: u64, n: usize) -> Option<Vec<bytes::Bytes>> {
        let m = self.0.lock();
        let mut parts = super::encode_parts(&m.get(&id)?.op, CHUNK_BYTES);
        parts.truncate(n);
        Some(parts)
    }
}

/// Joins the parts of a chunked write and decodes it. Each part is dropped
/// once copied, and a model blob in the write stays where the join put it
/// (a slice, see [`tessera_common::shared`]), laid out there for its
/// runtime ([`crate::engine::model::arrange`]): about one copy of the write in
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
        Ok(_) => return Err(Error::Internal("a chunked write must carry a command").to_reply()),
        Err(e) => return Err(Error::ChunkDecode(e.to_string()).to_reply()),
    };
    // The model's bytes are now all that holds the buffer.
    drop(whole);
    if let LogOp::Command(NodeCommand::ModelStore { model, .. }) = &mut op {
        crate::engine::model::arrange(model);
    }
    Ok(op)
}

#[cfg(test)]
pub(crate) mod tests;
