//! The `tessera.node.v1.Node` gRPC service.
//!
//! Each router session is served by a reader task that decodes requests,
//! checks slot ownership and hands each to the *lane* of its shard (one task
//! per session and shard). A lane keeps the session's order where it matters,
//! key by key: writes are proposed in arrival order and pipelined; reads run
//! together; a command waits for earlier unfinished ones that write a key it
//! touches (or read a key it writes) — so a client never misses its own
//! write nor sees a later one. Model runs read their inputs, run off the
//! async runtime and then write their outputs, so they count as both; runs
//! on disjoint keys overlap, which is what lets the engine batch them.
//! Responses go back as they complete, batched, matched by id. Long
//! commands and replies travel in parts (see [`tessera_proto::parts`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use parking_lot::RwLock;
use tessera_common::command::NodeCommand;
use tessera_common::error::code_of;
use tessera_common::reply::Reply;
use tessera_common::slot::{key_slot, SlotRange, SLOTS};
use tessera_proto::parts::{Joiner, Outgoing};
use tessera_proto::v1::node_server::Node;
use tessera_proto::v1::{
    request, response, Member, Redirect, RequestBatch, ResponseBatch, ShardInfo, ShardsRequest, ShardsResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, trace, warn};

use crate::config::Config;
use crate::disk::DiskGuard;
use crate::meta::{ClusterMap, META};
use crate::raft::logfile::{read_atomic, write_atomic};
use crate::raft::network::Peers;
use crate::raft::RaftConfig;
use crate::shard::{Outcome, Shard};

/// The slots a replica folder was created for.
pub fn read_ranges(dir: &std::path::Path) -> std::io::Result<Option<Vec<SlotRange>>> {
    match read_atomic(&dir.join("ranges"))? {
        None => Ok(None),
        Some(b) => {
            postcard::from_bytes(&b).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
    }
}

/// A group's folder under the data dir.
pub fn group_dir(id: u32) -> String {
    if id == META {
        "meta".into()
    } else {
        format!("shard-{id}")
    }
}

/// The groups this node hosts right now and the slot → shard table; replaced
/// whole (copy on write) when a replica is opened or closed.
#[derive(Default)]
pub struct Hosted {
    pub shards: Vec<Arc<Shard>>,
    /// This node's replica of the meta group, if it hosts one.
    pub meta: Option<Arc<Shard>>,
    by_slot: Vec<Option<usize>>,
    by_id: HashMap<u32, usize>,
}

impl Hosted {
    pub fn new(mut shards: Vec<Arc<Shard>>, meta: Option<Arc<Shard>>) -> Self {
        shards.sort_by_key(|s| s.id);
        let mut by_slot = vec![None; usize::from(SLOTS)];
        let mut by_id = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            by_id.insert(s.id, i);
            for r in &s.ranges {
                for slot in r.start..=r.end {
                    by_slot[usize::from(slot)] = Some(i);
                }
            }
        }
        Self { shards, meta, by_slot, by_id }
    }

    /// Every replica, the meta group's included.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Shard>> {
        self.shards.iter().chain(self.meta.iter())
    }

    pub fn group(&self, id: u32) -> Option<&Arc<Shard>> {
        if id == META {
            return self.meta.as_ref();
        }
        self.by_id.get(&id).map(|i| &self.shards[*i])
    }
}

/// This node: its hosted groups and the last cluster map it has seen.
pub struct NodeState {
    pub node_id: u64,
    pub config: Config,
    pub raft_config: Arc<RaftConfig>,
    pub peers: Peers,
    hosted: RwLock<Arc<Hosted>>,
    /// The newest cluster map read from the meta group (linearizably).
    pub map: RwLock<Arc<ClusterMap>>,
    /// Serializes opening and closing replicas.
    pub changing: tokio::sync::Mutex<()>,
    /// Set while a node that lost its disk is being rebuilt: it must not act
    /// as the voter it was, only host replicas the map lists it as learner of.
    pub rebuilding: AtomicBool,
    /// This node has state (answers wiped-disk probes of other nodes).
    pub has_state: AtomicBool,
    /// One membership operation at a time.
    pub admin_lock: tokio::sync::Mutex<()>,
    pub disk: Arc<DiskGuard>,
    /// Set when the node shuts down (nothing is reopened any more).
    pub stopping: AtomicBool,
    /// When this node, as leader, last handed a group to its preferred leader.
    pub handed_back: parking_lot::Mutex<HashMap<u32, std::time::Instant>>,
}

const NOT_SERVED: &str = "CLUSTERDOWN Hash slot not served";

impl NodeState {
    pub fn new(config: Config, raft_config: Arc<RaftConfig>, peers: Peers) -> Self {
        Self {
            node_id: config.node_id,
            config: config.clone(),
            raft_config,
            peers,
            hosted: RwLock::new(Arc::new(Hosted::default())),
            map: RwLock::default(),
            changing: tokio::sync::Mutex::new(()),
            rebuilding: AtomicBool::new(false),
            has_state: AtomicBool::new(false),
            admin_lock: tokio::sync::Mutex::new(()),
            disk: Arc::new(DiskGuard::new(config.data_dir.clone(), config.min_free_bytes)),
            stopping: AtomicBool::new(false),
            handed_back: Default::default(),
        }
    }

    pub fn hosted(&self) -> Arc<Hosted> {
        self.hosted.read().clone()
    }

    pub fn group(&self, id: u32) -> Option<Arc<Shard>> {
        self.hosted.read().group(id).cloned()
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().clone()
    }

    /// Opens this node's replica of group `id` (creating it if new) and
    /// starts serving it. Call with `changing` held.
    pub async fn open_group(
        &self,
        id: u32,
        ranges: Vec<SlotRange>,
        placement: BTreeMap<u64, String>,
    ) -> std::io::Result<Arc<Shard>> {
        if let Some(s) = self.group(id) {
            return Ok(s);
        }
        let dir = self.config.data_dir.join(group_dir(id));
        std::fs::create_dir_all(&dir)?;
        if read_ranges(&dir)?.is_none() {
            write_atomic(&dir.join("ranges"), &postcard::to_stdvec(&ranges).map_err(std::io::Error::other)?)?;
        }
        let (raft, peers, disk) = (self.raft_config.clone(), self.peers.clone(), self.disk.clone());
        let shard = Shard::open(id, ranges, placement, &self.config, raft, peers, disk).await?;
        self.attach(shard.clone());
        debug!(group = id, "replica opened");
        Ok(shard)
    }

    /// Stops and reopens this node's replica of group `id` from its files
    /// (after a storage error stopped it: e.g. the disk was full). Call with
    /// `changing` held.
    pub async fn reopen_group(&self, id: u32) -> std::io::Result<()> {
        let Some(shard) = self.group(id) else { return Ok(()) };
        self.detach(id);
        let _ = shard.raft.shutdown().await;
        match self.open_group(id, shard.ranges.clone(), shard.placement.clone()).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // Keep the stopped replica listed, so the next round tries again.
                self.attach(shard);
                Err(e)
            }
        }
    }

    fn attach(&self, shard: Arc<Shard>) {
        let cur = self.hosted();
        let mut shards = cur.shards.clone();
        let mut meta = cur.meta.clone();
        if shard.id == META {
            meta = Some(shard);
        } else {
            shards.push(shard);
        }
        *self.hosted.write() = Arc::new(Hosted::new(shards, meta));
    }

    /// Removes group `id` from the hosted table (it stops being served).
    fn detach(&self, id: u32) {
        let cur = self.hosted();
        let shards = cur.shards.iter().filter(|s| s.id != id).cloned().collect();
        let meta = if id == META { None } else { cur.meta.clone() };
        *self.hosted.write() = Arc::new(Hosted::new(shards, meta));
    }

    /// Stops this node's replica of group `id` and deletes its files (the
    /// map no longer lists this node for it). Call with `changing` held.
    pub async fn close_group(&self, id: u32) -> std::io::Result<()> {
        let Some(shard) = self.group(id) else { return Ok(()) };
        self.detach(id);
        let _ = shard.raft.shutdown().await;
        let dir = self.config.data_dir.join(group_dir(id));
        if dir.exists() {
            // Rename first so a crash mid-delete leaves no half replica behind.
            let trash = self.config.data_dir.join(format!("{}.removed", group_dir(id)));
            let _ = std::fs::remove_dir_all(&trash);
            std::fs::rename(&dir, &trash)?;
            std::fs::remove_dir_all(&trash)?;
        }
        info!(group = id, "replica closed and its files deleted");
        Ok(())
    }

    /// Decodes a request and finds its shard; an error reply otherwise.
    ///
    /// A shard this node does not host (yet, or any more: a restarted node
    /// with a wiped disk, a replica moved away) answers as a replica with no
    /// leader to name, so the router tries the shard's other replicas
    /// instead of handing the client `CLUSTERDOWN`.
    fn route(&self, target: Option<request::Target>, command: &Bytes) -> Result<(Arc<Shard>, NodeCommand), Outcome> {
        // Only a command joined from parts has a buffer of its own: one
        // that came whole is a slice of the stream's receive buffer, which a
        // stored slice of it would keep alive.
        let decode = || match command.len() > tessera_proto::parts::PART_BYTES {
            true => NodeCommand::from_shared(command),
            false => NodeCommand::from_bytes(command),
        };
        let decoded = if command.len() > crate::raft::HEAVY_BYTES { crate::raft::heavy(decode) } else { decode() };
        let cmd = decoded.map_err(|e| {
            metrics::counter!("tessera_node_decode_errors_total").increment(1);
            Outcome::Reply(Reply::err(format!("ERR node could not decode command: {e}")))
        })?;
        // A node setting needs no shard: applied here, its reply returned
        // the way errors are.
        if let NodeCommand::AiConfig { op } = &cmd {
            return Err(Outcome::Reply(crate::models::registry().config(op)));
        }
        let hosted = self.hosted.read().clone();
        let shard = match target {
            Some(request::Target::Slot(slot)) => hosted.by_slot.get(slot as usize).copied().flatten(),
            Some(request::Target::Shard(id)) => hosted.by_id.get(&id).copied(),
            None => None,
        };
        let shard = match (shard, target) {
            (Some(i), _) => hosted.shards[i].clone(),
            (None, None) => return Err(Outcome::Reply(Reply::err(NOT_SERVED))),
            (None, Some(_)) => return Err(Outcome::Redirect(None)),
        };
        // A stale router can never make this shard store a key it does not own
        // (the state machine of each replica holds only its shard's slots).
        if !cmd.keys().all(|k| shard.owns(key_slot(k))) {
            return Err(Outcome::Reply(Reply::err(NOT_SERVED)));
        }
        Ok((shard, cmd))
    }
}

/// What a session sends back: a response, or a long reply's encoding in
/// pieces (sent in parts, see [`tessera_proto::parts`]).
enum Out {
    One(tessera_proto::v1::Response),
    Long { id: u64, pieces: Vec<Bytes> },
}

fn response(id: u64, shard: u32, out: Outcome) -> Out {
    let result = match out {
        // A long reply (a model's bytes, a large tensor) is not encoded into
        // one buffer: its large payloads go out as slices of themselves.
        Outcome::Reply(r) if r.size_hint() > tessera_proto::parts::PART_BYTES => {
            // (Payloads of 64 KiB or more are pieces of their own: a model
            // laid out for its runtime is many such weights.)
            let pieces = crate::raft::heavy(|| r.to_parts(64 << 10));
            return Out::Long { id, pieces };
        }
        Outcome::Reply(r) => response::Result::Reply(r.to_bytes().into()),
        Outcome::Redirect(leader) => {
            let (leader_id, leader_addr) = leader.unwrap_or_default();
            response::Result::Redirect(Redirect { shard, leader_id, leader_addr })
        }
    };
    Out::One(tessera_proto::v1::Response { id, result: Some(result), total_len: 0 })
}

fn record(name: &'static str, out: &Outcome, start: Instant) {
    let code = match out {
        Outcome::Reply(Reply::Error(e)) => code_of(e),
        Outcome::Reply(_) => "ok",
        Outcome::Redirect(_) => "redirect",
    };
    tessera_telemetry::record_command("tessera_node", name, code, start.elapsed());
}

/// A finished command: its in-flight slot, request id and outcome.
type Done = (u64, u64, Outcome);

/// The queue into one lane: request id and command.
type LaneTx = mpsc::Sender<(u64, NodeCommand)>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Read,
    /// A logged write: writes are proposed in arrival order, so two writes
    /// never need to wait for each other.
    Write,
    /// A model run: reads its model and inputs, later writes its outputs.
    Exec,
}

/// What an in-flight command touches.
#[derive(Debug)]
struct Access {
    kind: Kind,
    /// Keyspace-wide (KEYS, SCAN, FLUSHALL, ...): touches every key.
    all: bool,
    reads: Vec<Bytes>,
    writes: Vec<Bytes>,
}

impl Access {
    fn of(cmd: &NodeCommand) -> Access {
        let kind = if cmd.is_exec() {
            Kind::Exec
        } else if cmd.is_write() {
            Kind::Write
        } else {
            Kind::Read
        };
        let all = !cmd.has_keys();
        let keys = || cmd.keys().cloned().collect::<Vec<_>>();
        let (reads, writes) = match kind {
            Kind::Read => (keys(), Vec::new()),
            Kind::Write => (Vec::new(), keys()),
            Kind::Exec => {
                let writes: Vec<Bytes> = cmd.written_keys().unwrap_or_default().into_iter().cloned().collect();
                let reads = keys().into_iter().filter(|k| !writes.contains(k)).collect();
                (reads, writes)
            }
        };
        Access { kind, all, reads, writes }
    }

    /// Whether `self` must wait for `other` (in flight) to finish: they
    /// touch a common key and one of them writes it. Reads never wait for
    /// reads; writes never wait for writes (the log orders them).
    fn conflicts(&self, other: &Access) -> bool {
        match (self.kind, other.kind) {
            (Kind::Read, Kind::Read) | (Kind::Write, Kind::Write) => return false,
            _ => {}
        }
        if self.all || other.all {
            return true;
        }
        let hit = |a: &[Bytes], b: &[Bytes]| a.iter().any(|k| b.contains(k));
        hit(&self.writes, &other.reads) || hit(&self.writes, &other.writes) || hit(&other.writes, &self.reads)
    }
}

/// One shard's share of one session (see the module docs for the ordering
/// rules): commands start in arrival order; one that touches a key an
/// earlier, unfinished command writes (or writes a key it reads) waits, and
/// so does everything behind it.
async fn lane(shard: Arc<Shard>, mut rx: mpsc::Receiver<(u64, NodeCommand)>, out: mpsc::Sender<Out>) {
    let mut queue: VecDeque<(u64, NodeCommand, Instant)> = VecDeque::new();
    let mut running: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut flights: HashMap<u64, Access> = HashMap::new();
    let mut next_slot = 0u64;
    let mut open = true;
    loop {
        // Start whatever the ordering rules allow, front first.
        while let Some((_, cmd, _)) = queue.front() {
            let access = Access::of(cmd);
            if flights.values().any(|f| access.conflicts(f)) {
                break;
            }
            let (id, cmd, start) = queue.pop_front().expect("front exists");
            let name = cmd.name();
            trace!(shard = shard.id, cmd = name, kind = ?access.kind, "command");
            let slot = next_slot;
            next_slot += 1;
            let s = shard.clone();
            let fut = match access.kind {
                Kind::Write => {
                    // Queued in the group before the next command starts, so
                    // writes are logged in arrival order.
                    let submitted = shard.submit(cmd).await;
                    async move {
                        let o = s.finish(submitted).await;
                        record(name, &o, start);
                        (slot, id, o)
                    }
                    .boxed()
                }
                Kind::Read => async move {
                    let o = s.read(&cmd).await;
                    record(name, &o, start);
                    (slot, id, o)
                }
                .boxed(),
                Kind::Exec => async move {
                    let o = match &cmd {
                        NodeCommand::ModelExecute { argv, deprecated } => s.execute(argv, *deprecated).await,
                        _ => Outcome::Reply(Reply::err("ERR internal: not a model run")),
                    };
                    record(name, &o, start);
                    (slot, id, o)
                }
                .boxed(),
            };
            flights.insert(slot, access);
            running.push(fut);
        }
        if !open && queue.is_empty() && running.is_empty() {
            return;
        }
        tokio::select! {
            Some((slot, id, o)) = running.next(), if !running.is_empty() => {
                flights.remove(&slot);
                if out.send(response(id, shard.id, o)).await.is_err() { return; }
            }
            m = rx.recv(), if open => match m {
                Some((id, cmd)) => queue.push_back((id, cmd, Instant::now())),
                None => open = false,
            },
        }
    }
}

/// Batches every response ready at poll time into one message.
/// A long reply goes alone, in parts (see [`tessera_proto::parts`]).
struct ResponseStream {
    rx: mpsc::Receiver<Out>,
    sending: Option<Outgoing<()>>,
    _guard: SessionGuard,
}

impl ResponseStream {
    /// The next part of the long reply being sent, alone in a message.
    fn next_part(&mut self) -> Option<ResponseBatch> {
        let out = self.sending.as_mut()?;
        let (part, last) = out.next_part();
        let r = tessera_proto::v1::Response {
            id: out.id,
            result: Some(response::Result::Reply(part)),
            total_len: out.total,
        };
        if last {
            self.sending = None;
        }
        Some(ResponseBatch { responses: vec![r] })
    }
}

impl Stream for ResponseStream {
    type Item = Result<ResponseBatch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(part) = self.next_part() {
            return Poll::Ready(Some(Ok(part)));
        }
        let mut next = match self.rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => Some(r),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let mut responses = Vec::new();
        // At most about a part's worth of bytes per message, so the
        // router's receive buffer stays that small too.
        let mut bytes = 0;
        while let Some(r) = next.take() {
            let r = match r {
                Out::One(r) => r,
                Out::Long { id, pieces } => {
                    // Goes after the replies before it, in parts.
                    self.sending = Some(Outgoing::from_pieces(id, (), pieces));
                    break;
                }
            };
            match r.result {
                Some(response::Result::Reply(b)) if b.len() > tessera_proto::parts::PART_BYTES => {
                    // Goes after the replies before it, in parts.
                    self.sending = Outgoing::new(r.id, (), b).ok();
                    break;
                }
                Some(response::Result::Reply(ref b)) => bytes += b.len(),
                _ => {}
            }
            responses.push(r);
            if responses.len() < 1024 && bytes < tessera_proto::parts::PART_BYTES {
                next = self.rx.try_recv().ok();
            }
        }
        if responses.is_empty() {
            return Poll::Ready(self.next_part().map(Ok));
        }
        Poll::Ready(Some(Ok(ResponseBatch { responses })))
    }
}

/// Counts open sessions while it lives.
struct SessionGuard {
    peer: Option<std::net::SocketAddr>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("tessera_node_sessions").decrement(1.0);
        debug!(peer = ?self.peer, "session closed");
    }
}

async fn read_session(
    state: Arc<NodeState>,
    mut inbound: Streaming<RequestBatch>,
    out: mpsc::Sender<Out>,
    peer: Option<std::net::SocketAddr>,
) {
    // A lane serves one replica object: when the replica is reopened or
    // replaced, the next request starts a lane on the new one (the old lane
    // finishes what it has and exits).
    let mut lanes: HashMap<u32, (Arc<Shard>, LaneTx)> = HashMap::new();
    let mut joiner = Joiner::default();
    loop {
        let batch = match inbound.message().await {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                metrics::counter!("tessera_node_grpc_errors_total").increment(1);
                warn!(?peer, error = %e, "session stream failed");
                return;
            }
        };
        for r in batch.requests {
            let command = match r.total_len {
                0 => r.command,
                total => match joiner.add(r.id, total, &r.command) {
                    Ok(Some(whole)) => whole,
                    Ok(None) => continue,
                    Err(e) => {
                        let _ = out.send(response(r.id, 0, Outcome::Reply(Reply::err(e)))).await;
                        continue;
                    }
                },
            };
            match state.route(r.target, &command) {
                Err(outcome) => {
                    let _ = out.send(response(r.id, 0, outcome)).await;
                }
                Ok((shard, cmd)) => {
                    let current = lanes.get(&shard.id).is_some_and(|(s, _)| Arc::ptr_eq(s, &shard));
                    if !current {
                        let (tx, rx) = mpsc::channel(4096);
                        tokio::spawn(lane(shard.clone(), rx, out.clone()));
                        lanes.insert(shard.id, (shard.clone(), tx));
                    }
                    let (_, tx) = &lanes[&shard.id];
                    if tx.send((r.id, cmd)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

pub struct NodeService {
    pub state: Arc<NodeState>,
}

#[tonic::async_trait]
impl Node for NodeService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ResponseBatch, Status>> + Send>>;

    async fn session(&self, req: Request<Streaming<RequestBatch>>) -> Result<Response<Self::SessionStream>, Status> {
        let peer = req.remote_addr();
        debug!(?peer, "session opened");
        metrics::gauge!("tessera_node_sessions").increment(1.0);
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(read_session(self.state.clone(), req.into_inner(), tx, peer));
        Ok(Response::new(Box::pin(ResponseStream { rx, sending: None, _guard: SessionGuard { peer } })))
    }

    async fn shards(&self, _req: Request<ShardsRequest>) -> Result<Response<ShardsResponse>, Status> {
        let hosted = self.state.hosted();
        let shards = hosted
            .shards
            .iter()
            .map(|s| {
                let st = s.status();
                ShardInfo {
                    id: s.id,
                    slots: s
                        .ranges
                        .iter()
                        .map(|r| tessera_proto::v1::SlotRange { start: r.start.into(), end: r.end.into() })
                        .collect(),
                    members: st.members.into_iter().map(|(id, addr)| Member { id, addr }).collect(),
                    leader_id: st.leader.unwrap_or(0),
                    term: st.term,
                    commit_index: st.committed,
                    applied_index: st.applied,
                }
            })
            .collect();
        Ok(Response::new(ShardsResponse { node_id: self.state.node_id, shards }))
    }
}
