//! The state machine: how each command reads or changes a [`Keyspace`].
//!
//! [`apply`] runs log entries (writes) with the entry's timestamp as the
//! clock, so it is deterministic, and says what else the node must do
//! ([`Effect`]) rather than doing it; [`read`] serves reads at the node's clock;
//! [`precheck`] rejects, before anything is logged, writes that would only fail.

use bytes::Bytes;
use rand::Rng;
use tessera_common::command::node::{ExpireCond, Expiry, SetCond, TxOp};
use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::glob;
use tessera_common::reply::Reply;
use tessera_common::slot::SLOTS;

use super::{replies, script, Effect, LogOp};
use crate::data::keyspace::{Entry, Keyspace, Value};
use crate::engine::model::StoredModel;
use crate::error::Error as NodeError;

fn wrongtype() -> Reply {
    Error::WrongType.to_reply()
}

fn deadline(e: Expiry, ts: i64) -> i64 {
    match e {
        Expiry::In(ms) => ts.saturating_add(ms),
        Expiry::At(ms) => ms,
    }
}

/// A write that is certain to fail against the current state, answered
/// without reaching the log.
pub fn precheck(ks: &Keyspace, cmd: &NodeCommand, now: i64) -> Option<NodeError> {
    match cmd {
        NodeCommand::TensorSet { key, .. } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Str(_) | Value::Model(_) | Value::Script(_)) => Some(Error::WrongType.into()),
            _ => None,
        },
        NodeCommand::IncrBy { key, delta } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Tensor(_) | Value::Model(_) | Value::Script(_)) => Some(Error::WrongType.into()),
            Some(Value::Str(s)) => match parse_int(s) {
                None => Some(Error::NotInteger.into()),
                Some(v) if v.checked_add(*delta).is_none() => Some(Error::Overflow.into()),
                Some(_) => None,
            },
            None => None,
        },
        NodeCommand::Set { key, get: true, .. } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Tensor(_) | Value::Model(_) | Value::Script(_)) => Some(Error::WrongType.into()),
            _ => None,
        },
        NodeCommand::ModelStore { key, .. } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Str(_) | Value::Tensor(_) | Value::Script(_)) => Some(Error::WrongType.into()),
            _ => None,
        },
        NodeCommand::ModelDel { key } => match ks.get(key, now).map(|e| &e.value) {
            None => Some(NodeError::EmptyModel),
            Some(Value::Str(_) | Value::Tensor(_) | Value::Script(_)) => Some(Error::WrongType.into()),
            Some(Value::Model(_)) => None,
        },
        NodeCommand::ScriptStore { key, .. } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Str(_) | Value::Tensor(_) | Value::Model(_)) => Some(Error::WrongType.into()),
            _ => None,
        },
        NodeCommand::ScriptDel { key } => match ks.get(key, now).map(|e| &e.value) {
            None => Some(NodeError::EmptyScript),
            Some(Value::Script(_)) => None,
            Some(_) => Some(Error::WrongType.into()),
        },
        NodeCommand::TensorMSet { pairs } => pairs
            .iter()
            .any(|(k, _)| {
                matches!(ks.get(k, now).map(|e| &e.value), Some(Value::Str(_) | Value::Model(_) | Value::Script(_)))
            })
            .then(|| Error::WrongType.into()),
        _ => None,
    }
}

fn parse_int(s: &[u8]) -> Option<i64> {
    tessera_common::command::int_arg(s).ok()
}

/// Applies one logged operation at time `ts` (the entry's timestamp).
/// Deterministic: depends only on `ks`, `ts` and `op`. What the node must
/// do besides goes to `effects`.
pub fn apply(ks: &mut Keyspace, ts: i64, op: &LogOp, effects: &mut Vec<Effect>) -> Reply {
    let cmd = match op {
        LogOp::PurgeExpired => return Reply::Int(ks.purge_expired(ts) as i64),
        LogOp::Command(c) => c,
        LogOp::Meta(_) => return NodeError::Internal("cluster map change sent to a shard").to_reply(),
        LogOp::Chunk { .. } => return NodeError::Internal("a chunk inside a chunked write").to_reply(),
        LogOp::Fenced { .. } => return NodeError::Internal("a fenced write outside the state machine").to_reply(),
    };
    apply_command(ks, ts, cmd, effects)
}

/// Applies one command at time `ts` (see [`apply`]).
fn apply_command(ks: &mut Keyspace, ts: i64, cmd: &NodeCommand, effects: &mut Vec<Effect>) -> Reply {
    match cmd {
        NodeCommand::Set { key, value, expire, keep_ttl, cond, get } => {
            let old = ks.get(key, ts);
            let old_value = match old.map(|e| &e.value) {
                Some(Value::Str(s)) => Reply::Bulk(s.clone()),
                Some(Value::Tensor(_) | Value::Model(_) | Value::Script(_)) if *get => return wrongtype(),
                _ => Reply::Null,
            };
            let exists = old.is_some();
            let proceed = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => !exists,
                SetCond::IfPresent => exists,
            };
            if proceed {
                let expire_at = match expire {
                    Some(e) => Some(deadline(*e, ts)),
                    None if *keep_ttl => old.and_then(|e| e.expire_at),
                    None => None,
                };
                ks.insert(key.clone(), Entry { value: Value::Str(value.clone()), expire_at });
            }
            match (get, proceed) {
                (true, _) => old_value,
                (false, true) => Reply::ok(),
                (false, false) => Reply::Null,
            }
        }
        NodeCommand::MSet { pairs } => {
            for (k, v) in pairs {
                ks.insert(k.clone(), Entry { value: Value::Str(v.clone()), expire_at: None });
            }
            Reply::ok()
        }
        NodeCommand::Del { keys } => {
            let n = keys.iter().filter(|k| ks.get(k, ts).is_some() && ks.remove(k).is_some()).count();
            Reply::Int(n as i64)
        }
        NodeCommand::Expire { key, at, cond } => {
            let Some(e) = ks.get(key, ts) else {
                return Reply::Int(0);
            };
            let new = deadline(*at, ts);
            let ok = match (cond, e.expire_at) {
                (ExpireCond::Always, _) => true,
                (ExpireCond::Nx, cur) => cur.is_none(),
                (ExpireCond::Xx, cur) => cur.is_some(),
                (ExpireCond::Gt, cur) => cur.is_some_and(|c| new > c),
                (ExpireCond::Lt, cur) => cur.is_none_or(|c| new < c),
            };
            if !ok {
                return Reply::Int(0);
            }
            if new <= ts {
                ks.remove(key);
            } else {
                ks.set_expiry(key, Some(new), ts);
            }
            Reply::Int(1)
        }
        NodeCommand::Persist { key } => match ks.get(key, ts) {
            Some(e) if e.expire_at.is_some() => Reply::Int(i64::from(ks.set_expiry(key, None, ts))),
            _ => Reply::Int(0),
        },
        NodeCommand::IncrBy { key, delta } => {
            let (cur, expire_at) = match ks.get(key, ts) {
                None => (0, None),
                Some(Entry { value: Value::Tensor(_) | Value::Model(_) | Value::Script(_), .. }) => return wrongtype(),
                Some(Entry { value: Value::Str(s), expire_at }) => match parse_int(s) {
                    Some(v) => (v, *expire_at),
                    None => return Error::NotInteger.to_reply(),
                },
            };
            let Some(new) = cur.checked_add(*delta) else {
                return Error::Overflow.to_reply();
            };
            let value = Value::Str(Bytes::from(new.to_string()));
            ks.insert(key.clone(), Entry { value, expire_at });
            Reply::Int(new)
        }
        NodeCommand::TensorSet { key, tensor } => {
            if let Some(Entry { value: Value::Str(_) | Value::Model(_) | Value::Script(_), .. }) = ks.get(key, ts) {
                return wrongtype();
            }
            ks.insert(key.clone(), Entry { value: Value::Tensor(tensor.clone()), expire_at: None });
            Reply::ok()
        }
        NodeCommand::TensorMSet { pairs } => {
            let clash = |k: &Bytes| {
                matches!(ks.get(k, ts).map(|e| &e.value), Some(Value::Str(_) | Value::Model(_) | Value::Script(_)))
            };
            if pairs.iter().any(|(k, _)| clash(k)) {
                return wrongtype();
            }
            for (k, t) in pairs {
                ks.insert(k.clone(), Entry { value: Value::Tensor(t.clone()), expire_at: None });
            }
            Reply::ok()
        }
        NodeCommand::ModelStore { key, model } => {
            if let Some(Entry { value: Value::Str(_) | Value::Tensor(_) | Value::Script(_), .. }) = ks.get(key, ts) {
                return wrongtype();
            }
            let stored = StoredModel::new(model.clone());
            effects.push(Effect::LoadModel(stored.clone()));
            ks.insert(key.clone(), Entry { value: Value::Model(stored), expire_at: None });
            Reply::ok()
        }
        NodeCommand::ModelDel { key } => match ks.get(key, ts).map(|e| &e.value) {
            None => NodeError::EmptyModel.to_reply(),
            Some(Value::Model(_)) => {
                ks.remove(key);
                Reply::ok()
            }
            Some(_) => wrongtype(),
        },
        NodeCommand::Flush { scope } => {
            ks.flush(scope);
            Reply::ok()
        }
        NodeCommand::ScriptStore { .. } | NodeCommand::ScriptDel { .. } | NodeCommand::Effects { .. } => {
            script::apply(ks, ts, cmd, effects)
        }
        NodeCommand::Multi(tx) => {
            if ks.moved(&tx.watched, ts) {
                return Reply::NullArray;
            }
            let chunk = crate::engine::registry::DEFAULT_CHUNK as usize;
            let replies = tx.ops.iter().map(|op| match op {
                TxOp::Run(c) if c.is_write() => apply_command(ks, ts, c, effects),
                TxOp::Run(c) => read(ks, c, ts, chunk),
                TxOp::Refused(e) => Reply::Error(e.clone()),
            });
            Reply::Array(replies.collect())
        }
        // (A read is never logged; one that were would answer as read.)
        read_only => read(ks, read_only, ts, crate::engine::registry::DEFAULT_CHUNK as usize),
    }
}

/// Serves a read at time `now`; a model's bytes are sent in parts of
/// `model_chunk` bytes (`AI.CONFIG MODEL_CHUNK_SIZE`).
pub fn read(ks: &Keyspace, cmd: &NodeCommand, now: i64, model_chunk: usize) -> Reply {
    match cmd {
        NodeCommand::Get { key } => match ks.get(key, now).map(|e| &e.value) {
            None => Reply::Null,
            Some(Value::Str(s)) => Reply::Bulk(s.clone()),
            Some(Value::Tensor(_) | Value::Model(_) | Value::Script(_)) => wrongtype(),
        },
        NodeCommand::MGet { keys } => Reply::Array(
            keys.iter()
                .map(|k| match ks.get(k, now).map(|e| &e.value) {
                    Some(Value::Str(s)) => Reply::Bulk(s.clone()),
                    _ => Reply::Null,
                })
                .collect(),
        ),
        NodeCommand::Exists { keys } => Reply::Int(keys.iter().filter(|k| ks.get(k, now).is_some()).count() as i64),
        NodeCommand::Type { key } => Reply::Simple(ks.get(key, now).map_or("none", |e| e.value.type_name()).to_owned()),
        NodeCommand::Ttl { key, millis } => match ks.get(key, now) {
            None => Reply::Int(-2),
            Some(Entry { expire_at: None, .. }) => Reply::Int(-1),
            Some(Entry { expire_at: Some(t), .. }) => {
                let left = (t - now).max(0);
                Reply::Int(if *millis { left } else { (left + 500) / 1000 })
            }
        },
        NodeCommand::TensorGet { key, format } => match ks.get(key, now).map(|e| &e.value) {
            None => NodeError::EmptyTensor.to_reply(),
            Some(Value::Str(_) | Value::Model(_) | Value::Script(_)) => wrongtype(),
            Some(Value::Tensor(t)) => t.reply(*format).unwrap_or_else(|e| e.to_reply()),
        },
        NodeCommand::ModelGet { key, meta, blob } => match ks.get(key, now).map(|e| &e.value) {
            None => NodeError::EmptyModel.to_reply(),
            Some(Value::Model(m)) => replies::model(m, *meta, *blob, model_chunk),
            Some(_) => wrongtype(),
        },
        NodeCommand::ModelInfo { key, reset } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Model(m)) if *reset => {
                m.stats.reset();
                Reply::ok()
            }
            Some(Value::Model(m)) => replies::model_info(key, m),
            Some(Value::Script(s)) if *reset => {
                s.stats.reset();
                Reply::ok()
            }
            Some(Value::Script(s)) => replies::script_info(key, s),
            _ => NodeError::NoRunInfo.to_reply(),
        },
        NodeCommand::ScriptGet { key, meta, source } => match ks.get(key, now).map(|e| &e.value) {
            None => NodeError::EmptyScript.to_reply(),
            Some(Value::Script(s)) => replies::script(s, *meta, *source),
            Some(_) => wrongtype(),
        },
        NodeCommand::AiScan { scripts, scope } => {
            let mut out = Vec::new();
            for slot in ks.occupied_slots(scope) {
                for (k, e) in ks.slot_keys(slot, now) {
                    let tag = match &e.value {
                        Value::Script(s) if *scripts => &s.def.tag,
                        Value::Model(m) if !*scripts => &m.def.tag,
                        _ => continue,
                    };
                    out.push(Reply::Array(vec![Reply::Bulk(k.clone()), Reply::Bulk(tag.clone())]));
                }
            }
            Reply::Array(out)
        }
        NodeCommand::Keys { pattern, scope } => {
            let all = pattern.as_ref() == b"*";
            let mut out = Vec::new();
            for slot in ks.occupied_slots(scope) {
                out.extend(
                    ks.slot_keys(slot, now)
                        .filter(|(k, _)| all || glob::matches(pattern, k))
                        .map(|(k, _)| Reply::Bulk(k.clone())),
                );
            }
            Reply::Array(out)
        }
        NodeCommand::Scan { cursor, count, pattern, kind, scope } => {
            // Whole slots at a time, from `cursor` upward. The router only sends
            // a cursor inside a range this shard owns; `owned` stops the walk
            // at the end of that range.
            let mut keys = Vec::new();
            let mut slot = *cursor;
            let mut seen = 0;
            while slot < SLOTS && scope.contains(slot) && seen < *count {
                for (k, e) in ks.slot_keys(slot, now) {
                    seen += 1;
                    let type_ok = kind.as_ref().is_none_or(|t| t.eq_ignore_ascii_case(e.value.type_name().as_bytes()));
                    if type_ok && pattern.as_ref().is_none_or(|p| glob::matches(p, k)) {
                        keys.push(Reply::Bulk(k.clone()));
                    }
                }
                slot += 1;
            }
            Reply::Array(vec![Reply::Int(i64::from(slot)), Reply::Array(keys)])
        }
        NodeCommand::DbSize { scope } => {
            let n = if scope.is_all() {
                ks.len()
            } else {
                ks.occupied_slots(scope).map(|s| ks.count_in_slot(s, i64::MIN)).sum()
            };
            Reply::Int(n as i64)
        }
        NodeCommand::RandomKey { scope } => {
            let slots: Vec<u16> = ks.occupied_slots(scope).collect();
            let mut rng = rand::rng();
            for _ in 0..slots.len().min(64) {
                let s = slots[rng.random_range(0..slots.len())];
                let live: Vec<&Bytes> = ks.slot_keys(s, now).map(|(k, _)| k).collect();
                if !live.is_empty() {
                    return Reply::Bulk(live[rng.random_range(0..live.len())].clone());
                }
            }
            Reply::Null
        }
        NodeCommand::CountKeysInSlot { slot } => Reply::Int(ks.count_in_slot(*slot, now) as i64),
        NodeCommand::GetKeysInSlot { slot, count } => {
            Reply::Array(ks.slot_keys(*slot, now).take(*count).map(|(k, _)| Reply::Bulk(k.clone())).collect())
        }
        NodeCommand::TensorArgError { key, get, error } => match ks.get(key, now).map(|e| &e.value) {
            Some(Value::Str(_) | Value::Model(_) | Value::Script(_)) => wrongtype(),
            None if *get => NodeError::EmptyTensor.to_reply(),
            _ => error.to_reply(),
        },
        NodeCommand::Watch { keys } => Reply::Array(
            keys.iter().map(|k| ks.get(k, now).map_or(Reply::Null, |e| Reply::Int(e.fingerprint() as i64))).collect(),
        ),
        NodeCommand::Multi(tx) if !tx.writes() => {
            if ks.moved(&tx.watched, now) {
                return Reply::NullArray;
            }
            let replies = tx.ops.iter().map(|op| match op {
                TxOp::Run(c) => read(ks, c, now, model_chunk),
                TxOp::Refused(e) => Reply::Error(e.clone()),
            });
            Reply::Array(replies.collect())
        }
        write => {
            // Writes never take this path: `Shard::execute` sends them to `apply`.
            NodeError::NotARead(write.name()).to_reply()
        }
    }
}

/// Applies `op`, logged in `term`; a fenced command only in its own term.
pub fn apply_in_term(ks: &mut Keyspace, ts: i64, term: u64, op: LogOp, effects: &mut Vec<Effect>) -> Reply {
    match op {
        LogOp::Fenced { term: fence, cmd } if fence == term => apply(ks, ts, &LogOp::Command(cmd), effects),
        LogOp::Fenced { .. } => NodeError::FencedOut.to_reply(),
        op => apply(ks, ts, &op, effects),
    }
}
