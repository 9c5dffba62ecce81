//! [`StoredScript`] — a script as the keyspace holds it: its definition
//! (what is replicated), the compiled script, and its run statistics.
//!
//! The source is what replicas hold; each compiles it in the background
//! once the write that stores it has applied (or it is restored from a
//! snapshot), so a replica that becomes leader runs it at once; a run that
//! arrives mid-compile waits for it.

use std::sync::Arc;

use tessera_backend::script::Script;
use tessera_common::model::ScriptDef;

use super::model::Stats;
use super::ready::Ready;
use super::registry::registry;
use crate::error::Error;

pub struct StoredScript {
    pub def: ScriptDef,
    compiled: Ready<Arc<dyn Script>>,
    pub stats: Stats,
}

impl std::fmt::Debug for StoredScript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredScript")
            .field("device", &self.def.device)
            .field("source", &self.def.source.len())
            .finish()
    }
}

impl PartialEq for StoredScript {
    fn eq(&self, other: &Self) -> bool {
        self.def == other.def
    }
}

impl StoredScript {
    /// A script about to enter the keyspace, not compiled yet: whoever puts
    /// it there starts that ([`StoredScript::start_compiling`]).
    pub fn new(def: ScriptDef) -> Arc<StoredScript> {
        Arc::new(StoredScript { def, compiled: Ready::default(), stats: Stats::default() })
    }

    /// Compiles the script in the background (the first call only).
    pub fn start_compiling(self: &Arc<Self>) {
        if !self.compiled.start() {
            return;
        }
        let bg = self.clone();
        let spawned = std::thread::Builder::new().name("script-compile".into()).spawn(move || {
            let result = registry().compile_script(&bg.def);
            if let Err(e) = &result {
                // The leader checked it compiles before logging it; a replica
                // that cannot (no TORCH backend here) says why.
                tracing::warn!(error = %e, "stored script does not compile on this node");
            }
            bg.compiled.set(result);
        });
        if let Err(e) = spawned {
            self.compiled.set(Err(Error::LoadFailed(format!("cannot start a script compiler: {e}"))));
        }
    }

    /// The compiled script if it is ready now.
    pub fn try_compiled(&self) -> Option<Arc<dyn Script>> {
        self.compiled.get()
    }

    /// The compiled script, waiting while it compiles (blocking); starting
    /// that if nothing did yet.
    pub fn compiled(self: &Arc<Self>) -> Result<Arc<dyn Script>, Error> {
        self.start_compiling();
        self.compiled.wait()
    }
}
