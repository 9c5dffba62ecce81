//! The Raft network, server side: `RaftTransport.Call` hands each message to
//! the group it names.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, VoteOf};
use tessera_proto::v1::raft_transport_server::RaftTransport;
use tessera_proto::v1::{RaftKind, RaftMessage};
use tonic::{Request, Response, Status};

use parking_lot::Mutex;

use super::network::SnapshotPiece;
use super::{decode, encode, SnapshotData, C};
use crate::service::NodeState;

pub struct TransportService {
    pub state: Arc<NodeState>,
    /// Snapshots being received, by group: (the snapshot's last log id,
    /// bytes so far).
    pub incoming: Mutex<HashMap<u32, Incoming>>,
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
        Ok(Some((p.vote, Snapshot { meta: p.meta, snapshot: Cursor::new(bytes) })))
    }
}

fn bad(e: std::io::Error) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn call(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let Some(shard) = self.state.group(m.group) else {
            return Err(Status::not_found(format!("this node hosts no replica of group {}", m.group)));
        };
        let raft = &shard.raft;
        let kind = RaftKind::try_from(m.kind).map_err(|_| Status::invalid_argument("unknown raft message kind"))?;
        let payload = match kind {
            RaftKind::Append => encode(&raft.append_entries(decode(&m.payload).map_err(bad)?).await),
            RaftKind::Vote => encode(&raft.vote(decode(&m.payload).map_err(bad)?).await),
            RaftKind::SnapshotChunk => {
                let piece: SnapshotPiece = decode(&m.payload).map_err(bad)?;
                match self.receive_piece(m.group, piece)? {
                    None => Vec::new(),
                    Some((vote, snapshot)) => encode(&raft.install_full_snapshot(vote, snapshot).await),
                }
            }
            RaftKind::Snapshot => {
                let (vote, meta, bytes): (VoteOf<C>, SnapshotMetaOf<C>, Vec<u8>) = decode(&m.payload).map_err(bad)?;
                let snapshot = Snapshot { meta, snapshot: Cursor::new(bytes) };
                encode(&raft.install_full_snapshot(vote, snapshot).await)
            }
            RaftKind::TransferLeader => encode(&raft.handle_transfer_leader(decode(&m.payload).map_err(bad)?).await),
            RaftKind::Unspecified => return Err(Status::invalid_argument("raft message kind missing")),
        };
        Ok(Response::new(RaftMessage { group: m.group, kind: m.kind, payload: payload.into() }))
    }
}
