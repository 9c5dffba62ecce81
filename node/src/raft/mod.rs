//! Everything openraft (`=0.10.0-alpha.37`) touches lives in this module: the
//! type configuration, our durable log store ([`store`]), the state machine
//! over a shard's keyspace ([`sm`]), and the node-to-node network
//! ([`network`]: client; [`transport`]: server). Nothing outside this module
//! names an openraft type.

pub mod chunks;
pub mod logfile;
pub mod network;
pub mod sm;
pub mod store;
pub mod transport;
pub mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;

/// What a log entry asks the state machine to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogOp {
    Command(NodeCommand),
    /// Remove every key whose deadline is at or before the entry's timestamp.
    PurgeExpired,
    /// A change to the cluster map (meta group only).
    Meta(crate::meta::MetaOp),
    /// One part of an operation too large for one entry: the encoded
    /// operation cut into `parts` pieces, logged in order; the last part
    /// applies the whole (see [`chunks::Chunks`]).
    Chunk {
        id: u64,
        part: u32,
        parts: u32,
        data: bytes::Bytes,
    },
    /// A command that applies only if it was logged in `term`: the outputs
    /// of a model run whose inputs were read on the leader of `term` without
    /// a quorum round first. If the entry commits in that term, no newer
    /// leader can have acknowledged a write the run did not see; an entry
    /// of another term is refused, deterministically, on every replica.
    Fenced {
        term: u64,
        cmd: NodeCommand,
    },
}

/// One proposal: an operation and the leader-assigned timestamp (Unix ms)
/// that is the state machine's only clock while applying it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub ts: i64,
    pub op: LogOp,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            LogOp::Command(c) => write!(f, "{}@{}", c.name(), self.ts),
            LogOp::Fenced { term, cmd } => write!(f, "{} in term {term}@{}", cmd.name(), self.ts),
            LogOp::PurgeExpired => write!(f, "purge-expired@{}", self.ts),
            LogOp::Meta(op) => write!(f, "meta {op:?}@{}", self.ts),
            LogOp::Chunk { id, part, parts, data } => {
                write!(f, "chunk {id:x} {}/{parts} ({} bytes)@{}", part + 1, data.len(), self.ts)
            }
        }
    }
}

/// A node as Raft members know it: its gRPC address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = u64,
        Node = NodeAddr,
);

pub type C = TypeConfig;
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
            SnapshotData::File(dir) => match sm::read_snapshot(&dir)? {
                Some((on_disk, payload)) if on_disk == *meta => Ok(payload),
                _ => Err(std::io::Error::other("the snapshot was replaced by a newer one")),
            },
        }
    }
}
pub type Raft = openraft::Raft<C, sm::StateMachine>;
pub use openraft::Config as RaftConfig;

/// Encodes an openraft message for the wire.
/// Runs `f`, which may take a while (copying or decoding hundreds of MB),
/// without stalling the other tasks of this runtime worker: on the
/// multi-threaded runtime they move to another worker meanwhile, so
/// heartbeats keep flowing while a large model is decoded.
pub fn heavy<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// [`heavy`] for async code: `f(v)` runs on the blocking pool, so the task
/// awaiting it goes on polling whatever else it drives (a session lane's
/// other commands) meanwhile.
pub async fn heavy_off<T: Send + 'static, R: Send + 'static>(v: T, f: impl FnOnce(T) -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(move || f(v)).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Sizes above which [`heavy`] is worth its cost.
pub const HEAVY_BYTES: usize = 4 << 20;

/// `v`'s postcard encoding, in a buffer sized for it first: grown from
/// empty, a write's tensor was copied by each of about ten reallocations,
/// once for the log and once per follower (a tenth of a leader's time under
/// load went to those copies and to faulting in the pages they landed on).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(v).unwrap_or(0);
    postcard::to_extend(v, Vec::with_capacity(size)).expect("raft messages always serialize")
}

/// A model store with its model's bytes left out, and those bytes.
fn blob_apart(op: &LogOp) -> Option<(LogOp, &tessera_common::blob::Blob)> {
    match op {
        LogOp::Command(NodeCommand::ModelStore { key, model }) => {
            let head = tessera_common::model::ModelDef { blob: Default::default(), ..model.clone() };
            Some((LogOp::Command(NodeCommand::ModelStore { key: key.clone(), model: head }), &model.blob))
        }
        _ => None,
    }
}

/// The size of `op`'s encoding ([`encode`]), without encoding a model's
/// bytes (serde hands bytes held in parts over a byte at a time).
pub fn encoded_size(op: &LogOp) -> usize {
    match blob_apart(op) {
        Some((head, blob)) => {
            postcard::experimental::serialized_size(&head).unwrap_or(1) - 1
                + tessera_common::varint_len(blob.len() as u64)
                + blob.len()
        }
        None => postcard::experimental::serialized_size(op).unwrap_or(0),
    }
}

/// `op`'s encoding ([`encode`]) cut into parts of `size` bytes that share
/// a model's bytes rather than copy them: a part that lies inside one of
/// the bytes' pieces is a slice of it; a part across pieces, or with the
/// op's other fields, is a copy, and so is a last part shorter than `size`
/// (kept in memory with the log's small entries, a slice would keep the
/// whole buffer alive).
pub fn encode_parts(op: &LogOp, size: usize) -> Vec<bytes::Bytes> {
    let pieces: Vec<bytes::Bytes> = match blob_apart(op) {
        Some((head, blob)) => {
            let mut head = encode(&head);
            // The model's bytes are the op's last field: the empty ones'
            // length (one zero byte) ends the encoding, and the bytes take
            // its place.
            assert_eq!(head.pop(), Some(0), "a model's bytes end a model store's encoding");
            tessera_common::put_varint(&mut head, blob.len() as u64);
            std::iter::once(head.into()).chain(blob.parts().iter().cloned()).collect()
        }
        None => vec![encode(op).into()],
    };
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut parts = Vec::with_capacity(total.div_ceil(size.max(1)));
    // Where the next byte is: a piece (none is empty), and a place in it.
    let (mut piece, mut at) = (0, 0);
    for start in (0..total).step_by(size.max(1)) {
        let len = size.min(total - start);
        if at == pieces[piece].len() {
            (piece, at) = (piece + 1, 0);
        }
        if len == size && pieces[piece].len() - at >= len {
            parts.push(pieces[piece].slice(at..at + len));
            at += len;
            continue;
        }
        let mut part = Vec::with_capacity(len);
        while part.len() < len {
            if at == pieces[piece].len() {
                (piece, at) = (piece + 1, 0);
            }
            let take = (len - part.len()).min(pieces[piece].len() - at);
            part.extend_from_slice(&pieces[piece][at..at + take]);
            at += take;
        }
        parts.push(part.into());
    }
    parts
}

/// Bytes to be written as pieces (a snapshot file): small ones gathered
/// into buffers, large shared ones kept as they are, so that writing a
/// shard's models copies none of them into memory first.
#[derive(Default)]
pub struct Pieces {
    done: Vec<bytes::Bytes>,
    small: Vec<u8>,
    len: usize,
}

/// Shared bytes at least this long become pieces of their own.
const SHARED_PIECE_BYTES: usize = 64 << 10;

impl Pieces {
    /// Appends a copy of `b`.
    pub fn extend(&mut self, b: &[u8]) {
        self.small.extend_from_slice(b);
        self.len += b.len();
    }

    /// Appends `b`, shared when it is large.
    pub fn share(&mut self, b: &bytes::Bytes) {
        if b.len() < SHARED_PIECE_BYTES {
            return self.extend(b);
        }
        if !self.small.is_empty() {
            self.done.push(std::mem::take(&mut self.small).into());
        }
        self.done.push(b.clone());
        self.len += b.len();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(mut self) -> Vec<bytes::Bytes> {
        if !self.small.is_empty() {
            self.done.push(self.small.into());
        }
        self.done
    }
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tessera_common::blob::Blob;
    use tessera_common::model::{BackendKind, Device, ModelDef};

    use super::*;

    #[test]
    fn a_write_is_cut_into_parts_that_share_its_model_bytes() {
        let whole: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let pieces = [
            Bytes::copy_from_slice(&whole[..100]),
            Bytes::copy_from_slice(&whole[100..2900]),
            Bytes::copy_from_slice(&whole[2900..]),
        ];
        let in_parts = Blob::from_parts(pieces.clone());
        let store = |blob: Blob| {
            LogOp::Command(NodeCommand::ModelStore {
                key: Bytes::from("m{1}"),
                model: ModelDef {
                    backend: BackendKind::Onnx,
                    device_name: "CPU".into(),
                    device: Device::Cpu(None),
                    tag: Bytes::from("v1"),
                    batchsize: 4,
                    minbatchsize: 2,
                    minbatchtimeout: 7,
                    inputs: vec!["x".into()],
                    outputs: vec!["y".into()],
                    blob,
                },
            })
        };
        let (split, one) = (store(in_parts), store(Blob::from(whole)));
        // serde's encoding (parts a byte at a time) is the reference.
        let expected = encode(&split);
        assert_eq!(encode(&one), expected);
        assert_eq!((encoded_size(&split), encoded_size(&one)), (expected.len(), expected.len()));
        for size in [1, 7, 100, 500, 2800, expected.len(), 10_000] {
            let parts = encode_parts(&split, size);
            assert_eq!(parts.concat(), expected, "parts of {size}");
            assert!(parts.iter().rev().skip(1).all(|p| p.len() == size));
            // A full part inside the big piece is a slice of it.
            let big = pieces[1].as_ptr() as usize..pieces[1].as_ptr() as usize + pieces[1].len();
            let shared = parts.iter().filter(|p| big.contains(&(p.as_ptr() as usize))).count();
            let inside = parts.iter().filter(|p| p.len() == size).count() > 2;
            assert!(!inside || size > 2800 || shared > 0, "parts of {size}: none shared");
        }
        assert_eq!(encode_parts(&one, 1000).concat(), expected);
        let del = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from("k")] });
        assert_eq!(encode_parts(&del, 3).concat(), encode(&del));
        assert_eq!(encoded_size(&del), encode(&del).len());
    }
}
