//! `tessera-router`: speaks RESP2/RESP3 and the Redis Cluster protocol to
//! clients and forwards each command to the storage node owning its slot.
//!
//! * [`config`] — flags and the validated [`config::Config`];
//! * [`acl`] — users: AUTH, the NOAUTH/NOPERM check, the ACL command;
//! * [`codec`] — request framing with limits enforced before buffering;
//! * [`conn`] — one client connection, pipelining, ordered replies;
//! * [`dispatch`] — keyed, fan-out and local execution of parsed commands;
//! * [`local`] — commands the router answers itself (HELLO, CLIENT, INFO, COMMAND, CLUSTER...);
//! * [`topology`] — the virtual cluster layout advertised to cluster clients;
//! * [`tls`] — the TLS ports' rustls configuration, reloaded from disk;
//! * [`backend`] — multiplexed gRPC sessions to nodes and the slot → shard map;
//! * [`stats`] — counters shared by INFO and /metrics.
//!
//! [`run`] serves until `shutdown` resolves, then drains connections.

#![forbid(unsafe_code)]

pub mod acl;
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
pub mod tls;
pub mod topology;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tessera_common::command::ParseLimits;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::conn::{Accepted, ConnState};
use crate::shards::ShardMap;
use crate::stats::Stats;
use crate::tls::Tls;
use crate::topology::{Advertised, Endpoint, Topology};

/// State shared by every connection of one router.
pub struct Router {
    pub config: Config,
    pub parse_limits: ParseLimits,
    pub topology: Topology,
    pub shards: Arc<ShardMap>,
    pub stats: Stats,
    pub started: Instant,
    /// The plain port's address (None with `--tls-only`).
    pub plain_addr: Option<SocketAddr>,
    /// The TLS port's address, when there is one.
    pub tls_addr: Option<SocketAddr>,
    /// The TLS ports' configuration, when there are TLS ports.
    pub tls: Option<Arc<Tls>>,
    pub users: acl::Users,
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
        if !self.users.ready() {
            return Err("the cluster's users are not read yet".into());
        }
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

/// The sockets a router serves on: the plain port and the cluster ports,
/// and their TLS counterparts (the i-th TLS cluster port serves the same
/// master as the i-th cluster port).
#[derive(Default)]
pub struct Listeners {
    pub plain: Option<TcpListener>,
    pub cluster: Vec<TcpListener>,
    pub tls: Option<TcpListener>,
    pub tls_cluster: Vec<TcpListener>,
}

impl Listeners {
    /// Binds what `args` asks for (no plain ports with `--tls-only`).
    pub async fn bind(args: &config::Args) -> anyhow::Result<Listeners> {
        let bind = |a: SocketAddr| async move {
            TcpListener::bind(a).await.map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))
        };
        let mut l = Listeners::default();
        if !args.tls_only {
            l.plain = Some(bind(args.listen).await?);
            for a in &args.cluster_listen {
                l.cluster.push(bind(*a).await?);
            }
        }
        if let Some(a) = args.tls_listen {
            l.tls = Some(bind(a).await?);
        }
        for a in &args.tls_cluster_listen {
            l.tls_cluster.push(bind(*a).await?);
        }
        Ok(l)
    }

    /// `plain=A cluster=A,B tls=A tls-cluster=A,B`, each where there is one
    /// (the start of the `--print-ready` line).
    pub fn ready_fields(&self) -> std::io::Result<String> {
        let join = |l: &[TcpListener]| -> std::io::Result<String> {
            Ok(addrs(l)?.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","))
        };
        let mut fields = Vec::new();
        if let Some(l) = &self.plain {
            fields.push(format!("plain={}", l.local_addr()?));
        }
        if !self.cluster.is_empty() {
            fields.push(format!("cluster={}", join(&self.cluster)?));
        }
        if let Some(l) = &self.tls {
            fields.push(format!("tls={}", l.local_addr()?));
        }
        if !self.tls_cluster.is_empty() {
            fields.push(format!("tls-cluster={}", join(&self.tls_cluster)?));
        }
        Ok(fields.join(" "))
    }
}

fn addrs(listeners: &[TcpListener]) -> std::io::Result<Vec<SocketAddr>> {
    listeners.iter().map(|l| l.local_addr()).collect()
}

/// The advertised masters: plain and TLS endpoints paired in their order.
fn advertised(config: &Config, plain: &[SocketAddr], tls: &[SocketAddr]) -> anyhow::Result<Vec<Advertised>> {
    let pick = |given: &[Endpoint], bound: &[SocketAddr]| match given.is_empty() {
        true => bound.iter().map(|a| Endpoint::from(*a)).collect::<Vec<_>>(),
        false => given.to_vec(),
    };
    if !config.advertise.is_empty() && config.tls_advertise.is_empty() && !tls.is_empty() {
        anyhow::bail!("--advertise names the fleet's plain endpoints: give --tls-advertise for its TLS ones too");
    }
    let plain = if config.tls_only { Vec::new() } else { pick(&config.advertise, plain) };
    let tls = pick(&config.tls_advertise, tls);
    let out: Vec<Advertised> = match (plain.len(), tls.len()) {
        (0, 0) if config.tls_only => {
            anyhow::bail!("no advertised endpoint: give --tls-cluster-listen or --tls-advertise")
        }
        (0, 0) => anyhow::bail!("no advertised endpoint: give --cluster-listen or --advertise"),
        (_, 0) => plain.into_iter().map(|p| Advertised { plain: Some(p), tls: None }).collect(),
        (0, _) if config.tls_only => tls.into_iter().map(|t| Advertised { plain: None, tls: Some(t) }).collect(),
        (0, _) => anyhow::bail!("TLS cluster ports pair with plain ones (--cluster-listen), unless --tls-only"),
        (p, t) if p == t => {
            plain.into_iter().zip(tls).map(|(p, t)| Advertised { plain: Some(p), tls: Some(t) }).collect()
        }
        (p, t) => anyhow::bail!(
            "{p} plain and {t} TLS cluster endpoints: each advertised master has one of each \
             (--cluster-listen/--advertise pair with --tls-cluster-listen/--tls-advertise)"
        ),
    };
    Ok(out)
}

/// Discovers the shards, then serves clients until `shutdown` resolves.
pub async fn run(
    config: Config,
    listeners: Listeners,
    ready: tessera_telemetry::Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Settings first: a bad certificate or ACL file stops the router at
    // once, not after it waited for the nodes.
    let has_tls = listeners.tls.is_some() || !listeners.tls_cluster.is_empty();
    let tls = match &config.tls {
        None if has_tls => anyhow::bail!("TLS ports need --tls-cert and --tls-key"),
        Some(settings) if has_tls => {
            let tls = Arc::new(Tls::load(settings.clone())?);
            // A handler from now on: SIGHUP's default action would stop the router.
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| warn!(error = %e, "no SIGHUP handler; certificates reload on change only"))
                .ok();
            tokio::spawn(tls.clone().watch(hangup));
            Some(tls)
        }
        _ => None,
    };
    let users = acl::Users::load(config.acl_file.as_deref(), config.requirepass.as_deref())?;
    let shards = Arc::new(ShardMap::discover(&config.nodes, config.node_wait).await?);
    shards.wait_connected(config.node_wait).await?;
    let refresher = tokio::spawn(shards.clone().refresh_loop(Duration::from_secs(1)));
    if shards.unserved_slots() > 0 {
        warn!(unserved = shards.unserved_slots(), "some slots have no shard; they answer CLUSTERDOWN");
    }
    let cluster_addrs = addrs(&listeners.cluster)?;
    let tls_cluster_addrs = addrs(&listeners.tls_cluster)?;
    let topology = Topology::with_tls(advertised(&config, &cluster_addrs, &tls_cluster_addrs)?);
    let serving = cluster_addrs.iter().map(|a| (*a, false)).chain(tls_cluster_addrs.iter().map(|a| (*a, true)));
    for (a, tls) in serving {
        if topology.node_at(a, tls).is_none() {
            warn!(addr = %a, tls, "cluster listener is not among the advertised endpoints");
        }
    }
    let plain_addr = listeners.plain.as_ref().map(|l| l.local_addr()).transpose()?;
    let tls_addr = listeners.tls.as_ref().map(|l| l.local_addr()).transpose()?;
    let Some(first_addr) =
        plain_addr.or(tls_addr).or(cluster_addrs.first().copied()).or(tls_cluster_addrs.first().copied())
    else {
        anyhow::bail!("the router has no port to serve on");
    };
    if tls_addr.is_some() && topology.nodes.iter().all(|n| n.tls.is_none()) {
        warn!("no TLS cluster ports: cluster clients on the TLS port are given the plain cluster endpoints");
    }
    // The cluster's users, or this router's own ones seeded into a cluster
    // that has none; if the meta group does not answer, this router's own
    // until it does.
    if let Err(e) = acl::cluster::sync(&shards, &users).await {
        warn!(error = %e, "the cluster's users could not be read: commands answer LOADING until they are");
    } else if users.differ_from_own() {
        warn!("the cluster's users differ from this router's --acl-file/--requirepass: the cluster's are in force (those flags seed only a cluster without users; ACL LOAD sends the file again)");
    }
    let run_id = topology::node_id(&first_addr);
    let router = Arc::new(Router {
        parse_limits: ParseLimits { max_value_bytes: config.limits.max_bulk_len },
        config,
        topology,
        shards,
        stats: Stats::default(),
        started: Instant::now(),
        plain_addr,
        tls_addr,
        tls,
        users,
        run_id,
        saves: save::Saves::default(),
        next_id: AtomicU64::new(0),
        clients: Mutex::new(HashMap::new()),
    });
    info!(plain = ?plain_addr, cluster = ?cluster_addrs, tls = ?tls_addr, tls_cluster = ?tls_cluster_addrs,
          shards = router.shards.shards().len(), "router serving");
    let users_follower = tokio::spawn(acl::cluster::follow_cluster(router.clone()));
    let probe = router.clone();
    ready.set(Arc::new(move || probe.readiness()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_tasks = Vec::new();
    let mut serve = |l: TcpListener, vnode: Option<usize>, tls: bool| {
        accept_tasks.push(tokio::spawn(accept_loop(router.clone(), l, vnode, tls, stop_rx.clone())));
    };
    if let Some(l) = listeners.plain {
        serve(l, None, false);
    }
    if let Some(l) = listeners.tls {
        serve(l, None, true);
    }
    for (l, addr) in listeners.cluster.into_iter().zip(cluster_addrs) {
        serve(l, router.topology.node_at(addr, false), false);
    }
    for (l, addr) in listeners.tls_cluster.into_iter().zip(tls_cluster_addrs) {
        serve(l, router.topology.node_at(addr, true), true);
    }
    shutdown.await;
    info!("router shutting down; draining connections");
    let _ = stop_tx.send(true);
    for t in &accept_tasks {
        t.abort();
    }
    refresher.abort();
    users_follower.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Stats::get(&router.stats.connected) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    info!("router stopped");
    Ok(())
}

async fn accept_loop(
    router: Arc<Router>,
    listener: TcpListener,
    vnode: Option<usize>,
    tls: bool,
    stop: watch::Receiver<bool>,
) {
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
        let (Ok(peer), Ok(local)) = (sock.peer_addr(), sock.local_addr()) else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let accepted = Accepted { peer, local, vnode, tls };
        let open = Stats::get(&router.stats.connected) + Stats::get(&router.stats.handshaking);
        let full = open as usize >= router.config.max_clients;
        if full {
            router.stats.connection_rejected();
        }
        match (tls, &router.tls) {
            (false, _) if full => drop(tokio::spawn(reject(sock))),
            (false, _) => drop(tokio::spawn(conn::serve(router.clone(), sock, accepted, stop.clone()))),
            // Over the limit, a TLS client is closed before its handshake,
            // as Redis does: no error can reach it without one.
            (true, Some(_)) if full => drop(sock),
            (true, Some(config)) => {
                let acceptor = config.acceptor();
                let handshake = Handshaking::new(router.clone(), peer);
                let stop = stop.clone();
                // The handshake runs in the connection's task, so a slow
                // client holds up no one else.
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return handshake.failed(&e),
                        Err(_) => return handshake.failed(&"no handshake within 10 s"),
                    };
                    let router = handshake.done();
                    conn::serve(router, stream, accepted, stop).await
                });
            }
            // `run` refuses TLS listeners without a configuration.
            (true, None) => {}
        }
    }
}

/// A TLS connection in its handshake, counted in `Stats::handshaking`
/// until it is done or dropped.
struct Handshaking {
    router: Option<Arc<Router>>,
    peer: SocketAddr,
}

impl Handshaking {
    fn new(router: Arc<Router>, peer: SocketAddr) -> Handshaking {
        router.stats.handshaking.fetch_add(1, Ordering::Relaxed);
        Handshaking { router: Some(router), peer }
    }

    /// The handshake succeeded: the connection counts as connected from here.
    fn done(mut self) -> Arc<Router> {
        let router = self.router.take().expect("taken once");
        router.stats.handshaking.fetch_sub(1, Ordering::Relaxed);
        router
    }

    /// The handshake failed: counted and logged (rate-limited).
    fn failed(self, why: &dyn std::fmt::Display) {
        if let Some(r) = &self.router {
            r.stats.handshake_failed();
        }
        tls::log_refused(self.peer, why);
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        if let Some(r) = self.router.take() {
            r.stats.handshaking.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn reject<S: tokio::io::AsyncWrite + Unpin>(mut sock: S) {
    use tokio::io::AsyncWriteExt;
    let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = sock.shutdown().await;
}
