//! Calling other nodes' `Admin` service: one channel per address, and
//! finding whichever node leads what a request needs.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::v1::admin_client::AdminClient;
use tessera_proto::v1::AdminMessage;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::protocol::{AdminRequest, AdminResponse};
use crate::error::Error as NodeError;
use crate::hosted::NodeState;
use crate::state::meta::{meta_seeds, META};
use crate::util::{decode, encode};

/// A cache of admin channels by address.
#[derive(Clone, Default)]
pub struct AdminClients {
    channels: Arc<parking_lot::Mutex<BTreeMap<String, Channel>>>,
}

impl AdminClients {
    fn channel(&self, addr: &str) -> Result<Channel, NodeError> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = tessera_proto::tls::lazy_channel(
            Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| NodeError::BadAddress { addr: addr.to_owned(), why: e.to_string() })?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(1)),
        );
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// One call to the node at `addr`.
    pub async fn ask(&self, addr: &str, req: &AdminRequest, timeout: Duration) -> Result<AdminResponse, NodeError> {
        let mut client = AdminClient::new(self.channel(addr)?)
            .max_decoding_message_size(crate::util::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::util::MAX_MESSAGE_BYTES);
        let msg = AdminMessage { payload: encode(req).into() };
        match tokio::time::timeout(timeout, client.call(msg)).await {
            Err(_) => Err(NodeError::NoAnswer { addr: addr.to_owned(), waited: timeout }),
            Ok(Err(status)) => Err(NodeError::Refused { addr: addr.to_owned(), why: status.message().to_owned() }),
            Ok(Ok(r)) => decode(&r.into_inner().payload)
                .map_err(|e| NodeError::Refused { addr: addr.to_owned(), why: format!("answer does not decode: {e}") }),
        }
    }

    /// Sends `req` to whichever of `candidates` leads what it needs, following
    /// `NotLeader` hints, until `budget` runs out.
    pub async fn ask_leader(
        &self,
        candidates: &[String],
        req: &AdminRequest,
        budget: Duration,
    ) -> Result<AdminResponse, NodeError> {
        let deadline = Instant::now() + budget;
        let mut last = NodeError::NoCandidate;
        loop {
            let mut queue: VecDeque<String> = candidates.iter().cloned().collect();
            let mut tried = Vec::new();
            while let Some(addr) = queue.pop_front() {
                if tried.contains(&addr) {
                    continue;
                }
                tried.push(addr.clone());
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(last);
                }
                match self.ask(&addr, req, left).await {
                    Ok(AdminResponse::NotLeader(hints)) => {
                        last = NodeError::NotLeaderAt(addr);
                        for h in hints.into_iter().rev() {
                            queue.push_front(h);
                        }
                    }
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Addresses to try for the meta leader: the meta group's voters in the last
/// map seen, then the seed nodes of the configuration.
pub fn meta_candidates(state: &NodeState) -> Vec<String> {
    let map = state.map();
    let mut out: Vec<String> = Vec::new();
    if let Some(g) = map.groups.get(&META) {
        out.extend(g.voters.iter().filter_map(|id| map.addr(*id)).map(str::to_owned));
    }
    for id in meta_seeds(&state.config) {
        let a = state.config.peers[&id].clone();
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}
