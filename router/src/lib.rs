//! `tessera-router`: speaks RESP2/RESP3 and the Redis Cluster protocol to
//! clients and forwards each command to the storage node owning its slot.
//!
//! * [`config`] — flags and the validated [`config::Config`];
//! * [`codec`] — request framing with limits enforced before buffering;
//! * [`conn`] — one client connection, pipelining, ordered replies;
//! * [`dispatch`] — keyed, fan-out and local execution of parsed commands;
//! * [`local`] — commands the router answers itself (HELLO, CLIENT, INFO, COMMAND, CLUSTER...);
//! * [`topology`] — the virtual cluster layout advertised to cluster clients;
//! * [`backend`] — multiplexed gRPC sessions to nodes and the slot → shard map;
//! * [`stats`] — counters shared by INFO and /metrics.
//!
//! [`run`] serves until `shutdown` resolves, then drains connections.

#![forbid(unsafe_code)]

pub mod backend;
pub mod codec;
pub mod config;
pub mod conn;
pub mod dispatch;
pub mod error;
pub mod info;
pub mod local;
pub mod multi;
pub mod save;
pub mod shards;
pub mod stats;
pub mod topology;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::command::ParseLimits;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::conn::ConnState;
use crate::shards::ShardMap;
use crate::stats::Stats;
use crate::topology::{Endpoint, Topology};

/// State shared by every connection of one router.
pub struct Router {
    pub config: Config,
    pub parse_limits: ParseLimits,
    pub topology: Topology,
    pub shards: Arc<ShardMap>,
    pub stats: Stats,
    pub started: Instant,
    pub plain_addr: SocketAddr,
    pub run_id: String,
    pub saves: save::Saves,
    next_id: AtomicU64,
    /// CLIENT LIST lines by client id (a short lock, never held across `.await`).
    clients: Mutex<HashMap<u64, String>>,
}

impl Router {
    pub fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn update_client(&self, conn: &ConnState) {
        self.clients.lock().insert(conn.id, conn.info_line());
    }

    pub fn remove_client(&self, id: u64) {
        self.clients.lock().remove(&id);
    }

    /// Ready (`/readyz`): every slot has a shard, and every shard a leader
    /// that a replica this router is connected to reports (reports are
    /// refreshed every second).
    pub fn readiness(&self) -> Result<(), String> {
        let unserved = self.shards.unserved_slots();
        if unserved > 0 {
            return Err(format!("{unserved} slots have no shard"));
        }
        let nodes = self.shards.nodes();
        let connected = |i: &usize| nodes.get(*i).is_some_and(|n| n.is_connected());
        for s in self.shards.shards() {
            if !s.reports.lock().iter().any(|(i, r)| connected(i) && r.leader_id != 0) {
                return Err(format!("shard {} has no known leader", s.id));
            }
        }
        Ok(())
    }

    pub fn client_list(&self) -> String {
        let clients = self.clients.lock();
        let mut ids: Vec<&u64> = clients.keys().collect();
        ids.sort();
        ids.into_iter().map(|id| clients[id].as_str()).collect()
    }
}

/// The sockets a router serves on.
pub struct Listeners {
    pub plain: TcpListener,
    pub cluster: Vec<TcpListener>,
}

/// Discovers the shards, then serves clients until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    ready: tessera_telemetry::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shards = Arc::new(ShardMap::discover(&config.nodes, config.node_wait).await?);
    shards.wait_connected(config.node_wait).await?;
    let refresher = tokio::spawn(shards.clone().refresh_loop(Duration::from_secs(1)));
    if shards.unserved_slots() > 0 {
        warn!(unserved = shards.unserved_slots(), "some slots have no shard; they answer CLUSTERDOWN");
    }
    let cluster_addrs: Vec<SocketAddr> = listeners.cluster.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    let advertised = match config.advertise.is_empty() {
        true => cluster_addrs.iter().map(|a| Endpoint::from(*a)).collect(),
        false => config.advertise.clone(),
    };
    if advertised.is_empty() {
        anyhow::bail!("no advertised endpoint: give --cluster-listen or --advertise");
    }
    let topology = Topology::new(advertised);
    for a in &cluster_addrs {
        if topology.node_at(*a).is_none() {
            warn!(addr = %a, "cluster listener is not among the advertised endpoints");
        }
    }
    let plain_addr = listeners.plain.local_addr()?;
    let run_id = topology::node_id(&plain_addr);
    let router = Arc::new(Router {
        parse_limits: ParseLimits { max_value_bytes: config.limits.max_bulk_len },
        config,
        topology,
        shards,
        stats: Stats::default(),
        started: Instant::now(),
        plain_addr,
        run_id,
        saves: save::Saves::default(),
        next_id: AtomicU64::new(0),
        clients: Mutex::new(HashMap::new()),
    });
    info!(plain = %plain_addr, cluster = ?cluster_addrs, shards = router.shards.shards().len(), "router serving");
    let probe = router.clone();
    ready.set(Arc::new(move || probe.readiness()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    accept_tasks.push(tokio::spawn(accept_loop(router.clone(), listeners.plain, None, stop_rx.clone())));
    for (l, addr) in listeners.cluster.into_iter().zip(cluster_addrs) {
        let vnode = router.topology.node_at(addr);
        accept_tasks.push(tokio::spawn(accept_loop(router.clone(), l, vnode, stop_rx.clone())));
    }
    shutdown.await;
    info!("router shutting down; draining connections");
    let _ = stop_tx.send(true);
    for t in &accept_tasks {
        t.abort();
    }
    refresher.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Stats::get(&router.stats.connected) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!("router stopped");
    Ok(())
}

async fn accept_loop(router: Arc<Router>, listener: TcpListener, vnode: Option<usize>, stop: watch::Receiver<bool>) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if Stats::get(&router.stats.connected) as usize >= router.config.max_clients {
            router.stats.connection_rejected();
            tokio::spawn(reject(sock));
            continue;
        }
        tokio::spawn(conn::serve(router.clone(), sock, vnode, stop.clone()));
    }
}

async fn reject(mut sock: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = sock.shutdown().await;
}
