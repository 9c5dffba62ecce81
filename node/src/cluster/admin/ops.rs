//! The membership operations (see [`super`]), each a sequence of steps
//! that are safe to repeat.

use std::sync::Arc;

use tessera_common::reply::Reply;
use tracing::info;

use super::client::AdminClients;
use super::protocol::{AdminRequest, AdminResponse, GroupOp, STEP_BUDGET};
use super::step::group_step;
use crate::error::Error as NodeError;
use crate::hosted::NodeState;
use crate::shard::Outcome;
use crate::state::meta::{ClusterMap, GroupPlan, MetaOp, NodeStatus, META};
use crate::state::LogOp;

/// One membership operation, run on the meta leader.
pub(crate) struct Op {
    pub(crate) state: Arc<NodeState>,
    pub(crate) clients: AdminClients,
}

impl Op {
    pub(crate) fn map(&self) -> Result<ClusterMap, NodeError> {
        let meta = self.state.group(META).ok_or(NodeError::NoMetaGroup)?;
        Ok(meta.data_map())
    }

    pub(super) async fn meta(&self, op: MetaOp) -> Result<String, NodeError> {
        let meta = self.state.group(META).ok_or(NodeError::NoMetaGroup)?;
        match meta.write_op(LogOp::Meta(op)).await {
            Outcome::Reply(Reply::Int(epoch)) => Ok(format!("epoch {epoch}")),
            Outcome::Reply(Reply::Error(e)) => Err(NodeError::Remote(e.to_string())),
            Outcome::Error(e) => Err(e),
            Outcome::Reply(r) => Err(NodeError::Unexpected(format!("{r:?}"))),
            Outcome::Redirect(_) => Err(NodeError::MetaMoved),
        }
    }

    /// The map's current entry for `group`.
    pub(crate) fn plan(&self, group: u32) -> Result<GroupPlan, NodeError> {
        self.map()?.groups.get(&group).cloned().ok_or(NodeError::NoGroup(group))
    }

    /// Runs `op` on the leader of `group`, wherever it is (only while this
    /// node still leads the meta group: a deposed meta leader stops between
    /// steps).
    pub(crate) async fn step(&self, group: u32, op: GroupOp) -> Result<AdminResponse, NodeError> {
        if !self.state.group(META).is_some_and(|m| m.is_leader()) {
            return Err(NodeError::NotMetaLeader);
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
            AdminResponse::Error(e) => Err(NodeError::Remote(e)),
            AdminResponse::NotLeader(_) => Err(NodeError::NoLeader(group)),
            r => Ok(r),
        }
    }

    async fn membership(&self, group: u32) -> Result<(Vec<u64>, Vec<u64>), NodeError> {
        match self.step(group, GroupOp::Membership).await? {
            AdminResponse::Membership { voters, learners, .. } => Ok((voters, learners)),
            r => Err(NodeError::Unexpected(format!("{r:?}"))),
        }
    }

    fn addr(&self, map: &ClusterMap, id: u64) -> Result<String, NodeError> {
        match map.nodes.get(&id) {
            Some(n) if n.status != NodeStatus::Removed => Ok(n.addr.clone()),
            _ => Err(NodeError::NotAMember(id)),
        }
    }

    pub(crate) async fn set_group(
        &self,
        group: u32,
        voters: Vec<u64>,
        learners: Vec<u64>,
    ) -> Result<String, NodeError> {
        self.meta(MetaOp::SetGroup { group, voters, learners }).await
    }

    /// Adds `to` to `group` as a learner (map first, so `to` opens its
    /// replica), then waits for it to catch up.
    pub(crate) async fn add_learner(&self, group: u32, to: u64) -> Result<(), NodeError> {
        let map = self.map()?;
        let plan = map.groups.get(&group).ok_or(NodeError::NoGroup(group))?.clone();
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

    pub(super) async fn move_replica(&self, group: u32, from: u64, to: u64) -> Result<String, NodeError> {
        let map = self.map()?;
        let plan = map.groups.get(&group).ok_or(NodeError::NoGroup(group))?.clone();
        self.addr(&map, to)?;
        if from == to {
            return Err(NodeError::SameNode);
        }
        if !plan.voters.contains(&from) && plan.voters.contains(&to) {
            return Ok(format!("group {group} already moved"));
        }
        if !plan.voters.contains(&from) {
            return Err(NodeError::NoReplica { node: from, group });
        }
        if plan.voters.contains(&to) {
            return Err(NodeError::AlreadyHolds { node: to, group });
        }
        if group == META && from == self.state.node_id {
            // The meta leader cannot finish an operation that removes it:
            // hand the leadership over first; the caller runs it again there.
            let to_leader = plan.voters.iter().copied().find(|v| *v != from).ok_or(NodeError::OneMetaVoter)?;
            self.step(META, GroupOp::TransferLeader { to: to_leader }).await?;
            return Err(NodeError::MetaHandedTo(to_leader));
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
    pub(super) async fn transfer_leader(&self, group: u32, to: u64) -> Result<String, NodeError> {
        let plan = self.plan(group)?;
        if !plan.voters.contains(&to) {
            return Err(NodeError::NotAVoter { node: to, group });
        }
        self.step(group, GroupOp::TransferLeader { to }).await?;
        if plan.voters.first() != Some(&to) {
            let mut voters = vec![to];
            voters.extend(plan.voters.iter().copied().filter(|v| *v != to));
            self.set_group(group, voters, plan.learners.clone()).await?;
        }
        Ok(format!("group {group} led by {to}"))
    }

    pub(super) async fn remove_node(&self, id: u64) -> Result<String, NodeError> {
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
                .ok_or(NodeError::NoTarget { node: id, group: *group })?;
            self.move_replica(*group, id, target).await?;
        }
        self.meta(MetaOp::RemoveNode { id }).await?;
        Ok(format!("node {id} removed; its replicas of groups {groups:?} moved"))
    }

    pub(super) async fn rejoin(&self, id: u64) -> Result<String, NodeError> {
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
                    return Err(NodeError::OnlyVoter { node: id, group: *group });
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
