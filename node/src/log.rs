//! The command log: every write reaches the state machine only through it
//! (validate → append → apply → reply).
//!
//! [`CommandLog`] is the seam where the Raft issue plugs in openraft's durable,
//! replicated log; commands and the state machine do not change when it does.
//! [`MemLog`] is the single-replica log used until then: it assigns indexes and
//! keeps a bounded tail of recent entries (for introspection) — it is not
//! durable and says so in `INFO`.

use std::collections::VecDeque;
use std::sync::Arc;

use tessera_common::command::NodeCommand;

/// What a log entry asks the state machine to do.
#[derive(Clone, Debug, PartialEq)]
pub enum LogOp {
    Command(NodeCommand),
    /// Remove every key whose deadline is at or before the entry's timestamp.
    PurgeExpired,
}

/// One entry: an operation and the leader-assigned timestamp (Unix ms) that is
/// the state machine's only clock while applying it.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub index: u64,
    pub ts: i64,
    pub op: LogOp,
}

pub trait CommandLog: Send {
    /// Appends `op` at `ts` and returns the stored entry.
    fn append(&mut self, ts: i64, op: LogOp) -> Arc<LogEntry>;
    /// Index of the last appended entry (0 when empty).
    fn last_index(&self) -> u64;
    fn kind(&self) -> &'static str;
}

/// In-memory log retaining at most `max_entries` recent entries and
/// `max_bytes` of their payload.
pub struct MemLog {
    tail: VecDeque<(Arc<LogEntry>, usize)>,
    tail_bytes: usize,
    last: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl MemLog {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            tail: VecDeque::new(),
            tail_bytes: 0,
            last: 0,
            max_entries,
            max_bytes,
        }
    }

    pub fn retained(&self) -> impl Iterator<Item = &Arc<LogEntry>> {
        self.tail.iter().map(|(e, _)| e)
    }
}

fn payload_size(op: &LogOp) -> usize {
    match op {
        LogOp::Command(NodeCommand::TensorSet { tensor, .. }) => tensor.data.len(),
        LogOp::Command(NodeCommand::Set { value, .. }) => value.len(),
        LogOp::Command(NodeCommand::MSet { pairs }) => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
        _ => 64,
    }
}

impl CommandLog for MemLog {
    fn append(&mut self, ts: i64, op: LogOp) -> Arc<LogEntry> {
        self.last += 1;
        let size = payload_size(&op);
        let entry = Arc::new(LogEntry {
            index: self.last,
            ts,
            op,
        });
        self.tail.push_back((entry.clone(), size));
        self.tail_bytes += size;
        while self.tail.len() > self.max_entries || (self.tail_bytes > self.max_bytes && self.tail.len() > 1) {
            if let Some((_, s)) = self.tail.pop_front() {
                self.tail_bytes -= s;
            }
        }
        entry
    }

    fn last_index(&self) -> u64 {
        self.last
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_grow_and_the_tail_is_bounded() {
        let mut log = MemLog::new(3, 1 << 20);
        for i in 0..10 {
            let e = log.append(i, LogOp::PurgeExpired);
            assert_eq!(e.index, i as u64 + 1);
        }
        assert_eq!(log.last_index(), 10);
        let kept: Vec<u64> = log.retained().map(|e| e.index).collect();
        assert_eq!(kept, [8, 9, 10]);
    }
}
