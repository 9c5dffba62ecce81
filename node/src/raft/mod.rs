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
pub type SnapshotData = std::io::Cursor<Vec<u8>>;
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
