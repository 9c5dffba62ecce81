//! Commands the router sends to a storage node: typed, validated, and
//! postcard-encoded on the wire (and in the node's command log).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{AiConfig, Dag, ModelDef, ScriptDef, ScriptRun};
use crate::slot::SlotScope;
use crate::tensor::{Tensor, TensorFormat};

/// When a key expires, as the client gave it. Relative times are turned into
/// absolute ones by the node with the timestamp of the log entry that applies
/// them, so every replica computes the same deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// Milliseconds from now (may be <= 0: already expired).
    In(i64),
    /// Unix time in milliseconds.
    At(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCond {
    Always,
    /// NX
    IfAbsent,
    /// XX
    IfPresent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    Always,
    Nx,
    Xx,
    Gt,
    Lt,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeCommand {
    Get {
        key: Bytes,
    },
    Set {
        key: Bytes,
        value: Bytes,
        expire: Option<Expiry>,
        keep_ttl: bool,
        cond: SetCond,
        get: bool,
    },
    MGet {
        keys: Vec<Bytes>,
    },
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
    },
    Del {
        keys: Vec<Bytes>,
    },
    Exists {
        keys: Vec<Bytes>,
    },
    Type {
        key: Bytes,
    },
    Expire {
        key: Bytes,
        at: Expiry,
        cond: ExpireCond,
    },
    Ttl {
        key: Bytes,
        millis: bool,
    },
    Persist {
        key: Bytes,
    },
    IncrBy {
        key: Bytes,
        delta: i64,
    },
    TensorSet {
        key: Bytes,
        tensor: Tensor,
    },
    TensorGet {
        key: Bytes,
        format: TensorFormat,
    },
    /// Keys of this shard matching `pattern` within `scope`.
    Keys {
        pattern: Bytes,
        scope: SlotScope,
    },
    /// Keys of whole slots starting at slot `cursor`, while this shard owns them
    /// contiguously, until at least `count` keys were seen. Replies
    /// `[next_slot, [keys]]` where `next_slot` is 16384 when done.
    Scan {
        cursor: u16,
        count: usize,
        pattern: Option<Bytes>,
        kind: Option<Bytes>,
        scope: SlotScope,
    },
    DbSize {
        scope: SlotScope,
    },
    RandomKey {
        scope: SlotScope,
    },
    Flush {
        scope: SlotScope,
    },
    CountKeysInSlot {
        slot: u16,
    },
    GetKeysInSlot {
        slot: u16,
        count: usize,
    },
    ModelStore {
        key: Bytes,
        model: ModelDef,
    },
    ModelGet {
        key: Bytes,
        meta: bool,
        blob: bool,
    },
    ModelDel {
        key: Bytes,
    },
    /// AI.MODELEXECUTE (or deprecated AI.MODELRUN), parsed; the node checks
    /// the counts against the model.
    ModelExecute(crate::model::ModelRun),
    /// AI.INFO on a model: its run statistics (kept by the serving node).
    ModelInfo {
        key: Bytes,
        reset: bool,
    },
    /// The outputs of one model run, written as one entry.
    TensorMSet {
        pairs: Vec<(Bytes, Tensor)>,
    },
    /// A node setting (sent to every node; no shard state).
    AiConfig {
        op: AiConfig,
    },
    ScriptStore {
        key: Bytes,
        script: ScriptDef,
    },
    ScriptGet {
        key: Bytes,
        meta: bool,
        source: bool,
    },
    ScriptDel {
        key: Bytes,
    },
    /// AI.SCRIPTEXECUTE (or deprecated AI.SCRIPTRUN), parsed.
    ScriptExecute(ScriptRun),
    /// What a script run changed (its `redis.execute` writes, then its
    /// outputs), written as one entry: replicas apply the values, they never
    /// run the script.
    Effects {
        writes: Vec<(Bytes, Written)>,
        /// A digest of what each key the run changed held when the run read
        /// it (`None`: absent): if any moved before the entry applies, it
        /// writes nothing (optimistic concurrency; the client runs it again).
        expected: Vec<(Bytes, Option<u64>)>,
    },
    /// AI.DAGEXECUTE[_RO] / AI.DAGRUN[_RO], parsed.
    Dag(Dag),
    /// AI._SCRIPTSCAN / AI._MODELSCAN on one shard: `[key, tag]` of each
    /// script (`scripts`) or model in `scope`.
    AiScan {
        scripts: bool,
        scope: SlotScope,
    },
    /// MULTI … EXEC on one slot: the queued commands run in order as one
    /// log entry (or, when none writes, as one read), unless a WATCHed key
    /// moved since WATCH read it.
    Multi(Transaction),
    /// WATCH: each key's fingerprint now (nil: absent), for a later EXEC to
    /// compare against.
    Watch {
        keys: Vec<Bytes>,
    },
    /// SAVE / BGSAVE, sent to every node: a snapshot of each replica it
    /// hosts (no shard state; the router sends it with any target).
    Save,
    /// What `INFO MODULES` reports of a node: its run settings, loaded
    /// backends and CPU time (no shard state).
    AiInfo,
    /// AI.TENSORSET / AI.TENSORGET whose arguments are wrong: RedisAI opens
    /// the key before it reads them, so the shard answers WRONGTYPE for a
    /// key of another type, (TENSORGET) the empty-key error for no key,
    /// and `error` otherwise. Changes nothing.
    TensorArgError {
        key: Bytes,
        get: bool,
        error: crate::error::Error,
    },
    /// The cluster's ACL users, kept by the meta group (no shard state; the
    /// node hosting the meta group's leader answers, others redirect).
    Users(UsersCmd),
    /// A command that runs scripts (see [`NodeCommand::runs_scripts`]),
    /// sent for a user whose rules do not allow everything: each
    /// `redis.execute` (and `redisAI.model_execute`) inside is checked
    /// against `user`, the user's `ACL LIST` line.
    AsUser {
        user: String,
        cmd: Box<NodeCommand>,
    },
}

/// What a router asks of the cluster's users. Users are kept as `ACL LIST`
/// lines (passwords as SHA-256 only: a router turns `>pass` and `<pass`
/// into `#hash` and `!hash` before it sends a rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum UsersCmd {
    /// Every user: `[version, [line, ...]]` (version 0: the cluster has
    /// none yet).
    List,
    /// Sets these users if the cluster has none yet (a router's
    /// `--acl-file` and `--requirepass`); else changes nothing. Answers the
    /// version.
    Seed(Vec<String>),
    /// ACL SETUSER: `rules` applied in order to the user (created when
    /// absent); all or nothing. Answers the version.
    SetUser { name: String, rules: Vec<String> },
    /// ACL DELUSER: `[version, deleted]`.
    DelUser(Vec<String>),
    /// ACL LOAD: these users replace the cluster's. Answers the version.
    Load(Vec<String>),
}

/// The queued commands of a MULTI and the keys it WATCHes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub ops: Vec<TxOp>,
    /// Each WATCHed key with its fingerprint when WATCH read it (`None`:
    /// absent). If any differs when the transaction runs, nothing runs and
    /// EXEC answers a null array.
    pub watched: Vec<(Bytes, Option<u64>)>,
}

/// One queued command of a transaction.
// (Nearly every op is a `Run`: boxing it would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TxOp {
    Run(NodeCommand),
    /// A command the leader found could not run before it logged the
    /// transaction (a model that does not load, a script that does not
    /// compile): its place in EXEC's reply is this error.
    Refused(String),
}

impl TxOp {
    fn command(&self) -> Option<&NodeCommand> {
        match self {
            TxOp::Run(c) => Some(c),
            TxOp::Refused(_) => None,
        }
    }
}

impl Transaction {
    /// The commands that will run.
    pub fn commands(&self) -> impl Iterator<Item = &NodeCommand> {
        self.ops.iter().filter_map(TxOp::command)
    }

    /// Whether any queued command writes (the transaction is then logged).
    pub fn writes(&self) -> bool {
        self.commands().any(NodeCommand::is_write)
    }

    /// Whether it runs a model or a script (or holds a DAG): its shard's
    /// leader then runs it and logs what it changed.
    pub fn runs(&self) -> bool {
        self.commands().any(NodeCommand::is_exec)
    }
}

/// A key's value after a script run (see [`NodeCommand::Effects`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Written {
    Str {
        value: Bytes,
        expire_at: Option<i64>,
    },
    Tensor {
        tensor: Tensor,
        expire_at: Option<i64>,
    },
    /// A new deadline for a key whose value stays (a model or a script).
    Expiry {
        expire_at: Option<i64>,
    },
    Deleted,
}

impl NodeCommand {
    /// Whether this command changes state (goes through the command log).
    pub fn is_write(&self) -> bool {
        if let NodeCommand::AsUser { cmd, .. } = self {
            return cmd.is_write();
        }
        matches!(
            self,
            NodeCommand::Set { .. }
                | NodeCommand::MSet { .. }
                | NodeCommand::Del { .. }
                | NodeCommand::Expire { .. }
                | NodeCommand::Persist { .. }
                | NodeCommand::IncrBy { .. }
                | NodeCommand::TensorSet { .. }
                | NodeCommand::Flush { .. }
                | NodeCommand::ModelStore { .. }
                | NodeCommand::ModelDel { .. }
                | NodeCommand::TensorMSet { .. }
                | NodeCommand::ScriptStore { .. }
                | NodeCommand::ScriptDel { .. }
                | NodeCommand::Effects { .. }
        ) || matches!(self, NodeCommand::Multi(tx) if tx.writes())
    }

    /// Whether this command runs a model: reads its inputs, computes, then
    /// writes its outputs through the log.
    pub fn is_exec(&self) -> bool {
        matches!(self, NodeCommand::ModelExecute(_) | NodeCommand::ScriptExecute(_) | NodeCommand::Dag(_))
            || matches!(self, NodeCommand::Multi(tx) if tx.runs())
            || matches!(self, NodeCommand::AsUser { cmd, .. } if cmd.is_exec())
    }

    /// Whether it runs a script: a script run, a DAG with a script step, or
    /// a transaction holding either (what [`NodeCommand::AsUser`] wraps).
    pub fn runs_scripts(&self) -> bool {
        match self {
            NodeCommand::ScriptExecute(_) => true,
            NodeCommand::Dag(dag) => dag.ops.iter().any(|op| matches!(op, crate::model::DagOp::Script { .. })),
            NodeCommand::Multi(tx) => tx.commands().any(NodeCommand::runs_scripts),
            NodeCommand::AsUser { cmd, .. } => cmd.runs_scripts(),
            _ => false,
        }
    }

    /// Whether the router may send this command again when its outcome is
    /// unknown (its node timed out, or the session ended before the reply):
    /// only a command that changes nothing. A model run writes its outputs.
    pub fn retry_safe(&self) -> bool {
        match self {
            NodeCommand::Dag(dag) => return !dag.writes(),
            NodeCommand::Users(c) => return matches!(c, UsersCmd::List),
            NodeCommand::AsUser { cmd, .. } => return cmd.retry_safe(),
            _ => {}
        }
        !self.is_write() && !self.is_exec()
    }

    /// The keys this command writes (for ordering inside a session);
    /// `None` means every key (keyspace-wide commands).
    pub fn written_keys(&self) -> Option<Vec<&Bytes>> {
        match self {
            NodeCommand::ModelExecute(run) => Some(run.outputs.iter().collect()),
            // (KEYS: the keys its `redis.execute` calls are declared to use.)
            NodeCommand::ScriptExecute(run) => Some(run.keys.iter().chain(&run.outputs).collect()),
            NodeCommand::Dag(dag) => Some(dag.written_keys().collect()),
            NodeCommand::Multi(tx) if tx.runs() => Some(self.keys().collect()),
            NodeCommand::AsUser { cmd, .. } => cmd.written_keys(),
            c if c.is_write() && c.has_keys() => Some(c.keys().collect()),
            c if c.is_write() => None,
            _ => Some(Vec::new()),
        }
    }

    /// Whether the command names its keys (keyspace-wide ones do not).
    pub fn has_keys(&self) -> bool {
        !matches!(
            self,
            NodeCommand::Keys { .. }
                | NodeCommand::Scan { .. }
                | NodeCommand::DbSize { .. }
                | NodeCommand::RandomKey { .. }
                | NodeCommand::Flush { .. }
                | NodeCommand::CountKeysInSlot { .. }
                | NodeCommand::GetKeysInSlot { .. }
                | NodeCommand::AiScan { .. }
        ) && !matches!(self, NodeCommand::AsUser { cmd, .. } if !cmd.has_keys())
    }

    /// The keys this command names (the node checks it owns each one).
    pub fn keys(&self) -> Box<dyn Iterator<Item = &Bytes> + '_> {
        use NodeCommand as C;
        match self {
            C::Get { key }
            | C::Set { key, .. }
            | C::Type { key }
            | C::Expire { key, .. }
            | C::Ttl { key, .. }
            | C::Persist { key }
            | C::IncrBy { key, .. }
            | C::TensorSet { key, .. }
            | C::TensorGet { key, .. }
            | C::ModelStore { key, .. }
            | C::ModelGet { key, .. }
            | C::ModelDel { key }
            | C::ModelInfo { key, .. }
            | C::ScriptStore { key, .. }
            | C::ScriptGet { key, .. }
            | C::ScriptDel { key }
            | C::TensorArgError { key, .. } => Box::new(std::iter::once(key)),
            C::ScriptExecute(run) => Box::new(run.all_keys()),
            C::Dag(dag) => Box::new(dag.keys()),
            C::Effects { writes, .. } => Box::new(writes.iter().map(|(k, _)| k)),
            C::ModelExecute(run) => Box::new(run.keys()),
            C::TensorMSet { pairs } => Box::new(pairs.iter().map(|(k, _)| k)),
            C::AiConfig { .. } | C::Save | C::AiInfo | C::Users(_) => Box::new(std::iter::empty()),
            C::AsUser { cmd, .. } => cmd.keys(),
            C::Multi(tx) => Box::new(tx.commands().flat_map(|c| c.keys()).chain(tx.watched.iter().map(|(k, _)| k))),
            C::Watch { keys } => Box::new(keys.iter()),
            C::MGet { keys } | C::Del { keys } | C::Exists { keys } => Box::new(keys.iter()),
            C::MSet { pairs } => Box::new(pairs.iter().map(|(k, _)| k)),
            C::Keys { .. }
            | C::Scan { .. }
            | C::DbSize { .. }
            | C::RandomKey { .. }
            | C::Flush { .. }
            | C::CountKeysInSlot { .. }
            | C::GetKeysInSlot { .. }
            | C::AiScan { .. } => Box::new(std::iter::empty()),
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            NodeCommand::Get { .. } => "get",
            NodeCommand::Set { .. } => "set",
            NodeCommand::MGet { .. } => "mget",
            NodeCommand::MSet { .. } => "mset",
            NodeCommand::Del { .. } => "del",
            NodeCommand::Exists { .. } => "exists",
            NodeCommand::Type { .. } => "type",
            NodeCommand::Expire { .. } => "expire",
            NodeCommand::Ttl { .. } => "ttl",
            NodeCommand::Persist { .. } => "persist",
            NodeCommand::IncrBy { .. } => "incrby",
            NodeCommand::TensorSet { .. } => "ai.tensorset",
            NodeCommand::TensorGet { .. } => "ai.tensorget",
            NodeCommand::Keys { .. } => "keys",
            NodeCommand::Scan { .. } => "scan",
            NodeCommand::DbSize { .. } => "dbsize",
            NodeCommand::RandomKey { .. } => "randomkey",
            NodeCommand::Flush { .. } => "flush",
            NodeCommand::CountKeysInSlot { .. } => "cluster|countkeysinslot",
            NodeCommand::GetKeysInSlot { .. } => "cluster|getkeysinslot",
            NodeCommand::ModelStore { .. } => "ai.modelstore",
            NodeCommand::ModelGet { .. } => "ai.modelget",
            NodeCommand::ModelDel { .. } => "ai.modeldel",
            NodeCommand::ModelExecute(_) => "ai.modelexecute",
            NodeCommand::ModelInfo { .. } => "ai.info",
            NodeCommand::TensorMSet { .. } => "ai.tensorset",
            NodeCommand::AiConfig { .. } => "ai.config",
            NodeCommand::ScriptStore { .. } => "ai.scriptstore",
            NodeCommand::ScriptGet { .. } => "ai.scriptget",
            NodeCommand::ScriptDel { .. } => "ai.scriptdel",
            NodeCommand::ScriptExecute(_) => "ai.scriptexecute",
            NodeCommand::Effects { .. } => "ai.scriptexecute",
            NodeCommand::Dag(dag) if dag.kind.read_only() => "ai.dagexecute_ro",
            NodeCommand::Dag(_) => "ai.dagexecute",
            NodeCommand::AiScan { scripts: true, .. } => "ai._scriptscan",
            NodeCommand::AiScan { scripts: false, .. } => "ai._modelscan",
            NodeCommand::Multi(_) => "exec",
            NodeCommand::Watch { .. } => "watch",
            NodeCommand::Save => "save",
            NodeCommand::AiInfo => "info",
            NodeCommand::TensorArgError { get: true, .. } => "ai.tensorget",
            NodeCommand::TensorArgError { get: false, .. } => "ai.tensorset",
            NodeCommand::Users(_) => "acl",
            NodeCommand::AsUser { cmd, .. } => cmd.name(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        crate::encode(self, self.size_hint())
    }

    /// Roughly the encoded size, so encoding allocates once.
    fn size_hint(&self) -> usize {
        32 + match self {
            NodeCommand::Set { key, value, .. } => key.len() + value.len(),
            NodeCommand::TensorSet { key, tensor, .. } => key.len() + tensor.data.len() + 8 * tensor.shape.len(),
            NodeCommand::MSet { pairs } => pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum(),
            NodeCommand::ModelStore { key, model } => key.len() + model.blob.len() + 256,
            NodeCommand::ModelExecute(run) => run.keys().map(|k| k.len() + 2).sum(),
            NodeCommand::ScriptStore { key, script } => key.len() + script.source.len() + 128,
            NodeCommand::ScriptExecute(run) => run.all_keys().chain(&run.args).map(|k| k.len() + 2).sum(),
            NodeCommand::Dag(dag) => dag.size_hint(),
            NodeCommand::Effects { writes, expected } => {
                expected.iter().map(|(k, _)| k.len() + 12).sum::<usize>()
                    + writes
                        .iter()
                        .map(|(k, w)| {
                            k.len()
                                + 16
                                + match w {
                                    Written::Str { value, .. } => value.len(),
                                    Written::Tensor { tensor, .. } => tensor.data.len() + 8 * tensor.shape.len(),
                                    Written::Expiry { .. } | Written::Deleted => 0,
                                }
                        })
                        .sum::<usize>()
            }
            NodeCommand::TensorMSet { pairs } => pairs.iter().map(|(k, t)| k.len() + t.data.len() + 64).sum(),
            NodeCommand::MGet { keys }
            | NodeCommand::Del { keys }
            | NodeCommand::Exists { keys }
            | NodeCommand::Watch { keys } => keys.iter().map(|k| k.len() + 2).sum(),
            NodeCommand::Multi(tx) => {
                tx.commands().map(NodeCommand::size_hint).sum::<usize>()
                    + tx.watched.iter().map(|(k, _)| k.len() + 10).sum::<usize>()
            }
            _ => 64,
        }
    }

    pub fn from_bytes(b: &[u8]) -> Result<NodeCommand, postcard::Error> {
        postcard::from_bytes(b)
    }

    /// Decodes a command whose buffer holds nothing else; a model blob in
    /// it is then a slice of `b`, not a copy (see [`crate::shared`]).
    pub fn from_shared(b: &bytes::Bytes) -> Result<NodeCommand, postcard::Error> {
        crate::shared::decode(b)
    }
}
