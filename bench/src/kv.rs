//! Key-value cost at a fixed concurrency: puts and gets of one value size,
//! each client with its own connection, against
//!
//! - a Redis-protocol server (a Tessera router, redis-server), driven by
//!   redis-rs: `SET` and `GET`, `--pipeline` commands per round trip;
//! - an etcd cluster, driven by etcd-client at its leader: `put` and
//!   linearizable `get` (etcd's default), one request per round trip.
//!
//! Closed loop: a client sends its next request when the last is answered.
//! A get of a key that was never written fails the run (`--fill` first).
//! Every client runs on one thread (a current-thread runtime), as
//! redis-benchmark does, so the load generator takes one core at most
//! whatever the target. Prints one JSON object: requests per second and
//! latency percentiles of the measured window (after `--warmup`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;

#[derive(Parser)]
struct Args {
    /// `redis://HOST:PORT` or `etcd://HOST:PORT[,HOST:PORT...]` (every
    /// member: the clients go to the one that leads).
    #[arg(long)]
    target: String,
    #[arg(long, value_enum)]
    op: Op,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Requests per round trip (Redis targets only).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Write every key first (before the first get run on a target).
    #[arg(long)]
    fill: bool,
}

#[derive(Clone, Copy, PartialEq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Put,
    Get,
}

#[derive(Serialize)]
struct Report {
    target: &'static str,
    op: Op,
    size: usize,
    clients: usize,
    pipeline: usize,
    seconds: f64,
    requests: u64,
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

/// One connection of either kind.
enum Conn {
    Redis(redis::aio::MultiplexedConnection),
    Etcd(Box<etcd_client::KvClient>),
}

enum Target {
    Redis(Box<redis::Client>),
    /// The endpoint of the member that leads.
    Etcd(String),
}

impl Target {
    /// `--target`; for etcd, asks each member in turn which one leads.
    async fn open(s: &str) -> Result<Target> {
        if s.starts_with("redis://") {
            return Ok(Target::Redis(Box::new(redis::Client::open(s)?)));
        }
        let Some(members) = s.strip_prefix("etcd://") else { bail!("--target: redis://... or etcd://..., not {s}") };
        for m in members.split(',') {
            let ep = format!("http://{m}");
            let Ok(mut c) = etcd_client::Client::connect([&ep], None).await else { continue };
            let Ok(st) = c.status().await else { continue };
            if st.header().map(|h| h.member_id()) == Some(st.leader()) {
                return Ok(Target::Etcd(ep));
            }
        }
        bail!("no etcd member among {members} says it leads")
    }

    fn name(&self) -> &'static str {
        match self {
            Target::Redis(_) => "redis",
            Target::Etcd(_) => "etcd",
        }
    }

    async fn connect(&self) -> Result<Conn> {
        Ok(match self {
            Target::Redis(c) => {
                // No response timeout: a slow answer is a figure, not an error.
                let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                Conn::Redis(c.get_multiplexed_async_connection_with_config(&cfg).await?)
            }
            Target::Etcd(leader) => {
                Conn::Etcd(Box::new(etcd_client::Client::connect([leader], None).await?.kv_client()))
            }
        })
    }
}

fn key(i: usize) -> String {
    format!("kv:{i:07}")
}

impl Conn {
    /// One round trip: `n` requests of `op` on keys drawn by `next`.
    async fn round(&mut self, op: Op, n: usize, value: &[u8], mut next: impl FnMut() -> usize) -> Result<()> {
        match self {
            Conn::Redis(con) => {
                let mut p = redis::pipe();
                for _ in 0..n {
                    match op {
                        Op::Put => p.cmd("SET").arg(key(next())).arg(value),
                        Op::Get => p.cmd("GET").arg(key(next())),
                    };
                }
                let replies: Vec<redis::Value> = p.query_async(con).await?;
                if replies.iter().any(|r| matches!(r, redis::Value::Nil)) {
                    bail!("GET: key not found (not written before the run)");
                }
            }
            Conn::Etcd(kv) => {
                debug_assert_eq!(n, 1);
                match op {
                    Op::Put => drop(kv.put(key(next()), value, None).await?),
                    Op::Get => {
                        let r = kv.get(key(next()), None).await?;
                        if r.kvs().is_empty() {
                            bail!("etcd get: key not found (not written before the run)");
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.pipeline > 1 && a.target.starts_with("etcd://") {
        bail!("--pipeline: etcd's API has no pipelining (one request per round trip)");
    }
    if a.clients == 0 || a.pipeline == 0 || a.keys == 0 {
        bail!("--clients, --pipeline and --keys must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = rt.block_on(run(&a))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn run(a: &Args) -> Result<Report> {
    let target = Target::open(&a.target).await?;
    let value = vec![b'v'; a.size];
    if a.fill {
        // Every key a get can draw exists, written by one client in rounds of 100.
        let mut con = target.connect().await?;
        let per_round = if matches!(con, Conn::Etcd(_)) { 1 } else { 100 };
        let mut keys = 0..a.keys;
        while !keys.is_empty() {
            let n = per_round.min(keys.len());
            con.round(Op::Put, n, &value, || keys.next().expect("n keys left")).await.context("writing the keys")?;
        }
    }
    let mut conns = Vec::with_capacity(a.clients);
    for _ in 0..a.clients {
        conns.push(target.connect().await?);
    }
    let measure_from = Instant::now() + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for (c, mut con) in conns.into_iter().enumerate() {
        let (op, n, keys, value) = (a.op, a.pipeline, a.keys, value.clone());
        tasks.spawn(async move {
            // xorshift64, seeded per client: the keys drawn, without a lock.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                con.round(op, n, &value, || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % keys as u64) as usize
                })
                .await?;
                if t >= measure_from {
                    lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            anyhow::Ok(lat_us)
        });
    }
    // Whoever runs this measures other processes over the same window.
    tokio::time::sleep_until(measure_from.into()).await;
    println!("measuring");
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    // The window closes when the last round started in it is answered.
    let window = measure_from.elapsed().as_secs_f64();
    if lat.is_empty() {
        bail!("no request completed in the measured window");
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize] as f64;
    let requests = (lat.len() * a.pipeline) as u64;
    Ok(Report {
        target: target.name(),
        op: a.op,
        size: a.size,
        clients: a.clients,
        pipeline: a.pipeline,
        seconds: window,
        requests,
        rps: requests as f64 / window,
        p50_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: *lat.last().unwrap() as f64,
    })
}
