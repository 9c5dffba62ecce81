//! What admin calls carry: requests, the per-group steps they are made of,
//! and responses (postcard inside `AdminMessage`; both ends are the same
//! release).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::meta::ClusterMap;

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
