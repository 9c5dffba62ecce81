//! `tessera-node`: a storage node hosting replicas of many shards, each shard
//! a Raft group (openraft) replicated on several nodes.
//!
//! * [`config`] — flags, placement and the validated [`config::Config`];
//! * [`keyspace`] — one shard's keys, values, expiry index and snapshot dump;
//! * [`exec`] — the state machine's logic: applying writes, serving reads;
//! * [`raft`] — everything openraft: durable log, state machine, network;
//! * [`shard`] — a replica: propose writes, linearizable reads, redirects;
//! * [`service`] — the `tessera.node.v1.Node` gRPC service.
//!
//! [`run`] serves until `shutdown` resolves, then hands leadership away.

#![forbid(unsafe_code)]

pub mod config;
pub mod exec;
pub mod keyspace;
pub mod raft;
pub mod service;
pub mod shard;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_proto::v1::node_server::NodeServer;
use tessera_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tracing::{info, warn};

use crate::config::Config;
use crate::raft::network::Peers;
use crate::raft::transport::TransportService;
use crate::raft::{NodeAddr, RaftConfig};
use crate::service::{NodeService, NodeState};
use crate::shard::Shard;

/// Largest gRPC message either side accepts (a 512 MB value plus framing).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Checks (or records, on first start) which node id owns `data_dir`.
fn claim_identity(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let path = config.data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim() == config.node_id.to_string() => Ok(()),
        Ok(s) => anyhow::bail!(
            "{} belongs to node {}, not {}: refusing to start",
            config.data_dir.display(),
            s.trim(),
            config.node_id
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, config.node_id.to_string())?;
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Serves the node on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    claim_identity(&config)?;
    let raft_config = Arc::new(
        RaftConfig {
            cluster_name: "tessera".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout.as_millis() as u64,
            election_timeout_max: 2 * config.election_timeout.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
            // Entries kept behind a snapshot so a briefly lagging replica catches
            // up from the log; further behind, it gets the snapshot.
            max_in_snapshot_log_to_keep: (config.snapshot_logs / 10).min(1000),
            purge_batch_size: (config.snapshot_logs / 10).clamp(1, 256),
            ..Default::default()
        }
        .validate()
        .context("raft config")?,
    );
    let peers = Peers::default();
    let mut shards = Vec::new();
    for spec in config.hosted() {
        let shard = Shard::open(spec, &config, raft_config.clone(), peers.clone())
            .await
            .with_context(|| format!("opening shard {} in {}", spec.id, config.data_dir.display()))?;
        shards.push(shard);
    }
    let groups: HashMap<u32, raft::Raft> = shards.iter().map(|s| (s.id, s.raft.clone())).collect();
    let state = Arc::new(NodeState::new(config.node_id, shards));
    info!(node = config.node_id, addr = %listener.local_addr()?, shards = state.shards.len(), "node serving");

    let members = |ids: &[u64]| -> BTreeMap<u64, NodeAddr> {
        ids.iter().map(|id| (*id, NodeAddr { addr: config.peers[id].clone() })).collect()
    };
    for spec in config.hosted().filter(|s| s.replicas[0] == config.node_id) {
        let shard = state.shards.iter().find(|s| s.id == spec.id).expect("hosted shard is open").clone();
        let m = members(&spec.replicas);
        tokio::spawn(async move {
            if let Err(e) = shard.bootstrap(m).await {
                warn!(shard = shard.id, error = %e, "could not form the group");
            }
        });
    }

    let sweeper = tokio::spawn(expiry_sweeper(state.clone()));
    let stats = tokio::spawn(publish_gauges(state.clone()));
    let node_svc = NodeServer::new(NodeService { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let raft_svc = RaftTransportServer::new(TransportService { groups: Arc::new(groups) })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_connection_window_size(Some(16 << 20))
            .initial_stream_window_size(Some(16 << 20))
            .add_service(node_svc)
            .add_service(raft_svc)
            // A caller-supplied listener does not get the builder's TCP options:
            // set TCP_NODELAY on it here, or small replies wait for delayed ACKs.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                let _ = stop_rx.await;
            }),
    );
    shutdown.await;
    info!("node shutting down: handing leadership to other replicas");
    hand_off_leadership(&state).await;
    let _ = stop_tx.send(());
    // Routers hold long-lived session streams open: give in-flight requests a
    // moment, then close whatever is left.
    if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
        info!("closing remaining sessions");
    }
    sweeper.abort();
    stats.abort();
    for s in &state.shards {
        let _ = s.raft.shutdown().await;
    }
    info!("node stopped");
    Ok(())
}

/// Before a graceful stop: transfer every group this node leads to another
/// replica, waiting (bounded) until it has taken over.
async fn hand_off_leadership(state: &NodeState) {
    for s in &state.shards {
        let st = s.status();
        if !st.is_leader {
            continue;
        }
        let Some(to) = st.members.keys().copied().find(|id| *id != state.node_id) else {
            continue;
        };
        let _ = s.raft.trigger().transfer_leader(to).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while s.status().is_leader && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Removes expired keys through the log, ten times a second, on leaders.
async fn expiry_sweeper(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for shard in &state.shards {
            shard.purge_expired().await;
        }
    }
}

async fn publish_gauges(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for shard in &state.shards {
            let s = shard.status();
            let id = shard.id.to_string();
            metrics::gauge!("tessera_node_keys", "shard" => id.clone()).set(s.keys as f64);
            metrics::gauge!("tessera_node_value_bytes", "shard" => id.clone()).set(s.value_bytes as f64);
            metrics::gauge!("tessera_raft_term", "shard" => id.clone()).set(s.term as f64);
            metrics::gauge!("tessera_raft_leader", "shard" => id.clone()).set(f64::from(u8::from(s.is_leader)));
            metrics::gauge!("tessera_raft_applied_index", "shard" => id).set(s.applied as f64);
        }
    }
}
