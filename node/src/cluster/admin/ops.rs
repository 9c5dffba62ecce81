//! Cluster administration: the `tessera.node.v1.Admin` service and the
//! membership operations it runs on the meta leader (each node's side of the
//! map — opening and closing replicas — is in [`crate::cluster::reconcile`]).
//!
//! Every operation is a sequence of steps that are each safe to repeat, so
//! an operation cut short (a leader change, a crash) is finished by running
//! it again:
//!
//! * **move replica** of group G from F to T: map lists T as learner (T opens
//!   an empty replica) → G's leader adds T as learner and waits until it has
//!   caught up → G's leader swaps F for T in the voter set (joint consensus)
//!   → map lists T as voter and drops F (F deletes its replica).
//! * **remove node** N: move each of N's replicas to the live node holding
//!   the fewest, then mark N removed (its id is never used again).
//! * **rejoin** N after it lost its disk: per group, first remove N from the
//!   voters (so the empty replica can never vote as its old self), then add
//!   it back as learner, let it catch up, and promote it.
//! * **transfer leader** of G to T.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_common::reply::Reply;
use tessera_proto::v1::admin_client::AdminClient;
use tessera_proto::v1::admin_server::Admin;
use tessera_proto::v1::AdminMessage;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use tracing::{debug, info};

use crate::hosted::NodeState;
use crate::shard::Outcome;
use crate::state::meta::{meta_seeds, ClusterMap, GroupPlan, MetaOp, NodeStatus, META};
use crate::state::LogOp;
use crate::util::{decode, encode};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The cluster map, read linearizably on the meta leader.
    Map,
    /// Whether this node has any state (wiped-disk detection at start).
    Probe,
    AddNode {
        id: u64,
        addr: String,
    },
    RemoveNode {
        id: u64,
    },
    MoveReplica {
        group: u32,
        from: u64,
        to: u64,
    },
    TransferLeader {
        group: u32,
        to: u64,
    },
    /// Rebuild node `id`'s replicas after it lost its disk.
    Rejoin {
        id: u64,
    },
    Joined {
        id: u64,
    },
    /// One step, run by the leader of `group`.
    Group {
        group: u32,
        op: GroupOp,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum GroupOp {
    AddLearner { id: u64, addr: String },
    SetVoters { voters: Vec<u64> },
    RemoveLearner { id: u64 },
    TransferLeader { to: u64 },
    Membership,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminResponse {
    Map(ClusterMap),
    Probe {
        has_state: bool,
    },
    Done(String),
    Membership {
        voters: Vec<u64>,
        learners: Vec<u64>,
        /// Set while a joint configuration is in force: the voters it is
        /// moving to.
        pending: Option<Vec<u64>>,
        /// A newer configuration than `voters`/`learners` is not yet committed.
        in_flight: bool,
    },
    /// Not the leader for this: ask these instead (the leader first when known).
    NotLeader(Vec<String>),
    Error(String),
}

/// How long an admin call or one step may wait for leaders and catch-up.
pub const STEP_BUDGET: Duration = Duration::from_secs(60);

/// A cache of admin channels by address.
#[derive(Clone, Default)]
pub struct AdminClients {
    channels: Arc<parking_lot::Mutex<BTreeMap<String, Channel>>>,
}

impl AdminClients {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock();
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// One call to the node at `addr`.
    pub async fn ask(&self, addr: &str, req: &AdminRequest, timeout: Duration) -> Result<AdminResponse, String> {
        let mut client = AdminClient::new(self.channel(addr)?)
            .max_decoding_message_size(crate::util::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(crate::util::MAX_MESSAGE_BYTES);
        let msg = AdminMessage { payload: encode(req).into() };
        match tokio::time::timeout(timeout, client.call(msg)).await {
            Err(_) => Err(format!("{addr} did not answer in {timeout:?}")),
            Ok(Err(status)) => Err(format!("{addr}: {}", status.message())),
            Ok(Ok(r)) => decode(&r.into_inner().payload).map_err(|e| e.to_string()),
        }
    }

    /// Sends `req` to whichever of `candidates` leads what it needs, following
    /// `NotLeader` hints, until `budget` runs out.
    pub async fn ask_leader(
        &self,
        candidates: &[String],
        req: &AdminRequest,
        budget: Duration,
    ) -> Result<AdminResponse, String> {
        let deadline = Instant::now() + budget;
        let mut last = String::from("no candidate");
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
                        last = format!("{addr} is not the leader");
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

fn not_leader(state: &NodeState, group: u32) -> AdminResponse {
    let mut hints = Vec::new();
    if let Some((_, addr)) = state.group(group).and_then(|s| s.leader()) {
        hints.push(addr);
    }
    if group == META {
        hints.extend(meta_candidates(state));
    } else if let Some(g) = state.map().groups.get(&group) {
        let map = state.map();
        hints.extend(g.voters.iter().filter_map(|id| map.addr(*id)).map(str::to_owned));
    }
    hints.retain(|h| *h != state.config.advertise);
    AdminResponse::NotLeader(hints)
}

async fn handle(state: &Arc<NodeState>, clients: &AdminClients, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::Probe => AdminResponse::Probe { has_state: state.has_state.load(Ordering::Relaxed) },
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
                Err(e) => AdminResponse::Error(e),
            }
        }
    }
}

/// Runs one step on this node's replica of `group`, if it leads it.
async fn group_step(state: &NodeState, group: u32, op: GroupOp) -> AdminResponse {
    let Some(shard) = state.group(group).filter(|s| s.is_leader()) else {
        return not_leader(state, group);
    };
    let result = match op {
        GroupOp::Membership => {
            // A leader cut off from its group still believes it leads:
            // confirm with a quorum first, and report the committed
            // configuration (what repair may copy into the map).
            if shard.group.confirm_leadership().await.is_err() {
                return not_leader(state, group);
            }
            let (voters, learners, in_flight) = shard.group.committed_membership();
            return AdminResponse::Membership { voters, learners, pending: shard.group.pending_voters(), in_flight };
        }
        GroupOp::AddLearner { id, addr } => shard.group.add_learner(id, addr).await.map(|_| format!("{id} caught up")),
        GroupOp::SetVoters { voters } => {
            shard.group.set_voters(voters.clone()).await.map(|_| format!("voters {voters:?}"))
        }
        GroupOp::RemoveLearner { id } => {
            shard.group.remove_learners(vec![id]).await.map(|_| format!("learner {id} removed"))
        }
        GroupOp::TransferLeader { to } => {
            if !shard.group.membership().0.contains(&to) {
                return AdminResponse::Error(format!("node {to} is not a voter of group {group}"));
            }
            shard.group.transfer_leader(to).await;
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if shard.leader().is_some_and(|(id, _)| id == to) {
                    break Ok(format!("group {group} led by {to}"));
                }
                if Instant::now() > deadline {
                    break Err(format!("node {to} did not take over group {group} in 5s"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    match result {
        Ok(m) => AdminResponse::Done(m),
        Err(e) => AdminResponse::Error(e),
    }
}

/// One membership operation, run on the meta leader.
pub(crate) struct Op {
    pub(crate) state: Arc<NodeState>,
    pub(crate) clients: AdminClients,
}

impl Op {
    pub(crate) fn map(&self) -> Result<ClusterMap, String> {
        let meta = self.state.group(META).ok_or("this node no longer hosts the meta group")?;
        Ok(meta.data_map())
    }

    async fn meta(&self, op: MetaOp) -> Result<String, String> {
        let meta = self.state.group(META).ok_or("this node no longer hosts the meta group")?;
        match meta.write_op(LogOp::Meta(op)).await {
            Outcome::Reply(Reply::Int(epoch)) => Ok(format!("epoch {epoch}")),
            Outcome::Reply(Reply::Error(e)) => Err(e.to_string()),
            Outcome::Reply(r) => Err(format!("unexpected reply {r:?}")),
            Outcome::Redirect(_) => Err("TRYAGAIN meta leadership moved; run the command again".into()),
        }
    }

    /// The map's current entry for `group`.
    pub(crate) fn plan(&self, group: u32) -> Result<GroupPlan, String> {
        self.map()?.groups.get(&group).cloned().ok_or(format!("no group {group}"))
    }

    /// Runs `op` on the leader of `group`, wherever it is (only while this
    /// node still leads the meta group: a deposed meta leader stops between
    /// steps).
    pub(crate) async fn step(&self, group: u32, op: GroupOp) -> Result<AdminResponse, String> {
        if !self.state.group(META).is_some_and(|m| m.is_leader()) {
            return Err("TRYAGAIN this node no longer leads the meta group; run the command again".into());
        }
        // This node when it leads the group (the meta group always: this is
        // its leader), else the group's replicas as the map lists them.
        let r = if group == META || self.state.group(group).is_some_and(|s| s.is_leader()) {
            group_step(&self.state, group, op).await
        } else {
            let map = self.map()?;
            let candidates: Vec<String> = map
                .groups
                .get(&group)
                .map(|g| g.voters.iter().filter_map(|id| map.addr(*id)).map(str::to_owned).collect())
                .unwrap_or_default();
            self.clients.ask_leader(&candidates, &AdminRequest::Group { group, op }, STEP_BUDGET).await?
        };
        match r {
            AdminResponse::Error(e) => Err(e),
            AdminResponse::NotLeader(_) => {
                Err(format!("TRYAGAIN group {group} has no leader right now; run the command again"))
            }
            r => Ok(r),
        }
    }

    async fn membership(&self, group: u32) -> Result<(Vec<u64>, Vec<u64>), String> {
        match self.step(group, GroupOp::Membership).await? {
            AdminResponse::Membership { voters, learners, .. } => Ok((voters, learners)),
            r => Err(format!("unexpected answer {r:?}")),
        }
    }

    fn addr(&self, map: &ClusterMap, id: u64) -> Result<String, String> {
        match map.nodes.get(&id) {
            Some(n) if n.status != NodeStatus::Removed => Ok(n.addr.clone()),
            _ => Err(format!("node {id} is not a member of the cluster")),
        }
    }

    pub(crate) async fn set_group(&self, group: u32, voters: Vec<u64>, learners: Vec<u64>) -> Result<String, String> {
        self.meta(MetaOp::SetGroup { group, voters, learners }).await
    }

    /// Adds `to` to `group` as a learner (map first, so `to` opens its
    /// replica), then waits for it to catch up.
    pub(crate) async fn add_learner(&self, group: u32, to: u64) -> Result<(), String> {
        let map = self.map()?;
        let plan = map.groups.get(&group).ok_or(format!("no group {group}"))?.clone();
        let addr = self.addr(&map, to)?;
        if !plan.hosts(to) {
            let mut learners = plan.learners.clone();
            learners.push(to);
            self.set_group(group, plan.voters.clone(), learners).await?;
        }
        info!(group, node = to, "adding learner; waiting for it to catch up");
        self.step(group, GroupOp::AddLearner { id: to, addr }).await?;
        Ok(())
    }

    async fn move_replica(&self, group: u32, from: u64, to: u64) -> Result<String, String> {
        let map = self.map()?;
        let plan = map.groups.get(&group).ok_or(format!("no group {group}"))?.clone();
        self.addr(&map, to)?;
        if from == to {
            return Err("source and target are the same node".into());
        }
        if !plan.voters.contains(&from) && plan.voters.contains(&to) {
            return Ok(format!("group {group} already moved"));
        }
        if !plan.voters.contains(&from) {
            return Err(format!("node {from} holds no replica of group {group}"));
        }
        if plan.voters.contains(&to) {
            return Err(format!("node {to} already holds a replica of group {group}"));
        }
        if group == META && from == self.state.node_id {
            // The meta leader cannot finish an operation that removes it:
            // hand the leadership over first; the caller runs it again there.
            let to_leader = plan.voters.iter().copied().find(|v| *v != from).ok_or("the meta group has one voter")?;
            self.step(META, GroupOp::TransferLeader { to: to_leader }).await?;
            return Err(format!("TRYAGAIN meta leadership handed to node {to_leader}; run the command again"));
        }
        self.add_learner(group, to).await?;
        let voters: Vec<u64> = plan.voters.iter().map(|v| if *v == from { to } else { *v }).collect();
        self.step(group, GroupOp::SetVoters { voters: voters.clone() }).await?;
        let learners = self.map()?.groups[&group].learners.iter().copied().filter(|l| *l != to).collect();
        self.set_group(group, voters.clone(), learners).await?;
        info!(group, from, to, "replica moved");
        Ok(format!("group {group} replica moved from node {from} to node {to}; voters {voters:?}"))
    }

    /// Makes `to` the group's leader and its preferred leader (first in the
    /// map's voter list, so leadership returns to it after failovers).
    async fn transfer_leader(&self, group: u32, to: u64) -> Result<String, String> {
        let plan = self.plan(group)?;
        if !plan.voters.contains(&to) {
            return Err(format!("node {to} is not a voter of group {group}"));
        }
        self.step(group, GroupOp::TransferLeader { to }).await?;
        if plan.voters.first() != Some(&to) {
            let mut voters = vec![to];
            voters.extend(plan.voters.iter().copied().filter(|v| *v != to));
            self.set_group(group, voters, plan.learners.clone()).await?;
        }
        Ok(format!("group {group} led by {to}"))
    }

    async fn remove_node(&self, id: u64) -> Result<String, String> {
        let map = self.map()?;
        if !map.is_live(id) {
            return Ok(format!("node {id} already removed"));
        }
        let groups: Vec<u32> = map.groups.iter().filter(|(_, g)| g.voters.contains(&id)).map(|(g, _)| *g).collect();
        for group in &groups {
            let map = self.map()?;
            let plan = &map.groups[group];
            // The live node with the fewest replicas that has none of this group.
            let load = |n: u64| map.groups.values().filter(|g| g.hosts(n)).count();
            let target = map
                .nodes
                .iter()
                .filter(|(n, info)| **n != id && info.status != NodeStatus::Removed && !plan.voters.contains(n))
                .map(|(n, _)| *n)
                // A node already catching up (an interrupted run) first.
                .min_by_key(|n| (!plan.learners.contains(n), load(*n), *n))
                .ok_or(format!("no node can take node {id}'s replica of group {group}"))?;
            self.move_replica(*group, id, target).await?;
        }
        self.meta(MetaOp::RemoveNode { id }).await?;
        Ok(format!("node {id} removed; its replicas of groups {groups:?} moved"))
    }

    async fn rejoin(&self, id: u64) -> Result<String, String> {
        let map = self.map()?;
        self.addr(&map, id)?;
        let groups: Vec<u32> = map.groups.iter().filter(|(_, g)| g.hosts(id)).map(|(g, _)| *g).collect();
        for group in &groups {
            let original = map.groups[group].voters.clone();
            // A node the map lists only as a learner (a move cut short) is
            // rebuilt as a learner: promoting it would add a voter the map
            // never planned (the chaos soak saw a 4-voter group this way).
            let was_voter = original.contains(&id);
            let (voters, _) = self.membership(*group).await?;
            // 1. the lost replica stops being a voter, so nothing it says as
            //    its old self can count;
            if voters.contains(&id) {
                let rest: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                if rest.is_empty() {
                    return Err(format!("node {id} is the only voter of group {group}: its data is gone"));
                }
                self.step(*group, GroupOp::SetVoters { voters: rest }).await?;
            }
            // 2. it comes back as a learner and catches up;
            let plan = self.map()?.groups[group].clone();
            let mut learners = plan.learners.clone();
            if !learners.contains(&id) {
                learners.push(id);
            }
            let without: Vec<u64> = plan.voters.iter().copied().filter(|v| *v != id).collect();
            self.set_group(*group, without, learners).await?;
            self.add_learner(*group, id).await?;
            if !was_voter {
                info!(group, node = id, "learner rebuilt");
                continue;
            }
            // 3. and is promoted again.
            let (mut voters, _) = self.membership(*group).await?;
            if !voters.contains(&id) {
                voters.push(id);
            }
            self.step(*group, GroupOp::SetVoters { voters: voters.clone() }).await?;
            let learners = self.map()?.groups[group].learners.iter().copied().filter(|l| *l != id).collect();
            // Keep the map's order (its first voter is the preferred leader).
            let same = original.len() == voters.len() && original.iter().all(|v| voters.contains(v));
            self.set_group(*group, if same { original } else { voters }, learners).await?;
            info!(group, node = id, "replica rebuilt");
        }
        Ok(format!("node {id} rebuilt its replicas of groups {groups:?}"))
    }
}
