//! Everything openraft (`=0.10.0-alpha.37`) touches lives in this module: the
//! type configuration, our durable log store ([`store`]), the state machine
//! over a shard's keyspace ([`sm`]), and the node-to-node network
//! ([`network`]: client; [`transport`]: server). Nothing outside this module
//! names an openraft type.

pub mod logfile;
pub mod network;
pub mod sm;
pub mod store;
pub mod transport;

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
    /// applies the whole (see [`sm::Chunks`]).
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

/// Sizes above which [`heavy`] is worth its cost.
pub const HEAVY_BYTES: usize = 4 << 20;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("raft messages always serialize")
}

/// A model store with its model's bytes left out, and those bytes, when
/// they are held in parts (laid out for their runtime: see
/// `models::arrange`).
fn blob_apart(op: &LogOp) -> Option<(LogOp, &tessera_common::blob::Blob)> {
    match op {
        LogOp::Command(NodeCommand::ModelStore { key, model }) if model.blob.parts().len() > 1 => {
            let head = tessera_common::model::ModelDef { blob: Default::default(), ..model.clone() };
            Some((LogOp::Command(NodeCommand::ModelStore { key: key.clone(), model: head }), &model.blob))
        }
        _ => None,
    }
}

fn varint_len(v: usize) -> usize {
    let mut b = Vec::with_capacity(10);
    tessera_common::put_varint(&mut b, v as u64);
    b.len()
}

/// The size of [`encode_write`]'s encoding of `op`.
pub fn encoded_size(op: &LogOp) -> usize {
    match blob_apart(op) {
        Some((head, blob)) => {
            postcard::experimental::serialized_size(&head).unwrap_or(1) - 1 + varint_len(blob.len()) + blob.len()
        }
        None => postcard::experimental::serialized_size(op).unwrap_or(0),
    }
}

/// [`encode`] for a write, with a model's bytes held in parts copied part
/// by part: serde hands them over a byte at a time, which takes seconds
/// for a large model.
pub fn encode_write(op: &LogOp) -> Vec<u8> {
    let Some((head, blob)) = blob_apart(op) else { return encode(op) };
    let out = Vec::with_capacity(encoded_size(op));
    let mut out = postcard::to_extend(&head, out).expect("raft messages always serialize");
    // The model's bytes are the op's last field: the empty ones' length
    // (one zero byte) ends the encoding, and the bytes take its place.
    assert_eq!(out.pop(), Some(0), "a model's bytes end a model store's encoding");
    tessera_common::put_varint(&mut out, blob.len() as u64);
    blob.parts().iter().for_each(|p| out.extend_from_slice(p));
    out
}

/// Appends `v`'s length (8 bytes, little-endian) and its encoding to
/// `out`, encoding in place: a large value is copied once.
pub fn encode_sized_into<T: Serialize>(v: &T, out: &mut Vec<u8>) {
    let len = postcard::experimental::serialized_size(v).expect("raft messages always serialize");
    out.reserve(len + 8);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    tessera_common::encode_into(v, out);
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
    fn a_write_encodes_alike_whether_its_model_is_held_in_parts_or_not() {
        let whole: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let in_parts = Blob::from_parts([
            Bytes::copy_from_slice(&whole[..100]),
            Bytes::copy_from_slice(&whole[100..2900]),
            Bytes::copy_from_slice(&whole[2900..]),
        ]);
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
        assert!(blob_apart(&split).is_some() && blob_apart(&one).is_none());
        // serde's encoding (the parts a byte at a time) is the reference.
        let expected = encode(&split);
        assert_eq!(encode(&one), expected);
        assert_eq!(encode_write(&split), expected);
        assert_eq!((encoded_size(&split), encoded_size(&one)), (expected.len(), expected.len()));
        let del = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from("k")] });
        assert_eq!((encode_write(&del), encoded_size(&del)), (encode(&del), encode(&del).len()));
    }
}
