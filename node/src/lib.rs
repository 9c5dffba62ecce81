//! `tessera-node`: a storage node hosting replicas of many shards, each shard
//! a Raft group (openraft) replicated on several nodes.
//!
//! Its layers, each using only those listed before it:
//!
//! * [`config`], [`util`] — flags and the validated [`config::Config`];
//!   the clock, encoding, heavy work off the runtime;
//! * [`engine`] — the model registry, stored models and scripts, and the
//!   device queues that run them;
//! * [`data`] — one shard's keys, values, expiry index and snapshot dump;
//! * [`state`] — what the log says ([`state::LogOp`]) and how it applies,
//!   chunked writes, the cluster map;
//! * [`raft`] — everything openraft: durable log, state machine adapter,
//!   network (no other module names an openraft type);
//! * [`disk`], [`shard`] — a replica: propose writes, linearizable reads,
//!   model and script runs, redirects;
//! * [`hosted`] — the groups this node hosts and which one a request is for;
//! * [`serve`] — the listener, router sessions, the `Node` gRPC service;
//! * [`cluster`] — start-up, admin operations, rebalancing plans, reconcile and
//!   repair loops.
//!
//! Beside them, [`certs`] makes throwaway TLS certificates (`tessera-admin
//! certs`, tests) and uses none of them.
//!
//! [`run`] serves until `shutdown` resolves, then hands leadership away.

#![forbid(unsafe_code)]

pub mod certs;
pub mod cluster;
pub mod config;
pub mod data;
pub mod disk;
pub mod engine;
pub mod error;
pub mod hosted;
pub mod raft;
pub mod serve;
pub mod shard;
pub mod state;
pub mod util;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::v1::admin_server::AdminServer;
use tessera_proto::v1::node_server::NodeServer;
use tessera_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::admin::{AdminClients, AdminService};
use crate::cluster::identity::has_identity;
use crate::cluster::lifecycle::{bootstrap_meta, hand_off_leadership, open_local_groups, start_fresh};
use crate::cluster::{reconcile, repair};
use crate::config::{Config, ReadMode};
use crate::hosted::NodeState;
use crate::raft::network::Peers;
use crate::raft::transport::TransportService;
use crate::serve::{accept, NodeService};
use crate::state::meta::meta_seeds;
use crate::util::MAX_MESSAGE_BYTES;

/// Serves the node on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    ready: tessera_telemetry::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let known = has_identity(&config)?;
    let raft_config = crate::raft::raft_config(&config)?;
    let state = Arc::new(NodeState::new(config.clone(), raft_config, Peers::default()));
    let probe = state.clone();
    ready.set(Arc::new(move || probe.readiness()));
    let clients = AdminClients::default();
    if known {
        state.has_state.store(true, Ordering::Relaxed);
        open_local_groups(&state).await?;
    }
    info!(node = config.node_id, addr = %listener.local_addr()?, groups = state.hosted().all().count(), "node serving");

    let node_svc = NodeServer::new(NodeService { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Lease reads (node/src/raft/group.rs) need a restarted replica to
    // keep the lease it granted: no vote for the lease (the maximum
    // election timeout) after start.
    let leases = config.read_mode == ReadMode::Lease || config.dag_read_mode == ReadMode::Lease;
    let hold_votes = if leases { 2 * config.election_timeout } else { Duration::ZERO };
    let transport = TransportService::new(state.clone(), hold_votes);
    let raft_svc = RaftTransportServer::new(transport.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin_svc = AdminServer::new(AdminService { state: state.clone(), clients: clients.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (grpc_tx, grpc_rx) = mpsc::channel(64);
    let acceptor = tokio::spawn(accept(listener, grpc_tx, transport, state.clone()));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .initial_connection_window_size(Some(16 << 20))
            .initial_stream_window_size(Some(16 << 20))
            // Raft RPCs that time out (a paused or cut-off peer) reset their
            // streams, often before this server accepted them; past h2's
            // default of 20 such resets the whole connection was dropped
            // (seen in the chaos soak). Peers are cluster members, not the
            // internet: allow many.
            .http2_max_pending_accept_reset_streams(Some(4096))
            .add_service(node_svc)
            .add_service(raft_svc)
            .add_service(admin_svc)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(grpc_rx), async {
                let _ = stop_rx.await;
            }),
    );

    let start = {
        let state = state.clone();
        let clients = clients.clone();
        async move {
            if !known {
                start_fresh(&state, &clients).await?;
            } else if meta_seeds(&state.config).first() == Some(&state.node_id) {
                bootstrap_meta(&state).await;
            }
            tokio::spawn(repair::repair_loop(state.clone(), clients.clone()));
            tokio::spawn(reconcile::reconcile_loop(state, clients));
            anyhow::Ok(())
        }
    };
    let shutdown = async move {
        tokio::pin!(start);
        tokio::pin!(shutdown);
        tokio::select! {
            r = &mut start => {
                r?;
                shutdown.await;
            }
            _ = &mut shutdown => {}
        }
        anyhow::Ok(())
    };
    let sweeper = tokio::spawn(expiry_sweeper(state.clone()));
    let stats = tokio::spawn(publish_gauges(state.clone()));
    let result = shutdown.await;
    sweeper.abort();
    stats.abort();
    state.stopping.store(true, Ordering::Relaxed);
    result?;
    info!("node shutting down: handing leadership to other replicas");
    hand_off_leadership(&state).await;
    // No command may reach a replica whose Raft has stopped: every router
    // drains its session first (each command it sent gets its answer, the
    // rest go to other replicas), and only then do the replicas stop.
    state.drain.send_replace(true);
    if tokio::time::timeout(DRAIN_WAIT, state.drain.closed()).await.is_err() {
        warn!("router sessions not drained in {DRAIN_WAIT:?}; closing them");
    }
    let _ = stop_tx.send(());
    // Admin calls and large Raft messages in flight get a moment to finish.
    if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
        info!("closing remaining gRPC connections");
    }
    acceptor.abort();
    for s in state.hosted().all() {
        s.group.shutdown().await;
    }
    info!("node stopped");
    Ok(())
}

/// How long a stopping node waits for its routers to drain their sessions.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Removes expired keys through the log, ten times a second, on leaders.
async fn expiry_sweeper(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        for shard in &state.hosted().shards {
            shard.purge_expired().await;
        }
    }
}

async fn publish_gauges(state: Arc<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for shard in state.hosted().all() {
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
