//! Scripts end to end: TorchScript stored through the router, compiled on
//! every replica, run on the shard leader's device queue with RedisAI's
//! replies and errors; `redis.execute` writes and outputs replicated as one
//! entry; `redisAI.model_execute`; TIMEOUT; the new leader runs a script
//! stored before a failover.

use std::time::{Duration, Instant};

use redis::{Connection, Value};
use tessera_tests::client::{connect, err_text, exec, ok, serial};
use tessera_tests::{testdata, Cluster};

const SCRIPT: &str = "
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]

def scaled(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * int(args[0]), tensors[0] + tensors[0]

def counter(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0], args[0])
    v = redis.execute('INCR', keys[0])
    redis.execute('SET', keys[1], 'seen', 'EX', '1000')
    return torch.tensor(int(str(v)))

def fails_after_a_write(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0], 'written')
    return tensors[5]

def arity(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0])
    return tensors[0]

def elsewhere(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', args[0], 'x')
    return tensors[0]

def refused(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('FLUSHALL', 'SYNC')
    return tensors[0]

def wrongtype(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('INCR', keys[0])
    return tensors[0]

def hash(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('HSET', keys[0], 'f', '1')
    return tensors[0]

def expire_and_noop(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('EXPIRE', keys[0], '1000')
    redis.execute('DEL', keys[1])
    redis.execute('SET', keys[2], 'new', 'NX')
    return tensors[0]

def torch_model(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(keys[0], [tensors[0], tensors[0]], 1)[0]

def spin(tensors: List[Tensor], keys: List[str], args: List[str]):
    s = 0
    for i in range(int(args[0])):
        s += 1
    return torch.tensor(s)

def mnist(tensors: List[Tensor], keys: List[str], args: List[str]):
    scores = redisAI.model_execute(keys[0], tensors, 1)
    return scores[0].argmax()
";

fn tensor(con: &mut Connection, key: &str, values: &[f32]) {
    let mut cmd = redis::cmd("AI.TENSORSET");
    cmd.arg(key).arg("FLOAT").arg(values.len()).arg("VALUES");
    for v in values {
        cmd.arg(*v);
    }
    ok(cmd.query(con));
}

fn values(con: &mut Connection, key: &str) -> Vec<String> {
    let v: Vec<Value> = redis::cmd("AI.TENSORGET").arg(key).arg("VALUES").query(con).unwrap();
    v.iter()
        .map(|x| match x {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::Int(i) => i.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn store(con: &mut Connection, key: &str, entry: &[&str], source: &str) -> redis::RedisResult<Value> {
    let mut cmd = redis::cmd("AI.SCRIPTSTORE");
    cmd.arg(key).arg("CPU").arg("TAG").arg("v1").arg("ENTRY_POINTS").arg(entry.len());
    for e in entry {
        cmd.arg(*e);
    }
    cmd.arg("SOURCE").arg(source).query(con)
}

const ALL: &[&str] = &[
    "bar",
    "scaled",
    "counter",
    "fails_after_a_write",
    "arity",
    "elsewhere",
    "refused",
    "wrongtype",
    "hash",
    "expire_and_noop",
    "torch_model",
    "spin",
    "mnist",
];

#[test]
fn store_get_execute_info_delete() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    ok(store(&mut con, "s{1}", ALL, SCRIPT));
    assert_eq!(exec(&mut con, &["TYPE", "s{1}"]).unwrap(), Value::SimpleString("AI_SCRIPT".into()));
    // AI.SCRIPTGET: META and SOURCE (RedisAI's labels and order).
    let meta: Vec<Value> = redis::cmd("AI.SCRIPTGET").arg("s{1}").arg("META").query(&mut con).unwrap();
    assert_eq!(meta.len(), 6);
    assert_eq!(meta[4], Value::BulkString(b"Entry Points".to_vec()));
    let both: Vec<Value> = redis::cmd("AI.SCRIPTGET").arg("s{1}").query(&mut con).unwrap();
    assert_eq!(both[7], Value::BulkString(SCRIPT.as_bytes().to_vec()));
    let src: String = redis::cmd("AI.SCRIPTGET").arg("s{1}").arg("SOURCE").query(&mut con).unwrap();
    assert_eq!(src, SCRIPT);

    tensor(&mut con, "a{1}", &[2.0, 3.0]);
    tensor(&mut con, "b{1}", &[2.0, 3.0]);
    ok(exec(&mut con, &["AI.SCRIPTEXECUTE", "s{1}", "bar", "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", "c{1}"]));
    assert_eq!(values(&mut con, "c{1}"), ["4", "6"]);
    ok(exec(
        &mut con,
        &[
            "AI.SCRIPTEXECUTE",
            "s{1}",
            "scaled",
            "INPUTS",
            "1",
            "a{1}",
            "ARGS",
            "1",
            "3",
            "OUTPUTS",
            "2",
            "x{1}",
            "y{1}",
        ],
    ));
    assert_eq!(values(&mut con, "x{1}"), ["6", "9"]);
    assert_eq!(values(&mut con, "y{1}"), ["4", "6"]);
    // Deprecated SCRIPTSET / SCRIPTRUN: functions take their inputs one per parameter.
    ok(exec(&mut con, &["AI.SCRIPTSET", "old{1}", "CPU", "SOURCE", "def sub(a, b):\n    return a - b\n"]));
    ok(exec(&mut con, &["AI.SCRIPTRUN", "old{1}", "sub", "INPUTS", "a{1}", "b{1}", "OUTPUTS", "d{1}"]));
    assert_eq!(values(&mut con, "d{1}"), ["0", "0"]);

    // RedisAI's errors.
    let e = |con: &mut Connection, args: &[&str]| err_text(exec(con, args));
    assert_eq!(e(&mut con, &["AI.SCRIPTGET", "nope{1}"]), "ERR script key is empty");
    assert_eq!(e(&mut con, &["AI.SCRIPTEXECUTE", "nope{1}", "bar", "INPUTS", "1", "a{1}"]), "ERR script key is empty");
    assert_eq!(
        e(&mut con, &["AI.SCRIPTEXECUTE", "s{1}", "bar", "OUTPUTS", "1", "a{1}"]),
        "ERR KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command"
    );
    assert_eq!(
        e(&mut con, &["AI.SCRIPTEXECUTE", "s{1}", "bar", "INPUTS", "2", "a{1}", "zz{1}", "OUTPUTS", "1", "c{1}"]),
        "ERR tensor key is empty or in a different shard"
    );
    assert_eq!(
        err_text(store(&mut con, "t{1}", &["bar", "nope"], SCRIPT)),
        "Function nope does not exist in the given script."
    );
    let broken = err_text(store(
        &mut con,
        "t{1}",
        &["bar"],
        "def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return a +\n",
    ));
    assert!(!broken.is_empty(), "{broken}");
    assert_eq!(e(&mut con, &["AI.SCRIPTGET", "t{1}"]), "ERR script key is empty", "nothing stored");
    ok(exec(&mut con, &["SET", "str{1}", "x"]));
    assert!(err_text(store(&mut con, "str{1}", &["bar"], SCRIPT)).starts_with("WRONGTYPE"));
    // An output key that holds a string: WRONGTYPE, and nothing written.
    assert!(e(&mut con, &["AI.SCRIPTEXECUTE", "s{1}", "bar", "INPUTS", "2", "a{1}", "b{1}", "OUTPUTS", "1", "str{1}"])
        .starts_with("WRONGTYPE"));
    let run_err = e(&mut con, &["AI.SCRIPTEXECUTE", "s{1}", "bar", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "c{1}"]);
    assert!(run_err.contains("out of range"), "{run_err}");

    // AI.INFO: calls and errors (a run that fails counts; one whose output
    // key is refused ran), samples -1.
    let info: Vec<Value> = redis::cmd("AI.INFO").arg("s{1}").query(&mut con).unwrap();
    assert_eq!(info[3], Value::BulkString(b"SCRIPT".to_vec()));
    assert_eq!(info[5], Value::BulkString(b"TORCH".to_vec()));
    assert_eq!(info[9], Value::BulkString(b"v1".to_vec()));
    assert_eq!((&info[13], &info[15], &info[17]), (&Value::Int(-1), &Value::Int(4), &Value::Int(1)));
    ok(exec(&mut con, &["AI.INFO", "s{1}", "RESETSTAT"]));

    ok(exec(&mut con, &["AI.SCRIPTDEL", "s{1}"]));
    assert_eq!(e(&mut con, &["AI.SCRIPTDEL", "s{1}"]), "ERR script key is empty");
    assert_eq!(e(&mut con, &["AI.SCRIPTDEL", "a{1}"]).split(' ').next(), Some("WRONGTYPE"));
}

#[test]
fn redis_execute_writes_are_replicated_with_the_outputs() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    ok(store(&mut con, "s{1}", ALL, SCRIPT));
    tensor(&mut con, "a{1}", &[1.0]);
    let run = |con: &mut Connection, f: &str, keys: &[&str], args: &[&str], outputs: &[&str]| {
        let mut argv = vec!["AI.SCRIPTEXECUTE", "s{1}", f];
        let (nk, na, no) = (keys.len().to_string(), args.len().to_string(), outputs.len().to_string());
        argv.extend(["KEYS", &nk]);
        argv.extend(keys);
        argv.extend(["INPUTS", "1", "a{1}", "ARGS", &na]);
        argv.extend(args);
        argv.extend(["OUTPUTS", &no]);
        argv.extend(outputs);
        exec(con, &argv)
    };
    ok(run(&mut con, "counter", &["n{1}", "seen{1}"], &["41"], &["out{1}"]));
    assert_eq!(values(&mut con, "out{1}"), ["42"]);
    assert_eq!(exec(&mut con, &["GET", "n{1}"]).unwrap(), Value::BulkString(b"42".to_vec()));
    let ttl: i64 = redis::cmd("TTL").arg("seen{1}").query(&mut con).unwrap();
    assert!((990..=1000).contains(&ttl), "{ttl}");

    // A script that fails writes nothing, not even what it wrote before.
    let e = err_text(run(&mut con, "fails_after_a_write", &["w{1}"], &[], &["out{1}"]));
    assert!(e.contains("out of range"), "{e}");
    assert_eq!(exec(&mut con, &["EXISTS", "w{1}"]).unwrap(), Value::Int(0));
    // The errors of `redis.execute`, in RedisAI's words (inside the traceback).
    let e = err_text(run(&mut con, "arity", &["w{1}"], &[], &["out{1}"]));
    assert!(e.contains("Redis command returned an error: Invalid argument"), "{e}");
    let e = err_text(run(&mut con, "elsewhere", &["w{1}"], &["w{2}"], &["out{1}"]));
    assert!(e.contains("Redis command returned an error: Operation not permitted"), "{e}");
    let e = err_text(run(&mut con, "refused", &["w{1}"], &[], &["out{1}"]));
    assert!(e.contains("not allowed from script"), "{e}");
    ok(exec(&mut con, &["SET", "txt{1}", "abc"]));
    let e = err_text(run(&mut con, "wrongtype", &["txt{1}"], &[], &["out{1}"]));
    assert!(e.contains("Redis command returned an error: ERR value is not an integer or out of range"), "{e}");
    // An EXPIRE on a script's key is written (its value stays); a DEL of a
    // missing key and a SET NX that does not set change nothing.
    ok(exec(&mut con, &["SET", "kept{1}", "old"]));
    ok(run(&mut con, "expire_and_noop", &["s{1}", "missing{1}", "kept{1}"], &[], &["out{1}"]));
    let ttl: i64 = redis::cmd("TTL").arg("s{1}").query(&mut con).unwrap();
    assert!((990..=1000).contains(&ttl), "{ttl}");
    assert_eq!(exec(&mut con, &["GET", "kept{1}"]).unwrap(), Value::BulkString(b"old".to_vec()));
    assert_eq!(exec(&mut con, &["EXISTS", "missing{1}"]).unwrap(), Value::Int(0));
    // Tessera's keyspace holds strings and tensors: a hash command is unknown.
    let e = err_text(run(&mut con, "hash", &["h{1}"], &[], &["out{1}"]));
    assert!(e.contains("Redis command returned an error: No such file or directory"), "{e}");
    assert_eq!(exec(&mut con, &["PING"]).unwrap(), Value::SimpleString("PONG".into()));
}

#[test]
fn scripts_run_on_a_new_leader_and_after_a_full_restart() {
    let _serial = serial();
    let mut c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    // Scripts on every shard, so node 1's loss certainly takes a leader.
    let tags = ["{a}", "{b}", "{c}", "{d}", "{e}"];
    let counter = |con: &mut Connection, t: &str, from: &str| {
        let (s, n, seen, a, out) =
            (format!("s{t}"), format!("n{t}"), format!("seen{t}"), format!("a{t}"), format!("out{t}"));
        exec(
            con,
            &[
                "AI.SCRIPTEXECUTE",
                &s,
                "counter",
                "KEYS",
                "2",
                &n,
                &seen,
                "INPUTS",
                "1",
                &a,
                "ARGS",
                "1",
                from,
                "OUTPUTS",
                "1",
                &out,
            ],
        )
    };
    for t in tags {
        ok(store(&mut con, &format!("s{t}"), ALL, SCRIPT));
        tensor(&mut con, &format!("a{t}"), &[1.0]);
    }
    // Stored, then its leader is lost: the new leader (which compiled the
    // script when it applied it) runs it, and holds the effects of a run before.
    ok(counter(&mut con, "{a}", "10"));
    c.kill_node(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    for t in tags {
        loop {
            let mut con = connect(&c);
            let before = exec(&mut con, &["GET", &format!("n{t}")]);
            match before.and_then(|v| counter(&mut con, t, "1").map(|_| v)) {
                Ok(v) => {
                    let want = if t == "{a}" { Value::BulkString(b"11".to_vec()) } else { Value::Nil };
                    assert_eq!(v, want, "{t}");
                    assert_eq!(values(&mut con, &format!("out{t}")), ["2"]);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{t}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("{t}: no leader ran the script: {e}"),
            }
        }
    }
    // Every node stops and starts again: the scripts come back from the
    // log and snapshots, compiled, with what they wrote.
    c.restart_node(1).expect("node 1 restarts");
    for id in 1..=3 {
        c.stop_node(id);
    }
    for id in 1..=3 {
        c.restart_node(id).expect("node restarts");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in tags {
        loop {
            let mut con = connect(&c);
            match exec(&mut con, &["GET", &format!("n{t}")]) {
                Ok(v) => {
                    assert_eq!(v, Value::BulkString(b"2".to_vec()), "{t}");
                    ok(counter(&mut con, t, "41"));
                    assert_eq!(values(&mut con, &format!("out{t}")), ["42"]);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{t}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("{t}: not served after the restart: {e}"),
            }
        }
    }
}

#[test]
fn a_queued_run_times_out_behind_a_long_one() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    ok(store(&mut con, "s{1}", ALL, SCRIPT));
    tensor(&mut con, "a{1}", &[1.0]);
    let url = c.plain_url();
    let long = std::thread::spawn(move || {
        let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
        let args = [
            "AI.SCRIPTEXECUTE",
            "s{1}",
            "spin",
            "INPUTS",
            "1",
            "a{1}",
            "ARGS",
            "1",
            "20000000",
            "OUTPUTS",
            "1",
            "z{1}",
        ];
        let started = Instant::now();
        ok(exec(&mut con, &args));
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(300));
    let args =
        ["AI.SCRIPTEXECUTE", "s{1}", "bar", "INPUTS", "2", "a{1}", "a{1}", "OUTPUTS", "1", "c{1}", "TIMEOUT", "1"];
    assert_eq!(exec(&mut con, &args).unwrap(), Value::SimpleString("TIMEDOUT".into()));
    // The router and other commands keep serving meanwhile.
    assert_eq!(exec(&mut con, &["PING"]).unwrap(), Value::SimpleString("PONG".into()));
    let took = long.join().unwrap();
    assert_eq!(values(&mut con, "z{1}"), ["20000000"]);
    println!("the long run took {took:?}");
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn scripts_run_models_and_redisais_own_scripts() {
    let _serial = serial();
    let c = Cluster::start(3, 1).expect("cluster starts");
    let mut con = connect(&c);
    ok(store(&mut con, "s{1}", ALL, SCRIPT));
    ok(redis::cmd("AI.MODELSTORE")
        .arg("m{1}")
        .arg("ONNX")
        .arg("CPU")
        .arg("BLOB")
        .arg(testdata("mnist.onnx"))
        .query(&mut con));
    ok(redis::cmd("AI.TENSORSET")
        .arg("one{1}")
        .arg("FLOAT")
        .arg(1)
        .arg(1)
        .arg(28)
        .arg(28)
        .arg("BLOB")
        .arg(testdata("one.raw"))
        .query(&mut con));
    ok(exec(
        &mut con,
        &[
            "AI.SCRIPTEXECUTE",
            "s{1}",
            "mnist",
            "KEYS",
            "1",
            "m{1}",
            "INPUTS",
            "1",
            "one{1}",
            "OUTPUTS",
            "1",
            "digit{1}",
        ],
    ));
    assert_eq!(values(&mut con, "digit{1}"), ["1"]);
    let e = err_text(exec(
        &mut con,
        &[
            "AI.SCRIPTEXECUTE",
            "s{1}",
            "mnist",
            "KEYS",
            "1",
            "nomodel{1}",
            "INPUTS",
            "1",
            "one{1}",
            "OUTPUTS",
            "1",
            "d{1}",
        ],
    ));
    assert!(e.contains("ERR model key is empty"), "{e}");

    // A TORCH model from a script: pt-minimal adds its two inputs.
    ok(redis::cmd("AI.MODELSTORE")
        .arg("pt{1}")
        .arg("TORCH")
        .arg("CPU")
        .arg("BLOB")
        .arg(testdata("pt-minimal.pt"))
        .query(&mut con));
    tensor(&mut con, "two{1}", &[2.0, 3.0]);
    ok(exec(
        &mut con,
        &[
            "AI.SCRIPTEXECUTE",
            "s{1}",
            "torch_model",
            "KEYS",
            "1",
            "pt{1}",
            "INPUTS",
            "1",
            "two{1}",
            "OUTPUTS",
            "1",
            "sum{1}",
        ],
    ));
    assert_eq!(values(&mut con, "sum{1}"), ["4", "6"]);

    // RedisAI's imagenet pre- and post-processing around a model (mnist:
    // the image is one.png's pixels, 1x28x28 UINT8, which pre_process_3ch
    // turns into the 1x1x28x28 floats in 0..1 the model takes).
    let pixels: Vec<u8> = testdata("one.raw")
        .chunks_exact(4)
        .map(|c| (f32::from_le_bytes(c.try_into().unwrap()) * 255.0).round() as u8)
        .collect();
    ok(redis::cmd("AI.TENSORSET")
        .arg("img{1}")
        .arg("UINT8")
        .arg(1)
        .arg(28)
        .arg(28)
        .arg("BLOB")
        .arg(pixels)
        .query(&mut con));
    let processing = String::from_utf8(testdata("imagenet/data_processing_script.txt")).unwrap();
    ok(store(&mut con, "proc{1}", &["pre_process_3ch", "post_process", "ensemble"], &processing));
    ok(exec(
        &mut con,
        &["AI.SCRIPTEXECUTE", "proc{1}", "pre_process_3ch", "INPUTS", "1", "img{1}", "OUTPUTS", "1", "x{1}"],
    ));
    ok(exec(&mut con, &["AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "x{1}", "OUTPUTS", "1", "scores{1}"]));
    ok(exec(
        &mut con,
        &["AI.SCRIPTEXECUTE", "proc{1}", "post_process", "INPUTS", "1", "scores{1}", "OUTPUTS", "1", "cls{1}"],
    ));
    // (post_process subtracts 1 for a 1001-class model: digit 1 comes out as 0.)
    assert_eq!(values(&mut con, "cls{1}"), ["0"]);

    // RedisAI's script.txt with its own test's calls.
    let source = String::from_utf8(testdata("script.txt")).unwrap();
    ok(store(&mut con, "r{1}", &["bar", "bar_variadic"], &source));
    tensor(&mut con, "a{1}", &[2.0, 3.0, 2.0, 3.0]);
    ok(exec(
        &mut con,
        &["AI.SCRIPTEXECUTE", "r{1}", "bar", "KEYS", "1", "{1}", "INPUTS", "2", "a{1}", "a{1}", "OUTPUTS", "1", "c{1}"],
    ));
    assert_eq!(values(&mut con, "c{1}"), ["4", "6", "4", "6"]);
    ok(exec(
        &mut con,
        &["AI.SCRIPTEXECUTE", "r{1}", "bar_variadic", "INPUTS", "3", "a{1}", "a{1}", "c{1}", "OUTPUTS", "1", "v{1}"],
    ));
    assert_eq!(values(&mut con, "v{1}"), ["4", "6", "4", "6"]);
    let bad = String::from_utf8(testdata("script_bad.txt")).unwrap();
    assert!(err_text(store(&mut con, "bad{1}", &["bar"], &bad)).starts_with("Wrong inputs type in function bar."));
    let old = String::from_utf8(testdata("old_script.txt")).unwrap();
    assert_eq!(
        err_text(store(&mut con, "bad{1}", &["bar"], &old)),
        "Wrong number of inputs in function bar. Expected 3 but was 2"
    );
    ok(exec(&mut con, &["AI.SCRIPTSET", "old{1}", "CPU", "SOURCE", &old]));
    ok(exec(
        &mut con,
        &["AI.SCRIPTRUN", "old{1}", "bar_variadic", "INPUTS", "a{1}", "$", "a{1}", "c{1}", "OUTPUTS", "w{1}"],
    ));
    assert_eq!(values(&mut con, "w{1}"), ["6", "9", "6", "9"]);
}
