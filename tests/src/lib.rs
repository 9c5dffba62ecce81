//! Test harness: starts real `tessera-node` and `tessera-router` processes on
//! port 0, waits for them to be ready (with deadlines, never fixed sleeps),
//! and gives tests addresses, raw RESP connections and log dumps on failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tessera_common::slot::SlotRange;

/// Where the workspace's binaries are: `TESSERA_BIN_DIR`, else next to the
/// test executable (`target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TESSERA_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A running cluster: N nodes with S shards each and one router.
pub struct Cluster {
    procs: Vec<Proc>,
    pub dir: PathBuf,
    pub plain: SocketAddr,
    pub cluster: Vec<SocketAddr>,
    pub router_metrics: SocketAddr,
    pub node_addrs: Vec<SocketAddr>,
}

fn read_ready(child: &mut Child, timeout: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(timeout)
        .context("process did not print READY in time")?;
    if !line.starts_with("READY") {
        bail!("unexpected first line: {line:?}");
    }
    Ok(line.trim().to_string())
}

impl Cluster {
    pub fn start(nodes: usize, shards_per_node: usize) -> anyhow::Result<Cluster> {
        Self::start_with(nodes, shards_per_node, &[])
    }

    /// Starts the cluster; `router_args` are extra router flags.
    pub fn start_with(nodes: usize, shards_per_node: usize, router_args: &[&str]) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("tessera-test-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        let bins = bin_dir();
        let total = nodes * shards_per_node;
        let ranges = SlotRange::split_even(total);
        let mut c = Cluster {
            procs: Vec::new(),
            dir: dir.clone(),
            plain: "0.0.0.0:0".parse()?,
            cluster: Vec::new(),
            router_metrics: "0.0.0.0:0".parse()?,
            node_addrs: Vec::new(),
        };
        for n in 0..nodes {
            let shards: Vec<String> = (0..total)
                .filter(|s| s % nodes == n)
                .map(|s| format!("{s}:{}-{}", ranges[s].start, ranges[s].end))
                .collect();
            let log = dir.join(format!("node-{n}.log"));
            let mut child = Command::new(bins.join("tessera-node"))
                .args(["--node-id", &format!("node-{n}"), "--listen", "127.0.0.1:0"])
                .args(["--metrics-listen", "127.0.0.1:0", "--print-ready"])
                .args(["--shard", &shards.join(";")])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{n}")))
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .with_context(|| format!("spawn {}", bins.join("tessera-node").display()))?;
            let ready = read_ready(&mut child, Duration::from_secs(30));
            c.procs.push(Proc {
                name: format!("node-{n}"),
                child,
                log,
            });
            let ready = ready?;
            let addr: SocketAddr = ready.split_whitespace().nth(1).context("node addr")?.parse()?;
            c.node_addrs.push(addr);
        }
        let nodes_arg: Vec<String> = c.node_addrs.iter().map(|a| a.to_string()).collect();
        let log = dir.join("router.log");
        let mut child = Command::new(bins.join("tessera-router"))
            .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0,127.0.0.1:0"])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--print-ready",
                "--node",
                &nodes_arg.join(","),
            ])
            .args(router_args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let ready = read_ready(&mut child, Duration::from_secs(30));
        c.procs.push(Proc {
            name: "router".into(),
            child,
            log,
        });
        let ready = ready?;
        for part in ready.split_whitespace().skip(1) {
            let (k, v) = part.split_once('=').context("READY field")?;
            match k {
                "plain" => c.plain = v.parse()?,
                "cluster" => c.cluster = v.split(',').map(|a| a.parse()).collect::<Result<_, _>>()?,
                "metrics" => c.router_metrics = v.parse()?,
                _ => {}
            }
        }
        c.wait_serving(Duration::from_secs(30))?;
        Ok(c)
    }

    /// Polls until the router answers a keyed command (its node sessions are up).
    fn wait_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut r) = Resp::connect(self.plain) {
                if r.cmd(&["DBSIZE"]).map(|v| v.starts_with(':')).unwrap_or(false) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("router at {} did not serve within {timeout:?}", self.plain);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn plain_url(&self) -> String {
        format!("redis://{}/", self.plain)
    }

    pub fn cluster_urls(&self) -> Vec<String> {
        self.cluster.iter().map(|a| format!("redis://{a}/")).collect()
    }

    /// Everything the processes logged.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for p in &self.procs {
            out.push_str(&format!("----- {} ({}) -----\n", p.name, p.log.display()));
            out.push_str(&std::fs::read_to_string(&p.log).unwrap_or_default());
        }
        out
    }

    /// Whether every process is still running.
    pub fn all_alive(&mut self) -> bool {
        self.procs.iter_mut().all(|p| matches!(p.child.try_wait(), Ok(None)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A raw RESP connection that returns each reply as its exact wire text.
pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Resp> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Resp {
            stream: BufReader::new(s),
        })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.get_mut().write_all(bytes)?;
        Ok(())
    }

    /// Encodes `args` as a RESP array and sends it.
    pub fn send(&mut self, args: &[&[u8]]) -> anyhow::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.send_raw(&out)
    }

    pub fn cmd(&mut self, args: &[&str]) -> anyhow::Result<String> {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a)?;
        self.read()
    }

    /// Reads one complete reply (any RESP2/RESP3 type) as lossy UTF-8 text.
    pub fn read(&mut self) -> anyhow::Result<String> {
        let mut out = Vec::new();
        self.read_into(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn line(&mut self, out: &mut Vec<u8>) -> anyhow::Result<String> {
        let mut l = Vec::new();
        let n = self.stream.read_until(b'\n', &mut l)?;
        if n == 0 {
            bail!("connection closed");
        }
        out.extend_from_slice(&l);
        Ok(String::from_utf8_lossy(&l).trim_end().to_string())
    }

    fn read_into(&mut self, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let l = self.line(out)?;
        let (t, rest) = l.split_at(1);
        let n: i64 = rest.parse().unwrap_or(0);
        match t {
            "$" | "=" | "!" if n >= 0 => {
                let mut b = vec![0u8; n as usize + 2];
                self.stream.read_exact(&mut b)?;
                out.extend_from_slice(&b);
            }
            "*" | "~" | ">" => (0..n.max(0)).try_for_each(|_| self.read_into(out))?,
            "%" | "|" => (0..2 * n.max(0)).try_for_each(|_| self.read_into(out))?,
            _ => {}
        }
        Ok(())
    }

    /// True once the server has closed the connection.
    pub fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.stream.read(&mut b), Ok(0))
    }
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
