//! One shard's lane of a session: commands start in arrival order and run
//! together where the session's order allows (see [`super::order`]); each
//! answer goes back as a response, a long one in pieces.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tessera_common::command::NodeCommand;
use tessera_common::error::code_of;
use tessera_common::reply::Reply;
use tessera_proto::v1::{response, Redirect};
use tokio::sync::{mpsc, oneshot};
use tracing::trace;

use super::order::{Access, Flights, Kind};
use crate::error::Error as NodeError;
use crate::shard::{Outcome, Shard};

/// What a session sends back: a response, or a long reply's encoding in
/// pieces (sent in parts, see [`tessera_proto::parts`]).
pub(super) enum Out {
    One(tessera_proto::v1::Response),
    Long { id: u64, pieces: Vec<Bytes> },
}

pub(super) fn response(id: u64, shard: u32, out: Outcome) -> Out {
    let result = match out {
        // A long reply (a model's bytes, a large tensor) is not encoded into
        // one buffer: its large payloads go out as slices of themselves.
        Outcome::Reply(r) if r.size_hint() > tessera_proto::parts::PART_BYTES => {
            // (Payloads of 64 KiB or more are pieces of their own: a model
            // laid out for its runtime is many such weights.)
            let pieces = crate::util::heavy(|| r.to_parts(64 << 10));
            return Out::Long { id, pieces };
        }
        Outcome::Reply(r) => response::Result::Reply(r.to_bytes().into()),
        Outcome::Error(e) => response::Result::Reply(e.to_reply().to_bytes().into()),
        Outcome::Redirect(leader) => {
            let (leader_id, leader_addr) = leader.unwrap_or_default();
            response::Result::Redirect(Redirect { shard, leader_id, leader_addr })
        }
    };
    Out::One(tessera_proto::v1::Response { id, result: Some(result), total_len: 0 })
}

fn record(name: &'static str, out: &Outcome, start: Instant) {
    let code = match out {
        Outcome::Error(e) => e.code(),
        // An error that came through Raft as the entry's result.
        Outcome::Reply(Reply::Error(e)) => code_of(e),
        Outcome::Reply(_) => "ok",
        Outcome::Redirect(_) => "redirect",
    };
    tessera_telemetry::record_command("tessera_node", name, code, start.elapsed());
}

/// A finished command: its in-flight slot, request id and outcome.
type Done = (u64, u64, Outcome);

/// The queue into one lane: request id and command.
pub(super) type LaneTx = mpsc::Sender<(u64, NodeCommand)>;

/// One shard's share of one session (see the module docs for the ordering
/// rules): commands start in arrival order; one that touches a key an
/// earlier, unfinished command writes (or writes a key it reads) waits, and
/// so does everything behind it.
pub(super) async fn lane(shard: Arc<Shard>, mut rx: mpsc::Receiver<(u64, NodeCommand)>, out: mpsc::Sender<Out>) {
    let mut queue: VecDeque<(u64, NodeCommand, Access, Instant)> = VecDeque::new();
    let mut running: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut flights = Flights::default();
    let mut next_slot = 0u64;
    let mut open = true;
    // Writes are submitted to the group one after another, in arrival order
    // (so they are logged in that order), each once the one before it has
    // been: a write that takes long to submit (a model checked before it is
    // logged, a large value logged in parts) holds up the writes behind it,
    // but not the lane's reads, runs and replies.
    let mut submitted_before: Option<oneshot::Receiver<()>> = None;
    loop {
        // Start whatever the ordering rules allow, front first.
        while let Some((_, _, access, _)) = queue.front() {
            if flights.blocks(access) {
                break;
            }
            let (id, cmd, access, start) = queue.pop_front().expect("front exists");
            let name = cmd.name();
            trace!(shard = shard.id, cmd = name, kind = ?access.kind, "command");
            let slot = next_slot;
            next_slot += 1;
            let s = shard.clone();
            let fut = match access.kind {
                Kind::Write => {
                    let before = submitted_before.take();
                    let (done, after) = oneshot::channel();
                    submitted_before = Some(after);
                    async move {
                        if let Some(before) = before {
                            // (An error: the write before it was dropped
                            // with the lane, as this one is about to be.)
                            let _ = before.await;
                        }
                        // (Its long steps, a model's load check and layout
                        // or cutting a write into parts, run off the lane.)
                        let submitted = s.submit(cmd).await;
                        let _ = done.send(());
                        let o = s.finish(submitted).await;
                        record(name, &o, start);
                        (slot, id, o)
                    }
                    .boxed()
                }
                Kind::Read => async move {
                    let o = s.read(&cmd).await;
                    record(name, &o, start);
                    (slot, id, o)
                }
                .boxed(),
                Kind::Exec => async move {
                    // (A run for a user whose rules its scripts' commands
                    // are checked against.)
                    let (cmd, caller) = match cmd {
                        NodeCommand::AsUser { user, cmd } => (*cmd, Some(crate::shard::host::caller(&user))),
                        cmd => (cmd, None),
                    };
                    let o = match caller.transpose() {
                        Err(e) => Outcome::Error(e),
                        Ok(caller) => match &cmd {
                            NodeCommand::ModelExecute(run) => s.execute(run).await,
                            NodeCommand::ScriptExecute(run) => s.run_script(run, caller).await,
                            NodeCommand::Dag(dag) => s.run_dag(dag, caller).await,
                            NodeCommand::Multi(tx) => s.run_transaction(tx, caller).await,
                            _ => Outcome::Error(NodeError::Internal("internal: not a model or script run")),
                        },
                    };
                    record(name, &o, start);
                    (slot, id, o)
                }
                .boxed(),
            };
            flights.insert(slot, access);
            running.push(fut);
        }
        if !open && queue.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some((slot, id, o)) = running.next(), if !running.is_empty() => {
                flights.remove(slot);
                if out.send(response(id, shard.id, o)).await.is_err() { return; }
            }
            m = rx.recv(), if open => match m {
                Some((id, cmd)) => {
                    let access = Access::of(&cmd);
                    queue.push_back((id, cmd, access, Instant::now()));
                }
                None => open = false,
            },
        }
    }
}
