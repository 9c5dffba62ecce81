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

    /// Whether every value number is in range and each PERSIST key has
    /// its value (always so for a DAG [`parse_dag`] made; a shard checks a
    /// DAG from the wire before indexing with it).
    pub fn well_formed(&self) -> bool {
        if self.fails.is_some() {
            // (Only the LOAD keys are read before the error is answered.)
            return self.load.len() <= self.values;
        }
        let ok = |v: &usize| *v < self.values;
        let ops = self.ops.iter().all(|op| match op {
            DagOp::TensorSet { output, .. } => ok(output),
            DagOp::TensorGet { input, .. } => ok(input),
            DagOp::Model { inputs, outputs, .. } | DagOp::Script { inputs, outputs, .. } => {
                inputs.iter().all(ok) && outputs.iter().all(ok)
            }
        });
        let persisted = self.persisted.len() == self.persist.len() && self.persisted.iter().all(ok);
        self.load.len() <= self.values && ops && persisted
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
    let fail = |dag: Dag, loaded: bool, e: Error| {
        if loaded {
            Ok(Dag { values: dag.load.len(), fails: Some(e), ..dag })
        } else {
            Err(e)
        }
    };
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
    if !(kind.deprecated() || seen_load || seen_persist || seen_routing) {
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
            Err(e) => return Ok(Dag { values: dag.load.len(), fails: Some(e), ..dag }),
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

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::*;

    fn dag(s: &str) -> Result<Dag> {
        let a = argv(s);
        let kind = match a[0].to_ascii_uppercase().as_slice() {
            b"AI.DAGEXECUTE" => DagKind::Execute,
            b"AI.DAGEXECUTE_RO" => DagKind::ExecuteRo,
            b"AI.DAGRUN" => DagKind::Run,
            _ => DagKind::RunRo,
        };
        parse_dag(&a, kind, 1 << 20)
    }

    /// The error the router answers (`Err`) or the shard (`fails`).
    fn error(s: &str) -> String {
        match dag(s) {
            Err(e) => format!("router: {e}"),
            Ok(d) => format!("shard: {}", d.fails.map(|e| e.to_string()).unwrap_or_default()),
        }
    }

    #[test]
    fn values_are_versioned_and_the_last_is_persisted() {
        let d = dag("AI.DAGEXECUTE LOAD 1 a{t} PERSIST 1 c{t} |> AI.TENSORSET b FLOAT 1 VALUES 2 \
                     |> AI.MODELEXECUTE m{t} INPUTS 2 a{t} b OUTPUTS 1 c{t} \
                     |> AI.MODELEXECUTE m{t} INPUTS 2 c{t} b OUTPUTS 1 c{t} |> AI.TENSORGET c{t} VALUES")
        .unwrap();
        assert_eq!(d.fails, None);
        // a = 0 (LOAD), b = 1, c = 2 then 3.
        assert_eq!(d.values, 4);
        match (&d.ops[1], &d.ops[2], &d.ops[3]) {
            (
                DagOp::Model { inputs: i1, outputs: o1, .. },
                DagOp::Model { inputs: i2, outputs: o2, .. },
                DagOp::TensorGet { input, .. },
            ) => {
                assert_eq!((i1.as_slice(), o1.as_slice()), (&[0, 1][..], &[2][..]));
                assert_eq!((i2.as_slice(), o2.as_slice()), (&[2, 1][..], &[3][..]));
                assert_eq!(*input, 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.persisted, vec![3]);
        assert!(d.writes());
        assert_eq!(d.keys().map(|k| &k[..]).collect::<Vec<_>>(), [&b"a{t}"[..], b"c{t}", b"m{t}", b"m{t}"]);
        let ro = dag("AI.DAGEXECUTE_RO ROUTING {t} |> AI.TENSORSET x FLOAT 1 VALUES 1 |> AI.TENSORGET x").unwrap();
        assert!(!ro.writes() && ro.fails.is_none());
        assert!(d.well_formed() && ro.well_formed());
        // What a shard refuses to index with.
        assert!(!Dag { values: 3, ..d.clone() }.well_formed());
        assert!(!Dag { persisted: vec![], ..d.clone() }.well_formed());
        // A DAG that failed after its LOAD keys still reads them.
        let failed = dag("AI.DAGEXECUTE LOAD 2 a b |> AI.TENSORGET a |>").unwrap();
        assert!(failed.fails.is_some() && failed.well_formed());
    }

    #[test]
    fn errors_in_redisais_words_and_order() {
        let cases = [
            ("AI.DAGEXECUTE LOAD 1 a |>", "router: ERR missing arguments for 'AI.DAGEXECUTE' command"),
            ("AI.DAGRUN_RO |> x", "router: ERR wrong number of arguments for 'AI.DAGRUN_RO' command"),
            ("AI.DAGEXECUTE LOAD x a |> AI.TENSORGET a", "router: ERR invalid or negative value found in number of keys to LOAD"),
            ("AI.DAGEXECUTE LOAD -1 a |> AI.TENSORGET a", "router: ERR invalid or negative value found in number of keys to LOAD"),
            // LOAD's keys are read before the count is found short.
            ("AI.DAGEXECUTE LOAD 2 a |> AI.TENSORGET a", "shard: ERR number of keys to LOAD into DAG does not match the number of given arguments"),
            ("AI.DAGEXECUTE PERSIST 2 a a |> AI.TENSORGET a", "router: ERR PERSIST keys must be unique"),
            ("AI.DAGEXECUTE PERSIST 3 a b |> AI.TENSORGET a", "router: ERR number of keys to PERSIST after DAG execution does not match the number of given arguments"),
            ("AI.DAGEXECUTE_RO PERSIST 1 a |> AI.TENSORGET a", "router: ERR PERSIST cannot be specified in a read-only DAG"),
            ("AI.DAGEXECUTE_RO LOAD 1 a PERSIST 1 a |> AI.TENSORGET a", "shard: ERR PERSIST cannot be specified in a read-only DAG"),
            ("AI.DAGEXECUTE TIMEOUT 5 |> AI.TENSORGET a x", "router: ERR AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of ROUTING, LOAD, PERSIST keywords"),
            ("AI.DAGEXECUTE ROUTING a TIMEOUT x |> AI.TENSORGET a", "router: ERR Invalid value for TIMEOUT"),
            ("AI.DAGEXECUTE ROUTING a ROUTING b |> AI.TENSORGET a", "router: ERR Invalid DAG command. Unexpected argument:  ROUTING"),
            ("AI.DAGEXECUTE ROUTING a FOO b c d", "router: ERR Invalid DAG command. Unexpected argument:  FOO"),
            ("AI.DAGEXECUTE ROUTING a TIMEOUT 5 x", "router: ERR Invalid DAG command. Unexpected argument:  x"),
            ("AI.DAGEXECUTE ROUTING a TIMEOUT 5 LOAD 0", "router: ERR missing arguments after LOAD keyword in DAG command"),
            ("AI.DAGEXECUTE LOAD 1 a ROUTING b TIMEOUT 5", "shard: ERR DAG is empty"),
            ("AI.DAGEXECUTE ROUTING a |> AI.TENSORGET a", "shard: ERR INPUT key cannot be found in DAG"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET a |>", "shard: Unsupported command within DAG"),
            ("AI.DAGEXECUTE LOAD 1 a |> SET a b", "shard: Unsupported command within DAG"),
            ("AI.DAGEXECUTE LOAD 1 a ROUTING a |> AI.TENSORGET", "shard: wrong number of arguments for 'AI.TENSORGET' command"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORSET b FLOAT", "shard: wrong number of arguments for 'AI.TENSORSET' command"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORSET b FLOAT 1 VALUES x", "shard: ERR invalid value"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.TENSORGET a FOO", "shard: ERR unsupported data format"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.MODELRUN m INPUTS a OUTPUTS b", "shard: Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTRUN s f INPUTS a OUTPUTS b", "shard: Deprecated AI.SCRIPTRUN cannot be used in AI.DAGEXECUTE command"),
            ("AI.DAGRUN LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b", "shard: AI.MODELEXECUTE cannot be used in a deprecated AI.DAGRUN command"),
            ("AI.DAGRUN LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a", "shard: AI.SCRIPTEXECUTE cannot be used in a deprecated AI.DAGRUN command"),
            ("AI.DAGEXECUTE_RO LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a", "shard: ERR AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG"),
            ("AI.DAGEXECUTE PERSIST 1 z |> AI.TENSORSET a FLOAT 1 VALUES 1", "shard: ERR PERSIST key cannot be found in DAG"),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS", "shard: ERR wrong number of arguments for 'AI.MODELEXECUTE' command"),
        ];
        for (cmd, want) in cases {
            assert_eq!(error(cmd), want, "{cmd}");
        }
        // Errors an op's own parse finds wait for its model (the shard
        // looks it up first); TIMEOUT belongs to the DAG.
        let d = dag("AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 5").unwrap();
        match &d.ops[0] {
            DagOp::Model { run, .. } => {
                assert_eq!(run.check(1, 1).unwrap_err().to_string(), "ERR TIMEOUT not allowed within a DAG command")
            }
            other => panic!("{other:?}"),
        }
        let d = dag("AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a TIMEOUT 5").unwrap();
        match &d.ops[0] {
            DagOp::Script { run, .. } => {
                assert_eq!(run.fails.as_ref().unwrap().to_string(), "ERR TIMEOUT not allowed within a DAG command")
            }
            other => panic!("{other:?}"),
        }
        // Wrong in two ways at once: the whole op is read (and its counts
        // checked against the model) before TIMEOUT is refused in a DAG.
        let model_op = |cmd: &str, n_in: usize| match &dag(cmd).unwrap().ops[0] {
            DagOp::Model { run, .. } => run.check(n_in, 1).unwrap_err().to_string(),
            other => panic!("{other:?}"),
        };
        let script_op = |cmd: &str| match &dag(cmd).unwrap().ops[0] {
            DagOp::Script { run, .. } => run.fails.as_ref().map(|e| e.to_string()),
            other => panic!("{other:?}"),
        };
        let two_wrongs = [
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT",
                "ERR No value provided for TIMEOUT",
            ),
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 0",
                "ERR Invalid value for TIMEOUT",
            ),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 b TIMEOUT 5 x", "Invalid argument: x"),
        ];
        for (cmd, want) in two_wrongs {
            assert_eq!(model_op(cmd, 1), want, "{cmd}");
        }
        assert_eq!(
            model_op("AI.DAGEXECUTE LOAD 1 a |> AI.MODELEXECUTE m INPUTS 2 a a OUTPUTS 1 b TIMEOUT 5", 1),
            "Number of keys given as INPUTS here does not match model definition"
        );
        let dagrun = [
            (
                "AI.DAGRUN LOAD 1 a |> AI.MODELRUN m TIMEOUT 5 INPUTS a a OUTPUTS b",
                "Number of keys given as INPUTS here does not match model definition",
            ),
            ("AI.DAGRUN LOAD 1 a |> AI.MODELRUN m TIMEOUT 0 INPUTS a OUTPUTS b", "ERR Invalid value for TIMEOUT"),
            (
                "AI.DAGRUN LOAD 1 a |> AI.MODELRUN m TIMEOUT 5 INPUTS a OUTPUTS b",
                "ERR TIMEOUT not allowed within a DAG command",
            ),
        ];
        for (cmd, want) in dagrun {
            assert_eq!(model_op(cmd, 1), want, "{cmd}");
        }
        let scripts = [
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a TIMEOUT",
                Some("ERR No value provided for TIMEOUT in AI.SCRIPTEXECUTE"),
            ),
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a TIMEOUT 0",
                Some("ERR Invalid value for TIMEOUT"),
            ),
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f INPUTS 1 a TIMEOUT 5 x",
                Some("ERR Encountered problem parsing AI.SCRIPTEXECUTE"),
            ),
            // KEYS or INPUTS first is the stand-alone command's rule only.
            (
                "AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f OUTPUTS 1 b FOO",
                Some("ERR Invalid AI.SCRIPTEXECUTE command. Unexpected argument: FOO"),
            ),
            ("AI.DAGEXECUTE LOAD 1 a |> AI.SCRIPTEXECUTE s f ARGS 1 x INPUTS 1 a OUTPUTS 1 b", None),
            (
                "AI.DAGRUN LOAD 1 a |> AI.SCRIPTRUN s f TIMEOUT 5 INPUTS a INPUTS b",
                Some("ERR Already encountered an INPUTS keyword in SCRIPTRUN"),
            ),
            ("AI.DAGRUN LOAD 1 a |> AI.SCRIPTRUN s f TIMEOUT 0 INPUTS a", Some("ERR Invalid value for TIMEOUT")),
            (
                "AI.DAGRUN LOAD 1 a |> AI.SCRIPTRUN s f TIMEOUT 1 TIMEOUT 2",
                Some("ERR Already encountered an TIMEOUT section in SCRIPTRUN"),
            ),
            (
                "AI.DAGRUN LOAD 1 a |> AI.SCRIPTRUN s f TIMEOUT 1 INPUTS a",
                Some("ERR TIMEOUT not allowed within a DAG command"),
            ),
        ];
        for (cmd, want) in scripts {
            assert_eq!(script_op(cmd).as_deref(), want, "{cmd}");
        }
        // 0 or less: no timeout.
        assert_eq!(
            dag("AI.DAGEXECUTE ROUTING a TIMEOUT -5 |> AI.TENSORSET x FLOAT 1 VALUES 1").unwrap().timeout_ms,
            None
        );
        // A DAGRUN needs none of LOAD / PERSIST / ROUTING.
        let d = dag("AI.DAGRUN |> AI.TENSORSET x FLOAT 1 VALUES 1 |> AI.TENSORGET x VALUES").unwrap();
        assert!(d.fails.is_none() && d.keys().next().is_none());
    }
}
