//! Models on this node: the backends compiled in (each loaded on first use,
//! as RedisAI loads its backend libraries lazily), the node's AI settings
//! (`AI.CONFIG`), and [`StoredModel`] — a model as the keyspace holds it.
//!
//! A stored model starts loading in the background the moment a replica
//! applies it (or restores it from a snapshot), so a replica that becomes
//! leader serves it at once; a run that arrives mid-load waits for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, RwLock};
use tessera_backend::{Backend, BackendKind, Device, LoadOptions, Model};
use tessera_common::blob::Blob;
use tessera_common::command::NodeCommand;
use tessera_common::model::{AiConfig, ModelDef};
use tessera_common::reply::Reply;

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
    /// Models the leader loaded, handed over with the very bytes they are
    /// about to be stored with (see `raft::chunks::LocalWrite`): known by their
    /// definition and the addresses of those bytes, no hash needed.
    handed: Mutex<Vec<Handed>>,
}

/// A handed-over model: its definition without the blob, where its bytes
/// lie, and the model.
type Handed = (ModelDef, Vec<(usize, usize)>, Arc<dyn Model>);

/// Where a blob's parts lie in memory.
fn addresses(blob: &Blob) -> Vec<(usize, usize)> {
    blob.parts().iter().map(|p| (p.as_ptr() as usize, p.len())).collect()
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
    fn of(def: &ModelDef) -> PreparedKey {
        let hash = crate::raft::heavy(|| {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            def.blob.parts().iter().for_each(|p| h.update(p));
            h.digest128()
        });
        // Cheap: the blob is shared `Bytes`, replaced by an empty one.
        let without_blob = ModelDef { blob: Blob::default(), ..def.clone() };
        PreparedKey { def: without_blob, len: def.blob.len(), hash }
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
        handed: Mutex::new(Vec::new()),
    })
}

impl Registry {
    pub fn settings(&self) -> Settings {
        self.settings.read().clone()
    }

    pub fn set(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings.write());
    }

    /// The loaded backend of `kind`, loading it now if needed.
    pub fn backend(&self, kind: BackendKind) -> Result<Arc<dyn Backend>, String> {
        let mut loaded = self.loaded.lock();
        if let Some(b) = loaded.get(&kind) {
            return Ok(b.clone());
        }
        let b = self.load_backend(kind, None)?;
        loaded.insert(kind, b.clone());
        Ok(b)
    }

    fn load_backend(&self, kind: BackendKind, path: Option<PathBuf>) -> Result<Arc<dyn Backend>, String> {
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
                    "ERR Could not load backend".to_owned()
                })?;
                Ok(Arc::new(b))
            }
            #[cfg(feature = "torch")]
            BackendKind::Torch => Ok(Arc::new(tessera_backend_torch::TorchBackend)),
            #[cfg(feature = "tract")]
            BackendKind::Tf => Ok(Arc::new(tessera_backend_tract::TfBackend)),
            #[cfg(feature = "tract")]
            BackendKind::TfLite => Ok(Arc::new(tessera_backend_tract::TfLiteBackend)),
            // Reached only when a backend's feature is off.
            #[allow(unreachable_patterns)]
            other => {
                let _ = (path, s);
                Err(format!("ERR Backend not loaded: {}", other.name()))
            }
        }
    }

    /// `AI.CONFIG LOADBACKEND`: loads `kind` from `path` (relative paths are
    /// under BACKENDSPATH). A backend already loaded is an error, as in RedisAI.
    pub fn load_from(&self, kind: BackendKind, path: &str) -> Result<(), String> {
        let mut loaded = self.loaded.lock();
        if loaded.contains_key(&kind) {
            return Err("ERR error loading backend".into());
        }
        let mut p = PathBuf::from(path);
        if p.is_relative() {
            p = PathBuf::from(self.settings().backends_path).join(p);
        }
        let b = self.load_backend(kind, Some(p)).map_err(|_| "ERR error loading backend".to_owned())?;
        loaded.insert(kind, b);
        Ok(())
    }

    /// Loads `def`, whose bytes are `blob`, in its backend (blocking: call
    /// off the async runtime).
    pub fn load(&self, def: &ModelDef, blob: &Blob) -> Result<Arc<dyn Model>, String> {
        if def.device == Device::Tpu {
            return Err("ERR unsupported device: TPU is not supported by this build".into());
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
        backend.load_shared(blob, &opts).map_err(|e| e.0)
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
        let key = PreparedKey::of(def);
        let mut p = self.prepared.lock();
        if p.len() >= PREPARED_KEPT {
            p.remove(0);
        }
        p.push((key, model));
    }

    /// Hands over `model`, loaded from `def`'s bytes, for the store of
    /// `def` about to apply (with the same bytes, in the same memory).
    pub fn hand_over(&self, def: &ModelDef, model: Arc<dyn Model>) {
        let key = ModelDef { blob: Blob::default(), ..def.clone() };
        let mut h = self.handed.lock();
        if h.len() >= PREPARED_KEPT {
            h.remove(0);
        }
        h.push((key, addresses(&def.blob), model));
    }

    /// Drops what [`Registry::hand_over`] kept for `def`, if its store did
    /// not take it.
    pub fn forget_handed(&self, def: &ModelDef) {
        let at = addresses(&def.blob);
        self.handed.lock().retain(|(_, a, _)| *a != at);
    }

    /// The validation instance of `def`, if this node loaded one.
    fn take_prepared(&self, def: &ModelDef) -> Option<Arc<dyn Model>> {
        {
            let mut h = self.handed.lock();
            if let Some(i) = h.iter().position(|(d, at, _)| {
                *at == addresses(&def.blob) && *d == ModelDef { blob: Blob::default(), ..def.clone() }
            }) {
                return Some(h.remove(i).2);
            }
        }
        if !self.prepared.lock().iter().any(|(k, _)| k.len == def.blob.len()) {
            return None; // a follower, or another model: no checksum needed
        }
        let key = PreparedKey::of(def);
        let mut p = self.prepared.lock();
        let i = p.iter().position(|(k, _)| *k == key)?;
        Some(p.remove(i).1)
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
                    Err(e) => Reply::err(e),
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

/// [`arrange`] for the model an AI.MODELSTORE carries (any other command
/// comes back as it is).
pub fn arrange_command(mut cmd: NodeCommand) -> NodeCommand {
    if let NodeCommand::ModelStore { model, .. } = &mut cmd {
        arrange(model);
    }
    cmd
}

/// Lays `def`'s bytes out for its runtime in the memory they lie in, when
/// nothing else holds that memory: an ONNX model for the CPU whose large
/// weights lie misaligned (as a real model's do) would otherwise be copied
/// whole when it loads (see `tessera_backend_onnx::weights`), 1× more for a
/// moment. Its bytes then become parts of that memory (the same bytes,
/// with gaps between the parts). Called where a model's bytes were just
/// assembled into a buffer of their own with room to spare
/// ([`tessera_common::blob::layout_room`]): a joined chunked write, a
/// restored snapshot. Other models, and bytes held elsewhere too, stay as
/// they are (their load copies them, if it must).
pub fn arrange(def: &mut ModelDef) {
    #[cfg(feature = "onnx")]
    if def.backend == BackendKind::Onnx && matches!(def.device, Device::Cpu(_)) {
        def.blob = match std::mem::take(&mut def.blob).into_vec() {
            Ok(bytes) => tessera_backend_onnx::weights::arrange(bytes),
            Err(shared) => shared,
        };
    }
    #[cfg(not(feature = "onnx"))]
    let _ = def;
}

/// Run statistics (AI.INFO), in memory on the node that runs the model.
#[derive(Debug, Default)]
pub struct Stats {
    pub duration_us: AtomicU64,
    pub samples: AtomicU64,
    pub calls: AtomicU64,
    pub errors: AtomicU64,
}

impl Stats {
    pub fn reset(&self) {
        for a in [&self.duration_us, &self.samples, &self.calls, &self.errors] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

enum LoadState {
    Loading,
    Ready(Arc<dyn Model>),
    Failed(String),
}

/// A model in the keyspace: its definition (what is replicated and
/// snapshotted), its bytes, the loaded instance, and its run statistics.
pub struct StoredModel {
    /// The definition, without its bytes (in `blob`).
    pub def: ModelDef,
    /// The model's bytes: as they came, or the copy the loaded model keeps
    /// (see [`Model::bytes`]), which takes their place once it loads.
    blob: RwLock<Blob>,
    state: Mutex<LoadState>,
    ready: Condvar,
    pub stats: Stats,
    /// Set once a batch padded to BATCHSIZE failed where the unpadded one
    /// ran (a GPU model whose batch dim is fixed): no more padding.
    pub no_padding: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for StoredModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredModel").field("backend", &self.def.backend).field("bytes", &self.blob_len()).finish()
    }
}

impl PartialEq for StoredModel {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other) || (self.def == other.def && *self.blob.read() == *other.blob.read())
    }
}

impl StoredModel {
    /// A model about to enter the keyspace; loading starts in the background.
    pub fn new(def: ModelDef) -> Arc<StoredModel> {
        if let Some(loaded) = registry().take_prepared(&def) {
            return StoredModel::with_loaded(def, loaded);
        }
        let m = Arc::new(StoredModel::loading(def));
        let bg = m.clone();
        let spawned = std::thread::Builder::new().name("model-load".into()).spawn(move || {
            let result = registry().load(&bg.def, &bg.blob());
            if let Err(e) = &result {
                // The leader checked this model loads before logging it; a
                // replica that cannot (a backend missing here) says why.
                tracing::warn!(backend = %bg.def.backend, error = %e, "stored model does not load on this node");
            }
            bg.set(result);
        });
        if let Err(e) = spawned {
            m.set(Err(format!("ERR cannot start a model loader: {e}")));
        }
        m
    }

    /// A model already loaded (the leader's validation instance).
    pub fn with_loaded(def: ModelDef, model: Arc<dyn Model>) -> Arc<StoredModel> {
        let m = StoredModel::loading(def);
        m.set(Ok(model));
        Arc::new(m)
    }

    fn loading(mut def: ModelDef) -> StoredModel {
        let blob = std::mem::take(&mut def.blob);
        StoredModel {
            def,
            blob: RwLock::new(blob),
            state: Mutex::new(LoadState::Loading),
            ready: Condvar::new(),
            stats: Stats::default(),
            no_padding: Default::default(),
        }
    }

    /// The model's bytes.
    pub fn blob(&self) -> Blob {
        self.blob.read().clone()
    }

    /// The size of the model's bytes.
    pub fn blob_len(&self) -> usize {
        self.blob.read().len()
    }

    fn set(&self, result: Result<Arc<dyn Model>, String>) {
        if let Ok(m) = &result {
            // The model keeps a copy of its bytes (laid out for its
            // runtime): that copy replaces the bytes it was loaded from, and
            // the model is held once.
            if let Some(copy) = m.bytes() {
                // (Compared whole only in debug builds, and not under the
                // write lock: readers go on meanwhile.)
                let same = {
                    let blob = self.blob.read();
                    copy.len() == blob.len() && (!cfg!(debug_assertions) || copy == *blob)
                };
                debug_assert!(same, "a model's copy of its bytes differs from them");
                if same {
                    *self.blob.write() = copy;
                }
            }
        }
        *self.state.lock() = match result {
            Ok(m) => LoadState::Ready(m),
            Err(e) => LoadState::Failed(e),
        };
        self.ready.notify_all();
    }

    /// The loaded model if it is ready now.
    pub fn try_loaded(&self) -> Option<Arc<dyn Model>> {
        match &*self.state.lock() {
            LoadState::Ready(m) => Some(m.clone()),
            _ => None,
        }
    }

    /// The loaded model, waiting while it loads (blocking).
    pub fn loaded(&self) -> Result<Arc<dyn Model>, String> {
        let mut s = self.state.lock();
        loop {
            match &*s {
                LoadState::Ready(m) => return Ok(m.clone()),
                LoadState::Failed(e) => return Err(e.clone()),
                LoadState::Loading => self.ready.wait(&mut s),
            }
        }
    }
}
