//! `tessera-chaos`: starts a real cluster, runs client workloads through the
//! router while a seeded nemesis injects faults, heals, checks the history
//! and writes a report. Exits 1 on any violation.
//!
//! ```text
//! tessera-chaos --seed 7 --secs 150           # a short run (CI)
//! tessera-chaos --soak 30                     # 30 minutes, every nemesis
//! tessera-chaos --seed 7 --nemesis kill,partition
//! ```

mod checker;
mod control;
mod history;
mod nemesis;
mod report;
mod workload;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use control::{Control, Loopback, Netns};
use nemesis::{Kind, Nemesis, Topology};

#[derive(Parser)]
#[command(name = "tessera-chaos", about = "Seeded faults against a real Tessera cluster, checked histories")]
struct Args {
    /// The seed for the fault schedule, its targets and the workloads
    /// (default: random, printed so the run can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected, in seconds.
    #[arg(long, default_value_t = 120)]
    secs: u64,
    /// A long run: minutes of faults (overrides --secs).
    #[arg(long)]
    soak: Option<u64>,
    /// `netns` (root: partitions, packet loss), `loopback` (process faults
    /// only) or `auto` (netns when root).
    #[arg(long, default_value = "auto")]
    driver: String,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Comma-separated nemeses (default: every one the driver supports):
    /// kill, kill-leader, pause, pause-leader, partition, isolate-leader,
    /// bridge, lossy, wipe-rejoin, move-under-kill, slow-clock-leader (netns
    /// driver with libfaketime: the nodes then run on clocks of their own).
    #[arg(long, value_delimiter = ',')]
    nemesis: Vec<String>,
    /// Where the report, the history and the timeline go.
    #[arg(long, default_value = "chaos-report")]
    out: PathBuf,
    /// Where tessera-node, tessera-router and tessera-admin are (default:
    /// TESSERA_BIN_DIR, else beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Pause between a worker's operations, in milliseconds.
    #[arg(long, default_value_t = 4)]
    think_ms: u64,
    /// How long the cluster may take to serve again after the final heal.
    #[arg(long, default_value_t = 60)]
    liveness_secs: u64,
    /// Extra flags for every node (e.g. `--read-policy=read-index`).
    #[arg(long, allow_hyphen_values = true)]
    node_arg: Vec<String>,
    /// Extra flags for the router (e.g. `--follower-reads`).
    #[arg(long, allow_hyphen_values = true)]
    router_arg: Vec<String>,
    /// Mutual TLS inside the cluster: throwaway certificates from
    /// `tessera-admin certs` (in the report folder), given to every node,
    /// router and `tessera-admin` call through TESSERA_CLUSTER_TLS_*.
    #[arg(long)]
    cluster_tls: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tessera-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
    let bin_dir = match (&args.bin_dir, std::env::var_os("TESSERA_BIN_DIR")) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => std::env::current_exe()?.parent().context("binary folder")?.to_path_buf(),
    };
    // The harness finds the binaries through this variable.
    std::env::set_var("TESSERA_BIN_DIR", &bin_dir);
    let seed = args.seed.unwrap_or_else(rand::random);
    let secs = args.soak.map(|m| m * 60).unwrap_or(args.secs);
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("tessera-chaos: seed {seed}, {secs} s of faults, binaries from {}", bin_dir.display());

    if args.cluster_tls {
        let certs = args.out.join("certs");
        let made = std::process::Command::new(bin_dir.join("tessera-admin"))
            .args(["certs", "--dir"])
            .arg(&certs)
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(made.success(), "tessera-admin certs failed");
        // (Every process the harness starts inherits them.)
        std::env::set_var("TESSERA_CLUSTER_TLS_CERT", certs.join("cluster.crt"));
        std::env::set_var("TESSERA_CLUSTER_TLS_KEY", certs.join("cluster.key"));
        std::env::set_var("TESSERA_CLUSTER_TLS_CA", certs.join("cluster-ca.crt"));
        eprintln!("tessera-chaos: mutual TLS inside the cluster (certificates in {})", certs.display());
    }
    let node_args: Vec<&str> = args.node_arg.iter().map(String::as_str).collect();
    let router_args: Vec<&str> = args.router_arg.iter().map(String::as_str).collect();
    let netns = match args.driver.as_str() {
        "netns" => true,
        "loopback" => false,
        "auto" => tessera_tests::is_root(),
        d => anyhow::bail!("unknown driver {d} (netns, loopback, auto)"),
    };
    // Clocks of their own for the nodes only where a nemesis skews them.
    let skew = Kind::SlowClockLeader.name();
    let fake_clocks = netns
        && (args.nemesis.iter().any(|k| k == skew)
            || (args.nemesis.is_empty() && tessera_tests::clock::FakeClocks::library().is_some()));
    let mut ctl: Box<dyn Control> = if netns {
        let cluster =
            tessera_tests::netns::NetCluster::start_with(args.nodes, 1, &router_args, &node_args, fake_clocks)?;
        Box::new(Netns(cluster))
    } else {
        Box::new(Loopback(tessera_tests::Cluster::start_full(args.nodes, 1, &router_args, &node_args)?))
    };
    let kinds: Vec<Kind> = if args.nemesis.is_empty() {
        Kind::ALL.into_iter().filter(|k| k.possible(ctl.as_ref())).collect()
    } else {
        let ks = args.nemesis.iter().map(|s| Kind::parse(s)).collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(k) = ks.iter().find(|k| !k.possible(ctl.as_ref())) {
            anyhow::bail!("nemesis {} needs more nodes or another driver", k.name());
        }
        ks
    };
    eprintln!(
        "tessera-chaos: {} nodes ({} driver{}), nemeses: {}",
        args.nodes,
        ctl.driver(),
        if ctl.can_skew_clocks() { ", each on a clock of its own" } else { "" },
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    );

    // The cluster map, for slots -> shards (replicas move, slots do not).
    let deadline = Instant::now() + Duration::from_secs(60);
    let topo = loop {
        let t = Topology::read(ctl.as_ref()).unwrap_or_default();
        if t.healthy() || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    anyhow::ensure!(!topo.shards.is_empty(), "no shards in the cluster map");

    let shared = workload::Shared::new(ctl.router(), Duration::from_millis(args.think_ms));
    let mut workers = Vec::new();
    let mut spawn = |f: fn(Arc<workload::Shared>, usize, u64), id: usize| {
        let (sh, s) = (shared.clone(), rng.random());
        workers.push(std::thread::spawn(move || f(sh, id, s)));
    };
    for id in 0..3 {
        spawn(workload::reg_worker, id);
    }
    for id in 3..5 {
        spawn(workload::tensor_worker, id);
    }
    for id in 5..7 {
        spawn(workload::set_worker, id);
    }
    for id in 7..9 {
        spawn(workload::model_reader, id);
    }
    for m in 0..2u64 {
        let (sh, s) = (shared.clone(), rng.random());
        workers.push(std::thread::spawn(move || workload::model_writer(sh, m, s)));
    }

    std::thread::sleep(Duration::from_secs(3));
    let mut nemesis = Nemesis::new(StdRng::seed_from_u64(rng.random()), kinds, shared.rec.start);
    let until = Instant::now() + Duration::from_secs(secs);
    nemesis.run(ctl.as_mut(), until)?;
    ctl.network(&[], 0)?;

    // Liveness: after the final heal, every shard must take a write.
    let healed = Instant::now();
    let liveness = probe_every_shard(ctl.router(), &topo, Duration::from_secs(args.liveness_secs));
    std::thread::sleep(Duration::from_secs(2));
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let liveness = liveness.map(|()| healed.elapsed().as_secs_f64() - 2.0);
    let so_far = shared.rec.take();
    let finals = workload::final_reads(&shared, &so_far);
    let mut history = so_far;
    history.extend(shared.rec.take());
    let run_secs = shared.rec.start.elapsed().as_secs_f64();

    eprintln!("tessera-chaos: checking {} operations", history.len());
    let checked = checker::check(&history);
    let failovers = report::failovers(&nemesis.events, &history, &topo);
    let summary = report::Summary {
        seed,
        driver: ctl.driver(),
        nodes: args.nodes,
        secs: run_secs,
        history: &history,
        events: &nemesis.events,
        checked: &checked,
        failovers: &failovers,
        recoveries: &nemesis.recoveries,
        unhealthy: &nemesis.unhealthy,
        liveness,
        final_reads: finals,
    };
    let text = summary.text();
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("summary.txt"), &text)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(args.out.join("history.jsonl"))?);
    for o in &history {
        serde_json::to_writer(&mut f, o)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    std::fs::write(args.out.join("faults.json"), serde_json::to_string_pretty(&nemesis.events)?)?;
    if let Err(e) = report::timeline(&args.out.join("timeline.png"), &history, &nemesis.events, run_secs) {
        eprintln!("tessera-chaos: no timeline: {e:#}");
    }
    print!("{text}");
    if summary.failed() {
        std::fs::write(args.out.join("cluster.log"), ctl.logs())?;
        eprintln!("tessera-chaos: logs in {}", args.out.join("cluster.log").display());
    }
    eprintln!("tessera-chaos: report in {}", args.out.display());
    Ok(!summary.failed())
}

/// Writes a key of every shard until each has taken one (bounded).
fn probe_every_shard(router: std::net::SocketAddr, topo: &Topology, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut keys: Vec<(u32, String)> = Vec::new();
    for &shard in topo.shards.keys() {
        let key = (0..)
            .map(|i| format!("chaos:probe:{i}"))
            .find(|k| topo.shard_of(report::slot_of(k)) == Some(shard))
            .expect("every shard has slots");
        keys.push((shard, key));
    }
    for (shard, key) in keys {
        loop {
            let ok = redis::Client::open(format!("redis://{router}/"))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut c| {
                    c.set_read_timeout(Some(Duration::from_secs(5)))?;
                    redis::cmd("SET").arg(&key).arg("1").query::<()>(&mut c)
                });
            if ok.is_ok() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("shard {shard} took no write within {within:?} of the final heal: {ok:?}"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}
