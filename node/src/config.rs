//! `tessera-node` configuration: clap flags with env fallbacks, validated
//! into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Parser;
use tessera_common::slot::{SlotRange, SLOTS};
use tessera_telemetry::LogFormat;

#[derive(Parser, Debug, Clone)]
#[command(name = "tessera-node", version, about = "Tessera storage node")]
pub struct Args {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "TESSERA_NODE_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "TESSERA_NODE_METRICS", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    /// Stable node id (40 hex characters are generated from it).
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: String,
    /// A shard this node hosts: `ID:RANGES`, ranges as `a-b` or `s`, comma
    /// separated (e.g. `0:0-5460`). Repeat for each shard.
    #[arg(long = "shard", env = "TESSERA_NODE_SHARDS", value_delimiter = ';', required = true)]
    pub shards: Vec<String>,
    /// Folder for this node's files.
    #[arg(long, env = "TESSERA_NODE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Log line format.
    #[arg(long, env = "TESSERA_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Async runtime worker threads (default: one per CPU).
    #[arg(long, env = "TESSERA_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Print `READY <grpc-addr> <metrics-addr>` on stdout once listening.
    #[arg(long)]
    pub print_ready: bool,
}

#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub id: u32,
    pub ranges: Vec<SlotRange>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    pub shards: Vec<ShardSpec>,
    pub data_dir: PathBuf,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut shards = Vec::new();
        let mut owner = vec![None; usize::from(SLOTS)];
        for s in &self.shards {
            let (id, ranges) = s
                .split_once(':')
                .with_context(|| format!("shard '{s}' is not ID:RANGES"))?;
            let id: u32 = id.trim().parse().with_context(|| format!("shard id in '{s}'"))?;
            let ranges = ranges
                .split(',')
                .map(|r| SlotRange::parse(r.trim()).with_context(|| format!("slot range '{r}' in '{s}'")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for r in &ranges {
                for slot in r.start..=r.end {
                    if let Some(other) = owner[usize::from(slot)].replace(id) {
                        bail!("slot {slot} is given to shard {other} and shard {id}");
                    }
                }
            }
            shards.push(ShardSpec { id, ranges });
        }
        if self.node_id.trim().is_empty() {
            bail!("--node-id must not be empty");
        }
        Ok(Config {
            node_id: self.node_id.clone(),
            shards,
            data_dir: self.data_dir.clone(),
        })
    }
}
