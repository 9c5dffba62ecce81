//! GPU execution end to end, through the router: ONNX Runtime's CUDA
//! provider and libtorch's CUDA device, checked against the same models on
//! the CPU; a GPU model served by a new leader after a kill; devices that do
//! not exist refused at MODELSTORE with nothing stored.
//!
//! They need an NVIDIA GPU and the runtimes' GPU builds (`TESSERA_GPU=1
//! scripts/setup.sh`), so they are ignored unless asked for:
//! `cargo test -p tessera-tests --test gpu -- --ignored --nocapture`
//! (`scripts/gpu-bundle.sh` packs them for a GPU machine without a toolchain). They
//! print CPU and GPU run times; nothing is asserted about speed.

use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Value};
use tessera_tests::client::{connect, exec, ok, serial};
use tessera_tests::{testdata, Cluster};

fn store(con: &mut Connection, key: &str, backend: &str, device: &str, blob: &[u8]) -> RedisResult<Value> {
    redis::cmd("AI.MODELSTORE").arg(key).arg(backend).arg(device).arg("BLOB").arg(blob).query(con)
}

fn floats(con: &mut Connection, key: &str) -> Vec<f32> {
    let blob: Vec<u8> = redis::cmd("AI.TENSORGET").arg(key).arg("BLOB").query(con).unwrap();
    blob.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn set_floats(con: &mut Connection, key: &str, shape: &[usize], v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut cmd = redis::cmd("AI.TENSORSET");
    cmd.arg(key).arg("FLOAT");
    for d in shape {
        cmd.arg(*d);
    }
    ok(cmd.arg("BLOB").arg(bytes).query(con));
}

fn device_of(con: &mut Connection, key: &str) -> String {
    let Value::Array(meta) = exec(con, &["AI.MODELGET", key, "META"]).unwrap() else { panic!() };
    for p in meta.chunks(2) {
        if p[0] == Value::BulkString(b"device".to_vec()) {
            let Value::BulkString(d) = &p[1] else { panic!("{p:?}") };
            return String::from_utf8_lossy(d).into_owned();
        }
    }
    panic!("no device in META")
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())), "element {i}: {x} vs {y}");
    }
}

/// Median wall time of `n` runs of MODELEXECUTE `model` on `input`.
fn p50_execute(con: &mut Connection, model: &str, input: &str, output: &str, n: usize) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            ok(exec(con, &["AI.MODELEXECUTE", model, "INPUTS", "1", input, "OUTPUTS", "1", output]));
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

fn missing(con: &mut Connection, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS").arg(key).query(con).unwrap();
    n == 0
}

#[test]
#[ignore = "needs an NVIDIA GPU and the GPU runtimes (TESSERA_GPU=1 scripts/setup.sh, or scripts/gpu-bundle.sh)"]
fn onnx_models_run_on_the_gpu() {
    let _serial = serial();
    let mut c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mnist = testdata("mnist.onnx");
    ok(store(&mut con, "cpu{1}", "ONNX", "CPU", &mnist));
    ok(store(&mut con, "gpu{1}", "ONNX", "GPU", &mnist));
    ok(store(&mut con, "gpu0{1}", "ONNX", "GPU:0", &mnist));
    assert_eq!(device_of(&mut con, "gpu{1}"), "GPU");
    assert_eq!(device_of(&mut con, "gpu0{1}"), "GPU:0");
    // A device this machine lacks: the provider's error, nothing stored.
    let e = store(&mut con, "gpu9{1}", "ONNX", "GPU:9", &mnist).unwrap_err();
    eprintln!("ONNX GPU:9 -> {e}");
    assert!(missing(&mut con, "gpu9{1}"));

    let one = testdata("one.raw");
    let pixels: Vec<f32> = one.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    set_floats(&mut con, "in{1}", &[1, 1, 28, 28], &pixels);
    for m in ["cpu{1}", "gpu{1}", "gpu0{1}"] {
        ok(exec(&mut con, &["AI.MODELEXECUTE", m, "INPUTS", "1", "in{1}", "OUTPUTS", "1", &format!("out-{m}")]));
    }
    let cpu = floats(&mut con, "out-cpu{1}");
    let gpu = floats(&mut con, "out-gpu{1}");
    assert_close(&cpu, &gpu, 1e-3);
    assert_close(&cpu, &floats(&mut con, "out-gpu0{1}"), 1e-3);
    let best = (0..10).max_by(|a, b| gpu[*a].total_cmp(&gpu[*b])).unwrap();
    assert_eq!(best, 1, "mnist on the GPU reads one.raw as a 1: {gpu:?}");

    // Auto-batching on the GPU: concurrent clients, one model with BATCHSIZE
    // (mnist.onnx fixes its batch at 1; RedisAI's batched variant does not).
    ok(redis::cmd("AI.MODELSTORE")
        .arg("b{1}")
        .arg("ONNX")
        .arg("GPU")
        .arg("BATCHSIZE")
        .arg(8)
        .arg("BLOB")
        .arg(&testdata("mnist_batched.onnx")[..])
        .query(&mut con));
    std::thread::scope(|s| {
        for t in 0..8 {
            let c = &c;
            s.spawn(move || {
                let mut con = connect(c);
                for i in 0..10 {
                    let out = format!("bo{t}-{i}{{1}}");
                    ok(exec(&mut con, &["AI.MODELEXECUTE", "b{1}", "INPUTS", "1", "in{1}", "OUTPUTS", "1", &out]));
                    let v = floats(&mut con, &out);
                    assert_eq!((0..10).max_by(|a, b| v[*a].total_cmp(&v[*b])).unwrap(), 1);
                }
            });
        }
    });

    // Requests per model run on the nodes (the engine's histogram).
    let (mut sum, mut count) = (0.0, 0.0);
    for id in 1..=3 {
        let text = c.node_metrics_text(id).unwrap_or_default();
        sum += tessera_tests::metric(&text, "tessera_node_model_batch_requests_sum");
        count += tessera_tests::metric(&text, "tessera_node_model_batch_requests_count");
    }
    eprintln!("FIGURE model runs so far: {count} runs for {sum} requests (8 clients on a BATCHSIZE 8 GPU model)");

    // Speed, printed: a chain of 1024x1024 products, X = 1/n everywhere
    // (X.X = X, so the output is known).
    let n = 1024usize;
    let chain = tessera_tests::onnx::matmul_chain(n as u64, 8);
    ok(store(&mut con, "chain-cpu{1}", "ONNX", "CPU", &chain));
    ok(store(&mut con, "chain-gpu{1}", "ONNX", "GPU", &chain));
    set_floats(&mut con, "x{1}", &[n, n], &vec![1.0 / n as f32; n * n]);
    let gpu_t = p50_execute(&mut con, "chain-gpu{1}", "x{1}", "y-gpu{1}", 21);
    let cpu_t = p50_execute(&mut con, "chain-cpu{1}", "x{1}", "y-cpu{1}", 5);
    let y = floats(&mut con, "y-gpu{1}");
    assert_close(&y, &vec![1.0 / n as f32; n * n], 1e-3);
    assert_close(&y, &floats(&mut con, "y-cpu{1}"), 1e-3);
    let mnist_gpu = p50_execute(&mut con, "gpu{1}", "in{1}", "o{1}", 51);
    let mnist_cpu = p50_execute(&mut con, "cpu{1}", "in{1}", "o{1}", 51);
    eprintln!(
        "FIGURE onnx matmul chain 8 x 1024^2 (17 GFLOP) MODELEXECUTE p50: GPU {:.2} ms, CPU {:.2} ms ({:.1}x)",
        gpu_t.as_secs_f64() * 1e3,
        cpu_t.as_secs_f64() * 1e3,
        cpu_t.as_secs_f64() / gpu_t.as_secs_f64()
    );
    eprintln!(
        "FIGURE onnx mnist MODELEXECUTE p50: GPU {:.0} us, CPU {:.0} us",
        mnist_gpu.as_secs_f64() * 1e6,
        mnist_cpu.as_secs_f64() * 1e6
    );

    // Every replica loaded the GPU model when it applied it: after its
    // leader is killed, a new leader runs it at once.
    let tags = ["{a}", "{b}", "{c}", "{d}", "{e}"];
    for t in tags {
        ok(store(&mut con, &format!("m{t}"), "ONNX", "GPU", &mnist));
        set_floats(&mut con, &format!("in{t}"), &[1, 1, 28, 28], &pixels);
    }
    c.kill_node(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in tags {
        loop {
            let mut con = connect(&c);
            let (m, a, b) = (format!("m{t}"), format!("in{t}"), format!("out{t}"));
            match exec(&mut con, &["AI.MODELEXECUTE", &m, "INPUTS", "1", &a, "OUTPUTS", "1", &b]) {
                Ok(_) => {
                    assert_close(&floats(&mut con, &b), &cpu, 1e-3);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{t}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{t}: no leader served the GPU model: {e}"),
            }
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and the GPU runtimes (TESSERA_GPU=1 scripts/setup.sh, or scripts/gpu-bundle.sh)"]
fn torch_models_run_on_the_gpu() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    // RedisAI's pt-minimal.pt: forward(a, b) = a + b.
    let pt = testdata("pt-minimal.pt");
    ok(store(&mut con, "tcpu{1}", "TORCH", "CPU", &pt));
    ok(store(&mut con, "tgpu{1}", "TORCH", "GPU", &pt));
    assert_eq!(device_of(&mut con, "tgpu{1}"), "GPU");
    let e = store(&mut con, "tgpu9{1}", "TORCH", "GPU:9", &pt).unwrap_err();
    eprintln!("TORCH GPU:9 -> {e}");
    assert!(e.to_string().contains("GPU:9 requested but this node has"), "{e}");
    assert!(missing(&mut con, "tgpu9{1}"));

    set_floats(&mut con, "a{1}", &[2, 2], &[2.0, 3.0, 2.0, 3.0]);
    set_floats(&mut con, "b{1}", &[2, 2], &[1.0, 1.5, -2.0, 0.25]);
    for m in ["tcpu{1}", "tgpu{1}"] {
        let out = format!("s-{m}");
        ok(exec(&mut con, &["AI.MODELEXECUTE", m, "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", &out]));
        assert_eq!(floats(&mut con, &out), vec![3.0, 4.5, 0.0, 3.25], "{m}");
    }
    let p50 = |con: &mut Connection, m: &str| {
        let mut t: Vec<Duration> = (0..51)
            .map(|_| {
                let s = Instant::now();
                ok(exec(con, &["AI.MODELEXECUTE", m, "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", "s{1}"]));
                s.elapsed()
            })
            .collect();
        t.sort();
        t[25]
    };
    let (g, cpu) = (p50(&mut con, "tgpu{1}"), p50(&mut con, "tcpu{1}"));
    eprintln!(
        "FIGURE torch pt-minimal MODELEXECUTE p50: GPU {:.0} us, CPU {:.0} us",
        g.as_secs_f64() * 1e6,
        cpu.as_secs_f64() * 1e6
    );
}
