//! What routers reach: the listener that tells raft links, session links
//! and HTTP/2 apart ([`accept`]), router sessions ([`session`]), and the
//! `tessera.node.v1.Node` gRPC service ([`NodeService`]: the shards this node
//! hosts).

pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::link;
use tessera_proto::v1::node_server::Node;
use tessera_proto::v1::{Member, ShardInfo, ShardsRequest, ShardsResponse};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::hosted::NodeState;
use crate::raft::transport::TransportService;

/// Accepts the node's connections: raft links from peers go to the Raft
/// transport, session links from routers to [`session::serve_link`],
/// everything else (HTTP/2: admin calls, the routers' `Shards` calls, large
/// Raft messages and snapshots) to the gRPC server.
pub async fn accept(
    listener: TcpListener,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
    transport: TransportService,
    state: Arc<NodeState>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: the listener itself is fine.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Small replies must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let (grpc, transport, state) = (grpc.clone(), transport.clone(), state.clone());
        tokio::spawn(async move {
            match link::sniff(&stream, &[link::RAFT, link::SESSION]).await {
                Some(0) => transport.serve_link(stream).await,
                // A stopping node takes no new session: the router's
                // handshake fails, and what it has queued goes elsewhere.
                Some(_) if *state.drain.borrow() => drop(stream),
                Some(_) => session::serve_link(state, stream).await,
                None => {
                    let _ = grpc.send(Ok(stream)).await;
                }
            }
        });
    }
}

pub struct NodeService {
    pub state: Arc<NodeState>,
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn shards(&self, _req: Request<ShardsRequest>) -> Result<Response<ShardsResponse>, Status> {
        let hosted = self.state.hosted();
        let info = |s: &crate::shard::Shard| {
            let st = s.status();
            ShardInfo {
                id: s.id,
                slots: s
                    .ranges
                    .iter()
                    .map(|r| tessera_proto::v1::SlotRange { start: r.start.into(), end: r.end.into() })
                    .collect(),
                members: st.members.into_iter().map(|(id, addr)| Member { id, addr }).collect(),
                leader_id: st.leader.unwrap_or(0),
                term: st.term,
                commit_index: st.committed,
                applied_index: st.applied,
            }
        };
        let shards = hosted.shards.iter().map(|s| info(s)).collect();
        let meta = hosted.meta.as_deref().map(info);
        let users_version = hosted.meta.as_ref().map_or(0, |m| m.users_version());
        Ok(Response::new(ShardsResponse { node_id: self.state.node_id, shards, meta, users_version }))
    }
}
