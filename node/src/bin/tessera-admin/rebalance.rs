//! `rebalance`: prints the plan of [`tessera_node::cluster::rebalance`] and
//! runs it, one admin operation per step: the moves, then (planned again
//! from the map the moves left) the leader transfers.

use std::time::Duration;

use tessera_node::cluster::rebalance::{plan, Step};
use tessera_node::state::meta::{ClusterMap, NodeStatus};

use crate::Cluster;

pub(crate) async fn rebalance(c: &Cluster, dry_run: bool) -> Result<(), String> {
    let map = live_map(c).await?;
    let steps = plan(&map);
    if steps.is_empty() {
        println!("balanced: nothing to do");
        return Ok(());
    }
    for s in &steps {
        println!("{s}");
    }
    if dry_run {
        return Ok(());
    }
    let moves = steps.iter().take_while(|s| s.is_move()).count();
    for s in &steps[..moves] {
        run_step(c, s).await?;
    }
    // The moves are planned on the map they leave too, so this is normally
    // the rest of the plan; it differs when something else changed the map.
    let rest = if moves == 0 { steps.clone() } else { plan(&live_map(c).await?) };
    if rest != steps[moves..] {
        println!("planned again after the moves:");
        for s in &rest {
            println!("{s}");
        }
    }
    for s in &rest {
        run_step(c, s).await?;
    }
    Ok(())
}

/// The map, once every live node answers: a move to a node that is down
/// would wait for a catch-up that cannot happen.
async fn live_map(c: &Cluster) -> Result<ClusterMap, String> {
    let map = c.map(Duration::from_secs(10)).await.map_err(|e| format!("cannot read the cluster map: {e}"))?;
    for (id, n) in map.nodes.iter().filter(|(_, n)| n.status != NodeStatus::Removed) {
        if let Err(e) = c.shards(&n.addr).await {
            return Err(format!("node {id} ({}) does not answer ({e}); rebalance needs every node up", n.addr));
        }
    }
    Ok(map)
}

async fn run_step(c: &Cluster, step: &Step) -> Result<(), String> {
    let msg = c.run(&step.request()).await.map_err(|e| format!("{step}: {e}"))?;
    println!("OK {msg}");
    Ok(())
}
