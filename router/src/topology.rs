//! The virtual cluster topology every router presents.
//!
//! The layout is a pure function of the advertised endpoint list (the same
//! list on every router, sorted): endpoint *i* of *n* is a master owning the
//! *i*-th of *n* even slot ranges, with a 40-hex id derived from its address.
//! Every router accepts every slot, so clients are never redirected; the
//! layout only spreads their connections and scopes keyspace-wide commands.

use std::net::SocketAddr;

use tessera_common::reply::Reply;
use tessera_common::slot::{SlotRange, SlotScope};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNode {
    pub id: String,
    pub addr: SocketAddr,
    pub slots: SlotRange,
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub nodes: Vec<VirtualNode>,
    pub epoch: u64,
}

/// A stable 40-hex-character id for an endpoint (FNV-1a based; ids only need
/// to be unique and identical on every router).
pub fn node_id(addr: &SocketAddr) -> String {
    let s = addr.to_string();
    let mut out = String::with_capacity(40);
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for round in 0u8..3 {
        let mut h = seed ^ u64::from(round);
        for b in s.bytes().chain([round]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
        seed = h;
    }
    out.truncate(40);
    out
}

impl Topology {
    pub fn new(mut advertised: Vec<SocketAddr>) -> Topology {
        advertised.sort();
        advertised.dedup();
        let ranges = SlotRange::split_even(advertised.len().max(1));
        let nodes = advertised
            .into_iter()
            .zip(ranges)
            .map(|(addr, slots)| VirtualNode { id: node_id(&addr), addr, slots })
            .collect();
        Topology { nodes, epoch: 1 }
    }

    /// The virtual node a connection is talking to, by its local address.
    pub fn node_at(&self, local: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == local).or_else(|| {
            // Bound to 0.0.0.0 or reached through another local address: match by port.
            let by_port: Vec<usize> =
                self.nodes.iter().enumerate().filter(|(_, n)| n.addr.port() == local.port()).map(|(i, _)| i).collect();
            (by_port.len() == 1).then(|| by_port[0])
        })
    }

    pub fn scope_of(&self, me: Option<usize>) -> SlotScope {
        match me {
            Some(i) => SlotScope(vec![self.nodes[i].slots]),
            None => SlotScope::all(),
        }
    }

    fn node_entry(n: &VirtualNode) -> Reply {
        Reply::Array(vec![
            Reply::bulk_str(&n.addr.ip().to_string()),
            Reply::Int(i64::from(n.addr.port())),
            Reply::bulk_str(&n.id),
            Reply::Map(Vec::new()),
        ])
    }

    pub fn slots_reply(&self) -> Reply {
        Reply::Array(
            self.nodes
                .iter()
                .map(|n| {
                    Reply::Array(vec![
                        Reply::Int(i64::from(n.slots.start)),
                        Reply::Int(i64::from(n.slots.end)),
                        Self::node_entry(n),
                    ])
                })
                .collect(),
        )
    }

    pub fn shards_reply(&self) -> Reply {
        let kv = |k: &str, v: Reply| (Reply::bulk_str(k), v);
        Reply::Array(
            self.nodes
                .iter()
                .map(|n| {
                    let ip = n.addr.ip().to_string();
                    let node = Reply::Map(vec![
                        kv("id", Reply::bulk_str(&n.id)),
                        kv("port", Reply::Int(i64::from(n.addr.port()))),
                        kv("ip", Reply::bulk_str(&ip)),
                        kv("endpoint", Reply::bulk_str(&ip)),
                        kv("role", Reply::bulk_str("master")),
                        kv("replication-offset", Reply::Int(0)),
                        kv("health", Reply::bulk_str("online")),
                    ]);
                    Reply::Map(vec![
                        kv(
                            "slots",
                            Reply::Array(vec![
                                Reply::Int(i64::from(n.slots.start)),
                                Reply::Int(i64::from(n.slots.end)),
                            ]),
                        ),
                        kv("nodes", Reply::Array(vec![node])),
                    ])
                })
                .collect(),
        )
    }

    /// `CLUSTER NODES`: LF-terminated lines, `myself` on the connection's node
    /// (the first one for connections on the plain port).
    pub fn nodes_text(&self, me: Option<usize>) -> String {
        let me = me.unwrap_or(0);
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let flags = if i == me { "myself,master" } else { "master" };
            let cport = n.addr.port().checked_add(10000).unwrap_or(n.addr.port());
            out.push_str(&format!(
                "{} {}:{}@{} {} - 0 0 {} connected {}-{}\n",
                n.id,
                n.addr.ip(),
                n.addr.port(),
                cport,
                flags,
                self.epoch,
                n.slots.start,
                n.slots.end
            ));
        }
        out
    }

    pub fn info_text(&self, me: Option<usize>, slots_ok: usize) -> String {
        let state = if slots_ok == 16384 { "ok" } else { "fail" };
        let lines = [
            format!("cluster_state:{state}"),
            "cluster_slots_assigned:16384".to_string(),
            format!("cluster_slots_ok:{slots_ok}"),
            "cluster_slots_pfail:0".to_string(),
            format!("cluster_slots_fail:{}", 16384 - slots_ok),
            format!("cluster_known_nodes:{}", self.nodes.len()),
            format!("cluster_size:{}", self.nodes.len()),
            format!("cluster_current_epoch:{}", self.epoch),
            format!("cluster_my_epoch:{}", if me.is_some() { self.epoch } else { 0 }),
            "cluster_stats_messages_sent:0".to_string(),
            "cluster_stats_messages_received:0".to_string(),
            "total_cluster_links_buffer_limit_exceeded:0".to_string(),
        ];
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_deterministic_and_covers_all_slots() {
        let a: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        let t1 = Topology::new(vec![b, a]);
        let t2 = Topology::new(vec![a, b]);
        assert_eq!(t1.nodes, t2.nodes);
        assert_eq!(t1.nodes[0].slots, SlotRange::new(0, 8191));
        assert_eq!(t1.nodes[1].slots, SlotRange::new(8192, 16383));
        assert_eq!(t1.nodes[0].id.len(), 40);
        assert_ne!(t1.nodes[0].id, t1.nodes[1].id);
        assert_eq!(t1.node_at(b), Some(1));
        let text = t1.nodes_text(Some(1));
        assert!(text.lines().nth(1).unwrap().contains("myself,master"));
        assert!(text.ends_with('\n'));
        assert!(t1.info_text(Some(0), 16384).starts_with("cluster_state:ok\r\n"));
    }
}
