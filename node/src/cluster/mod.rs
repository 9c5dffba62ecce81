//! The node in its cluster: its identity on disk ([`identity`]), starting
//! (a new node, a restart, a node that lost its disk) and leaving
//! ([`lifecycle`]), the admin operations ([`admin`]), plans that spread
//! replicas and leaders evenly ([`rebalance`]), and the loops that carry out
//! the cluster map ([`reconcile`]) and keep groups at strength ([`repair`]).

pub mod admin;
pub mod identity;
pub mod lifecycle;
pub mod rebalance;
pub mod reconcile;
pub mod repair;
