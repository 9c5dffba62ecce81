//! The gRPC contract between `tessera-router` and `tessera-node`.
//!
//! `v1` is generated from `proto/tessera/node/v1/node.proto` at build time: the
//! `Node` service with its multiplexed `Session` stream and the `Shards`
//! discovery call. [`parts`] is how long commands and replies travel on
//! the stream.

#![forbid(unsafe_code)]

pub mod parts;

/// Package `tessera.node.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("tessera.node.v1");
}
