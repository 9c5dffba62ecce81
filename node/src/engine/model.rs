//! [`StoredModel`] — a model as the keyspace holds it — and how a model's
//! bytes are laid out for its runtime.
//!
//! A stored model starts loading in the background the moment a replica
//! applies it (or restores it from a snapshot), so a replica that becomes
//! leader serves it at once; a run that arrives mid-load waits for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use tessera_backend::Model;
#[cfg(feature = "onnx")]
use tessera_backend::{BackendKind, Device};
use tessera_common::blob::Blob;
use tessera_common::command::NodeCommand;
use tessera_common::model::ModelDef;

use super::ready::Ready;
use super::registry::registry;
use crate::error::Error;

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

/// A model in the keyspace: its definition (what is replicated and
/// snapshotted), its bytes, the loaded instance, and its run statistics.
pub struct StoredModel {
    /// The definition, without its bytes (in `blob`).
    pub def: ModelDef,
    /// The model's bytes: as they came, or the copy the loaded model keeps
    /// (see [`Model::bytes`]), which takes their place once it loads.
    blob: RwLock<Blob>,
    loaded: Ready<Arc<dyn Model>>,
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
    /// A model about to enter the keyspace, not loaded yet: whoever puts it
    /// there starts its load ([`StoredModel::start_loading`]), once the
    /// write that holds it has applied.
    pub fn new(def: ModelDef) -> Arc<StoredModel> {
        Arc::new(StoredModel::loading(def))
    }

    /// A model already loaded (the leader's validation instance).
    pub fn with_loaded(def: ModelDef, model: Arc<dyn Model>) -> Arc<StoredModel> {
        let m = StoredModel::loading(def);
        m.set(Ok(model));
        Arc::new(m)
    }

    /// Makes the model ready to run: with `handed`, the instance this node
    /// loaded from the very bytes it holds (a leader's check of a chunked
    /// write), else the one the leader's check kept in the registry, else a
    /// load in the background. A run that comes meanwhile waits for it. Only
    /// the first call does anything.
    pub fn start_loading(self: &Arc<Self>, handed: Option<Arc<dyn Model>>) {
        if !self.loaded.start() {
            return;
        }
        if let Some(loaded) = handed.or_else(|| registry().take_prepared(&self.def, &self.blob())) {
            self.set(Ok(loaded));
            return;
        }
        let bg = self.clone();
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
            self.set(Err(Error::LoadFailed(format!("cannot start a model loader: {e}"))));
        }
    }

    fn loading(mut def: ModelDef) -> StoredModel {
        let blob = std::mem::take(&mut def.blob);
        StoredModel {
            def,
            blob: RwLock::new(blob),
            loaded: Ready::default(),
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

    fn set(&self, result: Result<Arc<dyn Model>, Error>) {
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
        self.loaded.set(result);
    }

    /// The loaded model if it is ready now.
    pub fn try_loaded(&self) -> Option<Arc<dyn Model>> {
        self.loaded.get()
    }

    /// The loaded model, waiting while it loads (blocking); starting the
    /// load if nothing did yet.
    pub fn loaded(self: &Arc<Self>) -> Result<Arc<dyn Model>, Error> {
        self.start_loading(None);
        self.loaded.wait()
    }
}
