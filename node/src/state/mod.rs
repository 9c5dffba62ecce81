//! What a shard's log says and how it changes the data: log operations
//! ([`LogOp`]), applying them and reading ([`apply`]), writes too large for
//! one entry ([`chunks`]), and the cluster map and users the meta group
//! holds ([`meta`], [`users`]).

pub mod apply;
pub mod chunks;
pub mod meta;
pub mod replies;
pub mod script;
pub mod snapshot;
pub mod users;

/// What an applied write asks of the node beyond the keyspace: carried out
/// by the state machine once the entry has applied.
#[derive(Debug)]
pub enum Effect {
    /// A model entered the keyspace: make it ready to run
    /// ([`crate::engine::model::StoredModel::start_loading`]).
    LoadModel(std::sync::Arc<crate::engine::model::StoredModel>),
    /// A script entered the keyspace: compile it
    /// ([`crate::engine::script::StoredScript::start_compiling`]).
    CompileScript(std::sync::Arc<crate::engine::script::StoredScript>),
}

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_common::command::NodeCommand;

use crate::util::encode;

/// What a log entry asks the state machine to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LogOp {
    Command(NodeCommand),
    /// Remove every key whose deadline is at or before the entry's timestamp.
    PurgeExpired,
    /// A change to the cluster map (meta group only).
    Meta(meta::MetaOp),
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tessera_common::blob::Blob;
    use tessera_common::model::{BackendKind, Device, ModelDef};

    use super::*;
    use crate::util::encode;

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
