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

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tessera_common::command::NodeCommand;
use tessera_common::error::code_of;
use tessera_common::reply::Reply;
use tessera_proto::parts::{Joiner, Outgoing};
use tessera_proto::v1::{response, Redirect, RequestBatch, ResponseBatch};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use crate::hosted::NodeState;
use crate::shard::{Outcome, Shard};

/// What a session sends back: a response, or a long reply's encoding in
/// pieces (sent in parts, see [`tessera_proto::parts`]).
enum Out {
    One(tessera_proto::v1::Response),
    Long { id: u64, pieces: Vec<Bytes> },
}

fn response(id: u64, shard: u32, out: Outcome) -> Out {
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
        Outcome::Redirect(leader) => {
            let (leader_id, leader_addr) = leader.unwrap_or_default();
            response::Result::Redirect(Redirect { shard, leader_id, leader_addr })
        }
    };
    Out::One(tessera_proto::v1::Response { id, result: Some(result), total_len: 0 })
}

fn record(name: &'static str, out: &Outcome, start: Instant) {
    let code = match out {
        Outcome::Reply(Reply::Error(e)) => code_of(e),
        Outcome::Reply(_) => "ok",
        Outcome::Redirect(_) => "redirect",
    };
    tessera_telemetry::record_command("tessera_node", name, code, start.elapsed());
}

/// A finished command: its in-flight slot, request id and outcome.
type Done = (u64, u64, Outcome);

/// The queue into one lane: request id and command.
type LaneTx = mpsc::Sender<(u64, NodeCommand)>;

mod order;
use order::{Access, Flights, Kind};

/// One shard's share of one session (see the module docs for the ordering
/// rules): commands start in arrival order; one that touches a key an
/// earlier, unfinished command writes (or writes a key it reads) waits, and
/// so does everything behind it.
async fn lane(shard: Arc<Shard>, mut rx: mpsc::Receiver<(u64, NodeCommand)>, out: mpsc::Sender<Out>) {
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
                    let o = match &cmd {
                        NodeCommand::ModelExecute { argv, deprecated } => s.execute(argv, *deprecated).await,
                        _ => Outcome::Reply(Reply::err("ERR internal: not a model run")),
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

/// Batches every response ready at poll time into one message. Long
/// replies go in parts (see [`tessera_proto::parts`]), one reply after
/// another, with the short replies ready by then between their parts.
struct ResponseStream {
    rx: mpsc::Receiver<Out>,
    /// Whether `rx` has closed (every lane and the reader are gone).
    closed: bool,
    /// Long replies going out in parts, one after another.
    longs: VecDeque<Outgoing<()>>,
    /// Whether the last message was a part: replies ready since then go
    /// before the next part, so a long reply (a model's bytes) holds up the
    /// session's other replies by a part at most, not by all of itself.
    part_last: bool,
    _guard: SessionGuard,
}

impl ResponseStream {
    /// The next part of the long reply in front, alone in a message.
    fn next_part(&mut self) -> Option<ResponseBatch> {
        let out = self.longs.front_mut()?;
        let (part, last) = out.next_part();
        let r = tessera_proto::v1::Response {
            id: out.id,
            result: Some(response::Result::Reply(part)),
            total_len: out.total,
        };
        if last {
            self.longs.pop_front();
        }
        Some(ResponseBatch { responses: vec![r] })
    }

    /// Every short reply ready now, in one message (long ones join
    /// `longs`); `None` when none is.
    fn ready_replies(&mut self, cx: &mut Context<'_>) -> Option<ResponseBatch> {
        let mut responses = Vec::new();
        // At most about a part's worth of bytes per message, so the
        // router's receive buffer stays that small too.
        let mut bytes = 0;
        // (With a few long replies waiting, the lanes wait too.)
        while !self.closed && responses.len() < 1024 && bytes < tessera_proto::parts::PART_BYTES && self.longs.len() < 4
        {
            let r = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Out::One(r))) => r,
                Poll::Ready(Some(Out::Long { id, pieces })) => {
                    self.longs.push_back(Outgoing::from_pieces(id, (), pieces));
                    continue;
                }
                Poll::Ready(None) => {
                    self.closed = true;
                    break;
                }
                Poll::Pending => break,
            };
            match r.result {
                Some(response::Result::Reply(b)) if b.len() > tessera_proto::parts::PART_BYTES => {
                    self.longs.extend(Outgoing::new(r.id, (), b).ok());
                    continue;
                }
                Some(response::Result::Reply(ref b)) => bytes += b.len(),
                _ => {}
            }
            responses.push(r);
        }
        (!responses.is_empty()).then_some(ResponseBatch { responses })
    }
}

impl Stream for ResponseStream {
    type Item = ResponseBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.part_last || this.longs.is_empty() {
            if let Some(batch) = this.ready_replies(cx) {
                this.part_last = false;
                return Poll::Ready(Some(batch));
            }
        }
        if let Some(part) = this.next_part() {
            this.part_last = true;
            return Poll::Ready(Some(part));
        }
        // Nothing long to send, and no reply ready: `rx` has the waker.
        match this.closed {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
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
    mut inbound: Inbound,
    out: mpsc::Sender<Out>,
    peer: Option<std::net::SocketAddr>,
) {
    // A lane serves one replica object: when the replica is reopened or
    // replaced, the next request starts a lane on the new one (the old lane
    // finishes what it has and exits).
    let mut lanes: HashMap<u32, (Arc<Shard>, LaneTx)> = HashMap::new();
    // Room to lay a model out for its runtime where it arrived
    // (`models::arrange`, before the leader checks that it loads).
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
                        let _ = out.send(response(r.id, 0, Outcome::Reply(Reply::err(e)))).await;
                        continue;
                    }
                },
            };
            match state.route(r.target, command) {
                Err(outcome) => {
                    let _ = out.send(response(r.id, 0, outcome)).await;
                }
                Ok((shard, cmd)) => {
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
    ResponseStream { rx, closed: false, longs: VecDeque::new(), part_last: false, _guard: SessionGuard { peer } }
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
pub async fn serve_link(state: Arc<NodeState>, stream: tokio::net::TcpStream) {
    use tessera_proto::link::{encode_message, tune, FrameReader, Writer, KIND_BATCH, SESSION, SESSION_FRAME_MAX};
    // Held while the session lives: the stopping node waits for them all.
    let _live = state.drain.subscribe();
    let mut drain = state.drain.subscribe();
    // (A session opened once the node is draining is asked at once.)
    drain.mark_changed();
    tune(&stream, SESSION);
    let peer = stream.peer_addr().ok();
    let stream = Arc::new(stream);
    let writer = Arc::new(Writer::new(stream.clone()));
    if let Err(e) = writer.send(SESSION) {
        debug!(?peer, error = %e, "session link closed before its handshake");
        return;
    }
    debug!(?peer, "session link opened");
    metrics::gauge!("tessera_node_sessions").increment(1.0);
    let link = LinkIn {
        frames: FrameReader::new(stream, SESSION.len(), SESSION_FRAME_MAX),
        writer: writer.clone(),
        drain,
        peer,
    };
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
