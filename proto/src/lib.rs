//! The gRPC contract between `tessera-router` and `tessera-node`.
//!
//! `v1` is generated from `proto/tessera/node/v1/node.proto` at build time: the
//! `Node` service with its multiplexed `Session` stream and the `Shards`
//! discovery call. [`parts`] is how long commands and replies travel on
//! the stream. [`link`] is the plain-TCP framing that carries router
//! sessions and small Raft messages instead of HTTP/2 where both ends
//! speak it. [`tls`] is mutual TLS on all of them, when the cluster has
//! certificates.

#![forbid(unsafe_code)]

pub mod link;
pub mod parts;
pub mod tls;

/// Package `tessera.node.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tessera.node.v1");
}
