//! Nemeses: faults chosen from one seed, injected on a flip-flop schedule
//! (fault, hold, heal, wait until healthy, quiet), then a final heal.
//!
//! The seed fixes the order of fault kinds, the hold and quiet times and
//! every random target; leader-targeted faults hit whichever node leads the
//! chosen shard at that moment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

use crate::control::Control;
use crate::history::FaultEvent;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 a random node, restart it at heal.
    Kill,
    /// kill -9 the leader of a random shard.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT at heal.
    Pause,
    /// SIGSTOP the leader of a random shard.
    PauseLeader,
    /// Split the nodes into a minority and a majority.
    Partition,
    /// Cut the leader of a random shard off from every other node.
    IsolateLeader,
    /// Two sides that cannot talk, and one node that talks to both.
    Bridge,
    /// Drop a share of the packets between all nodes.
    Lossy,
    /// kill -9 a node, delete its data, restart it: it must rejoin as a
    /// new replica without voting as its old self.
    WipeRejoin,
    /// Move a replica to another node while a third node is down.
    MoveUnderKill,
    /// Slow the clocks of the leader of a random shard (0.5–0.9 × real
    /// time), then cut it off from every other node: a leader that measures
    /// its lease on a slow clock goes on trusting it after its followers'
    /// own clocks let them elect another. Lease reads are built to be safe
    /// down to half speed (node/src/raft/group.rs, `lease_option`).
    SlowClockLeader,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::KillLeader => "kill-leader",
            Kind::Pause => "pause",
            Kind::PauseLeader => "pause-leader",
            Kind::Partition => "partition",
            Kind::IsolateLeader => "isolate-leader",
            Kind::Bridge => "bridge",
            Kind::Lossy => "lossy",
            Kind::WipeRejoin => "wipe-rejoin",
            Kind::MoveUnderKill => "move-under-kill",
            Kind::SlowClockLeader => "slow-clock-leader",
        }
    }

    pub const ALL: [Kind; 11] = [
        Kind::Kill,
        Kind::KillLeader,
        Kind::Pause,
        Kind::PauseLeader,
        Kind::Partition,
        Kind::IsolateLeader,
        Kind::Bridge,
        Kind::Lossy,
        Kind::WipeRejoin,
        Kind::MoveUnderKill,
        Kind::SlowClockLeader,
    ];

    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s).with_context(|| format!("unknown nemesis {s}"))
    }

    /// Whether this kind can run on the cluster.
    pub fn possible(self, ctl: &dyn Control) -> bool {
        let n = ctl.node_count();
        match self {
            Kind::Partition | Kind::IsolateLeader | Kind::Lossy => ctl.can_partition() && n >= 3,
            Kind::Bridge => ctl.can_partition() && n >= 5,
            Kind::MoveUnderKill => n >= 5,
            Kind::SlowClockLeader => ctl.can_partition() && ctl.can_skew_clocks() && n >= 3,
            _ => true,
        }
    }
}

/// A replica group as the cluster map and the nodes describe it.
#[derive(Clone, Debug, Default)]
pub struct Group {
    pub slots: Vec<(u16, u16)>,
    pub voters: Vec<usize>,
    pub learners: Vec<usize>,
    pub generation: u64,
    /// The leader in the newest term any replica reports (0: none known).
    pub leader: usize,
    /// Replicas that answered with a leader, and which.
    pub views: Vec<(usize, usize)>,
}

/// What `tessera-admin status` says about the shards.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    pub shards: BTreeMap<u32, Group>,
    pub silent: Vec<usize>,
}

impl Topology {
    pub fn read(ctl: &dyn Control) -> anyhow::Result<Topology> {
        let text = tessera_tests::admin(&ctl.node_addrs(), 10, &["status"])?;
        Ok(Topology::parse(&text))
    }

    fn parse(text: &str) -> Topology {
        let mut t = Topology::default();
        let mut terms: BTreeMap<u32, u64> = BTreeMap::new();
        let list = |s: &str| -> Vec<usize> {
            s.trim_matches(|c| c == '[' || c == ']').split(',').filter_map(|x| x.trim().parse().ok()).collect()
        };
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"shard") && words.len() >= 4 {
                // shard 3 slots [0-3276] voters [1, 2, 3] learners [] generation 0
                let Ok(id) = words[1].parse::<u32>() else { continue };
                let g = t.shards.entry(id).or_default();
                let rest = line.split_once(" slots ").map(|x| x.1).unwrap_or("");
                let (slots, rest) = rest.split_once(" voters ").unwrap_or((rest, ""));
                let (voters, rest) = rest.split_once(" learners ").unwrap_or((rest, ""));
                let (learners, generation) = rest.split_once(" generation ").unwrap_or((rest, "0"));
                g.slots = slots
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-')?;
                        Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
                    })
                    .collect();
                g.voters = list(voters);
                g.learners = list(learners);
                g.generation = generation.trim().parse().unwrap_or(0);
            } else if words.first() == Some(&"node") && words.len() >= 3 {
                let Ok(node) = words[1].trim_end_matches(':').parse::<usize>() else { continue };
                if words[2] == "shard" && words.len() >= 8 {
                    // node 1 shard 3: leader 1 term 2 commit 5 applied 5
                    let (Ok(id), Ok(leader), Ok(term)) =
                        (words[3].trim_end_matches(':').parse::<u32>(), words[5].parse(), words[7].parse::<u64>())
                    else {
                        continue;
                    };
                    let g = t.shards.entry(id).or_default();
                    g.views.push((node, leader));
                    if leader != 0 && terms.get(&id).is_none_or(|&best| term > best) {
                        terms.insert(id, term);
                        g.leader = leader;
                    }
                } else if words[1].ends_with(':') {
                    // node 4: no answer / node 4: <error>
                    t.silent.push(node);
                }
            }
        }
        // Lines for groups not in the map (the meta group's numeric id).
        t.shards.retain(|_, g| !g.voters.is_empty());
        t
    }

    /// Every node answers, every shard has three voters and no learners,
    /// and every voter agrees on a leader.
    pub fn healthy(&self) -> bool {
        self.silent.is_empty()
            && !self.shards.is_empty()
            && self.shards.values().all(|g| {
                g.voters.len() == 3
                    && g.learners.is_empty()
                    && g.leader != 0
                    && g.voters.iter().all(|v| g.views.iter().any(|&(n, l)| n == *v && l == g.leader))
            })
    }

    /// The shard that owns `slot`.
    pub fn shard_of(&self, slot: u16) -> Option<u32> {
        self.shards.iter().find(|(_, g)| g.slots.iter().any(|&(a, b)| a <= slot && slot <= b)).map(|(id, _)| *id)
    }

    pub fn led_by(&self, node: usize) -> Vec<u32> {
        self.shards.iter().filter(|(_, g)| g.leader == node).map(|(id, _)| *id).collect()
    }
}

/// Faults currently in force, so they can be lifted.
#[derive(Default)]
struct Active {
    killed: Vec<usize>,
    paused: Vec<usize>,
    /// Nodes whose clocks run slow.
    slowed: Vec<usize>,
    network: bool,
    mover: Option<std::thread::JoinHandle<anyhow::Result<String>>>,
    /// Wiped node and its groups' generations before the wipe.
    wiped: Option<(usize, BTreeMap<u32, u64>)>,
}

pub struct Nemesis {
    rng: StdRng,
    kinds: Vec<Kind>,
    order: Vec<Kind>,
    start: Instant,
    pub events: Vec<FaultEvent>,
    /// Times from a heal to a healthy cluster, seconds.
    pub recoveries: Vec<f64>,
    /// Heals after which the cluster did not become healthy in time.
    pub unhealthy: Vec<String>,
    pub hold: (u64, u64),
    pub quiet: (u64, u64),
    pub health_wait: Duration,
}

impl Nemesis {
    pub fn new(rng: StdRng, kinds: Vec<Kind>, start: Instant) -> Nemesis {
        Nemesis {
            rng,
            kinds,
            order: Vec::new(),
            start,
            events: Vec::new(),
            recoveries: Vec::new(),
            unhealthy: Vec::new(),
            hold: (4_000, 9_000),
            quiet: (2_000, 5_000),
            health_wait: Duration::from_secs(90),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The next kind: every kind once per round, in a seeded order.
    fn next_kind(&mut self) -> Kind {
        if self.order.is_empty() {
            self.order = self.kinds.clone();
            self.order.shuffle(&mut self.rng);
        }
        self.order.pop().expect("kinds")
    }

    /// Runs faults until `until`, then heals everything.
    pub fn run(&mut self, ctl: &mut dyn Control, until: Instant) -> anyhow::Result<()> {
        while Instant::now() < until {
            let kind = self.next_kind();
            let topo = Topology::read(ctl).unwrap_or_default();
            let mut active = Active::default();
            let mut event = FaultEvent {
                name: kind.name().into(),
                detail: String::new(),
                nodes: Vec::new(),
                led_shards: Vec::new(),
                start: self.now(),
                end: 0,
            };
            if let Err(e) = self.inject(ctl, kind, &topo, &mut active, &mut event) {
                event.detail.push_str(&format!(" (failed: {e:#})"));
            }
            eprintln!("[{:>7.1}s] fault {} {}", event.start as f64 / 1e9, event.name, event.detail);
            let hold = self.rng.random_range(self.hold.0..=self.hold.1);
            std::thread::sleep(Duration::from_millis(hold));
            self.heal(ctl, &mut active, &mut event);
            event.end = self.now();
            self.events.push(event);
            self.wait_healthy(ctl, &active)?;
            let quiet = self.rng.random_range(self.quiet.0..=self.quiet.1);
            std::thread::sleep(Duration::from_millis(quiet));
        }
        Ok(())
    }

    fn pick_node(&mut self, n: usize) -> usize {
        self.rng.random_range(1..=n)
    }

    /// The leader of a random shard (a random node when none is known).
    fn pick_leader(&mut self, topo: &Topology, n: usize) -> (usize, Vec<u32>) {
        let shards: Vec<u32> = topo.shards.keys().copied().collect();
        let leader = shards.choose(&mut self.rng).map(|s| topo.shards[s].leader).unwrap_or(0);
        let node = if leader == 0 { self.pick_node(n) } else { leader };
        (node, topo.led_by(node))
    }

    fn inject(
        &mut self,
        ctl: &mut dyn Control,
        kind: Kind,
        topo: &Topology,
        active: &mut Active,
        event: &mut FaultEvent,
    ) -> anyhow::Result<()> {
        let n = ctl.node_count();
        match kind {
            Kind::Kill | Kind::KillLeader => {
                let (node, led) = if kind == Kind::Kill { self.pick(topo, n) } else { self.pick_leader(topo, n) };
                ctl.kill(node);
                active.killed.push(node);
                event.nodes = vec![node];
                event.led_shards = led;
                event.detail = format!("node {node}");
            }
            Kind::Pause | Kind::PauseLeader => {
                let (node, led) = if kind == Kind::Pause { self.pick(topo, n) } else { self.pick_leader(topo, n) };
                ctl.pause(node, true);
                active.paused.push(node);
                event.nodes = vec![node];
                event.led_shards = led;
                event.detail = format!("node {node}");
            }
            Kind::Partition => {
                let mut nodes: Vec<usize> = (1..=n).collect();
                nodes.shuffle(&mut self.rng);
                let minority: Vec<usize> = nodes[..(n - 1) / 2].to_vec();
                let majority: Vec<usize> = nodes[(n - 1) / 2..].to_vec();
                let cut: Vec<(usize, usize)> =
                    minority.iter().flat_map(|&a| majority.iter().map(move |&b| (a, b))).collect();
                active.network = true;
                ctl.network(&cut, 0)?;
                event.led_shards = minority.iter().flat_map(|&m| topo.led_by(m)).collect();
                event.nodes = minority.clone();
                event.detail = format!("{minority:?} | {majority:?}");
            }
            Kind::IsolateLeader | Kind::SlowClockLeader => {
                let (node, led) = self.pick_leader(topo, n);
                let mut detail = format!("node {node} cut off from its peers");
                if kind == Kind::SlowClockLeader {
                    let rate = f64::from(self.rng.random_range(50u8..=90)) / 100.0;
                    ctl.clock_rate(node, rate)?;
                    active.slowed.push(node);
                    // The node picks the rate up within `REREAD`; the leases
                    // it takes from then on run on the slow clock.
                    std::thread::sleep(tessera_tests::clock::REREAD + Duration::from_millis(500));
                    // The fault, for failover times, is the cut.
                    event.start = self.now();
                    detail = format!("node {node}'s clocks at {rate}x, then cut off from its peers");
                }
                let cut: Vec<(usize, usize)> = (1..=n).filter(|&o| o != node).map(|o| (node, o)).collect();
                active.network = true;
                ctl.network(&cut, 0)?;
                event.nodes = vec![node];
                event.led_shards = led;
                event.detail = detail;
            }
            Kind::Bridge => {
                let mut nodes: Vec<usize> = (1..=n).collect();
                nodes.shuffle(&mut self.rng);
                let bridge = nodes[0];
                let half = (n - 1) / 2;
                let (a, b) = (nodes[1..1 + half].to_vec(), nodes[1 + half..].to_vec());
                let cut: Vec<(usize, usize)> = a.iter().flat_map(|&x| b.iter().map(move |&y| (x, y))).collect();
                active.network = true;
                ctl.network(&cut, 0)?;
                event.nodes = (1..=n).filter(|&x| x != bridge).collect();
                event.detail = format!("{a:?} | {b:?}, bridged by {bridge}");
            }
            Kind::Lossy => {
                let loss = self.rng.random_range(10..=40);
                active.network = true;
                ctl.network(&[], loss)?;
                event.nodes = (1..=n).collect();
                event.detail = format!("{loss}% of packets between nodes dropped");
            }
            Kind::WipeRejoin => {
                let (node, led) = self.pick(topo, n);
                let generations: BTreeMap<u32, u64> = topo
                    .shards
                    .iter()
                    .filter(|(_, g)| g.voters.contains(&node))
                    .map(|(id, g)| (*id, g.generation))
                    .collect();
                ctl.kill(node);
                ctl.wipe(node)?;
                active.wiped = Some((node, generations));
                if let Err(e) = ctl.restart(node) {
                    self.unhealthy.push(format!("node {node} did not start with an empty disk: {e:#}"));
                    active.killed.push(node);
                }
                event.nodes = vec![node];
                event.led_shards = led;
                event.detail = format!("node {node} lost its disk and restarted empty");
            }
            Kind::MoveUnderKill => {
                let Some((&shard, g)) = topo.shards.iter().collect::<Vec<_>>().choose(&mut self.rng).copied() else {
                    bail!("no shards known");
                };
                let outside: Vec<usize> = (1..=n).filter(|x| !g.voters.contains(x)).collect();
                let (Some(&from), Some(&to)) = (g.voters.choose(&mut self.rng), outside.choose(&mut self.rng)) else {
                    bail!("shard {shard} has no replica to move");
                };
                // Another node goes down while the replica moves.
                let others: Vec<usize> = (1..=n).filter(|&x| x != from && x != to).collect();
                let victim = *others.choose(&mut self.rng).expect("n >= 5");
                let addrs = ctl.node_addrs();
                let (s, f, t) = (shard.to_string(), from.to_string(), to.to_string());
                active.mover =
                    Some(std::thread::spawn(move || tessera_tests::admin(&addrs, 120, &["move-replica", &s, &f, &t])));
                std::thread::sleep(Duration::from_millis(self.rng.random_range(0..1_000)));
                ctl.kill(victim);
                active.killed.push(victim);
                event.nodes = vec![victim];
                event.led_shards = topo.led_by(victim);
                event.detail = format!("shard {shard} moves {from} -> {to} while node {victim} is down");
            }
        }
        Ok(())
    }

    /// A random node, and the shards it leads.
    fn pick(&mut self, topo: &Topology, n: usize) -> (usize, Vec<u32>) {
        let node = self.pick_node(n);
        (node, topo.led_by(node))
    }

    /// Lifts every fault in `active`. A node that does not come back is a
    /// finding (a liveness violation), not a harness error.
    fn heal(&mut self, ctl: &mut dyn Control, active: &mut Active, event: &mut FaultEvent) {
        if active.network {
            if let Err(e) = ctl.network(&[], 0) {
                self.unhealthy.push(format!("could not heal the network: {e:#}"));
            }
        }
        for id in active.paused.drain(..) {
            ctl.pause(id, false);
        }
        for id in active.slowed.drain(..) {
            if let Err(e) = ctl.clock_rate(id, 1.0) {
                self.unhealthy.push(format!("could not put node {id}'s clocks back on real time: {e:#}"));
            }
        }
        for id in active.killed.drain(..) {
            if let Err(e) = ctl.restart(id) {
                self.unhealthy.push(format!("node {id} did not restart after {}: {e:#}", event.name));
            }
        }
        if let Some(mover) = active.mover.take() {
            match mover.join() {
                Ok(Ok(out)) => event.detail.push_str(&format!(": {}", out.trim())),
                Ok(Err(e)) => event.detail.push_str(&format!(": move failed: {e:#}")),
                Err(_) => event.detail.push_str(": move thread panicked"),
            }
        }
    }

    /// Waits (bounded) until the cluster is healthy again: every node
    /// answers, every shard has three voters in agreement on a leader, and a
    /// wiped node's groups have rebuilt it (a newer generation).
    fn wait_healthy(&mut self, ctl: &mut dyn Control, active: &Active) -> anyhow::Result<()> {
        let started = Instant::now();
        let deadline = started + self.health_wait;
        loop {
            let topo = Topology::read(ctl).unwrap_or_default();
            let rebuilt = match &active.wiped {
                None => true,
                Some((_, before)) => {
                    before.iter().all(|(id, gen)| topo.shards.get(id).is_some_and(|g| g.generation > *gen))
                }
            };
            if topo.healthy() && rebuilt {
                self.recoveries.push(started.elapsed().as_secs_f64());
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = format!(
                    "cluster not healthy {:?} after healing {}: {topo:?}",
                    self.health_wait,
                    self.events.last().map(|e| e.name.as_str()).unwrap_or("?")
                );
                eprintln!("{what}");
                self.unhealthy.push(what);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_parsed() {
        let text = "epoch 3\n\
            node 1 10.0.0.11:7100 Joined\n\
            meta slots [] voters [1, 2, 3] learners [] generation 0\n\
            shard 1 slots [0-8191] voters [1, 2, 3] learners [] generation 0\n\
            shard 2 slots [8192-16383] voters [2, 3, 4] learners [5] generation 2\n\
            node 1 shard 4294967295: leader 1 term 2 commit 9 applied 9\n\
            node 1 shard 1: leader 1 term 2 commit 9 applied 9\n\
            node 2 shard 1: leader 1 term 2 commit 9 applied 9\n\
            node 3 shard 1: leader 1 term 2 commit 9 applied 9\n\
            node 2 shard 2: leader 4 term 3 commit 9 applied 9\n\
            node 3 shard 2: leader 2 term 2 commit 9 applied 9\n\
            node 4: no answer\n";
        let t = Topology::parse(text);
        assert_eq!(t.shards.len(), 2);
        assert_eq!(t.shards[&1].leader, 1);
        assert_eq!(t.shards[&2].leader, 4, "the newest term wins");
        assert_eq!(t.shards[&2].learners, vec![5]);
        assert_eq!(t.shards[&2].generation, 2);
        assert_eq!(t.silent, vec![4]);
        assert_eq!(t.shard_of(9000), Some(2));
        assert_eq!(t.led_by(1), vec![1]);
        assert!(!t.healthy());
    }
}
