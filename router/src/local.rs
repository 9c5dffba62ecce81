//! Commands the router answers itself: connection handshake, CLIENT, INFO,
//! CONFIG GET, COMMAND and the CLUSTER introspection of the virtual topology.

use std::sync::Arc;

use bytes::Bytes;
use tessera_common::command::server::keyslot;
use tessera_common::command::server::ModuleCmd;
use tessera_common::command::table::{self, COMMANDS};
use tessera_common::command::{AclCmd, ClientCmd, ClusterCmd, CommandCmd, Local};
use tessera_common::error::Error;
use tessera_common::glob;
use tessera_common::reply::{Protocol, Reply};

use crate::conn::ConnState;
use crate::dispatch::{After, Pending};
use crate::error::Error as RouterError;
use crate::Router;

/// The Redis version Tessera reports to clients (the command surface it follows).
pub const REDIS_VERSION: &str = "7.2.0";

pub fn run(router: &Arc<Router>, conn: &mut ConnState, cmd: Local) -> (Pending, After) {
    let ready = |r: Reply| (Pending::ready(r), After::Continue);
    match cmd {
        Local::Ping(None) => ready(Reply::Simple("PONG".into())),
        Local::Ping(Some(m)) | Local::Echo(m) => ready(Reply::Bulk(m)),
        Local::Hello { proto, setname, auth } => {
            if let Err(e) = crate::acl::hello_allowed(conn, auth.is_some()) {
                return ready(e);
            }
            if let Some((user, pass)) = auth {
                if let Err(e) = crate::acl::authenticate(&router.users, conn, "HELLO", Some(&user), &pass) {
                    return ready(e);
                }
                router.update_client(conn);
            }
            if let Some(p) = proto {
                conn.proto = if p == 3 { Protocol::Resp3 } else { Protocol::Resp2 };
            }
            if let Some(n) = setname {
                conn.name = Some(n);
            }
            router.update_client(conn);
            ready(hello_reply(conn))
        }
        Local::Auth { user, password } => {
            match crate::acl::authenticate(&router.users, conn, "AUTH", user.as_ref(), &password) {
                Ok(()) => {
                    router.update_client(conn);
                    ready(Reply::ok())
                }
                Err(e) => ready(e),
            }
        }
        Local::Acl(c @ (AclCmd::SetUser(..) | AclCmd::DelUser(_) | AclCmd::Load | AclCmd::Save)) => {
            (Pending::Fut(Box::pin(crate::acl::cluster::change(router.clone(), c))), After::Continue)
        }
        Local::Acl(c) => ready(crate::acl::run(&router.users, &router.parse_limits, conn, c)),
        Local::Client(c) => ready(client(router, conn, c)),
        Local::Select(0) => ready(Reply::ok()),
        Local::Select(_) => ready(Error::SelectNotAllowed.to_reply()),
        Local::Quit => (Pending::ready(Reply::ok()), After::Close),
        Local::ReadOnly | Local::ReadWrite | Local::Asking => ready(Reply::ok()),
        Local::Info(sections) => {
            let info = crate::info::info(router.clone(), sections, conn.scope.clone(), conn.local.port());
            (Pending::Fut(Box::pin(info)), After::Continue)
        }
        Local::ConfigGet(patterns) => ready(config_get(router, &patterns)),
        Local::ConfigResetStat => {
            router.stats.reset();
            ready(Reply::ok())
        }
        Local::Command(c) => ready(command(c)),
        Local::Cluster(c) => ready(cluster(router, conn, c)),
        Local::Tx(_) => ready(Reply::err("ERR internal: a transaction command outside a transaction's handling")),
        Local::Module(m) => ready(module(m)),
        Local::Save { background } => {
            let router = router.clone();
            (Pending::Fut(Box::pin(crate::save::save(router, background))), After::Continue)
        }
        Local::LastSave => ready(Reply::Int(router.saves.last_save())),
        Local::AiConfig(op) => {
            let router = router.clone();
            (Pending::Fut(Box::pin(async move { ai_config(&router, op).await })), After::Continue)
        }
    }
}

fn hello_reply(conn: &ConnState) -> Reply {
    let kv = |k: &str, v: Reply| (Reply::bulk_str(k), v);
    Reply::Map(vec![
        kv("server", Reply::bulk_str("redis")),
        kv("version", Reply::bulk_str(REDIS_VERSION)),
        kv("proto", Reply::Int(if conn.proto == Protocol::Resp3 { 3 } else { 2 })),
        kv("id", Reply::Int(conn.id as i64)),
        kv("mode", Reply::bulk_str("cluster")),
        kv("role", Reply::bulk_str("master")),
        kv("modules", module_list()),
    ])
}

/// The RedisAI version a client probing `MODULE LIST` is told (1.2.7: the
/// command surface this follows).
pub const REDISAI_VERSION: i64 = 10207;

/// `MODULE LIST` as a Redis with RedisAI loaded answers it: RedisAI is
/// built in (no shared object, no load-time arguments), and nothing else
/// can be loaded.
fn module_list() -> Reply {
    Reply::Array(vec![Reply::Map(vec![
        (Reply::bulk_str("name"), Reply::bulk_str("ai")),
        (Reply::bulk_str("ver"), Reply::Int(REDISAI_VERSION)),
        (Reply::bulk_str("path"), Reply::bulk_str("built-in")),
        (Reply::bulk_str("args"), Reply::Array(vec![])),
    ])])
}

fn module(m: ModuleCmd) -> Reply {
    match m {
        ModuleCmd::List => module_list(),
        ModuleCmd::Refused(sub) => Reply::err(format!(
            "ERR MODULE {sub} is not supported: RedisAI (module 'ai') is built into Tessera and no other module can be loaded or unloaded"
        )),
        ModuleCmd::Help => Reply::Array(
            [
                "MODULE <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "LIST",
                "    Return a list of loaded modules (RedisAI, built in).",
                "LOAD, LOADEX, UNLOAD",
                "    Refused: no module can be loaded or unloaded.",
            ]
            .iter()
            .map(|l| Reply::Simple((*l).into()))
            .collect(),
        ),
    }
}

fn client(router: &Router, conn: &mut ConnState, c: ClientCmd) -> Reply {
    match c {
        ClientCmd::SetName(n) => {
            conn.name = (!n.is_empty()).then_some(n);
            router.update_client(conn);
            Reply::ok()
        }
        ClientCmd::GetName => conn.name.clone().map_or(Reply::Null, Reply::Bulk),
        ClientCmd::Id => Reply::Int(conn.id as i64),
        ClientCmd::Info => Reply::Verbatim(conn.info_line()),
        ClientCmd::List => Reply::Verbatim(router.client_list()),
        ClientCmd::Ack => Reply::ok(),
    }
}

fn config_get(router: &Router, patterns: &[Bytes]) -> Reply {
    let cfg = &router.config;
    let params: Vec<(&str, String)> = vec![
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("appendfsync", "everysec".into()),
        ("databases", "1".into()),
        ("cluster-enabled", "yes".into()),
        ("maxclients", cfg.max_clients.to_string()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("proto-max-bulk-len", cfg.limits.max_bulk_len.to_string()),
        ("timeout", "0".into()),
        ("tcp-keepalive", "300".into()),
        ("port", router.plain_addr.map_or(0, |a| a.port()).to_string()),
        ("tls-port", router.tls_addr.map_or(0, |a| a.port()).to_string()),
        ("bind", router.plain_addr.or(router.tls_addr).map(|a| a.ip().to_string()).unwrap_or_default()),
    ];
    let mut out = Vec::new();
    for (name, value) in params {
        if patterns.iter().any(|p| glob::matches(&p.to_ascii_lowercase(), name.as_bytes())) {
            out.push((Reply::bulk_str(name), Reply::bulk_str(&value)));
        }
    }
    Reply::Map(out)
}

fn command(c: CommandCmd) -> Reply {
    match c {
        CommandCmd::All => Reply::Array(COMMANDS.iter().map(|s| s.info_reply()).collect()),
        CommandCmd::Count => Reply::Int(COMMANDS.len() as i64),
        CommandCmd::List => Reply::Array(COMMANDS.iter().map(|s| Reply::bulk_str(s.name)).collect()),
        CommandCmd::Info(names) if names.is_empty() => Reply::Array(COMMANDS.iter().map(|s| s.info_reply()).collect()),
        CommandCmd::Info(names) => {
            Reply::Array(names.iter().map(|n| table::lookup(n).map_or(Reply::NullArray, |s| s.info_reply())).collect())
        }
        CommandCmd::Docs(names) => {
            let specs: Vec<_> = if names.is_empty() {
                COMMANDS.iter().collect()
            } else {
                names.iter().filter_map(|n| table::lookup(n)).collect()
            };
            Reply::Map(specs.into_iter().map(|s| (Reply::bulk_str(s.name), s.docs_reply())).collect())
        }
        CommandCmd::GetKeys(argv) => {
            let Some(spec) = table::lookup(&argv[0]) else {
                return RouterError::GetKeysUnknownCommand.into();
            };
            if !spec.arity_ok(argv.len()) {
                return RouterError::GetKeysArity.into();
            }
            match spec.key_indexes(&argv) {
                Some(idx) if idx.is_empty() => RouterError::GetKeysNoKeys.into(),
                Some(idx) => Reply::Array(idx.iter().map(|i| Reply::Bulk(argv[*i].clone())).collect()),
                None => RouterError::GetKeysInvalid.into(),
            }
        }
    }
}

fn cluster(router: &Router, conn: &ConnState, c: ClusterCmd) -> Reply {
    let topo = &router.topology;
    match c {
        ClusterCmd::Slots => topo.slots_reply(conn.tls),
        ClusterCmd::Shards => topo.shards_reply(),
        ClusterCmd::Nodes => Reply::Verbatim(topo.nodes_text(conn.vnode, conn.tls)),
        ClusterCmd::MyId | ClusterCmd::MyShardId => Reply::bulk_str(&topo.nodes[conn.vnode.unwrap_or(0)].id),
        ClusterCmd::Info => Reply::Verbatim(topo.info_text(conn.vnode, 16384 - router.shards.unserved_slots())),
        ClusterCmd::KeySlot(k) => Reply::Int(keyslot(&k)),
        ClusterCmd::Help => Reply::Array(
            [
                "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "COUNTKEYSINSLOT <slot>",
                "GETKEYSINSLOT <slot> <count>",
                "INFO",
                "KEYSLOT <key>",
                "MYID",
                "MYSHARDID",
                "NODES",
                "SHARDS",
                "SLOTS",
            ]
            .iter()
            .map(|l| Reply::Simple((*l).into()))
            .collect(),
        ),
    }
}

impl Router {
    /// `INFO replication`: the Redis fields clients read, then one line per
    /// shard with its leader and term, and per replica its applied index and
    /// lag behind the highest commit index any replica reported.
    pub(crate) fn replication_lines(&self) -> Vec<String> {
        let mut lines = [
            "role:master",
            "connected_slaves:0",
            "master_failover_state:no-failover",
            "master_repl_offset:0",
            "second_repl_offset:-1",
            "repl_backlog_active:0",
        ]
        .map(String::from)
        .to_vec();
        for s in &self.shards.shards() {
            let reports = s.reports.lock().clone();
            let commit = reports.values().map(|r| r.commit_index).max().unwrap_or(0);
            let best = reports.values().max_by_key(|r| (r.term, r.commit_index)).cloned().unwrap_or_default();
            let replicas: Vec<String> = s
                .replicas
                .read()
                .iter()
                .map(|n| {
                    let node = self.shards.node(*n);
                    let addr = &node.addr;
                    match reports.get(n) {
                        Some(r) => {
                            format!("{addr}/applied={}/lag={}", r.applied_index, commit.saturating_sub(r.applied_index))
                        }
                        None => format!("{addr}/no-report"),
                    }
                })
                .collect();
            lines.push(format!(
                "shard{}:slots={},leader_id={},term={},commit={},replicas={}",
                s.id,
                s.ranges.iter().map(|r| format!("{}-{}", r.start, r.end)).collect::<Vec<_>>().join("|"),
                best.leader_id,
                best.term,
                commit,
                replicas.join(",")
            ));
        }
        lines
    }
}

/// AI.CONFIG: a setting goes to every reachable storage node (RedisAI
/// applies it per process, so a cluster user would otherwise have to reach
/// each one); GET reads it from one node. Like RedisAI's, settings live in
/// memory: a node that restarts (or was down) has its start-up values.
async fn ai_config(router: &Router, op: tessera_common::model::AiConfig) -> Reply {
    use tessera_common::command::NodeCommand;
    use tessera_proto::v1::request::Target;

    use crate::backend::NodeReply;
    let get = op.is_get();
    let cmd = Bytes::from(NodeCommand::AiConfig { op }.to_bytes());
    let nodes = router.shards.nodes();
    // Each call bounded: a node that is connected but stopped (until its
    // session's pings give up on it) counts as unreachable.
    let call = |node: &Arc<crate::backend::NodeClient>| {
        tokio::time::timeout(std::time::Duration::from_secs(5), node.call(Target::Shard(0), cmd.clone()))
    };
    let reachable = nodes.iter().filter(|n| n.is_connected());
    if get {
        // From the first node that answers.
        for node in reachable {
            if let Ok(Ok(NodeReply::Reply(r))) = call(node).await {
                return r;
            }
        }
        return RouterError::NoNodeReachable.into();
    }
    // A setting goes to every node at once.
    let mut answered = 0usize;
    let mut first_error = None;
    for reply in futures::future::join_all(reachable.map(call)).await {
        match reply {
            Ok(Ok(NodeReply::Reply(r))) if r.is_error() => first_error = first_error.or(Some(r)),
            Ok(Ok(NodeReply::Reply(_))) => answered += 1,
            Ok(Ok(NodeReply::Lost(e))) => first_error = first_error.or(Some(e.into())),
            _ => {}
        }
    }
    match first_error {
        Some(e) => e,
        None if answered == 0 => RouterError::NoNodeReachable.into(),
        None => Reply::ok(),
    }
}
