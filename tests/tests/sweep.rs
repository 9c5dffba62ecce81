//! No client input panics the router or drops a connection, end to end:
//! every command that `COMMAND LIST` names goes to a real router (and, for
//! keyed commands, on to a real node) with 0 to 8 arguments drawn from a
//! vocabulary of odd values (empty, NUL bytes, huge and negative numbers,
//! every keyword the parsers look for), plus keys that share the `{a}` hash
//! tag so CROSSSLOT and redirection do not answer every draw. Each command
//! must get a well-formed reply (an error is fine) within the connection's
//! read timeout, the connection must still answer `PING` after it, nothing
//! may log a panic, and at the end `connected_clients` is back where it
//! started. A fixed seed, so a failure names its arguments and repeats;
//! `TESSERA_SWEEP_CASES` raises the number of draws per command and
//! argument count (default 10, and as many again from a valid use of the
//! command where the test has one), `TESSERA_SWEEP_SEED` draws others.

use std::time::{Duration, Instant};

use tessera_tests::{onnx, Cluster, Resp};

// The same odd values as `common/tests/parse_sweep.rs`.
include!("../../common/tests/support/odd_values.rs");

/// Keys of one slot (hash tag `a`, slot 15495), drawn a quarter of the time:
/// the fixtures below give some of them a value of each kind.
const KEYS: &[&[u8]] = &[b"a", b"{a}", b"k{a}", b"x{a}y", b"{a}m", b"{a}t"];

/// Commands that close the connection, block, or change the server in ways
/// that would end the sweep, whatever their arguments: never sent. Only
/// QUIT is in Tessera's table today; the rest guard against additions.
const SKIP: &[(&str, &str)] = &[
    ("quit", "closes the connection by design"),
    ("reset", "resets the connection's state"),
    ("shutdown", "stops the server"),
    ("debug", "can crash or stall the server by design"),
    ("monitor", "streams until the connection closes"),
    ("subscribe", "switches the connection to pub/sub"),
    ("psubscribe", "switches the connection to pub/sub"),
    ("ssubscribe", "switches the connection to pub/sub"),
    ("sync", "starts a replication stream"),
    ("psync", "starts a replication stream"),
    ("replicaof", "changes the server's role"),
    ("slaveof", "changes the server's role"),
    ("failover", "changes the server's role"),
    ("wait", "blocks"),
    ("waitaof", "blocks"),
    ("blpop", "blocks"),
    ("brpop", "blocks"),
    ("blmove", "blocks"),
    ("brpoplpush", "blocks"),
    ("blmpop", "blocks"),
    ("bzpopmin", "blocks"),
    ("bzpopmax", "blocks"),
    ("bzmpop", "blocks"),
    ("xread", "blocks with BLOCK"),
    ("xreadgroup", "blocks with BLOCK"),
    ("multi", "queues what follows"),
];

/// Sub-commands skipped the same way (none is in the vocabulary today).
const SKIP_SUB: &[(&str, &str)] = &[
    ("client", "kill"),
    ("client", "pause"),
    ("client", "no-evict"),
    ("cluster", "reset"),
    ("cluster", "failover"),
    ("cluster", "forget"),
    ("config", "set"),
];

/// A small deterministic generator (splitmix64), as in `parse_sweep.rs`.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick<'a>(&mut self, from: &[&'a [u8]]) -> &'a [u8] {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn word(&mut self) -> &'static [u8] {
        if self.next().is_multiple_of(4) {
            self.pick(KEYS)
        } else {
            self.pick(VOCABULARY)
        }
    }

    /// A template's argument, kept most of the time, else a drawn word (or a
    /// model cut short); past the template's end, a drawn word.
    fn mutate<'a>(&mut self, kept: Option<&'a [u8]>, broken: &'a [u8]) -> &'a [u8] {
        match (kept, self.next() % 20) {
            (Some(_), 4) => broken,
            (Some(k), 5..) => k,
            _ => self.word(),
        }
    }
}

/// A valid use of `name` (its arguments, on the `{a}` keys): the second
/// half of the draws starts from it and replaces some arguments, to reach
/// past the first argument checks. None for commands without one.
fn template<'a>(name: &str, model: &'a [u8]) -> Option<Vec<&'a [u8]>> {
    let words: &[&[u8]] = match name {
        "get" | "incr" | "decr" | "ttl" | "pttl" | "persist" | "type" | "ai.modeldel" => &[b"k{a}"],
        "set" => &[b"k{a}", b"v", b"EX", b"100", b"NX", b"GET"],
        "mget" | "del" | "unlink" | "exists" => &[b"k{a}", b"{a}t", b"x{a}y", b"a"],
        "mset" => &[b"k{a}", b"1", b"{a}", b"2"],
        "incrby" | "decrby" => &[b"k{a}", b"5"],
        "expire" | "pexpire" => &[b"k{a}", b"100", b"NX"],
        "expireat" | "pexpireat" => &[b"k{a}", b"9999999999", b"GT"],
        "keys" => &[b"*{a}*"],
        "scan" => &[b"0", b"MATCH", b"*", b"COUNT", b"10", b"TYPE", b"string"],
        "ping" | "echo" => &[b"x"],
        "select" => &[b"0"],
        "info" => &[b"clients", b"keyspace"],
        "hello" => &[b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"n"],
        "client" => &[b"SETINFO", b"LIB-NAME", b"x"],
        "cluster" => &[b"GETKEYSINSLOT", b"15495", b"10"],
        "command" => &[b"GETKEYS", b"AI.MODELEXECUTE", b"{a}m", b"INPUTS", b"1", b"x{a}y", b"OUTPUTS", b"1"],
        "config" => &[b"GET", b"*"],
        "ai.tensorset" => &[b"{a}t", b"FLOAT", b"2", b"2", b"VALUES", b"1", b"2", b"3"],
        "ai.tensorget" => &[b"{a}t", b"META", b"VALUES"],
        "ai.modelget" => &[b"{a}m", b"META", b"BLOB"],
        "ai.modelexecute" => &[b"{a}m", b"INPUTS", b"1", b"x{a}y", b"OUTPUTS", b"1", b"{a}o", b"TIMEOUT"],
        "ai.modelrun" => &[b"{a}m", b"INPUTS", b"x{a}y", b"OUTPUTS", b"{a}o"],
        "ai.info" => &[b"{a}m", b"RESETSTAT"],
        "ai.config" => &[b"GET", b"MODEL_CHUNK_SIZE"],
        "ai.modelstore" => return Some(vec![b"{a}m", b"ONNX", b"CPU", b"BATCHSIZE", b"2", b"BLOB", model]),
        "ai.modelset" => return Some(vec![b"{a}m", b"ONNX", b"CPU", b"TAG", b"t", b"BLOB", model]),
        _ => return None,
    };
    Some(words.to_vec())
}

/// The router's `connected_clients`.
fn connected_clients(r: &mut Resp) -> u64 {
    let info = r.cmd(&["INFO", "clients"]).expect("INFO clients");
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connected_clients in {info:?}"))
}

/// Polls `connected_clients` until it is `want` (bounded); its last value.
fn settle(r: &mut Resp, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let n = connected_clients(r);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Puts a value of each kind back under the `{a}` keys (a draw may have
/// deleted, overwritten or flushed them).
fn fixtures(r: &mut Resp, model: &[u8]) -> Vec<String> {
    let cmds: [&[&[u8]]; 4] = [
        &[b"SET", b"k{a}", b"1"],
        &[b"AI.TENSORSET", b"x{a}y", b"DOUBLE", b"1", b"VALUES", b"1"],
        &[b"AI.TENSORSET", b"{a}t", b"FLOAT", b"2", b"2", b"VALUES", b"1", b"2", b"3", b"4"],
        &[b"AI.MODELSTORE", b"{a}m", b"ONNX", b"CPU", b"BLOB", model],
    ];
    cmds.iter()
        .map(|c| {
            r.send(c).expect("send fixture");
            r.read().expect("fixture reply")
        })
        .collect()
}

fn shown(argv: &[&[u8]]) -> String {
    argv.iter().map(|a| format!("{:?}", String::from_utf8_lossy(a))).collect::<Vec<_>>().join(" ")
}

/// Sends one command and a PING behind it; the command's reply, or why the
/// connection failed it.
fn exchange(r: &mut Resp, argv: &[&[u8]]) -> Result<String, String> {
    r.send(argv).map_err(|e| format!("send: {e}"))?;
    r.send(&[b"PING"]).map_err(|e| format!("send PING: {e}"))?;
    let reply = r.read().map_err(|e| format!("no reply: {e}"))?;
    if !reply.starts_with(['+', '-', ':', '$', '*', '_', ',', '#', '!', '=', '(', '%', '~', '|', '>']) {
        return Err(format!("malformed reply {reply:?}"));
    }
    match r.read() {
        Ok(p) if p == "+PONG\r\n" => Ok(reply),
        Ok(p) => Err(format!("PING after it answered {p:?} (reply was {reply:?})")),
        Err(e) => Err(format!("PING after it failed: {e} (reply was {reply:?})")),
    }
}

#[test]
fn every_command_with_odd_arguments_gets_a_reply_and_keeps_the_connection() {
    let cases: usize = std::env::var("TESSERA_SWEEP_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let c = Cluster::start(1, 1).expect("cluster starts");
    let started = Instant::now();
    let mut control = Resp::connect(c.plain).unwrap();
    // The harness's readiness probes may still be closing: start from the
    // control connection alone if the count gets there.
    let before = settle(&mut control, 1, Duration::from_secs(5));

    let list = control.cmd(&["COMMAND", "LIST"]).unwrap();
    let names: Vec<String> =
        list.lines().skip(1).filter(|l| !l.starts_with('$') && !l.is_empty()).map(str::to_ascii_lowercase).collect();
    assert!(names.len() > 10 && names.iter().any(|n| n == "ai.tensorset"), "COMMAND LIST: {list}");
    let skipped: Vec<String> =
        names.iter().filter_map(|n| SKIP.iter().find(|(s, _)| s == n).map(|(s, why)| format!("{s} ({why})"))).collect();
    eprintln!("skipped commands: {}", if skipped.is_empty() { "none".into() } else { skipped.join(", ") });
    eprintln!(
        "skipped sub-commands: {}",
        SKIP_SUB.iter().map(|(c, s)| format!("{c} {s}")).collect::<Vec<_>>().join(", ")
    );

    let model = onnx::add_const(1.0);
    let broken = &model[..model.len() / 2];
    // Alternate draws between the plain port and the advertised node that
    // owns the `{a}` slot (the other node's slots answer MOVED there).
    let endpoints = [c.plain, c.cluster[1]];
    let mut conns: Vec<Resp> = endpoints.iter().map(|a| Resp::connect(*a).unwrap()).collect();
    let first = fixtures(&mut conns[0], &model);
    eprintln!("fixtures: {first:?}");

    let seed = std::env::var("TESSERA_SWEEP_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x7E55E7A);
    let mut draw = Draw(seed);
    let (mut commands, mut sent, mut errors) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for name in &names {
        if SKIP.iter().any(|(s, _)| s == name) {
            continue;
        }
        commands += 1;
        fixtures(&mut conns[0], &model);
        let template = template(name, &model);
        let upper = name.to_ascii_uppercase();
        for n in 0..=8 {
            for case in 0..2 * cases {
                let from_template = case % 2 == 1;
                // Names as `COMMAND LIST` gives them, and upper-cased.
                let mut argv: Vec<&[u8]> = vec![if case % 4 < 2 { name.as_bytes() } else { upper.as_bytes() }];
                match &template {
                    Some(t) if from_template => argv.extend((0..n).map(|i| draw.mutate(t.get(i).copied(), broken))),
                    None if from_template => continue,
                    _ => argv.extend((0..n).map(|_| draw.word())),
                }
                let sub = argv.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
                if SKIP_SUB.iter().any(|(c, s)| c == name && sub.as_deref() == Some(*s)) {
                    continue;
                }
                let at = sent % endpoints.len();
                sent += 1;
                match exchange(&mut conns[at], &argv) {
                    Ok(reply) => errors += usize::from(reply.starts_with(['-', '!'])),
                    Err(why) => {
                        failures.push(format!("[{}] {}: {why}", endpoints[at], shown(&argv)));
                        conns[at] = Resp::connect(endpoints[at]).expect("the router still accepts connections");
                    }
                }
            }
        }
    }
    drop(conns);
    let elapsed = started.elapsed();
    eprintln!(
        "{commands} commands, {sent} cases sent, {errors} error replies, {} failures, in {:.1} s",
        failures.len(),
        elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} cases failed, e.g.:\n{}",
        failures.len(),
        failures[..failures.len().min(20)].join("\n")
    );
    let after = settle(&mut control, before, Duration::from_secs(5));
    eprintln!("connected_clients: {before} before, {after} after");
    assert_eq!(after, before, "connected_clients {after} after the sweep, {before} before");
    assert_eq!(control.cmd(&["PING"]).unwrap(), "+PONG\r\n");
    let logs = c.logs();
    assert!(!logs.contains("panicked"), "a process logged a panic:\n{logs}");
}
