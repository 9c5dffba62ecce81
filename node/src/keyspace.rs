//! One shard's keyspace: values indexed by slot, with an expiry index.
//!
//! Time never comes from the local clock here. Writes receive the timestamp of
//! the log entry that carries them (so relative TTLs become the same absolute
//! deadline on every replica, and "is this key expired?" has one answer per
//! entry); reads receive the serving node's clock. Expired keys are invisible
//! to reads at once and are removed from state only by a `PurgeExpired` log
//! entry (see `shard.rs`), so removal is replicated like any write.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use tessera_common::slot::{key_slot, SlotScope, SLOTS};
use tessera_common::tensor::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Value {
    Str(Bytes),
    Tensor(Tensor),
    Model(#[serde(with = "crate::models::arc_serde")] std::sync::Arc<crate::models::StoredModel>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Tensor(_) => "AI_TENSOR",
            Value::Model(_) => "AI__MODEL",
        }
    }

    fn size(&self) -> usize {
        match self {
            Value::Str(b) => b.len(),
            Value::Tensor(t) => t.data.len() + 8 * t.shape.len(),
            Value::Model(m) => m.def.blob.len() + 64,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub value: Value,
    /// Unix milliseconds; `None` means no TTL.
    pub expire_at: Option<i64>,
}

impl Entry {
    fn live(&self, now: i64) -> bool {
        self.expire_at.is_none_or(|t| t > now)
    }
}

type SlotMap = HashMap<Bytes, Entry>;

#[derive(Clone)]
pub struct Keyspace {
    slots: Vec<Option<Box<SlotMap>>>,
    len: usize,
    value_bytes: usize,
    /// `(deadline, key)` for every key with a TTL.
    expiries: BTreeSet<(i64, Bytes)>,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyspace {
    pub fn new() -> Self {
        Self { slots: (0..SLOTS).map(|_| None).collect(), len: 0, value_bytes: 0, expiries: BTreeSet::new() }
    }

    /// Number of stored keys, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    pub fn volatile(&self) -> usize {
        self.expiries.len()
    }

    /// The live entry at `key`.
    pub fn get(&self, key: &[u8], now: i64) -> Option<&Entry> {
        let map = self.slots[usize::from(key_slot(key))].as_deref()?;
        map.get(key).filter(|e| e.live(now))
    }

    pub fn get_mut(&mut self, key: &[u8], now: i64) -> Option<&mut Entry> {
        let map = self.slots[usize::from(key_slot(key))].as_deref_mut()?;
        map.get_mut(key).filter(|e| e.live(now))
    }

    /// Stores `entry` at `key`, replacing what was there.
    pub fn insert(&mut self, key: Bytes, entry: Entry) {
        let slot = usize::from(key_slot(&key));
        let new_deadline = entry.expire_at;
        self.value_bytes += entry.value.size() + key.len();
        let map = self.slots[slot].get_or_insert_with(Default::default);
        match map.insert(key.clone(), entry) {
            Some(old) => {
                self.value_bytes = self.value_bytes.saturating_sub(old.value.size() + key.len());
                if let Some(t) = old.expire_at.filter(|t| Some(*t) != new_deadline) {
                    self.expiries.remove(&(t, key.clone()));
                }
            }
            None => self.len += 1,
        }
        if let Some(t) = new_deadline {
            self.expiries.insert((t, key));
        }
    }

    /// Removes `key` (live or expired), returning its entry.
    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let slot = usize::from(key_slot(key));
        let map = self.slots[slot].as_deref_mut()?;
        let (k, old) = map.remove_entry(key)?;
        if map.is_empty() {
            self.slots[slot] = None;
        }
        self.len -= 1;
        self.forget(&old, &k);
        Some(old)
    }

    /// Accounting for an entry that left the map.
    fn forget(&mut self, old: &Entry, key: &Bytes) {
        self.value_bytes = self.value_bytes.saturating_sub(old.value.size() + key.len());
        if let Some(t) = old.expire_at {
            self.expiries.remove(&(t, key.clone()));
        }
    }

    /// Changes the TTL of an existing live key.
    pub fn set_expiry(&mut self, key: &[u8], expire_at: Option<i64>, now: i64) -> bool {
        let Some(entry) = self.get_mut(key, now) else {
            return false;
        };
        let old = std::mem::replace(&mut entry.expire_at, expire_at);
        let k = Bytes::copy_from_slice(key);
        if let Some(t) = old {
            self.expiries.remove(&(t, k.clone()));
        }
        if let Some(t) = expire_at {
            self.expiries.insert((t, k));
        }
        true
    }

    /// Removes every key whose deadline is at or before `now`; returns how many.
    pub fn purge_expired(&mut self, now: i64) -> usize {
        let mut n = 0;
        while let Some((t, key)) = self.expiries.first().cloned() {
            if t > now {
                break;
            }
            self.expiries.pop_first();
            let slot = usize::from(key_slot(&key));
            if let Some(map) = self.slots[slot].as_deref_mut() {
                if map.get(&key).is_some_and(|e| e.expire_at == Some(t)) {
                    self.remove(&key);
                    n += 1;
                }
            }
        }
        n
    }

    /// The earliest deadline, if any.
    pub fn next_expiry(&self) -> Option<i64> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// Live keys of one slot.
    pub fn slot_keys(&self, slot: u16, now: i64) -> impl Iterator<Item = (&Bytes, &Entry)> {
        self.slots[usize::from(slot)].iter().flat_map(move |m| m.iter().filter(move |(_, e)| e.live(now)))
    }

    pub fn count_in_slot(&self, slot: u16, now: i64) -> usize {
        self.slot_keys(slot, now).count()
    }

    /// Slots that hold keys, within `scope`, in order.
    pub fn occupied_slots<'a>(&'a self, scope: &'a SlotScope) -> impl Iterator<Item = u16> + 'a {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, m)| m.is_some())
            .map(|(s, _)| s as u16)
            .filter(move |s| scope.contains(*s))
    }

    /// Removes every key in `scope`; returns how many.
    pub fn flush(&mut self, scope: &SlotScope) -> usize {
        let slots: Vec<u16> = self.occupied_slots(scope).collect();
        let mut n = 0;
        for s in slots {
            if let Some(map) = self.slots[usize::from(s)].take() {
                for (k, e) in map.into_iter() {
                    self.len -= 1;
                    n += 1;
                    self.forget(&e, &k);
                }
            }
        }
        n
    }
}

/// One key in a snapshot.
#[derive(serde::Serialize, serde::Deserialize)]
struct DumpedKey {
    key: Bytes,
    value: Value,
    expire_at: Option<i64>,
}

impl Keyspace {
    /// A compact binary dump of every key (the shard's "RDB"): postcard-encoded
    /// records, each prefixed by its length.
    pub fn dump(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.dump_into(&mut out);
        out
    }

    /// [`Keyspace::dump`], appended to `out`: each record is encoded in
    /// place, so a large value is copied once.
    pub fn dump_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.dump_size());
        out.extend_from_slice(&(self.len as u64).to_le_bytes());
        self.records().for_each(|rec| crate::raft::encode_sized_into(&rec, out));
    }

    /// The exact length of [`Keyspace::dump`]'s output (values are measured,
    /// not copied).
    pub fn dump_size(&self) -> usize {
        let size = |rec: &DumpedKey| postcard::experimental::serialized_size(rec).expect("keys always serialize");
        8 + self.records().map(|rec| 8 + size(&rec)).sum::<usize>()
    }

    /// Every key as a dump record (keys and values shared, not copied).
    fn records(&self) -> impl Iterator<Item = DumpedKey> + '_ {
        self.slots.iter().flatten().flat_map(|map| {
            map.iter().map(|(k, e)| DumpedKey { key: k.clone(), value: e.value.clone(), expire_at: e.expire_at })
        })
    }

    /// Rebuilds a keyspace from [`Keyspace::dump`] output; a model blob is a
    /// slice of `data`, not a copy (see [`tessera_common::shared`]).
    pub fn load_shared(data: &Bytes) -> Result<Keyspace, String> {
        tessera_common::shared::scope(data, || Keyspace::load(data))
    }

    /// Rebuilds a keyspace from [`Keyspace::dump`] output.
    pub fn load(data: &[u8]) -> Result<Keyspace, String> {
        let mut ks = Keyspace::new();
        let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
            let end = pos.checked_add(n).filter(|e| *e <= data.len()).ok_or("snapshot is truncated")?;
            let s = &data[*pos..end];
            *pos = end;
            Ok(s)
        };
        let mut pos = 0;
        let count = u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes"));
        for _ in 0..count {
            let len = u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes")) as usize;
            let rec: DumpedKey =
                postcard::from_bytes(take(&mut pos, len)?).map_err(|e| format!("bad key record: {e}"))?;
            ks.insert(rec.key, Entry { value: rec.value, expire_at: rec.expire_at });
        }
        if pos != data.len() {
            return Err("trailing bytes after the last key".into());
        }
        Ok(ks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Entry {
        Entry { value: Value::Str(Bytes::copy_from_slice(v.as_bytes())), expire_at: None }
    }

    #[test]
    fn insert_get_remove_and_accounting() {
        let mut ks = Keyspace::new();
        ks.insert(Bytes::from_static(b"a"), s("1"));
        ks.insert(Bytes::from_static(b"a"), s("22"));
        assert_eq!(ks.len(), 1);
        assert_eq!(ks.value_bytes(), 3);
        assert!(ks.remove(b"a").is_some());
        assert_eq!((ks.len(), ks.value_bytes()), (0, 0));
        assert!(ks.remove(b"a").is_none());
    }

    #[test]
    fn expiry_is_decided_by_the_given_clock() {
        let mut ks = Keyspace::new();
        ks.insert(Bytes::from_static(b"k"), Entry { expire_at: Some(100), ..s("v") });
        ks.insert(Bytes::from_static(b"p"), s("v"));
        assert!(ks.get(b"k", 99).is_some());
        assert!(ks.get(b"k", 100).is_none());
        assert_eq!(ks.purge_expired(99), 0);
        assert_eq!(ks.purge_expired(100), 1);
        assert_eq!(ks.len(), 1);
        assert_eq!(ks.volatile(), 0);
        // Overwriting a volatile key with a persistent one clears its index entry.
        ks.insert(Bytes::from_static(b"x"), Entry { expire_at: Some(5), ..s("v") });
        ks.insert(Bytes::from_static(b"x"), s("w"));
        assert_eq!(ks.purge_expired(10), 0);
        assert!(ks.get(b"x", 10).is_some());
    }

    #[test]
    fn dump_and_load_roundtrip() {
        let mut ks = Keyspace::new();
        ks.insert(Bytes::from_static(b"a"), s("1"));
        ks.insert(Bytes::from_static(b"b"), Entry { expire_at: Some(77), ..s("2") });
        assert_eq!(ks.dump().len(), ks.dump_size(), "the dump is sized exactly");
        let back = Keyspace::load(&ks.dump()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back.get(b"b", 0).unwrap().expire_at, Some(77));
        assert_eq!(back.volatile(), 1);
        assert!(Keyspace::load(&ks.dump()[..10]).is_err());
    }

    #[test]
    fn flush_respects_scope() {
        let mut ks = Keyspace::new();
        for k in ["foo", "bar", "hello"] {
            ks.insert(Bytes::copy_from_slice(k.as_bytes()), s("v"));
        }
        let scope = SlotScope(vec![tessera_common::slot::SlotRange::new(0, 8191)]);
        assert_eq!(ks.flush(&scope), 2); // bar (5061), hello (866)
        assert_eq!(ks.len(), 1);
    }
}
