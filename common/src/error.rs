//! Errors a command can answer with. Each variant knows its RESP code and
//! exact text; [`Error::to_reply`] is the one place an error becomes a reply.

use crate::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Error {
    /// `ERR wrong number of arguments for '<name>' command`.
    #[error("ERR wrong number of arguments for '{0}' command")]
    Arity(String),
    #[error("ERR unknown command '{name}', with args beginning with: {args}")]
    UnknownCommand { name: String, args: String },
    #[error("ERR unknown subcommand '{sub}'. Try {cmd} HELP.")]
    UnknownSubcommand { cmd: String, sub: String },
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    #[error("ERR value is not a valid float")]
    NotFloat,
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    #[error("ERR invalid expire time in '{0}' command")]
    InvalidExpire(String),
    #[error("WRONGTYPE Operation against a key holding the wrong kind of value")]
    WrongType,
    #[error("CROSSSLOT Keys in request don't hash to the same slot")]
    CrossSlot,
    #[error("ERR SELECT is not allowed in cluster mode")]
    SelectNotAllowed,
    #[error("ERR DB index is out of range")]
    DbIndexOutOfRange,
    #[error("NOPROTO unsupported protocol version")]
    NoProto,
    #[error("ERR Protocol error: {0}")]
    Protocol(String),
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    ValueTooLarge,
    /// Shard not reachable or not known: the router could not serve the slot.
    #[error("CLUSTERDOWN {0}")]
    ClusterDown(String),
    #[error("TRYAGAIN {0}")]
    TryAgain(String),
    #[error("BUSY {0}")]
    Busy(String),
    #[error("ERR Command not allowed inside a transaction")]
    CommandNotInTransaction,
    /// A RedisAI error whose text is sent verbatim (with or without `ERR `).
    #[error("{0}")]
    Verbatim(String),
}

impl Error {
    /// A RedisAI message, sent exactly as given.
    pub fn ai(text: &str) -> Error {
        Error::Verbatim(text.to_owned())
    }

    /// The short code clients match on (`ERR`, `WRONGTYPE`, ...), for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Error::WrongType => "WRONGTYPE",
            Error::CrossSlot => "CROSSSLOT",
            Error::NoProto => "NOPROTO",
            Error::ClusterDown(_) => "CLUSTERDOWN",
            Error::TryAgain(_) => "TRYAGAIN",
            Error::Busy(_) => "BUSY",
            Error::Verbatim(text) => code_of(text),
            Error::Arity(_)
            | Error::UnknownCommand { .. }
            | Error::UnknownSubcommand { .. }
            | Error::Syntax
            | Error::NotInteger
            | Error::NotFloat
            | Error::Overflow
            | Error::InvalidExpire(_)
            | Error::SelectNotAllowed
            | Error::DbIndexOutOfRange
            | Error::Protocol(_)
            | Error::ValueTooLarge
            | Error::CommandNotInTransaction => "ERR",
        }
    }

    pub fn to_reply(&self) -> Reply {
        Reply::Error(self.to_string())
    }
}

/// The error code of an error text, limited to the codes Tessera sends so a
/// metrics label never carries client data.
pub fn code_of(text: &str) -> &'static str {
    let first = text.split(' ').next().unwrap_or("");
    CODES.iter().find(|c| **c == first).copied().unwrap_or("ERR")
}

/// Every error code Tessera sends.
pub const CODES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "BUSY",
    "NOPROTO",
    "MOVED",
    "ASK",
    "MISCONF",
    "WRONGPASS",
    "EXECABORT",
    "NOAUTH",
    "NOPERM",
];

pub type Result<T, E = Error> = std::result::Result<T, E>;
