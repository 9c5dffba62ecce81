//! MULTI / EXEC / DISCARD / WATCH / UNWATCH: a connection's transaction.
//!
//! A transaction lives on the router until EXEC: MULTI starts queueing,
//! each command is parsed and checked as it arrives (an error there, or a
//! key in another slot than the transaction's, answers that error and
//! makes EXEC answer `EXECABORT`), and EXEC sends the queued commands to
//! their shard as one [`NodeCommand::Multi`]. The shard's leader logs it as
//! one Raft entry, and every replica applies the commands in order with
//! nothing in between; a transaction that only reads is served as one read
//! instead. A command that fails when it runs answers its error in its
//! place in EXEC's reply while the others take effect, as in Redis.
//!
//! WATCH reads each key's fingerprint (a digest of its value and deadline)
//! from its shard; EXEC carries them, and the shard runs nothing and EXEC
//! answers a null array if any key holds something else when the
//! transaction applies. A key written and then changed back to exactly what
//! it held counts as unchanged (Redis would abort): the check is on
//! contents, not on writes.
//!
//! Everything a transaction touches, WATCHed keys included, must be in one
//! slot, as Redis Cluster requires. Commands answered by the router itself
//! are queued as their reply when they are read (PING, ECHO, the CLUSTER
//! and COMMAND introspection…); those that change the connection or span
//! the keyspace are refused inside MULTI.
//!
//! RedisAI's commands are queued as RedisAI's are in Redis: their argument
//! errors are answered inside EXEC's reply, not when queued. Model and
//! script runs go further than RedisAI, which refuses them in a
//! transaction: a transaction that runs one is run by the shard's leader
//! against an overlay and logged as the one entry of what it changed
//! (`node/src/shard/tx.rs`), so `TENSORSET; MODELEXECUTE; TENSORGET` in one
//! MULTI works, all or nothing. A DAG answers RedisAI's "Cannot run RedisAI
//! command within a transaction" in its place.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tessera_common::command::node::{Transaction, TxOp};
use tessera_common::command::server::TxCmd;
use tessera_common::command::{ClientCmd, Command, Local, NodeCommand};
use tessera_common::error::{Error, Result};
use tessera_common::reply::Reply;

use crate::conn::ConnState;
use crate::dispatch::{dispatch, After, Pending};
use crate::Router;

/// A transaction being queued (between MULTI and EXEC).
#[derive(Default)]
pub struct Tx {
    queued: Vec<Queued>,
    /// The slot of the keys queued so far.
    slot: Option<u16>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    aborted: bool,
}

impl Tx {
    /// Commands queued so far.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }
}

enum Queued {
    Node(NodeCommand),
    /// A command the router answers itself, answered when it was queued.
    Answered(Reply),
}

/// Keys WATCHed on a connection, all in `slot`.
pub struct Watching {
    slot: u16,
    /// Each WATCH's read of its keys' fingerprints (an error if the read
    /// failed: EXEC then runs nothing).
    reads: Vec<WatchRead>,
}

pub type WatchRead = Shared<BoxFuture<'static, std::result::Result<Vec<(Bytes, Option<u64>)>, Reply>>>;

/// Whether `parsed` must go through [`handle`]: the connection is in a
/// transaction, or it is one of the transaction commands.
pub fn concerns(conn: &ConnState, parsed: &Result<Command>) -> bool {
    conn.tx.is_some() || matches!(parsed, Ok(Command::Local(Local::Tx(_))))
}

fn ready(r: Reply) -> (Pending, After) {
    (Pending::ready(r), After::Continue)
}

fn err(msg: &str) -> (Pending, After) {
    ready(Reply::err(msg))
}

/// `name` is the command's table name (`unknown` for none).
pub fn handle(router: &Arc<Router>, conn: &mut ConnState, name: &str, parsed: Result<Command>) -> (Pending, After) {
    let cmd = match parsed {
        // RedisAI's commands check their arguments when they run (Redis
        // knows only that they take any number of them): inside MULTI such
        // an error is queued and answered in its place in EXEC's reply. A
        // DAG refuses to run in a transaction before it reads anything. An
        // ACL refusal (NOPERM) aborts the transaction whatever the command,
        // as in Redis, where it is refused when queued.
        Err(e) if conn.tx.is_some() && name.starts_with("ai.") && e != Error::CrossSlot && e.code() != "NOPERM" => {
            let e = if is_dag(name) { Reply::err(DAG_IN_TX) } else { e.to_reply() };
            return queue_answer(conn, e);
        }
        Ok(cmd) => cmd,
        Err(e) => {
            // (Unknown commands, wrong arities and CROSSSLOT abort the
            // transaction.)
            if let Some(tx) = &mut conn.tx {
                tx.aborted = true;
            }
            return ready(e.to_reply());
        }
    };
    match cmd {
        Command::Local(Local::Tx(TxCmd::Multi)) if conn.tx.is_some() => err("ERR MULTI calls can not be nested"),
        Command::Local(Local::Tx(TxCmd::Multi)) => {
            conn.tx = Some(Tx::default());
            ready(Reply::ok())
        }
        Command::Local(Local::Tx(TxCmd::Exec)) => exec(router, conn),
        Command::Local(Local::Tx(TxCmd::Discard)) => match conn.tx.take() {
            None => err("ERR DISCARD without MULTI"),
            Some(_) => {
                conn.watching = None;
                ready(Reply::ok())
            }
        },
        Command::Local(Local::Tx(TxCmd::Watch { .. })) if conn.tx.is_some() => {
            err("ERR WATCH inside MULTI is not allowed")
        }
        Command::Local(Local::Tx(TxCmd::Watch { keys, slot })) => watch(router, conn, keys, slot),
        // (Inside MULTI it is queued: EXEC forgets the watches anyway.)
        Command::Local(Local::Tx(TxCmd::Unwatch)) if conn.tx.is_some() => queue_answer(conn, Reply::ok()),
        Command::Local(Local::Tx(TxCmd::Unwatch)) => {
            conn.watching = None;
            ready(Reply::ok())
        }
        Command::Local(Local::Quit) => dispatch(router, conn, Command::Local(Local::Quit)),
        cmd if conn.tx.is_some() => queue(router, conn, cmd),
        cmd => dispatch(router, conn, cmd),
    }
}

/// Queues `cmd` in the connection's transaction, or refuses it (and the
/// transaction with it).
fn queue(router: &Arc<Router>, conn: &mut ConnState, cmd: Command) -> (Pending, After) {
    let refused = match cmd {
        // (CLUSTER COUNTKEYSINSLOT / GETKEYSINSLOT: a slot's shard, named
        // by the slot rather than by a key.)
        Command::Keyed { cmd, .. } if !cmd.has_keys() => Some(Error::CommandNotInTransaction),
        Command::Keyed { slot, .. } if other_slot(conn, slot) => Some(Error::CrossSlot),
        Command::Keyed { cmd: NodeCommand::Dag(_), .. } => return queue_answer(conn, Reply::err(DAG_IN_TX)),
        Command::Keyed { slot, cmd } => {
            let tx = conn.tx.as_mut().expect("in a transaction");
            tx.slot = Some(slot);
            tx.queued.push(Queued::Node(cmd));
            None
        }
        Command::Local(l) if answered_when_queued(&l) => match crate::local::run(router, conn, l) {
            (Pending::Ready(r), _) => return queue_answer(conn, r.unwrap_or(Reply::Null)),
            (Pending::Fut(_), _) => Some(Error::CommandNotInTransaction),
        },
        Command::Local(_) | Command::Fanout(_) => Some(Error::CommandNotInTransaction),
    };
    match refused {
        Some(e) => {
            conn.tx.as_mut().expect("in a transaction").aborted = true;
            ready(e.to_reply())
        }
        None => ready(Reply::Simple("QUEUED".into())),
    }
}

/// RedisAI's answer to a DAG inside MULTI (in its place in EXEC's reply).
const DAG_IN_TX: &str = "ERR Cannot run RedisAI command within a transaction or a LUA script";

fn is_dag(name: &str) -> bool {
    matches!(name, "ai.dagexecute" | "ai.dagexecute_ro" | "ai.dagrun" | "ai.dagrun_ro")
}

/// Whether `slot` is another than the transaction's or its WATCHed keys'.
fn other_slot(conn: &ConnState, slot: u16) -> bool {
    let queued = conn.tx.as_ref().and_then(|t| t.slot);
    let watched = conn.watching.as_ref().map(|w| w.slot);
    [queued, watched].into_iter().flatten().any(|s| s != slot)
}

fn queue_answer(conn: &mut ConnState, r: Reply) -> (Pending, After) {
    conn.tx.as_mut().expect("in a transaction").queued.push(Queued::Answered(r));
    ready(Reply::Simple("QUEUED".into()))
}

/// Router-answered commands that change nothing and answer at once, so
/// answering them when queued is answering them at EXEC.
fn answered_when_queued(l: &Local) -> bool {
    match l {
        Local::Ping(_)
        | Local::Echo(_)
        | Local::Select(_)
        | Local::ReadOnly
        | Local::ReadWrite
        | Local::Asking
        | Local::Command(_)
        | Local::Cluster(_)
        | Local::ConfigGet(_)
        | Local::LastSave
        | Local::Module(_) => true,
        Local::Client(c) => matches!(c, ClientCmd::GetName | ClientCmd::Id | ClientCmd::Info | ClientCmd::List),
        _ => false,
    }
}

fn watch(router: &Arc<Router>, conn: &mut ConnState, keys: Vec<Bytes>, slot: u16) -> (Pending, After) {
    if conn.watching.as_ref().is_some_and(|w| w.slot != slot) {
        return ready(Error::CrossSlot.to_reply());
    }
    let r = router.clone();
    let cmd = Bytes::from(NodeCommand::Watch { keys: keys.clone() }.to_bytes());
    let read: WatchRead = async move {
        match r.shards.call_slot(slot, cmd, true, false, false).await {
            Reply::Array(prints) if prints.len() == keys.len() => {
                let print = |p: Reply| match p {
                    Reply::Int(i) => Ok(Some(i as u64)),
                    Reply::Null => Ok(None),
                    other => Err(other),
                };
                keys.into_iter().zip(prints).map(|(k, p)| print(p).map(|p| (k, p))).collect()
            }
            Reply::Error(e) => Err(Reply::Error(e)),
            other => Err(Reply::err(format!("ERR unexpected WATCH reply from the shard: {other:?}"))),
        }
    }
    .boxed()
    .shared();
    conn.watching.get_or_insert_with(|| Watching { slot, reads: Vec::new() }).reads.push(read.clone());
    // Nothing after WATCH is dispatched until its read is back: an EXEC
    // waits for it before it sends, and a command pipelined after that
    // EXEC must not reach the shard first.
    conn.barrier = Some(read.clone());
    let answer = async move {
        match read.await {
            Ok(_) => Reply::ok(),
            Err(e) => e,
        }
    };
    (Pending::Fut(Box::pin(answer)), After::Continue)
}

fn exec(router: &Arc<Router>, conn: &mut ConnState) -> (Pending, After) {
    let Some(tx) = conn.tx.take() else {
        return err("ERR EXEC without MULTI");
    };
    let watching = conn.watching.take();
    if tx.aborted {
        return err("EXECABORT Transaction discarded because of previous errors.");
    }
    let slot = tx.slot.or(watching.as_ref().map(|w| w.slot));
    let node_cmds = tx.queued.iter().filter(|q| matches!(q, Queued::Node(_))).count();
    let (Some(slot), true) = (slot, node_cmds > 0 || watching.is_some()) else {
        // Only router-answered commands (or none): nothing to send.
        let replies = tx.queued.into_iter().map(|q| match q {
            Queued::Answered(r) => r,
            // (Never: a command for a shard gives the transaction its slot.)
            Queued::Node(_) => Reply::err("ERR internal: a queued command has no slot"),
        });
        return ready(Reply::Array(replies.collect()));
    };
    let router = router.clone();
    let user = conn.user.clone();
    let run = async move {
        let mut watched = Vec::new();
        for read in watching.map(|w| w.reads).unwrap_or_default() {
            match read.await {
                Ok(mut prints) => watched.append(&mut prints),
                // WATCH could not read its keys: nothing may run.
                Err(_) => return Reply::NullArray,
            }
        }
        let mut answered = Vec::new();
        let mut ops = Vec::with_capacity(node_cmds);
        for (i, q) in tx.queued.into_iter().enumerate() {
            match q {
                Queued::Node(c) => ops.push(TxOp::Run(c)),
                Queued::Answered(r) => answered.push((i, r)),
            }
        }
        let cmd = NodeCommand::Multi(Transaction { ops, watched });
        let (read_only, runs) = (cmd.retry_safe(), cmd.is_exec());
        let cmd = crate::acl::on_behalf(&user, cmd);
        let reply = router.shards.call_slot(slot, Bytes::from(cmd.to_bytes()), read_only, runs, false).await;
        match reply {
            Reply::Array(mut replies) => {
                for (i, r) in answered {
                    replies.insert(i.min(replies.len()), r);
                }
                Reply::Array(replies)
            }
            // A WATCHed key moved (null), or the shard could not run it.
            other => other,
        }
    };
    (Pending::Fut(Box::pin(run)), After::Continue)
}
