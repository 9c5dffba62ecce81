//! Script serving cost, measured side by side in one run: a tiny script
//! (`a + b` on two 2-element tensors) run by AI.SCRIPTEXECUTE through a
//! router (3 replicas; the output is a Raft-logged write) against the same
//! compiled function called in-process on libtorch.
//!
//! (a) latency at concurrency 1: SCRIPTEXECUTE alone, and the 3-call round
//!     TENSORSET → SCRIPTEXECUTE → TENSORGET with each command's share;
//! (b) throughput with N concurrent clients (SCRIPTEXECUTE, each client its
//!     own output key), against in-process calls on one thread.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use tessera_backend::script::{HostReply, Script, ScriptCall, ScriptHost};
use tessera_backend::{from_elements, Device, Tensor};
use tessera_backend_torch::TorchScript;

const SOURCE: &str =
    "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] + tensors[1]\n";

#[derive(Parser)]
struct Args {
    /// A Tessera router (plain mode) or any RedisAI server.
    #[arg(long, default_value = "127.0.0.1:6379")]
    router: String,
    /// Iterations for the latency runs.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients for the throughput run.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds for the throughput run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
}

/// In-process calls make no host calls.
struct NoHost;

impl ScriptHost for NoHost {
    fn execute(&self, _: &[Bytes]) -> Result<HostReply, String> {
        Err("no host".into())
    }
    fn model_execute(&self, _: &[u8], _: Vec<Tensor>, _: usize) -> Result<Vec<Tensor>, String> {
        Err("no host".into())
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6
}

fn line(name: &str, mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let (p50, p99) = (pct(&v, 0.5), pct(&v, 0.99));
    println!("{name:<40} p50 {p50:>9.1} us   p99 {p99:>9.1} us");
    (p50, p99)
}

fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(60)))
}

fn execute(script: &str, out: &str) -> redis::Cmd {
    let mut c = redis::cmd("AI.SCRIPTEXECUTE");
    c.arg(script).arg("bar").arg("INPUTS").arg(2).arg("bench:a{s}").arg("bench:b{s}").arg("OUTPUTS").arg(1).arg(out);
    c
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let a = Args::parse();
    let x = from_elements(vec![2], &[2f32, 3.0]);

    // In-process: the compiled function, called as the node calls it.
    let script = TorchScript::compile(SOURCE, Device::Cpu(None), &["bar".into()]).map_err(|e| anyhow::anyhow!(e))?;
    let inputs = [x.clone(), x.clone()];
    let call = ScriptCall { function: "bar", inputs: &inputs, keys: &[], args: &[], outputs: 1 };
    let mut local = Vec::with_capacity(a.requests);
    for _ in 0..a.requests {
        let t = Instant::now();
        std::hint::black_box(script.run(&call, &NoHost).map_err(|e| anyhow::anyhow!(e))?);
        local.push(t.elapsed());
    }
    println!("== (a) latency, concurrency 1, {} runs each", a.requests);
    let (in_p50, in_p99) = line("in-process call", local);

    let client = redis::Client::open(format!("redis://{}", a.router))?;
    let mut con = client.get_multiplexed_async_connection_with_config(&config()).await?;
    let _: () = redis::cmd("AI.SCRIPTSTORE")
        .arg("bench:s{s}")
        .arg("CPU")
        .arg("ENTRY_POINTS")
        .arg(1)
        .arg("bar")
        .arg("SOURCE")
        .arg(SOURCE)
        .query_async(&mut con)
        .await?;
    let tensorset = |key: &str| {
        let mut c = redis::cmd("AI.TENSORSET");
        c.arg(key).arg("FLOAT").arg(2).arg("BLOB").arg(&x.data[..]);
        c
    };
    for k in ["bench:a{s}", "bench:b{s}"] {
        let _: () = tensorset(k).query_async(&mut con).await?;
    }
    let mut alone = Vec::with_capacity(a.requests);
    for _ in 0..a.requests {
        let t = Instant::now();
        let _: () = execute("bench:s{s}", "bench:c{s}").query_async(&mut con).await?;
        alone.push(t.elapsed());
    }
    let (p50, p99) = line("router SCRIPTEXECUTE", alone);
    println!("{:<40} p50 {:>9.1} us   p99 {:>9.1} us", "added by Tessera", p50 - in_p50, p99 - in_p99);

    let (mut round, mut set, mut exec, mut get) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.requests {
        let t = Instant::now();
        let _: () = tensorset("bench:a{s}").query_async(&mut con).await?;
        let t1 = Instant::now();
        let _: () = execute("bench:s{s}", "bench:c{s}").query_async(&mut con).await?;
        let t2 = Instant::now();
        let out: Vec<u8> = redis::cmd("AI.TENSORGET").arg("bench:c{s}").arg("BLOB").query_async(&mut con).await?;
        std::hint::black_box(out);
        set.push(t1 - t);
        exec.push(t2 - t1);
        get.push(t2.elapsed());
        round.push(t.elapsed());
    }
    line("router round (TENSORSET, EXECUTE, GET)", round);
    line("  TENSORSET (one logged write)", set);
    line("  SCRIPTEXECUTE (run + one logged write)", exec);
    line("  TENSORGET (a read)", get);

    println!("== (b) throughput, {} clients, {:.0} s", a.clients, a.seconds);
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let mut con = client.get_multiplexed_async_connection_with_config(&config()).await?;
        tasks.push(tokio::spawn(async move {
            let out = format!("bench:c{c}{{s}}");
            let mut n = 0u64;
            while Instant::now() < deadline {
                let _: () = execute("bench:s{s}", &out).query_async(&mut con).await?;
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
    let routed = total as f64 / start.elapsed().as_secs_f64().max(a.seconds);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs_f64(a.seconds.min(2.0)) {
        std::hint::black_box(script.run(&call, &NoHost).map_err(|e| anyhow::anyhow!(e))?);
        n += 1;
    }
    let local = n as f64 / start.elapsed().as_secs_f64();
    println!("in-process, one thread        {local:>10.0} calls/s");
    println!("router SCRIPTEXECUTE          {routed:>10.0} runs/s ({:.3}x in-process)", routed / local);
    Ok(())
}
