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

mod client;
mod ops;
mod protocol;
mod service;
mod step;

pub use client::{meta_candidates, AdminClients};
pub(crate) use ops::Op;
pub use protocol::{AdminRequest, AdminResponse, GroupOp, STEP_BUDGET};
pub use service::AdminService;
