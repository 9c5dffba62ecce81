//! One step of an operation on this node's replica of a group (run when
//! it leads the group), and the hints a node that does not lead sends
//! callers on to.

use std::time::Duration;

use tokio::time::Instant;

use super::client::meta_candidates;
use super::protocol::{AdminResponse, GroupOp};
use crate::error::Error as NodeError;
use crate::hosted::NodeState;
use crate::state::meta::META;

pub(super) fn not_leader(state: &NodeState, group: u32) -> AdminResponse {
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

/// Runs one step on this node's replica of `group`, if it leads it.
pub(super) async fn group_step(state: &NodeState, group: u32, op: GroupOp) -> AdminResponse {
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
                return AdminResponse::Error(NodeError::NotAVoter { node: to, group }.to_string());
            }
            shard.group.transfer_leader(to).await;
            let waited = Duration::from_secs(5);
            let deadline = Instant::now() + waited;
            loop {
                if shard.leader().is_some_and(|(id, _)| id == to) {
                    break Ok(format!("group {group} led by {to}"));
                }
                if Instant::now() > deadline {
                    break Err(NodeError::NotTakenOver { node: to, group, waited });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    match result {
        Ok(m) => AdminResponse::Done(m),
        Err(e) => AdminResponse::Error(e.to_string()),
    }
}
