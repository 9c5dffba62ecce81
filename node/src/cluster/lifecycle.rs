//! Starting and leaving: opening the replicas a restarted node finds on
//! disk, a first start (a new node, or one that lost its disk), forming the
//! meta group, and handing leadership away before a graceful stop.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::warn;

use super::admin::AdminClients;
use super::identity::write_identity;
use super::reconcile;
use crate::hosted::{read_ranges, NodeState};
use crate::raft::NodeAddr;
use crate::state::meta::{meta_seeds, META};

/// Opens every replica found in the data dir (a restart serves at once,
/// before the cluster map is read).
pub async fn open_local_groups(state: &NodeState) -> anyhow::Result<()> {
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
        let Some(ranges) = read_ranges(&state.config.data_dir.join(&name))? else {
            warn!(group = id, "replica folder without a ranges file: left for the cluster map to decide");
            continue;
        };
        state.open_group(id, ranges, BTreeMap::new()).await.with_context(|| format!("opening {name}"))?;
    }
    Ok(())
}

/// First start on an empty data dir: either a new node (record the identity;
/// seeds open the meta group, the first seed forms it) or a node that lost
/// its disk (rebuild through membership changes).
pub async fn start_fresh(state: &Arc<NodeState>, clients: &AdminClients) -> anyhow::Result<()> {
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
    // `has_state` stays false: until the map exists, a node that chose a
    // fresh start holds nothing a wiped seed could lose, and a seed that
    // starts after two others chose it must still count them as fresh
    // (otherwise it waits forever for a map only it would form).
    write_identity(&state.config)?;
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
pub async fn bootstrap_meta(state: &NodeState) {
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
pub async fn hand_off_leadership(state: &NodeState) {
    let hosted = state.hosted();
    for s in hosted.all() {
        s.group.elect(false);
    }
    let hand_off = |s: Arc<crate::shard::Shard>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while s.is_leader() && tokio::time::Instant::now() < deadline {
            let others: Vec<u64> = s.group.membership().0.into_iter().filter(|id| *id != state.node_id).collect();
            // A replica that holds every entry can take over at once.
            let Some(to) = others.iter().copied().find(|id| s.group.caught_up(*id)).or(others.first().copied()) else {
                return;
            };
            s.group.transfer_leader(to).await;
            let retry = tokio::time::Instant::now() + Duration::from_millis(500);
            while s.is_leader() && tokio::time::Instant::now() < retry.min(deadline) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    futures::future::join_all(hosted.all().cloned().map(hand_off)).await;
}
