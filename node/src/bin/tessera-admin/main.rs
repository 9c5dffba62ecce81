//! `tessera-admin`: cluster administration from the command line.
//!
//! ```text
//! tessera-admin --node 127.0.0.1:7101 status
//! tessera-admin --node 127.0.0.1:7101 add-node 4 127.0.0.1:7104
//! tessera-admin --node 127.0.0.1:7101 move-replica 2 1 4
//! tessera-admin --node 127.0.0.1:7101 transfer-leader 2 3
//! tessera-admin --node 127.0.0.1:7101 remove-node 1
//! tessera-admin --node 127.0.0.1:7101 rebalance [--dry-run]
//! tessera-admin --node 127.0.0.1:7101 step-down
//! tessera-admin certs --dir ./tls [--host router.example] [--days 365]
//! ```
//! Any node will do: requests find the meta leader by themselves, except
//! `step-down`, which acts on the first `--node`.
//!
//! Modules: [`rebalance`] runs the plan of [`tessera_node::cluster::rebalance`];
//! [`step_down`] hands a node's leaderships away.

mod rebalance;
mod step_down;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tessera_node::cluster::admin::{AdminClients, AdminRequest, AdminResponse, GroupOp};
use tessera_node::error::Error;
use tessera_node::state::meta::{ClusterMap, META};
use tessera_proto::v1::node_client::NodeClient;
use tessera_proto::v1::{ShardsRequest, ShardsResponse};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(name = "tessera-admin", version, about = "Tessera cluster administration")]
struct Args {
    /// Any node(s) of the cluster (gRPC addresses), comma separated.
    #[arg(long = "node", env = "TESSERA_ADMIN_NODES", value_delimiter = ',', default_value = "127.0.0.1:7101")]
    nodes: Vec<String>,
    /// How long to wait for the operation (catching up a replica can take a
    /// while); for `rebalance`, for each of its steps.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// On a cluster with TLS inside it, the cluster's certificate: the
    /// nodes answer no one else.
    #[command(flatten)]
    cluster_tls: tessera_proto::tls::ClusterTlsArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The cluster map, and each replica's view of its group.
    Status,
    /// Registers a node (it then hosts what replicas are moved to it).
    AddNode { id: u64, addr: String },
    /// Moves every replica off a node, then removes it (its id is never reused).
    RemoveNode { id: u64 },
    /// Moves a group's replica (`meta` or a shard id) between nodes:
    /// learner, catch up, promote, remove.
    MoveReplica { group: String, from: u64, to: u64 },
    /// Makes `to` the leader of a group.
    TransferLeader { group: String, to: u64 },
    /// Spreads replicas, then shard leaders, evenly over the live nodes:
    /// prints the plan (one `move-replica` / `transfer-leader` per line) and
    /// runs it step by step, stopping at the first failure.
    Rebalance {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hands every leadership the first `--node` holds to another voter of
    /// the group, and waits until it leads nothing (a preStop hook).
    StepDown,
    /// Writes a throwaway CA and certificates it signs into a folder, for
    /// a local or test cluster's TLS: ca.crt/key, server.crt/key (for
    /// localhost, 127.0.0.1, ::1 and each --host) and client.crt/key.
    /// Talks to no node.
    Certs {
        /// The folder to write (created if missing; files are replaced).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// Another name or address the server certificate is valid for.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// What every command talks to: the nodes given, the admin channels, and
/// one channel per node for its `Shards` answers.
pub(crate) struct Cluster {
    pub(crate) nodes: Vec<String>,
    pub(crate) clients: AdminClients,
    /// How long one operation may take.
    pub(crate) budget: Duration,
    channels: parking_lot::Mutex<BTreeMap<String, Channel>>,
}

impl Cluster {
    /// Runs an operation on the meta leader. Operations are idempotent: one
    /// cut short by a leader change (`TRYAGAIN ...`) is simply run again,
    /// within the time budget. `Ok` carries the `Done` message.
    pub(crate) async fn run(&self, req: &AdminRequest) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + self.budget;
        let mut answer = self.clients.ask_leader(&self.nodes, req, self.budget).await;
        while let Ok(AdminResponse::Error(e)) = &answer {
            if !e.starts_with("TRYAGAIN") || tokio::time::Instant::now() >= deadline {
                break;
            }
            eprintln!("{e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            answer = self.clients.ask_leader(&self.nodes, req, left).await;
        }
        match answer {
            Ok(AdminResponse::Done(msg)) => Ok(msg),
            Ok(AdminResponse::Error(e)) => Err(e),
            Ok(r) => Err(format!("unexpected answer {r:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The cluster map, read on the meta leader.
    pub(crate) async fn map(&self, budget: Duration) -> Result<ClusterMap, Error> {
        match self.clients.ask_leader(&self.nodes, &AdminRequest::Map, budget).await? {
            AdminResponse::Map(m) => Ok(m),
            r => Err(Error::Unexpected(format!("{r:?}"))),
        }
    }

    /// The node at `addr`'s id and its replicas' view of their groups
    /// (shards only: the meta group is not listed).
    pub(crate) async fn shards(&self, addr: &str) -> Result<ShardsResponse, String> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let c = tessera_proto::tls::lazy_channel(
                        Endpoint::from_shared(format!("http://{addr}"))
                            .map_err(|e| e.to_string())?
                            .connect_timeout(Duration::from_secs(1)),
                    );
                    channels.insert(addr.to_owned(), c.clone());
                    c
                }
            }
        };
        let call = async { NodeClient::new(channel).shards(ShardsRequest {}).await };
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(e)) => Err(e.message().to_owned()),
            Err(_) => Err("no answer".into()),
        }
    }
}

fn group_id(g: &str) -> Result<u32, String> {
    if g.eq_ignore_ascii_case("meta") {
        return Ok(META);
    }
    g.parse().map_err(|_| format!("group must be a shard id or 'meta', not '{g}'"))
}

pub(crate) fn group_name(id: u32) -> String {
    if id == META {
        "meta".into()
    } else {
        format!("shard {id}")
    }
}

async fn status(c: &Cluster) -> Result<String, Error> {
    let map = c.map(Duration::from_secs(10)).await?;
    let mut out = print_map(&map);
    // The meta leader: the meta voter that answers a leader-only step.
    let ask = AdminRequest::Group { group: META, op: GroupOp::Membership };
    for id in map.groups.get(&META).map(|g| g.voters.clone()).unwrap_or_default() {
        let Some(addr) = map.addr(id) else { continue };
        if let Ok(AdminResponse::Membership { .. }) = c.clients.ask(addr, &ask, Duration::from_secs(2)).await {
            out.push_str(&format!("meta leader {id}\n"));
            break;
        }
    }
    for (id, n) in &map.nodes {
        match c.shards(&n.addr).await {
            Ok(r) => {
                for s in r.shards {
                    out.push_str(&format!(
                        "node {id} shard {}: leader {} term {} commit {} applied {}\n",
                        s.id, s.leader_id, s.term, s.commit_index, s.applied_index
                    ));
                }
            }
            Err(e) => out.push_str(&format!("node {id}: {e}\n")),
        }
    }
    Ok(out)
}

fn print_map(map: &ClusterMap) -> String {
    let mut out = format!("epoch {}\n", map.epoch);
    for (id, n) in &map.nodes {
        out.push_str(&format!("node {id} {} {:?}\n", n.addr, n.status));
    }
    for (id, g) in &map.groups {
        let slots: Vec<String> = g.ranges.iter().map(|r| format!("{}-{}", r.start, r.end)).collect();
        out.push_str(&format!(
            "{} slots [{}] voters {:?} learners {:?} generation {}\n",
            group_name(*id),
            slots.join(","),
            g.voters,
            g.learners,
            g.generation
        ));
    }
    out
}

/// Exit status 1 with the error on stderr, or 0.
fn finish(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Certs { dir, hosts, days } = &args.cmd {
        let written = tessera_node::certs::write_set(dir, hosts, *days).map_err(|e| format!("{e:#}"));
        return finish(written.map(|_| println!("OK certificates in {}", dir.display())));
    }
    if let Err(e) = args.cluster_tls.install() {
        return finish(Err(e));
    }
    let c = Cluster {
        nodes: args.nodes,
        clients: AdminClients::default(),
        budget: Duration::from_secs(args.timeout_secs),
        channels: Default::default(),
    };
    let req = match &args.cmd {
        Cmd::Status => return finish(status(&c).await.map(|s| print!("{s}")).map_err(|e| e.to_string())),
        Cmd::Rebalance { dry_run } => return finish(rebalance::rebalance(&c, *dry_run).await),
        Cmd::StepDown => return finish(step_down::step_down(&c).await),
        Cmd::Certs { .. } => unreachable!("handled above"),
        Cmd::AddNode { id, addr } => AdminRequest::AddNode { id: *id, addr: addr.clone() },
        Cmd::RemoveNode { id } => AdminRequest::RemoveNode { id: *id },
        Cmd::MoveReplica { group, from, to } => match group_id(group) {
            Ok(group) => AdminRequest::MoveReplica { group, from: *from, to: *to },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Cmd::TransferLeader { group, to } => match group_id(group) {
            Ok(group) => AdminRequest::TransferLeader { group, to: *to },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    finish(c.run(&req).await.map(|msg| println!("OK {msg}")))
}
