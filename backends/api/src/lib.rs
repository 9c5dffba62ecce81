//! What every model runtime implements, and what the node needs to know about
//! runtimes without linking any: backend and device names (RedisAI's rules),
//! the [`Backend`]/[`Model`] traits, scripts ([`script`]), batching along
//! dim 0 ([`batch`]), and a
//! [`mock`] backend for unit tests of the execution engine.
//!
//! Runtimes live in their own crates (`tessera-backend-onnx`, ...) behind
//! cargo features of the node.

pub mod batch;
pub mod mock;
pub mod script;

use std::fmt;
use std::sync::Arc;

pub use tessera_common::model::{BackendKind, Device};
pub use tessera_common::tensor::{DType, Tensor};

/// How a model is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub device: Device,
    /// Input and output node names (TF only: they bind tensors to graph nodes).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Threads inside one operator (0: the runtime's default).
    pub intra_op_threads: usize,
    /// Threads running independent operators (0: the runtime's default).
    pub inter_op_threads: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu(None),
            inputs: Vec::new(),
            outputs: Vec::new(),
            intra_op_threads: 1,
            inter_op_threads: 1,
        }
    }
}

/// An error as the client sees it: the text is sent verbatim (some RedisAI
/// messages carry `ERR `, runtime messages do not), with newlines flattened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendError(pub String);

impl BackendError {
    pub fn new(msg: impl Into<String>) -> BackendError {
        // RedisAI's RAI_Chomp: a reply line cannot hold CR or LF.
        BackendError(msg.into().replace(['\n', '\r'], " "))
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendError {}

pub type Result<T> = std::result::Result<T, BackendError>;

/// A model runtime.
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The runtime's version, for INFO.
    fn version(&self) -> String;

    /// Deserializes (and compiles) a model from the bytes a client uploaded.
    /// Garbage bytes, unsupported operators and devices this machine lacks
    /// are errors here, never later.
    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>>;

    /// [`Backend::load`] from bytes the caller keeps anyway: a backend may
    /// hold on to them (clones of `blob`'s parts, not a copy) instead of
    /// copying the weights they hold.
    fn load_shared(&self, blob: &tessera_common::blob::Blob, opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        self.load(&blob.contiguous(), opts)
    }

    /// Compiles a script's `source` for `device`, checking that each of
    /// `entry_points` exists with the entry-point signature. Only the TORCH
    /// backend runs scripts.
    fn compile_script(&self, source: &str, device: Device, entry_points: &[String]) -> Result<Arc<dyn script::Script>> {
        let _ = (source, device, entry_points);
        Err(BackendError::new(format!("ERR the {} backend does not run scripts", self.kind().name())))
    }
}

/// A loaded model. `run` may be called from several threads at once.
pub trait Model: Send + Sync {
    /// Input names, in the order MODELEXECUTE binds its INPUTS.
    fn inputs(&self) -> &[String];

    /// Output names, in the order MODELEXECUTE binds its OUTPUTS.
    fn outputs(&self) -> &[String];

    /// Runs the model once. One entry per output; `None` for an output that
    /// is not a tensor (ONNX maps and sequences), which is not stored.
    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>>;

    /// [`run`](Model::run), stopped with the runtime's error if it is still
    /// running after about `limit` (RedisAI's MODEL_EXECUTION_TIMEOUT).
    /// Runtimes that cannot stop a run midway ignore the limit.
    fn run_limited(&self, inputs: &[Tensor], limit: Option<std::time::Duration>) -> Result<Vec<Option<Tensor>>> {
        let _ = limit;
        self.run(inputs)
    }

    /// Whether the model keeps the (large) buffer it was loaded from
    /// ([`Backend::load_shared`]), or a copy of it, for as long as it lives.
    fn holds_bytes(&self) -> bool {
        false
    }

    /// The bytes the model was loaded from, as parts in memory of the
    /// model's own, when it keeps such a copy (weights laid out aligned for
    /// its runtime). The caller keeps these instead of its buffer, so the
    /// model is held once.
    fn bytes(&self) -> Option<tessera_common::blob::Blob> {
        None
    }
}

/// Element types a runtime exchanges with tensors' little-endian bytes.
pub trait Element: Copy + Default + 'static {
    const DTYPE: DType;
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().unwrap_or_default())
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}
element!(f32, DType::Float);
element!(f64, DType::Double);
element!(i8, DType::Int8);
element!(i16, DType::Int16);
element!(i32, DType::Int32);
element!(i64, DType::Int64);
element!(u8, DType::Uint8);
element!(u16, DType::Uint16);

/// The elements of a numeric tensor (its dtype must be `T::DTYPE`).
pub fn elements<T: Element>(t: &Tensor) -> Vec<T> {
    t.data.chunks_exact(T::SIZE).map(T::read).collect()
}

/// A tensor from elements; the shape must hold `values.len()` elements.
pub fn from_elements<T: Element>(shape: Vec<i64>, values: &[T]) -> Tensor {
    let mut data = Vec::with_capacity(values.len() * T::SIZE);
    for v in values {
        v.write(&mut data);
    }
    Tensor { dtype: T::DTYPE, shape, data: data.into() }
}

/// The elements of a STRING tensor.
pub fn strings(t: &Tensor) -> Vec<&[u8]> {
    let d = &t.data[..];
    match d.strip_suffix(b"\0") {
        Some(body) => body.split(|b| *b == 0).collect(),
        None => Vec::new(),
    }
}

/// A STRING tensor from its elements (each must be free of NUL bytes).
pub fn from_strings<S: AsRef<[u8]>>(shape: Vec<i64>, values: &[S]) -> Tensor {
    let mut data = Vec::new();
    for v in values {
        data.extend_from_slice(v.as_ref());
        data.push(0);
    }
    Tensor { dtype: DType::String, shape, data: data.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_round_trips() {
        let t = from_elements(vec![2], &[1.5f32, -2.0]);
        assert_eq!(elements::<f32>(&t), vec![1.5, -2.0]);
        let s = from_strings(vec![2], &["a", ""]);
        assert_eq!(&s.data[..], b"a\0\0");
        assert_eq!(strings(&s), vec![&b"a"[..], &b""[..]]);
    }

    #[test]
    fn errors_lose_newlines() {
        assert_eq!(BackendError::new("a\nb\r\nc").0, "a b  c");
    }
}
