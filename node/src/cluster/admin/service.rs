//! The `tessera.node.v1.Admin` service: operations run on the meta leader
//! one at a time, per-group steps on the group's leader, and the hints a
//! node that does not lead sends callers on to.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tessera_proto::v1::admin_server::Admin;
use tessera_proto::v1::AdminMessage;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::client::AdminClients;
use super::ops::Op;
use super::protocol::{AdminRequest, AdminResponse};
use super::step::{group_step, not_leader};
use crate::hosted::NodeState;
use crate::state::meta::{MetaOp, META};
use crate::util::{decode, encode};

pub struct AdminService {
    pub state: Arc<NodeState>,
    pub clients: AdminClients,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn call(&self, req: Request<AdminMessage>) -> Result<Response<AdminMessage>, Status> {
        let req: AdminRequest =
            decode(&req.into_inner().payload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        debug!(?req, "admin request");
        let resp = handle(&self.state, &self.clients, req).await;
        Ok(Response::new(AdminMessage { payload: encode(&resp).into() }))
    }
}

async fn handle(state: &Arc<NodeState>, clients: &AdminClients, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::Probe => {
            AdminResponse::Probe { has_state: state.has_state.load(Ordering::Relaxed) || state.map().epoch > 0 }
        }
        AdminRequest::Group { group, op } => group_step(state, group, op).await,
        req => {
            // Everything else runs on the meta leader, one operation at a time.
            let Some(meta) = state.group(META).filter(|m| m.is_leader()) else {
                return not_leader(state, META);
            };
            if let AdminRequest::Map = req {
                return match meta.map(true).await {
                    Ok(m) => AdminResponse::Map(m),
                    Err(_) => not_leader(state, META),
                };
            }
            let _one = state.admin_lock.lock().await;
            let op = Op { state: state.clone(), clients: clients.clone() };
            let result = match req {
                AdminRequest::AddNode { id, addr } => op.meta(MetaOp::AddNode { id, addr }).await,
                AdminRequest::Joined { id } => op.meta(MetaOp::Joined { id }).await,
                AdminRequest::RemoveNode { id } => op.remove_node(id).await,
                AdminRequest::MoveReplica { group, from, to } => op.move_replica(group, from, to).await,
                AdminRequest::TransferLeader { group, to } => op.transfer_leader(group, to).await,
                AdminRequest::Rejoin { id } => op.rejoin(id).await,
                AdminRequest::Map | AdminRequest::Probe | AdminRequest::Group { .. } => unreachable!("handled above"),
            };
            match result {
                Ok(msg) => AdminResponse::Done(msg),
                // (Its words, code first: tessera-admin runs a TRYAGAIN again.)
                Err(e) => AdminResponse::Error(e.to_string()),
            }
        }
    }
}
