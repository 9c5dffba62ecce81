//! Model serving cost, measured side by side in one run:
//!
//! (a) latency at concurrency 1: TENSORSET → MODELEXECUTE → TENSORGET through
//!     a router (3 replicas, Raft-logged input and output writes) against
//!     the same model run in-process with ONNX Runtime; the difference is
//!     what Tessera adds;
//! (b) throughput with N concurrent clients, for a model stored without and
//!     with BATCHSIZE, against ONNX Runtime in-process running the same
//!     batches (one thread, batch = N).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use tessera_backend::{Backend, DType, Device, LoadOptions, Model, Tensor};
use tessera_backend_onnx::OnnxBackend;

#[derive(Parser)]
struct Args {
    /// A Tessera router (plain mode) or any RedisAI server.
    #[arg(long, default_value = "127.0.0.1:6379")]
    router: String,
    /// RedisAI's test models (mnist.onnx, mnist_batched.onnx, linear_iris.onnx, one.raw).
    #[arg(long)]
    testdata: PathBuf,
    #[arg(long)]
    ort_lib: Option<PathBuf>,
    /// Iterations for the latency runs.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients for the throughput runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The device models run on, through the router and in-process
    /// (`CPU`, `GPU`, `GPU:<n>`; GPU needs ONNX Runtime's GPU build).
    #[arg(long, default_value = "CPU")]
    device: String,
    /// CUDA 13 / cuDNN 9 libraries in pip's layout (`cu13/lib`,
    /// `cudnn/lib`) to preload for the in-process GPU runs.
    #[arg(long)]
    cuda_libs: Option<PathBuf>,
    /// The same router's TLS port: adds (c), TLS against plain, A/B/A/B.
    #[arg(long, requires = "tls_dir")]
    tls_router: Option<String>,
    /// `ca.crt`, `client.crt` and `client.key` for --tls-router (the layout
    /// `tessera-admin certs` writes).
    #[arg(long)]
    tls_dir: Option<PathBuf>,
}

/// A client of a router's plain port, or of its TLS port with the
/// certificates in `tls_dir`.
fn redis_client(addr: &str, tls_dir: Option<&Path>) -> Result<redis::Client> {
    let Some(dir) = tls_dir else {
        return Ok(redis::Client::open(format!("redis://{addr}/"))?);
    };
    let read = |f: &str| std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()));
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig { client_cert: read("client.crt")?, client_key: read("client.key")? }),
        root_cert: Some(read("ca.crt")?),
    };
    Ok(redis::Client::build_with_tls(format!("rediss://{addr}/"), certs)?)
}

struct Case {
    name: &'static str,
    blob: Vec<u8>,
    input: Tensor,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn in_process(model: &dyn Model, input: &Tensor, n: usize) -> Result<Vec<Duration>> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = model.run(std::slice::from_ref(input)).map_err(|e| anyhow::anyhow!(e))?;
        std::hint::black_box(out);
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// Latencies of the whole round (set, execute, get) and of each command.
struct Rounds {
    total: Vec<Duration>,
    set: Vec<Duration>,
    exec: Vec<Duration>,
    get: Vec<Duration>,
}

async fn through_router(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    input: &Tensor,
    n: usize,
    tag: &str,
) -> Result<Rounds> {
    let (a, b) = (format!("{tag}:in{{{tag}}}"), format!("{tag}:out{{{tag}}}"));
    let mut r = Rounds { total: Vec::new(), set: Vec::new(), exec: Vec::new(), get: Vec::new() };
    for _ in 0..n {
        let t = Instant::now();
        tensorset(con, &a, input).await?;
        let t1 = Instant::now();
        let _: () = redis::cmd("AI.MODELEXECUTE")
            .arg(key)
            .arg("INPUTS")
            .arg(1)
            .arg(&a)
            .arg("OUTPUTS")
            .arg(1)
            .arg(&b)
            .query_async(con)
            .await?;
        let t2 = Instant::now();
        let out: Vec<u8> = redis::cmd("AI.TENSORGET").arg(&b).arg("BLOB").query_async(con).await?;
        std::hint::black_box(out);
        r.set.push(t1 - t);
        r.exec.push(t2 - t1);
        r.get.push(t2.elapsed());
        r.total.push(t.elapsed());
    }
    for v in [&mut r.total, &mut r.set, &mut r.exec, &mut r.get] {
        v.sort();
    }
    Ok(r)
}

async fn tensorset(con: &mut redis::aio::MultiplexedConnection, key: &str, t: &Tensor) -> Result<()> {
    let mut cmd = redis::cmd("AI.TENSORSET");
    cmd.arg(key).arg(t.dtype.name());
    for d in &t.shape {
        cmd.arg(*d);
    }
    cmd.arg("BLOB").arg(&t.data[..]);
    let _: () = cmd.query_async(con).await?;
    Ok(())
}

/// Connections wait up to 60 s for a reply: at 64 clients on a loaded box a
/// durable round can take longer than redis-rs's 500 ms default, and a
/// benchmark should measure slowness, not fail on it.
fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)))
}

/// Runs per second with `clients` connections, each looping set/run/get.
async fn router_throughput(
    client: &redis::Client,
    model: &str,
    input: &Tensor,
    clients: usize,
    secs: f64,
) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut con = client.get_multiplexed_async_connection_with_config(&config()).await?;
        let (model, input) = (model.to_owned(), input.clone());
        // The model key's tag puts every client's tensors on its shard.
        let tag = model.split('{').nth(1).unwrap_or("}").trim_end_matches('}').to_owned();
        tasks.push(tokio::spawn(async move {
            let (a, b) = (format!("c{c}:in{{{tag}}}"), format!("c{c}:out{{{tag}}}"));
            let mut n = 0u64;
            while Instant::now() < deadline {
                tensorset(&mut con, &a, &input).await?;
                let _: () = redis::cmd("AI.MODELEXECUTE")
                    .arg(&model)
                    .arg("INPUTS")
                    .arg(1)
                    .arg(&a)
                    .arg("OUTPUTS")
                    .arg(1)
                    .arg(&b)
                    .query_async(&mut con)
                    .await?;
                let _: Vec<u8> = redis::cmd("AI.TENSORGET").arg(&b).arg("BLOB").query_async(&mut con).await?;
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

fn batch_of(input: &Tensor, n: usize) -> Tensor {
    let mut shape = input.shape.clone();
    shape[0] *= n as i64;
    let mut data = Vec::with_capacity(input.data.len() * n);
    for _ in 0..n {
        data.extend_from_slice(&input.data);
    }
    Tensor { dtype: input.dtype, shape, data: data.into() }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let read = |n: &str| std::fs::read(a.testdata.join(n)).with_context(|| format!("{n} in {}", a.testdata.display()));
    let lib = a.ort_lib.clone().unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tessera/ort/libonnxruntime.so")
    });
    if let Some(d) = &a.cuda_libs {
        OnnxBackend::preload_cuda(&d.join("cu13/lib"), &d.join("cudnn/lib")).map_err(|e| anyhow::anyhow!(e))?;
    }
    let ort = Arc::new(OnnxBackend::load(&lib, 1).map_err(|e| anyhow::anyhow!(e))?);
    let device = Device::parse(a.device.as_bytes()).with_context(|| format!("bad device {}", a.device))?;
    let opts = LoadOptions { device, ..Default::default() };
    let one = Tensor { dtype: DType::Float, shape: vec![1, 1, 28, 28], data: read("one.raw")?.into() };
    let iris = tessera_backend::from_elements(vec![1, 4], &[5.0f32, 3.4, 1.6, 0.4]);
    let cases = [
        Case { name: "linear_iris (tiny)", blob: read("linear_iris.onnx")?, input: iris },
        Case { name: "mnist", blob: read("mnist.onnx")?, input: one.clone() },
    ];
    let client = redis_client(&a.router, None)?;
    let mut con = client.get_multiplexed_async_connection_with_config(&config()).await?;

    println!(
        "== (a) latency, concurrency 1, {} runs each, on {} (router: TENSORSET + MODELEXECUTE + TENSORGET)",
        a.requests, a.device
    );
    for (i, c) in cases.iter().enumerate() {
        let key = format!("bench:m{i}{{b{i}}}");
        let _: () = redis::cmd("AI.MODELSTORE")
            .arg(&key)
            .arg("ONNX")
            .arg(&a.device)
            .arg("BLOB")
            .arg(&c.blob[..])
            .query_async(&mut con)
            .await?;
        let model = ort.load(&c.blob, &opts).map_err(|e| anyhow::anyhow!(e))?;
        in_process(model.as_ref(), &c.input, a.requests / 10)?; // warm-up
        let local = in_process(model.as_ref(), &c.input, a.requests)?;
        through_router(&mut con, &key, &c.input, a.requests / 10, &format!("b{i}")).await?;
        let rounds = through_router(&mut con, &key, &c.input, a.requests, &format!("b{i}")).await?;
        let remote = rounds.total.clone();
        println!(
            "{:<20} in-process p50 {:>8.1} us p99 {:>8.1} us | router p50 {:>8.1} us p99 {:>8.1} us | added p50 {:>8.1} us p99 {:>8.1} us",
            c.name,
            us(pct(&local, 0.5)),
            us(pct(&local, 0.99)),
            us(pct(&remote, 0.5)),
            us(pct(&remote, 0.99)),
            us(pct(&remote, 0.5)) - us(pct(&local, 0.5)),
            us(pct(&remote, 0.99)) - us(pct(&local, 0.99)),
        );
        println!(
            "{:<20} router p50 by command: TENSORSET {:.1} us, MODELEXECUTE {:.1} us (run + one logged write), TENSORGET {:.1} us",
            "",
            us(pct(&rounds.set, 0.5)),
            us(pct(&rounds.exec, 0.5)),
            us(pct(&rounds.get, 0.5)),
        );
    }

    println!("== (b) mnist throughput, {} clients, {:.0} s per run, on {}", a.clients, a.seconds, a.device);
    let batched = read("mnist_batched.onnx")?;
    let _: () = redis::cmd("AI.MODELSTORE")
        .arg("bench:plain{t}")
        .arg("ONNX")
        .arg(&a.device)
        .arg("BLOB")
        .arg(&batched[..])
        .query_async(&mut con)
        .await?;
    let _: () = redis::cmd("AI.MODELSTORE")
        .arg("bench:batched{t}")
        .arg("ONNX")
        .arg(&a.device)
        .arg("BATCHSIZE")
        .arg(a.clients)
        .arg("BLOB")
        .arg(&batched[..])
        .query_async(&mut con)
        .await?;
    let model = ort.load(&batched, &opts).map_err(|e| anyhow::anyhow!(e))?;
    let big = batch_of(&one, a.clients);
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed().as_secs_f64() < a.seconds.min(5.0) {
        std::hint::black_box(model.run(std::slice::from_ref(&big)).map_err(|e| anyhow::anyhow!(e))?);
        runs += 1;
    }
    let local_batched = (runs * a.clients) as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed().as_secs_f64() < a.seconds.min(5.0) {
        std::hint::black_box(model.run(std::slice::from_ref(&one)).map_err(|e| anyhow::anyhow!(e))?);
        runs += 1;
    }
    let local_single = runs as f64 / start.elapsed().as_secs_f64();
    // What auto-batching hands the runtime: a batch size that changes from
    // run to run (every size once, then again).
    let sizes: Vec<Tensor> = (1..=a.clients).map(|n| batch_of(&one, n)).collect();
    let start = Instant::now();
    let mut samples = 0usize;
    let mut i = 0usize;
    while start.elapsed().as_secs_f64() < a.seconds.min(5.0) {
        let t = &sizes[i % sizes.len()];
        std::hint::black_box(model.run(std::slice::from_ref(t)).map_err(|e| anyhow::anyhow!(e))?);
        samples += i % sizes.len() + 1;
        i += 1;
    }
    let local_varying = samples as f64 / start.elapsed().as_secs_f64();
    let plain = router_throughput(&client, "bench:plain{t}", &one, a.clients, a.seconds).await?;
    let with_batch = router_throughput(&client, "bench:batched{t}", &one, a.clients, a.seconds).await?;
    println!("in-process ORT, batch {:>3}: {:>9.0} samples/s", a.clients, local_batched);
    println!("in-process ORT, batch   1: {:>9.0} samples/s", local_single);
    println!("in-process ORT, batch 1..{}, each size in turn: {:>9.0} samples/s", a.clients, local_varying);
    println!(
        "router, no BATCHSIZE      : {:>9.0} samples/s  ({:.2}x in-process batched)",
        plain,
        plain / local_batched
    );
    println!(
        "router, BATCHSIZE {:>3}     : {:>9.0} samples/s  ({:.2}x in-process batched)",
        a.clients,
        with_batch,
        with_batch / local_batched
    );
    if let (Some(tls_addr), Some(dir)) = (&a.tls_router, &a.tls_dir) {
        tls_against_plain(&a, &client, &redis_client(tls_addr, Some(dir))?, &one).await?;
    }
    Ok(())
}

/// (c) The mnist round at one client and mnist throughput, through the TLS
/// port and the plain port of the same router, alternating A/B/A/B.
async fn tls_against_plain(a: &Args, plain: &redis::Client, tls: &redis::Client, one: &Tensor) -> Result<()> {
    println!("== (c) TLS against plain on the same router, mnist, A/B/A/B");
    let mut pcon = plain.get_multiplexed_async_connection_with_config(&config()).await?;
    let mut tcon = tls.get_multiplexed_async_connection_with_config(&config()).await?;
    let key = "bench:m1{b1}";
    through_router(&mut tcon, key, one, a.requests / 10, "b1").await?;
    for round in 1..=2 {
        let p = through_router(&mut pcon, key, one, a.requests, "b1").await?.total;
        let t = through_router(&mut tcon, key, one, a.requests, "b1").await?.total;
        println!(
            "round {round}: 1 client, plain p50 {:>7.1} us p99 {:>7.1} us | TLS p50 {:>7.1} us p99 {:>7.1} us | rounds/s TLS/plain {:.2}",
            us(pct(&p, 0.5)),
            us(pct(&p, 0.99)),
            us(pct(&t, 0.5)),
            us(pct(&t, 0.99)),
            us(pct(&p, 0.5)) / us(pct(&t, 0.5)),
        );
        let p = router_throughput(plain, "bench:plain{t}", one, a.clients, a.seconds).await?;
        let t = router_throughput(tls, "bench:plain{t}", one, a.clients, a.seconds).await?;
        println!(
            "round {round}: {} clients, plain {:>8.0} samples/s | TLS {:>8.0} samples/s | TLS/plain {:.2}",
            a.clients,
            p,
            t,
            t / p
        );
    }
    Ok(())
}
