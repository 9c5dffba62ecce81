//! SAVE, BGSAVE and LASTSAVE: a durable point for the whole cluster.
//!
//! Every write is already on a quorum's disks (fsync'd Raft logs) before it
//! is acknowledged, so SAVE adds no durability a write lacked: it asks every
//! storage node to take a snapshot of each replica it hosts, of everything
//! applied so far, which is what a restart then restores from without
//! replaying the log, and what a backup of the data folders should copy.
//! SAVE answers once every node has; BGSAVE answers at once and `INFO
//! persistence` shows it running and how it ended. A node that is not
//! reachable fails the save (its replicas were not snapshotted).
//!
//! The times kept here are this router's: LASTSAVE is when the last save
//! that this router ran succeeded (at start, the router's start time, as
//! Redis reports its own start).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;
use tessera_proto::v1::request::Target;

use crate::backend::NodeReply;
use crate::Router;

/// How long one node may take to snapshot every replica it hosts.
const NODE_SAVE_TIMEOUT: Duration = Duration::from_secs(600);

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

pub struct Saves {
    running: AtomicBool,
    /// Unix seconds of the last successful save.
    last_save: AtomicI64,
    /// How the last save ended (`true`: every node saved).
    last_ok: AtomicBool,
    /// Seconds the last save took (-1: none yet).
    last_secs: AtomicI64,
    /// When the running save started.
    started: Mutex<Option<Instant>>,
    /// Saves started (SAVE and BGSAVE).
    count: AtomicI64,
}

impl Default for Saves {
    fn default() -> Self {
        Saves {
            running: AtomicBool::new(false),
            last_save: AtomicI64::new(unix_now()),
            last_ok: AtomicBool::new(true),
            last_secs: AtomicI64::new(-1),
            started: Mutex::new(None),
            count: AtomicI64::new(0),
        }
    }
}

impl Saves {
    pub fn last_save(&self) -> i64 {
        self.last_save.load(Ordering::Relaxed)
    }

    /// The `INFO persistence` lines about saves.
    pub fn info_lines(&self) -> Vec<String> {
        let running = self.running.load(Ordering::Relaxed);
        let current = self.started.lock().map_or(-1, |s| s.elapsed().as_secs() as i64);
        let ok = if self.last_ok.load(Ordering::Relaxed) { "ok" } else { "err" };
        vec![
            format!("rdb_bgsave_in_progress:{}", u8::from(running)),
            format!("rdb_last_save_time:{}", self.last_save()),
            format!("rdb_last_bgsave_status:{ok}"),
            format!("rdb_last_bgsave_time_sec:{}", self.last_secs.load(Ordering::Relaxed)),
            format!("rdb_current_bgsave_time_sec:{}", if running { current } else { -1 }),
            format!("rdb_saves:{}", self.count.load(Ordering::Relaxed)),
        ]
    }

    /// Marks a save as running; false if one already is.
    fn begin(&self) -> bool {
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        *self.started.lock() = Some(Instant::now());
        self.count.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn end(&self, ok: bool) {
        let took = self.started.lock().take().map_or(0, |s| s.elapsed().as_secs() as i64);
        self.last_secs.store(took, Ordering::Relaxed);
        self.last_ok.store(ok, Ordering::Relaxed);
        if ok {
            self.last_save.store(unix_now(), Ordering::Relaxed);
        }
        self.running.store(false, Ordering::Release);
    }
}

fn in_progress() -> Reply {
    Reply::err("ERR Background save already in progress")
}

/// SAVE (`background`: false) or BGSAVE.
pub async fn save(router: Arc<Router>, background: bool) -> Reply {
    if !router.saves.begin() {
        return in_progress();
    }
    // (On a task of its own: a SAVE whose client goes away still ends,
    // and marks the save done.)
    let task = tokio::spawn(async move {
        let r = save_all(&router).await;
        if let Reply::Error(e) = &r {
            tracing::warn!(error = %e, background, "save failed");
        }
        router.saves.end(!r.is_error());
        r
    });
    if background {
        return Reply::Simple("Background saving started".into());
    }
    task.await.unwrap_or_else(|e| Reply::err(format!("ERR save failed: {e}")))
}

/// Asks every storage node to snapshot its replicas; OK once all have.
async fn save_all(router: &Router) -> Reply {
    let cmd = Bytes::from(NodeCommand::Save.to_bytes());
    let nodes = router.shards.nodes();
    let calls = nodes.iter().map(|node| {
        let cmd = cmd.clone();
        async move {
            if !node.is_connected() {
                return Err(format!("node {} is not reachable", node.addr));
            }
            match tokio::time::timeout(NODE_SAVE_TIMEOUT, node.call(Target::Shard(0), cmd)).await {
                Ok(Ok(NodeReply::Reply(Reply::Error(e)))) => Err(format!("node {}: {e}", node.addr)),
                Ok(Ok(NodeReply::Reply(_))) => Ok(()),
                Ok(Ok(NodeReply::Lost(e))) => Err(format!("node {}: {e}", node.addr)),
                Ok(Ok(NodeReply::Unreachable(e))) => Err(format!("node {} is not reachable: {e}", node.addr)),
                Ok(Ok(NodeReply::Redirect(_))) => Err(format!("node {} did not take the save", node.addr)),
                Ok(Err(_)) => Err(format!("node {}: its session ended", node.addr)),
                Err(_) => Err(format!("node {} did not finish in {NODE_SAVE_TIMEOUT:?}", node.addr)),
            }
        }
    });
    let failed: Vec<String> = futures::future::join_all(calls).await.into_iter().filter_map(|r| r.err()).collect();
    match failed.first() {
        None => Reply::ok(),
        Some(first) => Reply::err(format!("ERR save failed on {} of {} nodes: {first}", failed.len(), nodes.len())),
    }
}
