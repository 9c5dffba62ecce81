//! `tessera-router` configuration: clap flags with env fallbacks, validated
//! into [`Config`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tessera_telemetry::ProcessArgs;

use crate::codec::Limits;
use crate::topology::Endpoint;

#[derive(Parser, Debug, Clone)]
#[command(name = "tessera-router", version, about = "Tessera router (RESP2/RESP3, Redis Cluster protocol)")]
pub struct Args {
    /// Plain port: clients that do not speak the cluster protocol see one big
    /// Redis here (KEYS/SCAN/DBSIZE cover every slot).
    #[arg(long, env = "TESSERA_ROUTER_LISTEN", default_value = "127.0.0.1:6379")]
    pub listen: SocketAddr,
    /// Cluster ports: each is advertised as one master of the virtual
    /// topology; keyspace-wide commands there cover that master's slots.
    #[arg(long = "cluster-listen", env = "TESSERA_ROUTER_CLUSTER_LISTEN", value_delimiter = ',',
          default_values_t = vec!["127.0.0.1:7001".parse::<SocketAddr>().unwrap(), "127.0.0.1:7002".parse().unwrap()])]
    pub cluster_listen: Vec<SocketAddr>,
    /// Every advertised endpoint of the router fleet, identical on every
    /// router (defaults to this router's cluster ports): `IP:PORT`, or
    /// `NAME:PORT` where clients resolve a name (a Kubernetes Service).
    #[arg(long, env = "TESSERA_ROUTER_ADVERTISE", value_delimiter = ',')]
    pub advertise: Vec<Endpoint>,
    /// Storage nodes' gRPC addresses.
    #[arg(long = "node", env = "TESSERA_ROUTER_NODES", value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "TESSERA_ROUTER_METRICS", default_value = "127.0.0.1:9121")]
    pub metrics_listen: SocketAddr,
    /// Largest bulk string a client may send (proto-max-bulk-len).
    #[arg(long, env = "TESSERA_MAX_BULK_LEN", default_value_t = 512 * 1024 * 1024)]
    pub max_bulk_len: usize,
    /// Most elements in one request array.
    #[arg(long, env = "TESSERA_MAX_ARRAY_LEN", default_value_t = 16 * 1024 * 1024)]
    pub max_array_len: usize,
    /// Longest inline command line.
    #[arg(long, env = "TESSERA_MAX_INLINE_LEN", default_value_t = 64 * 1024)]
    pub max_inline_len: usize,
    /// Most concurrent client connections.
    #[arg(long, env = "TESSERA_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Most commands of one connection in flight at once (pipelining depth).
    #[arg(long, env = "TESSERA_MAX_PIPELINE", default_value_t = 1024)]
    pub max_pipeline: usize,
    /// How long to wait for every node at start-up, in seconds.
    #[arg(long, env = "TESSERA_NODE_WAIT_SECS", default_value_t = 30)]
    pub node_wait_secs: u64,
    /// Spread AI.DAGEXECUTE_RO and AI.DAGRUN_RO over every replica of their
    /// shard, not only its leader: a follower runs one once it has applied
    /// up to the leader's read index (still linearizable). See
    /// docs/dags.md for when it helps.
    #[arg(long, env = "TESSERA_FOLLOWER_READS", default_value_t = false)]
    pub follower_reads: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub limits: Limits,
    pub max_clients: usize,
    pub max_pipeline: usize,
    pub nodes: Vec<String>,
    pub node_wait: Duration,
    /// Advertised endpoints; empty means "this router's cluster listeners".
    pub advertise: Vec<Endpoint>,
    /// Read-only DAGs go to any replica (`--follower-reads`).
    pub follower_reads: bool,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<Config> {
        if self.max_pipeline == 0 || self.max_clients == 0 {
            anyhow::bail!("--max-pipeline and --max-clients must be positive");
        }
        Ok(Config {
            limits: Limits {
                max_bulk_len: self.max_bulk_len,
                max_array_len: self.max_array_len,
                max_inline_len: self.max_inline_len,
            },
            max_clients: self.max_clients,
            max_pipeline: self.max_pipeline,
            nodes: self.nodes.clone(),
            node_wait: Duration::from_secs(self.node_wait_secs),
            advertise: self.advertise.clone(),
            follower_reads: self.follower_reads,
        })
    }
}
