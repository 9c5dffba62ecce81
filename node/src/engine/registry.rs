//! The model registry: the backends compiled in (each loaded on first use,
//! as RedisAI loads its backend libraries lazily), the node's AI settings
//! (`AI.CONFIG`), and the loaded instances handed from a leader's check of a
//! model to the replica's keyspace (see [`super::model`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock};
use tessera_backend::script::Script;
use tessera_backend::{Backend, BackendKind, Device, LoadOptions, Model};
use tessera_common::blob::Blob;
use tessera_common::model::{AiConfig, ModelDef, ScriptDef};
use tessera_common::reply::Reply;

use crate::error::Error;

/// RedisAI's default MODEL_CHUNK_SIZE (511 MiB).
pub const DEFAULT_CHUNK: u64 = 511 * 1024 * 1024;

/// The node's AI settings (`AI.CONFIG`, and the node's flags at start).
#[derive(Clone, Debug)]
pub struct Settings {
    pub backends_path: String,
    pub model_chunk_size: u64,
    pub threads_per_queue: usize,
    pub intra_op: usize,
    pub inter_op: usize,
    pub execution_timeout_ms: u64,
    /// Where ONNX Runtime's library is loaded from on first use.
    pub onnx_lib: PathBuf,
    /// Where LiteRT's library (TFLite) is loaded from on first use.
    pub litert_lib: PathBuf,
    /// CUDA 13 and cuDNN 9 libraries in pip's layout (`cu13/lib`,
    /// `cudnn/lib`), fetched by setup on GPU machines.
    pub nvidia_dir: PathBuf,
}

impl Default for Settings {
    fn default() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        let cache = std::env::var_os("TESSERA_CACHE").map(PathBuf::from).unwrap_or(home.join(".cache/tessera"));
        Settings {
            backends_path: cache.to_string_lossy().into_owned(),
            model_chunk_size: DEFAULT_CHUNK,
            threads_per_queue: 1,
            intra_op: 1,
            inter_op: 1,
            execution_timeout_ms: 5000,
            onnx_lib: default_onnx_lib(&cache),
            litert_lib: std::env::var_os("TESSERA_LITERT_LIB")
                .map(PathBuf::from)
                .unwrap_or_else(|| cache.join("litert/libLiteRt.so")),
            nvidia_dir: cache.join("nvidia"),
        }
    }
}

/// `ORT_DYLIB_PATH`, else ONNX Runtime's GPU build when setup fetched it
/// (it runs CPU models too, and adds the CUDA provider), else the CPU build.
fn default_onnx_lib(cache: &std::path::Path) -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    let gpu = cache.join("ort-gpu/libonnxruntime.so");
    if gpu.exists() {
        return gpu;
    }
    cache.join("ort/libonnxruntime.so")
}

/// The backends, loaded on first use, and the settings.
pub struct Registry {
    settings: RwLock<Settings>,
    loaded: Mutex<HashMap<BackendKind, Arc<dyn Backend>>>,
    /// Models the leader loaded to validate them, waiting for their log
    /// entry to apply here (so the leader does not load them twice).
    prepared: Mutex<Vec<(PreparedKey, Arc<dyn Model>)>>,
}

/// What identifies a validated model until its entry applies: its
/// definition without the blob, and the blob's length and 128-bit hash
/// (xxh3: a CRC is easy to collide on purpose, and a collision would run a
/// different model than the followers hold). Keeping
/// the blob itself would hold a whole copy of a large model in memory
/// while its parts are logged and applied.
#[derive(PartialEq)]
struct PreparedKey {
    def: ModelDef,
    len: usize,
    hash: u128,
}

impl PreparedKey {
    /// `def`'s key with `blob` as its bytes (whatever `def.blob` holds).
    fn of(def: &ModelDef, blob: &Blob) -> PreparedKey {
        let hash = crate::util::heavy(|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            blob.parts().iter().for_each(|p| h.update(p));
            h.digest128()
        });
        // Cheap: the blob is shared `Bytes`, replaced by an empty one.
        let without_blob = ModelDef { blob: Blob::default(), ..def.clone() };
        PreparedKey { def: without_blob, len: blob.len(), hash }
    }
}

/// Validated models kept for their apply; older ones are dropped.
const PREPARED_KEPT: usize = 4;

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process's registry (one per node process).
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(|| Registry {
        settings: RwLock::new(Settings::default()),
        loaded: Mutex::new(HashMap::new()),
        prepared: Mutex::new(Vec::new()),
    })
}

impl Registry {
    pub fn settings(&self) -> Settings {
        self.settings.read().clone()
    }

    /// `MODEL_CHUNK_SIZE` alone, without copying the settings (every read asks).
    pub fn model_chunk_size(&self) -> usize {
        self.settings.read().model_chunk_size as usize
    }

    pub fn set(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings.write());
    }

    /// The loaded backend of `kind`, loading it now if needed.
    pub fn backend(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, Error> {
        let mut loaded = self.loaded.lock();
        if let Some(b) = loaded.get(&kind) {
            return Ok(b.clone());
        }
        let b = self.load_backend(kind, None)?;
        loaded.insert(kind, b.clone());
        Ok(b)
    }

    fn load_backend(&self, kind: BackendKind, path: Option<PathBuf>) -> Result<Arc<dyn Backend>, Error> {
        let s = self.settings();
        match kind {
            #[cfg(feature = "onnx")]
            BackendKind::Onnx => {
                let lib = path.unwrap_or(s.onnx_lib);
                // CUDA libraries fetched by setup (`native/fetch_libtorch.sh
                // --gpu`) for ONNX Runtime's CUDA provider, when present.
                let nvidia = &s.nvidia_dir;
                let (cuda, cudnn) = (nvidia.join("cu13/lib"), nvidia.join("cudnn/lib"));
                if cuda.is_dir() && cudnn.is_dir() {
                    if let Err(e) = tessera_backend_onnx::OnnxBackend::preload_cuda(&cuda, &cudnn) {
                        tracing::warn!(error = %e, dir = %nvidia.display(), "cannot preload CUDA libraries");
                    }
                }
                let b = tessera_backend_onnx::OnnxBackend::load(&lib, s.threads_per_queue.max(1)).map_err(|e| {
                    tracing::error!(error = %e, "cannot load the ONNX backend");
                    Error::BackendFailed
                })?;
                Ok(Arc::new(b))
            }
            #[cfg(feature = "torch")]
            BackendKind::Torch => Ok(Arc::new(tessera_backend_torch::TorchBackend)),
            #[cfg(feature = "tract")]
            BackendKind::Tf => Ok(Arc::new(tessera_backend_tract::TfBackend)),
            #[cfg(feature = "litert")]
            BackendKind::TfLite => {
                let lib = path.clone().unwrap_or(s.litert_lib);
                match tessera_backend_litert::LiteRtBackend::load(&lib, s.intra_op.max(1)) {
                    Ok(b) => Ok(Arc::new(b)),
                    // (Without the library, tract's TFLite runs float models.)
                    #[cfg(feature = "tract")]
                    Err(e) if path.is_none() => {
                        tracing::warn!(error = %e, "LiteRT not loaded; TFLite models run on tract (no quantized models)");
                        Ok(Arc::new(tessera_backend_tract::TfLiteBackend))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the TFLite backend (LiteRT)");
                        Err(Error::BackendFailed)
                    }
                }
            }
            #[cfg(all(feature = "tract", not(feature = "litert")))]
            BackendKind::TfLite => Ok(Arc::new(tessera_backend_tract::TfLiteBackend)),
            // Reached only when a backend's feature is off.
            #[allow(unreachable_patterns)]
            other => {
                let _ = (path, s);
                Err(Error::BackendMissing(other.name()))
            }
        }
    }

    /// `AI.CONFIG LOADBACKEND`: loads `kind` from `path` (relative paths are
    /// under BACKENDSPATH). A backend already loaded is an error, as in RedisAI.
    pub fn load_from(&self, kind: BackendKind, path: &str) -> Result<(), Error> {
        let mut loaded = self.loaded.lock();
        if loaded.contains_key(&kind) {
            return Err(Error::BackendLoad);
        }
        let mut p = PathBuf::from(path);
        if p.is_relative() {
            p = PathBuf::from(self.settings().backends_path).join(p);
        }
        let b = self.load_backend(kind, Some(p)).map_err(|_| Error::BackendLoad)?;
        loaded.insert(kind, b);
        Ok(())
    }

    /// Loads `def`, whose bytes are `blob`, in its backend (blocking: call
    /// off the async runtime).
    pub fn load(&self, def: &ModelDef, blob: &Blob) -> Result<Arc<dyn Model>, Error> {
        if def.device == Device::Tpu {
            return Err(Error::NoTpu);
        }
        let backend = self.backend(def.backend)?;
        let s = self.settings();
        let opts = LoadOptions {
            device: def.device,
            inputs: def.inputs.clone(),
            outputs: def.outputs.clone(),
            intra_op_threads: s.intra_op,
            inter_op_threads: s.inter_op,
        };
        backend.load_shared(blob, &opts).map_err(|e| Error::Model(e.0))
    }

    /// Compiles `def`'s source in the TORCH backend, checking its entry
    /// points (blocking: call off the async runtime).
    pub fn compile_script(&self, def: &ScriptDef) -> Result<Arc<dyn Script>, Error> {
        let backend = self.backend(BackendKind::Torch)?;
        backend.compile_script(&def.source, def.device, &def.entry_points).map_err(|e| Error::Model(e.0))
    }

    /// Keeps a model loaded for validation until its entry applies here;
    /// not one that holds the bytes it was loaded from (those of the
    /// request: kept, they would stay in memory beside the stored copy), or
    /// a copy of them (laid out for its runtime: kept, it would be a second
    /// copy while the model's write is logged, and the leader's peak
    /// storing a 600 MiB model went from 2.3–2.6× to 3.5×; loading it again
    /// when the entry applies costs time, not memory).
    pub fn prepare(&self, def: &ModelDef, model: Arc<dyn Model>) {
        if model.holds_bytes() {
            return;
        }
        let key = PreparedKey::of(def, &def.blob);
        let mut p = self.prepared.lock();
        if p.len() >= PREPARED_KEPT {
            p.remove(0);
        }
        p.push((key, model));
    }

    /// The validation instance of `def` with the bytes `blob`, if this node
    /// loaded one.
    pub(super) fn take_prepared(&self, def: &ModelDef, blob: &Blob) -> Option<Arc<dyn Model>> {
        if !self.prepared.lock().iter().any(|(k, _)| k.len == blob.len()) {
            return None; // a follower, or another model: no checksum needed
        }
        let key = PreparedKey::of(def, blob);
        let mut p = self.prepared.lock();
        let i = p.iter().position(|(k, _)| *k == key)?;
        Some(p.remove(i).1)
    }

    /// What this node tells `INFO MODULES` (see [`NodeCommand::AiInfo`]):
    /// its run settings, each loaded backend's version, and the CPU time
    /// this process has used, in microseconds.
    ///
    /// [`NodeCommand::AiInfo`]: tessera_common::command::NodeCommand::AiInfo
    pub fn info(&self) -> Reply {
        let s = self.settings();
        let int = |k: &str, v: u64| (Reply::bulk_str(k), Reply::Int(v as i64));
        let mut out = vec![
            int("threads_per_queue", s.threads_per_queue as u64),
            int("inter_op_parallelism", s.inter_op as u64),
            int("intra_op_parallelism", s.intra_op as u64),
            int("model_execution_timeout", s.execution_timeout_ms),
        ];
        // (Not while a backend is loading, which holds the lock for its
        // whole load: INFO then leaves the backends out.)
        if let Some(loaded) = self.loaded.try_lock() {
            for kind in BackendKind::ALL {
                if let Some(b) = loaded.get(&kind) {
                    out.push((Reply::bulk_str(&format!("backend:{}", kind.name())), Reply::bulk_str(&b.version())));
                }
            }
        }
        let p = tessera_telemetry::process_info();
        out.push(int("used_cpu_sys_us", p.system_ms as u64 * 1000));
        out.push(int("used_cpu_user_us", p.user_ms as u64 * 1000));
        Reply::Map(out)
    }

    /// Applies an `AI.CONFIG` setting; the reply for a GET.
    pub fn config(&self, op: &AiConfig) -> Reply {
        let mut s = self.settings.write();
        match op {
            AiConfig::BackendsPath(p) => s.backends_path = p.clone(),
            AiConfig::LoadBackend(kind, path) => {
                drop(s);
                return match self.load_from(*kind, path) {
                    Ok(()) => Reply::ok(),
                    Err(e) => e.to_reply(),
                };
            }
            AiConfig::ModelChunkSize(n) => s.model_chunk_size = *n,
            AiConfig::ThreadsPerQueue(n) => s.threads_per_queue = *n as usize,
            AiConfig::IntraOpParallelism(n) => s.intra_op = *n as usize,
            AiConfig::InterOpParallelism(n) => s.inter_op = *n as usize,
            AiConfig::ModelExecutionTimeout(n) => s.execution_timeout_ms = *n,
            AiConfig::Get(what) => {
                return match what.as_str() {
                    "BACKENDSPATH" => Reply::Bulk(s.backends_path.clone().into()),
                    "MODEL_CHUNK_SIZE" => Reply::Int(s.model_chunk_size as i64),
                    "THREADS_PER_QUEUE" => Reply::Int(s.threads_per_queue as i64),
                    "INTRA_OP_PARALLELISM" => Reply::Int(s.intra_op as i64),
                    "INTER_OP_PARALLELISM" => Reply::Int(s.inter_op as i64),
                    "MODEL_EXECUTION_TIMEOUT" => Reply::Int(s.execution_timeout_ms as i64),
                    _ => Reply::Null,
                }
            }
        }
        Reply::ok()
    }
}
