//! Membership repair, run by the meta leader: finishes or rolls back a
//! membership operation that was cut short.
//!
//! Every admin operation ([`crate::cluster::admin`]) is a sequence of idempotent
//! steps, and an operator who reruns it finishes it. Nobody may rerun it,
//! though (a CLI killed, a meta leader that lost its leadership mid-way), and
//! then the map and a group's Raft membership stay apart: a learner the map
//! lists that Raft never added never catches up, a voter Raft dropped stays in
//! the map. The chaos soak found such a group stuck for minutes. This loop
//! compares each group's map entry with its Raft membership and, when the
//! same difference has stood for [`SETTLE`] with no admin operation running,
//! takes one step towards agreement:
//!
//! 1. a joint configuration is completed;
//! 2. the map follows Raft's committed voters, as a leader that has just
//!    confirmed its leadership reports them; a voter Raft dropped stays as a learner when the group is short
//!    of replicas (a wiped-disk rejoin cut short), else it is dropped;
//! 3. a learner the map lists is caught up and promoted when the group is
//!    short of replicas, else dropped (a move cut short is rolled back);
//! 4. a Raft learner the map does not list is removed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::admin::{AdminClients, AdminRequest, AdminResponse, GroupOp, Op};
use crate::error::Error as NodeError;
use crate::hosted::NodeState;
use crate::state::meta::{ClusterMap, GroupPlan, NodeStatus, META, META_VOTERS};

/// How long a difference must stand, with no admin operation seen running,
/// before it is repaired: longer than any pause between the steps of a
/// running operation or between an operator's retries.
const SETTLE: Duration = Duration::from_secs(20);
const TICK: Duration = Duration::from_secs(2);
/// How long asking a group for its membership may take.
const ASK: Duration = Duration::from_secs(3);

/// A group's membership as its Raft leader knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// The voters a joint configuration is moving to.
    pub pending: Option<Vec<u64>>,
    /// A newer configuration is not yet committed (nothing is repaired
    /// until it is, or is dropped).
    pub in_flight: bool,
}

/// One step towards agreement between the map and Raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Repair {
    FinishJoint {
        voters: Vec<u64>,
    },
    /// Rewrite the map's entry to these voters and learners.
    FollowRaft {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Catch this map learner up and make it a voter.
    Promote {
        learner: u64,
    },
    /// Drop this map learner (from Raft too, if it is a Raft learner).
    Drop {
        learner: u64,
        in_raft: bool,
    },
    /// Remove a Raft learner the map does not list.
    RemoveStray {
        learner: u64,
    },
}

/// The first step that brings `plan` (the map) and `raft` closer, if they
/// differ. `target` is the number of voters the group should have.
pub fn plan_repair(plan: &GroupPlan, raft: &RaftView, target: usize) -> Option<Repair> {
    if let Some(voters) = &raft.pending {
        return Some(Repair::FinishJoint { voters: voters.clone() });
    }
    if raft.in_flight {
        return None;
    }
    let in_raft = |n: &u64| raft.voters.contains(n);
    let same_voters = plan.voters.len() == raft.voters.len() && plan.voters.iter().all(in_raft);
    if !same_voters {
        // Keep the map's order (its first voter is the preferred leader).
        let mut voters: Vec<u64> = plan.voters.iter().copied().filter(in_raft).collect();
        voters.extend(raft.voters.iter().copied().filter(|v| !plan.voters.contains(v)));
        let mut learners: Vec<u64> = plan.learners.iter().copied().filter(|l| !in_raft(l)).collect();
        if voters.len() < target {
            let dropped: Vec<u64> =
                plan.voters.iter().copied().filter(|v| !in_raft(v) && !learners.contains(v)).collect();
            learners.extend(dropped);
        }
        return Some(Repair::FollowRaft { voters, learners });
    }
    if let Some(&learner) = plan.learners.first() {
        return Some(if plan.voters.len() < target {
            Repair::Promote { learner }
        } else {
            Repair::Drop { learner, in_raft: raft.learners.contains(&learner) }
        });
    }
    raft.learners.iter().find(|l| !plan.learners.contains(l)).map(|&learner| Repair::RemoveStray { learner })
}

/// How many voters `group` should have.
fn target(state: &NodeState, map: &ClusterMap, group: u32) -> usize {
    let live = map.nodes.values().filter(|n| n.status != NodeStatus::Removed).count();
    // The size the cluster was formed with (the configured replica count,
    // at most the number of nodes).
    let formed = |g: u32| state.config.shards.iter().find(|s| s.id == g).map(|s| s.replicas.len());
    let want = if group == META { META_VOTERS } else { formed(group).or_else(|| formed(0)).unwrap_or(3) };
    want.min(live).max(1)
}

pub async fn repair_loop(state: Arc<NodeState>, clients: AdminClients) {
    let op = Op { state: state.clone(), clients };
    // The repair each group was first seen to need, and when.
    let mut seen: BTreeMap<u32, (Repair, Instant)> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !state.group(META).is_some_and(|m| m.is_leader()) {
            seen.clear();
            continue;
        }
        let Ok(map) = op.map() else { continue };
        if map.epoch == 0 {
            continue;
        }
        if state.admin_lock.try_lock().is_err() {
            // An operation is running: whatever it leaves behind must
            // stand for SETTLE after it, not after it was first seen.
            let now = Instant::now();
            seen.values_mut().for_each(|(_, since)| *since = now);
            continue;
        }
        for group in map.groups.keys().copied() {
            let repair = match needed(&op, &map, group).await {
                Ok(r) => r,
                Err(e) => {
                    debug!(group, error = %e, "membership repair: cannot read the group");
                    continue;
                }
            };
            let Some(repair) = repair else {
                seen.remove(&group);
                continue;
            };
            let since = match seen.get(&group) {
                Some((r, since)) if *r == repair => *since,
                _ => {
                    seen.insert(group, (repair, Instant::now()));
                    continue;
                }
            };
            if since.elapsed() < SETTLE {
                continue;
            }
            // An operation in progress finishes (or fails) first.
            let Ok(_one) = state.admin_lock.try_lock() else { continue };
            // Look again under the lock: act only on what still holds.
            let Ok(map) = op.map() else { continue };
            match needed(&op, &map, group).await {
                Ok(Some(now)) if now == repair => {}
                _ => continue,
            }
            warn!(group, ?repair, "map and Raft membership disagree; repairing");
            metrics::counter!("tessera_node_membership_repairs_total").increment(1);
            match apply(&op, group, &repair).await {
                Ok(()) => info!(group, ?repair, "membership repaired"),
                Err(e) => warn!(group, ?repair, error = %e, "membership repair failed; will try again"),
            }
            seen.remove(&group);
        }
    }
}

async fn needed(op: &Op, map: &ClusterMap, group: u32) -> Result<Option<Repair>, NodeError> {
    let plan = map.groups.get(&group).ok_or(NodeError::NoGroup(group))?;
    let raft = match tokio::time::timeout(ASK, op.step(group, GroupOp::Membership)).await {
        Err(_) => return Err(NodeError::NoLeader(group)),
        Ok(Ok(AdminResponse::Membership { voters, learners, pending, in_flight })) => {
            RaftView { voters, learners, pending, in_flight }
        }
        Ok(Ok(r)) => return Err(NodeError::Unexpected(format!("{r:?}"))),
        Ok(Err(e)) => return Err(e),
    };
    Ok(plan_repair(plan, &raft, target(&op.state, map, group)))
}

async fn apply(op: &Op, group: u32, repair: &Repair) -> Result<(), NodeError> {
    match repair {
        Repair::FinishJoint { voters } => {
            op.step(group, GroupOp::SetVoters { voters: voters.clone() }).await?;
        }
        Repair::FollowRaft { voters, learners } => {
            op.set_group(group, voters.clone(), learners.clone()).await?;
        }
        Repair::Promote { learner } => {
            // Catching up holds the admin lock for up to 45 s: not for a
            // node that is down.
            let addr = op.map()?.addr(*learner).map(str::to_owned).ok_or(NodeError::NotAMember(*learner))?;
            if !matches!(op.clients.ask(&addr, &AdminRequest::Probe, ASK).await, Ok(AdminResponse::Probe { .. })) {
                return Err(NodeError::NotAnswering(*learner));
            }
            op.add_learner(group, *learner).await?;
            let plan = op.plan(group)?;
            let mut voters = plan.voters.clone();
            voters.push(*learner);
            op.step(group, GroupOp::SetVoters { voters: voters.clone() }).await?;
            let learners = plan.learners.iter().copied().filter(|l| l != learner).collect();
            op.set_group(group, voters, learners).await?;
        }
        Repair::Drop { learner, in_raft } => {
            if *in_raft {
                op.step(group, GroupOp::RemoveLearner { id: *learner }).await?;
            }
            let plan = op.plan(group)?;
            let learners = plan.learners.iter().copied().filter(|l| l != learner).collect();
            op.set_group(group, plan.voters, learners).await?;
        }
        Repair::RemoveStray { learner } => {
            op.step(group, GroupOp::RemoveLearner { id: *learner }).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
