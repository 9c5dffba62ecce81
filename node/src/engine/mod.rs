//! Running models: the registry of backends and node AI settings
//! ([`registry`]), models as the keyspace holds them ([`model`]), and the
//! per-device run queues that batch and run them ([`queue`]). The engine
//! knows nothing of keys, logs or shards.

pub mod model;
pub mod queue;
pub mod registry;

pub use queue::{engine, RunResult};
