//! Users on the router: who a connection is (`AUTH`, `HELLO ... AUTH`),
//! the check every command passes before it is parsed (`NOAUTH`,
//! `NOPERM`), and the ACL commands.
//!
//! The cluster's users are kept by the meta group ([`cluster`]): every
//! router reads them from it and enforces the same ones, and `ACL SETUSER`,
//! `DELUSER` and `LOAD` change them there. A router's `--acl-file` and
//! `--requirepass` are the users a cluster that has none starts with, and
//! nothing else: until the router has read the cluster's users it answers
//! `LOADING` (it fails closed); see docs/security.md.

pub mod cluster;
pub mod log;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tessera_common::acl::{self, GetUserValue, User};
use tessera_common::command::table::{self, CommandSpec, KeySpec};
use tessera_common::command::{self as command, AclCmd, Command, NodeCommand, ParseLimits};
use tessera_common::error::Error;
use tessera_common::reply::Reply;

use crate::conn::ConnState;

const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const NOAUTH: &str = "NOAUTH Authentication required.";
const LOADING: &str = "LOADING Tessera is reading the cluster's users";
const NOAUTH_HELLO: &str = "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time";

/// The users this router enforces: the cluster's once read, its own
/// until then. Connections follow a change at their next command (see
/// [`follow`]).
#[derive(Debug)]
pub struct Users {
    current: RwLock<Arc<UserSet>>,
    /// Bumped whenever `current` is replaced: only by the cluster's users
    /// (0: this router's own are in force, see [`Users::ready`]).
    generation: AtomicU64,
    /// This router's own users as `ACL LIST` lines: what it seeds a
    /// cluster without users with.
    own: Vec<String>,
    /// What this router refused (`ACL LOG`).
    pub log: log::AclLog,
}

/// Users by name (`default` always among them).
#[derive(Debug)]
pub struct UserSet {
    pub by_name: BTreeMap<String, Arc<User>>,
    /// The cluster's version of them; 0: this router's own (the cluster
    /// has none, or has not answered yet).
    pub version: u64,
}

impl Users {
    /// From an ACL file's text and a default-user password.
    pub fn load(acl_file: Option<&str>, requirepass: Option<&str>) -> anyhow::Result<Users> {
        let users = own_users(acl_file, requirepass)?;
        let own = users.values().map(|u| u.describe()).collect();
        Ok(Users {
            current: RwLock::new(Arc::new(UserSet { by_name: users, version: 0 })),
            generation: AtomicU64::new(0),
            own,
            log: log::AclLog::default(),
        })
    }

    /// The users in force now.
    pub fn current(&self) -> Arc<UserSet> {
        self.current.read().clone()
    }

    /// Changes whenever the users in force do.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This router's own users, as `ACL LIST` lines.
    pub fn own(&self) -> &[String] {
        &self.own
    }

    /// Whether the users in force are the cluster's and not this router's own.
    pub fn differ_from_own(&self) -> bool {
        let current = self.current();
        current.version > 0 && !current.by_name.values().map(|u| u.describe()).eq(self.own.iter().cloned())
    }

    /// Puts the cluster's users (`ACL LIST` lines) of `version` in force,
    /// unless newer ones already are. A line that does not parse leaves
    /// the users as they were.
    pub fn install(&self, version: u64, lines: &[String]) -> Result<bool, String> {
        if version <= self.current.read().version {
            return Ok(false);
        }
        let mut by_name: BTreeMap<String, Arc<User>> =
            acl::parse_file(&lines.join("\n"))?.into_iter().map(|u| (u.name.clone(), Arc::new(u))).collect();
        by_name.entry("default".to_string()).or_insert_with(|| Arc::new(User::default_user()));
        let mut current = self.current.write();
        if version <= current.version {
            return Ok(false);
        }
        *current = Arc::new(UserSet { by_name, version });
        self.generation.fetch_add(1, Ordering::Release);
        Ok(true)
    }

    /// Whether the cluster's users are in force: until then every command
    /// but QUIT answers `LOADING`.
    pub fn ready(&self) -> bool {
        self.generation() > 0
    }

    pub fn get(&self, name: &[u8]) -> Option<Arc<User>> {
        self.current.read().get(name)
    }

    /// The user a new connection starts as, and whether it is
    /// authenticated (the default user without a password: yes).
    pub fn initial(&self) -> (Arc<User>, bool, u64) {
        let generation = self.generation();
        let d = self.current.read().by_name["default"].clone();
        let open = d.enabled && d.nopass && self.ready();
        (d, open, generation)
    }

    /// `AUTH [user] password`: the user, or the error reply.
    pub fn auth(&self, user: Option<&Bytes>, password: &[u8]) -> Result<Arc<User>, Reply> {
        self.current.read().auth(user, password)
    }
}

impl UserSet {
    pub fn get(&self, name: &[u8]) -> Option<Arc<User>> {
        self.by_name.get(std::str::from_utf8(name).ok()?).cloned()
    }

    fn auth(&self, user: Option<&Bytes>, password: &[u8]) -> Result<Arc<User>, Reply> {
        let name = user.map_or(&b"default"[..], |u| &u[..]);
        if user.is_none() && self.by_name["default"].nopass {
            return Err(Reply::err(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ));
        }
        match self.get(name) {
            Some(u) if u.password_ok(password) => Ok(u),
            _ => Err(Reply::err(WRONGPASS)),
        }
    }
}

/// A connection follows a change of the users before its next command: it
/// runs as its user's new rules, or, if its user was deleted, is closed
/// (`false`), as Redis closes the clients of a deleted user. A connection
/// opened before the cluster's users were read (it could run nothing)
/// becomes what a new connection is now.
pub fn follow(users: &Users, conn: &mut ConnState) -> bool {
    let generation = users.generation();
    if generation == conn.users_generation {
        return true;
    }
    conn.users_generation = generation;
    if !conn.authenticated && users.ready() {
        let (user, open, _) = users.initial();
        if open {
            conn.user = user;
            conn.authenticated = true;
            return true;
        }
    }
    match users.get(conn.user.name.as_bytes()) {
        Some(u) => {
            conn.user = u;
            true
        }
        None => false,
    }
}

/// A router's own users: its ACL file's, and the default user with
/// `requirepass` (or Redis's open default user).
fn own_users(acl_file: Option<&str>, requirepass: Option<&str>) -> anyhow::Result<BTreeMap<String, Arc<User>>> {
    let from_file = acl::parse_file(acl_file.unwrap_or("")).map_err(|e| anyhow::anyhow!("--acl-file: {e}"))?;
    let mut users: BTreeMap<String, Arc<User>> = from_file.into_iter().map(|u| (u.name.clone(), Arc::new(u))).collect();
    match (requirepass, users.contains_key("default")) {
        (Some(_), true) => anyhow::bail!(
            "--requirepass and an --acl-file that defines the default user: give the password in the file"
        ),
        (Some(pass), false) => {
            let mut d = User::default_user();
            d.apply_all(&["resetpass", &format!(">{pass}")]).map_err(|e| anyhow::anyhow!(e.message()))?;
            users.insert("default".to_string(), Arc::new(d));
        }
        (None, _) => {
            users.entry("default".to_string()).or_insert_with(|| Arc::new(User::default_user()));
        }
    }
    Ok(users)
}

/// The check before a command is parsed, after its name and arity are
/// known to be right (Redis's order: unknown command and arity errors
/// come first, then `NOAUTH`, then `NOPERM`).
pub fn check(users: &Users, conn: &ConnState, spec: &CommandSpec, argv: &[Bytes]) -> Result<(), Error> {
    if !users.ready() && spec.name != "quit" {
        return Err(Error::Verbatim(LOADING.into()));
    }
    if conn.authenticated && conn.user.unrestricted() {
        return Ok(());
    }
    if !spec.arity_ok(argv.len()) {
        return Ok(());
    }
    if !conn.authenticated {
        // HELLO without AUTH is refused when it runs (see `hello_allowed`).
        return match spec.name {
            "auth" | "quit" | "hello" => Ok(()),
            _ => Err(Error::Verbatim(NOAUTH.into())),
        };
    }
    conn.user.check(spec, argv).map_err(|d| refused(users, conn, &d))
}

/// Where a refusal happened, as `ACL LOG` says it.
fn log_context(conn: &ConnState) -> &'static str {
    if conn.tx.is_some() {
        "multi"
    } else {
        "toplevel"
    }
}

/// A refusal: logged (`ACL LOG`), and its NOPERM error.
fn refused(users: &Users, conn: &ConnState, d: &acl::Denied) -> Error {
    let (reason, object) = match d {
        acl::Denied::Command(c) => (log::Reason::Command, c.as_str()),
        acl::Denied::Key(k) => (log::Reason::Key, k.as_str()),
    };
    users.log.record(reason, log_context(conn), object, &conn.user.name, || conn.info_line());
    Error::Verbatim(d.noperm())
}

/// The keys of a command only its parser finds (RedisAI's model, script
/// and DAG runs: `KeySpec::Movable`), checked once parsed.
pub fn check_parsed(
    users: &Users,
    conn: &ConnState,
    spec: &CommandSpec,
    parsed: Result<Command, Error>,
) -> Result<Command, Error> {
    if conn.user.unrestricted() || !matches!(spec.keys, KeySpec::Movable(_)) {
        return parsed;
    }
    if let Ok(Command::Keyed { cmd, .. }) = &parsed {
        conn.user.check_keys(acl::key_access(spec, &[]), cmd.keys()).map_err(|d| refused(users, conn, &d))?;
    }
    parsed
}

/// A command as sent for `user`: one that runs scripts carries the user's
/// rules when they do not allow everything, and the node checks each
/// `redis.execute` of its scripts against them.
pub fn on_behalf(user: &User, cmd: NodeCommand) -> NodeCommand {
    match !user.unrestricted() && cmd.runs_scripts() {
        true => NodeCommand::AsUser { user: user.describe(), cmd: Box::new(cmd) },
        false => cmd,
    }
}

/// HELLO on a connection that has not authenticated must authenticate.
pub fn hello_allowed(conn: &ConnState, has_auth: bool) -> Result<(), Reply> {
    match conn.authenticated || has_auth {
        true => Ok(()),
        false => Err(Reply::err(NOAUTH_HELLO)),
    }
}

/// AUTH (also HELLO's: `via` names the command, for `ACL LOG`): on
/// success the connection becomes `user`.
pub fn authenticate(
    users: &Users,
    conn: &mut ConnState,
    via: &str,
    user: Option<&Bytes>,
    password: &[u8],
) -> Result<(), Reply> {
    let generation = users.generation();
    let u = users.auth(user, password).inspect_err(|e| {
        if matches!(e, Reply::Error(m) if m == WRONGPASS) {
            let name = user.map_or("default".into(), |u| String::from_utf8_lossy(u).into_owned());
            users.log.record(log::Reason::Auth, log_context(conn), via, &name, || conn.info_line());
        }
    })?;
    conn.user = u;
    conn.users_generation = generation;
    conn.authenticated = true;
    Ok(())
}

/// The ACL command's subcommands that change nothing (the others are in
/// [`cluster`]).
pub fn run(users: &Users, limits: &ParseLimits, conn: &ConnState, cmd: AclCmd) -> Reply {
    let users_log = &users.log;
    let users = users.current();
    match cmd {
        AclCmd::WhoAmI => Reply::bulk_str(&conn.user.name),
        AclCmd::Users => Reply::Array(users.by_name.keys().map(|n| Reply::bulk_str(n)).collect()),
        AclCmd::List => Reply::Array(users.by_name.values().map(|u| Reply::bulk_str(&u.describe())).collect()),
        AclCmd::GetUser(name) => match users.get(&name) {
            None => Reply::Null,
            Some(u) => Reply::Map(
                u.getuser_fields()
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            GetUserValue::List(l) => Reply::Array(l.iter().map(|s| Reply::bulk_str(s)).collect()),
                            GetUserValue::Text(t) => Reply::bulk_str(&t),
                        };
                        (Reply::bulk_str(k), v)
                    })
                    .collect(),
            ),
        },
        AclCmd::Cat(None) => Reply::Array(acl::CATEGORIES.iter().map(|c| Reply::bulk_str(c)).collect()),
        AclCmd::Cat(Some(cat)) => {
            let cat = String::from_utf8_lossy(&cat).to_ascii_lowercase();
            if !acl::CATEGORIES.contains(&cat.as_str()) {
                return Reply::err(format!("ERR Unknown category '{cat}'"));
            }
            let names = table::COMMANDS.iter().filter(|c| acl::categories(c).contains(&cat.as_str()));
            Reply::Array(names.map(|c| Reply::bulk_str(c.name)).collect())
        }
        AclCmd::GenPass(bits) => match bits.unwrap_or(256) {
            b @ 1..=4096 => {
                let hex_chars = (b as usize).div_ceil(4);
                let mut s = String::with_capacity(hex_chars);
                while s.len() < hex_chars {
                    s.push_str(&format!("{:016x}", rand::random::<u64>()));
                }
                s.truncate(hex_chars);
                Reply::bulk_str(&s)
            }
            _ => Reply::err("ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096"),
        },
        AclCmd::DryRun(name, argv) => {
            let Some(u) = users.get(&name) else {
                return Reply::err(format!("ERR User '{}' not found", String::from_utf8_lossy(&name)));
            };
            let Some(spec) = table::lookup(&argv[0]) else {
                return Reply::err(format!("ERR Command '{}' not found", String::from_utf8_lossy(&argv[0])));
            };
            if !spec.arity_ok(argv.len()) {
                return Reply::err(format!("ERR wrong number of arguments for '{}' command", spec.name));
            }
            if let Err(d) = u.check(spec, &argv) {
                return Reply::bulk_str(&d.dryrun());
            }
            if matches!(spec.keys, KeySpec::Movable(_)) {
                // Keys only the parser finds: parsed as the command would be.
                match command::parse_spec(spec, argv, limits) {
                    Ok(Command::Keyed { cmd, .. }) => {
                        if let Err(d) = u.check_keys(acl::key_access(spec, &[]), cmd.keys()) {
                            return Reply::bulk_str(&d.dryrun());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return e.to_reply(),
                }
            }
            Reply::ok()
        }
        AclCmd::Log(None) => {
            users_log.reset();
            Reply::ok()
        }
        AclCmd::Log(Some(count)) => users_log.reply(count),
        AclCmd::SetUser(..) | AclCmd::DelUser(_) | AclCmd::Load | AclCmd::Save => {
            Reply::err("ERR internal: an ACL change outside the cluster's handling")
        }
        AclCmd::Help => Reply::Array(
            [
                "ACL <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CAT [<category>]",
                "    List all commands that belong to <category>, or all command categories",
                "    when no category is specified.",
                "DELUSER <username> [<username> ...]",
                "    Delete a list of users.",
                "DRYRUN <username> <command> [<arg> ...]",
                "    Returns whether the user can execute the given command without executing the command.",
                "GETUSER <username>",
                "    Get the user's details.",
                "GENPASS [<bits>]",
                "    Generate a secure 256-bit user password. The optional `bits` argument can",
                "    be used to specify a different size.",
                "LIST",
                "    Show users details in config file format.",
                "LOAD",
                "    Reload users from the ACL file.",
                "LOG [<count> | RESET]",
                "    Show the ACL log entries.",
                "SAVE",
                "    Save the current config to the ACL file.",
                "SETUSER <username> <attribute> [<attribute> ...]",
                "    Create or modify a user with the specified attributes.",
                "USERS",
                "    List all the registered usernames.",
                "WHOAMI",
                "    Return the current connection username.",
            ]
            .iter()
            .map(|l| Reply::Simple((*l).into()))
            .collect(),
        ),
    }
}
