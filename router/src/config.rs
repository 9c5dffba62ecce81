//! `tessera-router` configuration: clap flags with env fallbacks, validated
//! into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tessera_telemetry::ProcessArgs;

use crate::codec::Limits;
use crate::tls::{AuthClients, TlsSettings};
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
    /// TLS port beside the plain one (Redis's `tls-port`): the same
    /// commands over TLS. Needs --tls-cert and --tls-key.
    #[arg(long, env = "TESSERA_ROUTER_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// TLS cluster ports, one per cluster port and in the same order: the
    /// i-th serves the same advertised master as the i-th cluster port.
    /// Cluster clients on a TLS port are given TLS endpoints.
    #[arg(long = "tls-cluster-listen", env = "TESSERA_ROUTER_TLS_CLUSTER_LISTEN", value_delimiter = ',')]
    pub tls_cluster_listen: Vec<SocketAddr>,
    /// Advertised TLS endpoints, paired with --advertise in its order
    /// (defaults to this router's TLS cluster ports).
    #[arg(long, env = "TESSERA_ROUTER_TLS_ADVERTISE", value_delimiter = ',')]
    pub tls_advertise: Vec<Endpoint>,
    /// Serve TLS only: no plain ports are opened (Redis's `port 0`).
    #[arg(long, env = "TESSERA_ROUTER_TLS_ONLY")]
    pub tls_only: bool,
    /// The router's certificate chain (PEM), for its TLS ports.
    #[arg(long, env = "TESSERA_ROUTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TESSERA_ROUTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, env = "TESSERA_ROUTER_TLS_CA_CERT")]
    pub tls_ca_cert: Option<PathBuf>,
    /// Client certificates: `yes` (required, Redis's default), `optional`
    /// (checked when offered) or `no`.
    #[arg(long, env = "TESSERA_ROUTER_TLS_AUTH_CLIENTS", default_value = "yes")]
    pub tls_auth_clients: AuthClients,
    /// TLS versions offered, space- or comma-separated.
    #[arg(long, env = "TESSERA_ROUTER_TLS_PROTOCOLS", default_value = "TLSv1.2 TLSv1.3")]
    pub tls_protocols: String,
    /// How often the certificate files are checked for changes, in seconds
    /// (0: reload only on SIGHUP).
    #[arg(long, env = "TESSERA_ROUTER_TLS_RELOAD_SECS", default_value_t = 10)]
    pub tls_reload_secs: u64,
    /// The default user's password (Redis's `requirepass`): clients must
    /// AUTH before any other command.
    #[arg(long, env = "TESSERA_ROUTER_REQUIREPASS", hide_env_values = true)]
    pub requirepass: Option<String>,
    /// Users in Redis's ACL file format (`user <name> <rules...>` per
    /// line): with `--requirepass`, the users a cluster that has none
    /// starts with; `ACL LOAD` sends it to the cluster again, `ACL SAVE`
    /// writes the cluster's users to it.
    #[arg(long, env = "TESSERA_ROUTER_ACL_FILE")]
    pub acl_file: Option<PathBuf>,
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
    pub cluster_tls: tessera_proto::tls::ClusterTlsArgs,
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
    /// Advertised TLS endpoints; empty means "this router's TLS cluster listeners".
    pub tls_advertise: Vec<Endpoint>,
    /// No plain listeners (`--tls-only`).
    pub tls_only: bool,
    /// The TLS ports' certificates and rules, when there are TLS ports.
    pub tls: Option<TlsSettings>,
    /// The ACL file's path and its text at start, and the default user's
    /// password, when given.
    pub acl_path: Option<std::path::PathBuf>,
    pub acl_file: Option<String>,
    pub requirepass: Option<String>,
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
                unauthenticated: false,
            },
            max_clients: self.max_clients,
            max_pipeline: self.max_pipeline,
            nodes: self.nodes.clone(),
            node_wait: Duration::from_secs(self.node_wait_secs),
            advertise: self.advertise.clone(),
            follower_reads: self.follower_reads,
            tls_advertise: self.tls_advertise.clone(),
            tls_only: self.tls_only,
            tls: self.tls_settings()?,
            acl_file: match &self.acl_file {
                Some(p) => {
                    Some(std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("--acl-file {}: {e}", p.display()))?)
                }
                None => None,
            },
            acl_path: self.acl_file.clone(),
            requirepass: self.requirepass.clone(),
        })
    }

    /// Whether any TLS port is asked for.
    pub fn serves_tls(&self) -> bool {
        self.tls_listen.is_some() || !self.tls_cluster_listen.is_empty()
    }

    fn tls_settings(&self) -> anyhow::Result<Option<TlsSettings>> {
        if !self.serves_tls() {
            if self.tls_only {
                anyhow::bail!("--tls-only needs --tls-listen or --tls-cluster-listen");
            }
            if !self.tls_advertise.is_empty() {
                anyhow::bail!("--tls-advertise needs TLS ports (--tls-cluster-listen)");
            }
            return Ok(None);
        }
        if self.tls_only && !self.advertise.is_empty() {
            anyhow::bail!("--tls-only advertises TLS endpoints only: give --tls-advertise, not --advertise");
        }
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            anyhow::bail!("TLS ports need --tls-cert and --tls-key");
        };
        let protocols = self
            .tls_protocols
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--tls-protocols: {e}"))?;
        Ok(Some(TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            ca_cert: self.tls_ca_cert.clone(),
            auth_clients: self.tls_auth_clients,
            protocols,
            reload_every: (self.tls_reload_secs > 0).then(|| Duration::from_secs(self.tls_reload_secs)),
        }))
    }
}
