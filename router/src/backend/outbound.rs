//! What a session sends next: short commands in batches, long ones in parts
//! (see [`tessera_proto::parts`]), with short commands going out between the
//! parts of a long one where the order allows it.
//!
//! A node keeps the order of a session's commands shard by shard, key by key
//! (its lanes), and a long command takes its place in that order once its
//! last part is in. So a short command may overtake a long one being sent
//! only if it cannot touch the same keys: it names a different slot. One of
//! the same slot waits behind the long command, and so does everything that
//! names no slot (KEYS, SCAN, FLUSHALL: a whole shard) and everything after
//! such a command. Pipelined commands of one client to different slots have
//! no order to keep between them: in Redis Cluster they may go to different
//! nodes.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tessera_proto::parts::Outgoing;
use tessera_proto::v1::{request, Request, RequestBatch};

/// Most long commands, short commands and bytes of short commands held
/// before the session's queue is left to fill.
const HELD_LONGS: usize = 2;
const HELD_COMMANDS: usize = 8192;
const HELD_BYTES: usize = 64 << 20;

enum Held {
    Short(Request),
    Long(Outgoing<request::Target>),
}

impl Held {
    fn target(&self) -> Option<request::Target> {
        match self {
            Held::Short(r) => r.target,
            Held::Long(o) => Some(o.meta),
        }
    }
}

/// Long commands still to send (the one in front is being sent) and the
/// short commands held behind them, in arrival order.
#[derive(Default)]
pub(super) struct Outbound {
    queue: VecDeque<Held>,
    /// How many of those name each slot, and how many name a shard.
    slots: HashMap<u32, u32>,
    shards: u32,
    /// How many long commands are held, and the bytes of the short ones.
    longs: usize,
    short_bytes: usize,
    /// Whether the last message sent was a part: short commands ready go
    /// before the next part, so a long command (a model upload) holds up
    /// the session by a part at most, not by all of itself.
    part_last: bool,
}

impl Outbound {
    /// Takes a command just queued: a short one that may go out now comes
    /// back; anything else waits its turn here.
    pub(super) fn admit(&mut self, id: u64, target: request::Target, command: Bytes) -> Option<Request> {
        let held = match Outgoing::new(id, target, command) {
            Ok(long) => {
                self.longs += 1;
                Held::Long(long)
            }
            Err((target, command)) => {
                let free = match target {
                    request::Target::Slot(s) => self.shards == 0 && !self.slots.contains_key(&s),
                    request::Target::Shard(_) => self.queue.is_empty(),
                };
                let r = Request { id, target: Some(target), command, total_len: 0 };
                if free {
                    return Some(r);
                }
                self.short_bytes += r.command.len();
                Held::Short(r)
            }
        };
        self.count(held.target(), true);
        self.queue.push_back(held);
        None
    }

    /// The short commands whose turn has come (those that were behind a
    /// long command now sent whole), up to `max` of them or `max_bytes`;
    /// the bytes taken.
    pub(super) fn released(&mut self, into: &mut Vec<Request>, max: usize, max_bytes: usize) -> usize {
        let mut bytes = 0;
        while into.len() < max && bytes < max_bytes {
            let Some(Held::Short(_)) = self.queue.front() else { break };
            let Some(Held::Short(r)) = self.queue.pop_front() else { unreachable!() };
            self.count(r.target, false);
            bytes += r.command.len();
            self.short_bytes -= r.command.len();
            into.push(r);
        }
        bytes
    }

    /// Whether short commands go next (else a part does).
    pub(super) fn short_turn(&self) -> bool {
        self.part_last || !matches!(self.queue.front(), Some(Held::Long(_)))
    }

    /// Whether more may be taken from the session's queue: while this much
    /// is held, callers meet a full queue (and `BUSY`) instead.
    pub(super) fn has_room(&self) -> bool {
        self.longs < HELD_LONGS && self.short_bytes < HELD_BYTES && self.queue.len() < HELD_COMMANDS
    }

    /// Whether commands released earlier still wait at the front.
    pub(super) fn releasing(&self) -> bool {
        matches!(self.queue.front(), Some(Held::Short(_)))
    }

    /// The ids of everything held: none of it has reached the node whole,
    /// so none of it can have run there.
    pub(super) fn unsent(&self) -> impl Iterator<Item = u64> + '_ {
        self.queue.iter().map(|h| match h {
            Held::Short(r) => r.id,
            Held::Long(o) => o.id,
        })
    }

    /// Notes that a batch of short commands went out.
    pub(super) fn sent_short(&mut self) {
        self.part_last = false;
    }

    /// The next part of the long command in front, alone in a message.
    pub(super) fn next_part(&mut self) -> Option<RequestBatch> {
        let Some(Held::Long(out)) = self.queue.front_mut() else { return None };
        let (command, last) = out.next_part();
        let r = Request { id: out.id, target: Some(out.meta), command, total_len: out.total };
        if last {
            self.queue.pop_front();
            self.count(r.target, false);
            self.longs -= 1;
        }
        self.part_last = true;
        Some(RequestBatch { requests: vec![r] })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn count(&mut self, target: Option<request::Target>, add: bool) {
        match target {
            Some(request::Target::Slot(s)) if add => *self.slots.entry(s).or_default() += 1,
            Some(request::Target::Slot(s)) => {
                if let Some(n) = self.slots.get_mut(&s) {
                    *n -= 1;
                    if *n == 0 {
                        self.slots.remove(&s);
                    }
                }
            }
            Some(request::Target::Shard(_)) if add => self.shards += 1,
            Some(request::Target::Shard(_)) => self.shards -= 1,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use request::Target::{Shard, Slot};
    use tessera_proto::parts::PART_BYTES;

    /// Sends everything the way the session does (short commands, then a
    /// part, alternately), admitting `more` after the first message: the
    /// ids in the order the node completes them (a long one at its last
    /// part).
    fn completion_order(
        first: Vec<(u64, request::Target, usize)>,
        more: Vec<(u64, request::Target, usize)>,
    ) -> Vec<u64> {
        let mut o = Outbound::default();
        let mut order = Vec::new();
        let mut pending = vec![first, more].into_iter();
        loop {
            let mut batch = Vec::new();
            o.released(&mut batch, usize::MAX, usize::MAX);
            if o.short_turn() {
                for (id, target, len) in pending.next().unwrap_or_default() {
                    batch.extend(o.admit(id, target, Bytes::from(vec![0u8; len])));
                }
            }
            if !batch.is_empty() {
                o.sent_short();
                order.extend(batch.iter().map(|r| r.id));
                continue;
            }
            match o.next_part() {
                Some(part) => {
                    let r = &part.requests[0];
                    if o.queue.front().is_none_or(|h| !matches!(h, Held::Long(l) if l.id == r.id)) {
                        order.push(r.id);
                    }
                }
                None if o.is_empty() && pending.len() == 0 => return order,
                None => {}
            }
        }
    }

    const LONG: usize = 3 * PART_BYTES;

    #[test]
    fn other_slots_overtake_a_long_command_and_its_own_slot_waits() {
        let order =
            completion_order(vec![(1, Slot(7), LONG)], vec![(2, Slot(7), 10), (3, Slot(8), 10), (4, Slot(9), 10)]);
        assert_eq!(order, vec![3, 4, 1, 2]);
    }

    #[test]
    fn a_whole_shard_command_waits_and_so_does_everything_after_it() {
        let order = completion_order(
            vec![(1, Slot(7), LONG), (2, Shard(0), 10), (3, Slot(8), 10)],
            vec![(4, Slot(9), 10), (5, Slot(7), 10)],
        );
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
        // With nothing long in the way, it goes at once.
        assert_eq!(completion_order(vec![(1, Shard(0), 10), (2, Slot(1), 10)], vec![]), vec![1, 2]);
    }

    #[test]
    fn long_commands_go_one_after_another_in_order() {
        let order = completion_order(
            vec![(1, Slot(7), LONG), (2, Slot(8), LONG), (3, Slot(8), 10), (4, Slot(9), 10)],
            vec![(5, Slot(7), 10)],
        );
        // (5 could have gone once 1 was in; it waits in line behind 2.)
        assert_eq!(order, vec![4, 1, 2, 3, 5]);
    }

    #[test]
    fn parts_alternate_with_short_commands() {
        let mut o = Outbound::default();
        assert!(o.admit(1, Slot(7), Bytes::from(vec![0u8; LONG])).is_none());
        assert!(!o.short_turn(), "a part goes first");
        assert_eq!(o.next_part().unwrap().requests[0].id, 1);
        assert!(o.short_turn(), "then whatever short is ready");
        assert!(o.admit(2, Slot(8), Bytes::from_static(b"x")).is_some());
        o.sent_short();
        assert!(!o.short_turn());
        assert_eq!(o.next_part().unwrap().requests[0].total_len, LONG as u64);
        // Held counts return to zero once all is sent.
        while o.next_part().is_some() {}
        assert!(o.is_empty() && o.slots.is_empty() && o.shards == 0 && o.longs == 0 && o.short_bytes == 0);
    }

    #[test]
    fn released_commands_go_in_batches_of_bounded_size() {
        let mut o = Outbound::default();
        assert!(o.admit(1, Slot(7), Bytes::from(vec![0u8; LONG])).is_none());
        for id in 2..12 {
            assert!(o.admit(id, Slot(7), Bytes::from(vec![0u8; PART_BYTES])).is_none(), "held behind 1");
        }
        assert_eq!(o.unsent().collect::<Vec<_>>(), (1..12).collect::<Vec<_>>());
        while o.next_part().is_some() {}
        let mut sizes = Vec::new();
        while o.releasing() {
            let mut batch = Vec::new();
            let bytes = o.released(&mut batch, 512, 2 * PART_BYTES);
            assert!(bytes < 2 * PART_BYTES + PART_BYTES, "a batch stops at its byte limit");
            sizes.push(batch.len());
        }
        assert_eq!(sizes, vec![2, 2, 2, 2, 2]);
        assert!(o.is_empty() && o.short_bytes == 0);
    }

    #[test]
    fn a_full_hold_stops_taking_commands() {
        let mut o = Outbound::default();
        assert!(o.has_room());
        o.admit(1, Slot(7), Bytes::from(vec![0u8; LONG]));
        assert!(o.has_room());
        o.admit(2, Slot(8), Bytes::from(vec![0u8; LONG]));
        assert!(!o.has_room(), "two long commands held");
        while o.next_part().is_some() {}
        assert!(o.has_room());
    }
}
