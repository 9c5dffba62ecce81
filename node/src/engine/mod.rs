//! Running models and scripts: the registry of backends and node AI
//! settings ([`registry`]), models and scripts as the keyspace holds them
//! ([`model`], [`script`]), and the per-device run queues that batch and
//! run them ([`queue`]). The engine knows nothing of keys, logs or shards.

pub mod model;
pub mod queue;
pub mod ready;
pub mod registry;
pub mod script;

pub use queue::{engine, RunResult};
