//! Rebalancing plans: from the cluster map, the ordered steps that spread
//! replicas, then shard leaders, evenly over the live nodes
//! (`tessera-admin rebalance` runs them through the admin operations).
//!
//! A pure function of the map, so the plan is deterministic, a dry run shows
//! exactly what a real run starts with, and a balanced cluster plans nothing:
//!
//! 1. **Moves.** While the live node holding the most replicas holds at
//!    least 2 more than the one holding the fewest, one shard replica moves
//!    from the former to the latter (the next pair when that one has no
//!    group to move). The group moved is one the target does not hold,
//!    preferably one the source is not the preferred leader of (so its
//!    leader stays).
//! 2. **Leader transfers.** Each shard's preferred leader (its first voter
//!    in the map) is counted, and while a node leads at least 2 more shards
//!    than another it can reach, leadership is passed along a chain of
//!    shards (`A` leads `g1`, of which `B` is a voter; `B` leads `g2`, of
//!    which `C` is a voter: `g1 → B`, `g2 → C`), so every live node ends
//!    with ⌊g/n⌋ or ⌈g/n⌉ of the g shards as far as voter sets allow.
//!
//! Leaders are planned from the map's preferred leaders, not from who leads
//! right now: a leader that is not the preferred one hands its group back
//! within seconds ([`crate::cluster::reconcile`]), so the preference is where
//! leadership settles, and `transfer-leader` sets both. Planning from the
//! momentary leaders would race with those hand-backs.
//!
//! The meta group's replicas count in a node's load, like any replica (so
//! the per-node counts `status` shows come out even), but the meta group is
//! never moved nor its leader changed: it holds only the map, and moving it
//! or its leadership would interrupt the meta leader that runs every admin
//! operation, this one included. `remove-node` moves it off a leaving node;
//! `move-replica meta` moves it by hand. Counting it costs a meta host at
//! most one shard replica fewer than it would otherwise hold.
//!
//! Never touched either: groups with learners (a move in progress, or a
//! rebuild; their voters still count), and removed nodes, which receive
//! nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use super::admin::AdminRequest;
use crate::state::meta::{ClusterMap, NodeStatus, META};

/// One step of a plan, run as the admin operation of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    MoveReplica { group: u32, from: u64, to: u64 },
    TransferLeader { group: u32, to: u64 },
}

impl Step {
    pub fn request(&self) -> AdminRequest {
        match *self {
            Step::MoveReplica { group, from, to } => AdminRequest::MoveReplica { group, from, to },
            Step::TransferLeader { group, to } => AdminRequest::TransferLeader { group, to },
        }
    }

    pub fn is_move(&self) -> bool {
        matches!(self, Step::MoveReplica { .. })
    }
}

/// The step as `tessera-admin` arguments: `move-replica 2 1 4`.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |g: u32| if g == META { "meta".to_owned() } else { g.to_string() };
        match *self {
            Step::MoveReplica { group, from, to } => write!(f, "move-replica {} {from} {to}", name(group)),
            Step::TransferLeader { group, to } => write!(f, "transfer-leader {} {to}", name(group)),
        }
    }
}

/// The whole plan: the moves, then the transfers that balance leaders in
/// the map as the moves leave it.
pub fn plan(map: &ClusterMap) -> Vec<Step> {
    let mut map = map.clone();
    let mut steps = plan_moves(&mut map);
    steps.extend(plan_transfers(&mut map));
    steps
}

fn live_nodes(map: &ClusterMap) -> Vec<u64> {
    map.nodes.iter().filter(|(_, n)| n.status != NodeStatus::Removed).map(|(id, _)| *id).collect()
}

/// The replicas `node` holds as a voter, the meta group's included.
pub fn replicas(map: &ClusterMap, node: u64) -> usize {
    map.groups.values().filter(|p| p.voters.contains(&node)).count()
}

/// Replica moves, applied to `map` as the operation does (the new node
/// takes the old one's place in the voter list, preference included).
fn plan_moves(map: &mut ClusterMap) -> Vec<Step> {
    let live = live_nodes(map);
    let mut steps = Vec::new();
    loop {
        let load: BTreeMap<u64, usize> = live.iter().map(|n| (*n, replicas(map, *n))).collect();
        let mut sources = live.clone();
        sources.sort_by_key(|n| (std::cmp::Reverse(load[n]), *n));
        let mut targets = live.clone();
        targets.sort_by_key(|n| (load[n], *n));
        let next = sources.iter().find_map(|from| {
            targets.iter().filter(|to| load[from] >= load[*to] + 2).find_map(|to| {
                map.groups
                    .iter()
                    .filter(|(g, p)| **g != META && p.learners.is_empty() && p.voters.contains(from) && !p.hosts(*to))
                    .min_by_key(|(g, p)| (p.voters.first() == Some(from), **g))
                    .map(|(g, _)| (*g, *from, *to))
            })
        });
        let Some((group, from, to)) = next else { return steps };
        let p = map.groups.get_mut(&group).expect("found above");
        for v in &mut p.voters {
            if *v == from {
                *v = to;
            }
        }
        steps.push(Step::MoveReplica { group, from, to });
    }
}

/// Leader transfers, applied to `map` as the operation does (the new
/// leader becomes the first voter).
fn plan_transfers(map: &mut ClusterMap) -> Vec<Step> {
    let live = live_nodes(map);
    let mut steps = Vec::new();
    loop {
        let mut leads: BTreeMap<u64, usize> = live.iter().map(|n| (*n, 0)).collect();
        for (g, p) in &map.groups {
            if let Some(l) = p.voters.first().filter(|_| *g != META) {
                if let Some(c) = leads.get_mut(l) {
                    *c += 1;
                }
            }
        }
        let mut sources = live.clone();
        sources.sort_by_key(|n| (std::cmp::Reverse(leads[n]), *n));
        let Some(path) = sources.iter().find_map(|src| lighter_by_a_chain(map, &leads, *src)) else {
            return steps;
        };
        for (group, to) in path {
            let p = map.groups.get_mut(&group).expect("on the path");
            p.voters.retain(|v| *v != to);
            p.voters.insert(0, to);
            steps.push(Step::TransferLeader { group, to });
        }
    }
}

/// The shortest chain of transfers from `src` to the node leading the
/// fewest groups (at least 2 fewer than `src`) that `src` reaches, as
/// (group, new leader) pairs; `None` when there is none. Breadth first,
/// nodes and groups in id order, so the answer is deterministic.
fn lighter_by_a_chain(map: &ClusterMap, leads: &BTreeMap<u64, usize>, src: u64) -> Option<Vec<(u32, u64)>> {
    // How each reached node was reached: (previous node, group).
    let mut via: BTreeMap<u64, (u64, u32)> = BTreeMap::new();
    let mut seen = BTreeSet::from([src]);
    let mut queue = VecDeque::from([src]);
    let mut best: Option<u64> = None;
    while let Some(u) = queue.pop_front() {
        if leads[&u] + 2 <= leads[&src] && best.is_none_or(|b| leads[&u] < leads[&b]) {
            best = Some(u);
        }
        let led =
            map.groups.iter().filter(|(g, p)| **g != META && p.learners.is_empty() && p.voters.first() == Some(&u));
        for (g, p) in led {
            let mut next: Vec<u64> = p.voters.iter().copied().filter(|v| leads.contains_key(v)).collect();
            next.sort_unstable();
            for v in next {
                if seen.insert(v) {
                    via.insert(v, (u, *g));
                    queue.push_back(v);
                }
            }
        }
    }
    let mut node = best?;
    let mut path = Vec::new();
    while node != src {
        let (prev, group) = via[&node];
        path.push((group, node));
        node = prev;
    }
    path.reverse();
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::meta::{GroupPlan, NodeInfo};

    fn node(status: NodeStatus) -> NodeInfo {
        NodeInfo { addr: String::new(), status }
    }

    /// `nodes` live nodes (1..), and shard `s` on `voters[s]`, its first
    /// voter preferred; the meta group on nodes 1-3.
    fn map(nodes: u64, voters: &[&[u64]]) -> ClusterMap {
        let nodes = (1..=nodes).map(|id| (id, node(NodeStatus::Joined))).collect();
        let group = |v: &[u64]| GroupPlan { ranges: vec![], voters: v.to_vec(), learners: vec![], generation: 0 };
        let mut groups: BTreeMap<u32, GroupPlan> =
            voters.iter().enumerate().map(|(s, v)| (s as u32, group(v))).collect();
        groups.insert(META, group(&[1, 2, 3]));
        ClusterMap { epoch: 1, nodes, groups }
    }

    /// The initial layout: shard s on the 3 nodes from (s mod n) + 1.
    fn placed(nodes: u64, shards: u64) -> ClusterMap {
        let v: Vec<Vec<u64>> = (0..shards).map(|s| (0..3).map(|k| (s + k) % nodes + 1).collect()).collect();
        map(nodes, &v.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    /// Applies `steps` as the admin operations do.
    fn apply(map: &mut ClusterMap, steps: &[Step]) {
        for s in steps {
            match *s {
                Step::MoveReplica { group, from, to } => {
                    let p = map.groups.get_mut(&group).unwrap();
                    assert!(p.voters.contains(&from) && !p.hosts(to), "{s} on {p:?}");
                    p.voters.iter_mut().filter(|v| **v == from).for_each(|v| *v = to);
                }
                Step::TransferLeader { group, to } => {
                    let p = map.groups.get_mut(&group).unwrap();
                    assert!(p.voters.contains(&to), "{s} on {p:?}");
                    p.voters.retain(|v| *v != to);
                    p.voters.insert(0, to);
                }
            }
        }
    }

    fn loads(map: &ClusterMap) -> BTreeMap<u64, usize> {
        live_nodes(map).into_iter().map(|n| (n, replicas(map, n))).collect()
    }

    fn leaders(map: &ClusterMap) -> BTreeMap<u64, usize> {
        let led = |n: u64| map.groups.iter().filter(|(g, p)| **g != META && p.voters.first() == Some(&n)).count();
        live_nodes(map).into_iter().map(|n| (n, led(n))).collect()
    }

    fn spread(counts: &BTreeMap<u64, usize>) -> usize {
        counts.values().max().unwrap() - counts.values().min().unwrap()
    }

    /// Plans, checks the plan is moves then transfers, applies it, and
    /// checks the result is balanced and plans nothing more.
    fn rebalanced(mut m: ClusterMap) -> (ClusterMap, Vec<Step>) {
        let steps = plan(&m);
        let first_transfer = steps.iter().position(|s| !s.is_move()).unwrap_or(steps.len());
        assert!(steps[first_transfer..].iter().all(|s| !s.is_move()), "moves come first: {steps:?}");
        apply(&mut m, &steps);
        assert_eq!(plan(&m), vec![], "a second plan after {steps:?}");
        (m, steps)
    }

    #[test]
    fn a_balanced_cluster_plans_nothing() {
        assert_eq!(plan(&placed(3, 3)), vec![]);
        assert_eq!(plan(&placed(3, 6)), vec![]);
        assert_eq!(plan(&placed(5, 5)), vec![]);
    }

    #[test]
    fn a_new_node_receives_its_share_of_replicas_and_leaders() {
        let mut m = placed(3, 6);
        m.nodes.insert(4, node(NodeStatus::New));
        let (m, steps) = rebalanced(m);
        // 21 replicas (meta's 3 included) over 4 nodes: 6, 5, 5, 5; 6
        // leaders: 2, 2, 1, 1.
        let moves: Vec<&Step> = steps.iter().filter(|s| s.is_move()).collect();
        assert_eq!(moves.len(), 5, "{steps:?}");
        assert!(moves.iter().all(|s| matches!(s, Step::MoveReplica { to: 4, .. })), "{steps:?}");
        assert_eq!(loads(&m)[&4], 5);
        assert!(spread(&loads(&m)) <= 1, "{:?}", loads(&m));
        assert!(spread(&leaders(&m)) <= 1, "{:?}", leaders(&m));
        assert_eq!(leaders(&m).values().sum::<usize>(), 6);
        // Deterministic, and the moves keep leaders where they were.
        assert_eq!(
            plan(&{
                let mut m = placed(3, 6);
                m.nodes.insert(4, node(NodeStatus::New));
                m
            }),
            steps
        );
        assert_eq!(steps[0], Step::MoveReplica { group: 1, from: 1, to: 4 });
    }

    #[test]
    fn uneven_leaders_are_transferred_along_voters() {
        // Replicas balanced (3 shards each, meta on 1-3), node 1 prefers 3
        // groups, nodes 3 and 5 none.
        let m = map(5, &[&[1, 2, 3], &[1, 3, 4], &[1, 4, 5], &[2, 5, 3], &[4, 2, 5]]);
        assert_eq!(spread(&loads(&m)), 1);
        let (m, steps) = rebalanced(m);
        assert!(steps.iter().all(|s| !s.is_move()), "{steps:?}");
        assert_eq!(leaders(&m).values().copied().collect::<Vec<_>>(), [1, 1, 1, 1, 1], "{steps:?}");
        // The chain case: node 1 leads 2 groups whose voters are 1, 2 only;
        // 2 leads one whose voters include 3, who leads nothing.
        let steps = plan_transfers(&mut map(3, &[&[1, 2], &[1, 2], &[2, 3]]));
        assert_eq!(
            steps,
            [Step::TransferLeader { group: 0, to: 2 }, Step::TransferLeader { group: 2, to: 3 }],
            "{steps:?}"
        );
    }

    #[test]
    fn a_group_with_learners_is_left_alone() {
        let mut m = placed(3, 3);
        m.nodes.insert(4, node(NodeStatus::Joined));
        for g in [0, 1] {
            m.groups.get_mut(&g).unwrap().learners.push(4);
        }
        let steps = plan(&m);
        assert!(steps.iter().all(|s| !matches!(s, Step::MoveReplica { group: 0 | 1, .. })), "{steps:?}");
        assert!(steps.iter().all(|s| !matches!(s, Step::TransferLeader { group: 0 | 1, .. })), "{steps:?}");
        // Only group 2 may move, once (then 3, 4, 4, 1 replicas, meta's
        // included).
        assert_eq!(steps, [Step::MoveReplica { group: 2, from: 1, to: 4 }]);
        // With every group mid-move, nothing at all.
        m.groups.get_mut(&2).unwrap().learners.push(4);
        assert_eq!(plan(&m), vec![]);
    }

    #[test]
    fn removed_nodes_receive_nothing_and_meta_is_not_moved() {
        let mut m = placed(3, 6);
        m.nodes.insert(4, node(NodeStatus::Removed));
        m.nodes.insert(5, node(NodeStatus::Joined));
        let (m, steps) = rebalanced(m);
        assert!(!steps.is_empty());
        for s in &steps {
            assert!(!matches!(s, Step::MoveReplica { to: 4, .. } | Step::TransferLeader { to: 4, .. }), "{s}");
            assert!(!matches!(s, Step::MoveReplica { group: META, .. } | Step::TransferLeader { group: META, .. }));
        }
        assert!(!loads(&m).contains_key(&4));
        assert_eq!(loads(&m)[&5], 5, "{:?}", loads(&m));
        assert_eq!(m.groups[&META].voters, [1, 2, 3]);
    }

    #[test]
    fn steps_print_as_admin_arguments() {
        assert_eq!(Step::MoveReplica { group: 2, from: 1, to: 4 }.to_string(), "move-replica 2 1 4");
        assert_eq!(Step::TransferLeader { group: META, to: 3 }.to_string(), "transfer-leader meta 3");
    }
}
