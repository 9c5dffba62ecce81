//! The Raft network, server side: `RaftTransport.Call` hands each message to
//! the group it names.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::Snapshot;
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use tessera_proto::v1::raft_transport_server::RaftTransport;
use tessera_proto::v1::{RaftKind, RaftMessage};
use tonic::{Request, Response, Status};

use super::{decode, encode, C};
use crate::service::NodeState;

pub struct TransportService {
    pub state: Arc<NodeState>,
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
