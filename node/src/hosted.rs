//! The node's state: the groups it hosts (opened, reopened, closed), the
//! slot → shard table, and which shard a router's request is for. Served to
//! routers by [`crate::serve`], changed by [`crate::cluster`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use tessera_common::command::NodeCommand;
use tessera_common::slot::{key_slot, SlotRange, SLOTS};
use tessera_proto::v1::request;
use tracing::{debug, info};

use crate::config::Config;
use crate::disk::DiskGuard;
use crate::error::Error;
use crate::raft::logfile::{read_atomic, write_atomic};
use crate::raft::network::Peers;
use crate::raft::RaftConfig;
use crate::shard::{group_dir, Outcome, Shard};
use crate::state::meta::{ClusterMap, META};

/// The slots a replica folder was created for.
pub fn read_ranges(dir: &std::path::Path) -> std::io::Result<Option<Vec<SlotRange>>> {
    match read_atomic(&dir.join("ranges"))? {
        None => Ok(None),
        Some(b) => {
            postcard::from_bytes(&b).map(Some).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }
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
    /// This node held state when it started (its identity was on disk).
    /// With a formed map, this answers wiped-disk probes of other nodes: a
    /// node that started fresh holds nothing to lose before the map exists.
    pub has_state: AtomicBool,
    /// One membership operation at a time.
    pub admin_lock: tokio::sync::Mutex<()>,
    pub disk: Arc<DiskGuard>,
    /// Set when the node shuts down (nothing is reopened any more, and no
    /// leadership is taken).
    pub stopping: AtomicBool,
    /// Set once the node has handed its leaderships away on its way out:
    /// every router session link is then drained (see
    /// [`tessera_proto::link::KIND_DRAIN`]). Each link holds a receiver
    /// while it lives, so the sender sees when the last one has closed.
    pub drain: tokio::sync::watch::Sender<bool>,
    /// When this node, as leader, last handed a group to its preferred leader.
    pub handed_back: parking_lot::Mutex<HashMap<u32, std::time::Instant>>,
}

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
            drain: tokio::sync::watch::Sender::new(false),
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
        shard.group.shutdown().await;
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
        shard.group.shutdown().await;
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
    pub(crate) fn route(&self, target: Option<request::Target>, command: Bytes) -> Result<Routed, Outcome> {
        // Only a command joined from parts has a buffer of its own: one
        // that came whole is a slice of the stream's receive buffer, which a
        // stored slice of it would keep alive.
        // (The buffer is dropped once decoded, so that a model's bytes are
        // then all that holds it: see `Shard::submit`.)
        let heavy = command.len() > crate::util::HEAVY_BYTES;
        let decode = move || match command.len() > tessera_proto::parts::PART_BYTES {
            true => NodeCommand::from_shared(&command),
            false => NodeCommand::from_bytes(&command),
        };
        let decoded = if heavy { crate::util::heavy(decode) } else { decode() };
        let cmd = decoded.map_err(|e| {
            metrics::counter!("tessera_node_decode_errors_total").increment(1);
            Outcome::Error(Error::Decode(e.to_string()))
        })?;
        // A node setting needs no shard: applied here, its reply returned
        // the way errors are.
        if let NodeCommand::AiConfig { op } = &cmd {
            return Err(Outcome::Reply(crate::engine::registry::registry().config(op)));
        }
        if let NodeCommand::AiInfo = &cmd {
            return Err(Outcome::Reply(crate::engine::registry::registry().info()));
        }
        if let NodeCommand::Save = &cmd {
            return Ok(Routed::Save);
        }
        if let NodeCommand::Users(op) = cmd {
            return Ok(Routed::Users(op));
        }
        // (Only a script run is ever sent for a user.)
        if matches!(&cmd, NodeCommand::AsUser { cmd, .. } if !cmd.runs_scripts() || !cmd.is_exec()) {
            return Err(Outcome::Error(Error::Decode("a command for a user that runs no script".into())));
        }
        let hosted = self.hosted.read().clone();
        let shard = match target {
            Some(request::Target::Slot(slot)) => hosted.by_slot.get(slot as usize).copied().flatten(),
            Some(request::Target::Shard(id)) => hosted.by_id.get(&id).copied(),
            None => None,
        };
        let shard = match (shard, target) {
            (Some(i), _) => hosted.shards[i].clone(),
            (None, None) => return Err(Outcome::Error(Error::NotServed)),
            (None, Some(_)) => return Err(Outcome::Redirect(None)),
        };
        // A stale router can never make this shard store a key it does not own
        // (the state machine of each replica holds only its shard's slots).
        if !cmd.keys().all(|k| shard.owns(key_slot(k))) {
            return Err(Outcome::Error(Error::NotServed));
        }
        Ok(Routed::Shard(shard, cmd))
    }

    /// The cluster's users (`ACL LIST` lines, read linearizably) or a change
    /// to them, on this node's replica of the meta group: its leader
    /// answers; another replica redirects to it, and a node without one
    /// answers as a replica that knows no leader (the router tries another).
    pub async fn users(&self, op: tessera_common::command::UsersCmd) -> Outcome {
        use crate::state::users::MOVED;
        use tessera_common::reply::Reply;
        let Some(meta) = self.hosted.read().meta.clone() else {
            return Outcome::Redirect(None);
        };
        if let tessera_common::command::UsersCmd::List = op {
            return match meta.users().await {
                Ok(users) => Outcome::Reply(users.list()),
                Err(o) => o,
            };
        }
        // Worked out on the users as they are (read linearizably), then
        // logged; a change that came between is seen by `apply` and the
        // change is planned again. One at a time on this node.
        static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _turn = ONE_AT_A_TIME.lock().await;
        for _ in 0..3 {
            let users = match meta.users().await {
                Ok(u) => u,
                Err(o) => return o,
            };
            let planned = match users.plan(&op) {
                Ok(p) => p,
                Err(e) => return Outcome::Reply(e),
            };
            match meta.write_op(crate::state::LogOp::Meta(crate::state::meta::MetaOp::Users(planned))).await {
                Outcome::Reply(Reply::Error(e)) if e == MOVED => continue,
                done => return done,
            }
        }
        Outcome::Reply(Reply::err(MOVED))
    }

    /// Ready (`/readyz`): the node has read the cluster map, and every
    /// replica it hosts runs, knows its group's leader and has applied what
    /// it knows to be committed, give or take [`READY_LAG`] entries. Never
    /// a quorum round: a probe must answer at once.
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("stopping".into());
        }
        if self.map().epoch == 0 {
            return Err("no cluster map yet".into());
        }
        let hosted = self.hosted.read().clone();
        for shard in hosted.meta.iter().chain(&hosted.shards) {
            if let Some(e) = shard.stopped() {
                return Err(format!("group {}: stopped: {e}", shard.id));
            }
            let v = shard.group.view();
            if v.leader.is_none() {
                return Err(format!("group {}: no leader known", shard.id));
            }
            if v.applied + READY_LAG < v.committed {
                return Err(format!("group {}: applied {} of {} committed", shard.id, v.applied, v.committed));
            }
        }
        Ok(())
    }

    /// SAVE on this node: a snapshot of every replica it hosts (the meta
    /// group's included), each of all it has applied, on disk when this
    /// returns. Snapshots are taken one group after another, so a node with
    /// many replicas does not build them all at once.
    pub async fn save(&self) -> Outcome {
        let hosted = self.hosted.read().clone();
        let groups = hosted.meta.iter().chain(&hosted.shards);
        for shard in groups {
            if let Err(e) = shard.group.snapshot_now(SAVE_TIMEOUT).await {
                return Outcome::Error(Error::SaveFailed(e));
            }
        }
        Outcome::Reply(tessera_common::reply::Reply::ok())
    }
}

/// Entries a replica may still have to apply and be ready.
const READY_LAG: u64 = 1000;

/// How long SAVE waits for one replica's snapshot.
const SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Where a command from a router goes.
// (Moved once per request, straight into its lane: no box needed.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Routed {
    /// To this replica of its shard.
    Shard(Arc<Shard>, NodeCommand),
    /// SAVE: to every replica on this node (see [`NodeState::save`]).
    Save,
    /// The cluster's users: to the meta group (see [`NodeState::users`]).
    Users(tessera_common::command::UsersCmd),
}

impl crate::raft::transport::Groups for NodeState {
    fn group(&self, group: u32) -> Option<crate::raft::group::Group> {
        self.group(group).map(|s| s.group.clone())
    }

    fn node_id(&self) -> u64 {
        self.node_id
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }
}
