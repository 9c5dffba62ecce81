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
use tessera_common::blob::Blob;
use tessera_common::model::{ModelDef, ScriptDef};
use tessera_common::slot::{key_slot, SlotScope, SLOTS};
use tessera_common::tensor::Tensor;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(Bytes),
    Tensor(Tensor),
    Model(std::sync::Arc<crate::engine::model::StoredModel>),
    Script(std::sync::Arc<crate::engine::script::StoredScript>),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::Tensor(_) => "AI_TENSOR",
            Value::Model(_) => "AI__MODEL",
            Value::Script(_) => "AI_SCRIPT",
        }
    }

    fn size(&self) -> usize {
        match self {
            Value::Str(b) => b.len(),
            Value::Tensor(t) => t.data.len() + 8 * t.shape.len(),
            Value::Model(m) => m.blob_len() + 64,
            Value::Script(s) => s.def.source.len() + 64,
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
    /// A digest of the entry, value and deadline, the same on every replica
    /// (a model's is of its definition and its bytes' length, a script's of
    /// its definition).
    pub fn fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        match &self.value {
            Value::Str(b) => {
                h.update(b"s");
                h.update(b);
            }
            Value::Tensor(t) => {
                h.update(b"t");
                h.update(t.dtype.name().as_bytes());
                t.shape.iter().for_each(|d| h.update(&d.to_le_bytes()));
                h.update(&t.data);
            }
            Value::Model(m) => {
                h.update(b"m");
                h.update(&crate::util::encode(&m.def));
                h.update(&(m.blob_len() as u64).to_le_bytes());
            }
            Value::Script(s) => {
                h.update(b"c");
                h.update(&crate::util::encode(&s.def));
            }
        }
        match self.expire_at {
            Some(t) => h.update(&t.to_le_bytes()),
            None => h.update(b"-"),
        }
        h.digest()
    }

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

    /// Every stored model (expired ones not yet purged included).
    pub fn models(&self) -> impl Iterator<Item = &std::sync::Arc<crate::engine::model::StoredModel>> {
        self.slots.iter().flatten().flat_map(|m| m.values()).filter_map(|e| match &e.value {
            Value::Model(m) => Some(m),
            _ => None,
        })
    }

    /// Every stored script (expired ones not yet purged included).
    pub fn scripts(&self) -> impl Iterator<Item = &std::sync::Arc<crate::engine::script::StoredScript>> {
        self.slots.iter().flatten().flat_map(|m| m.values()).filter_map(|e| match &e.value {
            Value::Script(s) => Some(s),
            _ => None,
        })
    }

    /// The live entry at `key`.
    /// Whether any of `prints` (keys with the fingerprint each had, `None`:
    /// absent) holds something else at `now` (an expired key is absent).
    pub fn moved(&self, prints: &[(Bytes, Option<u64>)], now: i64) -> bool {
        prints.iter().any(|(k, was)| self.get(k, now).map(Entry::fingerprint) != *was)
    }

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

/// The first word of a keyspace dump: its format, version 2 (version 1,
/// which held model bytes inside their records, began with the number of
/// keys and had no such word).
const DUMP_FORMAT: u64 = u64::from_le_bytes(*b"TKSdump2");

/// One key in a snapshot, as written ([`DumpedKey`] as read). A model's
/// bytes are not in its record: they follow it raw (see [`Keyspace::dump`]).
#[derive(serde::Serialize)]
struct DumpedKeyRef<'a> {
    key: &'a Bytes,
    value: DumpedValueRef<'a>,
    expire_at: Option<i64>,
}

#[derive(serde::Serialize)]
enum DumpedValueRef<'a> {
    Str(&'a Bytes),
    Tensor(&'a Tensor),
    /// The definition without its bytes.
    Model(&'a ModelDef),
    Script(&'a ScriptDef),
}

#[derive(serde::Deserialize)]
struct DumpedKey {
    key: Bytes,
    value: DumpedValue,
    expire_at: Option<i64>,
}

#[derive(serde::Deserialize)]
enum DumpedValue {
    Str(Bytes),
    Tensor(Tensor),
    Model(ModelDef),
    Script(ScriptDef),
}

impl Keyspace {
    /// A compact binary dump of every key (the shard's "RDB"): its format
    /// ([`DUMP_FORMAT`]), the number of keys, then per key its postcard-encoded record and the record's
    /// raw bytes (a model's, which may be held in parts; none for other
    /// values), each prefixed by its length (u64, little-endian).
    pub fn dump(&self) -> Vec<u8> {
        let mut out = crate::data::Pieces::default();
        self.dump_to(&mut out);
        out.finish().concat()
    }

    /// [`Keyspace::dump`], appended to `out` as pieces: a model's bytes
    /// are shared, not copied.
    pub fn dump_to(&self, out: &mut crate::data::Pieces) {
        out.extend(&DUMP_FORMAT.to_le_bytes());
        out.extend(&(self.len as u64).to_le_bytes());
        self.records().for_each(|(rec, raw)| {
            let rec = crate::util::encode(&rec);
            out.extend(&(rec.len() as u64).to_le_bytes());
            out.extend(&rec);
            out.extend(&(raw.len() as u64).to_le_bytes());
            raw.parts().iter().for_each(|p| out.share(p));
        });
    }

    /// The exact length of [`Keyspace::dump`]'s output (values are measured,
    /// not copied).
    pub fn dump_size(&self) -> usize {
        let size = |rec: &DumpedKeyRef| postcard::experimental::serialized_size(rec).expect("keys always serialize");
        16 + self.records().map(|(rec, raw)| 16 + size(&rec) + raw.len()).sum::<usize>()
    }

    /// Every key as a dump record and its raw bytes (keys and values
    /// shared, not copied).
    fn records(&self) -> impl Iterator<Item = (DumpedKeyRef<'_>, Blob)> + '_ {
        self.slots.iter().flatten().flat_map(|map| {
            map.iter().map(|(key, e)| {
                let (value, raw) = match &e.value {
                    Value::Str(b) => (DumpedValueRef::Str(b), Blob::default()),
                    Value::Tensor(t) => (DumpedValueRef::Tensor(t), Blob::default()),
                    Value::Model(m) => (DumpedValueRef::Model(&m.def), m.blob()),
                    Value::Script(s) => (DumpedValueRef::Script(&s.def), Blob::default()),
                };
                (DumpedKeyRef { key, value, expire_at: e.expire_at }, raw)
            })
        })
    }

    /// Rebuilds a keyspace from [`Keyspace::dump`] output. A model's bytes
    /// are a slice of `data` (not a copy) when they are at least half of it,
    /// so that smaller values never keep a large buffer alive; smaller
    /// models are copied into buffers of their own. Models are created last,
    /// once `data` is dropped, so that each one's bytes are all that holds
    /// their buffer, and are laid out there for their runtime
    /// ([`crate::engine::model::arrange`]).
    pub fn load_shared(data: Bytes) -> Result<Keyspace, crate::error::Error> {
        Keyspace::decode(data).map_err(crate::error::Error::Corrupt)
    }

    fn decode(data: Bytes) -> Result<Keyspace, String> {
        let mut ks = Keyspace::new();
        let take = |pos: &mut usize, n: usize| -> Result<std::ops::Range<usize>, String> {
            let end = pos.checked_add(n).filter(|e| *e <= data.len()).ok_or("snapshot is truncated")?;
            let at = *pos..end;
            *pos = end;
            Ok(at)
        };
        let len = |pos: &mut usize| -> Result<usize, String> {
            let at = take(pos, 8)?;
            usize::try_from(u64::from_le_bytes(data[at].try_into().expect("8 bytes"))).map_err(|e| e.to_string())
        };
        let mut pos = 0;
        if len(&mut pos)? as u64 != DUMP_FORMAT {
            return Err("the keyspace is in another format (a snapshot of an older Tessera, whose \
                        format had no version): restart this node with an empty data directory \
                        (it then gets its replicas' state)"
                .into());
        }
        let count = len(&mut pos)?;
        let mut models = Vec::new();
        for _ in 0..count {
            let n = len(&mut pos)?;
            let rec: DumpedKey =
                postcard::from_bytes(&data[take(&mut pos, n)?]).map_err(|e| format!("bad key record: {e}"))?;
            let n = len(&mut pos)?;
            let raw = take(&mut pos, n)?;
            if !raw.is_empty() && !matches!(rec.value, DumpedValue::Model(_)) {
                return Err("raw bytes after a record that has none".into());
            }
            let value = match rec.value {
                DumpedValue::Str(b) => Value::Str(b),
                DumpedValue::Tensor(t) => Value::Tensor(t),
                // Not compiled yet: whoever restores the keyspace starts that.
                DumpedValue::Script(def) => Value::Script(crate::engine::script::StoredScript::new(def)),
                DumpedValue::Model(mut def) => {
                    def.blob = match raw.len() >= data.len() / 2 {
                        true => data.slice(raw),
                        false => {
                            let n = raw.len();
                            let mut own = Vec::with_capacity(n + tessera_common::blob::layout_room(n));
                            own.extend_from_slice(&data[raw]);
                            own.into()
                        }
                    }
                    .into();
                    models.push((rec.key, def, rec.expire_at));
                    continue;
                }
            };
            ks.insert(rec.key, Entry { value, expire_at: rec.expire_at });
        }
        if pos != data.len() {
            return Err("trailing bytes after the last key".into());
        }
        drop(data);
        // Not loaded yet: whoever restores the keyspace starts their loads.
        for (key, mut def, expire_at) in models {
            crate::engine::model::arrange(&mut def);
            ks.insert(key, Entry { value: Value::Model(crate::engine::model::StoredModel::new(def)), expire_at });
        }
        Ok(ks)
    }

    /// [`Keyspace::load_shared`] from a copy of `data`.
    pub fn load(data: &[u8]) -> Result<Keyspace, crate::error::Error> {
        Keyspace::load_shared(Bytes::copy_from_slice(data))
    }
}

#[cfg(test)]
mod tests;
