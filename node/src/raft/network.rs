//! The Raft network, client side: per peer node, a link ([`super::wire::Link`],
//! plain TCP) for small messages of every group the two nodes host together
//! (heartbeats, votes, appends of ordinary writes), their replies matched by
//! id; and a lazily connected HTTP/2 channel for large ones (appends
//! carrying model parts) as unary `RaftTransport.Call`s, so a heartbeat
//! never waits behind megabytes, plus a second channel for snapshots.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
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
use tonic::transport::{Channel, Endpoint};

use super::sm::SnapshotData;
use super::types::{NodeAddr, C};
use super::wire::{CallError, Link};
use crate::util::MAX_MESSAGE_BYTES;
use crate::util::{decode, encode};

/// Channels to peer nodes, by node id.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// A second connection per peer, for snapshot streams.
    snapshot_channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
    /// The link to each peer.
    links: Arc<Mutex<HashMap<u64, PeerLink>>>,
}

/// A peer's address and the link to it.
type PeerLink = (String, Arc<Link>);

impl Peers {
    /// Asks `leader` (at `addr`) for group `group`'s read index (see
    /// [`super::group::Group::follower_read`]), on the link.
    pub async fn read_index(&self, leader: u64, addr: &str, group: u32, timeout: Duration) -> Result<u64, String> {
        let msg = RaftMessage { group, kind: RaftKind::ReadIndex as i32, ..Default::default() };
        let reply = self.link(leader, addr).call(msg, timeout).await.map_err(|e| match e {
            CallError::TimedOut => format!("timed out after {timeout:?}"),
            CallError::Broken(why) => why,
        })?;
        if !reply.error.is_empty() {
            return Err(reply.error);
        }
        decode::<Result<u64, String>>(&reply.payload).map_err(|e| e.to_string())?
    }

    fn client(&self, id: u64, addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        Self::client_in(&self.channels, id, addr)
    }

    fn link(&self, id: u64, addr: &str) -> Arc<Link> {
        let mut links = self.links.lock();
        match links.get(&id) {
            Some((a, link)) if a == addr => link.clone(),
            _ => {
                let link = Link::open(id, addr.to_owned());
                links.insert(id, (addr.to_owned(), link.clone()));
                link
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
                let ch = tessera_proto::tls::lazy_channel(
                    Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| e.to_string())?
                        .tcp_nodelay(true)
                        .connect_timeout(Duration::from_secs(1))
                        .http2_keep_alive_interval(Duration::from_secs(5))
                        .keep_alive_timeout(Duration::from_secs(10))
                        .initial_connection_window_size(Some(16 << 20))
                        .initial_stream_window_size(Some(16 << 20)),
                );
                map.insert(id, (addr.to_owned(), ch.clone()));
                ch
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// Messages up to this size go on the peer's link; larger ones by `Call`.
pub const STREAM_MAX_BYTES: usize = 256 << 10;

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
    link: Arc<Link>,
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
        let on_link = match msg.payload.len() <= STREAM_MAX_BYTES {
            false => None,
            true => match self.link.call(msg.clone(), timeout).await {
                Ok(r) => Some(r),
                Err(CallError::TimedOut) => return Err(timed_out()),
                Err(CallError::Broken(e)) => return Err(unreachable(&e)),
            },
        };
        let resp = match on_link {
            Some(r) => r,
            None => {
                let client = self.client.as_mut().map_err(|e| unreachable(e))?;
                match tokio::time::timeout(timeout, client.call(msg)).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
                    Ok(Ok(r)) => r.into_inner(),
                }
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
mod tests;
