//! Connections to storage nodes (the slot → shard → node map that uses
//! them is in [`crate::shards`]).
//!
//! Each [`NodeClient`] owns one long-lived session with its node: a link
//! ([`tessera_proto::link::SESSION`]). Callers hand it a request and get a
//! oneshot for the reply; the request stream batches every request queued
//! since it was last polled into one message, and the session's reader
//! completes replies by id. If the link breaks, in-flight requests fail with
//! `TRYAGAIN` (their outcome is unknown) and the client reconnects with
//! backoff. gRPC to the node carries only the `Shards` call (see
//! [`crate::shards`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use tessera_common::reply::Reply;
use tessera_proto::link::{self, FrameReader, Writer};

use crate::error::Error;
use tessera_proto::parts::Joiner;
use tessera_proto::v1::node_client::NodeClient as GrpcClient;
use tessera_proto::v1::{request, response, RequestBatch, ResponseBatch};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

/// Largest gRPC message the router takes (a `Shards` answer).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Most requests, and bytes, one batch carries.
const BATCH_MAX_REQUESTS: usize = 512;
const BATCH_MAX_BYTES: usize = 4 << 20;

/// What a node answered.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeReply {
    Reply(Reply),
    /// The node's replica is not the shard's leader; nothing ran there.
    /// Carries the leader's id and address when the node knows them.
    Redirect(Option<(u64, String)>),
    /// The request never reached the node (no session): safe to send elsewhere.
    Unreachable(String),
    /// The request went out, but its session ended before the reply came:
    /// it may or may not have run (a `TRYAGAIN` error says so).
    Lost(Error),
}

struct Queued {
    target: request::Target,
    command: Bytes,
    reply: Waiter,
}

/// Where a request's reply goes, and how many parts of a long reply have
/// arrived so far (a caller waiting on a long reply sees it coming).
struct Waiter {
    tx: oneshot::Sender<NodeReply>,
    progress: Arc<AtomicU64>,
}

type InFlight = Arc<Mutex<HashMap<u64, Waiter>>>;

pub struct NodeClient {
    pub addr: String,
    tx: mpsc::Sender<Queued>,
    connected: Arc<AtomicBool>,
}

pub(crate) fn endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .initial_connection_window_size(Some(16 << 20))
        .initial_stream_window_size(Some(16 << 20)))
}

pub(crate) fn grpc(channel: Channel) -> GrpcClient<Channel> {
    GrpcClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES)
}

impl NodeClient {
    /// Starts the client's connection task.
    pub fn spawn(addr: String) -> Arc<NodeClient> {
        let (tx, rx) = mpsc::channel(8192);
        let connected = Arc::new(AtomicBool::new(false));
        tokio::spawn(connection_loop(addr.clone(), rx, connected.clone()));
        Arc::new(NodeClient { addr, tx, connected })
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Sends one command; the returned receiver yields its reply.
    pub fn call(&self, target: request::Target, command: Bytes) -> oneshot::Receiver<NodeReply> {
        self.call_watched(target, command).0
    }

    /// [`NodeClient::call`], with a count of the parts of a long reply
    /// received so far.
    pub fn call_watched(
        &self,
        target: request::Target,
        command: Bytes,
    ) -> (oneshot::Receiver<NodeReply>, Arc<AtomicU64>) {
        let (tx, rx) = oneshot::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let reply = Waiter { tx, progress: progress.clone() };
        if !self.is_connected() {
            let _ = reply.tx.send(NodeReply::Unreachable(format!("node {} is unreachable", self.addr)));
            return (rx, progress);
        }
        if let Err(e) = self.tx.try_send(Queued { target, command, reply }) {
            let q = match e {
                mpsc::error::TrySendError::Full(q) => {
                    let _ = q.reply.tx.send(NodeReply::Reply(Error::QueueFull.into()));
                    return (rx, progress);
                }
                mpsc::error::TrySendError::Closed(q) => q,
            };
            let _ = q.reply.tx.send(NodeReply::Unreachable(format!("node {} is unreachable", self.addr)));
        }
        (rx, progress)
    }
}

type Queue = Arc<Mutex<mpsc::Receiver<Queued>>>;

async fn connection_loop(addr: String, rx: mpsc::Receiver<Queued>, connected: Arc<AtomicBool>) {
    let rx: Queue = Arc::new(Mutex::new(rx));
    let mut backoff = Duration::from_millis(50);
    loop {
        let Err(e) = session(&addr, &rx, &connected).await;
        connected.store(false, Ordering::Relaxed);
        if rx.lock().is_closed() {
            // The client was dropped (e.g. a discovery attempt's map): stop.
            return;
        }
        if e.is::<Drained>() {
            info!(node = %addr, "node is stopping: session drained; reconnecting");
        } else {
            metrics::counter!("tessera_router_grpc_errors_total", "node" => addr.clone()).increment(1);
            warn!(node = %addr, error = %e, "node session down; reconnecting");
        }
        // Requests queued while down fail fast instead of waiting.
        refuse_queued(&rx, &addr);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Fails every request still queued for the node as `Unreachable` (none of
/// them was sent: safe to send elsewhere).
fn refuse_queued(rx: &Queue, addr: &str) {
    while let Ok(q) = rx.lock().try_recv() {
        let _ = q.reply.tx.send(NodeReply::Unreachable(format!("node {addr} is unreachable")));
    }
}

/// Why a session ended when its node drained it on its way out (see
/// [`link::KIND_DRAIN`]): not a failure.
#[derive(Debug, thiserror::Error)]
#[error("the node drained the session: it is stopping")]
struct Drained;

/// The request side of a session: each poll drains everything queued into
/// one batch, registering each request's reply slot under a fresh id, with
/// long commands going in parts between batches (see [`outbound`]). It is
/// polled by the link's pump, which writes what it yields.
struct BatchStream {
    rx: Queue,
    in_flight: InFlight,
    next_id: u64,
    closed: bool,
    outbound: Outbound,
}

impl Drop for BatchStream {
    /// What it still held never reached the node whole, so never ran: safe
    /// to send elsewhere (what went out gets `TRYAGAIN` from [`session`]).
    fn drop(&mut self) {
        let mut map = self.in_flight.lock();
        for id in self.outbound.unsent() {
            if let Some(w) = map.remove(&id) {
                let _ = w.tx.send(NodeReply::Unreachable("node session closed before the command was sent".into()));
            }
        }
    }
}

impl Stream for BatchStream {
    type Item = RequestBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RequestBatch>> {
        let this = self.get_mut();
        let mut requests = Vec::new();
        let mut bytes = this.outbound.released(&mut requests, BATCH_MAX_REQUESTS, BATCH_MAX_BYTES);
        // (Commands released earlier go first, all of them, before any
        // taken from the queue.)
        if this.outbound.short_turn() && !this.outbound.releasing() && !this.closed {
            let mut rx = this.rx.lock();
            let mut map = this.in_flight.lock();
            while requests.len() < BATCH_MAX_REQUESTS && bytes < BATCH_MAX_BYTES && this.outbound.has_room() {
                let q = match rx.poll_recv(cx) {
                    Poll::Ready(Some(q)) => q,
                    Poll::Ready(None) => {
                        this.closed = true;
                        break;
                    }
                    Poll::Pending => break,
                };
                this.next_id += 1;
                map.insert(this.next_id, q.reply);
                if let Some(r) = this.outbound.admit(this.next_id, q.target, q.command) {
                    bytes += r.command.len();
                    requests.push(r);
                }
            }
        }
        if !requests.is_empty() {
            this.outbound.sent_short();
            metrics::histogram!("tessera_router_batch_requests").record(requests.len() as f64);
            return Poll::Ready(Some(RequestBatch { requests }));
        }
        if let Some(part) = this.outbound.next_part() {
            return Poll::Ready(Some(part));
        }
        // Nothing to send: the queue has the waker, unless it has closed.
        match this.closed && this.outbound.is_empty() {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
    }
}

/// Runs one session until it fails; the error says why.
async fn session(addr: &str, rx: &Queue, connected: &AtomicBool) -> Result<std::convert::Infallible, anyhow::Error> {
    let stream = link::connect(addr, link::SESSION).await.map_err(anyhow::Error::msg)?;
    let in_flight: InFlight = Arc::default();
    let outbound = BatchStream {
        rx: rx.clone(),
        in_flight: in_flight.clone(),
        next_id: 0,
        closed: false,
        outbound: Outbound::default(),
    };
    let result = link_session(addr, stream, outbound, &in_flight, connected).await;
    // Whatever was sent but not answered has an unknown outcome.
    for (_, Waiter { tx, .. }) in in_flight.lock().drain() {
        let _ = tx.send(NodeReply::Lost(Error::SessionLost(addr.to_owned())));
    }
    result
}

async fn link_session(
    addr: &str,
    stream: link::Conn,
    mut outbound: BatchStream,
    in_flight: &InFlight,
    connected: &AtomicBool,
) -> Result<std::convert::Infallible, anyhow::Error> {
    use futures::StreamExt;
    use link::{KIND_BATCH, KIND_DRAIN, KIND_END, KIND_PING, SESSION_FRAME_MAX, SESSION_PACE};
    use prost::Message;
    let writer = Writer::new(stream.clone());
    connected.store(true, Ordering::Relaxed);
    info!(node = %addr, "node session up");
    let mut frames = FrameReader::new(stream, 0, SESSION_FRAME_MAX);
    let start = tokio::time::Instant::now();
    // When the node last sent anything (ms since `start`).
    let heard = AtomicU64::new(0);
    // The node asked to drain the session; and `KIND_END` has gone out
    // (nothing more may be sent, pings included).
    let (drain, ended) = (tokio::sync::Notify::new(), AtomicBool::new(false));
    let read = async {
        // Long replies arrive in parts (see `tessera_proto::parts`).
        let mut joiner = Joiner::default();
        loop {
            let frame = match frames.next().await {
                Ok(f) => f,
                Err(why) => return why,
            };
            heard.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
            match frame.kind {
                KIND_PING => continue,
                KIND_DRAIN => {
                    drain.notify_one();
                    continue;
                }
                _ => {}
            }
            match ResponseBatch::decode(frame.payload) {
                Ok(batch) => deliver(batch, in_flight, &mut joiner),
                Err(e) => return format!("bad response batch: {e}"),
            }
        }
    };
    let queue = outbound.rx.clone();
    // Ends with why it stopped, or `None` when the node asked to drain.
    let pump = async {
        loop {
            let batch = tokio::select! {
                biased;
                _ = drain.notified() => return None,
                batch = outbound.next() => batch,
            };
            let Some(batch) = batch else { return Some("the client was dropped".to_owned()) };
            if let Err(why) = writer.send(&link::encode_message(KIND_BATCH, &batch)) {
                return Some(why);
            }
            if let Err(why) = writer.below(SESSION_PACE).await {
                return Some(why);
            }
        }
    };
    let watchdog = watchdog(start, &heard, &writer, &ended);
    let (mut read, mut watchdog, flush) = (std::pin::pin!(read), std::pin::pin!(watchdog), writer.flush());
    let mut flush = std::pin::pin!(flush);
    let why = tokio::select! {
        why = &mut read => why,
        why = &mut watchdog => why,
        why = &mut flush => why,
        why = pump => {
            let Some(why) = why else {
                // The node is stopping. New calls go to other replicas at
                // once; what the session held or had queued never reached
                // the node, so it fails over the same way (as `outbound`
                // is dropped). What went out is answered, then the session
                // closes (at whichever end first).
                connected.store(false, Ordering::Relaxed);
                drop(outbound);
                refuse_queued(&queue, addr);
                ended.store(true, Ordering::Relaxed);
                let end = writer.send(&link::encode_frame(&link::Frame { kind: KIND_END, ..Default::default() }));
                let answered = async {
                    while !in_flight.lock().is_empty() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    "every command sent was answered".to_owned()
                };
                let why = match end {
                    Err(why) => why,
                    Ok(()) => tokio::select! {
                        why = &mut read => why,
                        why = &mut watchdog => why,
                        why = &mut flush => why,
                        why = answered => why,
                    },
                };
                writer.close(&why);
                tracing::debug!(node = %addr, reason = %why, "drained session closed");
                return Err(Drained.into());
            };
            // Dropped while requests were in flight: their replies still
            // come (as they did when h2 half-closed the stream), within a
            // bound.
            let drained = async {
                while !in_flight.lock().is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                why = &mut read => why,
                why = &mut watchdog => why,
                why = &mut flush => why,
                _ = tokio::time::timeout(Duration::from_secs(10), drained) => why,
            }
        }
    };
    writer.close(&why);
    anyhow::bail!(why)
}

/// Pings the node on a session link and ends (saying why) when it has sent
/// nothing for too long: a node that stopped (paused, hung) still has its
/// kernel acknowledge what is sent, so only an answer from the node itself
/// tells. No ping goes out once the session's last frame has (`ended`).
async fn watchdog(start: tokio::time::Instant, heard: &AtomicU64, writer: &Writer, ended: &AtomicBool) -> String {
    use link::{KIND_PING, SESSION_PING, SESSION_SILENCE_MAX};
    let mut tick = tokio::time::interval_at(start + SESSION_PING, SESSION_PING);
    loop {
        tick.tick().await;
        let silent = start.elapsed().saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
        if silent > SESSION_SILENCE_MAX {
            return format!("node sent nothing for {} s", silent.as_secs());
        }
        if ended.load(Ordering::Relaxed) {
            continue;
        }
        let ping = link::Frame { kind: KIND_PING, ..Default::default() };
        if let Err(why) = writer.send(&link::encode_frame(&ping)) {
            return why;
        }
    }
}

/// Completes the requests a batch of responses answers.
fn deliver(batch: ResponseBatch, in_flight: &InFlight, joiner: &mut Joiner) {
    let mut map = in_flight.lock();
    for r in batch.responses {
        let result = match r.result {
            Some(response::Result::Reply(part)) if r.total_len > 0 => match joiner.add(r.id, r.total_len, &part) {
                Ok(None) => {
                    if let Some(w) = map.get(&r.id) {
                        w.progress.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                Ok(Some(whole)) => Some(response::Result::Reply(whole)),
                Err(e) => Some(response::Result::Reply(Reply::from(Error::Parts(e)).to_bytes().into())),
            },
            other => other,
        };
        if let Some(Waiter { tx, .. }) = map.remove(&r.id) {
            let reply = match result {
                Some(response::Result::Reply(b)) => NodeReply::Reply(decode_reply(&b)),
                Some(response::Result::Redirect(rd)) => {
                    NodeReply::Redirect((rd.leader_id != 0).then_some((rd.leader_id, rd.leader_addr)))
                }
                None => NodeReply::Reply(Error::EmptyReply.into()),
            };
            let _ = tx.send(reply);
        }
    }
}

/// A node's reply. A model's bytes in a long reply stay a slice of it (see
/// `tessera_common::shared`), not a copy.
fn decode_reply(b: &bytes::Bytes) -> Reply {
    let decoded = match b.len() > tessera_proto::parts::PART_BYTES {
        true => tessera_common::shared::decode::<Reply>(b),
        false => Reply::from_bytes(b),
    };
    decoded.unwrap_or_else(|e| Error::BadReply(e.to_string()).into())
}

mod outbound;
use outbound::Outbound;

#[cfg(test)]
mod tests;
