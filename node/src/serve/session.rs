//! Router sessions: links ([`tessera_proto::link::SESSION`]) carrying
//! `tessera.node.v1` `RequestBatch`es in and `ResponseBatch`es out.
//!
//! Each router session is served by a reader task that decodes requests,
//! checks slot ownership and hands each to the *lane* of its shard (one task
//! per session and shard). A lane keeps the session's order where it matters,
//! key by key: writes are proposed in arrival order and pipelined (one slow
//! to propose, a model checked first or a write logged in parts, holds up
//! only the writes behind it); reads run
//! together; a command waits for earlier unfinished ones that write a key it
//! touches (or read a key it writes) — so a client never misses its own
//! write nor sees a later one. Model runs read their inputs, run off the
//! async runtime and then write their outputs, so they count as both; runs
//! on disjoint keys overlap, which is what lets the engine batch them.
//! Responses go back as they complete, batched, matched by id. Long
//! commands and replies travel in parts (see [`tessera_proto::parts`]).

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tessera_proto::parts::Joiner;
use tessera_proto::v1::{RequestBatch, ResponseBatch};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::error::Error as NodeError;
use crate::hosted::{NodeState, Routed};
use crate::shard::{Outcome, Shard};

mod lane;
mod order;
mod replies;

use lane::{lane, response, LaneTx, Out};
use replies::ResponseStream;

async fn read_session(
    state: Arc<NodeState>,
    mut inbound: Inbound,
    out: mpsc::Sender<Out>,
    peer: Option<std::net::SocketAddr>,
) {
    // A lane serves one replica object: when the replica is reopened or
    // replaced, the next request starts a lane on the new one (the old lane
    // finishes what it has and exits).
    let mut lanes: HashMap<u32, (Arc<Shard>, LaneTx)> = HashMap::new();
    // Room to lay a model out for its runtime where it arrived
    // (`engine::model::arrange`, before the leader checks that it loads).
    let mut joiner = Joiner::with_room(tessera_common::blob::layout_room);
    loop {
        let batch = match inbound.next().await {
            Some(Ok(b)) => b,
            None => return,
            Some(Err(e)) => {
                metrics::counter!("tessera_node_grpc_errors_total").increment(1);
                warn!(?peer, error = %e, "session stream failed");
                return;
            }
        };
        for r in batch.requests {
            let command = match r.total_len {
                0 => r.command,
                total => match joiner.add(r.id, total, &r.command) {
                    Ok(Some(whole)) => whole,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = out.send(response(r.id, 0, Outcome::Error(NodeError::Parts(e)))).await;
                        continue;
                    }
                },
            };
            match state.route(r.target, command) {
                Err(outcome) => {
                    let _ = out.send(response(r.id, 0, outcome)).await;
                }
                Ok(Routed::Save) => {
                    let (state, out, id) = (state.clone(), out.clone(), r.id);
                    tokio::spawn(async move {
                        let _ = out.send(response(id, 0, state.save().await)).await;
                    });
                }
                Ok(Routed::Users(op)) => {
                    let (state, out, id) = (state.clone(), out.clone(), r.id);
                    tokio::spawn(async move {
                        let _ = out.send(response(id, crate::state::meta::META, state.users(op).await)).await;
                    });
                }
                Ok(Routed::Shard(shard, cmd)) => {
                    let current = lanes.get(&shard.id).is_some_and(|(s, _)| Arc::ptr_eq(s, &shard));
                    if !current {
                        let (tx, rx) = mpsc::channel(4096);
                        tokio::spawn(lane(shard.clone(), rx, out.clone()));
                        lanes.insert(shard.id, (shard.clone(), tx));
                    }
                    let (_, tx) = &lanes[&shard.id];
                    if tx.send((r.id, cmd)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// A session's requests, as its link's reader decodes them.
type Inbound = BoxStream<'static, Result<RequestBatch, String>>;

/// Serves one router session: its requests are read by a task spawned
/// here; the stream returned carries the responses back.
fn serve(
    state: Arc<NodeState>,
    inbound: Inbound,
    peer: Option<std::net::SocketAddr>,
) -> impl Stream<Item = ResponseBatch> + Send {
    let (tx, rx) = mpsc::channel(8192);
    tokio::spawn(read_session(state, inbound, tx, peer));
    ResponseStream::new(rx, peer)
}

/// Serves one router session that came as a link
/// ([`tessera_proto::link::SESSION`], still unread): frames carry
/// `RequestBatch`es in and `ResponseBatch`es out; pings go back as they
/// came. When the router goes
/// away the session's socket closes at once (commands already running
/// finish; their replies have nowhere to go).
///
/// When the node stops ([`NodeState::drain`]), it asks the router to drain
/// the session (`KIND_DRAIN`); the router's `KIND_END` ends the requests,
/// and the session closes once every command read has been answered.
pub async fn serve_link(state: Arc<NodeState>, stream: tessera_proto::link::Conn, skip: usize) {
    use tessera_proto::link::{encode_message, tune, FrameReader, Writer, KIND_BATCH, SESSION, SESSION_FRAME_MAX};
    // Held while the session lives: the stopping node waits for them all.
    let _live = state.drain.subscribe();
    let mut drain = state.drain.subscribe();
    // (A session opened once the node is draining is asked at once.)
    drain.mark_changed();
    tune(&stream.stream, SESSION);
    let peer = stream.stream.peer_addr().ok();
    let writer = Arc::new(Writer::new(stream.clone()));
    if let Err(e) = writer.send(SESSION) {
        debug!(?peer, error = %e, "session link closed before its handshake");
        return;
    }
    debug!(?peer, "session link opened");
    metrics::gauge!("tessera_node_sessions").increment(1.0);
    let link =
        LinkIn { frames: FrameReader::new(stream, skip, SESSION_FRAME_MAX), writer: writer.clone(), drain, peer };
    let inbound = futures::stream::unfold(link, |mut link| async move { link.next().await.map(|b| (b, link)) });
    let mut responses = std::pin::pin!(serve(state, inbound.boxed(), peer));
    let pump = async {
        while let Some(batch) = responses.next().await {
            writer.send(&encode_message(KIND_BATCH, &batch))?;
            writer.below(tessera_proto::link::SESSION_PACE).await?;
        }
        // Every command read has been answered: out with the last replies.
        writer.idle().await?;
        Err::<(), _>("session ended".to_owned())
    };
    let why = tokio::select! {
        Err(why) = pump => why,
        why = writer.flush() => why,
    };
    writer.close(&why);
    debug!(?peer, reason = %why, "session link closed");
}

/// The reading side of a session link.
struct LinkIn {
    frames: tessera_proto::link::FrameReader,
    writer: Arc<tessera_proto::link::Writer>,
    /// Whether the node is stopping (then the router is asked to drain).
    drain: tokio::sync::watch::Receiver<bool>,
    peer: Option<std::net::SocketAddr>,
}

impl LinkIn {
    /// The next batch of requests; `None` once the router sends no more:
    /// it drained the session (`KIND_END`; what it sent is still answered),
    /// or it went away or broke the link (the socket is closed at once).
    async fn next(&mut self) -> Option<Result<RequestBatch, String>> {
        use prost::Message;
        use tessera_proto::link::{encode_frame, Frame, CLOSED_BY_PEER, KIND_DRAIN, KIND_END, KIND_PING};
        let peer = self.peer;
        loop {
            let next = tokio::select! {
                f = self.frames.next() => f,
                // (Once: the value is marked seen.)
                Ok(()) = self.drain.changed() => {
                    if *self.drain.borrow_and_update() {
                        debug!(?peer, "asking the router to drain the session");
                        let _ = self.writer.send(&encode_frame(&Frame { kind: KIND_DRAIN, ..Default::default() }));
                    }
                    continue;
                }
            };
            let why = match next {
                Ok(f) if f.kind == KIND_PING => match self.writer.send(&encode_frame(&f)) {
                    Ok(()) => continue,
                    Err(why) => why,
                },
                Ok(f) if f.kind == KIND_END => return None,
                Ok(f) => return Some(RequestBatch::decode(f.payload).map_err(|e| format!("bad request batch: {e}"))),
                Err(why) => why,
            };
            if why != CLOSED_BY_PEER {
                metrics::counter!("tessera_node_grpc_errors_total").increment(1);
                warn!(?peer, error = %why, "session link failed");
            }
            self.writer.close(&why);
            return None;
        }
    }
}
