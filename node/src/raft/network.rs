//! The Raft network, client side: one lazily connected HTTP/2 channel per
//! peer node, shared by every group the two nodes host together; each RPC is
//! a unary `RaftTransport.Call` naming its group.

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

use super::{decode, encode, NodeAddr, SnapshotData, C};
use crate::MAX_MESSAGE_BYTES;

/// Channels to peer nodes, by node id.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<u64, (String, Channel)>>>,
}

impl Peers {
    fn client(&self, id: u64, addr: &str) -> Result<RaftTransportClient<Channel>, String> {
        let mut map = self.channels.lock();
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

/// Builds the per-target clients of one group.
pub struct NetworkFactory {
    pub group: u32,
    pub peers: Peers,
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> PeerClient {
        PeerClient { group: self.group, target, client: self.peers.client(target, &node.addr) }
    }
}

pub struct PeerClient {
    group: u32,
    target: u64,
    client: Result<RaftTransportClient<Channel>, String>,
}

impl PeerClient {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<C>> {
        let client = self.client.as_mut().map_err(|e| RPCError::Unreachable(Unreachable::from_string(e.clone())))?;
        let msg = RaftMessage { group: self.group, kind: kind as i32, payload: encode(req).into() };
        let resp = match tokio::time::timeout(timeout, client.call(msg)).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "{kind:?} to node {} timed out after {timeout:?}",
                    self.target
                ))))
            }
            Ok(Err(status)) => return Err(RPCError::Unreachable(Unreachable::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        decode(&resp.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

fn remote<E: std::error::Error + 'static>(e: E) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // openraft's soft TTL is sized for heartbeats; a batch of entries
        // also waits for the follower's fsync and may carry megabytes.
        let bytes: usize = rpc.entries.len() * 64;
        let timeout = option.soft_ttl().max(Duration::from_secs(2)) + Duration::from_millis(bytes as u64 / 50_000);
        let r: Result<AppendEntriesResponse<C>, RaftError<C>> = self.call(RaftKind::Append, &rpc, timeout).await?;
        r.map_err(remote)
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
        let bytes = snapshot.snapshot.into_inner();
        // Sized for large state: a minute plus a second per 10 MB.
        let timeout = Duration::from_secs(60 + bytes.len() as u64 / 10_000_000);
        let req = (vote, snapshot.meta, bytes);
        tokio::pin!(cancel);
        let r: Result<SnapshotResponse<C>, openraft::errors::Fatal<C>> = tokio::select! {
            closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            r = self.call(RaftKind::Snapshot, &req, timeout) => r?,
        };
        r.map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
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
