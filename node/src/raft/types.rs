//! The type configuration every group's Raft uses: log entries are
//! [`Proposal`]s, answers are [`Reply`]s, members are [`NodeAddr`]s.

use std::fmt;

use serde::{Deserialize, Serialize};
use tessera_common::reply::Reply;

use crate::state::Proposal;

/// A node as Raft members know it: its gRPC address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    pub addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = u64,
        Node = NodeAddr,
);

pub type C = TypeConfig;
