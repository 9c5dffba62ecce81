//! Workloads: worker threads that talk to the router with redis-rs (a real
//! client) and record every operation.
//!
//! * `reg`: per-key registers with SET/GET of unique values;
//! * `tensor`: the same with AI.TENSORSET/AI.TENSORGET (INT64 scalars),
//!   half the reads as read-only DAGs (`AI.DAGEXECUTE_RO LOAD 1 k |>
//!   AI.TENSORGET k`, linearizable under `--dag-read-policy`);
//! * `set`: grow-only sets, one key per element under one hash tag (so a
//!   set lives on one shard), read atomically with MGET; half the adds
//!   inside MULTI … EXEC;
//! * `model`: AI.MODELSTORE of an ONNX model `Y = X + version` with
//!   monotonic versions, and AI.MODELEXECUTE on unique inputs: the output
//!   tells which version ran, and proves it came from this execution; a
//!   third of the runs as one read-only DAG (TENSORSET |> MODELEXECUTE |>
//!   TENSORGET), a third as the same three commands in MULTI … EXEC.
//!
//! Keys are retired after a bounded number of operations, as Jepsen does, so
//! every key's history stays small enough to check exhaustively.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::Value;

use crate::history::{Op, OpKind, Outcome, Recorder};

/// How long a client waits for a reply before it counts the operation as
/// unknown (the router's own retries end well before).
const OP_TIMEOUT: Duration = Duration::from_secs(8);
/// Register keys written and read at the same time, per workload.
const LIVE_KEYS: u64 = 6;
/// Operations a register key gets before it is retired.
const OPS_PER_KEY: u64 = 50;
/// Adds a set gets before it is retired.
const ADDS_PER_SET: u64 = 60;
/// Versions a model key gets before it is retired.
const VERSIONS_PER_MODEL: u64 = 25;
/// Models written at the same time.
const MODELS: u64 = 2;
/// Model outputs are `nonce * NONCE_SCALE + version`.
const NONCE_SCALE: f64 = 1_000_000.0;

/// What all workers share.
pub struct Shared {
    pub router: SocketAddr,
    pub rec: Recorder,
    pub stop: AtomicBool,
    /// Unique values for writes (and nonces for model inputs).
    values: AtomicU64,
    reg_ops: AtomicU64,
    tensor_ops: AtomicU64,
    set_ops: AtomicU64,
    /// Elements attempted per set generation.
    sets: Mutex<BTreeMap<u64, Vec<u64>>>,
    /// The generation each model writer is on.
    model_gen: Vec<AtomicU64>,
    /// Pause between a worker's operations.
    pub think: Duration,
}

impl Shared {
    pub fn new(router: SocketAddr, think: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            router,
            rec: Recorder::new(),
            stop: AtomicBool::new(false),
            values: AtomicU64::new(1),
            reg_ops: AtomicU64::new(0),
            tensor_ops: AtomicU64::new(0),
            set_ops: AtomicU64::new(0),
            sets: Mutex::new(BTreeMap::new()),
            model_gen: (0..MODELS).map(|_| AtomicU64::new(0)).collect(),
            think,
        })
    }

    fn unique(&self) -> u64 {
        self.values.fetch_add(1, Ordering::Relaxed)
    }
}

/// One redis-rs connection to the router, re-opened after a failure (a
/// late reply must never be taken for the next command's).
struct Client {
    addr: SocketAddr,
    con: Option<redis::Connection>,
}

impl Client {
    fn new(addr: SocketAddr) -> Client {
        Client { addr, con: None }
    }

    fn query(&mut self, cmd: &redis::Cmd) -> Result<Value, String> {
        if self.con.is_none() {
            let client = redis::Client::open(format!("redis://{}/", self.addr)).map_err(|e| e.to_string())?;
            let con =
                client.get_connection_with_timeout(Duration::from_secs(2)).map_err(|e| format!("connect: {e}"))?;
            con.set_read_timeout(Some(OP_TIMEOUT)).map_err(|e| e.to_string())?;
            con.set_write_timeout(Some(OP_TIMEOUT)).map_err(|e| e.to_string())?;
            self.con = Some(con);
        }
        let con = self.con.as_mut().expect("connected");
        match cmd.query::<Value>(con) {
            Ok(Value::ServerError(e)) => Err(format!("{e:?}")),
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.con = None;
                }
                Err(e.to_string())
            }
        }
    }

    /// `cmds` as one MULTI … EXEC: EXEC's reply. On any failure the
    /// connection is dropped, so no half-queued transaction outlives it.
    fn transaction(&mut self, cmds: &[redis::Cmd]) -> Result<Value, String> {
        let queued = |v: &Value| matches!(v, Value::SimpleString(s) if s == "QUEUED");
        let result = (|| {
            match self.query(&redis::cmd("MULTI"))? {
                Value::Okay => {}
                other => return Err(format!("MULTI answered {other:?}")),
            }
            for cmd in cmds {
                let v = self.query(cmd)?;
                if !queued(&v) {
                    return Err(format!("queueing answered {v:?}"));
                }
            }
            self.query(&redis::cmd("EXEC"))
        })();
        if result.is_err() {
            self.con = None;
        }
        result
    }
}

/// Runs `f` between two clock readings and records the operation.
fn record(
    sh: &Shared,
    workload: &str,
    worker: usize,
    key: String,
    f: impl FnOnce() -> Result<OpKind, (OpKind, String)>,
) -> Op {
    let call = sh.rec.now();
    let result = f();
    let ret = sh.rec.now();
    let (kind, outcome) = match result {
        Ok(k) => (k, Outcome::Ok),
        Err((k, e)) => (k, Outcome::Unknown(e)),
    };
    let op = Op { workload: workload.into(), worker, key, kind, call, ret, outcome };
    sh.rec.push(op.clone());
    op
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Array(a) if a.len() == 1 => as_u64(&a[0]),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Array(a) if a.len() == 1 => as_f64(&a[0]),
        _ => None,
    }
}

/// A write that answers `+OK`: `kind` when it did, unknown otherwise.
fn expect_ok(c: &mut Client, cmd: &redis::Cmd, kind: OpKind) -> Result<OpKind, (OpKind, String)> {
    match c.query(cmd) {
        Ok(Value::Okay) => Ok(kind),
        Ok(other) => Err((kind, format!("unexpected {other:?}"))),
        Err(e) => Err((kind, e)),
    }
}

/// GET of a register: nil is "no key".
fn get_read(c: &mut Client, key: &str) -> Result<OpKind, (OpKind, String)> {
    match c.query(redis::cmd("GET").arg(key)) {
        Ok(Value::Nil) => Ok(OpKind::Read(None)),
        Ok(v) => as_u64(&v).map(|n| OpKind::Read(Some(n))).ok_or((OpKind::Read(None), format!("unexpected {v:?}"))),
        Err(e) => Err((OpKind::Read(None), e)),
    }
}

fn register_key(rng: &mut StdRng, counter: &AtomicU64, prefix: &str) -> String {
    let i = counter.fetch_add(1, Ordering::Relaxed);
    let gen = i / (LIVE_KEYS * OPS_PER_KEY);
    format!("chaos:{prefix}:{gen}:{}", rng.random_range(0..LIVE_KEYS))
}

/// SET/GET register worker.
pub fn reg_worker(sh: Arc<Shared>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Client::new(sh.router);
    while !sh.stop.load(Ordering::Relaxed) {
        let key = register_key(&mut rng, &sh.reg_ops, "reg");
        if rng.random_bool(0.5) {
            let v = sh.unique();
            let cmd = redis::cmd("SET").arg(&key).arg(v).clone();
            record(&sh, "reg", worker, key, || expect_ok(&mut c, &cmd, OpKind::Write(v)));
        } else {
            let k = key.clone();
            record(&sh, "reg", worker, key, || get_read(&mut c, &k));
        }
        std::thread::sleep(sh.think);
    }
}

/// A read of tensor register `key`: AI.TENSORGET, or (`dag`) a read-only
/// DAG that LOADs it (its reply `[[value]]`).
fn tensor_read(c: &mut Client, key: &str, dag: bool) -> Result<OpKind, (OpKind, String)> {
    let cmd = match dag {
        false => redis::cmd("AI.TENSORGET").arg(key).arg("VALUES").clone(),
        true => redis::cmd("AI.DAGEXECUTE_RO").arg(&["LOAD", "1", key, "|>", "AI.TENSORGET", key, "VALUES"]).clone(),
    };
    match c.query(&cmd) {
        Ok(v) => match as_u64(&v) {
            Some(n) => Ok(OpKind::Read(Some(n))),
            None => Err((OpKind::Read(None), format!("unexpected {v:?}"))),
        },
        // RedisAI's answer for a missing tensor.
        Err(e) if e.contains("tensor key is empty") => Ok(OpKind::Read(None)),
        Err(e) => Err((OpKind::Read(None), e)),
    }
}

/// AI.TENSORSET/AI.TENSORGET register worker.
pub fn tensor_worker(sh: Arc<Shared>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Client::new(sh.router);
    while !sh.stop.load(Ordering::Relaxed) {
        let key = register_key(&mut rng, &sh.tensor_ops, "tensor");
        if rng.random_bool(0.5) {
            let v = sh.unique();
            let cmd = redis::cmd("AI.TENSORSET").arg(&key).arg("INT64").arg(1).arg("VALUES").arg(v).clone();
            record(&sh, "tensor", worker, key, || expect_ok(&mut c, &cmd, OpKind::Write(v)));
        } else {
            let (k, dag) = (key.clone(), rng.random_bool(0.5));
            record(&sh, "tensor", worker, key, || tensor_read(&mut c, &k, dag));
        }
        std::thread::sleep(sh.think);
    }
}

fn set_element_key(gen: u64, e: u64) -> String {
    format!("{{chaos:set:{gen}}}:e{e}")
}

fn set_key(gen: u64) -> String {
    format!("chaos:set:{gen}")
}

/// MGETs `asked` elements of set `gen`.
fn set_read(c: &mut Client, gen: u64, asked: Vec<u64>) -> Result<OpKind, (OpKind, String)> {
    let mut cmd = redis::cmd("MGET");
    for e in &asked {
        cmd.arg(set_element_key(gen, *e));
    }
    let empty = |asked: &[u64]| OpKind::SetRead { asked: asked.to_vec(), present: Vec::new() };
    match c.query(&cmd) {
        Ok(Value::Array(vals)) if vals.len() == asked.len() => {
            let present = asked.iter().zip(&vals).filter(|(_, v)| **v != Value::Nil).map(|(e, _)| *e).collect();
            Ok(OpKind::SetRead { asked, present })
        }
        Ok(other) => Err((empty(&asked), format!("unexpected {other:?}"))),
        Err(e) => Err((empty(&asked), e)),
    }
}

/// Grow-only set worker: adds unique elements and reads the whole set.
pub fn set_worker(sh: Arc<Shared>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Client::new(sh.router);
    while !sh.stop.load(Ordering::Relaxed) {
        if rng.random_bool(0.6) {
            let i = sh.set_ops.fetch_add(1, Ordering::Relaxed);
            let gen = i / ADDS_PER_SET;
            let e = sh.unique();
            sh.sets.lock().expect("sets").entry(gen).or_default().push(e);
            let cmd = redis::cmd("SET").arg(set_element_key(gen, e)).arg(1).clone();
            if rng.random_bool(0.5) {
                // Half the adds inside MULTI … EXEC (one log entry).
                record(&sh, "set", worker, set_key(gen), || match c.transaction(&[cmd]) {
                    Ok(Value::Array(r)) if r == [Value::Okay] => Ok(OpKind::Add(e)),
                    Ok(other) => Err((OpKind::Add(e), format!("EXEC answered {other:?}"))),
                    Err(err) => Err((OpKind::Add(e), err)),
                });
            } else {
                record(&sh, "set", worker, set_key(gen), || expect_ok(&mut c, &cmd, OpKind::Add(e)));
            }
        } else {
            let gen = sh.set_ops.load(Ordering::Relaxed) / ADDS_PER_SET;
            let asked = sh.sets.lock().expect("sets").get(&gen).cloned().unwrap_or_default();
            if !asked.is_empty() {
                record(&sh, "set", worker, set_key(gen), || set_read(&mut c, gen, asked));
            }
        }
        std::thread::sleep(sh.think);
    }
}

fn model_key(m: u64, gen: u64) -> (String, String) {
    let tag = format!("{{chaos:model:{m}:{gen}}}");
    (format!("{tag}model"), format!("chaos:model:{m}:{gen}"))
}

/// Stores versions 1, 2, 3, ... of model `m` (one writer per model, so
/// versions only grow), moving to a new key every few versions.
pub fn model_writer(sh: Arc<Shared>, m: u64, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Client::new(sh.router);
    let mut version = 0u64;
    while !sh.stop.load(Ordering::Relaxed) {
        version += 1;
        let gen = version / VERSIONS_PER_MODEL;
        sh.model_gen[m as usize].store(gen, Ordering::Relaxed);
        let (key, hist_key) = model_key(m, gen);
        let blob = tessera_tests::onnx::add_const(version as f64);
        let cmd = redis::cmd("AI.MODELSTORE")
            .arg(&key)
            .arg("ONNX")
            .arg("CPU")
            .arg("TAG")
            .arg(format!("v{version}"))
            .arg("BLOB")
            .arg(blob)
            .clone();
        record(&sh, "model", 1000 + m as usize, hist_key, || expect_ok(&mut c, &cmd, OpKind::Write(version)));
        std::thread::sleep(sh.think * 8 + Duration::from_millis(rng.random_range(0..50)));
    }
}

/// Runs the current model on a unique input; the output's version is a
/// read of the model register, timed by the AI.MODELEXECUTE call.
pub fn model_reader(sh: Arc<Shared>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = Client::new(sh.router);
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(sh.think);
        let m = rng.random_range(0..MODELS);
        let gen = sh.model_gen[m as usize].load(Ordering::Relaxed);
        let (key, hist_key) = model_key(m, gen);
        let tag = &key[..key.find('}').expect("tag") + 1];
        let (x, y) = (format!("{tag}x{worker}"), format!("{tag}y{worker}"));
        let nonce = sh.unique();
        let input = nonce as f64 * NONCE_SCALE;
        let way = rng.random_range(0..3);
        if way == 1 {
            // The same run inside MULTI … EXEC: the leader runs it and logs
            // its output as one entry that applies only if the model and
            // input it read are still what it read.
            let call = sh.rec.now();
            let ran = c.transaction(&[
                redis::cmd("AI.TENSORSET").arg(&x).arg("DOUBLE").arg(1).arg("VALUES").arg(input).clone(),
                redis::cmd("AI.MODELEXECUTE")
                    .arg(&key)
                    .arg("INPUTS")
                    .arg(1)
                    .arg(&x)
                    .arg("OUTPUTS")
                    .arg(1)
                    .arg(&y)
                    .clone(),
                redis::cmd("AI.TENSORGET").arg(&y).arg("VALUES").clone(),
            ]);
            let ret = sh.rec.now();
            let out = match &ran {
                Ok(Value::Array(r)) if r.len() == 3 && r[1] == Value::Okay => as_f64(&r[2]),
                _ => None,
            };
            if let Some(out) = out {
                sh.rec.push(model_read(worker, &hist_key, out - input, call, ret));
            }
            continue;
        }
        if way == 0 {
            // The same run as one read-only DAG: nothing is written, the
            // output comes back in the reply.
            let call = sh.rec.now();
            let dag = redis::cmd("AI.DAGEXECUTE_RO")
                .arg(&["ROUTING", tag, "|>", "AI.TENSORSET", "x", "DOUBLE", "1", "VALUES"])
                .arg(input)
                .arg(&["|>", "AI.MODELEXECUTE", &key, "INPUTS", "1", "x", "OUTPUTS", "1", "y", "|>"])
                .arg(&["AI.TENSORGET", "y", "VALUES"])
                .clone();
            let ran = c.query(&dag);
            let ret = sh.rec.now();
            // (An error reply, or an op's error inside it: the model may not
            // exist yet; a read that tells nothing.)
            let out = match &ran {
                Ok(Value::Array(ops)) if ops.len() == 3 => as_f64(&ops[2]),
                _ => None,
            };
            if let Some(out) = out {
                sh.rec.push(model_read(worker, &hist_key, out - input, call, ret));
            }
            continue;
        }
        if c.query(redis::cmd("AI.TENSORSET").arg(&x).arg("DOUBLE").arg(1).arg("VALUES").arg(input)).is_err() {
            continue;
        }
        let call = sh.rec.now();
        let ran =
            c.query(redis::cmd("AI.MODELEXECUTE").arg(&key).arg("INPUTS").arg(1).arg(&x).arg("OUTPUTS").arg(1).arg(&y));
        let ret = sh.rec.now();
        if ran.is_err() {
            // The model may not exist yet, or the run is unknown: a read
            // that tells nothing.
            continue;
        }
        // The output was written (through Raft) before the run was
        // acknowledged, and only this worker writes it.
        let Ok(out) = c.query(redis::cmd("AI.TENSORGET").arg(&y).arg("VALUES")) else { continue };
        let Some(out) = as_f64(&out) else { continue };
        sh.rec.push(model_read(worker, &hist_key, out - input, call, ret));
    }
}

/// A read of model register `key` that saw `version` (an output less its
/// input) between `call` and `ret`.
fn model_read(worker: usize, key: &str, version: f64, call: u64, ret: u64) -> Op {
    // An output from another run (or garbage) reads as a version that was
    // never written, which the checker reports.
    let seen = if version >= 0.0 && version.fract() == 0.0 && version < NONCE_SCALE {
        version as u64
    } else {
        crate::checker::FOREIGN
    };
    Op {
        workload: "model".into(),
        worker,
        key: key.to_owned(),
        kind: OpKind::Read(Some(seen)),
        call,
        ret,
        outcome: Outcome::Ok,
    }
}

/// After the final heal: reads every register key and set ever used, once,
/// as "final" operations (the lost-write check).
pub fn final_reads(sh: &Shared, history: &[Op]) -> usize {
    let mut c = Client::new(sh.router);
    let mut keys: Vec<(String, String)> = history
        .iter()
        .filter(|o| o.workload == "reg" || o.workload == "tensor")
        .map(|o| (o.workload.clone(), o.key.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut n = 0;
    for (workload, key) in keys {
        let k = key.clone();
        let kind = if workload == "reg" {
            record(sh, "final", 0, key, || get_read(&mut c, &k))
        } else {
            record(sh, "final", 0, key, || tensor_read(&mut c, &k, false))
        };
        n += usize::from(kind.ok());
    }
    let sets = sh.sets.lock().expect("sets").clone();
    for (gen, asked) in sets {
        let op = record(sh, "final", 0, set_key(gen), || set_read(&mut c, gen, asked));
        n += usize::from(op.ok());
    }
    n
}
