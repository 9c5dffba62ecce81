//! `tessera-node`: a storage node hosting replicas of many shards, each shard
//! a Raft group (openraft) replicated on several nodes.
//!
//! * [`config`] — flags, placement and the validated [`config::Config`];
//! * [`keyspace`] — one shard's keys, values, expiry index and snapshot dump;
//! * [`exec`] — the state machine's logic: applying writes, serving reads;
//! * [`raft`] — everything openraft: durable log, state machine, network;
//! * [`shard`] — a replica: propose writes, linearizable reads, redirects;
//! * [`service`] — the `tessera.node.v1.Node` gRPC service;
//! * [`session`] — router sessions: per-shard lanes, replies in parts.
//!
//! [`run`] serves until `shutdown` resolves, then hands leadership away.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod disk;
pub mod engine;
pub mod exec;
pub mod keyspace;
pub mod meta;
pub mod models;
pub mod raft;
pub mod reconcile;
pub mod repair;
pub mod service;
pub mod session;
pub mod shard;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tessera_proto::link;
use tessera_proto::v1::admin_server::AdminServer;
use tessera_proto::v1::node_server::NodeServer;
use tessera_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admin::{AdminClients, AdminService};
use crate::config::Config;
use crate::meta::{meta_seeds, META};
use crate::raft::network::Peers;
use crate::raft::transport::TransportService;
use crate::raft::{NodeAddr, RaftConfig};
use crate::service::{NodeService, NodeState};

/// Largest gRPC message either side accepts (a 512 MB value plus framing).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Whether `data_dir` holds a node's state; an error if another node's.
fn has_identity(config: &Config) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&config.data_dir)?;
    match std::fs::read_to_string(config.data_dir.join("node-id")) {
        Ok(s) if s.trim() == config.node_id.to_string() => Ok(true),
        Ok(s) => anyhow::bail!(
            "{} belongs to node {}, not {}: refusing to start",
            config.data_dir.display(),
            s.trim(),
            config.node_id
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Records that `data_dir` belongs to this node (from now on, an empty data
/// dir means a lost disk).
pub fn write_identity(config: &Config) -> std::io::Result<()> {
    let tmp = config.data_dir.join("node-id.tmp");
    std::fs::write(&tmp, config.node_id.to_string())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, config.data_dir.join("node-id"))?;
    std::fs::File::open(&config.data_dir)?.sync_all()
}

/// Opens every replica found in the data dir (a restart serves at once,
/// before the cluster map is read).
async fn open_local_groups(state: &NodeState) -> anyhow::Result<()> {
    let _changing = state.changing.lock().await;
    for entry in std::fs::read_dir(&state.config.data_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let id = match name.as_str() {
            "meta" => META,
            n => match n.strip_prefix("shard-").and_then(|i| i.parse::<u32>().ok()) {
                Some(id) => id,
                None => continue,
            },
        };
        let Some(ranges) = service::read_ranges(&state.config.data_dir.join(&name))? else {
            warn!(group = id, "replica folder without a ranges file: left for the cluster map to decide");
            continue;
        };
        state.open_group(id, ranges, BTreeMap::new()).await.with_context(|| format!("opening {name}"))?;
    }
    Ok(())
}

/// Serves the node on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let known = has_identity(&config)?;
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
    let state = Arc::new(NodeState::new(config.clone(), raft_config, Peers::default()));
    let clients = AdminClients::default();
    if known {
        state.has_state.store(true, Ordering::Relaxed);
        open_local_groups(&state).await?;
    }
    info!(node = config.node_id, addr = %listener.local_addr()?, groups = state.hosted().all().count(), "node serving");

    let node_svc = NodeServer::new(NodeService { state: state.clone() })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let transport = TransportService::new(state.clone());
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
    // Routers of the previous release hold gRPC session streams open: give
    // in-flight requests a moment, then close whatever is left.
    if tokio::time::timeout(Duration::from_secs(2), server).await.is_err() {
        info!("closing remaining sessions");
    }
    acceptor.abort();
    for s in state.hosted().all() {
        let _ = s.raft.shutdown().await;
    }
    info!("node stopped");
    Ok(())
}

/// How long a stopping node waits for its routers to drain their sessions.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Accepts the node's connections: raft links from peers go to the Raft
/// transport, session links from routers to [`session::serve_link`],
/// everything else (HTTP/2: admin calls, large Raft messages, sessions of
/// routers of the previous release) to the gRPC server.
async fn accept(
    listener: TcpListener,
    grpc: mpsc::Sender<std::io::Result<TcpStream>>,
    transport: TransportService,
    state: Arc<NodeState>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: the listener itself is fine.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        // Small replies must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let (grpc, transport, state) = (grpc.clone(), transport.clone(), state.clone());
        tokio::spawn(async move {
            match link::sniff(&stream, &[link::RAFT, link::SESSION]).await {
                Some(0) => transport.serve_link(stream).await,
                // A stopping node takes no new session: the router's
                // handshake fails, and what it has queued goes elsewhere.
                Some(_) if *state.drain.borrow() => drop(stream),
                Some(_) => session::serve_link(state, stream).await,
                None => {
                    let _ = grpc.send(Ok(stream)).await;
                }
            }
        });
    }
}

/// First start on an empty data dir: either a new node (record the identity;
/// seeds open the meta group, the first seed forms it) or a node that lost
/// its disk (rebuild through membership changes).
async fn start_fresh(state: &Arc<NodeState>, clients: &AdminClients) -> anyhow::Result<()> {
    if reconcile::lost_its_disk(state, clients).await {
        // Nothing of the old replicas may be used: start from an empty folder.
        for entry in std::fs::read_dir(&state.config.data_dir)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            }
        }
        state.rebuilding.store(true, Ordering::Relaxed);
        tokio::spawn(reconcile::rejoin(state.clone(), clients.clone()));
        return Ok(());
    }
    write_identity(&state.config)?;
    state.has_state.store(true, Ordering::Relaxed);
    let seeds = meta_seeds(&state.config);
    if seeds.contains(&state.node_id) {
        let placement = seeds.iter().map(|id| (*id, state.config.peers[id].clone())).collect();
        let _changing = state.changing.lock().await;
        state.open_group(META, Vec::new(), placement).await.context("opening the meta group")?;
        drop(_changing);
        if seeds.first() == Some(&state.node_id) {
            bootstrap_meta(state).await;
        }
    }
    Ok(())
}

/// The first seed forms the meta group (once: a group with any log is formed).
async fn bootstrap_meta(state: &NodeState) {
    let Some(meta) = state.group(META) else { return };
    let members = meta_seeds(&state.config)
        .into_iter()
        .map(|id| (id, NodeAddr { addr: state.config.peers[&id].clone() }))
        .collect();
    if let Err(e) = meta.bootstrap(members).await {
        warn!(error = %e, "could not form the meta group");
    }
}

/// Before a graceful stop: transfer every group this node leads to a
/// replica that holds its whole log, all groups at once, waiting (bounded)
/// until each has taken over. The node stops calling elections first, and
/// declines leadership offered to it from now on (`stopping`), so no group
/// comes back to it on its way out.
async fn hand_off_leadership(state: &NodeState) {
    let hosted = state.hosted();
    for s in hosted.all() {
        s.raft.runtime_config().elect(false);
    }
    let hand_off = |s: Arc<shard::Shard>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while s.is_leader() && tokio::time::Instant::now() < deadline {
            let others: Vec<u64> = s.membership().0.into_iter().filter(|id| *id != state.node_id).collect();
            // A replica that holds every entry can take over at once.
            let Some(to) = others.iter().copied().find(|id| s.caught_up(*id)).or(others.first().copied()) else {
                return;
            };
            let _ = s.raft.trigger().transfer_leader(to).await;
            let retry = tokio::time::Instant::now() + Duration::from_millis(500);
            while s.is_leader() && tokio::time::Instant::now() < retry.min(deadline) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    futures::future::join_all(hosted.all().cloned().map(hand_off)).await;
}

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
