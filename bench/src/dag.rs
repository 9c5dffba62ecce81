//! DAG serving cost, measured side by side in one run, on RedisAI's mnist
//! (one.raw) and on a model of aibench's fraud-detection shape:
//!
//! (a) latency at concurrency 1 through a router: PING, MODELEXECUTE alone,
//!     the three-call round TENSORSET → MODELEXECUTE → TENSORGET, and the
//!     same round as one AI.DAGEXECUTE (ROUTING, no PERSIST: nothing is
//!     logged), as AI.DAGEXECUTE_RO, and with PERSIST (one logged write);
//!     against the model run in-process by ONNX Runtime;
//! (b) the fraud shape (two inputs, 1×30 and 1×256) as one DAG against the
//!     same work sent as four commands;
//! (c) read-only DAG throughput with N concurrent clients.
//!
//! The router's read policy (read-index or lease) is the cluster's: the
//! caller runs this once per policy and labels the runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tessera_backend::{Backend, DType, LoadOptions, Tensor};
use tessera_backend_onnx::OnnxBackend;

#[derive(Parser)]
struct Args {
    /// A Tessera router (plain mode) or any RedisAI server.
    #[arg(long, default_value = "127.0.0.1:6379")]
    router: String,
    /// RedisAI's test models (mnist.onnx, one.raw).
    #[arg(long)]
    testdata: PathBuf,
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Iterations for each latency run.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients for the throughput runs (comma-separated).
    #[arg(long, default_value = "16,64")]
    clients: String,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// A redis-server whose PING, timed by the same client, calibrates the
    /// round trip of this machine.
    #[arg(long)]
    peer: Option<String>,
    /// A label printed with every figure (the cluster's read policy, say).
    #[arg(long, default_value = "")]
    label: String,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

/// Prints and returns p50 and p99 (µs) of `v`.
fn line(label: &str, name: &str, mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
    println!("{label}{name:<52} p50 {p50:>9.1} us   p99 {p99:>9.1} us");
    (p50, p99)
}

/// A DAG's reply: an array with no error in it (a timed error would be
/// a figure of the wrong thing).
fn answered(v: redis::Value) -> Result<()> {
    match &v {
        redis::Value::Array(ops) if !ops.iter().any(|o| matches!(o, redis::Value::ServerError(_))) => Ok(()),
        _ => anyhow::bail!("the DAG failed: {v:?}"),
    }
}

/// Times `n` calls of `f` (after `n / 10` to warm up).
fn timed(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    for _ in 0..n / 10 {
        f()?;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(v)
}

/// `AI.TENSORSET key <dtype> <shape> BLOB <data>` arguments (no command).
fn tensor_args(cmd: &mut redis::Cmd, key: &str, t: &Tensor) {
    cmd.arg(key).arg(t.dtype.name());
    for d in &t.shape {
        cmd.arg(*d);
    }
    cmd.arg("BLOB").arg(&t.data[..]);
}

/// One model round as a DAG: `head` (command and prefix), a TENSORSET per
/// input, the run, a TENSORGET of its output.
fn dag(head: &[&str], model: &str, inputs: &[(&str, &Tensor)]) -> redis::Cmd {
    let mut cmd = redis::cmd(head[0]);
    cmd.arg(&head[1..]);
    for (name, t) in inputs {
        cmd.arg("|>").arg("AI.TENSORSET");
        tensor_args(&mut cmd, name, t);
    }
    cmd.arg("|>").arg("AI.MODELEXECUTE").arg(model).arg("INPUTS").arg(inputs.len());
    for (name, _) in inputs {
        cmd.arg(*name);
    }
    cmd.arg("OUTPUTS").arg(1).arg("out{d}").arg("|>").arg(&["AI.TENSORGET", "out{d}", "BLOB"]);
    cmd
}

/// The same work as separate commands: TENSORSETs, MODELEXECUTE, TENSORGET.
fn calls(con: &mut redis::Connection, model: &str, inputs: &[(&str, &Tensor)]) -> Result<()> {
    for (name, t) in inputs {
        let mut set = redis::cmd("AI.TENSORSET");
        tensor_args(&mut set, name, t);
        let _: () = set.query(con)?;
    }
    let mut run = redis::cmd("AI.MODELEXECUTE");
    run.arg(model).arg("INPUTS").arg(inputs.len());
    for (name, _) in inputs {
        run.arg(*name);
    }
    let _: () = run.arg("OUTPUTS").arg(1).arg("out{d}").query(con)?;
    let _: Vec<u8> = redis::cmd("AI.TENSORGET").arg("out{d}").arg("BLOB").query(con)?;
    Ok(())
}

fn store(con: &mut redis::Connection, key: &str, blob: &[u8]) -> Result<()> {
    let _: () = redis::cmd("AI.MODELSTORE").arg(key).arg("ONNX").arg("CPU").arg("BLOB").arg(blob).query(con)?;
    Ok(())
}

/// Read-only DAG rounds per second with `clients` connections.
async fn throughput(url: &str, one: &Tensor, clients: usize, secs: f64) -> Result<f64> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut con = client.get_multiplexed_async_connection_with_config(&config).await?;
        let cmd = dag(&["AI.DAGEXECUTE_RO", "ROUTING", "{d}"], "mnist{d}", &[("in{d}", one)]);
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                answered(cmd.query_async(&mut con).await?)?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let start = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64().max(secs))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let label = if a.label.is_empty() { String::new() } else { format!("[{}] ", a.label) };
    let read = |n: &str| std::fs::read(a.testdata.join(n)).with_context(|| format!("{n} in {}", a.testdata.display()));
    let lib = a.ort_lib.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tessera/ort/libonnxruntime.so")
    });
    let ort = OnnxBackend::load(&lib, 1).map_err(|e| anyhow::anyhow!(e))?;
    let mnist = read("mnist.onnx")?;
    let one = Tensor { dtype: DType::Float, shape: vec![1, 1, 28, 28], data: read("one.raw")?.into() };
    let fraud = tessera_tests::onnx::fraud_shape();
    let tx = tessera_backend::from_elements(vec![1, 30], &[0.25f32; 30]);
    let window = tessera_backend::from_elements(vec![1, 256], &[0.5f32; 256]);

    let url = format!("redis://{}/", a.router);
    let client = redis::Client::open(url.as_str())?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(10))?;
    con.set_read_timeout(Some(Duration::from_secs(60)))?;
    store(&mut con, "mnist{d}", &mnist)?;
    store(&mut con, "fraud{d}", &fraud)?;
    let n = a.requests;

    println!("== (a) mnist at concurrency 1, {n} runs each");
    // One intra-op and one inter-op thread, as a node runs models by default
    // (RedisAI's INTRA_OP_PARALLELISM and INTER_OP_PARALLELISM).
    let opts = LoadOptions { intra_op_threads: 1, inter_op_threads: 1, ..Default::default() };
    let model = ort.load(&mnist, &opts).map_err(|e| anyhow::anyhow!(e))?;
    let (local50, local99) = line(
        &label,
        "in-process ONNX Runtime",
        timed(n, || {
            std::hint::black_box(model.run(std::slice::from_ref(&one)).map_err(|e| anyhow::anyhow!(e))?);
            Ok(())
        })?,
    );
    line(
        &label,
        "PING, router",
        timed(n, || {
            let _: String = redis::cmd("PING").query(&mut con)?;
            Ok(())
        })?,
    );
    if let Some(peer) = &a.peer {
        let mut peer_con = redis::Client::open(format!("redis://{peer}/"))?.get_connection()?;
        line(
            &label,
            "PING, redis-server (same client)",
            timed(n, || {
                let _: String = redis::cmd("PING").query(&mut peer_con)?;
                Ok(())
            })?,
        );
    }
    let mut set = redis::cmd("AI.TENSORSET");
    tensor_args(&mut set, "in{d}", &one);
    let _: () = set.query(&mut con)?;
    let mut run = redis::cmd("AI.MODELEXECUTE");
    run.arg(&["mnist{d}", "INPUTS", "1", "in{d}", "OUTPUTS", "1", "out{d}"]);
    line(&label, "AI.MODELEXECUTE alone (run + one logged write)", timed(n, || Ok(run.query::<()>(&mut con)?))?);
    let mnist_in = [("in{d}", &one)];
    line(&label, "3 calls: TENSORSET, MODELEXECUTE, TENSORGET", timed(n, || calls(&mut con, "mnist{d}", &mnist_in))?);
    // Where a DAG round's time goes: the same round without the model (two
    // hops, the shard's read and the reply), and a plain read.
    let mut no_model = redis::cmd("AI.DAGEXECUTE_RO");
    no_model.arg(&["ROUTING", "{d}", "|>", "AI.TENSORSET"]);
    tensor_args(&mut no_model, "x", &one);
    no_model.arg(&["|>", "AI.TENSORGET", "x", "BLOB"]);
    line(
        &label,
        "AI.DAGEXECUTE_RO TENSORSET |> TENSORGET (no model)",
        timed(n, || {
            answered(no_model.query(&mut con)?)?;
            Ok(())
        })?,
    );
    line(
        &label,
        "AI.TENSORGET (a read, --read-policy)",
        timed(n, || {
            let _: Vec<u8> = redis::cmd("AI.TENSORGET").arg("in{d}").arg("BLOB").query(&mut con)?;
            Ok(())
        })?,
    );
    let heads: [(&str, &[&str]); 3] = [
        ("AI.DAGEXECUTE ROUTING, no PERSIST (nothing logged)", &["AI.DAGEXECUTE", "ROUTING", "{d}"]),
        ("AI.DAGEXECUTE_RO ROUTING", &["AI.DAGEXECUTE_RO", "ROUTING", "{d}"]),
        ("AI.DAGEXECUTE PERSIST 1 (one logged write)", &["AI.DAGEXECUTE", "PERSIST", "1", "out{d}"]),
    ];
    for (name, head) in heads {
        let cmd = dag(head, "mnist{d}", &mnist_in);
        let (p50, p99) = line(
            &label,
            name,
            timed(n, || {
                answered(cmd.query(&mut con)?)?;
                Ok(())
            })?,
        );
        println!(
            "{label}{:<52} added p50 {:>7.1} us   p99 {:>7.1} us over in-process",
            "",
            p50 - local50,
            p99 - local99
        );
    }

    println!("== (b) fraud shape (1x30 + 1x256 -> 1x2), {n} runs each");
    let fraud_in = [("tx{d}", &tx), ("window{d}", &window)];
    line(
        &label,
        "4 calls: 2 TENSORSETs, MODELEXECUTE, TENSORGET",
        timed(n, || calls(&mut con, "fraud{d}", &fraud_in))?,
    );
    let cmd = dag(&["AI.DAGEXECUTE_RO", "ROUTING", "{d}"], "fraud{d}", &fraud_in);
    line(
        &label,
        "one AI.DAGEXECUTE_RO",
        timed(n, || {
            answered(cmd.query(&mut con)?)?;
            Ok(())
        })?,
    );

    println!("== (c) mnist AI.DAGEXECUTE_RO throughput, {:.0} s per run", a.seconds);
    for clients in a.clients.split(',').filter_map(|c| c.trim().parse::<usize>().ok()) {
        let rps = throughput(&url, &one, clients, a.seconds).await?;
        println!("{label}{clients:>3} clients: {rps:>9.0} DAGs/s");
    }
    Ok(())
}
