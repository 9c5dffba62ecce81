//! The ONNX backend: ONNX Runtime through `ort`, with the library loaded at
//! run time (`load-dynamic`) from a path the node is given, so a missing
//! library is an error a client can read, not a crash.
//!
//! `ort` sessions run with `&mut self`, so each model keeps a small pool of
//! sessions: a run takes an idle one or, when all are busy and the pool is
//! under its limit, creates another from the model's bytes.
//!
//! On the CPU, a model's large weights (its main graph's numeric
//! initializers of 64 KiB or more that ORT's optimizers do not fold) are
//! not copied into its sessions: they are tensors over the bytes the node
//! keeps anyway ([`weights`]).

mod layout;
mod pb;
#[doc(hidden)]
pub mod weights;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, TensorElementType, ValueType};
use parking_lot::Mutex;
use tessera_backend::{
    elements, from_elements, from_strings, strings, Backend, BackendError, BackendKind, DType, Device, Element,
    LoadOptions, Model, Result, Tensor,
};
use tessera_common::blob::Blob;
use weights::Shared;

/// The ONNX Runtime version the pinned `ort` targets (and setup fetches).
pub const ORT_VERSION: &str = "1.31.1";

pub struct OnnxBackend {
    env: ort::environment::Environment,
    /// Sessions a model may hold at once (= worker threads per queue).
    max_sessions: usize,
}

impl OnnxBackend {
    /// Loads ONNX Runtime from `lib` (`libonnxruntime.so`). Only one library
    /// can be loaded per process; a second call reuses the first.
    pub fn load(lib: &Path, max_sessions: usize) -> Result<OnnxBackend> {
        if !lib.exists() {
            return Err(BackendError::new(format!("ONNX Runtime library not found at {}", lib.display())));
        }
        let env = ort::init_from(lib)
            .map_err(|e| BackendError::new(format!("loading {}: {e}", lib.display())))?
            .with_name("tessera")
            .build()
            .map_err(|e| BackendError::new(format!("ONNX Runtime environment: {}", e.message())))?;
        Ok(OnnxBackend { env, max_sessions: max_sessions.max(1) })
    }

    /// Loads the CUDA and cuDNN libraries the CUDA provider needs from
    /// these directories (CUDA 13's pip layout: `nvidia/cu13/lib`,
    /// `nvidia/cudnn/lib`) before it looks for them on the loader path.
    /// Call before the first GPU session; libraries stay loaded.
    pub fn preload_cuda(cuda_lib: &Path, cudnn_lib: &Path) -> Result<()> {
        ort::ep::cuda::preload_dylibs(Some(cuda_lib), Some(cudnn_lib)).map_err(|e| BackendError::new(e.to_string()))
    }

    /// Whether the loaded library was built with the CUDA execution
    /// provider (it may still fail to start it: no driver, no such device).
    pub fn has_cuda(&self) -> bool {
        use ort::ep::ExecutionProvider;
        ort::ep::CUDA::is_available().unwrap_or(false)
    }

    /// A session for `blob`, given `shared`'s weights when there are any.
    fn session(&self, blob: &[u8], shared: Option<&Shared>, opts: &LoadOptions) -> Result<Session> {
        let err = |e: ort::Error<_>| BackendError::new(e.message().to_owned());
        let mut b = Session::builder(&self.env).map_err(|e| BackendError::new(e.message().to_owned()))?;
        b = b.with_optimization_level(GraphOptimizationLevel::All).map_err(err)?;
        if opts.intra_op_threads > 0 {
            b = b.with_intra_threads(opts.intra_op_threads).map_err(err)?;
        }
        if opts.inter_op_threads > 0 {
            b = b.with_inter_threads(opts.inter_op_threads).map_err(err)?;
        }
        if let Device::Gpu(id) = opts.device {
            // A provider that cannot be registered is an error, not a silent
            // fall-back to the CPU (its libraries and the device are only
            // opened when the session is created, below).
            let cuda = ort::ep::CUDA::default()
                .with_device_id(id.unwrap_or(0) as i32)
                .with_conv_algorithm_search(conv_search())
                .build()
                .error_on_failure();
            b = b.with_execution_providers([cuda]).map_err(|e| no_cuda(e.message()))?;
        }
        let blob = match shared {
            Some(shared) => {
                b = shared.add_to(b).map_err(BackendError::new)?;
                &shared.model[..]
            }
            None => blob,
        };
        b.commit_from_memory(blob).map_err(|e| match opts.device {
            // The CUDA provider loads its library and its CUDA libraries,
            // and opens the device, only when the session is created.
            Device::Gpu(id) => gpu_err(e.message(), id.unwrap_or(0)),
            _ => BackendError::new(e.message().to_owned()),
        })
    }
}

impl Backend for OnnxBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Onnx
    }

    fn version(&self) -> String {
        ORT_VERSION.into()
    }

    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        self.load_shared(&Blob::from(Bytes::copy_from_slice(blob)), opts)
    }

    fn load_shared(&self, blob: &Blob, opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        // ORT would read such a file from the node's file system (relative
        // to its working directory): a client must not name node files.
        if weights::references_external_data(&weights::Src::of(blob)) {
            return Err(BackendError::new(
                "ERR ONNX models with external data are not supported: send the weights inside the model",
            ));
        }
        match opts.device {
            Device::Cpu(_) => {}
            // ORT's CPU build (the default library) has no CUDA provider;
            // the GPU build (`native/setup_ort.sh --gpu`) has.
            Device::Gpu(_) if !self.has_cuda() => {
                return Err(BackendError::new("ERR GPU requested but ONNX couldn't find CUDA"))
            }
            Device::Gpu(_) => {}
            Device::Tpu => return Err(BackendError::new("ERR unsupported device")),
        }
        let (session, shared) = self.first_session(blob, opts)?;
        let inputs = session.inputs().iter().map(|o| o.name().to_owned()).collect();
        let outputs = session.outputs().iter().map(|o| o.name().to_owned()).collect();
        // A session holds its own copy of whatever weights it was not given
        // as shared tensors (and of those its kernels repack): a large model
        // gets one session (its runs take turns), so it costs them once.
        let pooled = blob.len() <= POOL_MAX_BYTES;
        Ok(Arc::new(OnnxModel {
            idle: Mutex::new(vec![session]),
            blob: (pooled && shared.is_none()).then(|| blob.contiguous()),
            shared,
            opts: opts.clone(),
            inputs,
            outputs,
            created: Mutex::new(1),
            max_sessions: if pooled { self.max_sessions } else { 1 },
            backend: self.env.clone(),
        }))
    }
}

impl OnnxBackend {
    /// The model's first session, and the weights it was given: on the
    /// CPU, its large weights as tensors over `blob` ([`weights`]). ONNX
    /// Runtime gives a session those tensors only after its graph
    /// optimizers ran, so a model whose optimizers must read one of them
    /// (to fold a constant) fails that way and is loaded as it came, as is
    /// any model that fails: the error is then ONNX Runtime's about the
    /// model itself.
    fn first_session(&self, blob: &Blob, opts: &LoadOptions) -> Result<(Session, Option<Shared>)> {
        if matches!(opts.device, Device::Cpu(_)) {
            if let Ok(Some(shared)) = Shared::new(blob) {
                if let Ok(session) = self.session(&[], Some(&shared), opts) {
                    return Ok((session, Some(shared)));
                }
            }
        }
        // (In one buffer: a copy when the blob was laid out in parts.)
        Ok((self.session(&blob.contiguous(), None, opts)?, None))
    }
}

/// Models up to this size get a pool of sessions (runs in parallel).
const POOL_MAX_BYTES: usize = 64 << 20;

struct OnnxModel {
    /// Declared (so dropped) before `shared`: sessions use its tensors.
    idle: Mutex<Vec<Session>>,
    /// The weights sessions are given (CPU models with large weights).
    shared: Option<Shared>,
    /// The model's bytes (the node's own, not a copy), to create more
    /// sessions when runs overlap (small models only) without `shared`.
    blob: Option<Bytes>,
    opts: LoadOptions,
    inputs: Vec<String>,
    outputs: Vec<String>,
    created: Mutex<usize>,
    max_sessions: usize,
    backend: ort::environment::Environment,
}

impl OnnxModel {
    fn take_session(&self) -> Result<Session> {
        if let Some(s) = self.idle.lock().pop() {
            return Ok(s);
        }
        {
            let mut created = self.created.lock();
            if *created < self.max_sessions && (self.shared.is_some() || self.blob.is_some()) {
                *created += 1;
                drop(created);
                let b = OnnxBackend { env: self.backend.clone(), max_sessions: self.max_sessions };
                let blob = self.blob.as_deref().unwrap_or_default();
                return b.session(blob, self.shared.as_ref(), &self.opts).inspect_err(|_| *self.created.lock() -= 1);
            }
        }
        // Every session is busy: wait for one.
        loop {
            std::thread::sleep(std::time::Duration::from_micros(50));
            if let Some(s) = self.idle.lock().pop() {
                return Ok(s);
            }
        }
    }
}

impl Model for OnnxModel {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Shared weights keep the bytes the model came from (a small pooled
    /// model's bytes are no more than a copy of them would be).
    fn holds_bytes(&self) -> bool {
        self.shared.is_some()
    }

    fn bytes(&self) -> Option<tessera_common::blob::Blob> {
        self.shared.as_ref()?.laid_out().cloned()
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.run_limited(inputs, None)
    }

    fn run_limited(&self, inputs: &[Tensor], limit: Option<Duration>) -> Result<Vec<Option<Tensor>>> {
        if inputs.len() != self.inputs.len() {
            return Err(BackendError::new(format!(
                "ERR Expected {} inputs but got {}",
                self.inputs.len(),
                inputs.len()
            )));
        }
        let values = self
            .inputs
            .iter()
            .zip(inputs)
            .map(|(name, t)| Ok((name.as_str(), to_ort(t)?)))
            .collect::<Result<Vec<(&str, DynValue)>>>()?;
        let mut session = self.take_session()?;
        let result = (|| {
            let opts = match limit {
                Some(_) => Some(Arc::new(RunOptions::new().map_err(runtime_err)?)),
                None => None,
            };
            let _watched = opts.as_ref().zip(limit).map(|(o, limit)| watchdog().watch(o.clone(), limit));
            let outputs = match &opts {
                None => session.run(values),
                Some(o) => session.run_with_options(values, &**o),
            }
            .map_err(|e| BackendError::new(e.message().to_owned()))?;
            self.outputs.iter().map(|name| outputs.get(name).map_or(Ok(None), from_ort)).collect()
        })();
        self.idle.lock().push(session);
        result
    }
}

/// Runs with a time limit. Like RedisAI's check from Redis's cron, a thread
/// looks every 100 ms and sets the terminate flag of each run past its
/// deadline; ORT then fails the run with "Exiting due to terminate flag
/// being set to true".
struct Watchdog {
    runs: parking_lot::Mutex<HashMap<u64, (Instant, Arc<RunOptions>)>>,
    next: AtomicU64,
}

/// One watched run; no longer watched once dropped.
struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        watchdog().runs.lock().remove(&self.0);
    }
}

const WATCH_EVERY: Duration = Duration::from_millis(100);

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        std::thread::Builder::new()
            .name("ort-watchdog".into())
            .spawn(|| loop {
                std::thread::sleep(WATCH_EVERY);
                let now = Instant::now();
                watchdog().runs.lock().retain(|_, (deadline, opts)| {
                    let over = now >= *deadline;
                    if over {
                        let _ = opts.terminate();
                    }
                    !over
                });
            })
            .expect("spawn the ONNX Runtime watchdog thread");
        Watchdog { runs: Default::default(), next: AtomicU64::new(0) }
    })
}

impl Watchdog {
    fn watch(&self, opts: Arc<RunOptions>, limit: Duration) -> Watched {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.runs.lock().insert(id, (Instant::now() + limit, opts));
        Watched(id)
    }
}

/// How cuDNN picks convolution algorithms: `heuristic` unless
/// `TESSERA_CUDNN_CONV_SEARCH` says `exhaustive` or `default`. ORT's own
/// default, exhaustive, benchmarks every algorithm on each new input shape;
/// auto-batching makes a new shape of every batch size: on an H200, mnist
/// with BATCHSIZE 64 at 64 clients ran 1,096 samples/s with exhaustive
/// search and 5,891 with heuristic (5 s runs from a cold start).
fn conv_search() -> ort::ep::cuda::ConvAlgorithmSearch {
    use ort::ep::cuda::ConvAlgorithmSearch as S;
    match std::env::var("TESSERA_CUDNN_CONV_SEARCH").as_deref() {
        Ok("exhaustive") => S::Exhaustive,
        Ok("default") => S::Default,
        _ => S::Heuristic,
    }
}

/// A GPU session's creation error: a missing device or missing CUDA said
/// plainly (RedisAI's message, with ORT's reason); model errors verbatim.
fn gpu_err(msg: &str, id: u32) -> BackendError {
    if msg.contains("invalid device ordinal") {
        BackendError::new(format!("ERR GPU:{id} requested but there is no such CUDA device ({})", ort_reason(msg)))
    } else if msg.contains("providers_cuda") || msg.contains("CUDA failure") || msg.contains("CUDA error") {
        no_cuda(msg)
    } else {
        BackendError::new(msg.to_owned())
    }
}

/// RedisAI's message for a GPU model without CUDA, with ORT's reason.
fn no_cuda(msg: &str) -> BackendError {
    BackendError::new(format!("ERR GPU requested but ONNX couldn't find CUDA ({})", ort_reason(msg)))
}

/// ORT's reason without the source location and status code it starts
/// with (`/onnxruntime_src/...cc:2043 f() [ONNXRuntimeError] : 1 : FAIL : why`).
fn ort_reason(msg: &str) -> &str {
    match msg.find("[ONNXRuntimeError]") {
        Some(i) => msg[i..].splitn(4, " : ").nth(3).unwrap_or(msg).trim(),
        None => msg.trim(),
    }
}

fn runtime_err(e: ort::Error) -> BackendError {
    BackendError::new(e.message().to_owned())
}

fn typed<T: Element + ort::value::PrimitiveTensorElementType + std::fmt::Debug>(t: &Tensor) -> Result<DynValue> {
    ort::value::Tensor::from_array((t.shape.clone(), elements::<T>(t))).map(|v| v.into_dyn()).map_err(runtime_err)
}

/// A tensor as an ORT value (a copy: ORT wants aligned, owned buffers).
fn to_ort(t: &Tensor) -> Result<DynValue> {
    match t.dtype {
        DType::Float => typed::<f32>(t),
        DType::Double => typed::<f64>(t),
        DType::Int8 => typed::<i8>(t),
        DType::Int16 => typed::<i16>(t),
        DType::Int32 => typed::<i32>(t),
        DType::Int64 => typed::<i64>(t),
        DType::Uint8 => typed::<u8>(t),
        DType::Uint16 => typed::<u16>(t),
        DType::Bool => {
            let v: Vec<bool> = t.data.iter().map(|b| *b != 0).collect();
            ort::value::Tensor::from_array((t.shape.clone(), v)).map(|v| v.into_dyn()).map_err(runtime_err)
        }
        DType::String => {
            let v = strings(t)
                .into_iter()
                .map(|s| String::from_utf8(s.to_vec()))
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(|_| BackendError::new("ERR ONNX string tensors must be valid UTF-8"))?;
            ort::value::Tensor::from_string_array((t.shape.clone(), &v[..])).map(|v| v.into_dyn()).map_err(runtime_err)
        }
    }
}

fn extract<T: Element + ort::value::PrimitiveTensorElementType>(v: &DynValue) -> Result<Tensor> {
    let (shape, data) = v.try_extract_tensor::<T>().map_err(runtime_err)?;
    Ok(from_elements(shape.iter().copied().collect(), data))
}

/// An ORT output as a tensor; `None` for maps and sequences (RedisAI
/// ignores those outputs and writes no key).
fn from_ort(v: &DynValue) -> Result<Option<Tensor>> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Ok(None);
    };
    Ok(Some(match ty {
        TensorElementType::Float32 => extract::<f32>(v)?,
        TensorElementType::Float64 => extract::<f64>(v)?,
        TensorElementType::Int8 => extract::<i8>(v)?,
        TensorElementType::Int16 => extract::<i16>(v)?,
        TensorElementType::Int32 => extract::<i32>(v)?,
        TensorElementType::Int64 => extract::<i64>(v)?,
        TensorElementType::Uint8 => extract::<u8>(v)?,
        TensorElementType::Uint16 => extract::<u16>(v)?,
        TensorElementType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>().map_err(runtime_err)?;
            let bytes: Vec<u8> = data.iter().map(|b| u8::from(*b)).collect();
            Tensor { dtype: DType::Bool, shape: shape.iter().copied().collect(), data: bytes.into() }
        }
        TensorElementType::String => {
            let (shape, data) = v.try_extract_strings().map_err(runtime_err)?;
            from_strings(shape.iter().copied().collect(), &data)
        }
        other => return Err(BackendError::new(format!("ERR Unsupported output data type: {other:?}"))),
    }))
}
