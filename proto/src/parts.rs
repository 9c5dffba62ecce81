//! Long commands and replies travel in parts.
//!
//! tonic reads each message of a stream into one buffer and keeps that
//! buffer at the largest size it has needed for as long as the stream lives.
//! A 600 MB model sent as one message of the session stream would leave
//! 600 MB in the node's receive buffer (and its reply, in the router's) for
//! good. So a command or reply longer than [`PART_BYTES`] goes in parts of
//! at most that size, each alone in a message, in order, under one id, each
//! carrying the whole's length (`total_len`); the receiver joins them into
//! one buffer of exactly that length. Other messages go between the parts,
//! so a long one holds up the rest of its session by a part, not by all of
//! itself (a router keeps a long command's place in its slot's order: see
//! its `backend::outbound`).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use bytes::Bytes;

/// Longest command or reply sent in one piece, and the size of each part.
pub const PART_BYTES: usize = 4 << 20;

/// Longest command or reply a receiver joins.
pub const MAX_WHOLE_BYTES: u64 = 1 << 30;

/// A long message being sent: what is left of it.
#[derive(Debug)]
pub struct Outgoing<T> {
    pub id: u64,
    /// What the message is about (the target shard, the reply's kind).
    pub meta: T,
    pub total: u64,
    /// What is left to send, in the pieces it was given in.
    rest: std::collections::VecDeque<Bytes>,
}

impl<T> Outgoing<T> {
    /// `whole` to send in parts, if it is too long for one message.
    pub fn new(id: u64, meta: T, whole: Bytes) -> Result<Outgoing<T>, (T, Bytes)> {
        if whole.len() <= PART_BYTES {
            return Err((meta, whole));
        }
        Ok(Outgoing { id, meta, total: whole.len() as u64, rest: [whole].into() })
    }

    /// The concatenation of `pieces` to send in parts (however long it is):
    /// a large value need not be joined into one buffer first.
    pub fn from_pieces(id: u64, meta: T, pieces: Vec<Bytes>) -> Outgoing<T> {
        let total = pieces.iter().map(|p| p.len() as u64).sum();
        Outgoing { id, meta, total, rest: pieces.into_iter().filter(|p| !p.is_empty()).collect() }
    }

    /// The next part (a slice of a large piece, or small pieces gathered),
    /// and whether it was the last.
    pub fn next_part(&mut self) -> (Bytes, bool) {
        let pieces = self.rest.len();
        let Some(front) = self.rest.front_mut() else { return (Bytes::new(), true) };
        let part = if front.len() >= PART_BYTES || pieces == 1 {
            front.split_to(front.len().min(PART_BYTES))
        } else {
            // Small pieces are gathered, up to a large one (never copied).
            let mut part = Vec::with_capacity(PART_BYTES);
            while let Some(front) =
                self.rest.front_mut().filter(|f| part.len() < PART_BYTES && (part.is_empty() || f.len() < PART_BYTES))
            {
                let take = front.split_to(front.len().min(PART_BYTES - part.len()));
                part.extend_from_slice(&take);
                if front.is_empty() {
                    self.rest.pop_front();
                }
            }
            part.into()
        };
        if self.rest.front().is_some_and(Bytes::is_empty) {
            self.rest.pop_front();
        }
        (part, self.rest.is_empty())
    }
}

/// Joins messages that arrive in parts, by id.
#[derive(Default)]
pub struct Joiner {
    /// Each message's length and what has arrived of it.
    partial: HashMap<u64, (u64, Vec<u8>)>,
    /// Messages already answered with an error: their remaining parts are
    /// dropped (forgotten, a few thousand at a time, once there are many).
    failed: HashSet<u64>,
    /// Spare capacity a joined message of `n` bytes gets past its end.
    room: Option<fn(usize) -> usize>,
}

impl Joiner {
    /// A joiner whose messages of `n` bytes are joined in buffers with
    /// `room(n)` bytes to spare past their end (for whoever takes the
    /// buffer over, to rearrange it in place).
    pub fn with_room(room: fn(usize) -> usize) -> Joiner {
        Joiner { room: Some(room), ..Joiner::default() }
    }

    /// Adds a part of message `id`, `total` bytes in all: the whole once its
    /// last byte is in; an error, once per message, when it is longer than
    /// [`MAX_WHOLE_BYTES`] or its parts overrun it (its other parts are then
    /// dropped).
    pub fn add(&mut self, id: u64, total: u64, part: &[u8]) -> Result<Option<Bytes>, String> {
        if self.failed.contains(&id) {
            return Ok(None);
        }
        let (len, buf) = match self.partial.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if total > MAX_WHOLE_BYTES => {
                self.fail(id);
                return Err(format!("ERR message of {total} bytes is longer than the limit ({MAX_WHOLE_BYTES})"));
            }
            // Allocated lazily by the kernel: untouched pages cost nothing.
            Entry::Vacant(e) => {
                let n = total as usize;
                e.insert((total, Vec::with_capacity(n + self.room.map_or(0, |room| room(n)))))
            }
        };
        if *len != total || (buf.len() + part.len()) as u64 > total {
            self.partial.remove(&id);
            self.fail(id);
            return Err(format!("ERR message parts overrun its length ({total} bytes)"));
        }
        buf.extend_from_slice(part);
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        Ok(self.partial.remove(&id).map(|(_, buf)| Bytes::from(buf)))
    }

    fn fail(&mut self, id: u64) {
        if self.failed.len() >= 4096 {
            self.failed.clear();
        }
        self.failed.insert(id);
    }

    /// Messages still missing parts.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_goes_in_parts_and_joins_exactly() {
        let whole = Bytes::from((0..(2 * PART_BYTES + 5)).map(|i| i as u8).collect::<Vec<_>>());
        let mut out = Outgoing::new(7, "shard 1", whole.clone()).expect("long enough for parts");
        let mut j = Joiner::default();
        let mut parts = 0;
        let joined = loop {
            let (part, last) = out.next_part();
            assert!(part.len() <= PART_BYTES);
            parts += 1;
            match j.add(7, out.total, &part).unwrap() {
                Some(w) => {
                    assert!(last);
                    break w;
                }
                None => assert!(!last),
            }
        };
        assert_eq!(parts, 3);
        assert_eq!(joined, whole);
        assert_eq!(joined.len(), whole.len());
        assert!(j.is_empty());
        assert!(Outgoing::new(1, (), Bytes::from_static(b"short")).is_err(), "short messages go whole");
    }

    #[test]
    fn pieces_go_in_parts_without_joining_large_ones() {
        let big = Bytes::from(vec![7u8; 2 * PART_BYTES + 3]);
        let pieces = vec![
            Bytes::from_static(b"head"),
            big.clone(),
            Bytes::new(),
            Bytes::from_static(b"mid"),
            Bytes::from(vec![9u8; PART_BYTES - 1]),
            Bytes::from_static(b"tail"),
        ];
        let whole: Vec<u8> = pieces.concat();
        let mut out = Outgoing::from_pieces(3, (), pieces);
        assert_eq!(out.total, whole.len() as u64);
        let mut j = Joiner::default();
        let mut shared = 0;
        let joined = loop {
            let (part, last) = out.next_part();
            assert!(!part.is_empty() && part.len() <= PART_BYTES);
            let range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
            shared += usize::from(range.contains(&(part.as_ptr() as usize)));
            if let Some(w) = j.add(3, out.total, &part).unwrap() {
                assert!(last);
                break w;
            }
            assert!(!last);
        };
        assert_eq!(joined, whole);
        assert_eq!(shared, 2, "the large piece goes as slices of itself (its short tail with what follows)");
    }

    #[test]
    fn parts_that_do_not_add_up_fail_once_and_the_rest_are_dropped() {
        let mut j = Joiner::default();
        assert_eq!(j.add(1, 4, b"abc").unwrap(), None);
        assert!(j.add(1, 4, b"de").unwrap_err().contains("overrun"));
        assert!(j.is_empty());
        // Its later parts are dropped, with no second answer.
        assert_eq!(j.add(1, 4, b"f"), Ok(None));
        assert_eq!(j.add(1, 4, b"ghij"), Ok(None));
        // Too long: refused at the first part (empty or not), the others
        // dropped quietly.
        let big = MAX_WHOLE_BYTES + 2;
        assert!(j.add(2, big, b"").unwrap_err().contains("longer than the limit"));
        assert_eq!(j.add(2, big, b"y"), Ok(None));
        assert!(j.is_empty());
        // Interleaved ids join independently.
        assert_eq!(j.add(3, 2, b"a"), Ok(None));
        assert_eq!(j.add(4, 2, b"c"), Ok(None));
        assert_eq!(j.add(3, 2, b"b"), Ok(Some(Bytes::from_static(b"ab"))));
        assert_eq!(j.add(4, 2, b"d"), Ok(Some(Bytes::from_static(b"cd"))));
    }
}
