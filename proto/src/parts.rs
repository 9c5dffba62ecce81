//! Long commands and replies travel in parts.
//!
//! tonic reads each message of a stream into one buffer and keeps that
//! buffer at the largest size it has needed for as long as the stream lives.
//! A 600 MB model sent as one message of the session stream would leave
//! 600 MB in the node's receive buffer (and its reply, in the router's) for
//! good. So a command or reply longer than [`PART_BYTES`] goes in parts of
//! at most that size, each alone in a message, in order, under one id, each
//! carrying the whole's length (`total_len`); the receiver joins them into
//! one buffer of exactly that length.

use std::collections::HashMap;

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
    rest: Bytes,
}

impl<T> Outgoing<T> {
    /// `whole` to send in parts, if it is too long for one message.
    pub fn new(id: u64, meta: T, whole: Bytes) -> Result<Outgoing<T>, (T, Bytes)> {
        if whole.len() <= PART_BYTES {
            return Err((meta, whole));
        }
        Ok(Outgoing { id, meta, total: whole.len() as u64, rest: whole })
    }

    /// The next part (a slice, not a copy), and whether it was the last.
    pub fn next_part(&mut self) -> (Bytes, bool) {
        let part = self.rest.split_to(self.rest.len().min(PART_BYTES));
        (part, self.rest.is_empty())
    }
}

struct Partial {
    got: u64,
    /// `None` once the parts failed to add up: the rest are dropped.
    buf: Option<Vec<u8>>,
}

/// Joins messages that arrive in parts, by id.
#[derive(Default)]
pub struct Joiner {
    partial: HashMap<u64, Partial>,
}

impl Joiner {
    /// Adds a part of message `id`, `total` bytes in all: the whole once its
    /// last byte is in; an error (once per message) when it is too long or
    /// its parts overrun it, after which its remaining parts are dropped.
    pub fn add(&mut self, id: u64, total: u64, part: &[u8]) -> Result<Option<Bytes>, String> {
        let p = self.partial.entry(id).or_insert_with(|| Partial {
            got: 0,
            // Allocated lazily by the kernel: untouched pages cost nothing.
            buf: (total <= MAX_WHOLE_BYTES).then(|| Vec::with_capacity(total as usize)),
        });
        let first = p.got == 0;
        p.got += part.len() as u64;
        let result = match &mut p.buf {
            None if first => Err(format!("ERR message of {total} bytes is longer than the limit ({MAX_WHOLE_BYTES})")),
            None => Ok(None),
            Some(_) if p.got > total => {
                p.buf = None;
                Err(format!("ERR message parts overrun its length ({total} bytes)"))
            }
            Some(buf) => {
                buf.extend_from_slice(part);
                Ok(None)
            }
        };
        if p.got >= total {
            let done = self.partial.remove(&id).and_then(|p| p.buf);
            if let (Ok(_), Some(buf)) = (&result, done) {
                return Ok(Some(Bytes::from(buf)));
            }
        }
        result
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
    fn parts_that_do_not_add_up_fail_once_and_the_rest_are_dropped() {
        let mut j = Joiner::default();
        assert_eq!(j.add(1, 4, b"abc").unwrap(), None);
        assert!(j.add(1, 4, b"de").unwrap_err().contains("overrun"));
        assert!(j.is_empty());
        // Too long: refused at the first part, the others dropped quietly.
        let big = MAX_WHOLE_BYTES + 2;
        assert!(j.add(2, big, b"x").unwrap_err().contains("longer than the limit"));
        assert_eq!(j.add(2, big, b"y"), Ok(None));
        assert_eq!(j.len(), 1);
        // Interleaved ids join independently.
        assert_eq!(j.add(3, 2, b"a"), Ok(None));
        assert_eq!(j.add(4, 2, b"c"), Ok(None));
        assert_eq!(j.add(3, 2, b"b"), Ok(Some(Bytes::from_static(b"ab"))));
        assert_eq!(j.add(4, 2, b"d"), Ok(Some(Bytes::from_static(b"cd"))));
    }
}
