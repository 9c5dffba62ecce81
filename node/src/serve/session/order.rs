//! The order a lane keeps among its commands in flight (see the parent
//! module's docs): which kind each command is, what it touches, and the
//! index that says whether a new one must wait.

use std::collections::HashMap;

use bytes::Bytes;
use tessera_common::command::NodeCommand;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Read,
    /// A logged write: writes are proposed in arrival order, so two writes
    /// never need to wait for each other.
    Write,
    /// A model run: reads its model and inputs, later writes its outputs.
    Exec,
}

/// What an in-flight command touches.
#[derive(Debug)]
pub(super) struct Access {
    pub(super) kind: Kind,
    /// Keyspace-wide (KEYS, SCAN, FLUSHALL, ...): touches every key.
    all: bool,
    reads: Vec<Bytes>,
    writes: Vec<Bytes>,
}

impl Access {
    pub(super) fn of(cmd: &NodeCommand) -> Access {
        let kind = if cmd.is_exec() {
            Kind::Exec
        } else if cmd.is_write() {
            Kind::Write
        } else {
            Kind::Read
        };
        let all = !cmd.has_keys();
        let keys = || cmd.keys().cloned().collect::<Vec<_>>();
        let (reads, writes) = match kind {
            Kind::Read => (keys(), Vec::new()),
            Kind::Write => (Vec::new(), keys()),
            Kind::Exec => {
                let writes: Vec<Bytes> = cmd.written_keys().unwrap_or_default().into_iter().cloned().collect();
                let reads = keys().into_iter().filter(|k| !writes.contains(k)).collect();
                (reads, writes)
            }
        };
        Access { kind, all, reads, writes }
    }

    /// Whether `self` must wait for `other` (in flight) to finish: they
    /// touch a common key and one of them writes it. Reads never wait for
    /// reads; writes never wait for writes (the log orders them). The
    /// rule [`Flights`] indexes; tests check the index against it.
    #[cfg(test)]
    fn conflicts(&self, other: &Access) -> bool {
        if !self.kind.may_conflict(other.kind) {
            return false;
        }
        if self.all || other.all {
            return true;
        }
        let hit = |a: &[Bytes], b: &[Bytes]| a.iter().any(|k| b.contains(k));
        hit(&self.writes, &other.reads) || hit(&self.writes, &other.writes) || hit(&other.writes, &self.reads)
    }
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Read, Kind::Write, Kind::Exec];

    /// Whether commands of these kinds can conflict at all.
    fn may_conflict(self, other: Kind) -> bool {
        !matches!((self, other), (Kind::Read, Kind::Read) | (Kind::Write, Kind::Write))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How the commands in flight use one key.
#[derive(Default, Clone, Copy, Debug)]
struct Uses {
    /// Read by reads and by model runs.
    read: u32,
    /// Written by writes.
    written_by_write: u32,
    /// Written by model runs.
    written_by_exec: u32,
}

/// A lane's commands in flight, indexed by key: whether a command must
/// wait is found from its own keys, not by comparing it with every command
/// in flight (a router multiplexes all its clients into one session, so a
/// lane can hold thousands).
#[derive(Default)]
pub(super) struct Flights {
    by_slot: HashMap<u64, Access>,
    keys: HashMap<Bytes, Uses>,
    /// Commands in flight by kind, and those among them keyspace-wide.
    kinds: [u32; 3],
    all: [u32; 3],
}

impl Flights {
    /// Whether `a` must wait for a command in flight ([`Access::conflicts`]
    /// with any of them).
    pub(super) fn blocks(&self, a: &Access) -> bool {
        let compatible = |counts: &[u32; 3]| Kind::ALL.iter().any(|k| a.kind.may_conflict(*k) && counts[k.index()] > 0);
        if compatible(&self.all) || (a.all && compatible(&self.kinds)) {
            return true;
        }
        let uses = |k: &Bytes| self.keys.get(k).copied().unwrap_or_default();
        // A key `a` writes: any reader conflicts (`a` is a write or a run,
        // never a read); so does any run writing it, and a write writing it
        // unless `a` is a write too.
        a.writes
            .iter()
            .map(uses)
            .any(|u| u.read > 0 || u.written_by_exec > 0 || (a.kind != Kind::Write && u.written_by_write > 0))
            || a.reads.iter().map(uses).any(|u| u.written_by_write > 0 || u.written_by_exec > 0)
    }

    pub(super) fn insert(&mut self, slot: u64, a: Access) {
        self.count(&a, |n| *n += 1);
        self.by_slot.insert(slot, a);
    }

    pub(super) fn remove(&mut self, slot: u64) {
        if let Some(a) = self.by_slot.remove(&slot) {
            self.count(&a, |n| *n -= 1);
        }
    }

    fn count(&mut self, a: &Access, mut f: impl FnMut(&mut u32)) {
        f(&mut self.kinds[a.kind.index()]);
        if a.all {
            f(&mut self.all[a.kind.index()]);
        }
        for (keys, read) in [(&a.reads, true), (&a.writes, false)] {
            for k in keys {
                let u = self.keys.entry(k.clone()).or_default();
                f(match (read, a.kind) {
                    (true, _) => &mut u.read,
                    (false, Kind::Exec) => &mut u.written_by_exec,
                    (false, _) => &mut u.written_by_write,
                });
                if u.read == 0 && u.written_by_write == 0 && u.written_by_exec == 0 {
                    self.keys.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift), so a failure replays.
    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }

        fn keys(&mut self) -> Vec<Bytes> {
            (0..self.below(3)).map(|_| Bytes::from(format!("k{}", self.below(5)))).collect()
        }

        fn access(&mut self) -> Access {
            let kind = Kind::ALL[self.below(3) as usize];
            let all = self.below(12) == 0;
            let (reads, writes) = match kind {
                Kind::Read => (self.keys(), Vec::new()),
                Kind::Write => (Vec::new(), self.keys()),
                Kind::Exec => {
                    let writes = self.keys();
                    (self.keys().into_iter().filter(|k| !writes.contains(k)).collect(), writes)
                }
            };
            Access { kind, all: all && reads.is_empty() && writes.is_empty(), reads, writes }
        }
    }

    #[test]
    fn the_key_index_blocks_exactly_what_the_pairwise_rule_does() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut flights = Flights::default();
        let (mut next, mut blocked, mut free) = (0u64, 0, 0);
        for _ in 0..20_000 {
            let a = g.access();
            let expected = flights.by_slot.values().any(|f| a.conflicts(f));
            assert_eq!(
                flights.blocks(&a),
                expected,
                "{a:?} against {:?}",
                flights.by_slot.values().collect::<Vec<_>>()
            );
            if expected {
                blocked += 1
            } else {
                free += 1
            }
            // Start it anyway (the index must hold any mix), or finish one.
            if g.below(2) == 0 || flights.by_slot.is_empty() {
                flights.insert(next, a);
                next += 1;
            } else {
                let slots: Vec<u64> = flights.by_slot.keys().copied().collect();
                flights.remove(slots[g.below(slots.len() as u64) as usize]);
            }
        }
        assert!(blocked > 1000 && free > 1000, "both outcomes exercised: {blocked} blocked, {free} free");
        for slot in flights.by_slot.keys().copied().collect::<Vec<_>>() {
            flights.remove(slot);
        }
        assert!(
            flights.keys.is_empty() && flights.kinds == [0; 3] && flights.all == [0; 3],
            "all counts return to zero"
        );
    }
}
