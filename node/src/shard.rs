//! One shard replica on this node: the slots it owns, its Raft group and the
//! state machine's data.
//!
//! Writes: precheck against the current state → propose (with the leader's
//! timestamp) → committed on a quorum (fsync'd logs) → applied → reply.
//! Reads: the leader confirms it still leads (its lease, or a read-index
//! round: `--read-policy`) and waits until its
//! state machine has applied everything committed before the read arrived,
//! then reads locally. A replica that is not the leader answers
//! [`Outcome::Redirect`] and executes nothing.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tessera_common::command::node::TxOp;
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;
use tessera_common::slot::SlotRange;

use crate::config::{Config, ReadMode};
use crate::disk::DiskGuard;
use crate::engine::registry::registry;
use crate::error::Error as NodeError;
use crate::raft::group::{Applied, Group, Pending, Unconfirmed};
use crate::raft::network::Peers;
use crate::raft::sm::{LocalWrites, ShardData};
use crate::raft::{NodeAddr, RaftConfig};
use crate::state::apply::{precheck, read};
use crate::state::chunks::CHUNK_BYTES;
use crate::state::meta::ClusterMap;
use crate::state::{LogOp, Proposal};
use crate::util::now_ms;

mod dag;
pub(crate) mod host;
mod run;
mod script;
mod tx;

/// A group's folder under the data dir.
pub fn group_dir(id: u32) -> String {
    if id == crate::state::meta::META {
        "meta".into()
    } else {
        format!("shard-{id}")
    }
}

/// Parts of a chunked write proposed ahead of the oldest one not yet
/// applied (32 MiB).
const CHUNK_WINDOW: usize = 8;

/// What a replica answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reply(Reply),
    /// An error this replica answers without logging anything.
    Error(NodeError),
    /// Not the leader: `(leader id, leader address)` when one is known.
    Redirect(Option<(u64, String)>),
}

/// What a model or script run came to.
enum Executed {
    /// Its outputs were proposed: the write's outcome.
    Written(Outcome),
    /// Answered without a logged write (an error, or no tensor outputs).
    Unwritten(Outcome),
}

impl Shard {
    /// Runs `run` (a model or script run) so that its answer is
    /// linearizable. A leader whose state is current reads without a
    /// quorum round first: the output write is fenced to its term, and its
    /// commit proves that no newer leader had acknowledged a write the run
    /// missed. An answer with no output written (an error, or a run with no
    /// outputs) gets the quorum round before it goes out instead.
    async fn fenced<F: std::future::Future<Output = Executed>>(&self, run: impl FnOnce(Option<u64>) -> F) -> Outcome {
        let fence = self.group.leading_applied_term();
        if fence.is_none() {
            if let Err(o) = self.confirm_read().await {
                return o;
            }
        }
        match run(fence).await {
            Executed::Written(o) => o,
            Executed::Unwritten(o) if fence.is_none() => o,
            Executed::Unwritten(o) => match self.confirm_read().await {
                Ok(()) => o,
                Err(not_here) => not_here,
            },
        }
    }

    /// Writes a run's outputs (fenced to `fence`), as one entry.
    async fn write_outputs(&self, cmd: NodeCommand, fence: Option<u64>) -> Executed {
        match self.submit_in(cmd, fence).await {
            // Refused before it was logged (by this replica's state).
            Submitted::Done(o @ (Outcome::Reply(_) | Outcome::Error(_))) => Executed::Unwritten(o),
            s => Executed::Written(self.finish(s).await),
        }
    }
}

/// The tensor a run reads from what its key holds (`value`), or RedisAI's
/// error for no key or a key of another type.
fn input_tensor(value: Option<&crate::data::keyspace::Value>) -> Result<tessera_common::tensor::Tensor, NodeError> {
    use crate::data::keyspace::Value;
    match value {
        Some(Value::Tensor(t)) => Ok(t.clone()),
        None => Err(NodeError::EmptyTensor),
        Some(_) => Err(tessera_common::error::Error::WrongType.into()),
    }
}

/// Garbage never enters the log: a model must load here before its store
/// is logged (the model loaded is returned, for the apply to use), and a
/// script must compile, with the entry points it names. Every replica
/// compiles a script again on apply.
async fn check_store(cmd: &NodeCommand) -> Result<Option<Arc<dyn tessera_backend::Model>>, NodeError> {
    let checked = match cmd {
        NodeCommand::ModelStore { model, .. } => {
            let def = model.clone();
            tokio::task::spawn_blocking(move || registry().load(&def, &def.blob).map(Some)).await
        }
        NodeCommand::ScriptStore { script, .. } => {
            let def = script.clone();
            tokio::task::spawn_blocking(move || registry().compile_script(&def).map(|_| None)).await
        }
        _ => return Ok(None),
    };
    checked.unwrap_or_else(|e| Err(NodeError::LoadFailed(e.to_string())))
}

/// A write that was handed to Raft (in submission order) and is in flight.
pub enum Submitted {
    Done(Outcome),
    Waiting(Pending),
}

pub struct Shard {
    pub id: u32,
    pub ranges: Vec<SlotRange>,
    /// The replica set the cluster layout assigns (reported until the group's
    /// own membership is known).
    pub placement: BTreeMap<u64, String>,
    pub group: Group,
    data: Arc<Mutex<ShardData>>,
    /// Highest timestamp handed to a proposal.
    last_ts: AtomicI64,
    /// Refuses writes that would fill the data disk.
    disk: Arc<DiskGuard>,
    /// Chunked writes this replica proposed, until they apply here.
    local: LocalWrites,
}

/// A point-in-time view for INFO, `Shards` and metrics.
#[derive(Clone, Debug, Default)]
pub struct ShardStatus {
    pub keys: usize,
    pub value_bytes: usize,
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    pub members: BTreeMap<u64, String>,
}

impl Shard {
    /// Opens this node's replica of group `id` (log and state machine under
    /// `<data dir>/shard-<id>`, or `meta`) and starts its Raft. `placement` is
    /// the replica set the map assigns (reported until the group's own
    /// membership is known).
    pub async fn open(
        id: u32,
        ranges: Vec<SlotRange>,
        placement: BTreeMap<u64, String>,
        node: &Config,
        raft: Arc<RaftConfig>,
        peers: Peers,
        disk: Arc<DiskGuard>,
    ) -> io::Result<Arc<Shard>> {
        let dir = node.data_dir.join(group_dir(id));
        let lease = (node.read_mode == ReadMode::Lease, node.dag_read_mode == ReadMode::Lease);
        let (group, data, local) = Group::open(node.node_id, id, &dir, group_dir(id), raft, peers, lease).await?;
        let last_ts = data.lock().last_ts;
        Ok(Arc::new(Shard { id, ranges, placement, group, data, local, last_ts: AtomicI64::new(last_ts), disk }))
    }

    /// Whether a storage error (or shutdown) stopped this replica's Raft.
    pub fn stopped(&self) -> Option<String> {
        self.group.stopped()
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(slot))
    }

    /// Forms the group with `members` if it has never been initialized.
    pub async fn bootstrap(&self, members: BTreeMap<u64, NodeAddr>) -> io::Result<()> {
        self.group.bootstrap(members).await
    }

    fn next_ts(&self) -> i64 {
        let now = now_ms();
        let prev = self.last_ts.fetch_max(now, Ordering::Relaxed);
        prev.max(now)
    }

    /// Hands a write to Raft. Returns once it is queued in the group, so
    /// writes submitted one after another are logged in that order.
    pub async fn submit(&self, cmd: NodeCommand) -> Submitted {
        self.submit_in(cmd, None).await
    }

    /// [`submit`](Self::submit), fenced to leadership `term` when given
    /// (see [`LogOp::Fenced`]).
    async fn submit_in(&self, mut cmd: NodeCommand, fence: Option<u64>) -> Submitted {
        // Laid out for its runtime in the buffer it arrived in, if it is the
        // buffer's only user (so that the check below copies nothing);
        // logged as the same bytes.
        if matches!(&cmd, NodeCommand::ModelStore { model, .. } if model.blob.len() > crate::util::HEAVY_BYTES) {
            cmd = crate::util::heavy_off(cmd, crate::engine::model::arrange_command).await;
        }
        let loaded = match check_store(&cmd).await {
            Ok(m) => m,
            Err(e) => return Submitted::Done(Outcome::Error(e)),
        };
        if let NodeCommand::Multi(tx) = &mut cmd {
            // (A store in a transaction that would fail answers its error
            // in its place in EXEC's reply; the others still run.)
            for op in &mut tx.ops {
                if let TxOp::Run(c) = op {
                    if let Err(e) = check_store(c).await {
                        *op = TxOp::Refused(e.to_string());
                    }
                }
            }
        }
        if let Some(rejected) = precheck(&self.data.lock().ks, &cmd, now_ms()) {
            return Submitted::Done(Outcome::Error(rejected));
        }
        let op = match fence {
            Some(term) => LogOp::Fenced { term, cmd },
            None => LogOp::Command(cmd),
        };
        let size = crate::state::encoded_size(&op);
        if let Some(full) = self.disk.check(size) {
            return Submitted::Done(Outcome::Error(full));
        }
        if size <= CHUNK_BYTES {
            if let (Some(m), LogOp::Command(NodeCommand::ModelStore { model, .. })) = (loaded, &op) {
                registry().prepare(model, m);
            }
            return self.propose(op).await;
        }
        // Too large for one entry: logged in bounded parts, in order; the
        // last part applies the whole, and its outcome is the write's. The
        // parts share the model's bytes, and this replica applies the write
        // as it is here, with the model as loaded above (`LocalWrite`): a
        // leader holds a model it stores once.
        let (parts, op) = crate::util::heavy_off(op, |op| (crate::state::encode_parts(&op, CHUNK_BYTES), op)).await;
        let (id, count) = (rand::random::<u64>(), parts.len() as u32);
        self.local.insert(id, op, loaded);
        // At most CHUNK_WINDOW parts in flight: until it is written, each is
        // encoded once more for the log file (and for each follower), so a
        // large write proposed all at once would be held about twice.
        let mut in_flight = std::collections::VecDeque::new();
        for (part, data) in (0..count).zip(parts) {
            match self.propose(LogOp::Chunk { id, part, parts: count, data }).await {
                Submitted::Waiting(rx) => in_flight.push_back(rx),
                done => {
                    self.local.remove(id);
                    return done;
                }
            }
            // The last part's outcome is the write's: the caller waits for it.
            let last = part + 1 == count;
            while in_flight.len() > if last { 1 } else { CHUNK_WINDOW } {
                let rx = in_flight.pop_front().expect("a part is in flight");
                match self.outcome(rx).await {
                    Outcome::Reply(Reply::Null) => {}
                    failed => {
                        self.local.remove(id);
                        return Submitted::Done(failed);
                    }
                }
            }
        }
        metrics::counter!("tessera_node_chunked_writes_total").increment(1);
        Submitted::Waiting(in_flight.pop_front().expect("the last part is in flight"))
    }

    /// Proposes `op` and waits for its outcome.
    pub async fn write_op(&self, op: LogOp) -> Outcome {
        let s = self.propose(op).await;
        self.finish(s).await
    }

    async fn propose(&self, op: LogOp) -> Submitted {
        let proposal = Proposal { ts: self.next_ts(), op };
        match self.group.propose(proposal).await {
            Ok(p) => Submitted::Waiting(p),
            // This replica's Raft has stopped (the node is shutting down, or
            // a storage error stopped it): the write was never proposed.
            Err(fatal) => {
                tracing::debug!(shard = self.id, error = %fatal, "write refused by a stopped replica");
                Submitted::Done(self.not_here())
            }
        }
    }

    /// The answer of a replica that cannot serve a command and did not run
    /// it (its Raft stopped, or it cannot confirm its leadership): the
    /// leader it knows of, when that is another replica, else none, so the
    /// router follows the redirect or tries the shard's other replicas.
    /// Never a fatal error: nothing ran here, so the command is safe to
    /// send again.
    fn not_here(&self) -> Outcome {
        let me = self.group.me();
        Outcome::Redirect(self.leader().filter(|(id, _)| *id != me))
    }

    /// The outcome of a submitted write.
    pub async fn finish(&self, s: Submitted) -> Outcome {
        match s {
            Submitted::Done(o) => o,
            // A deliberately broken build for the chaos harness to catch:
            // the write is acknowledged once it is queued, before Raft has
            // committed (or even logged) it. Never in a default build.
            #[cfg(feature = "chaos-early-ack")]
            Submitted::Waiting(p) => {
                tokio::spawn(p.applied());
                Outcome::Reply(Reply::ok())
            }
            #[cfg(not(feature = "chaos-early-ack"))]
            Submitted::Waiting(rx) => self.outcome(rx).await,
        }
    }

    /// What Raft answers for a proposal once it applied.
    async fn outcome(&self, p: Pending) -> Outcome {
        match p.applied().await {
            Applied::Reply(r) => Outcome::Reply(r),
            Applied::Forward(leader) => Outcome::Redirect(leader),
            // An entry this replica logged was replaced (never committed)
            // or purged under a snapshot (committed or not): unknown here.
            Applied::Unknown(why) => Outcome::Error(NodeError::WriteUnknown { shard: self.id, why }),
            // The replica stopped (or lost the entry) before it applied.
            Applied::Lost => Outcome::Error(NodeError::WriteLost(self.id)),
        }
    }

    /// A linearizable read.
    pub async fn read(&self, cmd: &NodeCommand) -> Outcome {
        match self.confirm_read().await {
            Ok(()) => {
                let chunk = registry().model_chunk_size();
                Outcome::Reply(read(&self.data.lock().ks, cmd, now_ms(), chunk))
            }
            Err(o) => o,
        }
    }

    /// [`Shard::confirm_read`] for a read-only DAG (its own policy).
    async fn confirm_dag_read(&self) -> Result<(), Outcome> {
        self.group.confirm_dag_read().await.map_err(|u| self.unconfirmed(u))
    }

    /// Whether this replica may serve a linearizable read now. A replica
    /// that cannot say (no quorum answered in time, its Raft stopped) has
    /// read nothing: it answers as one that is not the leader.
    async fn confirm_read(&self) -> Result<(), Outcome> {
        self.group.confirm_read().await.map_err(|u| self.unconfirmed(u))
    }

    /// The answer of a replica that could not confirm a read.
    fn unconfirmed(&self, u: Unconfirmed) -> Outcome {
        match u {
            Unconfirmed::Forward(leader) => Outcome::Redirect(leader),
            Unconfirmed::Other(e) => {
                tracing::debug!(shard = self.id, error = %e, "read not confirmed");
                self.not_here()
            }
        }
    }

    /// On the leader, logs a purge of expired keys once a deadline has passed.
    pub async fn purge_expired(&self) {
        let due = self.data.lock().ks.next_expiry().is_some_and(|t| t <= now_ms());
        if due && self.group.is_leader() {
            let s = self.propose(LogOp::PurgeExpired).await;
            if let Outcome::Reply(Reply::Int(n)) = self.finish(s).await {
                metrics::counter!("tessera_node_expired_keys_total").increment(n as u64);
            }
        }
    }

    pub fn status(&self) -> ShardStatus {
        let v = self.group.view();
        let d = self.data.lock();
        ShardStatus {
            keys: d.ks.len(),
            value_bytes: d.ks.value_bytes(),
            leader: v.leader,
            is_leader: v.is_leader,
            term: v.term,
            last_log_index: v.last_log_index,
            committed: v.committed,
            applied: v.applied,
            // Until the group's membership comes from its log, report the
            // layout's replica set (an unformed group lists only itself).
            members: v.members.unwrap_or_else(|| self.placement.clone()),
        }
    }

    /// The cluster map as this replica has applied it (meta group only);
    /// linearizable when `fresh` (a read-index round on the leader).
    pub async fn map(&self, fresh: bool) -> Result<ClusterMap, Outcome> {
        if fresh {
            match self.group.confirm_leadership().await {
                Ok(()) => {}
                Err(Unconfirmed::Forward(leader)) => return Err(Outcome::Redirect(leader)),
                Err(Unconfirmed::Other(e)) => return Err(Outcome::Error(NodeError::MetaUnconfirmed(e))),
            }
        }
        Ok(self.data.lock().map.clone())
    }

    /// The cluster's users (meta group only), read linearizably.
    pub async fn users(&self) -> Result<crate::state::users::Users, Outcome> {
        self.confirm_read().await?;
        Ok(self.data.lock().users.clone())
    }

    /// The version of the users as applied here (meta group only).
    pub fn users_version(&self) -> u64 {
        self.data.lock().users.version
    }

    /// The cluster map as applied here (meta group only; may lag the leader).
    pub fn data_map(&self) -> ClusterMap {
        self.data.lock().map.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.group.is_leader()
    }

    /// The leader this replica knows of, with its address.
    pub fn leader(&self) -> Option<(u64, String)> {
        self.group.leader()
    }
}
