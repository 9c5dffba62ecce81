//! DAGs end to end: the seed's flows as one AI.DAGEXECUTE each, replies and
//! errors as RedisAI words them, a failing middle op that persists nothing,
//! TIMEOUT, and PERSIST written all or nothing across a leader kill.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, Value};
use tessera_tests::client::{connect, exec, ok, serial};
use tessera_tests::failover::shard_leader;
use tessera_tests::{onnx, testdata, Cluster, Resp};

/// Runs a command of words (split at spaces), as its wire reply.
fn cmd(r: &mut Resp, line: &str) -> String {
    r.cmd(&line.split(' ').collect::<Vec<_>>()).unwrap()
}

fn store(con: &mut Connection, key: &str, backend: &str, blob: &[u8], extra: &[&str]) {
    let mut c = redis::cmd("AI.MODELSTORE");
    c.arg(key).arg(backend).arg("CPU");
    for e in extra {
        c.arg(*e);
    }
    ok(c.arg("BLOB").arg(blob).query(con));
}

fn floats(v: &Value) -> Vec<f64> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::BulkString(b) => String::from_utf8_lossy(b).parse().unwrap(),
                Value::Double(d) => *d,
                Value::Int(i) => *i as f64,
                other => panic!("not a value: {other:?}"),
            })
            .collect(),
        other => panic!("not a value list: {other:?}"),
    }
}

fn is_ok(v: &Value) -> bool {
    matches!(v, Value::Okay) || matches!(v, Value::SimpleString(s) if s == "OK")
}

const PROCESSING: &str = "imagenet/data_processing_script.txt";

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn the_seeds_flows_run_as_one_dag_each() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mut r = Resp::connect(c.plain).unwrap();

    // graph.pb: a·b, all of it inside the DAG.
    store(&mut con, "tf{1}", "TF", &testdata("graph.pb"), &["INPUTS", "2", "a", "b", "OUTPUTS", "1", "mul"]);
    let ab = "|> AI.TENSORSET a FLOAT 2 VALUES 2 3 |> AI.TENSORSET b FLOAT 2 VALUES 2 3 \
              |> AI.MODELEXECUTE tf{1} INPUTS 2 a b OUTPUTS 1 c |> AI.TENSORGET c VALUES";
    let want = "*4\r\n+OK\r\n+OK\r\n+OK\r\n*2\r\n$1\r\n4\r\n$1\r\n9\r\n";
    assert_eq!(cmd(&mut r, &format!("AI.DAGEXECUTE ROUTING {{1}} {ab}")), want);
    assert_eq!(cmd(&mut r, &format!("AI.DAGEXECUTE_RO ROUTING {{1}} {ab}")), want);
    // The DAG's names stay in the DAG.
    for name in ["a", "b", "c"] {
        assert_eq!(cmd(&mut r, &format!("EXISTS {name}")), ":0\r\n");
    }

    // mnist on one.raw: the digit 1.
    store(&mut con, "mnist{1}", "ONNX", &testdata("mnist.onnx"), &[]);
    let raw = testdata("one.raw");
    let mut dag = redis::cmd("AI.DAGEXECUTE_RO");
    dag.arg("ROUTING").arg("{1}").arg("|>").arg("AI.TENSORSET").arg("in").arg("FLOAT").arg(&[1, 1, 28, 28]);
    dag.arg("BLOB").arg(&raw[..]).arg("|>");
    dag.arg(&["AI.MODELEXECUTE", "mnist{1}", "INPUTS", "1", "in", "OUTPUTS", "1", "out", "|>"]);
    dag.arg(&["AI.TENSORGET", "out", "VALUES"]);
    let reply: Vec<Value> = dag.query(&mut con).unwrap();
    assert!(is_ok(&reply[0]) && is_ok(&reply[1]), "{reply:?}");
    let scores = floats(&reply[2]);
    let digit = (0..10).max_by(|a, b| scores[*a].total_cmp(&scores[*b])).unwrap();
    assert_eq!(digit, 1, "{scores:?}");

    // Script pre-processing → model → script post-processing, the answer
    // persisted: one.raw as the 8-bit image a camera gives.
    let source = String::from_utf8(testdata(PROCESSING)).unwrap();
    let stored = redis::cmd("AI.SCRIPTSTORE")
        .arg(&["proc{1}", "CPU", "ENTRY_POINTS", "2", "pre_process_3ch", "post_process", "SOURCE"])
        .arg(&source)
        .query(&mut con);
    ok(stored);
    let image: Vec<u8> =
        raw.chunks_exact(4).map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * 255.0).round() as u8).collect();
    let mut dag = redis::cmd("AI.DAGEXECUTE");
    dag.arg(&["PERSIST", "1", "digit{1}", "|>", "AI.TENSORSET", "img", "UINT8", "1", "28", "28", "BLOB"]);
    dag.arg(&image[..]).arg("|>");
    dag.arg(&["AI.SCRIPTEXECUTE", "proc{1}", "pre_process_3ch", "INPUTS", "1", "img", "OUTPUTS", "1", "x", "|>"]);
    dag.arg(&["AI.MODELEXECUTE", "mnist{1}", "INPUTS", "1", "x", "OUTPUTS", "1", "scores", "|>"]);
    dag.arg(&["AI.SCRIPTEXECUTE", "proc{1}", "post_process", "INPUTS", "1", "scores", "OUTPUTS", "1", "digit{1}"]);
    let reply: Vec<Value> = dag.query(&mut con).unwrap();
    assert_eq!(reply.len(), 4);
    assert!(reply.iter().all(is_ok), "{reply:?}");
    // (post_process answers the class index less one, for TF's 1001 classes.)
    assert_eq!(cmd(&mut r, "AI.TENSORGET digit{1} VALUES"), "*1\r\n:0\r\n");
    for name in ["img", "x", "scores"] {
        assert_eq!(cmd(&mut r, &format!("EXISTS {name}")), ":0\r\n");
    }
    // Every op counted in its model's and script's statistics.
    let info: Vec<Value> = redis::cmd("AI.INFO").arg("proc{1}").query(&mut con).unwrap();
    assert_eq!(info[15], Value::Int(2), "{info:?}");
}

#[test]
fn the_fraud_shape_in_one_round_trip_answers_as_three_commands() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    store(&mut con, "fraud{f}", "ONNX", &onnx::fraud_shape(), &[]);
    let x: Vec<String> = (0..30).map(|i| format!("{}", i as f32 * 0.5)).collect();
    let y: Vec<String> = (0..256).map(|i| format!("{}", (i % 7) as f32)).collect();
    let tensorset = |name: &str, values: &[String]| {
        let mut a = vec!["AI.TENSORSET".to_owned(), name.into(), "FLOAT".into(), "1".into()];
        a.push(values.len().to_string());
        a.push("VALUES".into());
        a.extend(values.iter().cloned());
        a
    };
    let mut dag = vec!["AI.DAGEXECUTE_RO".to_owned(), "ROUTING".into(), "{f}".into(), "|>".into()];
    dag.extend(tensorset("x", &x));
    dag.push("|>".into());
    dag.extend(tensorset("y", &y));
    dag.push("|>".into());
    dag.extend(
        "AI.MODELEXECUTE fraud{f} INPUTS 2 x y OUTPUTS 1 z |> AI.TENSORGET z VALUES".split(' ').map(String::from),
    );
    let reply = match exec(&mut con, &dag.iter().map(String::as_str).collect::<Vec<_>>()).unwrap() {
        Value::Array(items) => items,
        other => panic!("{other:?}"),
    };
    let in_dag = floats(&reply[3]);
    // The same as three commands.
    ok(exec(&mut con, &tensorset("x{f}", &x).iter().map(String::as_str).collect::<Vec<_>>()));
    ok(exec(&mut con, &tensorset("y{f}", &y).iter().map(String::as_str).collect::<Vec<_>>()));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "fraud{f}", "INPUTS", "2", "x{f}", "y{f}", "OUTPUTS", "1", "z{f}"]));
    let separate = floats(&exec(&mut con, &["AI.TENSORGET", "z{f}", "VALUES"]).unwrap());
    assert_eq!(in_dag, separate);
    let expected =
        0.01 * (0..30).map(|i| i as f64 * 0.5).sum::<f64>() + 0.001 * (0..256).map(|i| (i % 7) as f64).sum::<f64>();
    assert!((in_dag[0] - expected).abs() < 1e-3 && (in_dag[1] - expected).abs() < 1e-3, "{in_dag:?} vs {expected}");
}

#[test]
fn replies_and_errors_as_redisai_gives_them() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    let mut r = Resp::connect(c.plain).unwrap();
    // Y = X + 1 on DOUBLE [1].
    store(&mut con, "add{1}", "ONNX", &onnx::add_const(1.0), &[]);
    ok(exec(&mut con, &["AI.TENSORSET", "a{1}", "DOUBLE", "1", "VALUES", "2"]));
    let e = |r: &mut Resp, line: &str| cmd(r, line);

    // Cluster rules: every key (LOAD, PERSIST, ROUTING, models, scripts) in one slot.
    let crossslot = "-CROSSSLOT Keys in request don't hash to the same slot\r\n";
    assert_eq!(e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} PERSIST 1 b{2} |> AI.TENSORGET a{1}"), crossslot);
    assert_eq!(e(&mut r, "AI.DAGEXECUTE ROUTING {1} |> AI.MODELEXECUTE add{2} INPUTS 1 a OUTPUTS 1 b"), crossslot);
    // RedisAI's rules and words.
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE_RO PERSIST 1 a{1} |> AI.TENSORGET a{1}"),
        "-ERR PERSIST cannot be specified in a read-only DAG\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE_RO LOAD 1 a{1} |> AI.SCRIPTEXECUTE s{1} f INPUTS 1 a{1}"),
        "-ERR AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE TIMEOUT 5 |> AI.TENSORGET a{1} VALUES"),
        "-ERR AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of ROUTING, LOAD, PERSIST keywords\r\n"
    );
    assert_eq!(e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} |>"), "-ERR missing arguments for 'AI.DAGEXECUTE' command\r\n");
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 nope{1} |> AI.TENSORGET nope{1} VALUES"),
        "-ERR tensor key is empty or in a different shard\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} |> AI.MODELEXECUTE nope{1} INPUTS 1 a{1} OUTPUTS 1 b"),
        "-ERR model key is empty\r\n"
    );
    // The model is found before its arguments are judged.
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} |> AI.MODELEXECUTE add{1} INPUTS 1 a{1} OUTPUTS 1 b TIMEOUT 5"),
        "-ERR TIMEOUT not allowed within a DAG command\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} |> AI.MODELEXECUTE add{1} INPUTS 1 zz OUTPUTS 1 b"),
        "-ERR INPUT key cannot be found in DAG\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} |> AI.MODELRUN add{1} INPUTS a{1} OUTPUTS b"),
        "-Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} ROUTING a{1} ROUTING {1} |> AI.TENSORGET a{1}"),
        "-ERR Invalid DAG command. Unexpected argument:  ROUTING\r\n"
    );

    // Versions: each write of a name is new; PERSIST writes the last.
    assert_eq!(
        e(
            &mut r,
            "AI.DAGEXECUTE LOAD 1 a{1} PERSIST 1 a{1} |> AI.MODELEXECUTE add{1} INPUTS 1 a{1} OUTPUTS 1 a{1} \
             |> AI.TENSORGET a{1} VALUES |> AI.MODELEXECUTE add{1} INPUTS 1 a{1} OUTPUTS 1 a{1}"
        ),
        "*3\r\n+OK\r\n*1\r\n$1\r\n3\r\n+OK\r\n"
    );
    assert_eq!(e(&mut r, "AI.TENSORGET a{1} VALUES"), "*1\r\n$1\r\n4\r\n");

    // A failing middle op: its error in place, NA after it, nothing persisted.
    let failed = e(
        &mut r,
        "AI.DAGEXECUTE PERSIST 1 out{1} |> AI.TENSORSET x FLOAT 1 VALUES 1 \
         |> AI.MODELEXECUTE add{1} INPUTS 1 x OUTPUTS 1 out{1} |> AI.TENSORGET out{1} VALUES",
    );
    assert!(failed.starts_with("*3\r\n+OK\r\n-") && failed.ends_with("\r\n+NA\r\n"), "{failed}");
    assert_eq!(e(&mut r, "EXISTS out{1}"), ":0\r\n");

    // PERSIST onto a key of another type: RedisAI's extra error element;
    // here nothing of the DAG is written.
    ok(exec(&mut con, &["SET", "s{1}", "x"]));
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE PERSIST 2 t{1} s{1} |> AI.TENSORSET t{1} FLOAT 1 VALUES 1 |> AI.TENSORSET s{1} FLOAT 1 VALUES 1"),
        "*3\r\n+OK\r\n+OK\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    );
    assert_eq!(e(&mut r, "EXISTS t{1}"), ":0\r\n");

    // Deprecated DAGRUN: no keyword needed, MODELRUN inside.
    assert_eq!(
        e(&mut r, "AI.DAGRUN |> AI.TENSORSET x INT8 2 VALUES 1 2 |> AI.TENSORGET x VALUES"),
        "*2\r\n+OK\r\n*2\r\n:1\r\n:2\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGRUN_RO LOAD 1 a{1} |> AI.MODELRUN add{1} INPUTS a{1} OUTPUTS b |> AI.TENSORGET b VALUES"),
        "*2\r\n+OK\r\n*1\r\n$1\r\n5\r\n"
    );
    assert_eq!(
        e(&mut r, "AI.DAGRUN LOAD 1 a{1} |> AI.MODELEXECUTE add{1} INPUTS 1 a{1} OUTPUTS 1 b"),
        "-AI.MODELEXECUTE cannot be used in a deprecated AI.DAGRUN command\r\n"
    );

    // TIMEOUT: a run that waits for a batch partner never comes is not run.
    store(&mut con, "batched{1}", "ONNX", &onnx::add_const(1.0), &["BATCHSIZE", "2", "MINBATCHSIZE", "2"]);
    let start = Instant::now();
    assert_eq!(
        e(&mut r, "AI.DAGEXECUTE LOAD 1 a{1} TIMEOUT 200 |> AI.MODELEXECUTE batched{1} INPUTS 1 a{1} OUTPUTS 1 b"),
        "+TIMEDOUT\r\n"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// One writer of DAGs that PERSIST two keys (`x{1}:i` from a TENSORSET and
/// `y{1}:i` from a model run on it): what each attempt answered.
fn dag_writer(addr: std::net::SocketAddr, stop: Arc<AtomicBool>, w: u64, log: Arc<Mutex<BTreeMap<String, bool>>>) {
    let mut r = Resp::connect(addr).unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) && i < 100_000 {
        let id = format!("{w}:{i}");
        let line = format!(
            "AI.DAGEXECUTE PERSIST 2 x{{1}}:{id} y{{1}}:{id} |> AI.TENSORSET x{{1}}:{id} DOUBLE 1 VALUES {i} \
             |> AI.MODELEXECUTE add{{1}} INPUTS 1 x{{1}}:{id} OUTPUTS 1 y{{1}}:{id}"
        );
        let reply = r.cmd(&line.split(' ').collect::<Vec<_>>());
        let acked = matches!(&reply, Ok(s) if s == "*2\r\n+OK\r\n+OK\r\n");
        log.lock().unwrap().insert(id, acked);
        if reply.is_err() {
            std::thread::sleep(Duration::from_millis(20));
            match Resp::connect(addr) {
                Ok(c) => r = c,
                Err(_) => continue,
            }
        } else if !acked {
            std::thread::sleep(Duration::from_millis(5));
        }
        i += 1;
    }
}

#[test]
fn persist_is_all_or_nothing_across_a_leader_kill() {
    let _serial = serial();
    let mut c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    store(&mut con, "add{1}", "ONNX", &onnx::add_const(1.0), &[]);
    let mut r = Resp::connect(c.plain).unwrap();
    // Slot 9842 ("1") is shard 1's of three.
    let leader = shard_leader(&mut r, 1);
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(BTreeMap::new()));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (addr, stop, log) = (c.plain, stop.clone(), log.clone());
            std::thread::spawn(move || dag_writer(addr, stop, w, log))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(600));
    let before = log.lock().unwrap().values().filter(|a| **a).count();
    c.kill_node(leader);
    // Until DAGs are acknowledged again (a new leader), then a while more.
    let killed = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let acked = log.lock().unwrap().values().filter(|a| **a).count();
        if acked > before + 20 || killed.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    c.restart_node(leader).expect("the old leader restarts");
    let log = log.lock().unwrap().clone();
    let acked = log.values().filter(|a| **a).count();
    assert!(acked > before + 20, "DAGs were acknowledged again after the kill ({before} before, {acked} in all)");
    let (mut whole, mut none) = (0, 0);
    for (id, was_acked) in &log {
        let (x, y) = (format!("x{{1}}:{id}"), format!("y{{1}}:{id}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let n = loop {
            let got = cmd(&mut r, &format!("EXISTS {x} {y}"));
            if !got.starts_with('-') {
                break got;
            }
            assert!(Instant::now() < deadline, "cluster did not recover: {got}");
            std::thread::sleep(Duration::from_millis(50));
        };
        match n.as_str() {
            ":2\r\n" => {
                whole += 1;
                let i: u64 = id.split(':').nth(1).unwrap().parse().unwrap();
                let v = (i + 1).to_string();
                assert_eq!(cmd(&mut r, &format!("AI.TENSORGET {y} VALUES")), format!("*1\r\n${}\r\n{v}\r\n", v.len()));
            }
            ":0\r\n" => {
                assert!(!was_acked, "an acknowledged DAG's PERSIST was lost: {id}");
                none += 1;
            }
            other => panic!("DAG {id} was half written ({other:?})"),
        }
    }
    eprintln!("{} DAGs: {whole} written whole, {none} not at all, {acked} acknowledged", log.len());
}

/// Read-only DAGs spread over every replica (`--follower-reads`): each
/// replica serves some, and a follower's answer is linearizable: it sees
/// the write acknowledged just before it. (A replica that has not yet
/// applied its group's membership does not know where its leader is and
/// sends the DAG back to the router, so the rounds go on, bounded, until
/// every replica has served one.)
#[test]
fn read_only_dags_on_followers_see_every_acknowledged_write() {
    let _serial = serial();
    let c = Cluster::start_with(3, 1, &["--follower-reads"]).expect("cluster starts");
    let mut r = Resp::connect(c.plain).unwrap();
    let served = |node: usize| -> (f64, String) {
        let text = c.node_metrics_text(node).unwrap();
        let n = text
            .lines()
            .filter(|l| l.starts_with("tessera_node_commands_total{") && l.contains("\"ai.dagexecute_ro\""))
            .filter(|l| l.contains("code=\"ok\""))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum();
        (n, text)
    };
    for i in 0..600 {
        assert_eq!(cmd(&mut r, &format!("AI.TENSORSET a{{1}} INT32 1 VALUES {i}")), "+OK\r\n");
        let got = cmd(&mut r, "AI.DAGEXECUTE_RO LOAD 1 a{1} |> AI.TENSORGET a{1} VALUES");
        assert_eq!(got, format!("*1\r\n*1\r\n:{i}\r\n"), "round {i}");
        if i >= 59 && i % 30 == 29 && (1..=3).all(|node| served(node).0 > 0.0) {
            return;
        }
    }
    for node in 1..=3 {
        let (n, text) = served(node);
        assert!(n > 0.0, "node {node} served no read-only DAG in 600 rounds:\n{text}");
    }
}
