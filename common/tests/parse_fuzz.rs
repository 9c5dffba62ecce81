//! Property-based fuzzing of the command parser (the seeded sweep in
//! `parse_sweep.rs` draws from a fixed vocabulary; this adds arbitrary
//! bytes, numbers of every size, blobs, arbitrary command names, edited
//! valid command lines, and shrinking of any failure to a minimal argv).
//!
//! Arguments are drawn from odd values, the keywords the parsers look for
//! (read from the parsers' own source, so a new keyword is drawn without a
//! change here), numbers, keys with hash tags, blobs and arbitrary bytes:
//!
//! * `per_command`: every command in the table, in any letter case, with 0
//!   to 10 arguments;
//! * `valid_commands_edited`: a valid line of every family (tensors, models,
//!   model runs, scripts, DAGs, CLUSTER, CLIENT, HELLO, SET options...) with
//!   up to 3 arguments replaced, inserted, deleted, repeated or swapped;
//! * `arbitrary_names`: mutated command names and random bytes as names.
//!
//! On each: `parse` answers a command or an error, never a panic, and the
//! same one when asked twice; an error's text starts with its code (RedisAI's
//! own messages aside, sent as RedisAI words them); a keyed command's slot is
//! a slot, every key it names hashes to it, and it survives its trip to the
//! node (postcard, and the zero-copy decoder); a model run, read as the node
//! reads it, touches only keys the router routed by, and the keys it writes
//! are those the node orders its session by. An unknown name is an unknown
//! command; an empty argv is an error.
//!
//! Deterministic: a fixed seed per property (`TESSERA_FUZZ_SEED` changes it)
//! and proptest prints the shrunk failing argv. `TESSERA_FUZZ_CASES` sets the
//! cases per property (defaults 10,000 to 40,000: about a second in a debug
//! build; `per_command` spreads its cases over the table); the long mode is
//! e.g. (3 million cases, about a minute on 2 cores)
//! `TESSERA_FUZZ_CASES=1000000 cargo test -p tessera-common --test parse_fuzz -- --nocapture`.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseResult, TestRunner};
use tessera_common::command::{parse, table, Command, NodeCommand, ParseLimits};
use tessera_common::model::exec;
use tessera_common::slot::key_slot;
use tessera_common::Error;

thread_local! {
    /// How the parser answered during the property running on this thread.
    static SEEN: std::cell::RefCell<std::collections::BTreeMap<String, u64>> = Default::default();
}

fn seen(what: String) {
    SEEN.with(|s| *s.borrow_mut().entry(what).or_default() += 1);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse().ok())
}

fn total_cases(default: u64) -> u64 {
    env_u64("TESSERA_FUZZ_CASES").unwrap_or(default).max(1)
}

/// Runs `test` on `cases` draws of `strategy` from a seed fixed by `name`;
/// returns (executions, failure).
fn run<S>(name: &str, cases: u64, strategy: S, test: impl Fn(S::Value) -> TestCaseResult) -> (u64, Option<String>)
where
    S: Strategy,
    S::Value: Debug,
{
    let seed = env_u64("TESSERA_FUZZ_SEED").unwrap_or(0x7E55_E7A0)
        ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let config = Config {
        cases: cases.min(u64::from(u32::MAX)) as u32,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let result = TestRunner::new(config).run(&strategy, |v| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    (executions.load(Ordering::Relaxed), result.err().map(|e| format!("{name} (seed {seed:#x}): {e}")))
}

fn summary(name: &str, cases: u64, executions: u64, start: Instant, failures: &[String]) {
    eprintln!(
        "fuzz parse::{name}: {cases} cases, {executions} executions, {:.2} s: {}",
        start.elapsed().as_secs_f64(),
        if failures.is_empty() { "no failure".to_string() } else { format!("{} FAILED", failures.len()) }
    );
    SEEN.with(|s| {
        let s = s.borrow();
        let parsed: Vec<&str> = s.keys().filter_map(|k| k.strip_prefix("ok ")).collect();
        let errors: u64 = s.iter().filter(|(k, _)| k.starts_with("error ")).map(|(_, v)| v).sum();
        let oks: u64 = s.iter().filter(|(k, _)| k.starts_with("ok ")).map(|(_, v)| v).sum();
        eprintln!(
            "    {oks} parsed into commands, {errors} refused ({} distinct error texts)",
            s.keys().filter(|k| k.starts_with("error ")).count(),
        );
        if name == "per_command" {
            let never: Vec<&str> = table::COMMANDS.iter().map(|c| c.name).filter(|n| !parsed.contains(n)).collect();
            eprintln!(
                "    never parsed into a command: {}",
                if never.is_empty() { "none".into() } else { never.join(" ") }
            );
        }
    });
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------
// What arguments are made of.

const ODD: &[&[u8]] = &[
    b"",
    b" ",
    b"\0",
    b"\0\xff",
    b"\xff\xfe",
    b"\r\n",
    b"-1",
    b"0",
    b"1",
    b"2",
    b"3",
    b"-0",
    b"+1",
    b"01",
    b" 1",
    b"1 ",
    b"0x10",
    b"1e3",
    b"1.5",
    b"-1.5",
    b".5",
    b"5.",
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"+inf",
    b"infinity",
    b"1e309",
    b"-1e309",
    b"4.9e-324",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999",
    b"2147483647",
    b"2147483648",
    b"4294967296",
    b"16383",
    b"16384",
    b"-16384",
    b"{",
    b"}",
    b"{}",
    b"{a}",
    b"k{a}",
    b"x{a}y",
    b"{a}{b}",
    b"{{a}}",
    b"*",
    b"?",
    b"[",
    b"[a-",
    b"\\",
    b"[^]",
    b"|>",
    b"$",
    b":",
    b"GPU:0",
    b"CPU:99999999999",
    b"gpu:-1",
    b"\xc3\xa9",
    b"\xe2\x84\xaa",
];

/// Every keyword the parsers compare arguments with: the upper-case string
/// and byte-string literals of their sources.
fn keywords() -> &'static [Bytes] {
    static WORDS: OnceLock<Vec<Bytes>> = OnceLock::new();
    WORDS.get_or_init(|| {
        let sources = [
            include_str!("../src/command/mod.rs"),
            include_str!("../src/command/ai.rs"),
            include_str!("../src/command/keys.rs"),
            include_str!("../src/command/keyspace.rs"),
            include_str!("../src/command/server.rs"),
            include_str!("../src/command/node.rs"),
            include_str!("../src/tensor.rs"),
            include_str!("../src/model/mod.rs"),
            include_str!("../src/model/config.rs"),
            include_str!("../src/model/exec.rs"),
        ];
        let mut words: Vec<Bytes> = Vec::new();
        for src in sources {
            for lit in src.split('"').skip(1).step_by(2) {
                let ok = !lit.is_empty()
                    && lit.len() <= 32
                    && lit.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-:.|>$".contains(&b))
                    && lit.bytes().any(|b| b.is_ascii_uppercase());
                if ok {
                    words.push(Bytes::copy_from_slice(lit.as_bytes()));
                }
            }
        }
        // Sub-commands and names too.
        words.extend(table::COMMANDS.iter().map(|c| Bytes::from(c.name.to_ascii_uppercase())));
        words.sort();
        words.dedup();
        words
    })
}

fn any_case(word: &[u8], mask: u64) -> Bytes {
    word.iter()
        .enumerate()
        .map(|(i, b)| if mask >> (i % 64) & 1 == 1 { b.to_ascii_lowercase() } else { b.to_ascii_uppercase() })
        .collect::<Vec<u8>>()
        .into()
}

fn arg() -> impl Strategy<Value = Bytes> {
    let n = keywords().len();
    prop_oneof![
        6 => (0..n, prop_oneof![3 => Just(0u64), 1 => Just(u64::MAX), 1 => any::<u64>()])
            .prop_map(|(i, mask)| any_case(&keywords()[i], mask)),
        4 => select(ODD).prop_map(Bytes::from_static),
        2 => any::<i64>().prop_map(|i| Bytes::from(i.to_string())),
        3 => (-3i64..20).prop_map(|i| Bytes::from(i.to_string())),
        1 => any::<u64>().prop_map(|i| Bytes::from(i.to_string())),
        1 => any::<f64>().prop_map(|f| Bytes::from(f.to_string())),
        1 => any::<f32>().prop_map(|f| Bytes::from(format!("{f:e}"))),
        2 => (vec(select(&b"abc{}"[..]), 0..6)).prop_map(Bytes::from),
        2 => vec(any::<u8>(), 0..24).prop_map(Bytes::from),
        1 => prop_oneof![Just(0usize), Just(1), Just(2), Just(4), Just(8), Just(16), Just(32), Just(64), 0usize..300]
            .prop_map(|n| Bytes::from(vec![1u8; n])),
    ]
}

fn limits() -> impl Strategy<Value = ParseLimits> {
    prop_oneof![
        3 => Just(ParseLimits::default()),
        1 => (0usize..4096).prop_map(|max_value_bytes| ParseLimits { max_value_bytes }),
    ]
}

/// The checks on one argv.
fn check(argv: Vec<Bytes>, limits: &ParseLimits) -> TestCaseResult {
    let first = parse(argv.clone(), limits);
    let again = parse(argv.clone(), limits);
    prop_assert_eq!(&first, &again, "parsed twice, answered differently");
    match &first {
        Ok(_) => seen(format!("ok {}", String::from_utf8_lossy(&argv[0]).to_ascii_lowercase())),
        // Texts that quote the arguments are counted as one.
        Err(e) => seen(format!("error {}", e.to_string().split('\'').next().unwrap_or(""))),
    }
    match first {
        Err(e) => {
            let text = e.to_string();
            let code = text.split(' ').next().unwrap_or("");
            // RedisAI's own messages are sent as RedisAI words them.
            prop_assert!(
                matches!(e, Error::Verbatim(_)) || (!code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase())),
                "error {:?} does not start with a code",
                text
            );
            let _ = e.code();
        }
        Ok(Command::Keyed { slot, cmd }) => {
            prop_assert!(slot < 16384, "slot {}", slot);
            let _ = (cmd.name(), cmd.is_write(), cmd.retry_safe(), cmd.written_keys());
            for k in cmd.keys() {
                prop_assert_eq!(key_slot(k), slot, "key {:?} is not in the command's slot", k);
            }
            let wire = cmd.to_bytes();
            let back = NodeCommand::from_bytes(&wire);
            prop_assert_eq!(back.as_ref().ok(), Some(&cmd), "postcard round trip");
            let shared = NodeCommand::from_shared(&Bytes::from(wire));
            prop_assert_eq!(shared.as_ref().ok(), Some(&cmd), "zero-copy round trip");
            if let NodeCommand::ModelExecute(run) = &cmd {
                check_model_run(&argv, run, &cmd)?;
            }
        }
        Ok(_) => {}
    }
    Ok(())
}

/// A model run as the node checks it, against models of 1 to 4 inputs and
/// outputs: no panic; when it runs, the keys the router routed by hold its
/// model, inputs and outputs; and the parsed run agrees with the argv's own
/// parse.
fn check_model_run(argv: &[Bytes], parsed: &exec::ModelRun, cmd: &NodeCommand) -> TestCaseResult {
    let keys: Vec<&Bytes> = cmd.keys().collect();
    for n_in in 1..=4 {
        for n_out in 1..=4 {
            let run = if parsed.deprecated {
                exec::parse_modelrun(argv, n_in, n_out)
            } else {
                exec::parse_modelexecute(argv, n_in, n_out)
            };
            let checked = parsed.check(n_in, n_out).err();
            prop_assert_eq!(run.as_ref().err(), checked.as_ref());
            if let Ok(run) = run {
                for k in std::iter::once(&argv[1]).chain(&run.inputs).chain(&run.outputs) {
                    prop_assert!(keys.contains(&k), "{:?} is not among the keys routed by: {:?}", k, keys);
                }
                // The node orders a session's commands by what a run writes.
                let written = cmd.written_keys().unwrap_or_default();
                for k in &run.outputs {
                    prop_assert!(written.contains(&k), "output {:?} is not among the written keys {:?}", k, written);
                }
            }
        }
    }
    Ok(())
}

/// Valid command lines of every family, to be mutated: they reach the
/// parsers' deeper branches, which random argv seldom does.
const TEMPLATES: &[&str] = &[
    "GET k",
    "SET k v",
    "SET k v EX 10 NX GET",
    "SET k v PXAT 100 XX",
    "SET k v KEEPTTL",
    "MGET {a}x {a}y",
    "MSET {a}x 1 {a}y 2",
    "INCRBY k -5",
    "DECRBY k 5",
    "DEL {a}x {a}y",
    "EXISTS k",
    "EXPIRE k 10",
    "PEXPIREAT k 100",
    "TTL k",
    "PERSIST k",
    "TYPE k",
    "KEYS *",
    "SCAN 0 MATCH a* COUNT 10 TYPE string",
    "DBSIZE",
    "RANDOMKEY",
    "FLUSHALL ASYNC",
    "PING hello",
    "ECHO x",
    "SELECT 0",
    "HELLO 3 AUTH default pw SETNAME app",
    "CLIENT SETNAME app",
    "CLIENT SETINFO LIB-NAME x",
    "CLIENT LIST",
    "CLIENT REPLY ON",
    "COMMAND INFO get",
    "COMMAND DOCS set",
    "COMMAND GETKEYS MSET a 1 b 2",
    "COMMAND COUNT",
    "CONFIG GET *",
    "CONFIG RESETSTAT",
    "INFO server",
    "CLUSTER SLOTS",
    "CLUSTER SHARDS",
    "CLUSTER KEYSLOT k",
    "CLUSTER COUNTKEYSINSLOT 100",
    "CLUSTER GETKEYSINSLOT 100 10",
    "CLUSTER INFO",
    "AI.TENSORSET t FLOAT 2 2 VALUES 1 2 3 4",
    "AI.TENSORSET t UINT8 2 2 BLOB abcd",
    "AI.TENSORSET t FLOAT 1 BLOB abcd",
    "AI.TENSORSET t STRING 2 VALUES a b",
    "AI.TENSORSET t BOOL 2 VALUES 1 0",
    "AI.TENSORSET t INT64 1",
    "AI.TENSORSET t DOUBLE VALUES 1.5",
    "AI.TENSORGET t META VALUES",
    "AI.TENSORGET t BLOB",
    "AI.MODELSTORE m ONNX CPU BLOB abc",
    "AI.MODELSTORE m TORCH GPU:0 TAG v1 BATCHSIZE 4 MINBATCHSIZE 2 MINBATCHTIMEOUT 10 BLOB abc def",
    "AI.MODELSTORE m TF CPU INPUTS 2 a b OUTPUTS 1 c BLOB abc",
    "AI.MODELSET m ONNX CPU BLOB abc",
    "AI.MODELSET m TF CPU TAG t BATCHSIZE 2 MINBATCHSIZE 1 INPUTS a b OUTPUTS c BLOB abc",
    "AI.MODELGET m META BLOB",
    "AI.MODELDEL m",
    "AI.MODELEXECUTE {m}m INPUTS 2 {m}a {m}b OUTPUTS 1 {m}c TIMEOUT 5",
    "AI.MODELRUN {m}m TIMEOUT 5 INPUTS {m}a {m}b OUTPUTS {m}c",
    "AI.INFO m RESETSTAT",
    "AI.CONFIG LOADBACKEND TORCH backends/torch.so",
    "AI.CONFIG BACKENDSPATH /usr/lib",
    "AI.CONFIG MODEL_CHUNK_SIZE 1024",
    "AI.CONFIG THREADS_PER_QUEUE 2",
    "AI.CONFIG GET BACKENDSPATH",
    "AI.SCRIPTSTORE s CPU TAG t ENTRY_POINTS 1 f SOURCE def",
    "AI.SCRIPTEXECUTE {s}s f KEYS 1 {s}k INPUTS 1 {s}a ARGS 1 x OUTPUTS 1 {s}b TIMEOUT 5",
    "AI.SCRIPTRUN {s}s f INPUTS {s}a $ {s}b OUTPUTS {s}c",
    "AI.DAGEXECUTE LOAD 1 {a}x PERSIST 1 {a}y |> AI.TENSORSET {a}t FLOAT 1 VALUES 1 |> AI.MODELEXECUTE {a}m INPUTS 1 {a}t OUTPUTS 1 {a}y",
    "AI.DAGEXECUTE ROUTING {a} |> AI.SCRIPTEXECUTE {a}s f INPUTS 1 {a}x OUTPUTS 1 {a}y",
    "AI.DAGRUN_RO LOAD 1 x |> AI.TENSORGET x VALUES",
];

#[derive(Debug, Clone)]
enum Edit {
    Replace(prop::sample::Index, Bytes),
    Insert(prop::sample::Index, Bytes),
    Delete(prop::sample::Index),
    Repeat(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    use prop::sample::Index;
    prop_oneof![
        4 => (any::<Index>(), arg()).prop_map(|(i, a)| Edit::Replace(i, a)),
        3 => (any::<Index>(), arg()).prop_map(|(i, a)| Edit::Insert(i, a)),
        2 => any::<Index>().prop_map(Edit::Delete),
        1 => any::<Index>().prop_map(Edit::Repeat),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Edit::Swap(i, j)),
    ]
}

fn words(line: &str) -> Vec<Bytes> {
    line.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
}

/// The templates, then each edited a few times (the name, at index 0, is
/// left alone: `arbitrary_names` covers names).
#[test]
fn valid_commands_edited() {
    for t in TEMPLATES {
        assert!(parse(words(t), &ParseLimits::default()).is_ok(), "template {t:?} must parse");
    }
    let cases = total_cases(40_000);
    let start = Instant::now();
    SEEN.with(|s| s.borrow_mut().clear());
    let strategy = (0..TEMPLATES.len(), vec(edit(), 0..4), any::<u64>(), limits());
    let (executions, failure) = run("valid_commands_edited", cases, strategy, |(t, edits, mask, limits)| {
        let mut argv = words(TEMPLATES[t]);
        argv[0] = any_case(&argv[0], mask);
        for e in edits {
            let n = argv.len();
            match e {
                Edit::Replace(i, a) if n > 1 => argv[1 + i.index(n - 1)] = a,
                Edit::Insert(i, a) => argv.insert(1 + i.index(n), a),
                Edit::Delete(i) if n > 1 => {
                    argv.remove(1 + i.index(n - 1));
                }
                Edit::Repeat(i) if n > 1 => {
                    let at = 1 + i.index(n - 1);
                    argv.insert(at, argv[at].clone());
                }
                Edit::Swap(i, j) if n > 2 => argv.swap(1 + i.index(n - 1), 1 + j.index(n - 1)),
                _ => {}
            }
        }
        check(argv, &limits)
    });
    summary("valid_commands_edited", cases, executions, start, &failure.into_iter().collect::<Vec<_>>());
}

/// Every command in the table with 0..=10 arguments: no panic, and the
/// checks above.
#[test]
fn every_command_with_any_arguments() {
    let cases = total_cases(40_000);
    let per_command = cases.div_ceil(table::COMMANDS.len() as u64);
    let start = Instant::now();
    SEEN.with(|s| s.borrow_mut().clear());
    let mut executions = 0;
    let mut failures = Vec::new();
    for spec in table::COMMANDS {
        let strategy = (any::<u64>(), vec(arg(), 0..=10), limits());
        let (n, failure) = run(spec.name, per_command, strategy, |(mask, args, limits)| {
            let mut argv = vec![any_case(spec.name.as_bytes(), mask)];
            argv.extend(args);
            check(argv, &limits)
        });
        executions += n;
        failures.extend(failure);
    }
    summary("per_command", per_command * table::COMMANDS.len() as u64, executions, start, &failures);
}

/// Arbitrary command names: unknown, or parsed like the command they name.
#[test]
fn arbitrary_names() {
    let names = prop_oneof![
        // A command name, mutated: a byte changed, added or cut.
        (0..table::COMMANDS.len(), any::<u64>(), any::<prop::sample::Index>(), any::<u8>(), 0u8..4).prop_map(
            |(i, mask, at, b, how)| {
                let mut n = any_case(table::COMMANDS[i].name.as_bytes(), mask).to_vec();
                let p = at.index(n.len() + 1);
                match how {
                    0 => n.insert(p, b),
                    1 if p < n.len() => n[p] = b,
                    2 => n.truncate(p),
                    _ => {}
                }
                Bytes::from(n)
            }
        ),
        vec(any::<u8>(), 0..40).prop_map(Bytes::from),
        select(ODD).prop_map(Bytes::from_static),
    ];
    let cases = total_cases(10_000);
    let start = Instant::now();
    SEEN.with(|s| s.borrow_mut().clear());
    let strategy = (names, vec(arg(), 0..=10), limits());
    let (executions, failure) = run("arbitrary_names", cases, strategy, |(name, args, limits)| {
        let mut argv = vec![name.clone()];
        argv.extend(args);
        match table::lookup(&name) {
            None => {
                let got = parse(argv, &limits).map_err(|e| e.to_string());
                prop_assert!(
                    matches!(&got, Err(t) if t.starts_with("ERR unknown command '")),
                    "{:?} is not a command, yet: {:?}",
                    name,
                    got
                );
                Ok(())
            }
            Some(_) => check(argv, &limits),
        }
    });
    assert!(parse(Vec::new(), &ParseLimits::default()).is_err(), "an empty argv must be an error");
    summary("arbitrary_names", cases, executions, start, &failure.into_iter().collect::<Vec<_>>());
}
