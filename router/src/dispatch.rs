//! Turning a parsed command into a pending reply: keyed commands go to the
//! node owning their slot, keyspace-wide ones fan out over the shards in the
//! connection's scope, the rest are answered locally (`local.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use tessera_common::command::{Command, Fanout, NodeCommand};
use tessera_common::reply::Reply;
use tessera_common::slot::{SlotRange, SlotScope, SLOTS};

use crate::conn::ConnState;
use crate::error::Error;
use crate::shards::{ShardEntry, ShardMap};
use crate::Router;

/// A reply that may not have arrived yet.
pub enum Pending {
    Ready(Option<Reply>),
    Fut(BoxFuture<'static, Reply>),
}

impl Future for Pending {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match self.get_mut() {
            Pending::Ready(r) => Poll::Ready(r.take().unwrap_or(Reply::Null)),
            Pending::Fut(f) => f.as_mut().poll(cx),
        }
    }
}

impl Pending {
    pub fn ready(r: Reply) -> Pending {
        Pending::Ready(Some(r))
    }
}

/// What the connection does after writing a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    Close,
}

pub fn dispatch(router: &Arc<Router>, conn: &mut ConnState, cmd: Command) -> (Pending, After) {
    match cmd {
        Command::Keyed { slot, cmd } => {
            let router = router.clone();
            let (read_only, runs) = (cmd.retry_safe(), cmd.is_exec());
            // (Only with nothing of this connection in flight: its commands
            // to one shard are ordered by that shard's leader session.)
            let spread = router.config.follower_reads
                && conn.in_flight == 0
                && matches!(&cmd, NodeCommand::Dag(d) if d.kind.read_only());
            let bytes = Bytes::from(crate::acl::on_behalf(&conn.user, cmd).to_bytes());
            let call = async move { router.shards.call_slot(slot, bytes, read_only, runs, spread).await };
            (Pending::Fut(Box::pin(call)), After::Continue)
        }
        Command::Fanout(f) => {
            let router = router.clone();
            let scope = conn.scope.clone();
            (Pending::Fut(Box::pin(async move { fanout(&router.shards, f, scope).await })), After::Continue)
        }
        Command::Local(l) => crate::local::run(router, conn, l),
    }
}

/// The shards with slots in `scope`, each with the scope narrowed to them.
fn shards_in(map: &ShardMap, scope: &SlotScope) -> Vec<(Arc<ShardEntry>, SlotScope)> {
    map.shards()
        .into_iter()
        .filter_map(|s| {
            let ranges: Vec<SlotRange> = s
                .ranges
                .iter()
                .flat_map(|r| {
                    let whole = [SlotRange::new(0, SLOTS - 1)];
                    let scope_ranges: Vec<SlotRange> = if scope.is_all() { whole.to_vec() } else { scope.0.clone() };
                    scope_ranges.into_iter().filter_map(move |q| {
                        let (a, b) = (r.start.max(q.start), r.end.min(q.end));
                        (a <= b).then(|| SlotRange::new(a, b))
                    })
                })
                .collect();
            (!ranges.is_empty()).then_some((s, SlotScope(ranges)))
        })
        .collect()
}

async fn each_shard(map: &ShardMap, scope: &SlotScope, make: impl Fn(SlotScope) -> NodeCommand) -> Vec<Reply> {
    let calls = shards_in(map, scope).into_iter().map(|(shard, s)| {
        let cmd = make(s);
        async move { map.call_shard(&shard, Bytes::from(cmd.to_bytes()), cmd.retry_safe()).await }
    });
    join_all(calls).await
}

pub async fn fanout(map: &ShardMap, f: Fanout, scope: SlotScope) -> Reply {
    match f {
        Fanout::Keys { pattern } => {
            let mut keys = Vec::new();
            for r in each_shard(map, &scope, |scope| NodeCommand::Keys { pattern: pattern.clone(), scope }).await {
                match r {
                    Reply::Array(mut k) => keys.append(&mut k),
                    err => return err,
                }
            }
            Reply::Array(keys)
        }
        Fanout::AiScan { scripts } => {
            let mut found = Vec::new();
            for r in each_shard(map, &scope, |scope| NodeCommand::AiScan { scripts, scope }).await {
                match r {
                    Reply::Array(mut k) => found.append(&mut k),
                    err => return err,
                }
            }
            Reply::Array(found)
        }
        Fanout::DbSize => match dbsize(map, &scope).await {
            Ok(n) => Reply::Int(n),
            Err(e) => e,
        },
        Fanout::RandomKey => {
            let mut found = Vec::new();
            for r in each_shard(map, &scope, |scope| NodeCommand::RandomKey { scope }).await {
                match r {
                    Reply::Bulk(k) => found.push(k),
                    Reply::Null => {}
                    err => return err,
                }
            }
            if found.is_empty() {
                Reply::Null
            } else {
                let i = rand::random_range(0..found.len());
                Reply::Bulk(found.swap_remove(i))
            }
        }
        Fanout::Flush => {
            for r in each_shard(map, &scope, |scope| NodeCommand::Flush { scope }).await {
                if r.is_error() {
                    return r;
                }
            }
            Reply::ok()
        }
        Fanout::Scan { cursor, pattern, count, kind } => scan(map, &scope, cursor, pattern, count, kind).await,
    }
}

pub async fn dbsize(map: &ShardMap, scope: &SlotScope) -> Result<i64, Reply> {
    let mut n = 0;
    for r in each_shard(map, scope, |scope| NodeCommand::DbSize { scope }).await {
        match r {
            Reply::Int(k) => n += k,
            err => return Err(err),
        }
    }
    Ok(n)
}

/// SCAN's cursor is a slot number: every call returns the keys of whole slots
/// from the cursor on, and the next slot to visit (0 when done). Slots are
/// walked in order through the connection's scope, one shard range at a time.
async fn scan(
    map: &ShardMap,
    scope: &SlotScope,
    cursor: u64,
    pattern: Option<Bytes>,
    count: usize,
    kind: Option<Bytes>,
) -> Reply {
    let mut keys = Vec::new();
    let mut next = cursor;
    let mut seen_calls = 0;
    loop {
        let Some((slot, end)) = next_scoped_slot(map, scope, next) else {
            next = 0;
            break;
        };
        let Some(shard) = map.shard_of(slot) else {
            return Error::NotServed.into();
        };
        let cmd = NodeCommand::Scan {
            cursor: slot,
            count: count.saturating_sub(keys.len()).max(1),
            pattern: pattern.clone(),
            kind: kind.clone(),
            scope: SlotScope(vec![SlotRange::new(slot, end)]),
        };
        match map.call_shard(&shard, Bytes::from(cmd.to_bytes()), true).await {
            Reply::Array(mut parts) if parts.len() == 2 => {
                let (Reply::Int(n), Reply::Array(mut k)) = (parts.remove(0), parts.remove(0)) else {
                    return Error::BadScanReply.into();
                };
                keys.append(&mut k);
                next = n as u64;
            }
            err @ Reply::Error(_) => return err,
            _ => return Error::BadScanReply.into(),
        }
        seen_calls += 1;
        if keys.len() >= count || seen_calls >= 64 || next >= u64::from(SLOTS) {
            if next >= u64::from(SLOTS) {
                next = 0;
            }
            break;
        }
    }
    Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(keys)])
}

/// The first slot `>= from` inside `scope`, and the end of the run of slots
/// after it that are both in scope and owned by the same shard.
fn next_scoped_slot(map: &ShardMap, scope: &SlotScope, from: u64) -> Option<(u16, u16)> {
    let from = u16::try_from(from).ok().filter(|f| *f < SLOTS)?;
    let scope_ranges: Vec<SlotRange> =
        if scope.is_all() { vec![SlotRange::new(0, SLOTS - 1)] } else { scope.0.clone() };
    let mut best: Option<(u16, u16)> = None;
    for q in scope_ranges.iter().filter(|q| q.end >= from) {
        let start = q.start.max(from);
        if best.is_none_or(|(b, _)| start < b) {
            best = Some((start, q.end));
        }
    }
    let (start, scope_end) = best?;
    let shard = map.shard_of(start)?;
    let owned_end = shard.ranges.iter().find(|r| r.contains(start)).map_or(start, |r| r.end);
    Some((start, scope_end.min(owned_end)))
}
