//! RedisAI models as commands see them: backend and device names, the
//! stored definition, and the argument rules of AI.MODELSTORE/MODELSET
//! (parsed where no state is needed: the router); AI.MODELEXECUTE/MODELRUN
//! in [`exec`] (parsed on the router too, into a [`ModelRun`] whose counts
//! the node checks against the model once it has found it, so a missing
//! model is reported first), AI.CONFIG in [`config`].

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::error::{Error, Result};

pub mod config;
pub mod dag;
pub mod exec;
pub mod script;

pub use config::{parse_ai_config, AiConfig};
pub use dag::{parse_dag, Dag, DagKind, DagOp};
pub use exec::{parse_modelexecute, parse_modelrun, Check, ExecArgs, ModelRun};
pub use script::{parse_scriptset, parse_scriptstore, ScriptDef, ScriptRun};

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

pub(crate) fn err(s: &str) -> Error {
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

pub(crate) fn eq(a: &[u8], b: &str) -> bool {
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

/// `AI.MODELSTORE key backend device [TAG t] [BATCHSIZE n] [MINBATCHSIZE m]
/// [MINBATCHTIMEOUT t] [INPUTS n .. OUTPUTS n ..] BLOB chunk..`, with
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
    // (Three options, each checked as soon as its value is read.)
    let (mut batchsize, mut minbatchsize, mut minbatchtimeout) = (0, 0, 0);
    if at(i, "BATCHSIZE") {
        batchsize =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for BATCHSIZE"))?;
        i += 2;
    }
    if at(i, "MINBATCHSIZE") {
        minbatchsize =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for MINBATCHSIZE"))?;
        i += 2;
        if batchsize == 0 && minbatchsize > 0 {
            return Err(err("ERR MINBATCHSIZE specified without BATCHSIZE"));
        }
    }
    if at(i, "MINBATCHTIMEOUT") {
        minbatchtimeout =
            argv.get(i + 1).and_then(|a| unsigned(a)).ok_or_else(|| err("ERR Invalid argument for MINBATCHTIMEOUT"))?;
        i += 2;
        if minbatchsize == 0 && minbatchtimeout > 0 {
            return Err(err("ERR MINBATCHTIMEOUT specified without MINBATCHSIZE"));
        }
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
    if i >= argv.len() {
        return Err(err("ERR Insufficient arguments, missing model BLOB"));
    }
    // (A TF model's INPUTS and OUTPUTS, up to BLOB, are checked before
    // whether a blob follows.)
    let blob_at = argv[i..].iter().position(|a| eq(a, "BLOB")).map(|p| p + i);
    let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
    if backend == BackendKind::Tf {
        let io = &argv[i..blob_at.unwrap_or(argv.len())];
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
    let Some(blob_at) = blob_at.filter(|b| b + 1 < argv.len()) else {
        return Err(err("ERR Insufficient arguments, missing model BLOB"));
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line split at spaces (for `exec`'s tests too).
    pub(super) fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    fn store(s: &str) -> std::result::Result<ModelDef, String> {
        parse_modelstore(&argv(s)).map_err(|e| e.to_string())
    }

    /// Inputs wrong in two ways at once: the error RedisAI answers first.
    #[test]
    fn model_stores_answer_the_first_of_two_errors_as_redisai() {
        let cases = [
            ("AI.MODELSTORE m TORCH CPU MINBATCHSIZE 2 BLOB x", "ERR MINBATCHSIZE specified without BATCHSIZE"),
            (
                "AI.MODELSTORE m TORCH CPU BATCHSIZE 2 MINBATCHTIMEOUT 1000 BLOB x",
                "ERR MINBATCHTIMEOUT specified without MINBATCHSIZE",
            ),
            ("AI.MODELSTORE m TORCH CPU MINBATCHSIZE x", "ERR Invalid argument for MINBATCHSIZE"),
            ("AI.MODELSTORE m TORCH CPU MINBATCHSIZE 2", "ERR MINBATCHSIZE specified without BATCHSIZE"),
            ("AI.MODELSTORE m TORCH CPU MINBATCHTIMEOUT 5", "ERR MINBATCHTIMEOUT specified without MINBATCHSIZE"),
            (
                "AI.MODELSTORE m TORCH CPU BATCHSIZE 0 MINBATCHSIZE 2 MINBATCHTIMEOUT x BLOB b",
                "ERR MINBATCHSIZE specified without BATCHSIZE",
            ),
            (
                "AI.MODELSTORE m TF CPU MINBATCHSIZE 2 INPUTS 1 a OUTPUTS 1 b BLOB x",
                "ERR MINBATCHSIZE specified without BATCHSIZE",
            ),
            ("AI.MODELSTORE m XX bad_device BLOB x", "ERR unsupported backend"),
            ("AI.MODELSTORE m TORCH bad_device BATCHSIZE x BLOB b", "ERR Invalid DEVICE"),
            ("AI.MODELSTORE m TORCH CPU BATCHSIZE x", "ERR Invalid argument for BATCHSIZE"),
            ("AI.MODELSTORE m TORCH CPU BATCHSIZE 2 MINBATCHSIZE x", "ERR Invalid argument for MINBATCHSIZE"),
            ("AI.MODELSTORE m TF CPU BATCHSIZE 2", "ERR Insufficient arguments, missing model BLOB"),
            ("AI.MODELSTORE m TF CPU INPUTS 2 a b", "ERR OUTPUTS not specified for TF"),
            ("AI.MODELSTORE m TORCH CPU INPUTS 1 a", "ERR INPUTS argument should not be specified for this backend"),
            ("AI.MODELSET m TF CPU BLOB", "ERR Insufficient arguments, INPUTS and OUTPUTS not specified"),
            ("AI.MODELSET m TF CPU INPUTS a", "ERR OUTPUTS not specified"),
            ("AI.MODELSET m TF CPU a b OUTPUTS c", "ERR INPUTS not specified"),
            ("AI.MODELSET m TF CPU NOTINPUTS BLOB", "ERR INPUTS not specified"),
            ("AI.MODELSET m TORCH BLOB x", "ERR Invalid DEVICE"),
            ("AI.MODELSET m TFLITE CPU BATCHSIZE x BLOB b", "ERR Auto-batching not supported by the TFLITE backend"),
            ("AI.MODELSET m ONNX CPU MINBATCHSIZE x BLOB b", "ERR MINBATCHSIZE specified without BATCHSIZE"),
            (
                "AI.MODELSET m ONNX CPU BATCHSIZE 2 MINBATCHTIMEOUT x",
                "ERR MINBATCHTIMEOUT specified without MINBATCHSIZE",
            ),
            ("AI.MODELSET m TF CPU BATCHSIZE 2", "ERR Insufficient arguments, missing model BLOB"),
            ("AI.MODELSET m TF CPU INPUTS a OUTPUTS b BLOB", "ERR Insufficient arguments, missing model BLOB"),
            ("AI.MODELSET m TF CPU INPUTS a OUTPUTS b", "ERR Insufficient arguments, missing model BLOB"),
            ("AI.MODELSET m ONNX CPU BATCHSIZE 2 NOT_BLOB", "ERR Insufficient arguments, missing model BLOB"),
        ];
        for (cmd, want) in cases {
            let got = if cmd.starts_with("AI.MODELSTORE") {
                store(cmd)
            } else {
                parse_modelset(&argv(cmd)).map_err(|e| e.to_string())
            };
            assert_eq!(got.unwrap_err(), want, "{cmd}");
        }
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
