//! A cluster whose nodes each run in their own network namespace, joined by
//! a bridge, so tests can cut real network links with nftables (root only).
//! The router runs in the host namespace and reaches every node over the
//! bridge.
//!
//! On machines running dockerd the iptables FORWARD policy is DROP, which
//! also drops bridged traffic: the cluster adds ACCEPT rules for its bridge
//! and removes them when dropped, with the namespaces and the bridge.

use super::*;
use crate::clock::FakeClocks;

pub use super::is_root;

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub struct NetCluster {
    procs: Vec<Proc>,
    pub dir: PathBuf,
    pub plain: SocketAddr,
    bridge: String,
    /// Namespace and IP of each node (index = id - 1).
    nodes: Vec<(String, String)>,
    veths: Vec<String>,
    forward_rules: bool,
    /// Each node's own clock, when the nodes run under libfaketime.
    clocks: Option<FakeClocks>,
}

const NODE_PORT: u16 = 7100;

impl NetCluster {
    /// Starts `n` nodes (each in its own namespace) with `shards_per_node`
    /// shards each, and a router in the host namespace.
    pub fn start(n: usize, shards_per_node: usize) -> anyhow::Result<NetCluster> {
        Self::start_with(n, shards_per_node, &[], &[], false)
    }

    /// Like [`NetCluster::start`], with extra router and node flags (later
    /// ones win), and with `fake_clocks` each node under a clock of its own
    /// ([`NetCluster::set_clock_rate`]; needs libfaketime).
    pub fn start_with(
        n: usize,
        shards_per_node: usize,
        router_args: &[&str],
        node_args: &[&str],
        fake_clocks: bool,
    ) -> anyhow::Result<NetCluster> {
        let id = std::process::id() % 10_000;
        let u = unique() % 100;
        let subnet = format!("10.{}.{}", 200 + (u % 50), id % 250);
        let dir = std::env::temp_dir().join(format!("tessera-netns-{id}-{u}"));
        std::fs::create_dir_all(&dir)?;
        let mut c = NetCluster {
            procs: Vec::new(),
            dir: dir.clone(),
            plain: "0.0.0.0:0".parse()?,
            bridge: format!("tsb{id}x{u}"),
            nodes: Vec::new(),
            veths: Vec::new(),
            forward_rules: false,
            clocks: None,
        };
        if fake_clocks {
            let clocks = FakeClocks::new(&dir).context("no libfaketime (apt install libfaketime)")?;
            c.clocks = Some(clocks);
        }
        sh(&["ip", "link", "add", &c.bridge, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", &c.bridge])?;
        sh(&["ip", "link", "set", &c.bridge, "up"])?;
        sh(&["iptables", "-I", "FORWARD", "-i", &c.bridge, "-j", "ACCEPT"])?;
        sh(&["iptables", "-I", "FORWARD", "-o", &c.bridge, "-j", "ACCEPT"])?;
        c.forward_rules = true;
        for k in 1..=n {
            let ns = format!("tsn{id}x{u}x{k}");
            let veth = format!("tsv{id}x{u}x{k}");
            let ip = format!("{subnet}.{}", 10 + k);
            sh(&["ip", "netns", "add", &ns])?;
            c.nodes.push((ns.clone(), ip.clone()));
            sh(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns])?;
            c.veths.push(veth.clone());
            sh(&["ip", "link", "set", &veth, "master", &c.bridge, "up"])?;
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let peers: Vec<String> =
            c.nodes.iter().enumerate().map(|(i, (_, ip))| format!("{}={ip}:{NODE_PORT}", i + 1)).collect();
        let bins = bin_dir();
        for (i, (ns, ip)) in c.nodes.clone().iter().enumerate() {
            let mut args: Vec<std::ffi::OsString> = vec![
                "netns".into(),
                "exec".into(),
                ns.into(),
                bins.join("tessera-node").into(),
                "--node-id".into(),
                (i + 1).to_string().into(),
                "--listen".into(),
                format!("{ip}:{NODE_PORT}").into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--print-ready".into(),
                "--worker-threads".into(),
                "1".into(),
                "--peer".into(),
                peers.join(",").into(),
                "--shards".into(),
                (n * shards_per_node).to_string().into(),
                "--heartbeat-ms".into(),
                "50".into(),
                "--election-timeout-ms".into(),
                "300".into(),
                "--data-dir".into(),
                dir.join(format!("node-{}", i + 1)).into(),
            ];
            args.extend(node_args.iter().map(|a| a.into()));
            let log = dir.join(format!("node-{}.log", i + 1));
            let mut node = Proc::new(format!("node-{}", i + 1), "ip".into(), args, log);
            if let Some(clocks) = &c.clocks {
                node.env = clocks.env(i + 1)?;
            }
            c.procs.push(node);
            c.procs.last_mut().expect("pushed").spawn()?;
        }
        let nodes_arg: Vec<String> = c.nodes.iter().map(|(_, ip)| format!("{ip}:{NODE_PORT}")).collect();
        let mut args: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--cluster-listen".into(),
            "127.0.0.1:0,127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--print-ready".into(),
            "--node".into(),
            nodes_arg.join(",").into(),
        ];
        args.extend(router_args.iter().map(|a| a.into()));
        let log = dir.join("router.log");
        c.procs.push(Proc::new("router".into(), bins.join("tessera-router"), args, log));
        let ready = c.procs.last_mut().expect("pushed").spawn()?;
        for part in ready.split_whitespace().skip(1) {
            if let Some(v) = part.strip_prefix("plain=") {
                c.plain = v.parse()?;
            }
        }
        wait_serving(c.plain, crate::start_wait())?;
        Ok(c)
    }

    /// Cuts node `id` off from the other nodes (both directions); the router
    /// (on the bridge's host address) still reaches it.
    pub fn isolate_from_peers(&self, id: usize) -> anyhow::Result<()> {
        let pairs: Vec<(usize, usize)> = (1..=self.nodes.len()).filter(|&o| o != id).map(|o| (id, o)).collect();
        self.partition(&pairs, 0)
    }

    /// Replaces every node's fault rules: traffic between each pair of nodes
    /// in `cut` is dropped (both ways), and, when `loss_percent` > 0, that
    /// share of the remaining packets between nodes is dropped at random.
    /// The router (the bridge's host address) always gets through.
    pub fn partition(&self, cut: &[(usize, usize)], loss_percent: u32) -> anyhow::Result<()> {
        for id in 1..=self.nodes.len() {
            let blocked: Vec<&str> = cut
                .iter()
                .filter_map(|&(a, b)| match (a == id, b == id) {
                    (true, false) => Some(self.nodes[b - 1].1.as_str()),
                    (false, true) => Some(self.nodes[a - 1].1.as_str()),
                    _ => None,
                })
                .collect();
            let peers: Vec<&str> =
                self.nodes.iter().enumerate().filter(|(i, _)| i + 1 != id).map(|(_, (_, ip))| ip.as_str()).collect();
            let mut input = String::new();
            let mut output = String::new();
            if !blocked.is_empty() {
                let set = blocked.join(", ");
                input.push_str(&format!(" ip saddr {{ {set} }} drop;"));
                output.push_str(&format!(" ip daddr {{ {set} }} drop;"));
            }
            if loss_percent > 0 && !peers.is_empty() {
                let set = peers.join(", ");
                input.push_str(&format!(" ip saddr {{ {set} }} numgen random mod 100 < {loss_percent} drop;"));
                output.push_str(&format!(" ip daddr {{ {set} }} numgen random mod 100 < {loss_percent} drop;"));
            }
            // Adding, deleting and re-creating the table in one transaction
            // replaces the node's rules atomically, whether it had any or not.
            let mut rules = String::from("add table inet tessera_partition\ndelete table inet tessera_partition\n");
            if !input.is_empty() {
                rules.push_str(&format!(
                    "table inet tessera_partition {{\n\
                       chain input {{ type filter hook input priority 0;{input} }}\n\
                       chain output {{ type filter hook output priority 0;{output} }}\n\
                     }}\n"
                ));
            }
            let path = self.dir.join(format!("faults-{id}.nft"));
            std::fs::write(&path, rules)?;
            sh(&["ip", "netns", "exec", &self.nodes[id - 1].0, "nft", "-f", path.to_str().context("path")?])?;
        }
        Ok(())
    }

    /// Limits the bandwidth of node `id`'s link to `mbit` Mbit/s, in what it
    /// receives (`inbound`: from the router and its peers) or what it sends;
    /// `None` lifts the limit.
    pub fn limit_rate(&self, id: usize, inbound: bool, mbit: Option<u32>) -> anyhow::Result<()> {
        // What the node receives leaves the bridge through the host's end of
        // its veth; what it sends leaves through its own end.
        let (ns, _) = &self.nodes[id - 1];
        let mut tc: Vec<&str> = match inbound {
            true => vec!["tc", "qdisc"],
            false => vec!["ip", "netns", "exec", ns, "tc", "qdisc"],
        };
        let dev = if inbound { self.veths[id - 1].as_str() } else { "eth0" };
        let rate = mbit.map(|m| format!("{m}mbit"));
        match &rate {
            Some(rate) => {
                tc.extend(["replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"])
            }
            None => tc.extend(["del", "dev", dev, "root"]),
        }
        sh(&tc)
    }

    /// Removes node `id`'s partition rules.
    pub fn heal(&self, id: usize) -> anyhow::Result<()> {
        let (ns, _) = &self.nodes[id - 1];
        sh(&["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "tessera_partition"])
    }

    /// Removes every node's fault rules.
    pub fn heal_all(&self) -> anyhow::Result<()> {
        self.partition(&[], 0)
    }

    /// The nodes' gRPC addresses (reachable from the host namespace).
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|(_, ip)| format!("{ip}:{NODE_PORT}")).collect()
    }

    /// SIGKILLs node `id`.
    pub fn kill_node(&mut self, id: usize) {
        let pid = self.procs[id - 1].child.as_ref().map(|c| c.id());
        self.procs[id - 1].kill();
        if let (Some(pid), Some(_)) = (pid, &self.clocks) {
            FakeClocks::forget(pid);
        }
    }

    /// Starts node `id` again with the same flags and data folder.
    pub fn restart_node(&mut self, id: usize) -> anyhow::Result<()> {
        self.procs[id - 1].spawn().map(|_| ())
    }

    /// SIGSTOP / SIGCONT to node `id`, waiting until every thread is there.
    pub fn signal_node(&mut self, id: usize, sig: &str) {
        self.procs[id - 1].signal(sig);
    }

    /// Deletes node `id`'s data folder (the node must be stopped).
    pub fn wipe_node(&mut self, id: usize) -> anyhow::Result<()> {
        assert!(self.procs[id - 1].child.is_none(), "wipe a stopped node only");
        std::fs::remove_dir_all(self.dir.join(format!("node-{id}")))?;
        Ok(())
    }

    /// Makes node `id`'s clocks run at `rate` × real time from about now
    /// (within [`crate::clock::REREAD`]); 1 puts them back on real time.
    pub fn set_clock_rate(&self, id: usize, rate: f64) -> anyhow::Result<()> {
        let clocks = self.clocks.as_ref().context("the nodes run on the real clock")?;
        let running = self.procs[id - 1].started.map(|s| s.elapsed()).context("node not running")?;
        clocks.set_rate(id, rate, running)
    }

    pub fn fakes_clocks(&self) -> bool {
        self.clocks.is_some()
    }

    /// What node `id` logged.
    pub fn node_log(&self, id: usize) -> String {
        std::fs::read_to_string(&self.procs[id - 1].log).unwrap_or_default()
    }

    /// Everything the processes logged.
    pub fn logs(&self) -> String {
        logs_of(&self.procs)
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        let pids: Vec<u32> = self.procs.iter().filter_map(|p| p.child.as_ref().map(|c| c.id())).collect();
        stop_all(&mut self.procs, &self.dir);
        if self.clocks.is_some() {
            pids.into_iter().for_each(FakeClocks::forget);
        }
        for (ns, _) in &self.nodes {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for v in &self.veths {
            let _ = sh(&["ip", "link", "del", v]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
        if self.forward_rules {
            let _ = sh(&["iptables", "-D", "FORWARD", "-i", &self.bridge, "-j", "ACCEPT"]);
            let _ = sh(&["iptables", "-D", "FORWARD", "-o", &self.bridge, "-j", "ACCEPT"]);
        }
    }
}
