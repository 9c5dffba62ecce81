//! Parsing client argv into typed commands, once.
//!
//! * [`table`] — the command table (`COMMAND`, key positions, flags), with
//!   `keys` finding the keys of RedisAI's movable-keys commands;
//! * [`node`] — [`NodeCommand`], what a storage node executes;
//! * [`keyspace`], [`ai`], [`server`] — one parser per command family.
//!
//! [`parse`] checks arity and keys (CROSSSLOT) from the table, then hands argv
//! to the family parser, which validates everything that does not need stored
//! state. Nothing downstream re-checks raw argv.

pub mod ai;
mod keys;
pub mod keyspace;
pub mod node;
pub mod server;
pub mod table;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::slot::key_slot;
pub use node::{NodeCommand, UsersCmd};
pub use server::{AclCmd, ClientCmd, ClusterCmd, CommandCmd, Local};

/// Limits applied while parsing.
#[derive(Clone, Debug)]
pub struct ParseLimits {
    /// Largest tensor (in bytes) a command may create.
    pub max_value_bytes: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self { max_value_bytes: 512 * 1024 * 1024 }
    }
}

/// A parsed command and where it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Runs on the shard that owns `slot`.
    Keyed { slot: u16, cmd: NodeCommand },
    /// Keyspace-wide: runs on every shard, scoped by the router.
    Fanout(Fanout),
    /// Answered by the router itself.
    Local(Local),
}

/// Keyspace-wide commands, before the router scopes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Fanout {
    Keys {
        pattern: Bytes,
    },
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        kind: Option<Bytes>,
    },
    DbSize,
    RandomKey,
    Flush,
    /// AI._SCRIPTSCAN (`scripts`) or AI._MODELSCAN.
    AiScan {
        scripts: bool,
    },
}

/// The name used in arity errors: Redis 7 reports its own commands by their
/// lower-case name; RedisAI (on Redis 6.2) echoes argv[0] as sent.
pub fn arity_name(argv0: &[u8]) -> String {
    let s = String::from_utf8_lossy(argv0);
    if s.len() > 3 && s[..3].eq_ignore_ascii_case("AI.") {
        s.into_owned()
    } else {
        s.to_ascii_lowercase()
    }
}

/// Parses one command.
pub fn parse(argv: Vec<Bytes>, limits: &ParseLimits) -> Result<Command> {
    let Some(name) = argv.first() else {
        return Err(Error::Protocol("empty command".into()));
    };
    let Some(spec) = table::lookup(name) else {
        return Err(unknown_command(&argv));
    };
    parse_spec(spec, argv, limits)
}

/// Parses one command whose table entry the caller already looked up.
pub fn parse_spec(spec: &'static table::CommandSpec, argv: Vec<Bytes>, limits: &ParseLimits) -> Result<Command> {
    if !spec.arity_ok(argv.len()) {
        return Err(Error::Arity(arity_name(&argv[0])));
    }
    match spec.name {
        n if n.starts_with("ai.") => ai::parse(spec, argv, limits),
        "get" | "set" | "mget" | "mset" | "incr" | "incrby" | "decr" | "decrby" | "del" | "unlink" | "exists"
        | "type" | "expire" | "pexpire" | "expireat" | "pexpireat" | "ttl" | "pttl" | "persist" => {
            keyspace::parse_keyed(spec, argv)
        }
        "keys" | "scan" | "dbsize" | "randomkey" | "flushall" | "flushdb" => {
            keyspace::parse_fanout(spec, argv).map(Command::Fanout)
        }
        _ => server::parse(spec, argv, limits),
    }
}

/// The slot shared by the keys at `indexes`, or CROSSSLOT.
pub fn common_slot(argv: &[Bytes], indexes: &[usize]) -> Result<Option<u16>> {
    keys_slot(indexes.iter().map(|&i| &argv[i]))
}

/// The one slot `keys` share (`None` for no keys); `CROSSSLOT` otherwise.
pub fn keys_slot<'a>(keys: impl IntoIterator<Item = &'a Bytes>) -> Result<Option<u16>> {
    let mut slot = None;
    for k in keys {
        let s = key_slot(k);
        match slot {
            None => slot = Some(s),
            Some(prev) if prev != s => return Err(Error::CrossSlot),
            Some(_) => {}
        }
    }
    Ok(slot)
}

pub fn unknown_command(argv: &[Bytes]) -> Error {
    let name = String::from_utf8_lossy(argv.first().map(|b| &b[..]).unwrap_or(b"")).into_owned();
    let args: String = argv
        .iter()
        .skip(1)
        .take(20)
        .map(|a| format!("'{}' ", String::from_utf8_lossy(&a[..a.len().min(128)])))
        .collect();
    Error::UnknownCommand { name: truncate(&name, 128), args }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Parses an integer argument the way Redis does (`string2ll`).
pub fn int_arg(b: &[u8]) -> Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !(s.starts_with('+') || s.starts_with("-0") || (s.len() > 1 && s.starts_with('0'))))
        .and_then(|s| s.parse().ok())
        .ok_or(Error::NotInteger)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn p(s: &str) -> Result<Command> {
        parse(argv(s), &ParseLimits::default())
    }

    #[test]
    fn routing_and_crossslot() {
        match p("GET foo").unwrap() {
            Command::Keyed { slot, .. } => assert_eq!(slot, 12182),
            other => panic!("{other:?}"),
        }
        assert_eq!(p("MGET a b").unwrap_err(), Error::CrossSlot);
        assert!(p("MGET {t}a {t}b").is_ok());
        assert_eq!(p("MSET {t}a 1 b 2").unwrap_err(), Error::CrossSlot);
    }

    #[test]
    fn arity_and_unknown() {
        assert_eq!(p("GET").unwrap_err().to_string(), "ERR wrong number of arguments for 'get' command");
        assert_eq!(p("get a b").unwrap_err().to_string(), "ERR wrong number of arguments for 'get' command");
        assert_eq!(
            p("AI.TENSORGET").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'AI.TENSORGET' command"
        );
        assert_eq!(p("NOPE x").unwrap_err().to_string(), "ERR unknown command 'NOPE', with args beginning with: 'x' ");
        assert_eq!(int_arg(b"12").unwrap(), 12);
        assert!(int_arg(b"012").is_err());
        assert!(int_arg(b"1.5").is_err());
    }
}
