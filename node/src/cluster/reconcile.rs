//! Each node's side of the cluster map: the reconciler that makes this node
//! host exactly the replicas the map gives it (and reopens replicas a
//! storage error stopped), preferred-leader hand-back, and what a node does
//! on its first start with an empty data dir (new node, or one that lost its
//! disk and must be rebuilt).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::cluster::admin::{meta_candidates, AdminClients, AdminRequest, AdminResponse, STEP_BUDGET};
use crate::error::Error as NodeError;
use crate::hosted::NodeState;
use crate::raft::NodeAddr;
use crate::state::meta::{meta_seeds, ClusterMap, MetaOp, NodeStatus, META};
use crate::state::LogOp;

/// Keeps this node's replicas matching the cluster map: opens those the map
/// gives it, closes (and deletes) those it no longer lists, forms the map
/// and generation-0 groups, and records this node as joined.
pub async fn reconcile_loop(state: Arc<NodeState>, clients: AdminClients) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = reconcile_once(&state, &clients).await {
            debug!(error = %e, "reconcile");
        }
    }
}

fn files(doing: &'static str, group: u32, e: impl std::fmt::Display) -> NodeError {
    NodeError::GroupFiles { doing, group, why: e.to_string() }
}

async fn reconcile_once(state: &Arc<NodeState>, clients: &AdminClients) -> Result<(), NodeError> {
    if state.stopping.load(Ordering::Relaxed) {
        return Ok(());
    }
    {
        // A replica stopped by a storage error (a full disk, an I/O error)
        // is reopened from its files: its log is verified again on the way.
        let _changing = state.changing.lock().await;
        for shard in state.hosted().all().cloned().collect::<Vec<_>>() {
            if let Some(why) = shard.stopped().filter(|_| !state.stopping.load(Ordering::Relaxed)) {
                warn!(group = shard.id, error = %why, "replica stopped; reopening it from its files");
                metrics::counter!("tessera_node_replica_reopens_total").increment(1);
                state.reopen_group(shard.id).await.map_err(|e| files("reopening", shard.id, e))?;
            }
        }
    }
    // The meta leader forms the map if it is not formed yet.
    if let Some(meta) = state.group(META).filter(|m| m.is_leader()) {
        if meta.data_map().epoch == 0 {
            let init = ClusterMap::initial(&state.config);
            info!(nodes = init.nodes.len(), groups = init.groups.len(), "forming the cluster map");
            let _ = meta.write_op(LogOp::Meta(MetaOp::Init(init))).await;
        }
    }
    let map = match clients.ask_leader(&meta_candidates(state), &AdminRequest::Map, Duration::from_secs(2)).await? {
        AdminResponse::Map(m) if m.epoch > 0 => m,
        AdminResponse::Map(_) => return Err(NodeError::MapNotFormed),
        r => return Err(NodeError::Unexpected(format!("{r:?}"))),
    };
    {
        let mut cur = state.map.write();
        if map.epoch < cur.epoch {
            return Ok(());
        }
        *cur = Arc::new(map.clone());
    }
    let me = state.node_id;
    if !map.nodes.contains_key(&me) {
        let req = AdminRequest::AddNode { id: me, addr: state.config.advertise.clone() };
        info!(node = me, addr = %state.config.advertise, "registering with the cluster");
        clients.ask_leader(&meta_candidates(state), &req, Duration::from_secs(5)).await?;
        return Ok(());
    }
    if map.nodes[&me].status == NodeStatus::Removed {
        warn!(node = me, "this node was removed from the cluster; it hosts nothing");
    }
    let rebuilding = state.rebuilding.load(Ordering::Relaxed);
    let _changing = state.changing.lock().await;
    for (gid, plan) in &map.groups {
        let want = plan.learners.contains(&me) || (plan.voters.contains(&me) && !rebuilding);
        if want && state.group(*gid).is_none() {
            let placement: BTreeMap<u64, String> =
                plan.voters.iter().map(|id| (*id, map.addr(*id).unwrap_or_default().to_owned())).collect();
            let shard = state
                .open_group(*gid, plan.ranges.clone(), placement.clone())
                .await
                .map_err(|e| files("opening", *gid, e))?;
            if plan.generation == 0 && plan.voters.first() == Some(&me) && !rebuilding {
                let members = placement.into_iter().map(|(id, addr)| (id, NodeAddr { addr })).collect();
                if let Err(e) = shard.bootstrap(members).await {
                    warn!(group = gid, error = %e, "could not form the group");
                }
            }
        }
        if !plan.hosts(me) && state.group(*gid).is_some() {
            state.close_group(*gid).await.map_err(|e| files("closing", *gid, e))?;
        }
    }
    let stale: Vec<u32> = state.hosted().all().map(|s| s.id).filter(|id| !map.groups.contains_key(id)).collect();
    for gid in stale {
        state.close_group(gid).await.map_err(|e| files("closing", gid, e))?;
    }
    drop(_changing);
    give_leadership_back(state, &map).await;
    if map.nodes[&me].status == NodeStatus::New && !rebuilding {
        clients.ask_leader(&meta_candidates(state), &AdminRequest::Joined { id: me }, Duration::from_secs(5)).await?;
    }
    Ok(())
}

/// How long a group must have been led away from its preferred leader
/// before leadership is handed back (and the least time between attempts).
const HAND_BACK_AFTER: Duration = Duration::from_secs(10);

/// Keeps leaders balanced: the map's first voter of each group is its
/// preferred leader (initial layouts spread them evenly; `transfer-leader`
/// moves the preference). A leader that is not the preferred one hands the
/// group back once the preferred voter has caught up, at most once per
/// [`HAND_BACK_AFTER`] — after a failover and restart leadership returns.
async fn give_leadership_back(state: &NodeState, map: &ClusterMap) {
    let me = state.node_id;
    for (gid, plan) in &map.groups {
        let Some(&preferred) = plan.voters.first() else { continue };
        let Some(shard) = state.group(*gid).filter(|s| s.is_leader()) else {
            state.handed_back.lock().remove(gid);
            continue;
        };
        if preferred == me || !shard.group.membership().0.contains(&preferred) || !shard.group.caught_up(preferred) {
            continue;
        }
        {
            // The first time this node is seen leading away from the
            // preference starts the clock.
            let mut seen = state.handed_back.lock();
            let since = *seen.entry(*gid).or_insert_with(std::time::Instant::now);
            if since.elapsed() < HAND_BACK_AFTER {
                continue;
            }
            seen.insert(*gid, std::time::Instant::now());
        }
        info!(group = gid, to = preferred, "handing leadership back to the preferred leader");
        shard.group.transfer_leader(preferred).await;
    }
}

/// At the first start on an empty data dir: did this node serve before (and
/// lose its disk)? Decided by the meta group's map when it answers, else by
/// a majority of the seed nodes reporting no state at all (a cluster being
/// formed). Waits until one of the two is known.
pub async fn lost_its_disk(state: &NodeState, clients: &AdminClients) -> bool {
    let me = state.node_id;
    let seeds = meta_seeds(&state.config);
    let mut logged = false;
    loop {
        let others: Vec<String> =
            state.config.peers.iter().filter(|(id, _)| **id != me).map(|(_, a)| a.clone()).collect();
        if let Ok(AdminResponse::Map(map)) =
            clients.ask_leader(&others, &AdminRequest::Map, Duration::from_secs(2)).await
        {
            if map.epoch > 0 {
                return map.nodes.get(&me).is_some_and(|n| n.status == NodeStatus::Joined);
            }
        }
        let mut empty = usize::from(seeds.contains(&me));
        for id in seeds.iter().filter(|id| **id != me) {
            let addr = &state.config.peers[id];
            if let Ok(AdminResponse::Probe { has_state: false }) =
                clients.ask(addr, &AdminRequest::Probe, Duration::from_secs(2)).await
            {
                empty += 1;
            }
        }
        if empty > seeds.len() / 2 {
            return false;
        }
        if !std::mem::replace(&mut logged, true) {
            info!("empty data dir: waiting for the cluster to tell whether this node is new or lost its disk");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rebuilds this node's replicas through the meta leader after it lost its disk.
pub async fn rejoin(state: Arc<NodeState>, clients: AdminClients) {
    let me = state.node_id;
    warn!(node = me, "this node lost its data: rejoining as a fresh replica of each of its groups");
    loop {
        let req = AdminRequest::Rejoin { id: me };
        match clients.ask_leader(&meta_candidates(&state), &req, STEP_BUDGET).await {
            Ok(AdminResponse::Done(msg)) => {
                info!(%msg, "rejoined");
                break;
            }
            Ok(r) => warn!(answer = ?r, "rejoin not done yet; retrying"),
            Err(e) => warn!(error = %e, "rejoin not done yet; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Err(e) = super::identity::write_identity(&state.config) {
        warn!(error = %e, "could not record the node id");
    }
    state.rebuilding.store(false, Ordering::Relaxed);
}
