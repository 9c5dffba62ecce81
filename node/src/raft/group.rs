//! One Raft group as the rest of the node sees it: open it, propose an
//! entry and learn what became of it, confirm a read, look at its leader
//! and members, change its membership. Every openraft call the node makes
//! goes through here, so nothing above this module names an openraft type.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::linearizable_read::Linearizer;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::OneshotReceiverOf;
use openraft::{ChangeMembers, LinearizerOption, RaftMetrics, ReadPolicy, ServerState};
use parking_lot::Mutex;
use tessera_common::reply::Reply;

use super::network::{NetworkFactory, Peers};
use super::read_gate::ReadGate;
use super::sm::{LocalWrites, Raft, ShardData, StateMachine};
use super::store::LogStore;
use super::types::{NodeAddr, C};
use super::RaftConfig;
use crate::error::Error as NodeError;
use crate::state::Proposal;

/// How long adding a learner waits for it to catch up (within the admin
/// step budget).
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(45);

/// A leader this replica knows of: its id and address, when it knows them.
pub type Leader = Option<(u64, String)>;

/// One group's Raft on this node (cheap to clone).
#[derive(Clone)]
pub struct Group {
    id: u32,
    raft: Raft,
    /// This node's links to the others (a follower read asks the leader).
    peers: Peers,
    /// Lease reads instead of read-index rounds (`--read-policy lease`).
    lease: bool,
    /// The same for read-only DAGs (`--dag-read-policy lease`).
    dag_lease: bool,
    /// How recent a quorum's acknowledgement must be for a lease read
    /// ([`Group::lease_option`]).
    lease_age: Duration,
    /// Reads that arrive together share one confirmation.
    reads: Arc<ReadGate<Linearizer<C>, Unconfirmed>>,
}

/// An entry handed to Raft, not yet applied.
pub struct Pending(OneshotReceiverOf<C, ClientWriteResult<C>>);

/// What became of a proposed entry.
pub enum Applied {
    /// Applied: the state machine's answer.
    Reply(Reply),
    /// This replica is not the leader: nothing was logged.
    Forward(Leader),
    /// The entry was logged here, then replaced or purged: whether it was
    /// committed is unknown here. Says why.
    Unknown(String),
    /// The replica stopped (or lost leadership) before it applied.
    Lost,
}

/// Why a read could not be confirmed, from openraft's error.
fn unconfirmed(e: RaftError<C, LinearizableReadError<C>>) -> Unconfirmed {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => Unconfirmed::Forward(forward(&f)),
        e => Unconfirmed::Other(e.to_string()),
    }
}

/// Why a read (or leadership) could not be confirmed.
#[derive(Clone)]
pub enum Unconfirmed {
    /// Another replica leads (or none is known).
    Forward(Leader),
    /// No quorum answered in time, or the replica stopped. Says why.
    Other(String),
}

/// The group as a point-in-time view (INFO, `Shards`, metrics).
#[derive(Clone, Debug, Default)]
pub struct View {
    pub leader: Option<u64>,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// The members of its membership, once that comes from the log.
    pub members: Option<BTreeMap<u64, String>>,
}

fn forward(f: &ForwardToLeader<C>) -> Leader {
    f.leader_id.map(|id| (id, f.leader_node.as_ref().map(|n| n.addr.clone()).unwrap_or_default()))
}

/// On a leader: the last log index replica `id` is known to hold.
fn matched_index(m: &RaftMetrics<C>, id: u64) -> Option<u64> {
    m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
}

impl Group {
    /// Opens the log and state machine in `dir` and starts the group's Raft;
    /// the state machine's data and the chunked writes this replica
    /// proposes come back with it.
    pub async fn open(
        node_id: u64,
        id: u32,
        dir: &Path,
        name: String,
        config: Arc<RaftConfig>,
        peers: Peers,
        (lease, dag_lease): (bool, bool),
    ) -> io::Result<(Group, Arc<Mutex<ShardData>>, LocalWrites)> {
        let store = LogStore::open(dir, id)?;
        let sm = StateMachine::open(dir)?;
        let (data, local) = (sm.data.clone(), sm.local.clone());
        let network = NetworkFactory { group: id, peers: peers.clone() };
        // Named after the group, so openraft's log lines say which group speaks.
        let config = Arc::new(RaftConfig { cluster_name: name, ..(*config).clone() });
        let lease_age = Duration::from_millis(config.election_timeout_max / 2);
        let raft = Raft::new(node_id, config, network, store, sm).await.map_err(io::Error::other)?;
        let reads = Arc::default();
        Ok((Group { id, raft, peers, lease, dag_lease, lease_age, reads }, data, local))
    }

    /// For the transport: the group's Raft itself.
    pub(super) fn raft(&self) -> &Raft {
        &self.raft
    }

    fn metrics(&self) -> RaftMetrics<C> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.raft.metrics().borrow_watched().id
    }

    /// Whether a storage error (or shutdown) stopped this replica's Raft.
    pub fn stopped(&self) -> Option<String> {
        self.raft.metrics().borrow_watched().running_state.as_ref().err().map(|e| e.to_string())
    }

    /// Forms the group with `members` if it has never been initialized.
    pub async fn bootstrap(&self, members: BTreeMap<u64, NodeAddr>) -> io::Result<()> {
        if self.raft.is_initialized().await.map_err(io::Error::other)? {
            return Ok(());
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::info!(group = self.id, error = %e, "group already initialized");
                Ok(())
            }
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Hands `p` to Raft; returns once it is queued in the group, so entries
    /// proposed one after another are logged in that order. An error when
    /// this replica's Raft has stopped (nothing was proposed).
    pub async fn propose(&self, p: Proposal) -> Result<Pending, NodeError> {
        let (responder, rx) = ProgressResponder::complete_only();
        match self.raft.write(p).responder(responder).await {
            Ok(()) => Ok(Pending(rx)),
            Err(fatal) => Err(NodeError::RaftStopped(fatal.to_string())),
        }
    }

    /// The term this replica leads, if its state already holds every write
    /// acknowledged before now by it or by earlier leaders: it has applied
    /// an entry of its own term (its first is the no-op that commits all
    /// before it), and it acknowledges writes only once applied.
    pub fn leading_applied_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let applied_term = m.last_applied.as_ref().map(|l| l.committed_leader_id().term);
        (m.state == ServerState::Leader && applied_term == Some(m.current_term)).then_some(m.current_term)
    }

    /// Whether this replica may serve a linearizable read now: confirmed by
    /// a round (read-index, or lease) that began after this call — shared
    /// with the reads that arrived with it ([`ReadGate`]) — and everything
    /// committed when it began applied here.
    pub async fn confirm_read(&self) -> Result<(), Unconfirmed> {
        let policy = if self.lease { self.lease_option() } else { ReadPolicy::ReadIndex.into() };
        let raft = self.raft.clone();
        let round = move || async move { raft.get_read_linearizer(policy).await.map_err(unconfirmed) };
        let linearizer = self.reads.confirm(round).await?;
        // Each read waits for the apply itself: one that arrived later does
        // not wait for the rounds before it to apply.
        match linearizer.await_ready(&self.raft).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Unconfirmed::Other(e.to_string())),
        }
    }

    /// On the leader: the log index a replica must have applied to serve a
    /// read-only DAG now (confirmed as [`Group::confirm_dag_read`] does).
    pub async fn read_index(&self) -> Result<u64, String> {
        match self.raft.ensure_linearizable(self.dag_read_option()).await {
            Ok(read) => Ok(read.index()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// On a follower: waits until this replica has applied everything the
    /// leader had committed when asked (its read index), so that a read here
    /// is linearizable. `Forward` when no leader is known or it cannot
    /// confirm it leads.
    pub async fn follower_read(&self, timeout: Duration) -> Result<(), Unconfirmed> {
        let Some((leader, addr)) = self.leader() else {
            return Err(Unconfirmed::Forward(None));
        };
        if leader == self.me() {
            return self.confirm_dag_read().await;
        }
        let index = match self.peers.read_index(leader, &addr, self.id, timeout).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(group = self.id, leader, error = %e, "no read index from the leader");
                return Err(Unconfirmed::Forward(Some((leader, addr))));
            }
        };
        match self.raft.wait(Some(timeout)).applied_index_at_least(Some(index), "follower read").await {
            Ok(_) => Ok(()),
            Err(e) => Err(Unconfirmed::Other(e.to_string())),
        }
    }

    /// [`Group::confirm_read`] for a read-only DAG (`--dag-read-policy`).
    pub async fn confirm_dag_read(&self) -> Result<(), Unconfirmed> {
        self.ensure(self.dag_read_option()).await
    }

    /// How a read-only DAG's read is confirmed ([`Group::lease_option`] or
    /// a read-index round).
    fn dag_read_option(&self) -> LinearizerOption {
        match self.dag_lease {
            true => self.lease_option(),
            false => ReadPolicy::ReadIndex.into(),
        }
    }

    /// A lease read: at once while a quorum acknowledged this leader within
    /// half the lease, else after a heartbeat round a quorum acknowledges (a
    /// new leader's first reads, a leader whose acknowledgements lag); it
    /// fails only when none does within the lease, as a read-index round
    /// would.
    ///
    /// Why half: a follower grants no vote for the lease (the maximum
    /// election timeout) after the leader's last heartbeat, on its own
    /// clock, while the leader measures its lease from when it sent that
    /// heartbeat, on its clock. With the whole lease a leader whose clock
    /// runs any slower than a follower's could serve a read after another
    /// leader was elected; with half, only one whose clock runs at under
    /// half the follower's rate (NTP keeps rates within 0.05 % of each
    /// other). A follower's promise lives in its memory only: a restarted
    /// node casts no vote for the lease after it starts (`hold_votes` in
    /// [`super::transport::TransportService::new`]). docs/replication.md has
    /// the chaos runs that probe it.
    fn lease_option(&self) -> LinearizerOption {
        LinearizerOption::new(Some(self.lease_age), true)
    }

    /// Confirms with a quorum that this replica still leads.
    pub async fn confirm_leadership(&self) -> Result<(), Unconfirmed> {
        self.ensure(ReadPolicy::ReadIndex).await
    }

    async fn ensure(&self, policy: impl Into<LinearizerOption>) -> Result<(), Unconfirmed> {
        self.raft.ensure_linearizable(policy).await.map(|_| ()).map_err(unconfirmed)
    }

    pub fn view(&self) -> View {
        let m = self.metrics();
        View {
            leader: m.current_leader,
            is_leader: m.state == ServerState::Leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
            members: m
                .membership_config
                .log_id()
                .is_some()
                .then(|| m.membership_config.nodes().map(|(id, n)| (*id, n.addr.clone())).collect()),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The leader this replica knows of, with its address.
    pub fn leader(&self) -> Leader {
        let m = self.metrics();
        let id = m.current_leader?;
        let addr = m.membership_config.nodes().find(|(n, _)| **n == id).map(|(_, a)| a.addr.clone())?;
        Some((id, addr))
    }

    /// On the leader: whether voter `id` holds every entry the leader has.
    pub fn caught_up(&self, id: u64) -> bool {
        let m = self.metrics();
        m.last_log_index.is_some_and(|last| matched_index(&m, id) == Some(last))
    }

    /// Voters and learners of the group's current membership (as this
    /// replica knows it).
    pub fn membership(&self) -> (Vec<u64>, Vec<u64>) {
        let m = self.metrics();
        let mc = m.membership_config.membership();
        (mc.voter_ids().collect(), mc.learner_ids().collect())
    }

    /// Voters and learners of the committed configuration, and whether a
    /// newer one is still uncommitted.
    pub fn committed_membership(&self) -> (Vec<u64>, Vec<u64>, bool) {
        let m = self.metrics();
        let c = m.committed_membership_config.membership();
        let in_flight = m.membership_config.log_id() != m.committed_membership_config.log_id();
        (c.voter_ids().collect(), c.learner_ids().collect(), in_flight)
    }

    /// While a joint configuration is in force (a membership change cut
    /// short between its two steps): the voters it is moving to.
    pub fn pending_voters(&self) -> Option<Vec<u64>> {
        let m = self.metrics();
        let joint = m.membership_config.membership().get_joint_config();
        (joint.len() > 1).then(|| joint.last().map(|c| c.iter().copied().collect()).unwrap_or_default())
    }

    /// On the leader: removes learners `ids` from the group.
    pub async fn remove_learners(&self, ids: Vec<u64>) -> Result<(), NodeError> {
        let set = ids.into_iter().collect();
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(set), false)
            .await
            .map(|_| ())
            .map_err(|e| self.membership_error(e))
    }

    /// On the leader: adds `id` as a learner and waits (at most
    /// [`CATCH_UP_WAIT`]) until it holds every entry the leader had once the
    /// learner was added. openraft's own blocking wait is not enough: it
    /// counts a learner within `replication_lag_threshold` (5000) entries as
    /// caught up, even one that never answered, and a move would then promote
    /// an empty, dead node to voter.
    pub async fn add_learner(&self, id: u64, addr: String) -> Result<(), NodeError> {
        let added = self.raft.add_learner(id, NodeAddr { addr }, false).await.map_err(|e| self.membership_error(e))?;
        let want = added.log_id.index;
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let m = self.metrics();
            if m.state != ServerState::Leader {
                return Err(NodeError::LeaderChangedCatchingUp { group: self.id, node: id });
            }
            let have = matched_index(&m, id).unwrap_or(0);
            if have >= want {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(NodeError::NotCaughtUp { node: id, group: self.id, waited: CATCH_UP_WAIT, have, want });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the leader: makes `voters` the voter set (joint consensus inside);
    /// voters left out are removed from the group entirely.
    pub async fn set_voters(&self, voters: Vec<u64>) -> Result<(), NodeError> {
        let set: BTreeSet<u64> = voters.into_iter().collect();
        self.raft.change_membership(set, false).await.map(|_| ()).map_err(|e| self.membership_error(e))
    }

    /// A membership change cut short by a leadership change is worth
    /// retrying (`TRYAGAIN`: the admin operations are idempotent); openraft
    /// reports it as "has to forward request to: None, None", which would
    /// end a `move-replica` half done.
    fn membership_error(&self, e: RaftError<C, ClientWriteError<C>>) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                NodeError::MembershipInterrupted { group: self.id, leader: format!("{:?}", f.leader_id) }
            }
            e => NodeError::Membership(e.to_string()),
        }
    }

    /// Asks replica `to` to take leadership over (it may decline).
    pub async fn transfer_leader(&self, to: u64) {
        let _ = self.raft.trigger().transfer_leader(to).await;
    }

    /// Takes a snapshot of everything this replica has applied now (SAVE)
    /// and waits, up to `timeout`, until it is on disk. A replica whose
    /// latest snapshot already covers it takes none.
    pub async fn snapshot_now(&self, timeout: Duration) -> Result<(), String> {
        let m = self.metrics();
        let Some(target) = m.last_applied.map(|l| l.index) else {
            return Ok(());
        };
        let covered = |m: &RaftMetrics<C>| m.snapshot.as_ref().is_some_and(|s| s.index >= target);
        if covered(&m) {
            return Ok(());
        }
        // (A request made while a snapshot is being built is dropped, and
        // that snapshot may stop short of `target`: asked again until one
        // covers it.)
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let wait = left.min(Duration::from_secs(1));
            if self.raft.wait(Some(wait)).metrics(covered, "snapshot for SAVE").await.is_ok() {
                return Ok(());
            }
            if left <= wait {
                return Err(format!("group {}: no snapshot covering index {target} after {timeout:?}", self.id));
            }
        }
    }

    /// Whether this replica calls elections.
    pub fn elect(&self, on: bool) {
        self.raft.runtime_config().elect(on);
    }

    /// Stops this replica's Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

impl Pending {
    /// Waits until the entry applied (or cannot).
    pub async fn applied(self) -> Applied {
        match self.0.await {
            Ok(Ok(resp)) => Applied::Reply(resp.data),
            Ok(Err(ClientWriteError::ForwardToLeader(f))) => Applied::Forward(forward(&f)),
            Ok(Err(e)) => Applied::Unknown(e.to_string()),
            Err(_) => Applied::Lost,
        }
    }
}
