//! RedisAI models as commands see them: backend and device names, the
//! stored definition, and the argument rules of AI.MODELSTORE/MODELSET
//! (parsed where no state is needed: the router) and AI.MODELEXECUTE/
//! MODELRUN (parsed on the node, which knows the model's input and output
//! counts and must report a missing model first).

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::error::{Error, Result};

/// The four RedisAI backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BackendKind {
    Tf,
    TfLite,
    Torch,
    Onnx,
}

impl BackendKind {
    pub const ALL: [BackendKind; 4] = [BackendKind::Tf, BackendKind::TfLite, BackendKind::Torch, BackendKind::Onnx];

    /// Case-insensitive, as RedisAI.
    pub fn parse(s: &[u8]) -> Option<BackendKind> {
        Self::ALL.into_iter().find(|k| s.eq_ignore_ascii_case(k.name().as_bytes()))
    }

    /// The canonical (reply) spelling.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tf => "TF",
            BackendKind::TfLite => "TFLITE",
            BackendKind::Torch => "TORCH",
            BackendKind::Onnx => "ONNX",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Device {
    /// `CPU`, or `CPU:<n>` (runs on the CPU, on a run queue of its own).
    Cpu(Option<u32>),
    /// `GPU` (the default GPU) or `GPU:<n>`.
    Gpu(Option<u32>),
    /// `TPU`: accepted by name only, so its error can say it is unsupported.
    Tpu,
}

impl Device {
    /// RedisAI's MODELSTORE rule: `CPU`, `GPU`, or either followed by `:`
    /// and digits, under 10 characters in all; case-insensitive.
    pub fn parse(s: &[u8]) -> Option<Device> {
        if s.len() >= 10 {
            return None;
        }
        let upper = s.to_ascii_uppercase();
        if upper == b"TPU" {
            return Some(Device::Tpu);
        }
        let (kind, rest) = upper.split_at(upper.len().min(3));
        let index = match rest {
            [] => None,
            [b':', digits @ ..] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
                Some(std::str::from_utf8(digits).ok()?.parse().ok()?)
            }
            _ => return None,
        };
        match kind {
            b"CPU" => Some(Device::Cpu(index)),
            b"GPU" => Some(Device::Gpu(index)),
            _ => None,
        }
    }

    pub fn is_gpu(self) -> bool {
        matches!(self, Device::Gpu(_))
    }

    /// The run queue's name: the device upper-cased (`CPU`, `CPU:1`, `GPU:0`).
    pub fn queue_name(self) -> String {
        match self {
            Device::Cpu(None) => "CPU".into(),
            Device::Cpu(Some(n)) => format!("CPU:{n}"),
            Device::Gpu(None) => "GPU".into(),
            Device::Gpu(Some(n)) => format!("GPU:{n}"),
            Device::Tpu => "TPU".into(),
        }
    }
}

/// A model as stored: what MODELGET returns and what a replica loads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDef {
    pub backend: BackendKind,
    /// The device string exactly as the client gave it (MODELGET echoes it).
    pub device_name: String,
    pub device: Device,
    pub tag: Bytes,
    pub batchsize: u64,
    pub minbatchsize: u64,
    pub minbatchtimeout: u64,
    /// TF only: the graph nodes bound to INPUTS/OUTPUTS.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The uploaded bytes (BLOB chunks joined), returned byte-identical.
    /// Decoded as a slice of its buffer inside a [`crate::shared::scope`].
    pub blob: Blob,
}

fn err(s: &str) -> Error {
    Error::ai(s)
}

/// An unsigned ArgsCursor number: integers, or doubles with no fraction
/// (`3.0`), as RedisAI accepts.
fn unsigned(b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let f: f64 = s.parse().ok()?;
    (f >= 0.0 && f.fract() == 0.0 && f < 1.8e19).then_some(f as u64)
}

fn eq(a: &[u8], b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

fn join_blob(chunks: &[Bytes]) -> Blob {
    match chunks {
        [one] => one.clone().into(),
        many => {
            let mut v = Vec::with_capacity(many.iter().map(|c| c.len()).sum());
            for c in many {
                v.extend_from_slice(c);
            }
            v.into()
        }
    }
}

fn names(args: &[Bytes]) -> Vec<String> {
    args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// `AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n [MINBATCHSIZE m
/// [MINBATCHTIMEOUT t]]] [INPUTS n .. OUTPUTS n ..] BLOB chunk..`, with
/// RedisAI 1.2.7's order of checks and messages. `argv[0]` is the command.
pub fn parse_modelstore(argv: &[Bytes]) -> Result<ModelDef> {
    if argv.len() < 6 {
        return Err(Error::Arity(crate::command::arity_name(&argv[0])));
    }
    let backend = BackendKind::parse(&argv[2]).ok_or_else(|| err("ERR unsupported backend"))?;
    let device = Device::parse(&argv[3]).ok_or_else(|| err("ERR Invalid DEVICE"))?;
    let mut i = 4;
    let at = |i: usize, w: &str| argv.get(i).is_some_and(|a| eq(a, w));
    let mut tag = Bytes::new();
    if at(i, "TAG") {
        tag = argv.get(i + 1).cloned().ok_or_else(|| err("ERR Insufficient arguments, missing model BLOB"))?;
        i += 2;
    }
    let (mut batchsize, mut minbatchsize, mut minbatchtimeout) = (0, 0, 0);
    if at(i, "BATCHSIZE") {
        batchsize =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for BATCHSIZE"))?;
        i += 2;
        if at(i, "MINBATCHSIZE") {
            minbatchsize = argv
                .get(i + 1)
                .and_then(|a| unsigned(a))
                .ok_or_else(|| err("ERR Invalid argument for MINBATCHSIZE"))?;
            i += 2;
            if at(i, "MINBATCHTIMEOUT") {
                minbatchtimeout = argv
                    .get(i + 1)
                    .and_then(|a| unsigned(a))
                    .ok_or_else(|| err("ERR Invalid argument for MINBATCHTIMEOUT"))?;
                i += 2;
            }
        }
    }
    if batchsize == 0 && minbatchsize > 0 {
        return Err(err("ERR MINBATCHSIZE specified without BATCHSIZE"));
    }
    if minbatchsize == 0 && minbatchtimeout > 0 {
        return Err(err("ERR MINBATCHTIMEOUT specified without MINBATCHSIZE"));
    }
    if i >= argv.len() {
        return Err(err("ERR Insufficient arguments, missing model BLOB"));
    }
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    if backend == BackendKind::Tf {
        if !at(i, "INPUTS") {
            return Err(err("ERR INPUTS not specified for TF"));
        }
        let n = argv.get(i + 1).and_then(|a| unsigned(a)).filter(|n| *n > 0);
        let n = n.ok_or_else(|| err("ERR Invalid argument for input_count"))? as usize;
        let start = i + 2;
        if argv.len() < start.saturating_add(n) {
            return Err(err("ERR number of model inputs does not match the number of given arguments"));
        }
        inputs = names(&argv[start..start + n]);
        i = start + n;
        if !at(i, "OUTPUTS") {
            return Err(err("ERR OUTPUTS not specified for TF"));
        }
        let n = argv.get(i + 1).and_then(|a| unsigned(a)).filter(|n| *n > 0);
        let n = n.ok_or_else(|| err("ERR Invalid argument for output_count"))? as usize;
        let start = i + 2;
        if argv.len() < start.saturating_add(n) {
            return Err(err("ERR number of model outputs does not match the number of given arguments"));
        }
        outputs = names(&argv[start..start + n]);
        i = start + n;
    } else if at(i, "INPUTS") {
        return Err(err("ERR INPUTS argument should not be specified for this backend"));
    }
    if !at(i, "BLOB") {
        return Err(err("ERR Invalid argument, expected BLOB"));
    }
    let chunks = &argv[i + 1..];
    if chunks.is_empty() {
        return Err(err("ERR Insufficient arguments, missing model BLOB"));
    }
    Ok(ModelDef {
        backend,
        device_name: String::from_utf8_lossy(&argv[3]).into_owned(),
        device,
        tag,
        batchsize,
        minbatchsize,
        minbatchtimeout,
        inputs,
        outputs,
        blob: join_blob(chunks),
    })
}

const KEYWORDS: [&str; 7] = ["INPUTS", "OUTPUTS", "TAG", "BATCHSIZE", "MINBATCHSIZE", "MINBATCHTIMEOUT", "BLOB"];

/// Deprecated `AI.MODELSET key backend device [TAG t] [BATCHSIZE n
/// [MINBATCHSIZE m [MINBATCHTIMEOUT t]]] [INPUTS name.. OUTPUTS name..] BLOB
/// chunk..` (names without counts).
pub fn parse_modelset(argv: &[Bytes]) -> Result<ModelDef> {
    if argv.len() < 4 {
        return Err(Error::Arity(crate::command::arity_name(&argv[0])));
    }
    let backend = BackendKind::parse(&argv[2]).ok_or_else(|| err("ERR unsupported backend"))?;
    let dev = &argv[3];
    if dev.len() > 10 || KEYWORDS.iter().any(|k| eq(dev, k)) {
        return Err(err("ERR Invalid DEVICE"));
    }
    let device = Device::parse(dev).ok_or_else(|| err("ERR Invalid DEVICE"))?;
    let mut i = 4;
    let at = |i: usize, w: &str| argv.get(i).is_some_and(|a| eq(a, w));
    let mut tag = Bytes::new();
    if at(i, "TAG") {
        tag = argv.get(i + 1).cloned().ok_or_else(|| err("ERR Insufficient arguments, missing model BLOB"))?;
        i += 2;
    }
    let (mut batchsize, mut minbatchsize, mut minbatchtimeout) = (0, 0, 0);
    if at(i, "BATCHSIZE") {
        if backend == BackendKind::TfLite {
            return Err(err("ERR Auto-batching not supported by the TFLITE backend"));
        }
        batchsize =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for BATCHSIZE"))?;
        i += 2;
    }
    if at(i, "MINBATCHSIZE") {
        if batchsize == 0 {
            return Err(err("ERR MINBATCHSIZE specified without BATCHSIZE"));
        }
        minbatchsize =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for MINBATCHSIZE"))?;
        i += 2;
    }
    if at(i, "MINBATCHTIMEOUT") {
        if batchsize == 0 {
            return Err(err("ERR MINBATCHTIMEOUT specified without BATCHSIZE"));
        }
        if minbatchsize == 0 {
            return Err(err("ERR MINBATCHTIMEOUT specified without MINBATCHSIZE"));
        }
        minbatchtimeout =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for MINBATCHTIMEOUT"))?;
        i += 2;
    }
    let blob_at = argv[i..].iter().position(|a| eq(a, "BLOB")).map(|p| p + i);
    let Some(blob_at) = blob_at.filter(|b| b + 1 < argv.len()) else {
        return Err(err("ERR Insufficient arguments, missing model BLOB"));
    };
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    if backend == BackendKind::Tf {
        let io = &argv[i..blob_at];
        if io.is_empty() {
            return Err(err("ERR Insufficient arguments, INPUTS and OUTPUTS not specified"));
        }
        if !eq(&io[0], "INPUTS") {
            return Err(err("ERR INPUTS not specified"));
        }
        let out_at = io.iter().position(|a| eq(a, "OUTPUTS")).ok_or_else(|| err("ERR OUTPUTS not specified"))?;
        inputs = names(&io[1..out_at]);
        outputs = names(&io[out_at + 1..]);
    }
    Ok(ModelDef {
        backend,
        device_name: String::from_utf8_lossy(dev).into_owned(),
        device,
        tag,
        batchsize,
        minbatchsize,
        minbatchtimeout,
        inputs,
        outputs,
        blob: join_blob(&argv[blob_at + 1..]),
    })
}

/// A parsed AI.MODELEXECUTE / AI.MODELRUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecArgs {
    pub inputs: Vec<Bytes>,
    pub outputs: Vec<Bytes>,
    /// Milliseconds from queueing after which a run that has not started
    /// answers TIMEDOUT.
    pub timeout_ms: Option<u64>,
}

fn count(b: Option<&Bytes>, invalid: &str, nonpositive: &str) -> Result<usize> {
    let b = b.ok_or_else(|| err(invalid))?;
    let v = crate::command::int_arg(b).map_err(|_| err(invalid))?;
    if v <= 0 {
        return Err(err(nonpositive));
    }
    Ok(v as usize)
}

fn timeout(b: Option<&Bytes>) -> Result<u64> {
    let b = b.ok_or_else(|| err("ERR No value provided for TIMEOUT"))?;
    crate::command::int_arg(b)
        .ok()
        .filter(|t| *t > 0)
        .map(|t| t as u64)
        .ok_or_else(|| err("ERR Invalid value for TIMEOUT"))
}

#[derive(Clone, Copy)]
enum Section {
    Inputs,
    Outputs,
}

/// One `INPUTS n k..` / `OUTPUTS n k..` section of MODELEXECUTE starting at
/// `i`, checked against the model's `expected` count: its keys and the
/// index after it.
fn exec_section(argv: &[Bytes], i: usize, section: Section, expected: usize) -> Result<(Vec<Bytes>, usize)> {
    let (word, lower, upper) = match section {
        Section::Inputs => ("INPUTS", "input", "Input"),
        Section::Outputs => ("OUTPUTS", "output", "Output"),
    };
    if !argv.get(i).is_some_and(|a| eq(a, word)) {
        return Err(Error::Verbatim(format!("ERR {word} not specified")));
    }
    let n = count(
        argv.get(i + 1),
        &format!("ERR Invalid argument for {lower}_count"),
        &format!("ERR {upper} count must be a positive integer"),
    )?;
    if n != expected {
        return Err(Error::Verbatim(format!("Number of keys given as {word} here does not match model definition")));
    }
    let start = i + 2;
    if argv.len() < start + n {
        return Err(Error::Verbatim(format!(
            "ERR number of {lower} keys to AI.MODELEXECUTE command does not match the number of given arguments"
        )));
    }
    Ok((argv[start..start + n].to_vec(), start + n))
}

/// `AI.MODELEXECUTE key INPUTS n .. OUTPUTS m .. [TIMEOUT t]` against a
/// model with `n_in` inputs and `n_out` outputs (argv[0] is the command).
pub fn parse_modelexecute(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    let (inputs, i) = exec_section(argv, 2, Section::Inputs, n_in)?;
    let (outputs, i) = exec_section(argv, i, Section::Outputs, n_out)?;
    let mut timeout_ms = None;
    if let Some(tok) = argv.get(i) {
        if !eq(tok, "TIMEOUT") {
            return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(tok))));
        }
        timeout_ms = Some(timeout(argv.get(i + 1))?);
        if let Some(extra) = argv.get(i + 2) {
            return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(extra))));
        }
    }
    Ok(ExecArgs { inputs, outputs, timeout_ms })
}

/// Deprecated `AI.MODELRUN key [TIMEOUT t] INPUTS k.. OUTPUTS k..`.
pub fn parse_modelrun(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    let mut i = 2;
    let mut timeout_ms = None;
    if argv.get(i).is_some_and(|a| eq(a, "TIMEOUT")) {
        timeout_ms = Some(timeout(argv.get(i + 1)).map_err(|_| err("ERR Invalid value for TIMEOUT"))?);
        i += 2;
    }
    if !argv.get(i).is_some_and(|a| eq(a, "INPUTS")) {
        return Err(err("ERR INPUTS not specified"));
    }
    let rest = &argv[i + 1..];
    let out_at = rest.iter().position(|a| eq(a, "OUTPUTS")).unwrap_or(rest.len());
    let inputs = rest[..out_at].to_vec();
    let outputs = rest.get(out_at + 1..).unwrap_or_default().to_vec();
    if inputs.len() != n_in {
        return Err(err("Number of keys given as INPUTS here does not match model definition"));
    }
    if outputs.len() != n_out {
        return Err(err("Number of keys given as OUTPUTS here does not match model definition"));
    }
    Ok(ExecArgs { inputs, outputs, timeout_ms })
}

/// An AI.CONFIG setting. RedisAI takes THREADS_PER_QUEUE, the parallelism
/// settings and MODEL_EXECUTION_TIMEOUT only at module load; here they can
/// be changed at run time too (they apply to models stored afterwards, and
/// to new run queues).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiConfig {
    BackendsPath(String),
    LoadBackend(BackendKind, String),
    ModelChunkSize(u64),
    ThreadsPerQueue(u64),
    IntraOpParallelism(u64),
    InterOpParallelism(u64),
    ModelExecutionTimeout(u64),
    /// `GET <name>` (upper-cased).
    Get(String),
}

impl AiConfig {
    /// Whether this changes the nodes (sent to every node) or reads one.
    pub fn is_get(&self) -> bool {
        matches!(self, AiConfig::Get(_))
    }
}

/// `AI.CONFIG <sub> ...` (argv[0] is the command).
pub fn parse_ai_config(argv: &[Bytes]) -> Result<AiConfig> {
    let arity = || Error::Arity(crate::command::arity_name(&argv[0]));
    let sub = argv.get(1).ok_or_else(arity)?;
    let value = argv.get(2);
    let number = |name: &str, min: u64| -> Result<u64> {
        let v = value.ok_or_else(|| Error::Verbatim(format!("ERR {name}: missing value")))?;
        crate::command::int_arg(v)
            .ok()
            .filter(|n| *n >= min as i64)
            .map(|n| n as u64)
            .ok_or_else(|| Error::Verbatim(format!("ERR {name}: invalid value")))
    };
    Ok(if eq(sub, "LOADBACKEND") {
        if argv.len() < 4 {
            return Err(arity());
        }
        let kind = BackendKind::parse(&argv[2]).ok_or_else(|| err("ERR unsupported backend"))?;
        AiConfig::LoadBackend(kind, String::from_utf8_lossy(&argv[3]).into_owned())
    } else if eq(sub, "BACKENDSPATH") {
        let v = value.ok_or_else(|| err("ERR BACKENDSPATH: missing path argument"))?;
        AiConfig::BackendsPath(String::from_utf8_lossy(v).into_owned())
    } else if eq(sub, "MODEL_CHUNK_SIZE") {
        let v = value.ok_or_else(|| err("ERR MODEL_CHUNK_SIZE: missing chunk size"))?;
        let n = crate::command::int_arg(v).ok().filter(|n| *n > 0);
        AiConfig::ModelChunkSize(n.ok_or_else(|| err("ERR MODEL_CHUNK_SIZE: invalid chunk size"))? as u64)
    } else if eq(sub, "THREADS_PER_QUEUE") {
        AiConfig::ThreadsPerQueue(number("THREADS_PER_QUEUE", 1)?)
    } else if eq(sub, "INTRA_OP_PARALLELISM") {
        AiConfig::IntraOpParallelism(number("INTRA_OP_PARALLELISM", 0)?)
    } else if eq(sub, "INTER_OP_PARALLELISM") {
        AiConfig::InterOpParallelism(number("INTER_OP_PARALLELISM", 0)?)
    } else if eq(sub, "MODEL_EXECUTION_TIMEOUT") {
        AiConfig::ModelExecutionTimeout(number("MODEL_EXECUTION_TIMEOUT", 1000)?)
    } else if eq(sub, "GET") {
        let v = value.ok_or_else(arity)?;
        AiConfig::Get(String::from_utf8_lossy(v).to_ascii_uppercase())
    } else {
        return Err(err("ERR unsupported subcommand"));
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn store(s: &str) -> std::result::Result<ModelDef, String> {
        parse_modelstore(&argv(s)).map_err(|e| e.to_string())
    }

    #[test]
    fn modelstore_checks_in_redisai_order() {
        let m =
            store("AI.MODELSTORE m ONNX cpu TAG v1 BATCHSIZE 4 MINBATCHSIZE 2 MINBATCHTIMEOUT 3.0 BLOB a b").unwrap();
        assert_eq!((m.backend, m.device_name.as_str(), &m.tag[..]), (BackendKind::Onnx, "cpu", &b"v1"[..]));
        assert_eq!((m.batchsize, m.minbatchsize, m.minbatchtimeout), (4, 2, 3));
        assert_eq!(m.blob, b"ab"[..]);
        assert_eq!(store("AI.MODELSTORE m XX CPU BLOB a").unwrap_err(), "ERR unsupported backend");
        for dev in ["bad_device", "CPU::", "CPU:1.8", "CPU:123456"] {
            assert_eq!(store(&format!("AI.MODELSTORE m ONNX {dev} BLOB a")).unwrap_err(), "ERR Invalid DEVICE");
        }
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU BATCHSIZE -1 BLOB").unwrap_err(),
            "ERR Invalid argument for BATCHSIZE"
        );
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU BATCHSIZE 2 MINBATCHSIZE x BLOB a").unwrap_err(),
            "ERR Invalid argument for MINBATCHSIZE"
        );
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU TAG t BATCHSIZE 2").unwrap_err(),
            "ERR Insufficient arguments, missing model BLOB"
        );
        assert_eq!(store("AI.MODELSTORE m ONNX CPU NOTBLOB a").unwrap_err(), "ERR Invalid argument, expected BLOB");
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU TAG t BLOB").unwrap_err(),
            "ERR Insufficient arguments, missing model BLOB"
        );
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU INPUTS 1 a BLOB x").unwrap_err(),
            "ERR INPUTS argument should not be specified for this backend"
        );
        assert_eq!(store("AI.MODELSTORE m TF CPU BLOB x").unwrap_err(), "ERR INPUTS not specified for TF");
        assert_eq!(
            store("AI.MODELSTORE m TF CPU INPUTS 0 BLOB x").unwrap_err(),
            "ERR Invalid argument for input_count"
        );
        assert_eq!(
            store("AI.MODELSTORE m TF CPU INPUTS 5 a b").unwrap_err(),
            "ERR number of model inputs does not match the number of given arguments"
        );
        assert_eq!(
            store("AI.MODELSTORE m TF CPU INPUTS 2 a b BLOB x").unwrap_err(),
            "ERR OUTPUTS not specified for TF"
        );
        let tf = store("AI.MODELSTORE m TF CPU INPUTS 2 a b OUTPUTS 1 mul BLOB x").unwrap();
        assert_eq!((tf.inputs, tf.outputs), (vec!["a".to_owned(), "b".to_owned()], vec!["mul".to_owned()]));
        assert_eq!(
            store("AI.MODELSTORE m ONNX CPU").unwrap_err(),
            "ERR wrong number of arguments for 'AI.MODELSTORE' command"
        );
    }

    #[test]
    fn modelset_quirks() {
        let set = |s: &str| parse_modelset(&argv(s)).map_err(|e| e.to_string());
        assert_eq!(set("AI.MODELSET m TORCH BLOB x").unwrap_err(), "ERR Invalid DEVICE");
        assert_eq!(
            set("AI.MODELSET m TFLITE CPU BATCHSIZE 2 BLOB x").unwrap_err(),
            "ERR Auto-batching not supported by the TFLITE backend"
        );
        assert_eq!(
            set("AI.MODELSET m ONNX CPU BATCHSIZE 2 NOT_BLOB").unwrap_err(),
            "ERR Insufficient arguments, missing model BLOB"
        );
        assert_eq!(
            set("AI.MODELSET m TF CPU BLOB x").unwrap_err(),
            "ERR Insufficient arguments, INPUTS and OUTPUTS not specified"
        );
        let tf = set("AI.MODELSET m TF CPU INPUTS a b OUTPUTS mul BLOB x y").unwrap();
        assert_eq!(tf.inputs, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(tf.blob, b"xy"[..]);
    }

    #[test]
    fn modelexecute_args() {
        let ex = |s: &str| parse_modelexecute(&argv(s), 2, 1).map_err(|e| e.to_string());
        let a = ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT 5").unwrap();
        assert_eq!((a.inputs.len(), a.outputs.len(), a.timeout_ms), (2, 1, Some(5)));
        assert_eq!(ex("AI.MODELEXECUTE m OUTPUTS 1 c").unwrap_err(), "ERR INPUTS not specified");
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS x a b").unwrap_err(), "ERR Invalid argument for input_count");
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS 0 a b").unwrap_err(), "ERR Input count must be a positive integer");
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 c").unwrap_err(),
            "Number of keys given as INPUTS here does not match model definition"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 2 c d").unwrap_err(),
            "Number of keys given as OUTPUTS here does not match model definition"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT").unwrap_err(),
            "ERR No value provided for TIMEOUT"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT 0").unwrap_err(),
            "ERR Invalid value for TIMEOUT"
        );
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c FOO").unwrap_err(), "Invalid argument: FOO");
        let run = parse_modelrun(&argv("AI.MODELRUN m TIMEOUT 9 INPUTS a b OUTPUTS c"), 2, 1).unwrap();
        assert_eq!((run.inputs.len(), run.timeout_ms), (2, Some(9)));
    }
}

#[cfg(test)]
mod device_tests {
    use super::*;

    #[test]
    fn device_names_follow_redisai() {
        assert_eq!(Device::parse(b"cpu"), Some(Device::Cpu(None)));
        assert_eq!(Device::parse(b"GPU:1"), Some(Device::Gpu(Some(1))));
        assert_eq!(Device::parse(b"CPU:12345"), Some(Device::Cpu(Some(12345))));
        for bad in ["bad_device", "CPU::", "CPU:1.8", "CPU:123456", "CPU:", "GPUX", ""] {
            assert_eq!(Device::parse(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Device::parse(b"tpu"), Some(Device::Tpu));
        assert_eq!(Device::Cpu(Some(1)).queue_name(), "CPU:1");
        assert_eq!(BackendKind::parse(b"onnx"), Some(BackendKind::Onnx));
        assert_eq!(BackendKind::parse(b"TFLite"), Some(BackendKind::TfLite));
        assert_eq!(BackendKind::parse(b"TENSORFLOW"), None);
    }
}
