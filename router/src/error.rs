//! The errors the router answers with. Each variant has its RESP code
//! ([`Error::code`]) and its exact text; [`Error::to_reply`] is the one
//! place one becomes a reply. Replies from nodes are passed on as they
//! are: their code is their first word ([`tessera_common::error::code_of`]).

use std::time::Duration;

use tessera_common::reply::Reply;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A command's own error (syntax, arity, `CROSSSLOT`, ...).
    #[error(transparent)]
    Command(#[from] tessera_common::error::Error),
    /// The client broke RESP; the connection closes after this reply.
    #[error(transparent)]
    Protocol(#[from] crate::codec::ProtocolError),
    #[error("BUSY router queue to the node is full, retry")]
    QueueFull,
    #[error("ERR empty reply from node")]
    EmptyReply,
    #[error("ERR router could not decode node reply: {0}")]
    BadReply(String),
    /// A reply sent in parts that do not add up (the parts' own words).
    #[error("{0}")]
    Parts(String),
    #[error("ERR malformed SCAN reply from node")]
    BadScanReply,
    #[error("CLUSTERDOWN Hash slot not served")]
    NotServed,
    #[error("CLUSTERDOWN no storage node reachable")]
    NoNodeReachable,
    #[error("CLUSTERDOWN shard {shard} has no reachable leader ({last})")]
    NoLeader { shard: u32, last: String },
    /// A command sent, with no answer in time: it may or may not have run.
    #[error("TRYAGAIN node {addr} did not answer in {after:?}; the command may or may not have run")]
    NodeTimedOut { addr: String, after: Duration },
    /// A command sent on a session that ended before its answer came.
    #[error("TRYAGAIN connection to node {0} lost; the command may or may not have run")]
    SessionLost(String),
    #[error("TRYAGAIN node request was dropped; the command may or may not have run")]
    RequestDropped,
    // COMMAND GETKEYS, in Redis's words.
    #[error("ERR Invalid command specified")]
    GetKeysUnknownCommand,
    #[error("ERR Invalid number of arguments specified for command")]
    GetKeysArity,
    #[error("ERR The command has no key arguments")]
    GetKeysNoKeys,
    #[error("ERR Invalid arguments specified for command")]
    GetKeysInvalid,
}

impl Error {
    /// The code clients match on (`ERR`, `TRYAGAIN`, `CLUSTERDOWN`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Command(e) => e.code(),
            Error::Parts(text) => tessera_common::error::code_of(text),
            Error::QueueFull => "BUSY",
            Error::NotServed | Error::NoNodeReachable | Error::NoLeader { .. } => "CLUSTERDOWN",
            Error::NodeTimedOut { .. } | Error::SessionLost(_) | Error::RequestDropped => "TRYAGAIN",
            Error::Protocol(_)
            | Error::EmptyReply
            | Error::BadReply(_)
            | Error::BadScanReply
            | Error::GetKeysUnknownCommand
            | Error::GetKeysArity
            | Error::GetKeysNoKeys
            | Error::GetKeysInvalid => "ERR",
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
            Error::Command(tessera_common::error::Error::CrossSlot),
            Error::Protocol(crate::codec::ProtocolError("x".into())),
            Error::QueueFull,
            Error::EmptyReply,
            Error::BadReply("x".into()),
            Error::Parts("ERR message parts overrun".into()),
            Error::BadScanReply,
            Error::NotServed,
            Error::NoNodeReachable,
            Error::NoLeader { shard: 1, last: "x".into() },
            Error::NodeTimedOut { addr: "a".into(), after: Duration::from_secs(1) },
            Error::SessionLost("a".into()),
            Error::RequestDropped,
            Error::GetKeysUnknownCommand,
            Error::GetKeysArity,
            Error::GetKeysNoKeys,
            Error::GetKeysInvalid,
        ];
        for e in all {
            let text = e.to_string();
            assert_eq!(text.split(' ').next(), Some(e.code()), "{text}");
            assert_eq!(tessera_common::error::code_of(&text), e.code(), "{text}");
        }
    }
}
