//! Models end to end: RedisAI's own ONNX models stored through the router,
//! replicated by Raft, run by ONNX Runtime on the shard leader, with
//! RedisAI's replies and errors; auto-batching with concurrent clients; a
//! stored model surviving the loss of its leader.

use std::time::{Duration, Instant};

use redis::{Connection, Value};
use tessera_tests::client::{connect, err_text, exec, ok, serial};
use tessera_tests::{testdata, Cluster};

/// Whether the nodes load ONNX Runtime's GPU build (the library the node's
/// own settings pick, with the CUDA provider beside it): GPU models then
/// store, so the CPU-only refusal does not apply.
fn onnx_gpu_installed() -> bool {
    let lib = tessera_node::engine::registry::Settings::default().onnx_lib;
    lib.parent().is_some_and(|d| d.join("libonnxruntime_providers_cuda.so").exists())
}

/// The 10 mnist scores of `key` and the best digit.
fn best_digit(con: &mut Connection, key: &str) -> usize {
    let blob: Vec<u8> = redis::cmd("AI.TENSORGET").arg(key).arg("BLOB").query(con).unwrap();
    let scores: Vec<f32> = blob.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(scores.len(), 10);
    (0..10).max_by(|a, b| scores[*a].total_cmp(&scores[*b])).unwrap()
}

fn store_one(con: &mut Connection, key: &str) {
    let one = testdata("one.raw");
    ok(redis::cmd("AI.TENSORSET")
        .arg(key)
        .arg("FLOAT")
        .arg(1)
        .arg(1)
        .arg(28)
        .arg(28)
        .arg("BLOB")
        .arg(&one[..])
        .query(con));
}

fn pairs(v: Value) -> Vec<(String, Value)> {
    let Value::Array(items) = v else { panic!("{v:?}") };
    items
        .chunks(2)
        .map(|p| {
            let Value::BulkString(k) = &p[0] else { panic!("{p:?}") };
            (String::from_utf8_lossy(k).into_owned(), p[1].clone())
        })
        .collect()
}

fn field<'a>(p: &'a [(String, Value)], name: &str) -> &'a Value {
    &p.iter().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name} in {p:?}")).1
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn onnx_mnist_store_get_execute_info_delete() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mnist = testdata("mnist.onnx");
    ok(redis::cmd("AI.MODELSTORE")
        .arg("m{1}")
        .arg("ONNX")
        .arg("cpu")
        .arg("TAG")
        .arg("v1")
        .arg("BLOB")
        .arg(&mnist[..])
        .query(&mut con));
    let t: String = redis::cmd("TYPE").arg("m{1}").query(&mut con).unwrap();
    assert_eq!(t, "AI__MODEL");

    // META: RedisAI's 16 labelled entries; names come from the session.
    let meta = pairs(redis::cmd("AI.MODELGET").arg("m{1}").arg("META").query(&mut con).unwrap());
    assert_eq!(meta.len(), 8);
    assert_eq!(field(&meta, "backend"), &Value::BulkString(b"ONNX".to_vec()));
    assert_eq!(field(&meta, "device"), &Value::BulkString(b"cpu".to_vec()));
    assert_eq!(field(&meta, "tag"), &Value::BulkString(b"v1".to_vec()));
    assert_eq!(field(&meta, "batchsize"), &Value::Int(0));
    let Value::Array(inputs) = field(&meta, "inputs") else { panic!() };
    assert_eq!(inputs.len(), 1);
    // BLOB: byte-identical to the upload.
    let blob: Vec<u8> = redis::cmd("AI.MODELGET").arg("m{1}").arg("BLOB").query(&mut con).unwrap();
    assert_eq!(blob, mnist);

    store_one(&mut con, "a{1}");
    ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"]));
    assert_eq!(best_digit(&mut con, "b{1}"), 1);
    // Deprecated MODELRUN, with TIMEOUT before INPUTS.
    ok(exec(&mut con, &["AI.MODELRUN", "m{1}", "TIMEOUT", "5000", "INPUTS", "a{1}", "OUTPUTS", "c{1}"]));
    assert_eq!(best_digit(&mut con, "c{1}"), 1);

    let info = pairs(redis::cmd("AI.INFO").arg("m{1}").query(&mut con).unwrap());
    assert_eq!(info.len(), 9);
    assert_eq!(field(&info, "type"), &Value::BulkString(b"MODEL".to_vec()));
    assert_eq!(field(&info, "calls"), &Value::Int(2));
    assert_eq!(field(&info, "samples"), &Value::Int(2));
    assert_eq!(field(&info, "errors"), &Value::Int(0));
    ok(exec(&mut con, &["AI.INFO", "m{1}", "RESETSTAT"]));
    let info = pairs(redis::cmd("AI.INFO").arg("m{1}").query(&mut con).unwrap());
    assert_eq!(field(&info, "calls"), &Value::Int(0));

    ok(exec(&mut con, &["AI.MODELDEL", "m{1}"]));
    assert_eq!(err_text(exec(&mut con, &["AI.MODELGET", "m{1}", "META"])), "ERR model key is empty");
    assert_eq!(err_text(exec(&mut con, &["AI.INFO", "m{1}"])), "ERR cannot find run info for key");
    assert_eq!(err_text(exec(&mut con, &["AI.MODELDEL", "m{1}"])), "ERR model key is empty");
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn bad_models_and_bad_runs_are_refused_and_change_nothing() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mnist = testdata("mnist.onnx");

    // Garbage bytes: ORT's error, no key.
    let e = err_text(
        redis::cmd("AI.MODELSTORE").arg("g{1}").arg("ONNX").arg("CPU").arg("BLOB").arg("garbage").query(&mut con),
    );
    assert!(!e.is_empty(), "{e}");
    let exists: i64 = redis::cmd("EXISTS").arg("g{1}").query(&mut con).unwrap();
    assert_eq!(exists, 0);
    // Devices: GPU without CUDA (ONNX Runtime's CPU build), TPU, malformed.
    if !onnx_gpu_installed() {
        let e = err_text(
            redis::cmd("AI.MODELSTORE").arg("g{1}").arg("ONNX").arg("GPU").arg("BLOB").arg(&mnist[..]).query(&mut con),
        );
        assert_eq!(e, "ERR GPU requested but ONNX couldn't find CUDA");
    }
    let e = err_text(
        redis::cmd("AI.MODELSTORE").arg("g{1}").arg("ONNX").arg("TPU").arg("BLOB").arg(&mnist[..]).query(&mut con),
    );
    assert!(e.starts_with("ERR unsupported device"), "{e}");
    assert_eq!(
        err_text(exec(&mut con, &["AI.MODELSTORE", "g{1}", "ONNX", "CPU:1.8", "BLOB", "x"])),
        "ERR Invalid DEVICE"
    );
    assert_eq!(
        err_text(exec(&mut con, &["AI.MODELSTORE", "g{1}", "MXNET", "CPU", "BLOB", "x"])),
        "ERR unsupported backend"
    );
    // A model over a string key: WRONGTYPE, the string stays.
    let _: () = redis::cmd("SET").arg("s{1}").arg("keep").query(&mut con).unwrap();
    let e = err_text(
        redis::cmd("AI.MODELSTORE").arg("s{1}").arg("ONNX").arg("CPU").arg("BLOB").arg(&mnist[..]).query(&mut con),
    );
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let s: String = redis::cmd("GET").arg("s{1}").query(&mut con).unwrap();
    assert_eq!(s, "keep");

    // Chunked upload: three chunks make the same model.
    let (a, rest) = mnist.split_at(1000);
    let (b, d) = rest.split_at(10_000);
    ok(redis::cmd("AI.MODELSTORE").arg("m{1}").arg("ONNX").arg("CPU").arg("BLOB").arg(a).arg(b).arg(d).query(&mut con));
    let blob: Vec<u8> = redis::cmd("AI.MODELGET").arg("m{1}").arg("BLOB").query(&mut con).unwrap();
    assert_eq!(blob, mnist);
    // MODEL_CHUNK_SIZE applies on every node: the blob comes back in chunks.
    ok(exec(&mut con, &["AI.CONFIG", "MODEL_CHUNK_SIZE", &(mnist.len() / 3).to_string()]));
    let v: Value = redis::cmd("AI.MODELGET").arg("m{1}").arg("BLOB").query(&mut con).unwrap();
    let Value::Array(chunks) = v else { panic!("{v:?}") };
    assert_eq!(chunks.len(), 4);
    let v: i64 = redis::cmd("AI.CONFIG").arg("GET").arg("MODEL_CHUNK_SIZE").query(&mut con).unwrap();
    assert_eq!(v, (mnist.len() / 3) as i64);
    assert_eq!(
        err_text(exec(&mut con, &["AI.CONFIG", "MODEL_CHUNK_SIZE", "0"])),
        "ERR MODEL_CHUNK_SIZE: invalid chunk size"
    );
    assert_eq!(err_text(exec(&mut con, &["AI.CONFIG", "NOPE"])), "ERR unsupported subcommand");
    ok(exec(&mut con, &["AI.CONFIG", "MODEL_CHUNK_SIZE", "535822336"]));

    store_one(&mut con, "a{1}");
    let run = |con: &mut Connection, args: &[&str]| err_text(exec(con, args));
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "nope{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"]),
        "ERR model key is empty"
    );
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "s{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"])
            .split(' ')
            .next()
            .unwrap(),
        "WRONGTYPE"
    );
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "2", "a{1}", "a{1}", "OUTPUTS", "1", "b{1}"]),
        "Number of keys given as INPUTS here does not match model definition"
    );
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "missing{1}", "OUTPUTS", "1", "b{1}"]),
        "ERR tensor key is empty or in a different shard"
    );
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{2}"]),
        "CROSSSLOT Keys in request don't hash to the same slot"
    );
    assert_eq!(
        run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}"]),
        "ERR wrong number of arguments for 'AI.MODELEXECUTE' command"
    );
    // Shapes and dtypes the model rejects: ORT's text; the node stays up.
    ok(exec(&mut con, &["AI.TENSORSET", "bad{1}", "FLOAT", "1", "1", "28", "27"]));
    let e = run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "bad{1}", "OUTPUTS", "1", "b{1}"]);
    assert!(e.contains("dimensions"), "{e}");
    ok(exec(&mut con, &["AI.TENSORSET", "dbl{1}", "DOUBLE", "1", "1", "28", "28"]));
    let e = run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "dbl{1}", "OUTPUTS", "1", "b{1}"]);
    assert!(!e.is_empty());
    let exists: i64 = redis::cmd("EXISTS").arg("b{1}").query(&mut con).unwrap();
    assert_eq!(exists, 0, "a failed run writes no output");
    // An output key holding a string: just WRONGTYPE (RedisAI sends OK and
    // then a stray error), and the string stays.
    let e = run(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "s{1}"]);
    assert!(e.starts_with("WRONGTYPE"), "{e}");
    let s: String = redis::cmd("GET").arg("s{1}").query(&mut con).unwrap();
    assert_eq!(s, "keep");
    let info = pairs(redis::cmd("AI.INFO").arg("m{1}").query(&mut con).unwrap());
    assert_eq!(field(&info, "errors"), &Value::Int(2), "{info:?}");
    // And the model still runs.
    ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"]));
    assert_eq!(best_digit(&mut con, "b{1}"), 1);

    // MODEL_EXECUTION_TIMEOUT (sent to every node): an ONNX run past it is
    // stopped with ORT's error and writes nothing. 96 products of 1024²
    // matrices take seconds on one thread; the limit is 1 s.
    let slow = tessera_tests::onnx::matmul_chain(1024, 96);
    ok(redis::cmd("AI.MODELSTORE").arg("slow{1}").arg("ONNX").arg("CPU").arg("BLOB").arg(&slow[..]).query(&mut con));
    let zeros = vec![0u8; 1024 * 1024 * 4];
    ok(redis::cmd("AI.TENSORSET")
        .arg("x{1}")
        .arg("FLOAT")
        .arg(1024)
        .arg(1024)
        .arg("BLOB")
        .arg(&zeros[..])
        .query(&mut con));
    ok(exec(&mut con, &["AI.CONFIG", "MODEL_EXECUTION_TIMEOUT", "1000"]));
    let e = run(&mut con, &["AI.MODELEXECUTE", "slow{1}", "INPUTS", "1", "x{1}", "OUTPUTS", "1", "y{1}"]);
    assert!(e.contains("Exiting due to terminate flag being set to true"), "{e}");
    let exists: i64 = redis::cmd("EXISTS").arg("y{1}").query(&mut con).unwrap();
    assert_eq!(exists, 0, "a stopped run writes no output");
    ok(exec(&mut con, &["AI.CONFIG", "MODEL_EXECUTION_TIMEOUT", "5000"]));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"]));
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn concurrent_clients_are_batched() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mnist = testdata("mnist_batched.onnx");
    // MINBATCHSIZE 2 with no MINBATCHTIMEOUT: a lone request waits for a
    // partner, so two clients' runs can only finish as one batch.
    ok(redis::cmd("AI.MODELSTORE")
        .arg("m{1}")
        .arg("ONNX")
        .arg("CPU")
        .arg("BATCHSIZE")
        .arg(2)
        .arg("MINBATCHSIZE")
        .arg(2)
        .arg("BLOB")
        .arg(&mnist[..])
        .query(&mut con));
    store_one(&mut con, "a{1}");
    let r =
        exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "x{1}", "TIMEOUT", "300"]);
    assert_eq!(r, Ok(Value::SimpleString("TIMEDOUT".into())), "a lone request must wait for MINBATCHSIZE");
    let runs: Vec<_> = (0..2)
        .map(|i| {
            let url = c.plain_url();
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                con.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let out = format!("out{i}{{1}}");
                ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", &out]));
                best_digit(&mut con, &out)
            })
        })
        .collect();
    for r in runs {
        assert_eq!(r.join().unwrap(), 1);
    }
    // Many clients, many runs: every answer right, every call counted.
    ok(redis::cmd("AI.MODELSTORE")
        .arg("m{1}")
        .arg("ONNX")
        .arg("CPU")
        .arg("BATCHSIZE")
        .arg(8)
        .arg("BLOB")
        .arg(&mnist[..])
        .query(&mut con));
    let start = Instant::now();
    let runs: Vec<_> = (0..8)
        .map(|i| {
            let url = c.plain_url();
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                con.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                for j in 0..10 {
                    let out = format!("o{i}.{j}{{1}}");
                    ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", &out]));
                    assert_eq!(best_digit(&mut con, &out), 1);
                }
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    let info = pairs(redis::cmd("AI.INFO").arg("m{1}").query(&mut con).unwrap());
    assert_eq!(field(&info, "calls"), &Value::Int(80));
    assert_eq!(field(&info, "samples"), &Value::Int(80));
    println!("80 runs by 8 clients in {:?}", start.elapsed());
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn a_stored_model_runs_on_the_new_leader_after_a_kill() {
    let _serial = serial();
    let mut c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mnist = testdata("mnist.onnx");
    // Node 1 first leads shard 0 (slots 0-5460); `{1}` hashes there? Use
    // keys of every shard so one of them certainly loses its leader.
    let tags = ["{a}", "{b}", "{c}", "{d}", "{e}"];
    for t in tags {
        ok(redis::cmd("AI.MODELSTORE")
            .arg(format!("m{t}"))
            .arg("ONNX")
            .arg("CPU")
            .arg("BLOB")
            .arg(&mnist[..])
            .query(&mut con));
        store_one(&mut con, &format!("a{t}"));
    }
    c.kill_node(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in tags {
        loop {
            let mut con = connect(&c);
            let (m, a, b) = (format!("m{t}"), format!("a{t}"), format!("b{t}"));
            match exec(&mut con, &["AI.MODELEXECUTE", &m, "INPUTS", "1", &a, "OUTPUTS", "1", &b]) {
                Ok(_) => {
                    assert_eq!(best_digit(&mut con, &b), 1);
                    let blob: Vec<u8> = redis::cmd("AI.MODELGET").arg(&m).arg("BLOB").query(&mut con).unwrap();
                    assert_eq!(blob, mnist);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{t}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{t}: no leader served the model: {e}"),
            }
        }
    }
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn tf_graph_through_the_router() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let graph = testdata("graph.pb");
    ok(redis::cmd("AI.MODELSTORE")
        .arg("tf{1}")
        .arg("TF")
        .arg("CPU")
        .arg("INPUTS")
        .arg(2)
        .arg("a")
        .arg("b")
        .arg("OUTPUTS")
        .arg(1)
        .arg("mul")
        .arg("BLOB")
        .arg(&graph[..])
        .query(&mut con));
    let meta = pairs(redis::cmd("AI.MODELGET").arg("tf{1}").arg("META").query(&mut con).unwrap());
    assert_eq!(field(&meta, "backend"), &Value::BulkString(b"TF".to_vec()));
    assert_eq!(
        field(&meta, "inputs"),
        &Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::BulkString(b"b".to_vec())])
    );
    assert_eq!(field(&meta, "outputs"), &Value::Array(vec![Value::BulkString(b"mul".to_vec())]));
    ok(exec(&mut con, &["AI.TENSORSET", "a{1}", "FLOAT", "2", "VALUES", "2", "3"]));
    ok(exec(&mut con, &["AI.TENSORSET", "b{1}", "FLOAT", "2", "VALUES", "2", "3"]));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "tf{1}", "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", "c{1}"]));
    let v: Vec<String> = redis::cmd("AI.TENSORGET").arg("c{1}").arg("VALUES").query(&mut con).unwrap();
    assert_eq!(v, ["4", "9"]);
    let e = err_text(
        redis::cmd("AI.MODELSTORE")
            .arg("tf{1}")
            .arg("TF")
            .arg("CPU")
            .arg("INPUTS")
            .arg(2)
            .arg("bad_input")
            .arg("b")
            .arg("OUTPUTS")
            .arg(1)
            .arg("mul")
            .arg("BLOB")
            .arg(&graph[..])
            .query(&mut con),
    );
    assert_eq!(e, "ERR Input node named \"bad_input\" not found in TF graph.");
    // The good model is still there and still runs.
    ok(exec(&mut con, &["AI.MODELEXECUTE", "tf{1}", "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", "c{1}"]));
    // RedisAI's benchmark graph (aibench's fraud detection): dropout and
    // all, it loads and answers a probability row.
    ok(redis::cmd("AI.MODELSTORE")
        .arg("fraud{1}")
        .arg("TF")
        .arg("CPU")
        .arg("INPUTS")
        .arg(2)
        .arg("transaction")
        .arg("reference")
        .arg("OUTPUTS")
        .arg(1)
        .arg("output")
        .arg("BLOB")
        .arg(&testdata("creditcardfraud.pb")[..])
        .query(&mut con));
    let t: Vec<String> = (0..30).map(|i| format!("{}", i as f32 / 30.0 - 0.5)).collect();
    let mut set = vec!["AI.TENSORSET", "tx{1}", "FLOAT", "1", "30", "VALUES"];
    set.extend(t.iter().map(String::as_str));
    ok(exec(&mut con, &set));
    let r: Vec<String> = (0..256).map(|i| format!("{}", i as f32 / 255.0)).collect();
    let mut set = vec!["AI.TENSORSET", "ref{1}", "FLOAT", "256", "VALUES"];
    set.extend(r.iter().map(String::as_str));
    ok(exec(&mut con, &set));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "fraud{1}", "INPUTS", "2", "tx{1}", "ref{1}", "OUTPUTS", "1", "p{1}"]));
    let p: Vec<f32> = redis::cmd("AI.TENSORGET")
        .arg("p{1}")
        .arg("VALUES")
        .query::<Vec<String>>(&mut con)
        .unwrap()
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(p.len() == 2 && (p[0] + p[1] - 1.0).abs() < 1e-5 && p[1] > 0.5, "{p:?}");
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn torchscript_model_through_the_router() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let pt = testdata("pt-minimal.pt");
    // Chunked upload, as RedisAI's own test does with this model.
    let (a, b) = pt.split_at(pt.len() / 2);
    ok(redis::cmd("AI.MODELSTORE").arg("pt{1}").arg("TORCH").arg("CPU").arg("BLOB").arg(a).arg(b).query(&mut con));
    let meta = pairs(redis::cmd("AI.MODELGET").arg("pt{1}").arg("META").query(&mut con).unwrap());
    assert_eq!(field(&meta, "backend"), &Value::BulkString(b"TORCH".to_vec()));
    assert_eq!(
        field(&meta, "inputs"),
        &Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::BulkString(b"b".to_vec())])
    );
    assert_eq!(field(&meta, "outputs"), &Value::Array(vec![Value::BulkString(Vec::new())]));
    ok(exec(&mut con, &["AI.TENSORSET", "a{1}", "FLOAT", "2", "2", "VALUES", "2", "3", "2", "3"]));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "pt{1}", "INPUTS", "2", "a{1}", "a{1}", "OUTPUTS", "1", "c{1}"]));
    let v: Vec<String> = redis::cmd("AI.TENSORGET").arg("c{1}").arg("VALUES").query(&mut con).unwrap();
    assert_eq!(v, ["4", "6", "4", "6"]);
    let e = err_text(
        redis::cmd("AI.MODELSTORE").arg("pt{1}").arg("TORCH").arg("CPU").arg("BLOB").arg("junk").query(&mut con),
    );
    assert!(e.contains("PytorchStreamReader") || e.contains("istream reader failed"), "{e}");
    ok(exec(&mut con, &["AI.MODELEXECUTE", "pt{1}", "INPUTS", "2", "a{1}", "a{1}", "OUTPUTS", "1", "c{1}"]));
}

/// RedisAI's quantized TFLite mnist through the router, on LiteRT: the
/// digit in `one.raw` is a 1, as TensorFlow Lite says.
#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn quantized_tflite_model_through_the_router() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let model = testdata("mnist_model_quant.tflite");
    ok(redis::cmd("AI.MODELSTORE").arg("q{1}").arg("TFLITE").arg("CPU").arg("BLOB").arg(&model[..]).query(&mut con));
    let x = testdata("one.raw");
    ok(redis::cmd("AI.TENSORSET").arg("x{1}").arg("FLOAT").arg(&[1, 28, 28]).arg("BLOB").arg(&x[..]).query(&mut con));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "q{1}", "INPUTS", "1", "x{1}", "OUTPUTS", "2", "digit{1}", "p{1}"]));
    let digit: Vec<i64> = redis::cmd("AI.TENSORGET").arg("digit{1}").arg("VALUES").query(&mut con).unwrap();
    assert_eq!(digit, [1]);
    let p: Vec<String> = redis::cmd("AI.TENSORGET").arg("p{1}").arg("VALUES").query(&mut con).unwrap();
    assert_eq!(p[1].parse::<f32>().unwrap(), 0.5546875);
    let info: String = redis::cmd("INFO").arg("ai_backends_info").query(&mut con).unwrap();
    assert!(info.contains("ai_TensorFlowLite_version:LiteRT-2.3.0"), "{info}");
}
