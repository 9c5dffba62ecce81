//! `tessera-node` configuration: clap flags with env fallbacks, validated
//! into [`Config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tessera_common::slot::SlotRange;
use tessera_telemetry::ProcessArgs;

#[derive(Parser, Debug, Clone)]
#[command(name = "tessera-node", version, about = "Tessera storage node")]
pub struct Args {
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "TESSERA_NODE_LISTEN", default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "TESSERA_NODE_METRICS", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    /// This node's id: a positive integer, never reused for another node, or
    /// `from-hostname` for the StatefulSet ordinal of this host's name (its
    /// trailing `-N`) plus one, so pod `tessera-storage-0` is node 1.
    #[arg(long, env = "TESSERA_NODE_ID")]
    pub node_id: NodeId,
    /// The storage nodes the cluster is formed with, as `ID=HOST:PORT`, comma
    /// separated (StatefulSet DNS names work as hosts). The first three host
    /// the meta group. A node started later and not listed registers itself
    /// (see `--advertise`) and hosts what the cluster map gives it.
    #[arg(long = "peer", env = "TESSERA_NODE_PEERS", value_delimiter = ',', required = true)]
    pub peers: Vec<String>,
    /// The address other nodes and routers reach this node at, when it is
    /// not in the `--peer` list (a node joining a running cluster); defaults
    /// to the listen address.
    #[arg(long, env = "TESSERA_NODE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Number of shards the 16384 slots are split into.
    #[arg(long, env = "TESSERA_SHARDS", default_value_t = 6)]
    pub shards: u32,
    /// Replicas per shard (Raft voters), at most the number of nodes.
    #[arg(long, env = "TESSERA_REPLICAS", default_value_t = 3)]
    pub replicas: usize,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, env = "TESSERA_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Raft election timeout (lower bound; the upper bound is twice it), ms.
    #[arg(long, env = "TESSERA_ELECTION_TIMEOUT_MS", default_value_t = 400)]
    pub election_timeout_ms: u64,
    /// How reads are made linearizable: `lease` (no round trip while a
    /// quorum acknowledged the leader within half its lease; assumes the
    /// leader's clock runs at least half as fast as its followers') or
    /// `read-index` (the leader confirms its leadership with a quorum for
    /// every batch of reads; no clock assumption). `lease` by default: it
    /// held under the chaos suite's pauses and slowed leader clocks, and
    /// answers a third more GETs at one request per round trip
    /// (docs/replication.md#lease-reads).
    #[arg(long, env = "TESSERA_READ_POLICY", value_enum, default_value = "lease")]
    pub read_policy: ReadMode,
    /// How read-only DAGs (AI.DAGEXECUTE_RO, and AI.DAGEXECUTE with neither
    /// PERSIST nor a script) are made linearizable, on the leader and for
    /// the read index a follower asks it for; `lease` by default, as for
    /// `--read-policy`.
    #[arg(long, env = "TESSERA_DAG_READ_POLICY", value_enum, default_value = "lease")]
    pub dag_read_policy: ReadMode,
    /// Free space (MiB) kept on the data disk: writes that would eat into it
    /// are refused with `MISCONF disk full ...` until space is freed (0 turns
    /// the check off).
    #[arg(long, env = "TESSERA_MIN_FREE_MB", default_value_t = 256)]
    pub min_free_mb: u64,
    /// Log entries between snapshots.
    #[arg(long, env = "TESSERA_SNAPSHOT_LOGS", default_value_t = 100_000)]
    pub snapshot_logs: u64,
    /// Folder for this node's files.
    #[arg(long, env = "TESSERA_NODE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub cluster_tls: tessera_proto::tls::ClusterTlsArgs,
    #[command(flatten)]
    pub process: ProcessArgs,
}

/// `--node-id`: a number, or one derived from the host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeId {
    Given(u64),
    FromHostname,
}

impl std::str::FromStr for NodeId {
    type Err = String;
    fn from_str(s: &str) -> Result<NodeId, String> {
        if s == "from-hostname" {
            return Ok(NodeId::FromHostname);
        }
        s.parse().map(NodeId::Given).map_err(|_| format!("'{s}' is neither a positive integer nor from-hostname"))
    }
}

impl NodeId {
    /// The id, reading the host name (`HOSTNAME`, else the kernel's) when
    /// asked to.
    pub fn resolve(self) -> anyhow::Result<u64> {
        match self {
            NodeId::Given(id) => Ok(id),
            NodeId::FromHostname => {
                let name = match std::env::var("HOSTNAME") {
                    Ok(h) if !h.is_empty() => h,
                    _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .context("reading the host name for --node-id from-hostname")?
                        .trim()
                        .to_string(),
                };
                id_from_hostname(&name)
            }
        }
    }
}

/// `tessera-storage-2` → 3: the StatefulSet ordinal plus one.
pub fn id_from_hostname(name: &str) -> anyhow::Result<u64> {
    let short = name.split('.').next().unwrap_or(name);
    let ordinal = short
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .with_context(|| format!("--node-id from-hostname: host name '{name}' does not end in -ORDINAL"))?;
    Ok(ordinal + 1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    ReadIndex,
    Lease,
}

/// A shard: its slots and the nodes holding its replicas (the first one
/// forms the group on first start, which spreads initial leaders evenly).
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub id: u32,
    pub ranges: Vec<SlotRange>,
    pub replicas: Vec<u64>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u64,
    /// This node's address as other nodes and routers reach it.
    pub advertise: String,
    pub peers: BTreeMap<u64, String>,
    /// Every shard of the cluster (this node hosts those listing it).
    pub shards: Vec<ShardSpec>,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub election_timeout: Duration,
    pub snapshot_logs: u64,
    pub read_mode: ReadMode,
    pub dag_read_mode: ReadMode,
    pub min_free_bytes: u64,
}

/// Deterministic placement: shard `s` on `replicas` consecutive nodes
/// starting at node `s mod n` (in id order).
pub fn place(shards: u32, node_ids: &[u64], replicas: usize) -> Vec<ShardSpec> {
    let ranges = SlotRange::split_even(shards as usize);
    let n = node_ids.len();
    (0..shards)
        .map(|s| ShardSpec {
            id: s,
            ranges: vec![ranges[s as usize]],
            replicas: (0..replicas.min(n)).map(|k| node_ids[(s as usize + k) % n]).collect(),
        })
        .collect()
}

impl Args {
    pub fn config(&self) -> anyhow::Result<Config> {
        let node_id = self.node_id.resolve()?;
        if node_id == 0 {
            bail!("--node-id must be a positive integer");
        }
        let mut peers = BTreeMap::new();
        for p in &self.peers {
            let (id, addr) = p.split_once('=').with_context(|| format!("peer '{p}' is not ID=HOST:PORT"))?;
            let id: u64 = id.trim().parse().with_context(|| format!("peer id in '{p}'"))?;
            if id == 0 || peers.insert(id, addr.trim().to_string()).is_some() {
                bail!("peer id {id} is zero or given twice");
            }
        }
        let advertise = match (peers.get(&node_id), &self.advertise) {
            (Some(listed), Some(a)) if listed != a => {
                bail!("--advertise {a} differs from this node's --peer entry {listed}")
            }
            (Some(listed), _) => listed.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => self.listen.to_string(),
        };
        if self.shards == 0 || self.shards > 16384 || self.replicas == 0 {
            bail!("--shards must be 1..=16384 and --replicas positive");
        }
        if self.election_timeout_ms <= self.heartbeat_ms {
            bail!("--election-timeout-ms must exceed --heartbeat-ms");
        }
        let ids: Vec<u64> = peers.keys().copied().collect();
        Ok(Config {
            node_id,
            advertise,
            shards: place(self.shards, &ids, self.replicas),
            peers,
            data_dir: self.data_dir.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            election_timeout: Duration::from_millis(self.election_timeout_ms),
            snapshot_logs: self.snapshot_logs,
            read_mode: self.read_policy,
            dag_read_mode: self.dag_read_policy,
            min_free_bytes: self.min_free_mb << 20,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_and_first_replicas() {
        let p = place(6, &[1, 2, 3], 3);
        assert_eq!(p[0].replicas, [1, 2, 3]);
        assert_eq!(p[1].replicas, [2, 3, 1]);
        let firsts: Vec<u64> = p.iter().map(|s| s.replicas[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        let p = place(4, &[1, 2, 3, 4, 5], 3);
        assert_eq!(p[3].replicas, [4, 5, 1]);
        assert_eq!(place(2, &[7], 3)[1].replicas, [7]);
    }

    #[test]
    fn node_id_from_a_statefulset_host_name() {
        assert_eq!(id_from_hostname("tessera-storage-0").unwrap(), 1);
        assert_eq!(id_from_hostname("tessera-storage-11.tessera-storage.ns.svc").unwrap(), 12);
        assert!(id_from_hostname("storage").is_err());
        assert!(id_from_hostname("storage-x").is_err());
        assert_eq!("7".parse::<NodeId>(), Ok(NodeId::Given(7)));
        assert_eq!("from-hostname".parse::<NodeId>(), Ok(NodeId::FromHostname));
        assert!("node".parse::<NodeId>().is_err());
    }
}
