//! The cluster map, replicated by the *meta group*: a Raft group like a
//! shard's (same log, state machine and network), hosted by the first voters
//! of the cluster, whose state machine holds a [`ClusterMap`] instead of keys.
//!
//! The map says which nodes exist and which nodes hold each group's replicas
//! (voters and learners). It is changed only by [`MetaOp`]s, each bumping the
//! epoch. Nodes watch it (a linearizable read on the meta leader) and open or
//! close replicas to match; shard leaders are never stored in it (they are
//! soft state, learned from Raft).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::reply::Reply;
use tessera_common::slot::SlotRange;

use crate::config::Config;
use crate::error::Error;

/// The meta group's id (shard ids count up from 0).
pub const META: u32 = u32::MAX;
/// How many nodes host the meta group (the first ones by id).
pub const META_VOTERS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Listed, has not yet opened a replica.
    New,
    /// Has served: a copy of its state exists. Coming back with an empty
    /// disk it must rejoin through membership changes, never as it was.
    Joined,
    /// Removed from the cluster; its id is never used again.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub addr: String,
    pub status: NodeStatus,
}

/// Where one Raft group's replicas live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    /// Slots the group owns (none for the meta group).
    pub ranges: Vec<SlotRange>,
    pub voters: Vec<u64>,
    /// Replicas being built (they receive the log, do not vote).
    pub learners: Vec<u64>,
    /// 0 for the layout the cluster was formed with; bumped on each change.
    /// Only generation-0 groups are ever bootstrapped.
    pub generation: u64,
}

impl GroupPlan {
    pub fn hosts(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// 0 until the map is formed; bumped by every change.
    pub epoch: u64,
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Shards by id, and the meta group under [`META`].
    pub groups: BTreeMap<u32, GroupPlan>,
}

/// A change to the map (a meta-group log entry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MetaOp {
    /// Forms the map; ignored once it exists.
    Init(ClusterMap),
    AddNode {
        id: u64,
        addr: String,
    },
    Joined {
        id: u64,
    },
    RemoveNode {
        id: u64,
    },
    SetGroup {
        group: u32,
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// A change to the users (kept beside the map, see [`super::users`]).
    Users(super::users::UsersOp),
}

impl ClusterMap {
    /// The map a cluster is formed with: every `--peer` node, the shards
    /// placed evenly (see [`place`]) and the meta group on the first nodes.
    pub fn initial(config: &Config) -> ClusterMap {
        let nodes = config.peers.iter().map(|(id, a)| (*id, NodeInfo { addr: a.clone(), status: NodeStatus::New }));
        let mut groups: BTreeMap<u32, GroupPlan> = config
            .shards
            .iter()
            .map(|s| {
                (
                    s.id,
                    GroupPlan { ranges: s.ranges.clone(), voters: s.replicas.clone(), learners: vec![], generation: 0 },
                )
            })
            .collect();
        groups.insert(META, GroupPlan { ranges: vec![], voters: meta_seeds(config), learners: vec![], generation: 0 });
        ClusterMap { epoch: 1, nodes: nodes.collect(), groups }
    }

    pub fn addr(&self, node: u64) -> Option<&str> {
        self.nodes.get(&node).map(|n| n.addr.as_str())
    }

    /// Applies `op`; the reply is the new epoch or an error (the map is then
    /// unchanged). Deterministic.
    pub fn apply(&mut self, op: &MetaOp) -> Reply {
        if self.epoch == 0 {
            return match op {
                MetaOp::Init(m) => {
                    *self = m.clone();
                    Reply::Int(self.epoch as i64)
                }
                _ => Error::MapNotFormed.to_reply(),
            };
        }
        match op {
            MetaOp::Init(_) => return Reply::Int(self.epoch as i64),
            MetaOp::Users(_) => return Error::Internal("a users change applied to the cluster map").to_reply(),
            MetaOp::AddNode { id, addr } => match self.nodes.get(id) {
                Some(n) if n.addr == *addr && n.status != NodeStatus::Removed => return Reply::Int(self.epoch as i64),
                Some(_) => return Error::NodeIdInUse(*id).to_reply(),
                None => {
                    self.nodes.insert(*id, NodeInfo { addr: addr.clone(), status: NodeStatus::New });
                }
            },
            MetaOp::Joined { id } => match self.nodes.get_mut(id) {
                Some(n) if n.status == NodeStatus::New => n.status = NodeStatus::Joined,
                Some(_) => return Reply::Int(self.epoch as i64),
                None => return Error::NoNode(*id).to_reply(),
            },
            MetaOp::RemoveNode { id } => {
                if let Some(g) = self.groups.iter().find(|(_, g)| g.hosts(*id)) {
                    return Error::NodeHoldsReplica { node: *id, group: *g.0 }.to_reply();
                }
                match self.nodes.get_mut(id) {
                    Some(n) => n.status = NodeStatus::Removed,
                    None => return Error::NoNode(*id).to_reply(),
                }
            }
            MetaOp::SetGroup { group, voters, learners } => {
                if let Some(n) = voters.iter().chain(learners).find(|n| !self.is_live(**n)) {
                    return Error::NotAMember(*n).to_reply();
                }
                let Some(g) = self.groups.get_mut(group) else {
                    return Error::NoGroup(*group).to_reply();
                };
                if voters.is_empty() {
                    return Error::NoVoters.to_reply();
                }
                g.voters = voters.clone();
                g.learners = learners.clone();
                g.generation += 1;
            }
        }
        self.epoch += 1;
        Reply::Int(self.epoch as i64)
    }

    /// Listed and not removed.
    pub fn is_live(&self, node: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.status != NodeStatus::Removed)
    }
}

/// The nodes that host the meta group when the cluster forms.
pub fn meta_seeds(config: &Config) -> Vec<u64> {
    config.peers.keys().copied().take(META_VOTERS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> ClusterMap {
        let mut nodes = BTreeMap::new();
        for id in 1..=3 {
            nodes.insert(id, NodeInfo { addr: format!("n{id}"), status: NodeStatus::New });
        }
        let mut groups = BTreeMap::new();
        groups.insert(0, GroupPlan { ranges: vec![], voters: vec![1, 2, 3], learners: vec![], generation: 0 });
        ClusterMap { epoch: 1, nodes, groups }
    }

    #[test]
    fn ops_bump_the_epoch_and_refuse_bad_changes() {
        let mut m = ClusterMap::default();
        assert!(matches!(m.apply(&MetaOp::Joined { id: 1 }), Reply::Error(_)));
        assert_eq!(m.apply(&MetaOp::Init(map())), Reply::Int(1));
        assert_eq!(m.apply(&MetaOp::Init(ClusterMap::default())), Reply::Int(1), "init is once");
        assert_eq!(m.apply(&MetaOp::AddNode { id: 4, addr: "n4".into() }), Reply::Int(2));
        assert_eq!(m.apply(&MetaOp::AddNode { id: 4, addr: "n4".into() }), Reply::Int(2), "idempotent");
        assert!(matches!(m.apply(&MetaOp::AddNode { id: 4, addr: "other".into() }), Reply::Error(_)));
        assert!(matches!(m.apply(&MetaOp::RemoveNode { id: 1 }), Reply::Error(_)), "still a voter");
        let set = MetaOp::SetGroup { group: 0, voters: vec![2, 3, 4], learners: vec![] };
        assert_eq!(m.apply(&set), Reply::Int(3));
        assert_eq!(m.groups[&0].generation, 1);
        assert_eq!(m.apply(&MetaOp::RemoveNode { id: 1 }), Reply::Int(4));
        assert!(matches!(m.apply(&MetaOp::AddNode { id: 1, addr: "n1".into() }), Reply::Error(_)), "never reused");
        let bad = MetaOp::SetGroup { group: 0, voters: vec![1, 2, 3], learners: vec![] };
        assert!(matches!(m.apply(&bad), Reply::Error(_)), "removed node");
        assert_eq!(m.epoch, 4);
    }
}
