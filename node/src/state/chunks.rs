//! Writes too large for one log entry: their parts as they apply
//! ([`Chunks`]), their join, and the writes this replica proposed itself
//! ([`LocalWrites`]).

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;

use super::LogOp;
use crate::util::encode;

/// Largest log entry a write becomes; larger writes are chunked.
pub const CHUNK_BYTES: usize = 4 << 20;

/// The answer to a chunked write whose parts can no longer all apply.
pub(crate) const INTERRUPTED: &str = "TRYAGAIN chunked write interrupted; the command did not run";

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
        Ok(_) => return Err(Reply::err("ERR a chunked write must carry a command")),
        Err(e) => return Err(Reply::err(format!("ERR chunked write does not decode: {e}"))),
    };
    // The model's bytes are now all that holds the buffer.
    drop(whole);
    if let LogOp::Command(NodeCommand::ModelStore { model, .. }) = &mut op {
        crate::engine::model::arrange(model);
    }
    Ok(op)
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::Bytes;

    use super::*;

    /// `op` encoded and cut into `n` parts.
    pub(crate) fn parts(op: &LogOp, n: usize) -> Vec<Bytes> {
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
    fn a_local_write_keeps_no_parts_and_a_snapshot_gets_them() {
        let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from(vec![7u8; 100_000]); 100] });
        let p = crate::state::encode_parts(&op, CHUNK_BYTES);
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
}
