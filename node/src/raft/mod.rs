//! Everything openraft (`=0.10.0-alpha.37`) touches lives in this module: the
//! type configuration, our durable log store ([`store`]), the state machine
//! adapter over a shard's data ([`sm`]), and the node-to-node network
//! ([`network`]: client; [`transport`]: server). Nothing outside this module
//! names an openraft type.

pub mod group;
pub mod logfile;
pub mod network;
mod read_gate;
pub mod sm;
pub mod store;
pub mod transport;
pub mod wire;

mod types;

pub use openraft::Config as RaftConfig;
pub use sm::{Raft, SnapshotData};
pub use types::{NodeAddr, TypeConfig, C};

/// Every group's Raft settings, from the node's flags.
pub fn raft_config(config: &crate::config::Config) -> anyhow::Result<std::sync::Arc<RaftConfig>> {
    let c = RaftConfig {
        cluster_name: "tessera".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election_timeout.as_millis() as u64,
        election_timeout_max: 2 * config.election_timeout.as_millis() as u64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_logs),
        // Entries kept behind a snapshot so a briefly lagging replica catches
        // up from the log; further behind, it gets the snapshot.
        max_in_snapshot_log_to_keep: (config.snapshot_logs / 10).min(1000),
        purge_batch_size: (config.snapshot_logs / 10).clamp(1, 256),
        ..Default::default()
    };
    Ok(std::sync::Arc::new(c.validate().map_err(|e| anyhow::anyhow!("raft config: {e}"))?))
}
