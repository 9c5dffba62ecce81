//! The Raft network, server side: raft links ([`super::wire`]) and
//! `RaftTransport.Call` (large messages) hand each message to the group it
//! names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::Snapshot;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, VoteOf};
use tessera_proto::v1::raft_transport_server::RaftTransport;
use tessera_proto::v1::{RaftKind, RaftMessage};
use tonic::{Request, Response, Status};

use parking_lot::Mutex;

use super::group::Group;
use super::network::SnapshotPiece;
use super::sm::SnapshotData;
use super::types::C;
use crate::util::{decode, encode};

/// What the transport needs of the node: the Raft of each group it hosts,
/// and whether it is on its way out.
pub trait Groups: Send + Sync + 'static {
    fn group(&self, id: u32) -> Option<Group>;
    fn node_id(&self) -> u64;
    fn stopping(&self) -> bool;
}

#[derive(Clone)]
pub struct TransportService {
    groups: Arc<dyn Groups>,
    /// Snapshots being received, by group: (the snapshot's last log id,
    /// bytes so far).
    incoming: Arc<Mutex<HashMap<u32, Incoming>>>,
    /// No vote is cast before this ([`TransportService::new`]).
    votes_from: tokio::time::Instant,
}

/// A snapshot being received: its last log id and the bytes so far.
pub type Incoming = (Option<LogIdOf<C>>, Vec<u8>);

type Received = (VoteOf<C>, SnapshotOf<C, SnapshotData>);

impl TransportService {
    /// Adds one piece of a streamed snapshot; the whole snapshot once the
    /// last piece is in. Pieces must arrive in order (a sender that starts
    /// over sends offset 0 again).
    fn receive_piece(&self, group: u32, p: SnapshotPiece) -> Result<Option<Received>, Status> {
        let mut incoming = self.incoming.lock();
        if p.offset == 0 {
            incoming.insert(group, (p.meta.last_log_id, Vec::with_capacity(p.total.min(64 << 20) as usize)));
        }
        let Some((id, buf)) = incoming.get_mut(&group) else {
            return Err(Status::failed_precondition("snapshot piece without a start"));
        };
        if *id != p.meta.last_log_id || buf.len() as u64 != p.offset || p.offset + p.data.len() as u64 > p.total {
            incoming.remove(&group);
            return Err(Status::failed_precondition("snapshot piece out of order"));
        }
        buf.extend_from_slice(&p.data);
        metrics::counter!("tessera_raft_snapshot_bytes_received_total").increment(p.data.len() as u64);
        if (buf.len() as u64) < p.total {
            return Ok(None);
        }
        let (_, bytes) = incoming.remove(&group).expect("present");
        Ok(Some((p.vote, Snapshot { meta: p.meta, snapshot: SnapshotData::Bytes(bytes) })))
    }
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

impl TransportService {
    /// `hold_votes`: how long after start this node answers no vote
    /// request. A follower refuses votes for a lease after each message of
    /// its leader, a promise lease reads rely on, but openraft keeps it in
    /// memory only: a replica that restarted could vote at once for a
    /// candidate the old leader cannot see while that leader still serves
    /// lease reads. Holding every vote for the lease after a start keeps the
    /// promise across restarts.
    pub fn new(groups: Arc<dyn Groups>, hold_votes: Duration) -> Self {
        Self { groups, incoming: Default::default(), votes_from: tokio::time::Instant::now() + hold_votes }
    }

    /// Serves one incoming raft link until it closes (`skip`: its magic's
    /// length when still unread).
    pub async fn serve_link(self, stream: tessera_proto::link::Conn, skip: usize) {
        super::wire::serve(stream, skip, move |m| {
            let this = self.clone();
            async move { this.answer(m).await }
        })
        .await
    }

    /// [`TransportService::handle`], with a failure as an error reply.
    async fn answer(&self, m: RaftMessage) -> RaftMessage {
        let (id, group, kind) = (m.id, m.group, m.kind);
        self.handle(m).await.unwrap_or_else(|status| RaftMessage {
            group,
            kind,
            payload: Default::default(),
            id,
            error: status.message().to_owned(),
        })
    }

    /// One message to its group, and the group's answer.
    async fn handle(&self, m: RaftMessage) -> Result<RaftMessage, Status> {
        let Some(group) = self.groups.group(m.group) else {
            return Err(Status::not_found(format!("this node hosts no replica of group {}", m.group)));
        };
        let raft = group.raft();
        let kind = RaftKind::try_from(m.kind).map_err(|_| Status::invalid_argument("unknown raft message kind"))?;
        let payload = match kind {
            RaftKind::Append => encode(&raft.append_entries(decode(&m.payload).map_err(bad)?).await),
            RaftKind::Vote => {
                let request = decode(&m.payload).map_err(bad)?;
                tokio::time::sleep_until(self.votes_from).await;
                encode(&raft.vote(request).await)
            }
            RaftKind::SnapshotChunk => {
                let piece: SnapshotPiece = decode(&m.payload).map_err(bad)?;
                match self.receive_piece(m.group, piece)? {
                    None => Vec::new(),
                    Some((vote, snapshot)) => encode(&raft.install_full_snapshot(vote, snapshot).await),
                }
            }
            RaftKind::Snapshot => {
                let (vote, meta, bytes): (VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>) = decode(&m.payload).map_err(bad)?;
                let snapshot = Snapshot { meta, snapshot: SnapshotData::Bytes(bytes) };
                encode(&raft.install_full_snapshot(vote, snapshot).await)
            }
            RaftKind::TransferLeader => {
                let req: openraft::raft::TransferLeaderRequest<C> = decode(&m.payload).map_err(bad)?;
                if *req.to_node_id() == self.groups.node_id() && self.groups.stopping() {
                    // A node on its way out takes no leadership (a leader
                    // handing a group back to its preferred replica does not
                    // know). The transfer lapses: until the other replicas
                    // elect a leader (an election timeout), the old leader
                    // redirects to this node, which redirects back, and the
                    // router retries; no command fails, some wait.
                    tracing::info!(group = m.group, "declining leadership: this node is stopping");
                    let declined: Result<openraft::raft::TransferLeaderResponse<C>, openraft::errors::Fatal<C>> =
                        Ok(Ok(()));
                    encode(&declined)
                } else {
                    encode(&raft.handle_transfer_leader(req).await)
                }
            }
            RaftKind::ReadIndex => encode(&group.read_index().await),
            RaftKind::Unspecified => return Err(Status::invalid_argument("raft message kind missing")),
        };
        Ok(RaftMessage { group: m.group, kind: m.kind, payload: payload.into(), id: m.id, error: String::new() })
    }
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn call(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.handle(req.into_inner()).await.map(Response::new)
    }
}
