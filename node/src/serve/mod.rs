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
/// Raft messages and snapshots) to the gRPC server. With cluster TLS, every
/// connection is first a TLS handshake that needs a certificate from the
/// cluster CA; one that fails is refused and logged.
pub async fn accept(
    listener: TcpListener,
    grpc: mpsc::Sender<std::io::Result<GrpcIo>>,
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
        if let Some(tls) = tessera_proto::tls::get() {
            tokio::spawn(accept_tls(tls.acceptor(), stream, grpc, transport, state));
            continue;
        }
        tokio::spawn(async move {
            let skip = link::RAFT.len();
            match link::sniff(&stream, &[link::RAFT, link::SESSION]).await {
                Some(0) => transport.serve_link(stream.into(), skip).await,
                // A stopping node takes no new session: the router's
                // handshake fails, and what it has queued goes elsewhere.
                Some(_) if *state.drain.borrow() => drop(stream),
                Some(_) => session::serve_link(state, stream.into(), skip).await,
                None => {
                    let _ = grpc.send(Ok(GrpcIo::Plain(stream))).await;
                }
            }
        });
    }
}

/// One connection on a cluster with TLS: the handshake (a peer without a
/// certificate from the cluster CA is refused here), then by ALPN a link
/// (its magic inside the session) or gRPC.
async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    grpc: mpsc::Sender<std::io::Result<GrpcIo>>,
    transport: TransportService,
    state: Arc<NodeState>,
) {
    let peer = stream.peer_addr().ok();
    let tls = match tokio::time::timeout(tessera_proto::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            metrics::counter!("tessera_node_tls_refused_total").increment(1);
            warn!(?peer, error = %e, "refused a connection: TLS handshake failed");
            return;
        }
        Err(_) => {
            metrics::counter!("tessera_node_tls_refused_total").increment(1);
            warn!(?peer, "refused a connection: TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() != Some(tessera_proto::tls::ALPN_LINK) {
        let _ = grpc.send(Ok(GrpcIo::Tls(Box::new(tls)))).await;
        return;
    }
    match link::accept_tls(tls, &[link::RAFT, link::SESSION]).await {
        Ok((0, conn)) => transport.serve_link(conn, 0).await,
        Ok(_) if *state.drain.borrow() => {}
        Ok((_, conn)) => session::serve_link(state, conn, 0).await,
        Err(e) => warn!(?peer, error = %e, "refused a link"),
    }
}

/// A connection the gRPC server serves: plain, or TLS on a cluster with TLS.
pub enum GrpcIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for GrpcIo {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            GrpcIo::Plain(s) => s.peer_addr().ok(),
            GrpcIo::Tls(s) => s.get_ref().0.peer_addr().ok(),
        }
    }
}

impl tokio::io::AsyncRead for GrpcIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            GrpcIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for GrpcIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            GrpcIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            GrpcIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            GrpcIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
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
