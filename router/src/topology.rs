//! The virtual cluster topology every router presents.
//!
//! The layout is a pure function of the advertised endpoint list (the same
//! list on every router, sorted): endpoint *i* of *n* is a master owning the
//! *i*-th of *n* even slot ranges, with a 40-hex id derived from its address.
//! Every router accepts every slot, so clients are never redirected; the
//! layout only spreads their connections and scopes keyspace-wide commands.
//!
//! An endpoint is an IP address or a host name (Redis 7's
//! `cluster-announce-hostname` with `cluster-preferred-endpoint-type
//! hostname`): behind a Kubernetes Service every router advertises the
//! Service's DNS name, since any router serves any slot.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use tessera_common::reply::Reply;
use tessera_common::slot::{SlotRange, SlotScope};

/// An advertised endpoint: `HOST:PORT`, the host an IP address or a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether the host is a name rather than an address.
    pub fn is_name(&self) -> bool {
        self.ip().is_none()
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint { host: a.ip().to_string(), port: a.port() }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Endpoint, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let bad = || format!("'{s}' is not HOST:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse::<u16>().map_err(|_| bad())?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if host.is_empty() || !host.chars().all(valid) {
            return Err(bad());
        }
        Ok(Endpoint { host: host.to_ascii_lowercase(), port })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip() {
            Some(ip) => SocketAddr::new(ip, self.port).fmt(f),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// Addresses in address order (as they always sorted), then names.
impl Ord for Endpoint {
    fn cmp(&self, other: &Endpoint) -> Ordering {
        match (self.ip(), other.ip()) {
            (Some(a), Some(b)) => SocketAddr::new(a, self.port).cmp(&SocketAddr::new(b, other.port)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => (&self.host, self.port).cmp(&(&other.host, other.port)),
        }
    }
}

impl PartialOrd for Endpoint {
    fn partial_cmp(&self, other: &Endpoint) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One advertised master's endpoints: its plain port, its TLS port, or both.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Advertised {
    pub plain: Option<Endpoint>,
    pub tls: Option<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNode {
    pub id: String,
    /// The plain endpoint; the TLS one where the router serves TLS only.
    pub addr: Endpoint,
    pub tls: Option<Endpoint>,
    pub slots: SlotRange,
}

impl VirtualNode {
    /// The endpoint a client on a TLS (or plain) connection is given, as
    /// Redis 7 answers with the port of the asking connection's kind.
    pub fn endpoint(&self, tls: bool) -> &Endpoint {
        match (tls, &self.tls) {
            (true, Some(t)) => t,
            _ => &self.addr,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub nodes: Vec<VirtualNode>,
    pub epoch: u64,
    /// Whether the masters have plain ports (not `--tls-only`).
    pub plain: bool,
}

/// A stable 40-hex-character id for an endpoint (FNV-1a based; ids only need
/// to be unique and identical on every router).
pub fn node_id(addr: &impl fmt::Display) -> String {
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
    /// Masters with plain endpoints only.
    pub fn new(advertised: Vec<Endpoint>) -> Topology {
        Topology::with_tls(advertised.into_iter().map(|e| Advertised { plain: Some(e), tls: None }).collect())
    }

    /// Masters in the order of their plain endpoints (of their TLS ones when
    /// none has a plain one); ids come from that same endpoint.
    pub fn with_tls(mut advertised: Vec<Advertised>) -> Topology {
        advertised.retain(|a| a.plain.is_some() || a.tls.is_some());
        advertised.sort();
        advertised.dedup();
        let plain = advertised.iter().any(|a| a.plain.is_some());
        let ranges = SlotRange::split_even(advertised.len().max(1));
        let nodes = advertised
            .into_iter()
            .zip(ranges)
            .filter_map(|(a, slots)| {
                let addr = a.plain.or_else(|| a.tls.clone())?;
                Some(VirtualNode { id: node_id(&addr), addr, tls: a.tls, slots })
            })
            .collect();
        Topology { nodes, epoch: 1, plain }
    }

    /// The virtual node a connection is talking to, by its local address
    /// and whether it came through a TLS listener.
    pub fn node_at(&self, local: SocketAddr, tls: bool) -> Option<usize> {
        let local = Endpoint::from(local);
        let served = |n: &VirtualNode| match tls {
            true => n.tls.clone(),
            false => self.plain.then(|| n.addr.clone()),
        };
        self.nodes.iter().position(|n| served(n).as_ref() == Some(&local)).or_else(|| {
            // Bound to 0.0.0.0, advertised by name or reached through
            // another local address: match by port.
            let by_port: Vec<usize> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| served(n).is_some_and(|e| e.port == local.port))
                .map(|(i, _)| i)
                .collect();
            (by_port.len() == 1).then(|| by_port[0])
        })
    }

    pub fn scope_of(&self, me: Option<usize>) -> SlotScope {
        match me {
            Some(i) => SlotScope(vec![self.nodes[i].slots]),
            None => SlotScope::all(),
        }
    }

    /// A master's entry in `CLUSTER SLOTS`: the preferred endpoint first;
    /// a name is repeated as the `hostname` metadata, as Redis 7 does.
    fn node_entry(n: &VirtualNode, tls: bool) -> Reply {
        let e = n.endpoint(tls);
        let meta = match e.is_name() {
            true => vec![(Reply::bulk_str("hostname"), Reply::bulk_str(&e.host))],
            false => Vec::new(),
        };
        Reply::Array(vec![
            Reply::bulk_str(&e.host),
            Reply::Int(i64::from(e.port)),
            Reply::bulk_str(&n.id),
            Reply::Map(meta),
        ])
    }

    /// `CLUSTER SLOTS` for a connection that is TLS or not.
    pub fn slots_reply(&self, tls: bool) -> Reply {
        Reply::Array(
            self.nodes
                .iter()
                .map(|n| {
                    Reply::Array(vec![
                        Reply::Int(i64::from(n.slots.start)),
                        Reply::Int(i64::from(n.slots.end)),
                        Self::node_entry(n, tls),
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
                    // Both ports, as Redis 7 lists `port` and `tls-port`.
                    let mut fields = vec![kv("id", Reply::bulk_str(&n.id))];
                    if self.plain {
                        fields.push(kv("port", Reply::Int(i64::from(n.addr.port))));
                    }
                    if let Some(t) = &n.tls {
                        fields.push(kv("tls-port", Reply::Int(i64::from(t.port))));
                    }
                    fields.extend([
                        kv(if n.addr.is_name() { "hostname" } else { "ip" }, Reply::bulk_str(&n.addr.host)),
                        kv("endpoint", Reply::bulk_str(&n.addr.host)),
                        kv("role", Reply::bulk_str("master")),
                        kv("replication-offset", Reply::Int(0)),
                        kv("health", Reply::bulk_str("online")),
                    ]);
                    let node = Reply::Map(fields);
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
    /// (the first one for connections on the plain port), with the ports of
    /// the connection's kind.
    pub fn nodes_text(&self, me: Option<usize>, tls: bool) -> String {
        let me = me.unwrap_or(0);
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let flags = if i == me { "myself,master" } else { "master" };
            let e = n.endpoint(tls);
            let cport = e.port.checked_add(10000).unwrap_or(e.port);
            let hostname = if e.is_name() { format!(",{}", e.host) } else { String::new() };
            out.push_str(&format!(
                "{} {}:{}@{}{} {} - 0 0 {} connected {}-{}\n",
                n.id, e.host, e.port, cport, hostname, flags, self.epoch, n.slots.start, n.slots.end
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
        let t1 = Topology::new(vec![b.into(), a.into()]);
        let t2 = Topology::new(vec![a.into(), b.into()]);
        assert_eq!(t1.nodes, t2.nodes);
        assert_eq!(t1.nodes[0].slots, SlotRange::new(0, 8191));
        assert_eq!(t1.nodes[1].slots, SlotRange::new(8192, 16383));
        assert_eq!(t1.nodes[0].id.len(), 40);
        assert_ne!(t1.nodes[0].id, t1.nodes[1].id);
        assert_eq!(t1.node_at(b, false), Some(1));
        assert_eq!(t1.node_at(b, true), None);
        let text = t1.nodes_text(Some(1), false);
        assert!(text.lines().nth(1).unwrap().contains("myself,master"));
        assert!(text.ends_with('\n'));
        assert!(t1.info_text(Some(0), 16384).starts_with("cluster_state:ok\r\n"));
        // Ids are those of the address's text, as before names were allowed.
        assert_eq!(t1.nodes[0].id, node_id(&a));
    }

    #[test]
    fn endpoints_by_name() {
        let e: Endpoint = "Tessera-Router.ns.svc.cluster.local:7001".parse().unwrap();
        assert_eq!(e, Endpoint { host: "tessera-router.ns.svc.cluster.local".into(), port: 7001 });
        assert!(e.is_name());
        assert_eq!(e.to_string(), "tessera-router.ns.svc.cluster.local:7001");
        assert_eq!("[::1]:7001".parse::<Endpoint>().unwrap().to_string(), "[::1]:7001");
        for bad in ["router", "router:x", ":7001", "a b:1", "router:70000"] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
        let b: Endpoint = "router:7002".parse().unwrap();
        let a: Endpoint = "router:7001".parse().unwrap();
        let t = Topology::new(vec![b, a]);
        assert_eq!(t.nodes[0].addr.port, 7001);
        // Listening on 0.0.0.0:7002 is the second advertised master.
        assert_eq!(t.node_at("0.0.0.0:7002".parse().unwrap(), false), Some(1));
        let text = t.nodes_text(None, false);
        assert!(text.contains(" router:7001@17001,router myself,master "), "{text}");
        match t.slots_reply(false) {
            Reply::Array(ranges) => match &ranges[0] {
                Reply::Array(r) => assert_eq!(
                    r[2],
                    Reply::Array(vec![
                        Reply::bulk_str("router"),
                        Reply::Int(7001),
                        Reply::bulk_str(&t.nodes[0].id),
                        Reply::Map(vec![(Reply::bulk_str("hostname"), Reply::bulk_str("router"))]),
                    ])
                ),
                r => panic!("{r:?}"),
            },
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn tls_endpoints_pair_with_plain_ones() {
        let ep = |s: &str| -> Endpoint { s.parse().unwrap() };
        let pair = |p: &str, t: &str| Advertised { plain: Some(ep(p)), tls: Some(ep(t)) };
        let t = Topology::with_tls(vec![
            pair("127.0.0.1:7002", "127.0.0.1:7012"),
            pair("127.0.0.1:7001", "127.0.0.1:7011"),
        ]);
        // Ordered and named by the plain endpoints, as without TLS.
        let plain_only = Topology::new(vec![ep("127.0.0.1:7001"), ep("127.0.0.1:7002")]);
        for (n, p) in t.nodes.iter().zip(&plain_only.nodes) {
            assert_eq!((&n.id, &n.addr, n.slots), (&p.id, &p.addr, p.slots));
        }
        assert_eq!(t.nodes[0].tls, Some(ep("127.0.0.1:7011")));
        assert_eq!(t.node_at("127.0.0.1:7012".parse().unwrap(), true), Some(1));
        assert_eq!(t.node_at("127.0.0.1:7012".parse().unwrap(), false), None);
        assert_eq!(t.node_at("0.0.0.0:7011".parse().unwrap(), true), Some(0));
        let port_of = |r: &Reply| match r {
            Reply::Array(ranges) => match &ranges[0] {
                Reply::Array(r) => match &r[2] {
                    Reply::Array(n) => n[1].clone(),
                    n => panic!("{n:?}"),
                },
                r => panic!("{r:?}"),
            },
            r => panic!("{r:?}"),
        };
        assert_eq!(port_of(&t.slots_reply(false)), Reply::Int(7001));
        assert_eq!(port_of(&t.slots_reply(true)), Reply::Int(7011));
        assert!(t.nodes_text(None, true).contains(" 127.0.0.1:7011@17011 myself,master "));
        assert!(t.nodes_text(None, false).contains(" 127.0.0.1:7001@17001 myself,master "));
        let shards = format!("{:?}", t.shards_reply());
        assert!(shards.contains("\"port\"") && shards.contains("\"tls-port\""), "{shards}");

        // TLS only: the TLS endpoints name the masters, and there is no `port`.
        let only = Topology::with_tls(vec![Advertised { plain: None, tls: Some(ep("127.0.0.1:7011")) }]);
        assert!(!only.plain);
        assert_eq!(only.nodes[0].id, node_id(&ep("127.0.0.1:7011")));
        assert_eq!(only.node_at("127.0.0.1:7011".parse().unwrap(), true), Some(0));
        assert_eq!(only.node_at("127.0.0.1:7011".parse().unwrap(), false), None);
        let shards = format!("{:?}", only.shards_reply());
        assert!(!shards.contains("\"port\"") && shards.contains("\"tls-port\""), "{shards}");
    }
}
