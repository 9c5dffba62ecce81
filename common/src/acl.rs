//! Redis 7 ACL users: the rules of `ACL SETUSER` (and of an ACL file), the
//! permission check a command passes before it runs, and the descriptions
//! `ACL LIST` / `ACL GETUSER` give.
//!
//! What applies here: `on`/`off`, passwords (`>`, `<`, `#`, `!`, `nopass`,
//! `resetpass`; stored as SHA-256 only), commands (`+cmd`, `-cmd`,
//! `+cmd|sub`, `-cmd|sub`, `+@cat`, `-@cat`, `allcommands`, `nocommands`),
//! keys (`~pat`, `%R~pat`, `%W~pat`, `%RW~pat`, `allkeys`, `resetkeys`),
//! channels (kept and described; there is no Pub/Sub), `reset`. Selectors
//! (`(...)`) are refused.
//!
//! Each key a command names needs the access its Redis 7 key spec asks
//! for: read (`ACCESS`: the command returns or uses the value), write
//! (`INSERT`/`DELETE`/`UPDATE`), both, or either (`EXISTS`, `TYPE`: no
//! value is touched). RedisAI's commands follow the same rule: a tensor,
//! model or script read needs read access, a store or delete write access,
//! and a run both on every key it names.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::table::{CommandSpec, KeySpec, COMMANDS};
use crate::glob;

mod describe;

pub use describe::GetUserValue;

/// Redis's categories (`ACL CAT`), in its order, then Tessera's own: `ai`
/// holds every AI.* command, `ai-write` those that store or delete.
pub const CATEGORIES: &[&str] = &[
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
    "ai",
    "ai-write",
];

/// Commands every connection may run, authenticated or not, whatever its
/// user's rules (Redis's `no-auth` commands).
const NO_AUTH: &[&str] = &["auth", "hello", "quit"];

/// The categories of a command: those of its table entry, and for AI.*
/// commands `ai`, `read` or `write` (and `ai-write`), with `AI.CONFIG` in
/// `admin` and `dangerous` (it loads libraries).
pub fn categories(spec: &CommandSpec) -> Vec<&'static str> {
    // Containers take the categories Redis gives their subcommands: every
    // CONFIG, MODULE and ACL subcommand is `admin` and `dangerous` (ACL
    // WHOAMI and CAT aside, which are only `slow` in Redis); CLIENT's are
    // taken as `connection` (Redis also puts CLIENT LIST and KILL in
    // `admin`/`dangerous`).
    match spec.name {
        "config" | "module" | "acl" => return vec!["admin", "slow", "dangerous"],
        "client" => return vec!["slow", "connection"],
        _ => {}
    }
    let mut out: Vec<&'static str> =
        spec.acl.iter().map(|c| c.trim_start_matches('@')).filter(|c| CATEGORIES.contains(c)).collect();
    if spec.name.starts_with("ai.") {
        out.push("ai");
        if spec.name == "ai.config" {
            out.extend(["admin", "dangerous", "slow"]);
        } else if spec.is_write() {
            out.extend(["write", "ai-write", "slow"]);
        } else {
            out.extend(["read", "slow"]);
        }
    }
    out
}

/// The access a command needs on each key it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAccess {
    Read,
    Write,
    ReadWrite,
    /// Either read or write access will do (no value is touched).
    Any,
}

/// What `name` does to its keys (Redis 7's key-spec flags).
pub fn key_access(spec: &CommandSpec, argv: &[Bytes]) -> KeyAccess {
    match spec.name {
        "exists" | "type" | "watch" => KeyAccess::Any,
        "incr" | "incrby" | "decr" | "decrby" => KeyAccess::ReadWrite,
        // SET ... GET returns the old value.
        "set" if argv.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"get")) => KeyAccess::ReadWrite,
        "ai.modelexecute" | "ai.modelrun" | "ai.scriptexecute" | "ai.scriptrun" | "ai.dagexecute" | "ai.dagrun" => {
            KeyAccess::ReadWrite
        }
        _ if spec.is_write() => KeyAccess::Write,
        _ => KeyAccess::Read,
    }
}

/// A key pattern with the access it grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPattern {
    pub read: bool,
    pub write: bool,
    pub pattern: Bytes,
}

/// One user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub enabled: bool,
    pub nopass: bool,
    /// SHA-256 of each password, lower-case hex.
    pub passwords: BTreeSet<String>,
    /// Commands allowed whole (table names).
    allowed: BTreeSet<String>,
    /// `cmd|sub` allowed although `cmd` is not.
    allowed_sub: BTreeSet<String>,
    /// `cmd|sub` refused although `cmd` is allowed.
    denied_sub: BTreeSet<String>,
    /// The command rules since the last `+@all`/`-@all`, for descriptions.
    command_rules: Vec<String>,
    all_commands_base: bool,
    pub keys: Vec<KeyPattern>,
    pub all_channels: bool,
    pub channels: Vec<String>,
    pub sanitize_payload: Option<bool>,
    /// Every command on every key: the check is skipped (the default user's
    /// case, on every command of a cluster without users).
    unrestricted: bool,
}

/// A rule that could not be applied: Redis's words after the modifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub rule: String,
    pub reason: &'static str,
}

impl RuleError {
    /// `ERR Error in ACL SETUSER modifier '<rule>': <reason>`.
    pub fn message(&self) -> String {
        format!("ERR Error in ACL SETUSER modifier '{}': {}", self.rule, self.reason)
    }
}

const SYNTAX: &str = "Syntax error";
const UNKNOWN: &str = "Unknown command or category name in ACL";
const AFTER_ALLKEYS: &str = "Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns";
const AFTER_ALLCHANNELS: &str = "Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. Try 'resetchannels' to start with an empty list of channels";

impl User {
    /// A user as `ACL SETUSER <name>` creates one: off, no password, no
    /// commands, no keys, no channels.
    pub fn new(name: &str) -> User {
        User {
            name: name.to_string(),
            enabled: false,
            nopass: false,
            passwords: BTreeSet::new(),
            allowed: BTreeSet::new(),
            allowed_sub: BTreeSet::new(),
            denied_sub: BTreeSet::new(),
            command_rules: Vec::new(),
            all_commands_base: false,
            keys: Vec::new(),
            all_channels: false,
            channels: Vec::new(),
            sanitize_payload: None,
            unrestricted: false,
        }
    }

    /// Redis's `default` user when no password is configured: on, nopass,
    /// every key, channel and command.
    pub fn default_user() -> User {
        let mut u = User::new("default");
        u.apply_all(&["on", "nopass", "~*", "&*", "+@all"]).expect("valid rules");
        u
    }

    /// Applies rules in order, all or nothing (as `ACL SETUSER`).
    pub fn apply_all<S: AsRef<str>>(&mut self, rules: &[S]) -> Result<(), RuleError> {
        let mut next = self.clone();
        for r in rules {
            next.apply(r.as_ref())?;
        }
        *self = next;
        Ok(())
    }

    /// Every command on every key (no check needed).
    pub fn unrestricted(&self) -> bool {
        self.unrestricted
    }

    fn update_unrestricted(&mut self) {
        self.unrestricted = self.denied_sub.is_empty()
            && COMMANDS.iter().all(|c| self.allowed.contains(c.name))
            && self.keys.iter().any(|k| k.read && k.write && k.pattern.as_ref() == b"*");
    }

    /// Applies one rule.
    pub fn apply(&mut self, rule: &str) -> Result<(), RuleError> {
        let err = |reason| RuleError { rule: rule.to_string(), reason };
        let lower = rule.to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "allkeys" => self.apply("~*")?,
            "resetkeys" => self.keys.clear(),
            "allchannels" => {
                self.all_channels = true;
                self.channels.clear();
            }
            "resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
            }
            "allcommands" => self.apply("+@all")?,
            "nocommands" => self.apply("-@all")?,
            "sanitize-payload" => self.sanitize_payload = Some(true),
            "skip-sanitize-payload" => self.sanitize_payload = Some(false),
            "reset" => {
                for r in ["resetpass", "resetkeys", "resetchannels", "off", "-@all"] {
                    self.apply(r)?;
                }
                self.sanitize_payload = Some(true);
            }
            _ => match rule.as_bytes().first() {
                Some(b'>') => {
                    self.passwords.insert(hash_password(&rule.as_bytes()[1..]));
                    self.nopass = false;
                }
                Some(b'<') => {
                    if !self.passwords.remove(&hash_password(&rule.as_bytes()[1..])) {
                        return Err(err("The password you are trying to remove from the user does not exist"));
                    }
                }
                Some(b'#') | Some(b'!') => {
                    let hex = &rule[1..];
                    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                        return Err(err(
                            "The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters",
                        ));
                    }
                    if rule.starts_with('#') {
                        self.passwords.insert(hex.to_string());
                        self.nopass = false;
                    } else if !self.passwords.remove(hex) {
                        return Err(err("The password you are trying to remove from the user does not exist"));
                    }
                }
                // (Patterns are words of an ACL file line: no spaces.)
                Some(b'~' | b'%' | b'&') if has_spaces(&rule[1..]) => return Err(err(SYNTAX)),
                Some(b'~') => self.add_keys(true, true, &rule[1..]).map_err(err)?,
                Some(b'%') => {
                    let (perms, pat) = rule[1..].split_once('~').ok_or_else(|| err(SYNTAX))?;
                    let perms = perms.to_ascii_uppercase();
                    let (r, w) = (perms.matches('R').count(), perms.matches('W').count());
                    if perms.is_empty() || r > 1 || w > 1 || r + w != perms.len() {
                        return Err(err(SYNTAX));
                    }
                    self.add_keys(r == 1, w == 1, pat).map_err(err)?;
                }
                Some(b'&') if &rule[1..] == "*" => self.apply("allchannels")?,
                Some(b'&') if self.all_channels => return Err(err(AFTER_ALLCHANNELS)),
                Some(b'&') => {
                    if !self.all_channels && !self.channels.iter().any(|c| c == &rule[1..]) {
                        self.channels.push(rule[1..].to_string());
                    }
                }
                Some(b'+') | Some(b'-') => self.command_rule(rule.starts_with('+'), &lower[1..]).map_err(err)?,
                Some(b'(') => return Err(err("Selectors are not supported")),
                _ => return Err(err(SYNTAX)),
            },
        }
        self.update_unrestricted();
        Ok(())
    }

    fn add_keys(&mut self, read: bool, write: bool, pattern: &str) -> Result<(), &'static str> {
        let all = |k: &KeyPattern| k.read && k.write && k.pattern.as_ref() == b"*";
        if self.keys.iter().any(all) {
            return Err(AFTER_ALLKEYS);
        }
        let pattern = Bytes::copy_from_slice(pattern.as_bytes());
        if pattern.as_ref() == b"*" && read && write {
            self.keys.clear();
        }
        if let Some(k) = self.keys.iter_mut().find(|k| k.pattern == pattern) {
            k.read |= read;
            k.write |= write;
        } else {
            self.keys.push(KeyPattern { read, write, pattern });
        }
        Ok(())
    }

    fn command_rule(&mut self, allow: bool, what: &str) -> Result<(), &'static str> {
        let sign = if allow { '+' } else { '-' };
        if let Some(cat) = what.strip_prefix('@') {
            let names: Vec<&'static str> = if cat == "all" {
                COMMANDS.iter().map(|c| c.name).collect()
            } else if CATEGORIES.contains(&cat) {
                COMMANDS.iter().filter(|c| categories(c).contains(&cat)).map(|c| c.name).collect()
            } else {
                return Err(UNKNOWN);
            };
            if cat == "all" {
                self.command_rules.clear();
                self.all_commands_base = allow;
            } else {
                self.command_rules.push(format!("{sign}@{cat}"));
            }
            for n in names {
                self.set_command(allow, n);
            }
            return Ok(());
        }
        let (cmd, sub) = match what.split_once('|') {
            // (No subcommand has a space: Redis finds none such.)
            Some((_, s)) if has_spaces(s) => return Err(UNKNOWN),
            Some((c, s)) if !s.is_empty() && !s.contains('|') => (c, Some(s)),
            Some(_) => return Err(SYNTAX),
            None => (what, None),
        };
        let Some(spec) = crate::command::table::lookup(cmd.as_bytes()) else {
            return Err(UNKNOWN);
        };
        if sub.is_some() && !has_subcommands(spec) {
            return Err(UNKNOWN);
        }
        match sub {
            None => self.set_command(allow, spec.name),
            Some(sub) => {
                let full = format!("{}|{sub}", spec.name);
                if allow {
                    self.denied_sub.remove(&full);
                    if !self.allowed.contains(spec.name) {
                        self.allowed_sub.insert(full);
                    }
                } else {
                    self.allowed_sub.remove(&full);
                    if self.allowed.contains(spec.name) {
                        self.denied_sub.insert(full);
                    }
                }
            }
        }
        self.command_rules.push(format!("{sign}{what}"));
        Ok(())
    }

    fn set_command(&mut self, allow: bool, name: &str) {
        let prefix = format!("{name}|");
        self.allowed_sub.retain(|s| !s.starts_with(&prefix));
        self.denied_sub.retain(|s| !s.starts_with(&prefix));
        if allow {
            self.allowed.insert(name.to_string());
        } else {
            self.allowed.remove(name);
        }
    }

    /// Whether `password` is one of the user's (any password for `nopass`).
    /// Disabled users match nothing.
    pub fn password_ok(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let h = hash_password(password);
        // Every stored hash is compared, so the time does not say which matched.
        self.passwords.iter().fold(false, |ok, p| ok | constant_time_eq(p.as_bytes(), h.as_bytes()))
    }

    /// Whether the user may run `spec` with `argv` (name included).
    pub fn check(&self, spec: &CommandSpec, argv: &[Bytes]) -> Result<(), Denied> {
        if self.unrestricted || NO_AUTH.contains(&spec.name) {
            return Ok(());
        }
        let sub =
            argv.get(1).filter(|_| has_subcommands(spec)).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let full = sub.as_ref().map(|s| format!("{}|{s}", spec.name));
        let allowed = match &full {
            Some(f) if self.denied_sub.contains(f) => false,
            Some(f) => self.allowed.contains(spec.name) || self.allowed_sub.contains(f),
            None => self.allowed.contains(spec.name),
        };
        if !allowed {
            return Err(Denied::Command(full.unwrap_or_else(|| spec.name.to_string())));
        }
        // Commands whose keys only their parser finds (RedisAI's runs and
        // DAGs) are checked by `check_keys` once parsed.
        if matches!(spec.keys, KeySpec::Movable(_)) {
            return Ok(());
        }
        let Some(idx) = spec.key_indexes(argv) else { return Ok(()) };
        self.check_keys(key_access(spec, argv), idx.into_iter().map(|i| &argv[i]))
    }

    /// Whether the user may touch each of `keys` as `access` needs.
    pub fn check_keys<'a>(&self, access: KeyAccess, keys: impl IntoIterator<Item = &'a Bytes>) -> Result<(), Denied> {
        if self.unrestricted {
            return Ok(());
        }
        for key in keys {
            // One pattern must grant all the access needed (as Redis checks).
            let ok = self.keys.iter().any(|k| {
                let granted = match access {
                    KeyAccess::Read => k.read,
                    KeyAccess::Write => k.write,
                    KeyAccess::ReadWrite => k.read && k.write,
                    KeyAccess::Any => true,
                };
                granted && glob::matches(&k.pattern, key)
            });
            if !ok {
                return Err(Denied::Key(String::from_utf8_lossy(key).into_owned()));
            }
        }
        Ok(())
    }
}

/// Why a user may not run a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The command (`cmd` or `cmd|sub`).
    Command(String),
    /// A key it names.
    Key(String),
}

impl Denied {
    /// The command's error reply, in Redis 7.0's words.
    pub fn noperm(&self) -> String {
        match self {
            Denied::Command(c) => format!("NOPERM this user has no permissions to run the '{c}' command"),
            Denied::Key(_) => "NOPERM this user has no permissions to access one of the keys used as arguments".into(),
        }
    }

    /// `ACL DRYRUN`'s answer.
    pub fn dryrun(&self) -> String {
        match self {
            Denied::Command(c) => format!("This user has no permissions to run the '{c}' command"),
            Denied::Key(k) => format!("This user has no permissions to access the '{k}' key"),
        }
    }
}

/// Commands whose first argument is a subcommand (`client|kill`).
fn has_subcommands(spec: &CommandSpec) -> bool {
    matches!(spec.name, "client" | "cluster" | "config" | "command" | "module" | "acl")
}

/// Whether `s` could not be one word of an ACL file line.
fn has_spaces(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c == '\0')
}

/// `ACL SETUSER`'s check of a user name: a word of an ACL file line.
pub fn check_name(name: &[u8]) -> Result<&str, String> {
    match std::str::from_utf8(name) {
        Ok(n) if !n.is_empty() && !has_spaces(n) => Ok(n),
        _ => Err("ERR Usernames can't contain spaces or null characters".into()),
    }
}

/// SHA-256 of a password, lower-case hex (what Redis stores and shows).
pub fn hash_password(password: &[u8]) -> String {
    let digest = Sha256::digest(password);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses an ACL file (Redis's `aclfile` format): one `user <name>
/// <rules...>` per line, `#` comments and blank lines ignored. A `default`
/// line replaces the built-in default user.
pub fn parse_file(text: &str) -> Result<Vec<User>, String> {
    let mut users: Vec<User> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] != "user" || words.len() < 2 {
            return Err(format!("line {}: should start with 'user <name>'", n + 1));
        }
        if users.iter().any(|u| u.name == words[1]) {
            return Err(format!("line {}: user '{}' is defined twice", n + 1, words[1]));
        }
        let mut u = User::new(words[1]);
        u.apply_all(&words[2..]).map_err(|e| format!("line {}: '{}': {}", n + 1, e.rule, e.reason))?;
        users.push(u);
    }
    Ok(users)
}

#[cfg(test)]
mod tests;
