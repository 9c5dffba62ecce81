//! `tessera-admin`: cluster administration from the command line.
//!
//! ```text
//! tessera-admin --node 127.0.0.1:7101 status
//! tessera-admin --node 127.0.0.1:7101 add-node 4 127.0.0.1:7104
//! tessera-admin --node 127.0.0.1:7101 move-replica 2 1 4
//! tessera-admin --node 127.0.0.1:7101 transfer-leader 2 3
//! tessera-admin --node 127.0.0.1:7101 remove-node 1
//! ```
//! Any node will do: requests find the meta leader by themselves.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tessera_node::cluster::admin::{AdminClients, AdminRequest, AdminResponse, GroupOp};
use tessera_node::error::Error;
use tessera_node::state::meta::{ClusterMap, META};
use tessera_proto::v1::node_client::NodeClient;
use tessera_proto::v1::ShardsRequest;

#[derive(Parser)]
#[command(name = "tessera-admin", version, about = "Tessera cluster administration")]
struct Args {
    /// Any node(s) of the cluster (gRPC addresses), comma separated.
    #[arg(long = "node", env = "TESSERA_ADMIN_NODES", value_delimiter = ',', default_value = "127.0.0.1:7101")]
    nodes: Vec<String>,
    /// How long to wait for the operation (catching up a replica can take a while).
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
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
}

fn group_id(g: &str) -> Result<u32, String> {
    if g.eq_ignore_ascii_case("meta") {
        return Ok(META);
    }
    g.parse().map_err(|_| format!("group must be a shard id or 'meta', not '{g}'"))
}

fn group_name(id: u32) -> String {
    if id == META {
        "meta".into()
    } else {
        format!("shard {id}")
    }
}

async fn status(clients: &AdminClients, nodes: &[String], budget: Duration) -> Result<String, Error> {
    let map = match clients.ask_leader(nodes, &AdminRequest::Map, budget).await? {
        AdminResponse::Map(m) => m,
        r => return Err(Error::Unexpected(format!("{r:?}"))),
    };
    let mut out = print_map(&map);
    // The meta leader: the meta voter that answers a leader-only step.
    let ask = AdminRequest::Group { group: META, op: GroupOp::Membership };
    for id in map.groups.get(&META).map(|g| g.voters.clone()).unwrap_or_default() {
        let Some(addr) = map.addr(id) else { continue };
        if let Ok(AdminResponse::Membership { .. }) = clients.ask(addr, &ask, Duration::from_secs(2)).await {
            out.push_str(&format!("meta leader {id}\n"));
            break;
        }
    }
    for (id, n) in &map.nodes {
        let answer = async {
            let mut c = NodeClient::connect(format!("http://{}", n.addr)).await.map_err(|e| e.to_string())?;
            c.shards(ShardsRequest {}).await.map(|r| r.into_inner()).map_err(|e| e.message().to_string())
        };
        match tokio::time::timeout(Duration::from_secs(2), answer).await {
            Ok(Ok(r)) => {
                for s in r.shards {
                    out.push_str(&format!(
                        "node {id} shard {}: leader {} term {} commit {} applied {}\n",
                        s.id, s.leader_id, s.term, s.commit_index, s.applied_index
                    ));
                }
            }
            Ok(Err(e)) => out.push_str(&format!("node {id}: {e}\n")),
            Err(_) => out.push_str(&format!("node {id}: no answer\n")),
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let clients = AdminClients::default();
    let budget = Duration::from_secs(args.timeout_secs);
    let req = match &args.cmd {
        Cmd::Status => {
            return match status(&clients, &args.nodes, Duration::from_secs(10)).await {
                Ok(s) => {
                    print!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
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
    // Operations are idempotent: one cut short by a leader change
    // (`TRYAGAIN ...`) is simply run again, within the time budget.
    let deadline = tokio::time::Instant::now() + budget;
    let mut answer = clients.ask_leader(&args.nodes, &req, budget).await;
    while let Ok(AdminResponse::Error(e)) = &answer {
        if !e.starts_with("TRYAGAIN") || tokio::time::Instant::now() >= deadline {
            break;
        }
        eprintln!("{e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        answer = clients.ask_leader(&args.nodes, &req, deadline - tokio::time::Instant::now()).await;
    }
    match answer {
        Ok(AdminResponse::Done(msg)) => {
            println!("OK {msg}");
            ExitCode::SUCCESS
        }
        Ok(AdminResponse::Error(e)) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Ok(r) => {
            eprintln!("error: unexpected answer {r:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
