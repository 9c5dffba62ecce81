//! Test harness: starts real `tessera-node` and `tessera-router` processes on
//! port 0, waits for them to be ready (with deadlines, never fixed sleeps),
//! and gives tests addresses, raw RESP connections and log dumps on failure.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod client;
pub mod clock;
pub mod failover;
pub mod netns;
pub mod onnx;
pub mod ports;
mod process;
pub mod resp;

pub use ports::free_port;
use process::{logs_of, stop_all, Proc};
pub use resp::Resp;

/// Where the workspace's binaries are: `TESSERA_BIN_DIR`, else next to the
/// test executable (`target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TESSERA_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// A running cluster: N nodes (ids 1..=N) with every shard replicated on 3
/// of them, and one router.
pub struct Cluster {
    procs: Vec<Proc>,
    pub dir: PathBuf,
    pub plain: SocketAddr,
    pub cluster: Vec<SocketAddr>,
    /// The router's TLS ports, where its flags ask for them.
    pub tls: Option<SocketAddr>,
    pub tls_cluster: Vec<SocketAddr>,
    pub router_metrics: SocketAddr,
    pub node_addrs: Vec<SocketAddr>,
    /// Each node's /metrics address (updated when a node restarts).
    pub node_metrics: Vec<SocketAddr>,
}

/// How long a cluster may take to start: the routers' own start-up wait
/// (`TESSERA_NODE_WAIT_SECS`, which the test script raises on loaded
/// machines) plus a margin.
pub fn start_wait() -> Duration {
    let secs: u64 = std::env::var("TESSERA_NODE_WAIT_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    Duration::from_secs(secs.max(30) + 15)
}

/// A file of RedisAI's test data (`redisai/<name>`), from `TESSERA_TESTDATA`
/// or `../shared/testdata` beside the checkout. Panics with the path when it
/// cannot be read.
pub fn testdata(name: &str) -> Vec<u8> {
    let root = std::env::var_os("TESSERA_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata"));
    let p = root.join("redisai").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The order nodes and router start in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Staging {
    /// Every node in id order, then the router.
    InOrder,
    /// Node 1, the router, then the other nodes (the router starts before
    /// the cluster can form).
    RouterFirst,
    /// Every node but node 1 at once, node 1 two seconds later, then the
    /// router.
    FirstSeedLast,
}

impl Cluster {
    pub fn start(nodes: usize, shards_per_node: usize) -> anyhow::Result<Cluster> {
        Self::start_with(nodes, shards_per_node, &[])
    }

    /// Starts the cluster; `router_args` are extra router flags.
    pub fn start_with(nodes: usize, shards_per_node: usize, router_args: &[&str]) -> anyhow::Result<Cluster> {
        Self::start_full(nodes, shards_per_node, router_args, &[])
    }

    /// Starts the cluster with extra router and node flags.
    pub fn start_full(
        nodes: usize,
        shards_per_node: usize,
        router_args: &[&str],
        node_args: &[&str],
    ) -> anyhow::Result<Cluster> {
        Self::start_prepared(nodes, shards_per_node, router_args, node_args, &|_| Ok(()))
    }

    /// Like [`Cluster::start_full`], calling `prepare` with the cluster's
    /// folder before any node starts (nodes' data dirs are `node-<id>` in it).
    pub fn start_prepared(
        nodes: usize,
        shards_per_node: usize,
        router_args: &[&str],
        node_args: &[&str],
        prepare: &dyn Fn(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        Self::start_staged(nodes, shards_per_node, router_args, node_args, prepare, Staging::InOrder)
    }

    /// Starts only node 1, then the router, then the other nodes: the router
    /// starts before the cluster can form (its map has no shards yet).
    pub fn start_router_first(nodes: usize, shards_per_node: usize, router_args: &[&str]) -> anyhow::Result<Cluster> {
        Self::start_staged(nodes, shards_per_node, router_args, &[], &|_| Ok(()), Staging::RouterFirst)
    }

    /// Starts every node but the first seed at once, then node 1 two
    /// seconds later, then the router: what containers started together,
    /// with node 1 slowest, do.
    pub fn start_first_seed_last(nodes: usize, shards_per_node: usize) -> anyhow::Result<Cluster> {
        Self::start_staged(nodes, shards_per_node, &[], &[], &|_| Ok(()), Staging::FirstSeedLast)
    }

    fn start_staged(
        nodes: usize,
        shards_per_node: usize,
        router_args: &[&str],
        node_args: &[&str],
        prepare: &dyn Fn(&Path) -> anyhow::Result<()>,
        staging: Staging,
    ) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("tessera-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        prepare(&dir)?;
        let bins = bin_dir();
        let total = nodes * shards_per_node;
        let node_addrs: Vec<SocketAddr> = (0..nodes).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
        let peers: Vec<String> = node_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect();
        let mut c = Cluster {
            procs: Vec::new(),
            dir: dir.clone(),
            plain: "0.0.0.0:0".parse()?,
            cluster: Vec::new(),
            tls: None,
            tls_cluster: Vec::new(),
            router_metrics: "0.0.0.0:0".parse()?,
            node_addrs: node_addrs.clone(),
            node_metrics: vec![SocketAddr::from(([0, 0, 0, 0], 0)); nodes],
        };
        for (n, addr) in node_addrs.iter().enumerate() {
            let mut args: Vec<std::ffi::OsString> = vec![
                "--node-id".into(),
                (n + 1).to_string().into(),
                "--listen".into(),
                addr.to_string().into(),
                "--metrics-listen".into(),
                "127.0.0.1:0".into(),
                "--print-ready".into(),
                "--worker-threads".into(),
                "1".into(),
                "--peer".into(),
                peers.join(",").into(),
                "--shards".into(),
                total.to_string().into(),
                "--heartbeat-ms".into(),
                "50".into(),
                "--election-timeout-ms".into(),
                "300".into(),
                "--data-dir".into(),
                dir.join(format!("node-{}", n + 1)).into(),
            ];
            args.extend(node_args.iter().map(|a| a.into()));
            let log = dir.join(format!("node-{}.log", n + 1));
            c.procs.push(Proc::new(format!("node-{}", n + 1), bins.join("tessera-node"), args, log));
        }
        // A node's metrics address, from its READY line.
        let spawn = |p: &mut Proc| -> anyhow::Result<SocketAddr> {
            Ok(p.spawn()?.split_whitespace().nth(2).context("node metrics addr")?.parse()?)
        };
        let early = match staging {
            Staging::InOrder => nodes,
            Staging::RouterFirst => 1,
            Staging::FirstSeedLast => {
                let started: Vec<anyhow::Result<SocketAddr>> = std::thread::scope(|s| {
                    let others: Vec<_> = c.procs[1..nodes].iter_mut().map(|p| s.spawn(move || spawn(p))).collect();
                    others.into_iter().map(|h| h.join().expect("spawn thread")).collect()
                });
                for (n, m) in started.into_iter().enumerate() {
                    c.node_metrics[n + 1] = m?;
                }
                std::thread::sleep(Duration::from_secs(2));
                c.node_metrics[0] = spawn(&mut c.procs[0])?;
                0
            }
        };
        for n in 0..early {
            c.node_metrics[n] = spawn(&mut c.procs[n])?;
        }
        let nodes_arg: Vec<String> = c.node_addrs.iter().map(|a| a.to_string()).collect();
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
            let (k, v) = part.split_once('=').context("READY field")?;
            match k {
                "plain" => c.plain = v.parse()?,
                "cluster" => c.cluster = v.split(',').map(|a| a.parse()).collect::<Result<_, _>>()?,
                "tls" => c.tls = Some(v.parse()?),
                "tls-cluster" => c.tls_cluster = v.split(',').map(|a| a.parse()).collect::<Result<_, _>>()?,
                "metrics" => c.router_metrics = v.parse()?,
                _ => {}
            }
        }
        if staging == Staging::RouterFirst {
            for n in early..nodes {
                c.node_metrics[n] = spawn(&mut c.procs[n])?;
            }
        }
        c.wait_serving(start_wait())?;
        Ok(c)
    }

    /// Starts another router in front of the nodes with exactly `args`
    /// (besides `--node` and `--print-ready`), stopped with the cluster;
    /// the fields of its READY line (`plain`, `tls`, ...).
    pub fn add_router(&mut self, name: &str, args: &[&str]) -> anyhow::Result<HashMap<String, String>> {
        let nodes: Vec<String> = self.node_addrs.iter().map(|a| a.to_string()).collect();
        let mut argv: Vec<std::ffi::OsString> =
            vec!["--print-ready".into(), "--metrics-listen".into(), "127.0.0.1:0".into(), "--node".into()];
        argv.push(nodes.join(",").into());
        argv.extend(args.iter().map(|a| a.into()));
        let log = self.dir.join(format!("{name}.log"));
        let bin = bin_dir().join("tessera-router");
        self.procs.push(Proc::new(name.into(), bin, argv, log));
        let ready = self.procs.last_mut().expect("pushed").spawn()?;
        Ok(ready
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The OS process id of node `id` (1-based), while it runs.
    pub fn node_pid(&self, id: usize) -> Option<u32> {
        self.procs[id - 1].child.as_ref().map(|c| c.id())
    }

    /// SIGKILLs node `id` (1-based).
    pub fn kill_node(&mut self, id: usize) {
        self.procs[id - 1].kill();
    }

    /// Stops node `id` gracefully (SIGTERM), waiting (bounded) for it to exit.
    pub fn stop_node(&mut self, id: usize) {
        if let Some(mut child) = self.procs[id - 1].child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("node {id} did not exit within 15 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts node `id` again with the same flags and data folder.
    pub fn restart_node(&mut self, id: usize) -> anyhow::Result<()> {
        let ready = self.procs[id - 1].spawn()?;
        self.node_metrics[id - 1] = ready.split_whitespace().nth(2).context("node metrics addr")?.parse()?;
        Ok(())
    }

    /// Starts one more node (id = number of nodes + 1) that is not in the
    /// `--peer` list: it registers itself with the cluster and hosts what the
    /// cluster map gives it. Returns its id.
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let id = self.node_addrs.len() + 1;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut args = self.procs[0].args.clone();
        let set = |args: &mut Vec<std::ffi::OsString>, flag: &str, value: std::ffi::OsString| {
            let i = args.iter().position(|a| a == flag).expect("flag present") + 1;
            args[i] = value;
        };
        set(&mut args, "--node-id", id.to_string().into());
        set(&mut args, "--listen", addr.to_string().into());
        set(&mut args, "--data-dir", self.dir.join(format!("node-{id}")).into());
        args.extend(["--advertise".into(), addr.to_string().into()]);
        let bin = self.procs[0].bin.clone();
        let log = self.dir.join(format!("node-{id}.log"));
        self.procs.insert(id - 1, Proc::new(format!("node-{id}"), bin, args, log));
        self.node_addrs.push(addr);
        self.node_metrics.push("0.0.0.0:0".parse()?);
        self.restart_node(id)?;
        Ok(id)
    }

    /// Deletes node `id`'s data folder (the node must be stopped): a lost disk.
    pub fn wipe_node(&mut self, id: usize) -> anyhow::Result<()> {
        assert!(self.procs[id - 1].child.is_none(), "wipe a stopped node only");
        std::fs::remove_dir_all(self.dir.join(format!("node-{id}")))?;
        Ok(())
    }

    /// Runs `tessera-admin` against the cluster's nodes; its stdout, or an
    /// error with its stderr.
    pub fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let nodes: Vec<String> = self.node_addrs.iter().map(|a| a.to_string()).collect();
        admin(&nodes, 120, args)
    }

    /// Polls `tessera-admin status` until `pred` holds (bounded); the status
    /// it held for.
    pub fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.admin(&["status"]).unwrap_or_default();
            if pred(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}; last status:\n{status}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The Prometheus text of node `id`.
    pub fn node_metrics_text(&self, id: usize) -> anyhow::Result<String> {
        http_get(self.node_metrics[id - 1], "/metrics")
    }

    /// Sends SIGSTOP / SIGCONT to node `id` and waits (bounded) until the
    /// kernel reports the process stopped / running again.
    pub fn signal_node(&mut self, id: usize, sig: &str) {
        self.procs[id - 1].signal(sig);
    }

    /// Polls until the router answers a keyed command (its node sessions are up).
    fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_serving(self.plain, timeout)
    }

    pub fn plain_url(&self) -> String {
        format!("redis://{}/", self.plain)
    }

    pub fn cluster_urls(&self) -> Vec<String> {
        self.cluster.iter().map(|a| format!("redis://{a}/")).collect()
    }

    /// Waits (bounded) for node `id` to exit on its own; its exit status.
    pub fn wait_exit(&mut self, id: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.procs[id - 1].child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.procs[id - 1].child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_all(&mut self.procs, &self.dir);
    }
}

/// Runs `tessera-admin --node <nodes> --timeout-secs <timeout> <args>`; its
/// stdout, or an error with its stderr.
pub fn admin(nodes: &[String], timeout_secs: u64, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin_dir().join("tessera-admin"))
        .arg("--node")
        .arg(nodes.join(","))
        .arg("--timeout-secs")
        .arg(timeout_secs.to_string())
        .args(args)
        .output()
        .context("run tessera-admin")?;
    if !out.status.success() {
        bail!("tessera-admin {args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls until the router at `plain` answers a keyed command (bounded).
fn wait_serving(plain: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut r) = Resp::connect(plain) {
            if r.cmd(&["DBSIZE"]).map(|v| v.starts_with(':')).unwrap_or(false) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("router at {plain} did not serve within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether this process runs as root (network namespaces, mounts).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// The value of the first sample of metric `name` in Prometheus text (0 if absent).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A minimal HTTP GET (the metrics endpoints speak HTTP/1.1 and close).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One key name per hash slot (`key:<n>` names, found by hashing).
pub fn key_per_slot() -> Vec<String> {
    let mut keys = vec![String::new(); 16384];
    let mut left = 16384;
    let mut i = 0u64;
    while left > 0 {
        let k = format!("key:{i}");
        let s = usize::from(tessera_common::slot::key_slot(k.as_bytes()));
        if keys[s].is_empty() {
            keys[s] = k;
            left -= 1;
        }
        i += 1;
    }
    keys
}
