//! The `tessera.node.v1.Node` gRPC service.
//!
//! Each router session is served by a reader task that decodes requests,
//! checks slot ownership and hands each to the *lane* of its shard (one task
//! per session and shard). A lane keeps the session's order where it matters:
//! consecutive writes are proposed in order and pipelined; consecutive reads
//! run together; a read waits for the writes before it and a write for the
//! reads before it — so a client never misses its own write nor sees a later
//! one. Responses go back as they complete, batched, matched by id.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tessera_common::command::NodeCommand;
use tessera_common::error::code_of;
use tessera_common::reply::Reply;
use tessera_common::slot::{key_slot, SLOTS};
use tessera_proto::v1::node_server::Node;
use tessera_proto::v1::{
    request, response, Member, Redirect, RequestBatch, ResponseBatch, ShardInfo, ShardsRequest, ShardsResponse,
    SlotRange,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, trace, warn};

use crate::shard::{Outcome, Shard};

/// The shards of this node and the slot → shard table.
pub struct NodeState {
    pub node_id: u64,
    pub shards: Vec<Arc<Shard>>,
    by_slot: Vec<Option<usize>>,
    by_id: HashMap<u32, usize>,
}

const NOT_SERVED: &str = "CLUSTERDOWN Hash slot not served";

impl NodeState {
    pub fn new(node_id: u64, shards: Vec<Arc<Shard>>) -> Self {
        let mut by_slot = vec![None; usize::from(SLOTS)];
        let mut by_id = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            by_id.insert(s.id, i);
            for r in &s.ranges {
                for slot in r.start..=r.end {
                    by_slot[usize::from(slot)] = Some(i);
                }
            }
        }
        Self { node_id, shards, by_slot, by_id }
    }

    /// Decodes a request and finds its shard; an error reply otherwise.
    fn route(&self, target: Option<request::Target>, command: &[u8]) -> Result<(Arc<Shard>, NodeCommand), Reply> {
        let cmd = NodeCommand::from_bytes(command).map_err(|e| {
            metrics::counter!("tessera_node_decode_errors_total").increment(1);
            Reply::err(format!("ERR node could not decode command: {e}"))
        })?;
        let shard = match target {
            Some(request::Target::Slot(slot)) => self.by_slot.get(slot as usize).copied().flatten(),
            Some(request::Target::Shard(id)) => self.by_id.get(&id).copied(),
            None => None,
        };
        let shard = shard.map(|i| self.shards[i].clone()).ok_or_else(|| Reply::err(NOT_SERVED))?;
        // A stale router can never make this shard store a key it does not own
        // (the state machine of each replica holds only its shard's slots).
        if !cmd.keys().all(|k| shard.owns(key_slot(k))) {
            return Err(Reply::err(NOT_SERVED));
        }
        Ok((shard, cmd))
    }
}

fn response(id: u64, shard: u32, out: Outcome) -> tessera_proto::v1::Response {
    let result = match out {
        Outcome::Reply(r) => response::Result::Reply(r.to_bytes().into()),
        Outcome::Redirect(leader) => {
            let (leader_id, leader_addr) = leader.unwrap_or_default();
            response::Result::Redirect(Redirect { shard, leader_id, leader_addr })
        }
    };
    tessera_proto::v1::Response { id, result: Some(result) }
}

fn record(name: &'static str, out: &Outcome, start: Instant) {
    let code = match out {
        Outcome::Reply(Reply::Error(e)) => code_of(e),
        Outcome::Reply(_) => "ok",
        Outcome::Redirect(_) => "redirect",
    };
    tessera_telemetry::record_command("tessera_node", name, code, start.elapsed());
}

type Done = (u64, Outcome);

/// One shard's share of one session (see the module docs for the ordering rules).
async fn lane(
    shard: Arc<Shard>,
    mut rx: mpsc::Receiver<(u64, NodeCommand)>,
    out: mpsc::Sender<tessera_proto::v1::Response>,
) {
    let mut queue: VecDeque<(u64, NodeCommand, Instant)> = VecDeque::new();
    let mut writes: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut reads: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut open = true;
    loop {
        // Start whatever the ordering rules allow, front first.
        while let Some((_, cmd, _)) = queue.front() {
            let write = cmd.is_write();
            if (write && !reads.is_empty()) || (!write && !writes.is_empty()) {
                break;
            }
            let (id, cmd, start) = queue.pop_front().expect("front exists");
            let name = cmd.name();
            trace!(shard = shard.id, cmd = name, write, "command");
            let s = shard.clone();
            if write {
                let submitted = shard.submit(cmd).await;
                writes.push(
                    async move {
                        let o = s.finish(submitted).await;
                        record(name, &o, start);
                        (id, o)
                    }
                    .boxed(),
                );
            } else {
                reads.push(
                    async move {
                        let o = s.read(&cmd).await;
                        record(name, &o, start);
                        (id, o)
                    }
                    .boxed(),
                );
            }
        }
        if !open && queue.is_empty() && writes.is_empty() && reads.is_empty() {
            return;
        }
        tokio::select! {
            Some((id, o)) = writes.next(), if !writes.is_empty() => {
                if out.send(response(id, shard.id, o)).await.is_err() { return; }
            }
            Some((id, o)) = reads.next(), if !reads.is_empty() => {
                if out.send(response(id, shard.id, o)).await.is_err() { return; }
            }
            m = rx.recv(), if open => match m {
                Some((id, cmd)) => queue.push_back((id, cmd, Instant::now())),
                None => open = false,
            },
        }
    }
}

/// Batches every response ready at poll time into one message.
struct ResponseStream {
    rx: mpsc::Receiver<tessera_proto::v1::Response>,
    _guard: SessionGuard,
}

impl Stream for ResponseStream {
    type Item = Result<ResponseBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let first = match self.rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => r,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let mut responses = vec![first];
        while responses.len() < 1024 {
            match self.rx.try_recv() {
                Ok(r) => responses.push(r),
                Err(_) => break,
            }
        }
        Poll::Ready(Some(Ok(ResponseBatch { responses })))
    }
}

/// Counts open sessions while it lives.
struct SessionGuard {
    peer: Option<std::net::SocketAddr>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("tessera_node_sessions").decrement(1.0);
        debug!(peer = ?self.peer, "session closed");
    }
}

async fn read_session(
    state: Arc<NodeState>,
    mut inbound: Streaming<RequestBatch>,
    out: mpsc::Sender<tessera_proto::v1::Response>,
    peer: Option<std::net::SocketAddr>,
) {
    let mut lanes: HashMap<u32, mpsc::Sender<(u64, NodeCommand)>> = HashMap::new();
    loop {
        let batch = match inbound.message().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                metrics::counter!("tessera_node_grpc_errors_total").increment(1);
                warn!(?peer, error = %e, "session stream failed");
                return;
            }
        };
        for r in batch.requests {
            match state.route(r.target, &r.command) {
                Err(reply) => {
                    let _ = out.send(response(r.id, 0, Outcome::Reply(reply))).await;
                }
                Ok((shard, cmd)) => {
                    let tx = lanes.entry(shard.id).or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(4096);
                        tokio::spawn(lane(shard.clone(), rx, out.clone()));
                        tx
                    });
                    if tx.send((r.id, cmd)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

pub struct NodeService {
    pub state: Arc<NodeState>,
}

#[tonic::async_trait]
impl Node for NodeService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ResponseBatch, Status>> + Send>>;

    async fn session(&self, req: Request<Streaming<RequestBatch>>) -> Result<Response<Self::SessionStream>, Status> {
        let peer = req.remote_addr();
        debug!(?peer, "session opened");
        metrics::gauge!("tessera_node_sessions").increment(1.0);
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(read_session(self.state.clone(), req.into_inner(), tx, peer));
        Ok(Response::new(Box::pin(ResponseStream { rx, _guard: SessionGuard { peer } })))
    }

    async fn shards(&self, _req: Request<ShardsRequest>) -> Result<Response<ShardsResponse>, Status> {
        let shards = self
            .state
            .shards
            .iter()
            .map(|s| {
                let st = s.status();
                ShardInfo {
                    id: s.id,
                    slots: s.ranges.iter().map(|r| SlotRange { start: r.start.into(), end: r.end.into() }).collect(),
                    members: st.members.into_iter().map(|(id, addr)| Member { id, addr }).collect(),
                    leader_id: st.leader.unwrap_or(0),
                    term: st.term,
                    commit_index: st.committed,
                    applied_index: st.applied,
                }
            })
            .collect();
        Ok(Response::new(ShardsResponse { node_id: self.state.node_id, shards }))
    }
}
