//! The slot → shard → node map: shard ranges, the nodes holding each
//! shard's replicas, the leader last seen for each, the refresher that keeps
//! them current, and sending a command to a shard's leader with bounded
//! retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tessera_common::reply::Reply;
use tessera_common::slot::{SlotRange, SLOTS};
use tessera_proto::v1::{request, ShardsRequest, ShardsResponse};
use tracing::{info, warn};

use crate::backend::{endpoint, grpc, NodeClient, NodeReply};
use crate::error::Error;

/// Where each slot lives: shard ranges, the nodes holding each shard's
/// replicas and the leader last seen for it.
pub struct ShardMap {
    /// Every node seen so far (append-only: indexes stay valid). Nodes
    /// added to the cluster later are learned from the replica sets.
    nodes: RwLock<Vec<Arc<NodeClient>>>,
    /// Replaced whole when the refresher learns a shard (a router started
    /// before the cluster formed serves its slots once it has).
    layout: RwLock<Arc<Layout>>,
    /// The meta group (it keeps the cluster's users), once a node hosting
    /// it has answered.
    meta: RwLock<Option<Arc<ShardEntry>>>,
    /// The newest users version a meta replica reported, and its change.
    users_seen: tokio::sync::watch::Sender<u64>,
}

/// The meta group's id (as the nodes number it).
pub const META: u32 = u32::MAX;

/// The shards known so far and which of them owns each slot.
pub struct Layout {
    pub shards: Vec<Arc<ShardEntry>>,
    /// slot → index into `shards`.
    by_slot: Vec<Option<u32>>,
}

impl Layout {
    fn new(mut shards: Vec<Arc<ShardEntry>>) -> Layout {
        shards.sort_by_key(|s| s.ranges.first().map(|r| r.start));
        let mut by_slot = vec![None; usize::from(SLOTS)];
        for (i, s) in shards.iter().enumerate() {
            for r in &s.ranges {
                for slot in r.start..=r.end {
                    by_slot[usize::from(slot)] = Some(i as u32);
                }
            }
        }
        Layout { shards, by_slot }
    }

    pub fn shard_of(&self, slot: u16) -> Option<&Arc<ShardEntry>> {
        self.by_slot.get(usize::from(slot)).copied().flatten().map(|i| &self.shards[i as usize])
    }

    pub fn unserved_slots(&self) -> usize {
        self.by_slot.iter().filter(|s| s.is_none()).count()
    }
}

#[derive(Debug)]
pub struct ShardEntry {
    pub id: u32,
    pub ranges: Vec<SlotRange>,
    /// Indexes into `ShardMap::nodes` of the replicas (refreshed from the nodes).
    pub replicas: RwLock<Vec<usize>>,
    /// Index into `ShardMap::nodes` of the leader last seen (a hint).
    pub leader: AtomicUsize,
    /// What each replica last reported (for `INFO replication`), by node index.
    pub reports: Mutex<HashMap<usize, ReplicaReport>>,
}

impl ShardEntry {
    /// An entry for shard `s` as one node (`reporter`) described it.
    fn new(s: &tessera_proto::v1::ShardInfo, mut replicas: Vec<usize>, reporter: usize, leader: usize) -> ShardEntry {
        let ranges = s
            .slots
            .iter()
            .filter(|r| r.start <= r.end && r.end < u32::from(SLOTS))
            .map(|r| SlotRange::new(r.start as u16, r.end as u16))
            .collect();
        if replicas.is_empty() {
            replicas.push(reporter);
        }
        ShardEntry {
            id: s.id,
            ranges,
            replicas: RwLock::new(replicas),
            leader: AtomicUsize::new(leader),
            reports: Mutex::default(),
        }
    }
}

/// One replica's view of its group, as the refresher last saw it.
#[derive(Clone, Debug, Default)]
pub struct ReplicaReport {
    pub leader_id: u64,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

/// How long one command keeps following redirects and trying other replicas
/// (longer than an election), and the pause between rounds while a shard has
/// no leader.
const RETRY_BUDGET: Duration = Duration::from_secs(6);
const NO_LEADER_PAUSE: Duration = Duration::from_millis(50);
/// How long a node may take to answer one (small) request before the router
/// gives up on it (a paused or partitioned node never answers); large
/// requests get more.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a model or script run may take (queued and running) before the
/// router takes its node as gone: a run is not small, and a node that is
/// busy running one still answers its other requests.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

impl ShardMap {
    /// Asks every node which shards it hosts (retrying until `deadline`) and
    /// starts a session to each.
    pub async fn discover(addrs: &[String], deadline: Duration) -> anyhow::Result<ShardMap> {
        let start = tokio::time::Instant::now();
        loop {
            let answers = Self::ask_all(addrs, deadline.saturating_sub(start.elapsed())).await?;
            // Nodes open their replicas once the cluster map is formed: a
            // cluster starting up may not serve every slot yet.
            let mut served = vec![false; usize::from(SLOTS)];
            for r in answers.iter().flat_map(|(_, a)| &a.shards).flat_map(|s| &s.slots) {
                for slot in r.start..=r.end.min(u32::from(SLOTS) - 1) {
                    served[slot as usize] = true;
                }
            }
            if served.iter().all(|s| *s) || start.elapsed() >= deadline {
                return Ok(Self::build(addrs, answers));
            }
            tracing::debug!("waiting for every slot to be served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Each node's `Shards` answer (retrying each until `deadline`).
    async fn ask_all(addrs: &[String], deadline: Duration) -> anyhow::Result<Vec<(String, ShardsResponse)>> {
        let start = tokio::time::Instant::now();
        let mut answers = Vec::new();
        for addr in addrs {
            let resp = loop {
                let attempt = async {
                    let ch = tessera_proto::tls::channel(endpoint(addr)?).await?;
                    anyhow::Ok(grpc(ch).shards(ShardsRequest {}).await?.into_inner())
                };
                match attempt.await {
                    Ok(r) => break Some(r),
                    Err(e) if start.elapsed() < deadline => {
                        tracing::debug!(node = %addr, error = %e, "node not ready");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        warn!(node = %addr, error = %e, "node did not answer; continuing without it for now");
                        break None;
                    }
                }
            };
            answers.extend(resp.map(|r| (addr.clone(), r)));
        }
        if answers.is_empty() {
            anyhow::bail!("no storage node answered within {deadline:?}");
        }
        Ok(answers)
    }

    /// The map the nodes' answers describe, with a session to each node.
    fn build(addrs: &[String], answers: Vec<(String, ShardsResponse)>) -> ShardMap {
        let mut nodes: Vec<Arc<NodeClient>> = addrs.iter().map(|a| NodeClient::spawn(a.clone())).collect();
        let index = |nodes: &mut Vec<Arc<NodeClient>>, addr: &str| -> usize {
            nodes.iter().position(|n| n.addr == addr).unwrap_or_else(|| {
                nodes.push(NodeClient::spawn(addr.to_owned()));
                nodes.len() - 1
            })
        };
        let mut shards: Vec<Arc<ShardEntry>> = Vec::new();
        for (addr, resp) in &answers {
            let me = index(&mut nodes, addr);
            for s in &resp.shards {
                let replicas: Vec<usize> = s.members.iter().map(|m| index(&mut nodes, &m.addr)).collect();
                if let Some(known) = shards.iter().find(|e| e.id == s.id) {
                    // Keep the widest view of the replica set any node gave.
                    if replicas.len() > known.replicas.read().len() {
                        *known.replicas.write() = replicas;
                    }
                    continue;
                }
                let leader = s.members.iter().find(|m| m.id == s.leader_id).map_or(me, |m| index(&mut nodes, &m.addr));
                shards.push(Arc::new(ShardEntry::new(s, replicas, me, leader)));
            }
        }
        let map = Self::new(nodes, shards);
        for (addr, resp) in &answers {
            let reporter = map.node_index_or_add(addr);
            map.learn_meta(resp, reporter);
        }
        map
    }

    pub fn new(nodes: Vec<Arc<NodeClient>>, shards: Vec<Arc<ShardEntry>>) -> ShardMap {
        ShardMap {
            nodes: RwLock::new(nodes),
            layout: RwLock::new(Arc::new(Layout::new(shards))),
            meta: RwLock::new(None),
            users_seen: tokio::sync::watch::Sender::new(0),
        }
    }

    /// What one node's answer says of the meta group: its replicas and
    /// leader (the answer from a replica that knows a leader in the newest
    /// term wins, as for shards), and the users version it has applied.
    fn learn_meta(&self, resp: &ShardsResponse, reporter: usize) {
        self.users_seen.send_if_modified(|v| {
            let newer = resp.users_version > *v;
            *v = (*v).max(resp.users_version);
            newer
        });
        let Some(m) = resp.meta.as_ref() else { return };
        let replicas: Vec<usize> =
            m.members.iter().filter(|x| !x.addr.is_empty()).map(|x| self.node_index_or_add(&x.addr)).collect();
        let leader = m.members.iter().find(|x| x.id == m.leader_id).and_then(|x| self.node_index(&x.addr));
        let mut meta = self.meta.write();
        let Some(entry) = meta.as_ref() else {
            *meta = Some(Arc::new(ShardEntry::new(m, replicas, reporter, leader.unwrap_or(reporter))));
            return;
        };
        let report = ReplicaReport {
            leader_id: m.leader_id,
            term: m.term,
            commit_index: m.commit_index,
            applied_index: m.applied_index,
        };
        let newest = entry.reports.lock().values().all(|r| (m.term, m.commit_index) >= (r.term, r.commit_index));
        entry.reports.lock().insert(reporter, report);
        if let (Some(leader), true) = (leader, newest) {
            if !replicas.is_empty() && replicas.len() == m.members.len() {
                *entry.replicas.write() = replicas;
            }
            entry.leader.store(leader, Ordering::Relaxed);
        }
    }

    /// The meta group's entry, once known.
    pub fn meta(&self) -> Option<Arc<ShardEntry>> {
        self.meta.read().clone()
    }

    /// The newest users version the meta replicas reported (watch it to
    /// learn of changes).
    pub fn users_seen(&self) -> tokio::sync::watch::Receiver<u64> {
        self.users_seen.subscribe()
    }

    /// Sends a command to the meta group's leader (`read_only`: may be sent
    /// again when its outcome is unknown).
    pub async fn call_meta(&self, command: Bytes, read_only: bool) -> Reply {
        match self.meta() {
            Some(m) => self.call(&m, request::Target::Shard(META), command, read_only, false, false).await,
            None => Reply::err("CLUSTERDOWN no storage node hosting the meta group has answered yet"),
        }
    }

    pub fn layout(&self) -> Arc<Layout> {
        self.layout.read().clone()
    }

    pub fn shards(&self) -> Vec<Arc<ShardEntry>> {
        self.layout().shards.clone()
    }

    fn shard(&self, id: u32) -> Option<Arc<ShardEntry>> {
        self.layout().shards.iter().find(|e| e.id == id).cloned()
    }

    /// Adds a shard the nodes report that this router has not seen (its
    /// slots were unserved), unless its slots overlap a known shard's.
    fn learn_shard(&self, s: &tessera_proto::v1::ShardInfo, reporter: usize) {
        let replicas: Vec<usize> =
            s.members.iter().filter(|m| !m.addr.is_empty()).map(|m| self.node_index_or_add(&m.addr)).collect();
        let leader =
            s.members.iter().find(|m| m.id == s.leader_id).and_then(|m| self.node_index(&m.addr)).unwrap_or(reporter);
        let entry = ShardEntry::new(s, replicas, reporter, leader);
        let mut layout = self.layout.write();
        if layout.shards.iter().any(|e| e.id == s.id)
            || entry.ranges.iter().any(|r| (r.start..=r.end).any(|slot| layout.shard_of(slot).is_some()))
        {
            return;
        }
        info!(shard = s.id, ranges = ?entry.ranges, "new shard: its slots are served from now on");
        let mut shards = layout.shards.clone();
        shards.push(Arc::new(entry));
        *layout = Arc::new(Layout::new(shards));
    }

    /// Waits until at least one replica of every shard has a session (or
    /// `deadline` passes).
    pub async fn wait_connected(&self, deadline: Duration) -> anyhow::Result<()> {
        let start = tokio::time::Instant::now();
        while let Some(s) =
            self.shards().iter().find(|s| !s.replicas.read().iter().any(|r| self.node(*r).is_connected()))
        {
            if start.elapsed() > deadline {
                anyhow::bail!("no session to any replica of shard {} within {deadline:?}", s.id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Refreshes replica sets and leader hints from the nodes, forever.
    pub async fn refresh_loop(self: Arc<Self>, every: Duration) {
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(every).await;
            }
            // Ask every node at once: a dead one costs one timeout, not one each.
            let asks = (0..self.node_count()).map(|node| {
                let addr = self.node(node).addr.clone();
                async move {
                    let answer = async {
                        let ch = tessera_proto::tls::channel(endpoint(&addr)?).await?;
                        anyhow::Ok(grpc(ch).shards(ShardsRequest {}).await?.into_inner())
                    };
                    (node, tokio::time::timeout(every, answer).await)
                }
            });
            // Per shard, believe the replica that knows a leader in the
            // newest term (then the furthest commit): a leader cut off from
            // its group still claims to lead, in an older term.
            let mut best: HashMap<u32, tessera_proto::v1::ShardInfo> = HashMap::new();
            for (node, answer) in futures::future::join_all(asks).await {
                let Ok(Ok(resp)) = answer else {
                    continue;
                };
                self.learn_meta(&resp, node);
                for s in resp.shards {
                    let Some(entry) = self.shard(s.id) else {
                        self.learn_shard(&s, node);
                        continue;
                    };
                    entry.reports.lock().insert(
                        node,
                        ReplicaReport {
                            leader_id: s.leader_id,
                            term: s.term,
                            commit_index: s.commit_index,
                            applied_index: s.applied_index,
                        },
                    );
                    // Only replicas that know a leader count (an isolated
                    // candidate's term climbs with no leader behind it).
                    let newer = best.get(&s.id).is_none_or(|b| (s.term, s.commit_index) > (b.term, b.commit_index));
                    if s.leader_id != 0 && newer {
                        best.insert(s.id, s);
                    }
                }
            }
            for (id, s) in best {
                let Some(entry) = self.shard(id) else {
                    continue;
                };
                let replicas: Vec<usize> =
                    s.members.iter().filter(|m| !m.addr.is_empty()).map(|m| self.node_index_or_add(&m.addr)).collect();
                if !replicas.is_empty() && s.members.len() == replicas.len() {
                    *entry.replicas.write() = replicas;
                }
                if let Some(leader) = s.members.iter().find(|m| m.id == s.leader_id) {
                    if let Some(i) = self.node_index(&leader.addr) {
                        entry.leader.store(i, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    pub fn unserved_slots(&self) -> usize {
        self.layout().unserved_slots()
    }

    pub fn shard_of(&self, slot: u16) -> Option<Arc<ShardEntry>> {
        self.layout().shard_of(slot).cloned()
    }

    fn node_index(&self, addr: &str) -> Option<usize> {
        self.nodes.read().iter().position(|n| n.addr == addr)
    }

    /// The index of the node at `addr`, connecting to it if it is new.
    fn node_index_or_add(&self, addr: &str) -> usize {
        if let Some(i) = self.node_index(addr) {
            return i;
        }
        let mut nodes = self.nodes.write();
        if let Some(i) = nodes.iter().position(|n| n.addr == addr) {
            return i;
        }
        info!(node = %addr, "new storage node");
        nodes.push(NodeClient::spawn(addr.to_owned()));
        nodes.len() - 1
    }

    pub fn node(&self, i: usize) -> Arc<NodeClient> {
        self.nodes.read()[i].clone()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.read().len()
    }

    pub fn nodes(&self) -> Vec<Arc<NodeClient>> {
        self.nodes.read().clone()
    }

    /// Sends a keyed command to the leader of the shard owning `slot`.
    /// `read_only` commands are retried on another replica after a timeout;
    /// writes are not (their outcome is unknown).
    /// Sends a command to the shard owning `slot`: its leader, or when
    /// `spread`, each replica in turn (a read-only DAG a follower may serve).
    pub async fn call_slot(&self, slot: u16, command: Bytes, read_only: bool, runs: bool, spread: bool) -> Reply {
        match self.shard_of(slot) {
            Some(s) => {
                let target = request::Target::Slot(u32::from(slot));
                self.call(&s, target, command, read_only, runs, spread).await
            }
            None => Error::NotServed.into(),
        }
    }

    /// Sends a command to one shard's leader.
    pub async fn call_shard(&self, shard: &ShardEntry, command: Bytes, read_only: bool) -> Reply {
        self.call(shard, request::Target::Shard(shard.id), command, read_only, false, false).await
    }

    /// Sends to the cached leader, following redirects and moving to another
    /// replica when a node is unreachable, for a bounded time. Only requests
    /// that provably did not run (or reads) are sent again.
    async fn call(
        &self,
        shard: &ShardEntry,
        target: request::Target,
        command: Bytes,
        read_only: bool,
        runs: bool,
        spread: bool,
    ) -> Reply {
        let start = tokio::time::Instant::now();
        // Large values take longer to replicate and fsync: 1 s more per 4 MB.
        let base = if runs { RUN_TIMEOUT } else { REQUEST_TIMEOUT };
        let timeout = base + Duration::from_millis(command.len() as u64 / 4_000);
        let leader = shard.leader.load(Ordering::Relaxed);
        let mut node = leader;
        // A read-only DAG goes to the next replica in turn if it is
        // connected; if that one does not answer, to the leader (it is safe
        // to send again: it changes nothing).
        let mut spread = spread;
        if spread {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let replicas = shard.replicas.read();
            match replicas.get(NEXT.fetch_add(1, Ordering::Relaxed) % replicas.len().max(1)) {
                Some(r) if self.node(*r).is_connected() => node = *r,
                _ => spread = false,
            }
        }
        let mut last = String::new();
        let mut tries = 0usize;
        let mut down: Vec<usize> = Vec::new();
        // The replica set is re-read on every try: the refresher may learn it
        // (or a change of it) while this command is waiting out an election.
        let next_replica = |node: usize| {
            let replicas = shard.replicas.read();
            let pos = replicas.iter().position(|r| *r == node).unwrap_or(0);
            replicas[(pos + 1) % replicas.len()]
        };
        // Large commands also get longer to find a leader: 1 s more per 8 MB.
        let budget = RETRY_BUDGET + Duration::from_millis(command.len() as u64 / 8_000);
        while start.elapsed() < budget {
            tries += 1;
            let (rx, progress) = self.node(node).call_watched(target, command.clone());
            let wait_for = if spread { timeout.min(REQUEST_TIMEOUT) } else { timeout };
            let reply = match wait(rx, wait_for, &progress).await {
                // (A follower's answer leaves the leader hint as it is.)
                Ok(Ok(NodeReply::Reply(r))) if spread => return r,
                // A follower that did not answer in time, or whose session
                // ended: the leader's turn.
                Ok(Ok(NodeReply::Lost(_)) | Err(_)) | Err(_) if spread => {
                    spread = false;
                    node = leader;
                    continue;
                }
                Ok(r) => {
                    // (A redirect from a follower is followed as any is.)
                    spread = false;
                    r.unwrap_or_else(|_| NodeReply::Lost(Error::RequestDropped))
                }
                Err(_) => {
                    // The node is paused or cut off; look elsewhere next time
                    // (not for a run that outlasted its wait: its node may be
                    // well, and busy).
                    metrics::counter!("tessera_router_node_timeouts_total").increment(1);
                    let addr = self.node(node).addr.clone();
                    if !runs {
                        node = next_replica(node);
                        shard.leader.store(node, Ordering::Relaxed);
                    }
                    if !read_only {
                        return Error::NodeTimedOut { addr, after: timeout }.into();
                    }
                    last = format!("node {addr} timed out");
                    continue;
                }
            };
            tracing::debug!(shard = shard.id, node = %self.node(node).addr, ?reply, tries, "node answer");
            match &reply {
                NodeReply::Reply(r) => {
                    let r = r.clone();
                    shard.leader.store(node, Ordering::Relaxed);
                    return r;
                }
                // Sent, then the session ended: a write may have run, so
                // only the client can decide; a read is asked again elsewhere.
                NodeReply::Lost(why) if !read_only => return why.clone().into(),
                NodeReply::Lost(why) => {
                    last = why.to_string();
                    down.push(node);
                    node = next_replica(node);
                }
                // A redirect to a node that was just unreachable names a
                // leader that is gone: the replicas have yet to elect another.
                NodeReply::Redirect(Some((_, addr)))
                    if self.node_index(addr).is_some_and(|i| i != node && !down.contains(&i)) =>
                {
                    node = self.node_index(addr).expect("checked");
                    metrics::counter!("tessera_router_redirects_total").increment(1);
                    last = format!("redirected to {addr}");
                    // Replicas redirecting to each other (a leadership
                    // transfer under way): pause after each round of them.
                    if tries.is_multiple_of(shard.replicas.read().len().max(1)) {
                        tokio::time::sleep(NO_LEADER_PAUSE).await;
                    }
                }
                NodeReply::Redirect(_) | NodeReply::Unreachable(_) => {
                    // No leader known (an election) or the node is down: try
                    // the next replica, pausing after each full round.
                    if matches!(reply, NodeReply::Unreachable(_)) && !down.contains(&node) {
                        down.push(node);
                    }
                    last = "no leader".into();
                    node = next_replica(node);
                    if tries.is_multiple_of(shard.replicas.read().len().max(1)) {
                        tokio::time::sleep(NO_LEADER_PAUSE).await;
                    }
                }
            }
        }
        Error::NoLeader { shard: shard.id, last }.into()
    }
}

/// Waits for a node's reply for `timeout` since the last sign of progress:
/// a long reply (a large MODELGET) that keeps arriving in parts is not cut
/// off, a node that sends nothing is.
async fn wait(
    mut rx: tokio::sync::oneshot::Receiver<NodeReply>,
    timeout: Duration,
    progress: &std::sync::atomic::AtomicU64,
) -> Result<Result<NodeReply, tokio::sync::oneshot::error::RecvError>, tokio::time::error::Elapsed> {
    let mut seen = 0;
    loop {
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(r) => return Ok(r),
            Err(elapsed) => match progress.load(Ordering::Relaxed) {
                now if now == seen => return Err(elapsed),
                now => seen = now,
            },
        }
    }
}
