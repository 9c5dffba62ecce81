//! `tessera-node`: a storage node hosting the keyspaces of its shards.
//!
//! * [`config`] — flags and the validated [`config::Config`];
//! * [`keyspace`] — one shard's keys, values and expiry index;
//! * [`exec`] — the state machine: applying writes, serving reads;
//! * [`log`] — the command log every write passes through;
//! * [`shard`] — a shard: slots, keyspace, log, one lock;
//! * [`service`] — the `tessera.node.v1.Node` gRPC service.
//!
//! [`run`] serves until `shutdown` resolves.

#![forbid(unsafe_code)]

pub mod config;
pub mod exec;
pub mod keyspace;
pub mod log;
pub mod service;
pub mod shard;

use std::sync::Arc;
use std::time::Duration;

use tessera_proto::v1::node_server::NodeServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::info;

use crate::config::Config;
use crate::service::{NodeService, NodeState};
use crate::shard::Shard;

/// Largest gRPC message either side accepts (a 512 MB value plus framing).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Serves the node on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let shards: Vec<Arc<Shard>> = config
        .shards
        .iter()
        .map(|s| Shard::new(s.id, s.ranges.clone()))
        .collect();
    let state = Arc::new(NodeState::new(config.node_id.clone(), shards));
    info!(node = %config.node_id, addr = %listener.local_addr()?, shards = state.shards.len(), "node serving");

    let sweeper = tokio::spawn(expiry_sweeper(state.clone()));
    let stats = tokio::spawn(publish_gauges(state.clone()));
    let svc = NodeServer::new(NodeService { state })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(16 << 20))
        .initial_stream_window_size(Some(16 << 20))
        .add_service(svc)
        // A caller-supplied listener does not get the builder's TCP options:
        // set TCP_NODELAY on it here, or small replies wait for delayed ACKs.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown)
        .await?;
    sweeper.abort();
    stats.abort();
    info!("node stopped");
    Ok(())
}

/// Removes expired keys through the log, ten times a second.
async fn expiry_sweeper(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for shard in &state.shards {
            let n = shard.purge_expired();
            if n > 0 {
                metrics::counter!("tessera_node_expired_keys_total").increment(n as u64);
            }
        }
    }
}

async fn publish_gauges(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for shard in &state.shards {
            let s = shard.stats();
            let id = shard.id.to_string();
            metrics::gauge!("tessera_node_keys", "shard" => id.clone()).set(s.keys as f64);
            metrics::gauge!("tessera_node_value_bytes", "shard" => id.clone()).set(s.value_bytes as f64);
            metrics::gauge!("tessera_node_log_index", "shard" => id).set(s.log_index as f64);
        }
    }
}
