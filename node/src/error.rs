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
    #[error("ERR script key is empty")]
    EmptyScript,
    #[error("ERR tensor key is empty or in a different shard")]
    EmptyTensor,
    #[error("ERR cannot find run info for key")]
    NoRunInfo,
    #[error("ERR model load failed: {0}")]
    LoadFailed(String),
    #[error("ERR model run was dropped")]
    RunDropped,
    #[error("ERR snapshot failed: {0}")]
    SaveFailed(String),
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
    /// A key a script changed was written by another command while the
    /// script ran.
    #[error("TRYAGAIN a key the script changed was written while it ran; nothing was written, run it again")]
    ScriptRaced,
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
    #[error("ERR stored keyspace does not decode: {0}")]
    Corrupt(String),
    // Backends.
    #[error("ERR error loading backend")]
    BackendLoad,
    #[error("ERR Could not load backend")]
    BackendFailed,
    /// A backend this build was compiled without.
    #[error("ERR Backend not loaded: {0}")]
    BackendMissing(&'static str),
    #[error("ERR unsupported device: TPU is not supported by this build")]
    NoTpu,
    // Membership operations (tessera-admin, reconcile, repair): run again
    // when their code is TRYAGAIN (each is safe to repeat).
    #[error("ERR this node no longer hosts the meta group")]
    NoMetaGroup,
    #[error("TRYAGAIN this node no longer leads the meta group; run the command again")]
    NotMetaLeader,
    #[error("TRYAGAIN meta leadership moved; run the command again")]
    MetaMoved,
    #[error("TRYAGAIN meta leadership handed to node {0}; run the command again")]
    MetaHandedTo(u64),
    #[error("TRYAGAIN group {0} has no leader right now; run the command again")]
    NoLeader(u32),
    #[error("TRYAGAIN group {group} changed leader ({leader}) during a membership change; run the command again")]
    MembershipInterrupted { group: u32, leader: String },
    #[error("TRYAGAIN group {group} changed leader while node {node} was catching up")]
    LeaderChangedCatchingUp { group: u32, node: u64 },
    #[error(
        "TRYAGAIN node {node} has not caught up with group {group} in {waited:?} (it holds entry {have} of {want})"
    )]
    NotCaughtUp { node: u64, group: u32, waited: std::time::Duration, have: u64, want: u64 },
    /// openraft refused a membership change (its words).
    #[error("ERR membership change refused: {0}")]
    Membership(String),
    /// This replica's Raft has stopped (its words).
    #[error("ERR raft stopped: {0}")]
    RaftStopped(String),
    #[error("ERR source and target are the same node")]
    SameNode,
    #[error("ERR node {node} holds no replica of group {group}")]
    NoReplica { node: u64, group: u32 },
    #[error("ERR node {node} already holds a replica of group {group}")]
    AlreadyHolds { node: u64, group: u32 },
    #[error("ERR the meta group has one voter")]
    OneMetaVoter,
    #[error("ERR node {node} is not a voter of group {group}")]
    NotAVoter { node: u64, group: u32 },
    #[error("ERR node {node} did not take over group {group} in {waited:?}")]
    NotTakenOver { node: u64, group: u32, waited: std::time::Duration },
    #[error("ERR no node can take node {node}'s replica of group {group}")]
    NoTarget { node: u64, group: u32 },
    #[error("ERR node {node} is the only voter of group {group}: its data is gone")]
    OnlyVoter { node: u64, group: u32 },
    #[error("ERR node {0} does not answer; not promoting it now")]
    NotAnswering(u64),
    /// Opening, closing or reopening a replica's files failed.
    #[error("ERR {doing} group {group}: {why}")]
    GroupFiles { doing: &'static str, group: u32, why: String },
    // Calls to other nodes' admin service.
    #[error("ERR bad node address {addr}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("ERR {addr} did not answer in {waited:?}")]
    NoAnswer { addr: String, waited: std::time::Duration },
    #[error("ERR {addr}: {why}")]
    Refused { addr: String, why: String },
    #[error("ERR {0} is not the leader")]
    NotLeaderAt(String),
    #[error("ERR no node to ask")]
    NoCandidate,
    /// An answer of the wrong kind for its request.
    #[error("ERR unexpected answer {0}")]
    Unexpected(String),
    /// A node's own error, as it answered it (starts with its code).
    #[error("{0}")]
    Remote(String),
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
            Error::Model(text) | Error::Parts(text) | Error::Remote(text) => tessera_common::error::code_of(text),
            Error::NotServed => "CLUSTERDOWN",
            Error::WriteUnknown { .. }
            | Error::WriteLost(_)
            | Error::MetaUnconfirmed(_)
            | Error::ChunkedWriteInterrupted
            | Error::FencedOut
            | Error::ScriptRaced
            | Error::NotMetaLeader
            | Error::MetaMoved
            | Error::MetaHandedTo(_)
            | Error::NoLeader(_)
            | Error::MembershipInterrupted { .. }
            | Error::LeaderChangedCatchingUp { .. }
            | Error::NotCaughtUp { .. } => "TRYAGAIN",
            Error::DiskFull { .. } => "MISCONF",
            Error::EmptyModel
            | Error::EmptyScript
            | Error::EmptyTensor
            | Error::NoRunInfo
            | Error::LoadFailed(_)
            | Error::RunDropped
            | Error::SaveFailed(_)
            | Error::Decode(_)
            | Error::ChunkDecode(_)
            | Error::MapNotFormed
            | Error::NodeIdInUse(_)
            | Error::NoNode(_)
            | Error::NodeHoldsReplica { .. }
            | Error::NotAMember(_)
            | Error::NoGroup(_)
            | Error::NoVoters
            | Error::Corrupt(_)
            | Error::BackendLoad
            | Error::BackendFailed
            | Error::BackendMissing(_)
            | Error::NoTpu
            | Error::NoMetaGroup
            | Error::Membership(_)
            | Error::RaftStopped(_)
            | Error::SameNode
            | Error::NoReplica { .. }
            | Error::AlreadyHolds { .. }
            | Error::OneMetaVoter
            | Error::NotAVoter { .. }
            | Error::NotTakenOver { .. }
            | Error::NoTarget { .. }
            | Error::OnlyVoter { .. }
            | Error::NotAnswering(_)
            | Error::GroupFiles { .. }
            | Error::BadAddress { .. }
            | Error::NoAnswer { .. }
            | Error::Refused { .. }
            | Error::NotLeaderAt(_)
            | Error::NoCandidate
            | Error::Unexpected(_)
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
            Error::EmptyScript,
            Error::EmptyTensor,
            Error::NoRunInfo,
            Error::LoadFailed("x".into()),
            Error::RunDropped,
            Error::SaveFailed("x".into()),
            Error::Decode("x".into()),
            Error::Parts("ERR message parts overrun".into()),
            Error::NotServed,
            Error::WriteUnknown { shard: 1, why: "x".into() },
            Error::WriteLost(1),
            Error::MetaUnconfirmed("x".into()),
            Error::ChunkedWriteInterrupted,
            Error::ChunkDecode("x".into()),
            Error::FencedOut,
            Error::ScriptRaced,
            Error::DiskFull { free_mib: 1, reserve_mib: 2 },
            Error::MapNotFormed,
            Error::NodeIdInUse(1),
            Error::NoNode(1),
            Error::NodeHoldsReplica { node: 1, group: 2 },
            Error::NotAMember(1),
            Error::NoGroup(1),
            Error::NoVoters,
            Error::Corrupt("x".into()),
            Error::BackendLoad,
            Error::BackendFailed,
            Error::BackendMissing("TF"),
            Error::NoTpu,
            Error::NoMetaGroup,
            Error::NotMetaLeader,
            Error::MetaMoved,
            Error::MetaHandedTo(1),
            Error::NoLeader(1),
            Error::MembershipInterrupted { group: 1, leader: "None".into() },
            Error::LeaderChangedCatchingUp { group: 1, node: 2 },
            Error::NotCaughtUp { node: 1, group: 2, waited: std::time::Duration::from_secs(1), have: 3, want: 4 },
            Error::Membership("x".into()),
            Error::RaftStopped("x".into()),
            Error::SameNode,
            Error::NoReplica { node: 1, group: 2 },
            Error::AlreadyHolds { node: 1, group: 2 },
            Error::OneMetaVoter,
            Error::NotAVoter { node: 1, group: 2 },
            Error::NotTakenOver { node: 1, group: 2, waited: std::time::Duration::from_secs(5) },
            Error::NoTarget { node: 1, group: 2 },
            Error::OnlyVoter { node: 1, group: 2 },
            Error::NotAnswering(1),
            Error::GroupFiles { doing: "reopening", group: 1, why: "x".into() },
            Error::BadAddress { addr: "a".into(), why: "x".into() },
            Error::NoAnswer { addr: "a".into(), waited: std::time::Duration::from_secs(1) },
            Error::Refused { addr: "a".into(), why: "x".into() },
            Error::NotLeaderAt("a".into()),
            Error::NoCandidate,
            Error::Unexpected("x".into()),
            Error::Remote("TRYAGAIN x".into()),
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
