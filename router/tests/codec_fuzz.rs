//! Property-based fuzzing of the router's RESP codec: the request framer
//! ([`FrameScanner`]) and the reply encoder ([`Reply::encode`]).
//!
//! Requests are fed the way a connection feeds them: appended to one read
//! buffer a read at a time, every complete command taken off after each
//! read, the first protocol error closing the connection. The inputs are
//! random bytes (biased toward RESP's alphabet), valid streams of every
//! request frame (multibulk, inline with quoting, `*0`, `*-1`, blank
//! lines), and valid streams mutated by truncation, flipped, inserted,
//! deleted and repeated bytes, hostile headers (huge, negative, zero-padded
//! lengths; deep nesting; RESP3 types, which requests do not use), cut into
//! reads at random. Properties:
//!
//! * nothing panics; `Ok(None)` leaves the buffer as it was, and a command
//!   consumes at least one byte and no more than the buffer holds;
//! * the outcome (commands, then an error or the bytes still waiting) is
//!   the same whatever the reads: split anywhere, a stream decodes as whole;
//! * a valid stream decodes to exactly the commands encoded, and each of its
//!   truncations to a prefix of them, with the rest left waiting;
//! * limits hold: no accepted command exceeds them, and an oversized length
//!   is refused as soon as its header arrives, never allocated (this binary
//!   counts the largest allocation made);
//! * replies of every type encode, in RESP2 and RESP3, to one frame that
//!   `redis-protocol` decodes back to the same reply, and that no strict
//!   prefix of completes; doubles read back exactly.
//!
//! Deterministic: a fixed seed per property (`TESSERA_FUZZ_SEED` changes
//! it), so a failure repeats, and proptest prints the shrunk input.
//! `TESSERA_FUZZ_CASES` sets the cases per property (the defaults, 4,000 to
//! 20,000, keep the whole file to a few seconds in a debug build); the long
//! mode is e.g. (3.5 million cases, about 8 minutes on 2 cores)
//! `TESSERA_FUZZ_CASES=500000 cargo test -p tessera-router --test codec_fuzz -- --nocapture`.
//! Each property prints its cases, executions (shrinking included), time,
//! and what the framer answered (commands, and errors by message).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseResult, TestRunner};
use redis_protocol::resp2::types::OwnedFrame as Resp2Frame;
use redis_protocol::resp3::types::OwnedFrame as Resp3Frame;
use tessera_common::blob::Blob;
use tessera_common::reply::format_double;
use tessera_common::{Protocol, Reply};
use tessera_router::codec::{FrameScanner, Limits, ProtocolError};

// ---------------------------------------------------------------------------
// The largest single allocation this binary made: an oversized length that
// were allocated before its bytes arrived would show here.

struct Peak;

static LARGEST_ALLOC: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOC.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Peak = Peak;

/// Inputs here are a few KB; nothing legitimate comes near this.
const ALLOC_CEILING: usize = 64 << 20;

// ---------------------------------------------------------------------------
// Running a property.

thread_local! {
    /// What the framer answered during the property running on this thread.
    static SEEN: std::cell::RefCell<std::collections::BTreeMap<String, u64>> = Default::default();
}

fn seen(what: &str) {
    SEEN.with(|s| *s.borrow_mut().entry(what.to_string()).or_default() += 1);
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().replace('_', "").parse().ok())
}

/// Runs `test` on `cases` draws of `strategy` (`TESSERA_FUZZ_CASES` when
/// set) from a fixed seed, prints a summary line, and panics with the
/// shrunk failing input if a case fails (or panics).
fn fuzz<S>(name: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let cases = env_u64("TESSERA_FUZZ_CASES").map_or(default_cases, |c| c.clamp(1, u64::from(u32::MAX)) as u32);
    let seed = env_u64("TESSERA_FUZZ_SEED").unwrap_or(0x7E55_E7A0)
        ^ name.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let config = Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 20_000,
        ..Config::default()
    };
    let executions = AtomicU64::new(0);
    let start = Instant::now();
    SEEN.with(|s| s.borrow_mut().clear());
    let result = TestRunner::new(config).run(&strategy, |v| {
        executions.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    eprintln!(
        "fuzz codec::{name}: {cases} cases, {} executions, {:.2} s, seed {seed:#x}: {}",
        executions.load(Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        if result.is_ok() { "no failure" } else { "FAILED" }
    );
    SEEN.with(|s| {
        let s = s.borrow();
        if !s.is_empty() {
            let parts: Vec<String> = s.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            eprintln!("    framer answers: {}", parts.join(", "));
        }
    });
    if let Err(e) = result {
        panic!("codec::{name} (seed {seed:#x}): {e}");
    }
    let largest = LARGEST_ALLOC.load(Ordering::Relaxed);
    assert!(largest < ALLOC_CEILING, "an allocation of {largest} bytes: a length was allocated before its bytes came");
}

// ---------------------------------------------------------------------------
// Feeding a connection.

#[derive(Debug, Clone, PartialEq)]
enum End {
    /// A protocol error: the connection answers it and closes.
    Error(ProtocolError),
    /// The bytes of an incomplete frame, waiting for more.
    Waiting(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    commands: Vec<Vec<Bytes>>,
    end: End,
}

/// Bytes, shown as a byte string when a failure is reported.
#[derive(Clone)]
struct Wire(Vec<u8>);

impl std::ops::Deref for Wire {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// How the bytes arrive.
#[derive(Debug, Clone)]
enum Reads {
    Whole,
    /// Reads ending at these offsets (any order, clamped), then the rest.
    At(Vec<usize>),
    ByteByByte,
}

/// Feeds `input` in `reads` the way a connection does, checking the
/// framer's contract at every call.
fn feed(input: &[u8], reads: &Reads, limits: &Limits) -> Result<Outcome, TestCaseError> {
    let mut ends: Vec<usize> = match reads {
        Reads::Whole => Vec::new(),
        Reads::At(cuts) => cuts.iter().map(|c| (*c).min(input.len())).collect(),
        Reads::ByteByByte => (1..input.len()).collect(),
    };
    ends.push(input.len());
    ends.sort_unstable();
    ends.dedup();
    let mut scanner = FrameScanner::default();
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut at = 0;
    for end in ends {
        buf.extend_from_slice(&input[at..end]);
        at = end;
        loop {
            let before = buf.clone();
            let inline = before.first() != Some(&b'*');
            match scanner.next(&mut buf, limits) {
                Ok(None) => {
                    prop_assert_eq!(&buf[..], &before[..], "Ok(None) must leave the buffer as it was");
                    break;
                }
                Ok(Some(argv)) => {
                    let used = before.len() - buf.len();
                    prop_assert!(used > 0, "a command that consumed nothing (the connection would spin)");
                    prop_assert_eq!(&buf[..], &before[used..], "a command must consume a prefix of the buffer");
                    if inline {
                        prop_assert!(used <= limits.max_inline_len + 1, "inline line of {} bytes accepted", used);
                    } else {
                        prop_assert!(argv.len() <= limits.max_array_len, "{} arguments accepted", argv.len());
                        for a in &argv {
                            prop_assert!(a.len() <= limits.max_bulk_len, "bulk of {} bytes accepted", a.len());
                        }
                    }
                    seen(if inline { "inline command" } else { "multibulk command" });
                    commands.push(argv);
                }
                Err(e) => {
                    seen(e.0.split(", got").next().unwrap_or(""));
                    return Ok(Outcome { commands, end: End::Error(e) });
                }
            }
        }
    }
    if !buf.is_empty() {
        seen("incomplete at the end");
    }
    Ok(Outcome { commands, end: End::Waiting(buf.to_vec()) })
}

fn small_limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        1 => Just(Limits::default()),
        2 => (0usize..80, 0usize..10, 0usize..120)
            .prop_map(|(b, a, i)| Limits { max_bulk_len: b, max_array_len: a, max_inline_len: i, unauthenticated: false }),
    ]
}

fn reads() -> impl Strategy<Value = Reads> {
    prop_oneof![
        1 => Just(Reads::Whole),
        4 => vec(0usize..4096, 1..12).prop_map(Reads::At),
        1 => Just(Reads::ByteByByte),
    ]
}

// ---------------------------------------------------------------------------
// Valid request frames.

const RESP_BYTES: &[u8] = b"*$:+-_#,%~=>|!(\r\n\r\n0123456789 \t\"'\\xaZ{}";

fn arg() -> impl Strategy<Value = Wire> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..16),
        3 => vec(select(RESP_BYTES), 0..16),
        1 => vec(any::<u8>(), 0..300),
    ]
    .prop_map(Wire)
}

#[derive(Debug, Clone, Copy)]
enum Quote {
    Bare,
    Double,
    Single,
}

#[derive(Debug, Clone)]
enum Frame {
    Multibulk(Vec<Wire>),
    /// Arguments with how to write each, separators, and whether the line
    /// ends in CRLF or a bare LF.
    Inline(Vec<(Wire, Quote)>, Vec<u8>, bool),
    /// `*0`, `*-1`, a blank line...: consumed, no command.
    Empty(&'static [u8]),
    /// Hostile bytes where a frame starts (for the mutation property only:
    /// what they decode to is not known).
    Raw(Wire),
}

const EMPTY_FRAMES: &[&[u8]] = &[b"*0\r\n", b"*-1\r\n", b"*-7\r\n", b"\r\n", b"\n", b" \t \r\n"];

fn frame() -> impl Strategy<Value = Frame> {
    let quote = prop_oneof![Just(Quote::Bare), Just(Quote::Double), Just(Quote::Single)];
    prop_oneof![
        5 => vec(arg(), 0..8).prop_map(Frame::Multibulk),
        3 => (vec((arg(), quote), 0..6), vec(select(&b" \t"[..]), 0..3), any::<bool>())
            .prop_map(|(args, sep, crlf)| Frame::Inline(args, sep, crlf)),
        1 => select(EMPTY_FRAMES).prop_map(Frame::Empty),
    ]
}

fn quoted(arg: &[u8], how: Quote, out: &mut Vec<u8>) {
    let bare_ok = !arg.is_empty() && arg.iter().all(u8::is_ascii_graphic) && !matches!(arg[0], b'"' | b'\'' | b'*');
    let single_ok = !arg.iter().any(|b| matches!(b, b'\n' | b'\\'));
    match how {
        Quote::Bare if bare_ok => out.extend_from_slice(arg),
        Quote::Single if single_ok => {
            out.push(b'\'');
            for &b in arg {
                if b == b'\'' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\'');
        }
        _ => {
            out.push(b'"');
            for &b in arg {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    b' '..=b'~' => out.push(b),
                    _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                }
            }
            out.push(b'"');
        }
    }
}

/// Encodes `frames` as a client would; returns the bytes, the commands they
/// carry (an empty argv for `*0` and blank lines), and where each frame ends.
fn encode_requests(frames: &[Frame]) -> (Vec<u8>, Vec<Vec<Bytes>>, Vec<usize>) {
    let mut out = Vec::new();
    let mut commands = Vec::new();
    let mut ends = Vec::new();
    for f in frames {
        match f {
            Frame::Multibulk(args) => {
                out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
                for a in args {
                    out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    out.extend_from_slice(a);
                    out.extend_from_slice(b"\r\n");
                }
                commands.push(args.iter().map(|a| Bytes::copy_from_slice(a)).collect());
            }
            Frame::Inline(args, sep, crlf) => {
                // A line starting with `*` would be a multibulk header.
                let start = out.len();
                for (i, (a, how)) in args.iter().enumerate() {
                    if i > 0 {
                        out.push(b' ');
                    }
                    out.extend_from_slice(sep);
                    quoted(a, *how, &mut out);
                }
                if out.get(start) == Some(&b'*') {
                    out.insert(start, b' ');
                }
                out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
                commands.push(args.iter().map(|(a, _)| Bytes::copy_from_slice(a)).collect());
            }
            Frame::Empty(bytes) => {
                out.extend_from_slice(bytes);
                commands.push(Vec::new());
            }
            Frame::Raw(bytes) => {
                out.extend_from_slice(bytes);
                commands.push(Vec::new());
            }
        }
        ends.push(out.len());
    }
    (out, commands, ends)
}

fn inline_len(frames: &[Frame]) -> usize {
    frames
        .iter()
        .map(|f| match f {
            Frame::Inline(..) | Frame::Empty(_) => encode_requests(std::slice::from_ref(f)).0.len(),
            Frame::Multibulk(_) | Frame::Raw(_) => 0,
        })
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Hostile bytes and mutations.

const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\"",
    b"'",
    b"\\x",
    b"\\",
    b"\0",
    b"*",
    b"$",
    b"*-1\r\n",
    b"*-2147483649\r\n",
    b"$-1\r\n",
    b"$-5\r\n",
    b"$-0\r\n",
    b"$+3\r\n",
    b"*+1\r\n",
    b"*03\r\n",
    b"$ 3\r\n",
    b"$3 \r\n",
    b"$0x10\r\n",
    b"$1e3\r\n",
    b"$\r\n",
    b"*\r\n",
    b"$99999999999999999999\r\n",
    b"*99999999999999999999\r\n",
    b"$9223372036854775807\r\n",
    b"$9223372036854775808\r\n",
    b"$-9223372036854775808\r\n",
    b"*9223372036854775807\r\n",
    b"*2147483648\r\n",
    b"$2147483648\r\n",
    b"$4294967296\r\n",
    b"$18446744073709551615\r\n",
    b"*16777216\r\n",
    b"*16777217\r\n",
    b"$536870912\r\n",
    b"$536870913\r\n",
    b"*1\r\n*1\r\n$1\r\na\r\n",
    b":1\r\n",
    b"+OK\r\n",
    b"-ERR x\r\n",
    b"_\r\n",
    b",1.5\r\n",
    b"#t\r\n",
    b"(12345678901234567890\r\n",
    b"=8\r\ntxt:abcd\r\n",
    b"%1\r\n$1\r\nk\r\n$1\r\nv\r\n",
    b"~2\r\n:1\r\n:2\r\n",
    b">2\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"|1\r\n+a\r\n+b\r\n",
    b"!3\r\nerr\r\n",
    b"$?\r\n;3\r\nabc\r\n;0\r\n",
    b"*?\r\n$1\r\na\r\n.\r\n",
    b"\"unbalanced",
    b"'unbalanced",
    b"\"a\"b",
    b"\"\\x4",
    b"\"\\xzz\"",
    b"PING\r\n",
    b"SET k v\r\n",
];

/// What goes between a length header's tag and its digits.
const PADS: &[&[u8]] = &[b"", b"-", b"+", b"0", b"00000000000000000000000000000000000000", b" "];

fn hostile() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => select(TOKENS).prop_map(<[u8]>::to_vec),
        // A length header of either kind: any value, zero-padded or signed.
        4 => (
            select(&b"*$"[..]),
            select(PADS),
            prop_oneof![0u64..20, 60u64..130, any::<u64>()],
            any::<bool>()
        )
            .prop_map(|(tag, pad, n, crlf)| {
                let mut v = vec![tag];
                v.extend_from_slice(pad);
                v.extend_from_slice(n.to_string().as_bytes());
                if crlf {
                    v.extend_from_slice(b"\r\n");
                }
                v
            }),
        // Deep nesting: `*1` headers, then a bulk.
        1 => (1usize..3000).prop_map(|d| {
            let mut v = b"*1\r\n".repeat(d);
            v.extend_from_slice(b"$1\r\nx\r\n");
            v
        }),
        // A run of one byte (long lines, long digit strings).
        2 => (prop_oneof![Just(b'9'), Just(b'0'), Just(b' '), Just(b'a'), any::<u8>()], 1usize..400)
            .prop_map(|(b, n)| vec![b; n]),
        2 => vec(any::<u8>(), 1..32),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(Index),
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Repeat(Index, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), select(RESP_BYTES)).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<Index>(), hostile()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1usize..32, 1usize..4).prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
    ]
}

fn mutate(mut v: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = v.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::Truncate(i) => v.truncate(at(i)),
            Mutation::Flip(i, x) if len > 0 => v[i.index(len)] ^= x,
            Mutation::Set(i, b) if len > 0 => v[i.index(len)] = *b,
            Mutation::Insert(i, t) => {
                let p = at(i);
                v.splice(p..p, t.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let p = at(i);
                v.drain(p..(p + n).min(len));
            }
            Mutation::Repeat(i, n, k) => {
                let p = at(i);
                let piece = v[p..(p + n).min(len)].to_vec();
                for _ in 0..*k {
                    v.splice(p..p, piece.iter().copied());
                }
            }
            Mutation::Flip(..) | Mutation::Set(..) => {}
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Request properties.

/// Random bytes, mostly RESP's: no panic, the contract holds at every call,
/// and reading them in pieces decides the same as reading them whole.
#[test]
fn random_bytes_never_panic_and_split_does_not_matter() {
    let bytes = prop_oneof![
        1 => vec(any::<u8>(), 0..512),
        2 => vec(prop_oneof![3 => select(RESP_BYTES), 1 => any::<u8>()], 0..512),
    ]
    .prop_map(Wire);
    fuzz("random_bytes", 8000, (bytes, reads(), small_limits()), |(input, reads, limits)| {
        let whole = feed(&input.0, &Reads::Whole, &limits)?;
        let pieces = feed(&input.0, &reads, &limits)?;
        prop_assert_eq!(pieces, whole, "reading in pieces changed the outcome");
        Ok(())
    });
}

/// A valid stream decodes to exactly its commands, whatever the reads;
/// each truncation decodes to the commands of the frames it holds whole,
/// the rest waiting.
#[test]
fn valid_frames_round_trip_whatever_the_reads() {
    fuzz("valid_frames", 4000, (vec(frame(), 1..8), reads(), any::<Index>()), |(frames, reads, cut)| {
        let (input, expected, ends) = encode_requests(&frames);
        let limits = Limits::default();
        prop_assume!(inline_len(&frames) <= limits.max_inline_len);
        let got = feed(&input, &reads, &limits)?;
        prop_assert_eq!(&got, &Outcome { commands: expected.clone(), end: End::Waiting(Vec::new()) });

        // Truncated anywhere: the whole frames before the cut, the rest waiting.
        let t = cut.index(input.len() + 1);
        let whole_frames = ends.iter().take_while(|e| **e <= t).count();
        let start = if whole_frames == 0 { 0 } else { ends[whole_frames - 1] };
        let got = feed(&input[..t], &reads, &limits)?;
        let want = Outcome { commands: expected[..whole_frames].to_vec(), end: End::Waiting(input[start..t].to_vec()) };
        prop_assert_eq!(got, want, "truncated at {}", t);
        Ok(())
    });
}

/// A frame cut at any point (every point of a short frame; of a long one,
/// its first and last 100 and 32 more) waits for the rest without consuming
/// anything, then completes when the rest comes.
#[test]
fn every_truncation_of_a_frame_waits() {
    fuzz("every_truncation", 800, (frame(), vec(any::<Index>(), 32)), |(f, more)| {
        let (input, expected, _) = encode_requests(std::slice::from_ref(&f));
        let limits = Limits::default();
        prop_assume!(input.len() <= limits.max_inline_len);
        let n = input.len();
        let cuts: Vec<usize> = if n <= 300 {
            (0..n).collect()
        } else {
            (0..100).chain(n - 100..n).chain(more.iter().map(|i| i.index(n))).collect()
        };
        for t in cuts {
            let mut scanner = FrameScanner::default();
            let mut buf = BytesMut::from(&input[..t]);
            prop_assert_eq!(scanner.next(&mut buf, &limits), Ok(None), "cut at {}", t);
            prop_assert_eq!(&buf[..], &input[..t]);
            buf.extend_from_slice(&input[t..]);
            let got = scanner.next(&mut buf, &limits);
            prop_assert_eq!(got, Ok(Some(expected[0].clone())), "cut at {}", t);
            prop_assert!(buf.is_empty());
        }
        Ok(())
    });
}

/// Valid streams mutated every way: no panic, the contract holds, and the
/// outcome does not depend on how the bytes are read.
#[test]
fn mutated_frames_never_panic_and_split_does_not_matter() {
    let frame_or_raw = prop_oneof![4 => frame(), 1 => hostile().prop_map(|b| Frame::Raw(Wire(b)))];
    let input = (vec(frame_or_raw, 0..6), vec(mutation(), 0..5))
        .prop_map(|(frames, mutations)| Wire(mutate(encode_requests(&frames).0, &mutations)));
    fuzz("mutated_frames", 8000, (input, reads(), small_limits()), |(input, reads, limits)| {
        let whole = feed(&input.0, &Reads::Whole, &limits)?;
        let pieces = feed(&input.0, &reads, &limits)?;
        prop_assert_eq!(pieces, whole, "reading in pieces changed the outcome");
        Ok(())
    });
}

#[derive(Debug, Clone)]
enum Oversize {
    /// `*N` with N over `max_array_len`.
    Array(String),
    /// `$N` with N over `max_bulk_len`, after `k` good elements.
    Bulk(String),
    /// `$-N`.
    NegativeBulk(u64),
    /// A header with no CRLF in its first 32 bytes.
    LongHeader(u8, usize),
    /// An inline line longer than `max_inline_len`, no newline yet.
    Inline(usize),
}

/// An oversized length is refused as soon as its header arrives (not
/// waited for, not allocated), in Redis's words.
#[test]
fn oversize_lengths_are_refused_at_the_header() {
    let over = prop_oneof![
        (1u64..1000).prop_map(|d| d.to_string()),
        any::<u64>().prop_map(|d| d.to_string()),
        Just("99999999999999999999999".to_string()),
        Just(i64::MAX.to_string()),
    ];
    let case = prop_oneof![
        over.clone().prop_map(Oversize::Array),
        over.prop_map(Oversize::Bulk),
        (1u64..u64::MAX).prop_map(Oversize::NegativeBulk),
        (select(&b"*$"[..]), 32usize..100).prop_map(|(t, n)| Oversize::LongHeader(t, n)),
        (1usize..300).prop_map(Oversize::Inline),
    ];
    let limits = (0usize..100, 1usize..10, 0usize..200).prop_map(|(b, a, i)| Limits {
        max_bulk_len: b,
        max_array_len: a,
        max_inline_len: i,
        unauthenticated: false,
    });
    fuzz("oversize", 4000, (limits, vec(arg(), 0..9), case, reads()), |(limits, args, case, reads)| {
        let args: Vec<Vec<u8>> = args
            .into_iter()
            .take(limits.max_array_len - 1)
            .map(|a| a[..a.len().min(limits.max_bulk_len)].to_vec())
            .collect();
        let mut input = Vec::new();
        let multibulk = |input: &mut Vec<u8>| {
            input.extend_from_slice(format!("*{}\r\n", args.len() + 1).as_bytes());
            for a in &args {
                input.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                input.extend_from_slice(a);
                input.extend_from_slice(b"\r\n");
            }
        };
        let want = match &case {
            Oversize::Array(n) => {
                let n: u128 = n.parse().unwrap();
                let n = n + limits.max_array_len as u128;
                input.extend_from_slice(format!("*{n}\r\n").as_bytes());
                "invalid multibulk length"
            }
            Oversize::Bulk(n) => {
                multibulk(&mut input);
                let n: u128 = n.parse().unwrap();
                let n = n + limits.max_bulk_len as u128;
                input.extend_from_slice(format!("${n}\r\n").as_bytes());
                "invalid bulk length"
            }
            Oversize::NegativeBulk(n) => {
                multibulk(&mut input);
                input.extend_from_slice(format!("$-{n}\r\n").as_bytes());
                "invalid bulk length"
            }
            Oversize::LongHeader(tag, n) => {
                if *tag == b'$' {
                    multibulk(&mut input);
                }
                input.push(*tag);
                input.extend(std::iter::repeat_n(b'1', *n));
                if *tag == b'$' {
                    "invalid bulk length"
                } else {
                    "invalid multibulk length"
                }
            }
            Oversize::Inline(n) => {
                input.extend(std::iter::repeat_n(b'a', limits.max_inline_len + n));
                "too big inline request"
            }
        };
        let got = feed(&input, &reads, &limits)?;
        prop_assert_eq!(got, Outcome { commands: vec![], end: End::Error(ProtocolError(want.into())) });
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Replies: what the router writes back.

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(prop_oneof![3 => any::<char>(), 1 => select(&['\r', '\n', ' ', '$', '*', ':'][..])], 0..max)
        .prop_map(String::from_iter)
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => any::<f64>(),
        1 => select(&[0.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, f64::MAX, f64::MIN, 1e-320, 0.1, 1e16, 1e17, 1.2345678901234568e17][..]),
        2 => -1e6f64..1e6,
        1 => any::<f32>().prop_map(f64::from),
    ]
}

/// Leaves RESP3 can use as map keys and set members.
fn key_leaf() -> impl Strategy<Value = Reply> {
    prop_oneof![
        text(12).prop_map(|s| Reply::Simple(s.replace(['\r', '\n'], ""))),
        text(12).prop_map(Reply::Error),
        any::<i64>().prop_map(Reply::Int),
        vec(any::<u8>(), 0..40).prop_map(|b| Reply::Bulk(b.into())),
        Just(Reply::Null),
        Just(Reply::NullArray),
        double().prop_map(Reply::Double),
        any::<bool>().prop_map(Reply::Bool),
        text(20).prop_map(Reply::Verbatim),
        vec(vec(any::<u8>(), 0..20), 0..4).prop_map(|p| Reply::Blob(Blob::from_parts(p.into_iter().map(Bytes::from)))),
    ]
}

fn encoded(r: &Reply, proto: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.encode(proto, &mut out);
    out.to_vec()
}

/// Drops the entries whose key encodes like an earlier one's in RESP3
/// (a map or set cannot hold them twice), or that `redis-protocol` takes
/// for an earlier one: it compares doubles as numbers, so `-0` equals `0`.
fn distinct<T>(items: Vec<T>, key: impl Fn(&T) -> &Reply) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|t| {
            let e = encoded(key(t), Protocol::Resp3);
            seen.insert(if e == b",-0\r\n" { b",0\r\n".to_vec() } else { e })
        })
        .collect()
}

fn reply() -> impl Strategy<Value = Reply> {
    key_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Reply::Array),
            vec((key_leaf(), inner), 0..5).prop_map(|kv| Reply::Map(distinct(kv, |(k, _)| k))),
            vec(key_leaf(), 0..6).prop_map(|m| Reply::Set(distinct(m, |m| m))),
        ]
    })
}

/// A reply as a client sees it, maps and sets in a canonical order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Simple(Vec<u8>),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Seen>),
    Map(Vec<(Seen, Seen)>),
    Set(Vec<Seen>),
    Double(u64),
    Bool(bool),
    Verbatim(Vec<u8>),
    Other(String),
}

fn double_bits(d: f64) -> u64 {
    if d.is_nan() {
        f64::NAN.to_bits()
    } else {
        d.to_bits()
    }
}

fn canonical<T: Debug>(mut v: Vec<T>) -> Vec<T> {
    v.sort_by_cached_key(|x| format!("{x:?}"));
    v
}

/// What a client should read for `r` in `proto`.
fn expected(r: &Reply, proto: Protocol) -> Seen {
    let r3 = proto == Protocol::Resp3;
    match r {
        Reply::Simple(s) => Seen::Simple(s.as_bytes().to_vec()),
        Reply::Error(s) => Seen::Error(s.replace(['\r', '\n'], " ")),
        Reply::Int(i) => Seen::Int(*i),
        Reply::Bulk(b) => Seen::Bulk(b.to_vec()),
        Reply::Blob(b) => Seen::Bulk(b.contiguous().to_vec()),
        // RESP2's `$-1` and `*-1`: `redis-protocol` reads both as one null
        // (the unit tests in `reply.rs` check which is written).
        Reply::Null | Reply::NullArray => Seen::Null,
        Reply::Array(v) => Seen::Array(v.iter().map(|r| expected(r, proto)).collect()),
        Reply::Set(v) if r3 => Seen::Set(canonical(v.iter().map(|r| expected(r, proto)).collect())),
        Reply::Set(v) => Seen::Array(v.iter().map(|r| expected(r, proto)).collect()),
        Reply::Map(kv) if r3 => {
            Seen::Map(canonical(kv.iter().map(|(k, v)| (expected(k, proto), expected(v, proto))).collect()))
        }
        Reply::Map(kv) => Seen::Array(kv.iter().flat_map(|(k, v)| [expected(k, proto), expected(v, proto)]).collect()),
        Reply::Double(d) if r3 => Seen::Double(double_bits(*d)),
        Reply::Double(d) => Seen::Bulk(format_double(*d).into_bytes()),
        Reply::Bool(b) if r3 => Seen::Bool(*b),
        Reply::Bool(b) => Seen::Int(i64::from(*b)),
        Reply::Verbatim(s) if r3 => Seen::Verbatim(s.as_bytes().to_vec()),
        Reply::Verbatim(s) => Seen::Bulk(s.as_bytes().to_vec()),
    }
}

fn seen2(f: Resp2Frame) -> Seen {
    match f {
        Resp2Frame::SimpleString(s) => Seen::Simple(s),
        Resp2Frame::Error(e) => Seen::Error(e),
        Resp2Frame::Integer(i) => Seen::Int(i),
        Resp2Frame::BulkString(b) => Seen::Bulk(b),
        Resp2Frame::Array(v) => Seen::Array(v.into_iter().map(seen2).collect()),
        Resp2Frame::Null => Seen::Null,
    }
}

fn seen3(f: Resp3Frame) -> Seen {
    match f {
        Resp3Frame::SimpleString { data, .. } => Seen::Simple(data),
        Resp3Frame::SimpleError { data, .. } => Seen::Error(data),
        Resp3Frame::Number { data, .. } => Seen::Int(data),
        Resp3Frame::BlobString { data, .. } => Seen::Bulk(data),
        Resp3Frame::Null => Seen::Null,
        Resp3Frame::Array { data, .. } => Seen::Array(data.into_iter().map(seen3).collect()),
        Resp3Frame::Map { data, .. } => {
            Seen::Map(canonical(data.into_iter().map(|(k, v)| (seen3(k), seen3(v))).collect()))
        }
        Resp3Frame::Set { data, .. } => Seen::Set(canonical(data.into_iter().map(seen3).collect())),
        Resp3Frame::Double { data, .. } => Seen::Double(double_bits(data)),
        Resp3Frame::Boolean { data, .. } => Seen::Bool(data),
        Resp3Frame::VerbatimString { data, .. } => Seen::Verbatim(data),
        other => Seen::Other(format!("{other:?}")),
    }
}

/// Decodes one frame from `bytes` with `redis-protocol`: `Ok(None)` when
/// incomplete, else the frame and the bytes it took.
fn decode(bytes: &[u8], proto: Protocol) -> Result<Option<(Seen, usize)>, String> {
    match proto {
        Protocol::Resp2 => match redis_protocol::resp2::decode::decode(bytes) {
            Ok(Some((f, n))) => Ok(Some((seen2(f), n))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        },
        Protocol::Resp3 => match redis_protocol::resp3::decode::complete::decode(bytes) {
            Ok(Some((f, n))) => Ok(Some((seen3(f), n))),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e:?}")),
        },
    }
}

/// Every reply encodes, in both protocols, to exactly one frame that a
/// client library decodes back to it, and no strict prefix of which is a
/// complete frame.
#[test]
fn replies_encode_to_frames_that_decode_back() {
    fuzz("replies", 4000, (reply(), vec(any::<Index>(), 8)), |(r, cuts)| {
        for proto in [Protocol::Resp2, Protocol::Resp3] {
            let bytes = encoded(&r, proto);
            let got = decode(&bytes, proto);
            prop_assert_eq!(got, Ok(Some((expected(&r, proto), bytes.len()))), "{:?} in {:?}", r, proto);
            let prefixes: Vec<usize> = if bytes.len() <= 200 {
                (0..bytes.len()).collect()
            } else {
                cuts.iter().map(|i| i.index(bytes.len())).collect()
            };
            for t in prefixes {
                prop_assert_eq!(decode(&bytes[..t], proto), Ok(None), "{:?} in {:?} complete at {} bytes", r, proto, t);
            }
        }
        Ok(())
    });
}

/// Doubles are written like `%.17g`, which reads back to the same double.
#[test]
fn doubles_read_back_exactly() {
    fuzz("doubles", 20000, double(), |d| {
        let s = format_double(d);
        let back: f64 = match s.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            other => other.parse().map_err(|e| TestCaseError::fail(format!("{other:?}: {e}")))?,
        };
        prop_assert_eq!(double_bits(back), double_bits(d), "{} written {:?}", d, s);
        prop_assert!(s.len() <= 24, "{:?} is longer than %.17g writes", s);
        Ok(())
    });
}
