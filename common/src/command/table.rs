//! The command table: every command Tessera knows, with the arity, flags and
//! key positions that `COMMAND` reports and that routing uses. Key extraction
//! for commands with movable keys (RedisAI's getkeys-api commands) is here too,
//! so `COMMAND GETKEYS`, CROSSSLOT checks and slot routing agree by construction.

use bytes::Bytes;

use super::keys::{keys_dag, keys_modelexecute, keys_modelrun, keys_scriptexecute, keys_scriptrun};
use crate::reply::Reply;

/// How a command's keys are found.
#[derive(Clone, Copy, Debug)]
pub enum KeySpec {
    None,
    /// Redis's first/last/step (last may be negative: counted from the end).
    Range {
        first: i64,
        last: i64,
        step: i64,
    },
    /// Found by a function over argv (`movablekeys`).
    Movable(fn(&[Bytes]) -> Option<Vec<usize>>),
}

#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// Lower-case name, as `COMMAND` reports it.
    pub name: &'static str,
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub acl: &'static [&'static str],
    pub keys: KeySpec,
    /// Redis's `first,last,step` to report (module placeholders for movable keys).
    pub reported: (i64, i64, i64),
    pub group: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    acl: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    let kind = if keys.0 == 0 { KeySpec::None } else { KeySpec::Range { first: keys.0, last: keys.1, step: keys.2 } };
    CommandSpec { name, arity, flags, acl, keys: kind, reported: keys, group, summary }
}

const fn movable(
    name: &'static str,
    flags: &'static [&'static str],
    reported: (i64, i64, i64),
    f: fn(&[Bytes]) -> Option<Vec<usize>>,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity: -1,
        flags,
        acl: &["@redisai"],
        keys: KeySpec::Movable(f),
        reported,
        group: "module",
        summary,
    }
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom"];
const WF: &[&str] = &["write", "fast"];
const WDF: &[&str] = &["write", "denyoom", "fast"];
const AI_W: &[&str] = &["write", "denyoom", "module"];
const AI_R: &[&str] = &["readonly", "module"];
const AI_WM: &[&str] = &["write", "denyoom", "module", "movablekeys"];
const AI_RM: &[&str] = &["readonly", "module", "movablekeys"];

/// Every command, in `COMMAND` order.
pub static COMMANDS: &[CommandSpec] = &[
    // keyspace / strings
    spec("get", 2, R, &["@read", "@string", "@fast"], (1, 1, 1), "string", "Returns the string value of a key."),
    spec(
        "set",
        -3,
        W,
        &["@write", "@string", "@slow"],
        (1, 1, 1),
        "string",
        "Sets the string value of a key, ignoring its type.",
    ),
    spec(
        "mget",
        -2,
        R,
        &["@read", "@string", "@fast"],
        (1, -1, 1),
        "string",
        "Atomically returns the string values of one or more keys.",
    ),
    spec(
        "mset",
        -3,
        W,
        &["@write", "@string", "@slow"],
        (1, -1, 2),
        "string",
        "Atomically creates or modifies the string values of one or more keys.",
    ),
    spec(
        "incr",
        2,
        WDF,
        &["@write", "@string", "@fast"],
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by one.",
    ),
    spec(
        "incrby",
        3,
        WDF,
        &["@write", "@string", "@fast"],
        (1, 1, 1),
        "string",
        "Increments the integer value of a key by a number.",
    ),
    spec(
        "decr",
        2,
        WDF,
        &["@write", "@string", "@fast"],
        (1, 1, 1),
        "string",
        "Decrements the integer value of a key by one.",
    ),
    spec(
        "decrby",
        3,
        WDF,
        &["@write", "@string", "@fast"],
        (1, 1, 1),
        "string",
        "Decrements a number from the integer value of a key.",
    ),
    spec("del", -2, &["write"], &["@keyspace", "@write", "@slow"], (1, -1, 1), "generic", "Deletes one or more keys."),
    spec(
        "unlink",
        -2,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, -1, 1),
        "generic",
        "Asynchronously deletes one or more keys.",
    ),
    spec(
        "exists",
        -2,
        R,
        &["@keyspace", "@read", "@fast"],
        (1, -1, 1),
        "generic",
        "Determines whether one or more keys exist.",
    ),
    spec(
        "type",
        2,
        R,
        &["@keyspace", "@read", "@fast"],
        (1, 1, 1),
        "generic",
        "Determines the type of value stored at a key.",
    ),
    spec(
        "expire",
        -3,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key in seconds.",
    ),
    spec(
        "pexpire",
        -3,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key in milliseconds.",
    ),
    spec(
        "expireat",
        -3,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key to a Unix timestamp.",
    ),
    spec(
        "pexpireat",
        -3,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, 1, 1),
        "generic",
        "Sets the expiration time of a key to a Unix milliseconds timestamp.",
    ),
    spec(
        "ttl",
        2,
        R,
        &["@keyspace", "@read", "@fast"],
        (1, 1, 1),
        "generic",
        "Returns the expiration time in seconds of a key.",
    ),
    spec(
        "pttl",
        2,
        R,
        &["@keyspace", "@read", "@fast"],
        (1, 1, 1),
        "generic",
        "Returns the expiration time in milliseconds of a key.",
    ),
    spec(
        "persist",
        2,
        WF,
        &["@keyspace", "@write", "@fast"],
        (1, 1, 1),
        "generic",
        "Removes the expiration time of a key.",
    ),
    spec(
        "keys",
        2,
        &["readonly"],
        &["@keyspace", "@read", "@slow", "@dangerous"],
        (0, 0, 0),
        "generic",
        "Returns all key names that match a pattern.",
    ),
    spec(
        "scan",
        -2,
        &["readonly"],
        &["@keyspace", "@read", "@slow"],
        (0, 0, 0),
        "generic",
        "Iterates over the key names in the database.",
    ),
    spec(
        "dbsize",
        1,
        R,
        &["@keyspace", "@read", "@fast"],
        (0, 0, 0),
        "server",
        "Returns the number of keys in the database.",
    ),
    spec(
        "randomkey",
        1,
        &["readonly"],
        &["@keyspace", "@read", "@slow"],
        (0, 0, 0),
        "generic",
        "Returns a random key name from the database.",
    ),
    spec(
        "flushall",
        -1,
        &["write"],
        &["@keyspace", "@write", "@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "Removes all keys from all databases.",
    ),
    spec(
        "flushdb",
        -1,
        &["write"],
        &["@keyspace", "@write", "@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "Remove all keys from the current database.",
    ),
    // connection / server / cluster
    spec(
        "ping",
        -1,
        &["fast"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "connection",
        "Returns the server's liveliness response.",
    ),
    spec("echo", 2, &["fast"], &["@fast", "@connection"], (0, 0, 0), "connection", "Returns the given string."),
    spec(
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "connection",
        "Handshakes with the Redis server.",
    ),
    spec("client", -2, &[], &["@slow"], (0, 0, 0), "connection", "A container for client connection commands."),
    spec(
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "connection",
        "Authenticates the connection.",
    ),
    spec(
        "acl",
        -2,
        &[],
        &["@admin", "@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "A container for Access List Control commands.",
    ),
    spec(
        "select",
        2,
        &["loading", "stale", "fast"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "connection",
        "Changes the selected database.",
    ),
    spec(
        "quit",
        -1,
        &["noscript", "loading", "stale", "fast", "no_auth"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "connection",
        "Closes the connection.",
    ),
    spec(
        "readonly",
        1,
        &["loading", "stale", "fast"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "cluster",
        "Enables read-only queries for a connection to a Redis Cluster replica node.",
    ),
    spec(
        "readwrite",
        1,
        &["loading", "stale", "fast"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "cluster",
        "Enables read-write queries for a connection to a Reids Cluster replica node.",
    ),
    spec(
        "asking",
        1,
        &["fast"],
        &["@fast", "@connection"],
        (0, 0, 0),
        "cluster",
        "Signals that a cluster client is following an -ASK redirect.",
    ),
    spec("cluster", -2, &[], &["@slow"], (0, 0, 0), "cluster", "A container for Redis Cluster commands."),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        &["@slow", "@connection"],
        (0, 0, 0),
        "server",
        "Returns detailed information about all commands.",
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        &["@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "Returns information and statistics about the server.",
    ),
    spec("config", -2, &[], &["@slow"], (0, 0, 0), "server", "A container for server configuration commands."),
    spec("module", -2, &[], &["@slow"], (0, 0, 0), "server", "A container for module commands."),
    spec(
        "save",
        1,
        &["admin", "noscript", "no_async_loading", "no_multi"],
        &["@admin", "@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "Synchronously saves the database(s) to disk.",
    ),
    spec(
        "bgsave",
        -1,
        &["admin", "noscript", "no_async_loading"],
        &["@admin", "@slow", "@dangerous"],
        (0, 0, 0),
        "server",
        "Asynchronously saves the database(s) to disk.",
    ),
    spec(
        "lastsave",
        1,
        &["loading", "stale", "fast"],
        &["@fast", "@admin", "@dangerous"],
        (0, 0, 0),
        "server",
        "Returns the Unix timestamp of the last successful save to disk.",
    ),
    // transactions
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        &["@fast", "@transaction"],
        (0, 0, 0),
        "transactions",
        "Starts a transaction.",
    ),
    spec(
        "exec",
        1,
        &["noscript", "loading", "stale", "skip_slowlog"],
        &["@slow", "@transaction"],
        (0, 0, 0),
        "transactions",
        "Executes all commands in a transaction.",
    ),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        &["@fast", "@transaction"],
        (0, 0, 0),
        "transactions",
        "Discards a transaction.",
    ),
    spec(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        &["@fast", "@transaction"],
        (1, -1, 1),
        "transactions",
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        &["@fast", "@transaction"],
        (0, 0, 0),
        "transactions",
        "Forgets about watched keys of a transaction.",
    ),
    // RedisAI (module commands report arity -1, as RedisModule_CreateCommand does)
    spec("ai.tensorset", -1, AI_W, &["@redisai"], (1, 1, 1), "module", "Stores a tensor."),
    spec("ai.tensorget", -1, AI_R, &["@redisai"], (1, 1, 1), "module", "Returns a tensor."),
    spec("ai.modelstore", -1, AI_W, &["@redisai"], (1, 1, 1), "module", "Stores a model."),
    spec("ai.modelset", -1, AI_W, &["@redisai"], (1, 1, 1), "module", "Stores a model (deprecated)."),
    spec("ai.modelget", -1, AI_R, &["@redisai"], (1, 1, 1), "module", "Returns a model's metadata and blob."),
    spec("ai.modeldel", -1, &["write", "module"], &["@redisai"], (1, 1, 1), "module", "Deletes a model."),
    movable("ai.modelexecute", AI_WM, (4, 4, 1), keys_modelexecute, "Runs a model."),
    movable("ai.modelrun", AI_WM, (3, 3, 1), keys_modelrun, "Runs a model (deprecated)."),
    spec("ai._modelscan", -1, AI_R, &["@redisai"], (0, 0, 0), "module", "Lists models (experimental)."),
    spec("ai.scriptstore", -1, AI_W, &["@redisai"], (1, 1, 1), "module", "Stores a TorchScript script."),
    spec("ai.scriptset", -1, AI_W, &["@redisai"], (1, 1, 1), "module", "Stores a TorchScript script (deprecated)."),
    spec("ai.scriptget", -1, AI_R, &["@redisai"], (1, 1, 1), "module", "Returns a script's metadata and source."),
    spec("ai.scriptdel", -1, &["write", "module"], &["@redisai"], (1, 1, 1), "module", "Deletes a script."),
    movable("ai.scriptexecute", AI_WM, (5, 5, 1), keys_scriptexecute, "Runs a script function."),
    movable("ai.scriptrun", AI_WM, (4, 4, 1), keys_scriptrun, "Runs a script function (deprecated)."),
    spec("ai._scriptscan", -1, AI_R, &["@redisai"], (0, 0, 0), "module", "Lists scripts (experimental)."),
    spec("ai.info", -1, AI_R, &["@redisai"], (1, 1, 1), "module", "Returns run statistics of a model or script."),
    spec("ai.config", -1, &["write", "module"], &["@redisai"], (0, 0, 0), "module", "Configures the backends."),
    movable("ai.dagexecute", AI_WM, (3, 3, 1), keys_dag, "Runs a DAG of tensor, model and script operations."),
    movable("ai.dagexecute_ro", AI_RM, (3, 3, 1), keys_dag, "Runs a read-only DAG."),
    movable("ai.dagrun", AI_WM, (3, 3, 1), keys_dag, "Runs a DAG (deprecated)."),
    movable("ai.dagrun_ro", AI_RM, (3, 3, 1), keys_dag, "Runs a read-only DAG (deprecated)."),
];

/// Looks a command up by name, case-insensitively (a hash lookup on a
/// lower-cased copy kept on the stack; this runs for every command).
pub fn lookup(name: &[u8]) -> Option<&'static CommandSpec> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static [u8], &'static CommandSpec>> =
        std::sync::OnceLock::new();
    let index = INDEX.get_or_init(|| COMMANDS.iter().map(|c| (c.name.as_bytes(), c)).collect());
    let mut buf = [0u8; 32];
    let lower = buf.get_mut(..name.len())?;
    lower.copy_from_slice(name);
    lower.make_ascii_lowercase();
    index.get(&*lower).copied()
}

impl CommandSpec {
    pub fn is_write(&self) -> bool {
        self.flags.contains(&"write")
    }

    /// Whether `argc` (including the name) satisfies the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Indexes into argv of this command's keys; `None` when argv is malformed
    /// for key extraction.
    pub fn key_indexes(&self, argv: &[Bytes]) -> Option<Vec<usize>> {
        match self.keys {
            KeySpec::None => Some(Vec::new()),
            KeySpec::Range { first, last, step } => {
                let argc = argv.len() as i64;
                let last = if last < 0 { argc + last } else { last };
                if first >= argc || last >= argc || last < first {
                    return if first >= argc { None } else { Some(Vec::new()) };
                }
                Some((first..=last).step_by(step as usize).map(|i| i as usize).collect())
            }
            KeySpec::Movable(f) => f(argv),
        }
    }

    /// The `COMMAND` / `COMMAND INFO` entry (Redis 7 layout, 10 fields).
    pub fn info_reply(&self) -> Reply {
        let flags = Reply::Set(self.flags.iter().map(|f| Reply::Simple((*f).into())).collect());
        let acl = Reply::Set(self.acl.iter().map(|f| Reply::Simple((*f).into())).collect());
        let (first, last, step) = self.reported;
        Reply::Array(vec![
            Reply::bulk_str(self.name),
            Reply::Int(self.arity),
            flags,
            Reply::Int(first),
            Reply::Int(last),
            Reply::Int(step),
            acl,
            Reply::Set(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    }

    /// The `COMMAND DOCS` entry.
    pub fn docs_reply(&self) -> Reply {
        Reply::Map(vec![
            (Reply::bulk_str("summary"), Reply::bulk_str(self.summary)),
            (Reply::bulk_str("since"), Reply::bulk_str("1.0.0")),
            (Reply::bulk_str("group"), Reply::bulk_str(self.group)),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn keys(s: &str) -> Vec<String> {
        let a = argv(s);
        let spec = lookup(&a[0]).unwrap();
        spec.key_indexes(&a).unwrap().iter().map(|i| String::from_utf8_lossy(&a[*i]).into_owned()).collect()
    }

    #[test]
    fn key_positions() {
        assert_eq!(keys("GET a"), ["a"]);
        assert_eq!(keys("MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(keys("DEL a b c"), ["a", "b", "c"]);
        assert_eq!(keys("AI.TENSORSET t FLOAT 1"), ["t"]);
        assert_eq!(
            keys("AI.MODELEXECUTE m{1} INPUTS 2 a{1} b{1} OUTPUTS 1 c{1} TIMEOUT 5"),
            ["m{1}", "a{1}", "b{1}", "c{1}"]
        );
        assert_eq!(keys("AI.MODELRUN m INPUTS a b OUTPUTS c"), ["m", "a", "b", "c"]);
        assert_eq!(keys("AI.SCRIPTEXECUTE s fn KEYS 1 k INPUTS 1 i ARGS 2 x y OUTPUTS 1 o"), ["s", "k", "i", "o"]);
        assert_eq!(keys("AI.SCRIPTRUN s fn INPUTS a $ b OUTPUTS c"), ["s", "a", "b", "c"]);
        assert_eq!(keys("AI.SCRIPTRUN s fn INPUTS a TIMEOUT 5 b OUTPUTS c"), ["s", "a", "b", "c"]);
        assert_eq!(
            keys("AI.DAGEXECUTE LOAD 1 a PERSIST 1 b ROUTING r |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b"),
            ["a", "b", "r", "m"]
        );
        assert!(lookup(b"AI.MODELEXECUTE").unwrap().key_indexes(&argv("AI.MODELEXECUTE m INPUTS 5 a")).is_none());
    }

    #[test]
    fn every_ai_command_is_listed() {
        for name in [
            "ai.tensorset",
            "ai.tensorget",
            "ai.modelstore",
            "ai.modelset",
            "ai.modelget",
            "ai.modeldel",
            "ai.modelexecute",
            "ai.modelrun",
            "ai.scriptstore",
            "ai.scriptset",
            "ai.scriptget",
            "ai.scriptdel",
            "ai.scriptexecute",
            "ai.scriptrun",
            "ai.info",
            "ai.config",
            "ai.dagexecute",
            "ai.dagexecute_ro",
            "ai.dagrun",
            "ai.dagrun_ro",
            "ai._modelscan",
            "ai._scriptscan",
        ] {
            assert!(lookup(name.as_bytes()).is_some(), "{name} missing");
        }
    }
}
