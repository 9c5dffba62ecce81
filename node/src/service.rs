//! The `tessera.node.v1.Node` gRPC service: decodes each request, checks that
//! this node owns the slot (and that every key hashes there), runs it on the
//! shard and answers with the encoded reply.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tessera_common::command::NodeCommand;
use tessera_common::error::code_of;
use tessera_common::reply::Reply;
use tessera_common::slot::{key_slot, SLOTS};
use tessera_proto::v1::node_server::Node;
use tessera_proto::v1::{request, RequestBatch, ResponseBatch, ShardInfo, ShardsRequest, ShardsResponse, SlotRange};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, trace, warn};

use crate::shard::Shard;

/// The shards of this node and the slot → shard table.
pub struct NodeState {
    pub node_id: String,
    pub shards: Vec<Arc<Shard>>,
    by_slot: Vec<Option<usize>>,
    by_id: HashMap<u32, usize>,
}

const NOT_SERVED: &str = "CLUSTERDOWN Hash slot not served";

impl NodeState {
    pub fn new(node_id: String, shards: Vec<Arc<Shard>>) -> Self {
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
        Self {
            node_id,
            shards,
            by_slot,
            by_id,
        }
    }

    /// Runs one request; never panics on its input.
    pub fn handle(&self, target: Option<request::Target>, command: &[u8]) -> Reply {
        let cmd = match NodeCommand::from_bytes(command) {
            Ok(c) => c,
            Err(e) => {
                metrics::counter!("tessera_node_decode_errors_total").increment(1);
                return Reply::err(format!("ERR node could not decode command: {e}"));
            }
        };
        let shard = match target {
            Some(request::Target::Slot(slot)) => self.by_slot.get(slot as usize).copied().flatten(),
            Some(request::Target::Shard(id)) => self.by_id.get(&id).copied(),
            None => None,
        };
        let Some(shard) = shard.map(|i| &self.shards[i]) else {
            return Reply::err(NOT_SERVED);
        };
        // The state machine's ownership check: a stale router can never make
        // this shard store a key it does not own.
        if !cmd.keys().all(|k| shard.owns(key_slot(k))) {
            return Reply::err(NOT_SERVED);
        }
        let name = cmd.name();
        trace!(shard = shard.id, cmd = name, write = cmd.is_write(), "command");
        let start = Instant::now();
        let reply = shard.execute(cmd);
        let code = match &reply {
            Reply::Error(e) => code_of(e),
            _ => "ok",
        };
        tessera_telemetry::record_command("tessera_node", name, code, start.elapsed());
        reply
    }
}

/// One session's inbound stream; counts open sessions while it lives.
struct SessionGuard {
    inbound: Streaming<RequestBatch>,
    state: Arc<NodeState>,
    peer: Option<std::net::SocketAddr>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("tessera_node_sessions").decrement(1.0);
        debug!(peer = ?self.peer, "session closed");
    }
}

pub struct NodeService {
    pub state: Arc<NodeState>,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ResponseBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    type SessionStream = ResponseStream;

    async fn session(&self, req: Request<Streaming<RequestBatch>>) -> Result<Response<ResponseStream>, Status> {
        let peer = req.remote_addr();
        debug!(?peer, "session opened");
        let session = SessionGuard {
            inbound: req.into_inner(),
            state: self.state.clone(),
            peer,
        };
        metrics::gauge!("tessera_node_sessions").increment(1.0);
        // The response stream *is* the processing loop: each poll takes the
        // next request batch and answers it, on the connection's own task.
        // Requests of one session run in arrival order, so a client's
        // pipelined writes and reads to one shard keep their order.
        let responses = futures::stream::unfold(session, |mut s| async move {
            let batch = match s.inbound.message().await {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(e) => {
                    metrics::counter!("tessera_node_grpc_errors_total").increment(1);
                    warn!(peer = ?s.peer, error = %e, "session stream failed");
                    return None;
                }
            };
            let responses = batch
                .requests
                .into_iter()
                .map(|r| tessera_proto::v1::Response {
                    id: r.id,
                    reply: s.state.handle(r.target, &r.command).to_bytes().into(),
                })
                .collect();
            Some((Ok(ResponseBatch { responses }), s))
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn shards(&self, _req: Request<ShardsRequest>) -> Result<Response<ShardsResponse>, Status> {
        let shards = self
            .state
            .shards
            .iter()
            .map(|s| ShardInfo {
                id: s.id,
                slots: s
                    .ranges
                    .iter()
                    .map(|r| SlotRange {
                        start: r.start.into(),
                        end: r.end.into(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ShardsResponse {
            node_id: self.state.node_id.clone(),
            shards,
        }))
    }
}
