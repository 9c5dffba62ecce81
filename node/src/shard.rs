//! A shard: the slots it owns, its keyspace and its command log.
//!
//! State lives behind one `parking_lot::Mutex` that is never held across an
//! `.await`: every command runs to completion under the lock, which makes the
//! order of log appends the order of applies.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tessera_common::command::NodeCommand;
use tessera_common::reply::Reply;
use tessera_common::slot::SlotRange;

use crate::exec::{apply, precheck, read};
use crate::keyspace::Keyspace;
use crate::log::{CommandLog, LogOp, MemLog};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Shard {
    pub id: u32,
    pub ranges: Vec<SlotRange>,
    state: Mutex<State>,
}

struct State {
    ks: Keyspace,
    log: Box<dyn CommandLog>,
    /// Timestamps handed to log entries never go backwards, even if the wall
    /// clock does.
    last_ts: i64,
}

/// A point-in-time view for INFO and metrics.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub keys: usize,
    pub volatile: usize,
    pub value_bytes: usize,
    pub log_index: u64,
    pub log_kind: &'static str,
}

impl Shard {
    pub fn new(id: u32, ranges: Vec<SlotRange>) -> Arc<Shard> {
        let log = Box::new(MemLog::new(1024, 64 << 20));
        Arc::new(Shard {
            id,
            ranges,
            state: Mutex::new(State {
                ks: Keyspace::new(),
                log,
                last_ts: 0,
            }),
        })
    }

    pub fn owns(&self, slot: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(slot))
    }

    /// Runs one command: reads at the local clock; writes through
    /// validate → append → apply → reply.
    pub fn execute(&self, cmd: NodeCommand) -> Reply {
        let now = now_ms();
        let mut st = self.state.lock();
        if !cmd.is_write() {
            return read(&st.ks, &cmd, now);
        }
        if let Some(rejected) = precheck(&st.ks, &cmd, now) {
            return rejected;
        }
        self.append_and_apply(&mut st, now, LogOp::Command(cmd))
    }

    fn append_and_apply(&self, st: &mut State, now: i64, op: LogOp) -> Reply {
        let ts = now.max(st.last_ts);
        st.last_ts = ts;
        let entry = st.log.append(ts, op);
        apply(&mut st.ks, &entry)
    }

    /// Logs a purge of expired keys if any deadline has passed; returns how
    /// many keys it removed.
    pub fn purge_expired(&self) -> usize {
        let now = now_ms();
        let mut st = self.state.lock();
        match st.ks.next_expiry() {
            Some(t) if t <= now => match self.append_and_apply(&mut st, now, LogOp::PurgeExpired) {
                Reply::Int(n) => n as usize,
                _ => 0,
            },
            _ => 0,
        }
    }

    pub fn stats(&self) -> ShardStats {
        let st = self.state.lock();
        ShardStats {
            keys: st.ks.len(),
            volatile: st.ks.volatile(),
            value_bytes: st.ks.value_bytes(),
            log_index: st.log.last_index(),
            log_kind: st.log.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tessera_common::command::node::{Expiry, SetCond};

    fn set(key: &str, ttl: Option<i64>) -> NodeCommand {
        NodeCommand::Set {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            expire: ttl.map(Expiry::In),
            keep_ttl: false,
            cond: SetCond::Always,
            get: false,
        }
    }

    #[test]
    fn writes_are_logged_reads_are_not() {
        let shard = Shard::new(0, vec![SlotRange::new(0, 16383)]);
        assert_eq!(shard.execute(set("a", None)), Reply::ok());
        assert_eq!(
            shard.execute(NodeCommand::Get {
                key: Bytes::from_static(b"a")
            }),
            Reply::bulk_str("v")
        );
        assert_eq!(shard.stats().log_index, 1);
        // A write that can only fail never reaches the log.
        let incr = NodeCommand::IncrBy {
            key: Bytes::from_static(b"a"),
            delta: 1,
        };
        assert!(shard.execute(incr).is_error());
        assert_eq!(shard.stats().log_index, 1);
    }

    #[test]
    fn expired_keys_are_purged_through_the_log() {
        let shard = Shard::new(0, vec![SlotRange::new(0, 16383)]);
        shard.execute(set("t", Some(-1)));
        assert_eq!(
            shard.execute(NodeCommand::Exists {
                keys: vec![Bytes::from_static(b"t")]
            }),
            Reply::Int(0)
        );
        assert_eq!(shard.stats().keys, 1);
        assert_eq!(shard.purge_expired(), 1);
        assert_eq!(shard.stats().keys, 0);
        assert_eq!(shard.stats().log_index, 2);
    }
}
