//! `ACL LOG`: the commands, keys and logins this router refused, newest
//! first, as Redis keeps them (each router its own, as each Redis server).
//!
//! A refusal like a recent one (same reason, context, object and user,
//! within a minute of its last) counts into that entry, which moves to the
//! front; at most [`MAX_ENTRIES`] are kept (Redis's `acllog-max-len`).

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tessera_common::reply::Reply;

/// Redis's default `acllog-max-len`.
pub const MAX_ENTRIES: usize = 128;
/// How long a refusal may count into a like entry (Redis: 60 s).
const GROUP_WITHIN: Duration = Duration::from_secs(60);

/// Why a refusal was logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Command,
    Key,
    Auth,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Command => "command",
            Reason::Key => "key",
            Reason::Auth => "auth",
        }
    }
}

struct Entry {
    count: u64,
    reason: Reason,
    /// `toplevel` or `multi` (commands queued in a transaction).
    context: &'static str,
    object: String,
    username: String,
    client_info: String,
    id: u64,
    created_ms: u64,
    updated_ms: u64,
}

#[derive(Default)]
pub struct AclLog {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for AclLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclLog").field("entries", &self.inner.lock().entries.len()).finish()
    }
}

#[derive(Default)]
struct Inner {
    entries: VecDeque<Entry>,
    next_id: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AclLog {
    /// Logs a refusal.
    pub fn record(
        &self,
        reason: Reason,
        context: &'static str,
        object: &str,
        username: &str,
        client_info: impl FnOnce() -> String,
    ) {
        let now = now_ms();
        let mut log = self.inner.lock();
        let like = log.entries.iter().position(|e| {
            e.reason == reason
                && e.context == context
                && e.object == object
                && e.username == username
                && now.saturating_sub(e.updated_ms) < GROUP_WITHIN.as_millis() as u64
        });
        if let Some(i) = like {
            let mut e = log.entries.remove(i).expect("found");
            e.count += 1;
            e.updated_ms = now;
            e.client_info = client_info();
            log.entries.push_front(e);
            return;
        }
        let id = log.next_id;
        log.next_id += 1;
        log.entries.push_front(Entry {
            count: 1,
            reason,
            context,
            object: object.to_owned(),
            username: username.to_owned(),
            client_info: client_info(),
            id,
            created_ms: now,
            updated_ms: now,
        });
        log.entries.truncate(MAX_ENTRIES);
    }

    pub fn reset(&self) {
        self.inner.lock().entries.clear();
    }

    /// The newest `count` entries (default 10), each as Redis 7.2 gives it.
    pub fn reply(&self, count: Option<i64>) -> Reply {
        let count = match count {
            Some(n) if n < 0 => 0,
            Some(n) => n as usize,
            None => 10,
        };
        let now = now_ms();
        let log = self.inner.lock();
        let entries = log.entries.iter().take(count).map(|e| {
            let field = |k: &str, v: Reply| (Reply::bulk_str(k), v);
            Reply::Map(vec![
                field("count", Reply::Int(e.count as i64)),
                field("reason", Reply::bulk_str(e.reason.as_str())),
                field("context", Reply::bulk_str(e.context)),
                field("object", Reply::bulk_str(&e.object)),
                field("username", Reply::bulk_str(&e.username)),
                field("age-seconds", Reply::Double(now.saturating_sub(e.created_ms) as f64 / 1000.0)),
                field("client-info", Reply::bulk_str(e.client_info.trim_end())),
                field("entry-id", Reply::Int(e.id as i64)),
                field("timestamp-created", Reply::Int(e.created_ms as i64)),
                field("timestamp-last-updated", Reply::Int(e.updated_ms as i64)),
            ])
        });
        Reply::Array(entries.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: &Reply, name: &str) -> Reply {
        match r {
            Reply::Map(pairs) => pairs.iter().find(|(k, _)| *k == Reply::bulk_str(name)).expect("field").1.clone(),
            _ => panic!("not a map"),
        }
    }

    #[test]
    fn like_refusals_count_into_one_entry_newest_first() {
        let log = AclLog::default();
        log.record(Reason::Key, "toplevel", "b", "u", || "id=1".into());
        log.record(Reason::Command, "toplevel", "set", "u", || "id=1".into());
        log.record(Reason::Key, "toplevel", "b", "u", || "id=2".into());
        let Reply::Array(entries) = log.reply(None) else { panic!() };
        assert_eq!(entries.len(), 2);
        assert_eq!(field(&entries[0], "object"), Reply::bulk_str("b"));
        assert_eq!(field(&entries[0], "count"), Reply::Int(2));
        assert_eq!(field(&entries[0], "client-info"), Reply::bulk_str("id=2"));
        assert_eq!(field(&entries[0], "entry-id"), Reply::Int(0));
        assert_eq!(field(&entries[1], "reason"), Reply::bulk_str("command"));
        // (Compared by id: `age-seconds` moves between two replies.)
        let Reply::Array(first) = log.reply(Some(1)) else { panic!() };
        assert_eq!(first.len(), 1);
        assert_eq!(field(&first[0], "entry-id"), field(&entries[0], "entry-id"));
        assert_eq!(log.reply(Some(-1)), Reply::Array(vec![]));
        log.reset();
        assert_eq!(log.reply(None), Reply::Array(vec![]));
    }

    #[test]
    fn at_most_the_newest_128_are_kept() {
        let log = AclLog::default();
        for i in 0..200 {
            log.record(Reason::Auth, "toplevel", "AUTH", &format!("u{i}"), String::new);
        }
        let Reply::Array(entries) = log.reply(Some(1000)) else { panic!() };
        assert_eq!(entries.len(), MAX_ENTRIES);
        assert_eq!(field(&entries[0], "username"), Reply::bulk_str("u199"));
    }
}
