//! `step-down`: the first `--node` hands every group it leads (the meta
//! group's included) to another voter, the one leading the fewest shards
//! (then the lowest id), and the command waits until the node leads nothing.
//!
//! Run before stopping a node (a Kubernetes preStop hook): it exits 0 once
//! the node leads nothing, at once when it led nothing, and 1 with a message
//! when the node does not answer or still leads something after
//! `--timeout-secs`. Only who leads changes, not the map's preferred leader,
//! so a node that keeps running gets its groups back after the hand-back
//! delay (docs/operations.md, "Leader balance"), and a restarted one does
//! too.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_node::cluster::admin::{AdminRequest, AdminResponse, GroupOp};
use tessera_node::state::meta::{ClusterMap, NodeStatus, META};
use tokio::time::Instant;

use crate::{group_name, Cluster};

pub(crate) async fn step_down(c: &Cluster) -> Result<(), String> {
    let addr = c.nodes.first().ok_or("no --node given")?.clone();
    let deadline = Instant::now() + c.budget;
    let answer = || async { c.shards(&addr).await.map_err(|e| format!("node {addr} does not answer: {e}")) };
    answer().await?;
    // Voters and addresses come from the map when the meta group answers,
    // else from the node's own view of its groups.
    let map = c.map(Duration::from_secs(5)).await.ok();
    let mut handed = 0;
    loop {
        let mine = answer().await?;
        let me = mine.node_id;
        let mut book: BTreeMap<u64, String> = BTreeMap::new();
        let mut led: Vec<(u32, Vec<u64>)> = Vec::new();
        for s in &mine.shards {
            book.extend(s.members.iter().map(|m| (m.id, m.addr.clone())));
            if s.leader_id == me {
                led.push((
                    s.id,
                    voters(map.as_ref(), s.id).unwrap_or_else(|| s.members.iter().map(|m| m.id).collect()),
                ));
            }
        }
        let ask = AdminRequest::Group { group: META, op: GroupOp::Membership };
        if let Ok(AdminResponse::Membership { voters, .. }) = c.clients.ask(&addr, &ask, Duration::from_secs(2)).await {
            led.push((META, voters));
        }
        if led.is_empty() {
            match handed {
                0 => println!("node {me} leads no group: nothing to hand off"),
                _ => println!("node {me} leads no group now"),
            }
            return Ok(());
        }
        let names = || led.iter().map(|(g, _)| group_name(*g)).collect::<Vec<_>>().join(", ");
        if Instant::now() >= deadline {
            return Err(format!("node {me} still leads {} after {:?}", names(), c.budget));
        }
        if let Some(map) = &map {
            book.extend(
                map.nodes.iter().filter(|(_, n)| n.status != NodeStatus::Removed).map(|(id, n)| (*id, n.addr.clone())),
            );
        }
        // How many shards each other voter leads, for those that answer.
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        for id in led.iter().flat_map(|(_, v)| v).filter(|v| **v != me) {
            if leads.contains_key(id) {
                continue;
            }
            let Some(a) = book.get(id) else { continue };
            match c.shards(a).await {
                Ok(r) if r.node_id == *id => {
                    leads.insert(*id, r.shards.iter().filter(|s| s.leader_id == *id).count());
                }
                Ok(r) => eprintln!("{a} answers as node {}, not {id}", r.node_id),
                Err(e) => eprintln!("node {id} ({a}): {e}"),
            }
        }
        for (group, voters) in &led {
            let name = group_name(*group);
            if voters.iter().all(|v| *v == me) {
                return Err(format!("{name} has no other voter to lead it"));
            }
            let Some(to) = voters.iter().copied().filter(|v| leads.contains_key(v)).min_by_key(|v| (leads[v], *v))
            else {
                eprintln!("{name}: no other voter answers; retrying");
                continue;
            };
            let req = AdminRequest::Group { group: *group, op: GroupOp::TransferLeader { to } };
            match c.clients.ask(&addr, &req, Duration::from_secs(10)).await {
                Ok(AdminResponse::Done(_)) => {
                    println!("OK {name} handed from node {me} to node {to}");
                    handed += 1;
                    *leads.entry(to).or_default() += 1;
                }
                // It no longer leads this group: nothing to hand.
                Ok(AdminResponse::NotLeader(_)) => {}
                Ok(AdminResponse::Error(e)) => eprintln!("{name}: {e}"),
                Ok(r) => eprintln!("{name}: unexpected answer {r:?}"),
                Err(e) => eprintln!("{name}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `group`'s voters in the map.
fn voters(map: Option<&ClusterMap>, group: u32) -> Option<Vec<u64>> {
    map?.groups.get(&group).map(|g| g.voters.clone())
}
