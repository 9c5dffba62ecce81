//! AI.DAGEXECUTE / AI.DAGEXECUTE_RO and the deprecated AI.DAGRUN /
//! AI.DAGRUN_RO, parsed once where they arrive (the router) into a [`Dag`]:
//! its ops, with every tensor name resolved to a numbered *value* (each
//! write of a name is a new value, later ops read the latest), the keys it
//! LOADs and PERSISTs, and what is left to check once the shard's models
//! and scripts are at hand (RedisAI reads LOAD keys and looks each op's
//! model or script up while it parses, so those errors come first).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{eq, err, ModelRun, ScriptRun};
use crate::command::int_arg;
use crate::error::{Error, Result};
use crate::tensor::{parse_get_format, Tensor, TensorFormat};

/// Which of the four DAG commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DagKind {
    Execute,
    ExecuteRo,
    /// Deprecated AI.DAGRUN.
    Run,
    /// Deprecated AI.DAGRUN_RO.
    RunRo,
}

impl DagKind {
    pub fn name(self) -> &'static str {
        match self {
            DagKind::Execute => "AI.DAGEXECUTE",
            DagKind::ExecuteRo => "AI.DAGEXECUTE_RO",
            DagKind::Run => "AI.DAGRUN",
            DagKind::RunRo => "AI.DAGRUN_RO",
        }
    }

    pub fn read_only(self) -> bool {
        matches!(self, DagKind::ExecuteRo | DagKind::RunRo)
    }

    pub fn deprecated(self) -> bool {
        matches!(self, DagKind::Run | DagKind::RunRo)
    }
}

/// One op of a DAG. Inputs and outputs are value numbers (see [`Dag`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DagOp {
    /// AI.TENSORSET: the tensor, materialized when parsed (it always
    /// answers OK).
    TensorSet { name: Bytes, output: usize, tensor: Tensor },
    /// AI.TENSORGET of the value `input` (the latest of `name` at this op).
    TensorGet { name: Bytes, input: usize, format: TensorFormat },
    /// AI.MODELEXECUTE (or AI.MODELRUN in a DAGRUN): `run` names the
    /// tensors, `inputs`/`outputs` are their values.
    Model { run: ModelRun, inputs: Vec<usize>, outputs: Vec<usize> },
    /// AI.SCRIPTEXECUTE (or AI.SCRIPTRUN in a DAGRUN).
    Script { run: ScriptRun, inputs: Vec<usize>, outputs: Vec<usize> },
}

/// A parsed DAG command.
///
/// Values `0..load.len()` are the LOADed keys, read from the keyspace
/// when the DAG starts; every op output is a value of its own, numbered in
/// op order after them (`values` in all). Nothing but PERSIST writes the
/// keyspace: `persist[i]` gets value `persisted[i]`, the last written under
/// that name, once every op has succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dag {
    pub kind: DagKind,
    pub load: Vec<Bytes>,
    pub persist: Vec<Bytes>,
    pub persisted: Vec<usize>,
    /// ROUTING: only routes the command (any string; its slot is the DAG's).
    pub routing: Option<Bytes>,
    /// Milliseconds from arrival after which ops not started yet are not
    /// run and the DAG answers TIMEDOUT (RedisAI takes 0 or less as none).
    pub timeout_ms: Option<u64>,
    pub ops: Vec<DagOp>,
    pub values: usize,
    /// The command's first error that needs no keyspace, if any. The shard
    /// answers it after reading the LOAD keys and looking up the models and
    /// scripts of `ops` (those parsed before it), in RedisAI's order.
    pub fails: Option<Error>,
}

impl Dag {
    /// Whether running it may change the keyspace: PERSIST, or a script
    /// (whose `redis.execute` may write).
    pub fn writes(&self) -> bool {
        !self.persist.is_empty() || self.ops.iter().any(|op| matches!(op, DagOp::Script { .. }))
    }

    /// Every key it names: LOAD, PERSIST, ROUTING, each op's model or
    /// script and a script's KEYS (tensor names inside are not keys).
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let ops = self.ops.iter().flat_map(|op| -> Box<dyn Iterator<Item = &Bytes> + '_> {
            match op {
                DagOp::Model { run, .. } => Box::new(std::iter::once(&run.key)),
                DagOp::Script { run, .. } => Box::new(std::iter::once(&run.key).chain(&run.keys)),
                DagOp::TensorSet { .. } | DagOp::TensorGet { .. } => Box::new(std::iter::empty()),
            }
        });
        self.load.iter().chain(&self.persist).chain(&self.routing).chain(ops)
    }

    /// The keys it may write: PERSIST and the KEYS of its scripts.
    pub fn written_keys(&self) -> impl Iterator<Item = &Bytes> {
        let scripts = self.ops.iter().flat_map(|op| match op {
            DagOp::Script { run, .. } => run.keys.as_slice(),
            _ => &[],
        });
        self.persist.iter().chain(scripts)
    }

    /// Roughly its encoded size.
    pub fn size_hint(&self) -> usize {
        let ops: usize = self
            .ops
            .iter()
            .map(|op| match op {
                DagOp::TensorSet { tensor, .. } => tensor.data.len() + 8 * tensor.shape.len() + 16,
                DagOp::TensorGet { .. } => 8,
                DagOp::Model { run, .. } => run.keys().map(|k| k.len() + 4).sum::<usize>() + 16,
                DagOp::Script { run, .. } => run.all_keys().chain(&run.args).map(|k| k.len() + 4).sum::<usize>() + 32,
            })
            .sum();
        ops + self.keys().map(|k| k.len() + 2).sum::<usize>()
    }
}

const LOAD_COUNT: &str = "ERR invalid or negative value found in number of keys to LOAD";
const PERSIST_COUNT: &str = "ERR invalid or negative value found in number of keys to PERSIST";

/// A count after LOAD or PERSIST, and the keys after it up to that many,
/// stopping at `|>`: `(keys, next index)`; `Err` if the count is bad.
fn counted(argv: &[Bytes], at: usize, bad_count: &str) -> Result<(Vec<Bytes>, usize)> {
    let n = int_arg(&argv[at + 1]).ok().filter(|n| *n >= 0).ok_or_else(|| err(bad_count))?;
    let mut keys = Vec::new();
    let mut i = at + 2;
    while let Some(a) = argv.get(i) {
        if keys.len() as i64 >= n || a.as_ref() == b"|>" {
            break;
        }
        keys.push(a.clone());
        i += 1;
    }
    Ok((keys, i))
}

/// Parses a DAG command (argv[0] is the command). `Err` is an error
/// RedisAI gives before reading any key (the router answers it); later
/// ones are in [`Dag::fails`].
pub fn parse_dag(argv: &[Bytes], kind: DagKind, max_value_bytes: usize) -> Result<Dag> {
    let name = kind.name();
    if !kind.deprecated() && argv.len() < 6 {
        return Err(Error::Verbatim(format!("ERR missing arguments for '{name}' command")));
    }
    if kind.deprecated() && argv.len() < 4 {
        return Err(Error::Verbatim(format!("ERR wrong number of arguments for '{name}' command")));
    }
    let mut dag = Dag {
        kind,
        load: Vec::new(),
        persist: Vec::new(),
        persisted: Vec::new(),
        routing: None,
        timeout_ms: None,
        ops: Vec::new(),
        values: 0,
        fails: None,
    };
    // Until LOAD has been read, an error is the router's to answer.
    let mut loaded = false;
    let fail = |dag: Dag, loaded: bool, e: Error| if loaded { Ok(Dag { fails: Some(e), ..dag }) } else { Err(e) };
    let (mut seen_load, mut seen_persist, mut seen_routing, mut seen_timeout) = (false, false, false, false);
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        if a.as_ref() == b"|>" {
            break;
        }
        if eq(a, "LOAD") && !seen_load {
            seen_load = true;
            if argv.len() - i < 3 {
                return fail(dag, loaded, err("ERR missing arguments after LOAD keyword in DAG command"));
            }
            let (keys, next) = match counted(argv, i, LOAD_COUNT) {
                Ok(c) => c,
                Err(e) => return fail(dag, loaded, e),
            };
            let wanted = int_arg(&argv[i + 1]).unwrap_or(0) as usize;
            // (RedisAI reads each key as it goes: a missing one is reported
            // before a short list.)
            dag.load = keys;
            loaded = true;
            if dag.load.len() != wanted {
                return fail(
                    dag,
                    loaded,
                    err("ERR number of keys to LOAD into DAG does not match the number of given arguments"),
                );
            }
            i = next;
        } else if eq(a, "PERSIST") && !seen_persist {
            seen_persist = true;
            if kind.read_only() {
                return fail(dag, loaded, err("ERR PERSIST cannot be specified in a read-only DAG"));
            }
            if argv.len() - i < 3 {
                return fail(dag, loaded, err("ERR missing arguments after PERSIST keyword in DAG command"));
            }
            let (keys, next) = match counted(argv, i, PERSIST_COUNT) {
                Ok(c) => c,
                Err(e) => return fail(dag, loaded, e),
            };
            if keys.iter().enumerate().any(|(j, k)| keys[..j].contains(k)) {
                return fail(dag, loaded, err("ERR PERSIST keys must be unique"));
            }
            if keys.len() as i64 != int_arg(&argv[i + 1]).unwrap_or(0) {
                return fail(
                    dag,
                    loaded,
                    err("ERR number of keys to PERSIST after DAG execution does not match the number of given arguments"),
                );
            }
            dag.persist = keys;
            i = next;
        } else if eq(a, "ROUTING") && !seen_routing {
            seen_routing = true;
            let Some(v) = argv.get(i + 1) else {
                return fail(dag, loaded, err("ERR Missing ROUTING value"));
            };
            dag.routing = Some(v.clone());
            i += 2;
        } else if eq(a, "TIMEOUT") && !seen_timeout {
            seen_timeout = true;
            let Some(v) = argv.get(i + 1) else {
                return fail(dag, loaded, err("ERR No value provided for TIMEOUT"));
            };
            match int_arg(v) {
                // (0 or less: no timeout, as RedisAI reads it.)
                Ok(t) => dag.timeout_ms = u64::try_from(t).ok().filter(|t| *t > 0),
                Err(_) => return fail(dag, loaded, err("ERR Invalid value for TIMEOUT")),
            }
            i += 2;
        } else {
            let e = format!("ERR Invalid DAG command. Unexpected argument:  {}", String::from_utf8_lossy(a));
            return fail(dag, loaded, Error::Verbatim(e));
        }
    }
    if !kind.deprecated() && !(seen_load || seen_persist || seen_routing) {
        return fail(
            dag,
            loaded,
            err("ERR AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of ROUTING, LOAD, PERSIST keywords"),
        );
    }
    if i >= argv.len() {
        return fail(dag, loaded, err("ERR DAG is empty"));
    }
    // The ops: each `|>` starts one, up to the next.
    let mut names = Names::default();
    for k in &dag.load {
        names.write(k);
    }
    let rest = &argv[i..];
    let starts: Vec<usize> = (0..rest.len()).filter(|j| rest[*j].as_ref() == b"|>").collect();
    for (n, start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(rest.len());
        match op(&rest[start + 1..end], kind, max_value_bytes) {
            Ok(op) => dag.ops.push(op),
            Err(e) => return Ok(Dag { fails: Some(e), ..dag }),
        }
    }
    // Dataflow: each input is the latest value of its name.
    let mut failed = None;
    for op in &mut dag.ops {
        if let Err(e) = names.resolve(op) {
            failed = Some(e);
            break;
        }
    }
    if failed.is_none() {
        for k in &dag.persist {
            match names.latest(k) {
                Some(v) => dag.persisted.push(v),
                None => {
                    failed = Some(err("ERR PERSIST key cannot be found in DAG"));
                    break;
                }
            }
        }
    }
    dag.values = names.count;
    dag.fails = failed;
    Ok(dag)
}

/// Tensor names to the value each holds now.
#[derive(Default)]
struct Names {
    latest: std::collections::HashMap<Bytes, usize>,
    count: usize,
}

impl Names {
    fn write(&mut self, name: &Bytes) -> usize {
        let v = self.count;
        self.count += 1;
        self.latest.insert(name.clone(), v);
        v
    }

    fn latest(&self, name: &Bytes) -> Option<usize> {
        self.latest.get(name).copied()
    }

    fn read(&self, name: &Bytes) -> Result<usize> {
        self.latest(name).ok_or_else(|| err("ERR INPUT key cannot be found in DAG"))
    }

    fn resolve(&mut self, op: &mut DagOp) -> Result<()> {
        match op {
            DagOp::TensorSet { name, output, .. } => {
                *output = self.write(name);
                Ok(())
            }
            DagOp::TensorGet { name, input, .. } => {
                *input = self.read(name)?;
                Ok(())
            }
            DagOp::Model { run, inputs, outputs } => {
                *inputs = run.inputs.iter().map(|k| self.read(k)).collect::<Result<_>>()?;
                *outputs = run.outputs.iter().map(|k| self.write(k)).collect();
                Ok(())
            }
            DagOp::Script { run, inputs, outputs } => {
                *inputs = run.inputs.iter().map(|k| self.read(k)).collect::<Result<_>>()?;
                *outputs = run.outputs.iter().map(|k| self.write(k)).collect();
                Ok(())
            }
        }
    }
}

/// Parses one op's tokens (without the `|>`).
fn op(tokens: &[Bytes], kind: DagKind, max_value_bytes: usize) -> Result<DagOp> {
    let unsupported = || err("Unsupported command within DAG");
    let Some(cmd) = tokens.first() else {
        return Err(unsupported());
    };
    let deprecated = kind.deprecated();
    match () {
        _ if eq(cmd, "AI.TENSORSET") => {
            if tokens.len() < 4 {
                return Err(err("wrong number of arguments for 'AI.TENSORSET' command"));
            }
            let tensor = Tensor::parse_set(&tokens[2..], max_value_bytes)?;
            Ok(DagOp::TensorSet { name: tokens[1].clone(), output: 0, tensor })
        }
        _ if eq(cmd, "AI.TENSORGET") => {
            if !(2..=4).contains(&tokens.len()) {
                return Err(err("wrong number of arguments for 'AI.TENSORGET' command"));
            }
            Ok(DagOp::TensorGet { name: tokens[1].clone(), input: 0, format: parse_get_format(&tokens[2..])? })
        }
        _ if eq(cmd, "AI.MODELEXECUTE") => {
            if deprecated {
                return Err(err("AI.MODELEXECUTE cannot be used in a deprecated AI.DAGRUN command"));
            }
            if tokens.len() < 8 {
                return Err(err("ERR wrong number of arguments for 'AI.MODELEXECUTE' command"));
            }
            let run = ModelRun::parse_in_dag(tokens, false);
            Ok(DagOp::Model { run, inputs: Vec::new(), outputs: Vec::new() })
        }
        _ if eq(cmd, "AI.MODELRUN") => {
            if !deprecated {
                return Err(err("Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command"));
            }
            if tokens.len() < 6 {
                return Err(err("ERR wrong number of arguments for 'AI.MODELRUN' command"));
            }
            let run = ModelRun::parse_in_dag(tokens, true);
            Ok(DagOp::Model { run, inputs: Vec::new(), outputs: Vec::new() })
        }
        _ if eq(cmd, "AI.SCRIPTEXECUTE") => {
            if deprecated {
                return Err(err("AI.SCRIPTEXECUTE cannot be used in a deprecated AI.DAGRUN command"));
            }
            if kind.read_only() {
                return Err(err("ERR AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG"));
            }
            if tokens.len() < 3 {
                return Err(err("ERR wrong number of arguments for 'AI.SCRIPTEXECUTE' command"));
            }
            let run = ScriptRun::parse_in_dag(tokens, false);
            Ok(DagOp::Script { run, inputs: Vec::new(), outputs: Vec::new() })
        }
        _ if eq(cmd, "AI.SCRIPTRUN") => {
            if !deprecated {
                return Err(err("Deprecated AI.SCRIPTRUN cannot be used in AI.DAGEXECUTE command"));
            }
            if tokens.len() < 3 {
                return Err(err("ERR wrong number of arguments for 'AI.SCRIPTRUN' command"));
            }
            let run = ScriptRun::parse_in_dag(tokens, true);
            Ok(DagOp::Script { run, inputs: Vec::new(), outputs: Vec::new() })
        }
        _ => Err(unsupported()),
    }
}
