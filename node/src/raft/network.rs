//! The Raft network, client side: one lazily connected HTTP/2 channel per
//! peer node, shared by every group the two nodes host together. Small
//! messages (heartbeats, votes, appends of ordinary writes) travel on one
//! long-lived `RaftTransport.Stream` per peer, a DATA frame each, their
//! replies matched by id; large ones (model parts) are unary
//! `RaftTransport.Call`s, so a heartbeat never waits behind megabytes.
//!
//! Why a stream: a unary call costs an HTTP/2 stream with headers and
//! trailers, and h2 writes a request's headers and body separately. A write
//! at concurrency 1 made the leader do 9 `writev`s (measured with strace);
//! on the stream it is 5, and under load many messages share one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tessera_proto::v1::raft_transport_client::RaftTransportClient;
use tessera_proto::v1::{RaftKind, RaftMessage};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

use super::{decode, encode, NodeAddr, SnapshotData, C};
use crate::MAX_MESSAGE_BYTES;

/// Channels to peer nodes, by node id.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// A second connection per peer, for snapshot streams.
    snapshot_channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// The message stream to each peer (on its first channel).
    links: Arc<Mutex<HashMap<u64, PeerLink>>>,
}

/// A peer's address and the link to it.
type PeerLink = (String, Arc<Link>);

impl Peers {
    fn client(&self, id: u64, addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        Self::client_in(&self.channels, id, addr)
    }

    fn link(&self, id: u64, addr: &str) -> Result<Arc<Link>, String> {
        let mut links = self.links.lock();
        match links.get(&id) {
            Some((a, link)) if a == addr => Ok(link.clone()),
            _ => {
                let link = Link::open(self.client(id, addr)?, id);
                links.insert(id, (addr.to_owned(), link.clone()));
                Ok(link)
            }
        }
    }

    fn snapshot_client(&self, id: u64, addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        Self::client_in(&self.snapshot_channels, id, addr)
    }

    fn client_in(
        channels: &Mutex<HashMap<u64, (String, Channel)>>,
        id: u64,
        addr: &str,
    ) -> Result<RaftTransportClient<Channel>, String> {
        let mut map = channels.lock();
        let channel = match map.get(&id) {
            Some((a, ch)) if a == addr => ch.clone(),
            _ => {
                let ch = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .initial_connection_window_size(Some(16 << 20))
                    .initial_stream_window_size(Some(16 << 20))
                    .connect_lazy();
                map.insert(id, (addr.to_owned(), ch.clone()));
                ch
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Messages up to this size go on the peer's stream; larger ones by `Call`.
pub const STREAM_MAX_BYTES: usize = 256 << 10;

/// Longest wait before a broken stream to a peer is opened again (it starts
/// at 20 ms and doubles): short, or a restarted peer would miss heartbeats
/// for long enough to start an election.
const RELINK_MAX: Duration = Duration::from_millis(200);

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<RaftMessage, String>>>>>;

/// The message stream to one peer, shared by every group. A task keeps it
/// open ([`drive`]); callers queue a request and wait for the reply with
/// its id.
pub struct Link {
    target: u64,
    /// Requests sent and not answered, by id. Dropped (answered with an
    /// error) when their stream breaks.
    waiting: Waiting,
    /// The current stream's outbound queue; replaced when it breaks.
    out: Mutex<mpsc::UnboundedSender<RaftMessage>>,
    next_id: AtomicU64,
}

enum LinkError {
    TimedOut,
    Broken(String),
}

impl Link {
    fn open(client: RaftTransportClient<Channel>, target: u64) -> Arc<Link> {
        let (tx, rx) = mpsc::unbounded_channel();
        let link =
            Arc::new(Link { target, waiting: Default::default(), out: Mutex::new(tx), next_id: AtomicU64::new(1) });
        tokio::spawn(drive(Arc::downgrade(&link), link.waiting.clone(), client, rx));
        link
    }

    async fn call(&self, msg: RaftMessage, timeout: Duration) -> Result<RaftMessage, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        // Registered before it is queued: the driver only sends requests
        // someone still waits for.
        self.waiting.lock().insert(id, tx);
        if self.out.lock().send(RaftMessage { id, ..msg }).is_err() {
            self.waiting.lock().remove(&id);
            return Err(LinkError::Broken(format!("stream to node {} closed", self.target)));
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.waiting.lock().remove(&id);
                Err(LinkError::TimedOut)
            }
            Ok(Err(_)) => Err(LinkError::Broken(format!("stream to node {} broke", self.target))),
            Ok(Ok(Err(e))) => Err(LinkError::Broken(e)),
            Ok(Ok(Ok(m))) => Ok(m),
        }
    }
}

/// Keeps a link's stream open until the link is dropped: sends what is
/// queued (skipping requests whose callers gave up), hands replies to their
/// callers, and when the stream breaks fails whatever waits on it and opens
/// a new one.
async fn drive(
    link: Weak<Link>,
    waiting: Waiting,
    mut client: RaftTransportClient<Channel>,
    mut rx: mpsc::UnboundedReceiver<RaftMessage>,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let still_waiting = waiting.clone();
        let outbound = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .filter(move |m| still_waiting.lock().contains_key(&m.id));
        match client.stream(outbound).await {
            Ok(resp) => {
                backoff = Duration::from_millis(20);
                let mut inbound = resp.into_inner();
                while let Ok(Some(reply)) = inbound.message().await {
                    if let Some(tx) = waiting.lock().remove(&reply.id) {
                        let _ = tx.send(if reply.error.is_empty() { Ok(reply) } else { Err(reply.error) });
                    }
                }
            }
            Err(status) => tracing::debug!(error = %status, "raft stream could not be opened"),
        }
        let Some(l) = link.upgrade() else { return };
        let (tx, next) = mpsc::unbounded_channel();
        // The old queue's sender goes, which ends the old request stream.
        *l.out.lock() = tx;
        drop(l);
        waiting.lock().clear();
        rx = next;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RELINK_MAX);
    }
}

/// Bytes of snapshot per streamed piece.
pub const SNAPSHOT_CHUNK_BYTES: usize = 8 << 20;

/// One piece of a streamed snapshot.
#[derive(Serialize, serde::Deserialize)]
pub struct SnapshotPiece {
    pub vote: VoteOf<C>,
    pub meta: openraft::type_config::alias::SnapshotMetaOf<C>,
    /// Where `data` starts in the snapshot, and the snapshot's size.
    pub offset: u64,
    pub total: u64,
    pub data: Vec<u8>,
}

/// Most bytes of entries one AppendEntries request carries.
pub const APPEND_MAX_BYTES: usize = 8 << 20;

/// Splits `entries` into consecutive runs of at most `max` encoded bytes
/// (at least one entry each; an empty list gives one empty run, a heartbeat),
/// with each run's size.
fn split_by_bytes<E: Serialize>(entries: Vec<E>, max: usize) -> Vec<(Vec<E>, usize)> {
    let mut out: Vec<(Vec<E>, usize)> = vec![(Vec::new(), 0)];
    for e in entries {
        let size = postcard::experimental::serialized_size(&e).unwrap_or(0);
        let cur = out.last_mut().expect("never empty");
        if !cur.0.is_empty() && cur.1 + size > max {
            out.push((Vec::new(), 0));
        }
        let cur = out.last_mut().expect("never empty");
        cur.0.push(e);
        cur.1 += size;
    }
    out
}

/// Builds the per-target clients of one group.
pub struct NetworkFactory {
    pub group: u32,
    pub peers: Peers,
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerClient {
        PeerClient {
            group: self.group,
            target,
            client: self.peers.client(target, &node.addr),
            link: self.peers.link(target, &node.addr),
            snapshot_client: self.peers.snapshot_client(target, &node.addr),
        }
    }
}

pub struct PeerClient {
    group: u32,
    target: u64,
    client: Result<RaftTransportClient<Channel>, String>,
    link: Result<Arc<Link>, String>,
    snapshot_client: Result<RaftTransportClient<Channel>, String>,
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<C>> {
        let unreachable = |e: &String| RPCError::Unreachable(Unreachable::from_string(e.clone()));
        let msg =
            RaftMessage { group: self.group, kind: kind as i32, payload: encode(req).into(), ..Default::default() };
        let timed_out = || {
            RPCError::Network(NetworkError::from_string(format!(
                "{kind:?} to node {} timed out after {timeout:?}",
                self.target
            )))
        };
        let resp = if msg.payload.len() <= STREAM_MAX_BYTES {
            let link = self.link.as_ref().map_err(unreachable)?;
            match link.call(msg, timeout).await {
                Ok(r) => r,
                Err(LinkError::TimedOut) => return Err(timed_out()),
                Err(LinkError::Broken(e)) => return Err(unreachable(&e)),
            }
        } else {
            let client = self.client.as_mut().map_err(|e| unreachable(e))?;
            match tokio::time::timeout(timeout, client.call(msg)).await {
                Err(_) => return Err(timed_out()),
                Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
                Ok(Ok(r)) => r.into_inner(),
            }
        };
        decode(&resp.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

fn remote<E: std::error::Error + 'static>(e: E) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = SnapshotData;

    /// Sends the entries in requests of at most [`APPEND_MAX_BYTES`] (an
    /// entry larger than that goes alone), one after another; the first
    /// answer that is not `Success` is returned as is.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let AppendEntriesRequest { vote, mut prev_log_id, entries, leader_commit } = rpc;
        let batches = split_by_bytes(entries, APPEND_MAX_BYTES);
        let last = batches.len().saturating_sub(1);
        let mut answer = AppendEntriesResponse::Success;
        for (i, (entries, bytes)) in batches.into_iter().enumerate() {
            let sub_last = entries.last().map(|e| e.log_id);
            // Never claim more is committed than this request carries: a
            // follower could otherwise apply stale entries past it (all of
            // the leader's entries up to its commit index are committed).
            let commit = match (i < last, leader_commit, sub_last) {
                (true, Some(c), Some(l)) if l.index < c.index => Some(l),
                _ => leader_commit,
            };
            let req = AppendEntriesRequest::<C> { vote, prev_log_id, entries, leader_commit: commit };
            // openraft's soft TTL is sized for heartbeats; a batch of entries
            // also waits for the follower's fsync and may carry megabytes.
            let timeout = option.soft_ttl().max(Duration::from_secs(2)) + Duration::from_millis(bytes as u64 / 50_000);
            let r: Result<AppendEntriesResponse<C>, RaftError<C>> = self.call(RaftKind::Append, &req, timeout).await?;
            answer = r.map_err(remote)?;
            if !matches!(answer, AppendEntriesResponse::Success) {
                return Ok(answer);
            }
            prev_log_id = sub_last.or(prev_log_id);
        }
        Ok(answer)
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        let timeout = option.soft_ttl().max(Duration::from_millis(500));
        let r: Result<VoteResponse<C>, RaftError<C>> = self.call(RaftKind::Vote, &rpc, timeout).await?;
        r.map_err(remote)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        // Streamed in pieces over the peer's snapshot connection (so
        // appends and heartbeats to it are not stuck behind it), each piece
        // with its own time-out: any size of state gets through.
        let (meta, data) = (snapshot.meta.clone(), snapshot.snapshot);
        let bytes = tokio::task::spawn_blocking(move || data.into_bytes(&meta))
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let total = bytes.len() as u64;
        let mut client =
            self.snapshot_client.clone().map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        tokio::pin!(cancel);
        let mut offset = 0usize;
        loop {
            let end = (offset + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
            let piece = SnapshotPiece {
                vote,
                meta: snapshot.meta.clone(),
                offset: offset as u64,
                total,
                data: bytes[offset..end].to_vec(),
            };
            let msg = RaftMessage {
                group: self.group,
                kind: RaftKind::SnapshotChunk as i32,
                payload: encode(&piece).into(),
                ..Default::default()
            };
            let call = tokio::time::timeout(Duration::from_secs(60), client.call(msg));
            let resp = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                r = call => match r {
                    Err(_) => return Err(StreamingError::Network(NetworkError::from_string(format!(
                        "snapshot piece at {offset} of {total} bytes to node {} timed out", self.target
                    )))),
                    Ok(Err(status)) => return Err(StreamingError::Unreachable(Unreachable::new(&status))),
                    Ok(Ok(r)) => r.into_inner(),
                },
            };
            metrics::counter!("tessera_raft_snapshot_bytes_sent_total").increment((end - offset) as u64);
            offset = end;
            if offset >= bytes.len() {
                let r: Result<SnapshotResponse<C>, openraft::errors::Fatal<C>> =
                    decode(&resp.payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
                return r.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)));
            }
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let r: Result<TransferLeaderResponse<C>, openraft::errors::Fatal<C>> =
            self.call(RaftKind::TransferLeader, &req, option.soft_ttl()).await?;
        r.map_err(remote)
    }
}

#[cfg(test)]
mod tests {
    use super::split_by_bytes;

    #[test]
    fn appends_are_split_by_bytes() {
        let v: Vec<Vec<u8>> = vec![vec![0; 10], vec![0; 10], vec![0; 100], vec![0; 5]];
        let runs: Vec<usize> = split_by_bytes(v, 30).iter().map(|(e, _)| e.len()).collect();
        assert_eq!(runs, [2, 1, 1], "an oversized entry goes alone");
        assert_eq!(split_by_bytes(Vec::<Vec<u8>>::new(), 30).len(), 1, "a heartbeat is one empty request");
    }
}
