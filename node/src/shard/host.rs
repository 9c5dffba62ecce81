//! [`Host`]: what a running script's `redis.execute` and
//! `redisAI.model_execute` calls reach.
//!
//! Commands run against an overlay on the shard's keyspace: a key is copied
//! from the shard when the script first touches it, and from then on the
//! script reads its own writes there. Nothing reaches the shard while the
//! script runs; once it has run, [`Host::effects`] gives the values of the
//! keys it changed, written with its outputs as one log entry (a script
//! that fails writes nothing). A command may only touch keys of the
//! script's own slot, and, for a caller whose ACL rules do not allow
//! everything, only what those rules allow (the router checked the run
//! itself; each command the script runs is checked here).

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tessera_backend::script::{HostReply, ScriptHost};
use tessera_common::acl::{self, KeyAccess, User};
use tessera_common::command::node::Written;
use tessera_common::command::table;
use tessera_common::command::{parse, Command, NodeCommand, ParseLimits};
use tessera_common::error::Error;
use tessera_common::reply::Reply;
use tessera_common::slot::key_slot;
use tessera_common::tensor::Tensor;

use crate::data::keyspace::{Entry, Keyspace, Value};
use crate::engine::registry::registry;
use crate::error::Error as NodeError;
use crate::state::apply::{apply, read};
use crate::state::LogOp;

/// The error a script's `redis.execute` raises.
fn failed(msg: &str) -> String {
    format!("Redis command returned an error: {msg}")
}

/// RedisAI's words (the errno of its `RedisModule_Call`) where a command
/// cannot run at all, and ours for a command a script may not run.
const NOT_PERMITTED: &str = "Operation not permitted";
const BAD_ARITY: &str = "Invalid argument";
const NO_COMMAND: &str = "No such file or directory";
const REFUSED: &str = "ERR This Redis command is not allowed from script";

/// Copies `keys` in from the shard (`data`, at time `now`) where `o` does
/// not hold them yet.
fn copy_in<'a>(data: &Data, now: i64, o: &mut Overlay, keys: impl Iterator<Item = &'a Bytes>) {
    let ks = o.ks.get_or_insert_with(Keyspace::new);
    let mut d = None;
    for k in keys {
        if !o.copied.contains_key(k) {
            let d = d.get_or_insert_with(|| data.lock());
            let e = d.ks.get(k, now).cloned();
            if let Some(e) = &e {
                ks.insert(k.clone(), e.clone());
            }
            o.copied.insert(k.clone(), e);
        }
    }
}

#[derive(Default)]
struct Overlay {
    /// The keys touched so far, as the script left them (made on the first
    /// command: most runs make none).
    ks: Option<Keyspace>,
    /// Keys copied in from the shard, with what they held then.
    copied: std::collections::HashMap<Bytes, Option<Entry>>,
    /// Keys the script wrote, in the order it first wrote them.
    written: Vec<Bytes>,
}

/// What a run writes: its log entry's contents (see
/// [`NodeCommand::Effects`]).
#[derive(Default)]
pub struct Effects {
    pub writes: Vec<(Bytes, Written)>,
    pub expected: Vec<(Bytes, Option<u64>)>,
}

/// The user a run is for, when its rules do not allow everything.
pub type Caller = Arc<User>;

/// The caller a router named (its `ACL LIST` line).
pub fn caller(line: &str) -> Result<Caller, NodeError> {
    match acl::parse_file(line) {
        Ok(mut users) if users.len() == 1 => Ok(Arc::new(users.remove(0))),
        Ok(_) => Err(NodeError::Decode(format!("not one user: {line}"))),
        Err(e) => Err(NodeError::Decode(format!("the caller's rules: {e}"))),
    }
}

pub struct Host {
    data: Data,
    /// Whose rules each command is checked against (none: all allowed).
    caller: Option<Caller>,
    /// The script's slot: the only one its commands may touch.
    slot: u16,
    /// The run's clock (expiry deadlines are absolute: replicas agree).
    now: i64,
    overlay: Mutex<Overlay>,
}

impl Host {
    pub fn new(data: Data, slot: u16, now: i64) -> Host {
        Host { data, caller: None, slot, now, overlay: Mutex::new(Overlay::default()) }
    }

    /// Checks each command the script runs against `caller`'s rules.
    pub fn for_caller(mut self, caller: Option<Caller>) -> Host {
        self.caller = caller;
        self
    }

    /// Whether the caller may run `argv` (unknown commands and wrong
    /// arities are answered as for anyone, by [`Host::command`]). A refusal
    /// is Redis's NOPERM words, raised as the script's error.
    fn permitted(&self, argv: &[Bytes]) -> Result<(), String> {
        let Some(user) = &self.caller else { return Ok(()) };
        match table::lookup(&argv[0]) {
            Some(spec) if spec.arity_ok(argv.len()) => user.check(spec, argv).map_err(|d| failed(&d.noperm())),
            _ => Ok(()),
        }
    }

    /// What the run changed, then `outputs` (which must go to keys that
    /// hold tensors or nothing, as the run left them): the writes of its
    /// log entry.
    pub fn effects(self, outputs: impl Iterator<Item = (Bytes, Tensor)>) -> Result<Effects, NodeError> {
        let outputs: Vec<(Bytes, Tensor)> = outputs.collect();
        let mut o = self.overlay.into_inner();
        if o.ks.is_none() && outputs.is_empty() {
            return Ok(Effects::default());
        }
        copy_in(&self.data, self.now, &mut o, outputs.iter().map(|(k, _)| k));
        let ks = o.ks.as_ref().expect("made by copy_in");
        let held = |k: &Bytes| ks.get(k, self.now).map(|e| &e.value);
        if outputs.iter().any(|(k, _)| matches!(held(k), Some(Value::Str(_) | Value::Model(_) | Value::Script(_)))) {
            return Err(Error::WrongType.into());
        }
        // Only what differs from what the shard held: a write that changed
        // nothing (DEL of a missing key, SET NX of one that exists) is no
        // write, and does not overwrite what others wrote meanwhile.
        let same = |a: Option<&Entry>, b: Option<&Entry>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => a.value == b.value && a.expire_at == b.expire_at,
            _ => false,
        };
        let changed: Vec<&Bytes> = o
            .written
            .iter()
            .filter(|k| !same(ks.get(k, self.now), o.copied.get(*k).and_then(|e| e.as_ref())))
            .collect();
        let expected = changed
            .iter()
            .map(|k| ((*k).clone(), o.copied.get(*k).and_then(|e| e.as_ref()).map(Entry::fingerprint)))
            .collect();
        let changed = changed
            .into_iter()
            .map(|k| {
                let w = match ks.get(k, self.now) {
                    None => Written::Deleted,
                    Some(e) => match &e.value {
                        Value::Str(value) => Written::Str { value: value.clone(), expire_at: e.expire_at },
                        Value::Tensor(tensor) => Written::Tensor { tensor: tensor.clone(), expire_at: e.expire_at },
                        // No command a script may run stores these; it may
                        // change when they expire.
                        Value::Model(_) | Value::Script(_) => Written::Expiry { expire_at: e.expire_at },
                    },
                };
                (k.clone(), w)
            })
            .collect();
        Ok(Effects { writes: writes(changed, outputs.into_iter()), expected })
    }

    /// Runs `cmd` (a command of this slot's keys that a replica can apply
    /// or read) against the overlay: a write changes the overlay only.
    pub fn run(&self, cmd: &NodeCommand) -> Reply {
        let mut o = self.overlay.lock();
        copy_in(&self.data, self.now, &mut o, cmd.keys());
        let o = &mut *o;
        let ks = o.ks.as_mut().expect("made by copy_in");
        if !cmd.is_write() {
            return read(ks, cmd, self.now, registry().model_chunk_size());
        }
        let reply = apply(ks, self.now, &LogOp::Command(cmd.clone()), &mut Vec::new());
        if !matches!(reply, Reply::Error(_)) {
            for k in cmd.keys() {
                if !o.written.contains(k) {
                    o.written.push(k.clone());
                }
            }
        }
        reply
    }

    /// What `key` holds as the run has left it.
    pub fn get(&self, key: &Bytes) -> Option<Entry> {
        let mut o = self.overlay.lock();
        copy_in(&self.data, self.now, &mut o, std::iter::once(key));
        o.ks.as_ref().and_then(|ks| ks.get(key, self.now).cloned())
    }

    /// Each key the run has touched (read or written) with the fingerprint
    /// it had in the shard when first touched (`None`: absent).
    pub fn touched(&self) -> Vec<(Bytes, Option<u64>)> {
        let o = self.overlay.lock();
        o.copied.iter().map(|(k, e)| (k.clone(), e.as_ref().map(Entry::fingerprint))).collect()
    }

    fn command(&self, argv: &[Bytes]) -> Result<NodeCommand, String> {
        let cmd = match parse(argv.to_vec(), &ParseLimits::default()) {
            Ok(Command::Keyed { slot, cmd }) if !cmd.has_keys() || slot == self.slot => cmd,
            Ok(Command::Keyed { .. }) | Err(Error::CrossSlot) => return Err(failed(NOT_PERMITTED)),
            Ok(_) => return Err(failed(REFUSED)),
            Err(Error::Arity(_)) => return Err(failed(BAD_ARITY)),
            Err(Error::UnknownCommand { .. }) => return Err(failed(NO_COMMAND)),
            Err(e) => return Err(failed(&e.to_string())),
        };
        // Not from a script: runs (they would wait on the queue this one
        // holds), stores of models and scripts, keyspace-wide commands.
        let refused = cmd.is_exec()
            || !cmd.has_keys()
            || matches!(
                cmd,
                NodeCommand::ModelStore { .. }
                    | NodeCommand::ModelDel { .. }
                    | NodeCommand::ScriptStore { .. }
                    | NodeCommand::ScriptDel { .. }
                    | NodeCommand::Effects { .. }
                    | NodeCommand::TensorMSet { .. }
                    | NodeCommand::AiConfig { .. }
            );
        if refused {
            return Err(failed(REFUSED));
        }
        Ok(cmd)
    }
}

/// A reply as the script sees it.
fn host_reply(r: Reply) -> Result<HostReply, String> {
    let list =
        |items: Vec<Reply>| items.into_iter().map(host_reply).collect::<Result<Vec<_>, _>>().map(HostReply::Array);
    Ok(match r {
        Reply::Error(e) => return Err(failed(&e)),
        Reply::Simple(s) | Reply::Verbatim(s) => HostReply::Str(Bytes::from(s)),
        Reply::Bulk(b) => HostReply::Str(b),
        Reply::Blob(b) => HostReply::Str(b.contiguous()),
        Reply::Int(i) => HostReply::Int(i),
        Reply::Bool(b) => HostReply::Int(i64::from(b)),
        Reply::Double(d) => HostReply::Str(Bytes::from(d.to_string())),
        Reply::Null | Reply::NullArray => HostReply::Nil,
        Reply::Array(items) | Reply::Set(items) => return list(items),
        Reply::Map(pairs) => return list(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
    })
}

impl ScriptHost for Host {
    fn execute(&self, argv: &[Bytes]) -> Result<HostReply, String> {
        self.permitted(argv)?;
        let cmd = self.command(argv)?;
        host_reply(self.run(&cmd))
    }

    fn model_execute(&self, key: &[u8], inputs: Vec<Tensor>, outputs: usize) -> Result<Vec<Tensor>, String> {
        if key_slot(key) != self.slot {
            return Err(Error::CrossSlot.to_string());
        }
        let key = Bytes::copy_from_slice(key);
        // As AI.MODELEXECUTE would be: the command, and reading the model.
        if let Some(user) = &self.caller {
            let spec = table::lookup(b"ai.modelexecute").expect("in the command table");
            user.check(spec, &[Bytes::from_static(b"ai.modelexecute")])
                .and_then(|()| user.check_keys(KeyAccess::Read, [&key]))
                .map_err(|d| d.noperm())?;
        }
        // (Through the overlay: what the run did before, and what a
        // transaction checks at apply, include the model.)
        let model = match self.get(&key).map(|e| e.value) {
            Some(Value::Model(m)) => m,
            None => return Err(NodeError::EmptyModel.to_string()),
            Some(_) => return Err(Error::WrongType.to_string()),
        };
        // On the script's worker thread, not queued (as RedisAI runs it).
        let loaded = model.loaded().map_err(|e| e.to_string())?;
        let outs = loaded.run(&inputs).map_err(|e| e.0)?;
        if outs.len() < outputs {
            return Err("ERR Model did not generate the expected number of outputs".into());
        }
        outs.into_iter().take(outputs).map(|t| t.ok_or_else(|| "ERR model output is not a tensor".to_owned())).collect()
    }
}

/// The writes of a run: what `host` changed, then the outputs.
fn writes(changed: Vec<(Bytes, Written)>, outputs: impl Iterator<Item = (Bytes, Tensor)>) -> Vec<(Bytes, Written)> {
    let mut writes = changed;
    for (key, tensor) in outputs {
        writes.retain(|(k, _)| *k != key);
        writes.push((key, Written::Tensor { tensor, expire_at: None }));
    }
    writes
}

/// The shard's state, as the host reads it.
type Data = std::sync::Arc<Mutex<crate::raft::sm::ShardData>>;
