//! Connection, server and cluster commands: answered by the router itself
//! (except CLUSTER COUNTKEYSINSLOT / GETKEYSINSLOT, which read a shard).

use bytes::Bytes;

use super::node::NodeCommand;
use super::table::CommandSpec;
use super::{int_arg, Command, ParseLimits};
use crate::error::{Error, Result};
use crate::slot::{key_slot, SLOTS};

#[derive(Debug, Clone, PartialEq)]
pub enum Local {
    Ping(Option<Bytes>),
    Echo(Bytes),
    Hello {
        proto: Option<i64>,
        setname: Option<Bytes>,
        /// `AUTH <user> <password>`.
        auth: Option<(Bytes, Bytes)>,
    },
    /// `AUTH [user] password`.
    Auth {
        user: Option<Bytes>,
        password: Bytes,
    },
    Acl(AclCmd),
    Client(ClientCmd),
    Select(i64),
    Quit,
    ReadOnly,
    ReadWrite,
    Asking,
    Info(Vec<String>),
    ConfigGet(Vec<Bytes>),
    ConfigResetStat,
    Command(CommandCmd),
    Cluster(ClusterCmd),
    /// AI.CONFIG: a setting sent to every node, or GET from one.
    AiConfig(crate::model::AiConfig),
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: the connection's transaction
    /// (see the router's `multi`).
    Tx(TxCmd),
    Module(ModuleCmd),
    /// SAVE (reply when every replica has a snapshot) or BGSAVE (reply at once).
    Save {
        background: bool,
    },
    LastSave,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TxCmd {
    Multi,
    Exec,
    Discard,
    /// The keys, all in `slot`.
    Watch {
        keys: Vec<Bytes>,
        slot: u16,
    },
    Unwatch,
}

/// ACL subcommands (users: [`crate::acl`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AclCmd {
    WhoAmI,
    List,
    Users,
    GetUser(Bytes),
    Cat(Option<Bytes>),
    GenPass(Option<i64>),
    /// The user, then the command's argv.
    DryRun(Bytes, Vec<Bytes>),
    SetUser(Bytes, Vec<Bytes>),
    DelUser(Vec<Bytes>),
    Load,
    Save,
    /// ACL LOG [count | RESET]: `None` is RESET's.
    Log(Option<Option<i64>>),
    Help,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModuleCmd {
    List,
    /// LOAD, LOADEX or UNLOAD: refused (RedisAI is built in; nothing else loads).
    Refused(String),
    Help,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientCmd {
    SetName(Bytes),
    GetName,
    Id,
    Info,
    List,
    /// Accepted and ignored (SETINFO, MAINT_NOTIFICATIONS, NO-EVICT, NO-TOUCH, REPLY ON).
    Ack,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandCmd {
    All,
    Count,
    List,
    Info(Vec<Bytes>),
    Docs(Vec<Bytes>),
    GetKeys(Vec<Bytes>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterCmd {
    Slots,
    Shards,
    Nodes,
    MyId,
    MyShardId,
    Info,
    KeySlot(Bytes),
    Help,
}

fn sub_arity(cmd: &str, sub: &[u8]) -> Error {
    Error::Arity(format!("{cmd}|{}", String::from_utf8_lossy(sub).to_ascii_lowercase()))
}

fn unknown_sub(cmd: &str, sub: &[u8]) -> Error {
    Error::UnknownSubcommand { cmd: cmd.to_ascii_uppercase(), sub: String::from_utf8_lossy(sub).into_owned() }
}

pub fn parse(spec: &CommandSpec, argv: Vec<Bytes>, _limits: &ParseLimits) -> Result<Command> {
    let local = match spec.name {
        "ping" => match argv.len() {
            1 => Local::Ping(None),
            2 => Local::Ping(Some(argv[1].clone())),
            _ => return Err(Error::Arity("ping".into())),
        },
        "echo" => Local::Echo(argv[1].clone()),
        "hello" => parse_hello(&argv)?,
        "auth" => match argv.len() {
            2 => Local::Auth { user: None, password: argv[1].clone() },
            3 => Local::Auth { user: Some(argv[1].clone()), password: argv[2].clone() },
            _ => return Err(Error::Syntax),
        },
        "acl" => Local::Acl(parse_acl(&argv)?),
        "client" => parse_client(&argv)?,
        "select" => Local::Select(int_arg(&argv[1])?),
        "quit" => Local::Quit,
        "readonly" => Local::ReadOnly,
        "readwrite" => Local::ReadWrite,
        "asking" => Local::Asking,
        "info" => Local::Info(argv[1..].iter().map(|s| String::from_utf8_lossy(s).to_ascii_lowercase()).collect()),
        "config" => {
            let sub = argv[1].to_ascii_uppercase();
            match sub.as_slice() {
                b"GET" if argv.len() >= 3 => Local::ConfigGet(argv[2..].to_vec()),
                b"GET" => return Err(sub_arity("config", &argv[1])),
                b"RESETSTAT" => Local::ConfigResetStat,
                _ => return Err(unknown_sub("config", &argv[1])),
            }
        }
        "command" => Local::Command(parse_command(&argv)?),
        "multi" => Local::Tx(TxCmd::Multi),
        "exec" => Local::Tx(TxCmd::Exec),
        "discard" => Local::Tx(TxCmd::Discard),
        "unwatch" => Local::Tx(TxCmd::Unwatch),
        "watch" => {
            let keys = argv[1..].to_vec();
            let slot = super::keys_slot(&keys)?.expect("WATCH names a key");
            Local::Tx(TxCmd::Watch { keys, slot })
        }
        "module" => {
            let sub = argv[1].to_ascii_uppercase();
            match sub.as_slice() {
                b"LIST" if argv.len() == 2 => Local::Module(ModuleCmd::List),
                b"HELP" if argv.len() == 2 => Local::Module(ModuleCmd::Help),
                b"LIST" | b"HELP" => return Err(sub_arity("module", &argv[1])),
                b"LOAD" | b"LOADEX" | b"UNLOAD" if argv.len() >= 3 => {
                    Local::Module(ModuleCmd::Refused(String::from_utf8_lossy(&sub).into_owned()))
                }
                b"LOAD" | b"LOADEX" | b"UNLOAD" => return Err(sub_arity("module", &argv[1])),
                _ => return Err(unknown_sub("module", &argv[1])),
            }
        }
        "save" => Local::Save { background: false },
        "bgsave" => match argv.get(1) {
            None => Local::Save { background: true },
            Some(a) if a.eq_ignore_ascii_case(b"SCHEDULE") && argv.len() == 2 => Local::Save { background: true },
            Some(_) => return Err(Error::Syntax),
        },
        "lastsave" => Local::LastSave,
        "cluster" => return parse_cluster(&argv),
        other => unreachable!("{other} is not a server command"),
    };
    Ok(Command::Local(local))
}

fn parse_hello(argv: &[Bytes]) -> Result<Local> {
    let mut proto = None;
    let mut setname = None;
    let mut auth = None;
    let mut i = 1;
    if let Some(v) = argv.get(1) {
        let n =
            int_arg(v).map_err(|_| Error::Verbatim("ERR Protocol version is not an integer or out of range".into()))?;
        if !(2..=3).contains(&n) {
            return Err(Error::NoProto);
        }
        proto = Some(n);
        i = 2;
    }
    while i < argv.len() {
        match argv[i].to_ascii_uppercase().as_slice() {
            b"AUTH" if i + 2 < argv.len() => {
                auth = Some((argv[i + 1].clone(), argv[i + 2].clone()));
                i += 3;
            }
            b"SETNAME" if i + 1 < argv.len() => {
                setname = Some(argv[i + 1].clone());
                i += 2;
            }
            _ => {
                return Err(Error::Verbatim(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&argv[i])
                )))
            }
        }
    }
    Ok(Local::Hello { proto, setname, auth })
}

fn parse_acl(argv: &[Bytes]) -> Result<AclCmd> {
    let sub = argv[1].to_ascii_uppercase();
    let n = argv.len();
    let arity = || sub_arity("acl", &argv[1]);
    Ok(match sub.as_slice() {
        b"WHOAMI" if n == 2 => AclCmd::WhoAmI,
        b"LIST" if n == 2 => AclCmd::List,
        b"USERS" if n == 2 => AclCmd::Users,
        b"HELP" if n == 2 => AclCmd::Help,
        b"GETUSER" if n == 3 => AclCmd::GetUser(argv[2].clone()),
        b"CAT" if n <= 3 => AclCmd::Cat(argv.get(2).cloned()),
        b"GENPASS" if n <= 3 => AclCmd::GenPass(argv.get(2).map(|b| int_arg(b)).transpose()?),
        b"DRYRUN" if n >= 4 => AclCmd::DryRun(argv[2].clone(), argv[3..].to_vec()),
        b"SETUSER" if n >= 3 => AclCmd::SetUser(argv[2].clone(), argv[3..].to_vec()),
        b"DELUSER" if n >= 3 => AclCmd::DelUser(argv[2..].to_vec()),
        b"LOAD" if n == 2 => AclCmd::Load,
        b"LOG" if n == 2 => AclCmd::Log(Some(None)),
        b"LOG" if n == 3 && argv[2].eq_ignore_ascii_case(b"RESET") => AclCmd::Log(None),
        b"LOG" if n == 3 => AclCmd::Log(Some(Some(int_arg(&argv[2])?))),
        b"SAVE" if n == 2 => AclCmd::Save,
        b"WHOAMI" | b"LIST" | b"USERS" | b"HELP" | b"GETUSER" | b"CAT" | b"GENPASS" | b"DRYRUN" | b"SETUSER"
        | b"DELUSER" | b"LOAD" | b"SAVE" | b"LOG" => return Err(arity()),
        _ => return Err(unknown_sub("acl", &argv[1])),
    })
}

fn parse_client(argv: &[Bytes]) -> Result<Local> {
    let sub = argv[1].to_ascii_uppercase();
    let n = argv.len();
    let cmd = match sub.as_slice() {
        b"SETNAME" if n == 3 => {
            if argv[2].iter().any(|c| *c <= b' ' || *c > b'~') {
                return Err(Error::Verbatim(
                    "ERR Client names cannot contain spaces, newlines or special characters.".into(),
                ));
            }
            ClientCmd::SetName(argv[2].clone())
        }
        b"GETNAME" if n == 2 => ClientCmd::GetName,
        b"ID" if n == 2 => ClientCmd::Id,
        b"INFO" if n == 2 => ClientCmd::Info,
        b"LIST" => ClientCmd::List,
        b"SETINFO" if n == 4 => {
            let attr = argv[2].to_ascii_uppercase();
            if attr != b"LIB-NAME" && attr != b"LIB-VER" {
                return Err(Error::Verbatim(format!(
                    "ERR Unrecognized option '{}'",
                    String::from_utf8_lossy(&argv[2])
                )));
            }
            ClientCmd::Ack
        }
        b"MAINT_NOTIFICATIONS" | b"NO-EVICT" | b"NO-TOUCH" | b"REPLY" if n >= 3 => ClientCmd::Ack,
        b"SETNAME"
        | b"GETNAME"
        | b"ID"
        | b"INFO"
        | b"SETINFO"
        | b"MAINT_NOTIFICATIONS"
        | b"NO-EVICT"
        | b"NO-TOUCH"
        | b"REPLY" => return Err(sub_arity("client", &argv[1])),
        _ => return Err(unknown_sub("client", &argv[1])),
    };
    Ok(Local::Client(cmd))
}

fn parse_command(argv: &[Bytes]) -> Result<CommandCmd> {
    let Some(sub) = argv.get(1) else {
        return Ok(CommandCmd::All);
    };
    Ok(match sub.to_ascii_uppercase().as_slice() {
        b"COUNT" => CommandCmd::Count,
        b"LIST" => CommandCmd::List,
        b"INFO" => CommandCmd::Info(argv[2..].to_vec()),
        b"DOCS" => CommandCmd::Docs(argv[2..].to_vec()),
        b"GETKEYS" if argv.len() >= 3 => CommandCmd::GetKeys(argv[2..].to_vec()),
        b"GETKEYS" => return Err(sub_arity("command", sub)),
        _ => return Err(unknown_sub("command", sub)),
    })
}

fn parse_cluster(argv: &[Bytes]) -> Result<Command> {
    let sub = argv[1].to_ascii_uppercase();
    let n = argv.len();
    let local = |c| Ok(Command::Local(Local::Cluster(c)));
    match sub.as_slice() {
        b"SLOTS" if n == 2 => local(ClusterCmd::Slots),
        b"SHARDS" if n == 2 => local(ClusterCmd::Shards),
        b"NODES" if n == 2 => local(ClusterCmd::Nodes),
        b"MYID" if n == 2 => local(ClusterCmd::MyId),
        b"MYSHARDID" if n == 2 => local(ClusterCmd::MyShardId),
        b"INFO" if n == 2 => local(ClusterCmd::Info),
        b"HELP" if n == 2 => local(ClusterCmd::Help),
        b"KEYSLOT" if n == 3 => local(ClusterCmd::KeySlot(argv[2].clone())),
        b"COUNTKEYSINSLOT" if n == 3 => {
            let slot = slot_arg(&argv[2], "ERR Invalid slot")?;
            Ok(Command::Keyed { slot, cmd: NodeCommand::CountKeysInSlot { slot } })
        }
        b"GETKEYSINSLOT" if n == 4 => {
            let slot = int_arg(&argv[2])?;
            let count = int_arg(&argv[3])?;
            if !(0..i64::from(SLOTS)).contains(&slot) || count < 0 {
                return Err(Error::Verbatim("ERR Invalid slot or number of keys".into()));
            }
            let slot = slot as u16;
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            Ok(Command::Keyed { slot, cmd: NodeCommand::GetKeysInSlot { slot, count } })
        }
        b"SLOTS" | b"SHARDS" | b"NODES" | b"MYID" | b"MYSHARDID" | b"INFO" | b"HELP" | b"KEYSLOT"
        | b"COUNTKEYSINSLOT" | b"GETKEYSINSLOT" => Err(sub_arity("cluster", &argv[1])),
        _ => Err(unknown_sub("cluster", &argv[1])),
    }
}

fn slot_arg(b: &[u8], msg: &str) -> Result<u16> {
    let n = int_arg(b)?;
    if !(0..i64::from(SLOTS)).contains(&n) {
        return Err(Error::Verbatim(msg.into()));
    }
    Ok(n as u16)
}

/// `CLUSTER KEYSLOT` answer.
pub fn keyslot(key: &[u8]) -> i64 {
    i64::from(key_slot(key))
}

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::super::{parse, ParseLimits};
    use super::*;

    fn p(s: &str) -> Result<Command> {
        parse(argv(s), &ParseLimits::default())
    }

    #[test]
    fn cluster_subcommands() {
        assert_eq!(p("cluster slots").unwrap(), Command::Local(Local::Cluster(ClusterCmd::Slots)));
        assert_eq!(
            p("CLUSTER KEYSLOT").unwrap_err().to_string(),
            "ERR wrong number of arguments for 'cluster|keyslot' command"
        );
        assert_eq!(p("CLUSTER COUNTKEYSINSLOT 16384").unwrap_err().to_string(), "ERR Invalid slot");
        assert_eq!(
            p("CLUSTER COUNTKEYSINSLOT abc").unwrap_err().to_string(),
            "ERR value is not an integer or out of range"
        );
        assert_eq!(p("CLUSTER GETKEYSINSLOT 0 -1").unwrap_err().to_string(), "ERR Invalid slot or number of keys");
        assert_eq!(p("CLUSTER FOO").unwrap_err().to_string(), "ERR unknown subcommand 'FOO'. Try CLUSTER HELP.");
    }

    #[test]
    fn hello_versions() {
        assert_eq!(p("HELLO 4").unwrap_err().to_string(), "NOPROTO unsupported protocol version");
        assert_eq!(
            p("HELLO 3 SETNAME app").unwrap(),
            Command::Local(Local::Hello { proto: Some(3), setname: Some(Bytes::from_static(b"app")), auth: None })
        );
        assert!(p("HELLO 3 AUTH default pw").is_ok());
    }
}
