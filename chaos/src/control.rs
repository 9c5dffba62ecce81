//! Cluster control: one interface, a driver per way of running nodes.
//!
//! * `netns` — each node a process in its own network namespace on a bridge;
//!   partitions, bridges and packet loss with nftables (root only).
//! * `loopback` — every node on 127.0.0.1: process faults only (kill -9,
//!   SIGSTOP, wiped disks, membership), no network faults. For machines
//!   without root.
//!
//! A docker driver (containers of the project's image, `docker network
//! disconnect`) waits for the deployment image; it is not built yet.
//!
//! The router always runs in the host namespace and reaches every node: the
//! faults are between nodes, as a client sees them through a router.

use std::net::SocketAddr;

use anyhow::bail;
use tessera_tests::netns::NetCluster;
use tessera_tests::Cluster;

pub trait Control {
    fn driver(&self) -> &'static str;
    fn node_count(&self) -> usize;
    fn router(&self) -> SocketAddr;
    /// The nodes' gRPC addresses, for `tessera-admin`.
    fn node_addrs(&self) -> Vec<String>;
    fn kill(&mut self, id: usize);
    fn restart(&mut self, id: usize) -> anyhow::Result<()>;
    /// SIGSTOP (`true`) or SIGCONT (`false`).
    fn pause(&mut self, id: usize, stop: bool);
    /// Deletes a stopped node's data folder.
    fn wipe(&mut self, id: usize) -> anyhow::Result<()>;
    fn can_partition(&self) -> bool;
    /// Drops traffic between each pair in `cut`, and `loss_percent` of the
    /// rest between nodes; replaces earlier network faults.
    fn network(&mut self, cut: &[(usize, usize)], loss_percent: u32) -> anyhow::Result<()>;
    /// Whether each node runs on a clock of its own ([`Control::clock_rate`]).
    fn can_skew_clocks(&self) -> bool {
        false
    }
    /// Makes node `id`'s clocks run at `rate` × real time (1: real time).
    fn clock_rate(&mut self, _id: usize, _rate: f64) -> anyhow::Result<()> {
        bail!("the {} driver runs every node on the real clock", self.driver())
    }
    fn logs(&self) -> String;
}

/// The process faults, the same for every driver whose cluster type has
/// `kill_node`, `restart_node`, `signal_node` and `wipe_node`.
macro_rules! process_faults {
    () => {
        fn kill(&mut self, id: usize) {
            self.0.kill_node(id)
        }
        fn restart(&mut self, id: usize) -> anyhow::Result<()> {
            self.0.restart_node(id)
        }
        fn pause(&mut self, id: usize, stop: bool) {
            self.0.signal_node(id, if stop { "STOP" } else { "CONT" })
        }
        fn wipe(&mut self, id: usize) -> anyhow::Result<()> {
            self.0.wipe_node(id)
        }
    };
}

pub struct Netns(pub NetCluster);

impl Control for Netns {
    fn driver(&self) -> &'static str {
        "netns"
    }
    fn node_count(&self) -> usize {
        self.0.node_addrs().len()
    }
    fn router(&self) -> SocketAddr {
        self.0.plain
    }
    fn node_addrs(&self) -> Vec<String> {
        self.0.node_addrs()
    }
    process_faults!();
    fn can_partition(&self) -> bool {
        true
    }
    fn network(&mut self, cut: &[(usize, usize)], loss_percent: u32) -> anyhow::Result<()> {
        self.0.partition(cut, loss_percent)
    }
    fn can_skew_clocks(&self) -> bool {
        self.0.fakes_clocks()
    }
    fn clock_rate(&mut self, id: usize, rate: f64) -> anyhow::Result<()> {
        self.0.set_clock_rate(id, rate)
    }
    fn logs(&self) -> String {
        self.0.logs()
    }
}

pub struct Loopback(pub Cluster);

impl Control for Loopback {
    fn driver(&self) -> &'static str {
        "loopback"
    }
    fn node_count(&self) -> usize {
        self.0.node_addrs.len()
    }
    fn router(&self) -> SocketAddr {
        self.0.plain
    }
    fn node_addrs(&self) -> Vec<String> {
        self.0.node_addrs.iter().map(|a| a.to_string()).collect()
    }
    process_faults!();
    fn can_partition(&self) -> bool {
        false
    }
    fn network(&mut self, cut: &[(usize, usize)], loss_percent: u32) -> anyhow::Result<()> {
        if cut.is_empty() && loss_percent == 0 {
            return Ok(());
        }
        bail!("the loopback driver cannot cut links")
    }
    fn logs(&self) -> String {
        self.0.logs()
    }
}
