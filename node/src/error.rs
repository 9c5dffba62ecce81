//! The errors the node answers commands with. Each variant has its RESP
//! code ([`Error::code`], the label metrics count it under) and its exact
//! text; [`Error::to_reply`] is the one place one becomes a reply.
//!
//! An error the state machine answers travels through Raft as part of the
//! log entry's result (a [`Reply`]), so a replica that applies the entry
//! answers the same words; the metrics of such a reply read its code from
//! its first word ([`tessera_common::error::code_of`]), which is where RESP
//! puts it.

use tessera_common::reply::Reply;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A command's own error (syntax, arity, `WRONGTYPE`, ...), as Redis
    /// and RedisAI word it.
    #[error(transparent)]
    Command(#[from] tessera_common::error::Error),
    /// A backend's or a model loader's error, in RedisAI's words (it starts
    /// with its code).
    #[error("{0}")]
    Model(String),
    #[error("ERR model key is empty")]
    EmptyModel,
    #[error("ERR tensor key is empty or in a different shard")]
    EmptyTensor,
    #[error("ERR cannot find run info for key")]
    NoRunInfo,
    #[error("ERR model load failed: {0}")]
    LoadFailed(String),
    #[error("ERR model run was dropped")]
    RunDropped,
    #[error("ERR node could not decode command: {0}")]
    Decode(String),
    /// A command sent in parts that do not add up (the parts' own words).
    #[error("{0}")]
    Parts(String),
    #[error("CLUSTERDOWN Hash slot not served")]
    NotServed,
    /// A write whose entry this replica logged, then saw replaced (never
    /// committed) or purged under a snapshot: its outcome is unknown here.
    #[error("TRYAGAIN shard {shard}: {why}; the write may or may not have been applied")]
    WriteUnknown { shard: u32, why: String },
    /// The replica stopped, or lost leadership, before the write applied.
    #[error("TRYAGAIN shard {0} lost leadership; the write may or may not have been applied")]
    WriteLost(u32),
    #[error("TRYAGAIN meta group: {0}")]
    MetaUnconfirmed(String),
    #[error("TRYAGAIN chunked write interrupted; the command did not run")]
    ChunkedWriteInterrupted,
    #[error("ERR chunked write does not decode: {0}")]
    ChunkDecode(String),
    #[error("TRYAGAIN leadership changed while the model ran; its outputs were not written")]
    FencedOut,
    #[error(
        "MISCONF disk full: {free_mib} MiB free on the node's data disk, {reserve_mib} MiB kept in reserve; \
         writes are refused until space is freed"
    )]
    DiskFull { free_mib: u64, reserve_mib: u64 },
    // The cluster map (meta group).
    #[error("ERR cluster map not formed yet")]
    MapNotFormed,
    #[error("ERR node id {0} is or was in use; ids are never reused")]
    NodeIdInUse(u64),
    #[error("ERR no node {0}")]
    NoNode(u64),
    #[error("ERR node {node} still holds a replica of group {group}")]
    NodeHoldsReplica { node: u64, group: u32 },
    #[error("ERR node {0} is not a member of the cluster")]
    NotAMember(u64),
    #[error("ERR no group {0}")]
    NoGroup(u32),
    #[error("ERR a group needs at least one voter")]
    NoVoters,
    /// A state that the node's own code never produces (a log entry of the
    /// wrong kind for where it is applied): says which.
    #[error("ERR {0}")]
    Internal(&'static str),
    #[error("ERR internal: {0} is a write")]
    NotARead(&'static str),
}

impl Error {
    /// The code clients match on (`ERR`, `TRYAGAIN`, `MISCONF`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Command(e) => e.code(),
            Error::Model(text) | Error::Parts(text) => tessera_common::error::code_of(text),
            Error::NotServed => "CLUSTERDOWN",
            Error::WriteUnknown { .. }
            | Error::WriteLost(_)
            | Error::MetaUnconfirmed(_)
            | Error::ChunkedWriteInterrupted
            | Error::FencedOut => "TRYAGAIN",
            Error::DiskFull { .. } => "MISCONF",
            Error::EmptyModel
            | Error::EmptyTensor
            | Error::NoRunInfo
            | Error::LoadFailed(_)
            | Error::RunDropped
            | Error::Decode(_)
            | Error::ChunkDecode(_)
            | Error::MapNotFormed
            | Error::NodeIdInUse(_)
            | Error::NoNode(_)
            | Error::NodeHoldsReplica { .. }
            | Error::NotAMember(_)
            | Error::NoGroup(_)
            | Error::NoVoters
            | Error::Internal(_)
            | Error::NotARead(_) => "ERR",
        }
    }

    pub fn to_reply(&self) -> Reply {
        Reply::err(self.to_string())
    }
}

impl From<Error> for Reply {
    fn from(e: Error) -> Reply {
        e.to_reply()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_starts_with_its_code() {
        let all = [
            Error::Command(tessera_common::error::Error::WrongType),
            Error::Model("ERR unsupported device".into()),
            Error::EmptyModel,
            Error::EmptyTensor,
            Error::NoRunInfo,
            Error::LoadFailed("x".into()),
            Error::RunDropped,
            Error::Decode("x".into()),
            Error::Parts("ERR message parts overrun".into()),
            Error::NotServed,
            Error::WriteUnknown { shard: 1, why: "x".into() },
            Error::WriteLost(1),
            Error::MetaUnconfirmed("x".into()),
            Error::ChunkedWriteInterrupted,
            Error::ChunkDecode("x".into()),
            Error::FencedOut,
            Error::DiskFull { free_mib: 1, reserve_mib: 2 },
            Error::MapNotFormed,
            Error::NodeIdInUse(1),
            Error::NoNode(1),
            Error::NodeHoldsReplica { node: 1, group: 2 },
            Error::NotAMember(1),
            Error::NoGroup(1),
            Error::NoVoters,
            Error::Internal("x"),
            Error::NotARead("SET"),
        ];
        for e in all {
            let text = e.to_string();
            assert_eq!(text.split(' ').next(), Some(e.code()), "{text}");
            assert_eq!(tessera_common::error::code_of(&text), e.code(), "{text}");
            assert_eq!(e.to_reply(), Reply::Error(text));
        }
    }
}
