//! Request framing and reply encoding, our code beside `redis-protocol`'s,
//! on the same inputs in the same run:
//!
//! * **framing**: the router's [`FrameScanner`] (one pass: limits, then
//!   argument slices), the same scan followed by `redis-protocol`'s decoder
//!   re-walking the frame, and `redis-protocol`'s decoder alone (no limits;
//!   called after each read, as a connection would);
//! * **encoding**: [`Reply::encode`] beside converting the reply to a
//!   `redis-protocol` frame and encoding that.
//!
//! `cargo bench -p tessera-router --bench framing` (the best of 5 rounds of
//! about 0.2 s each, in ns per command or reply; lower is better).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode;
use redis_protocol::resp2::types::BytesFrame;
use tessera_common::reply::{Protocol, Reply};
use tessera_router::codec::{FrameScanner, Limits, Scanned};

/// The best of 5 rounds: ns per item, running `f` (which handles `items`
/// items) repeatedly for about 0.2 s a round.
fn measure(items: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..5 {
        let (start, mut runs) = (Instant::now(), 0u64);
        while start.elapsed() < Duration::from_millis(200) || runs == 0 {
            f();
            runs += 1;
        }
        best = best.min(start.elapsed().as_nanos() as f64 / (runs as f64 * items as f64));
    }
    best
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A workload: the bytes of `count` commands, as they arrive in reads of
/// `read` bytes.
struct Load {
    name: &'static str,
    bytes: Vec<u8>,
    count: usize,
    read: usize,
}

fn loads() -> Vec<Load> {
    let set: Vec<u8> =
        (0..1000).flat_map(|i| command(&[b"SET", format!("key:{i:06}").as_bytes(), &[b'v'; 16]])).collect();
    let blob = vec![7u8; 784 * 4];
    let tensorset: Vec<u8> = (0..100)
        .flat_map(|i| {
            command(&[b"AI.TENSORSET", format!("{{t}}:in{i}").as_bytes(), b"FLOAT", b"1", b"784", b"BLOB", &blob])
        })
        .collect();
    let big = command(&[b"AI.TENSORSET", b"big", b"FLOAT", b"4194304", b"BLOB", &vec![1u8; 16 << 20]]);
    vec![
        Load { name: "1000 pipelined SETs (16 B values), one read", bytes: set.clone(), count: 1000, read: usize::MAX },
        Load { name: "100 pipelined TENSORSETs (3 KiB), 16 KiB reads", bytes: tensorset, count: 100, read: 16 << 10 },
        Load { name: "one 16 MiB TENSORSET, 64 KiB reads", bytes: big, count: 1, read: 64 << 10 },
    ]
}

/// Feeds `load` a read at a time into one buffer; `take` takes every
/// complete command off it after each read (as the connection does).
fn feed(load: &Load, mut take: impl FnMut(&mut BytesMut) -> usize) {
    let mut buf = BytesMut::with_capacity(load.read.min(load.bytes.len()));
    let mut taken = 0;
    for chunk in load.bytes.chunks(load.read.min(load.bytes.len())) {
        buf.extend_from_slice(chunk);
        taken += take(&mut buf);
    }
    assert_eq!(taken, load.count);
}

fn framing() {
    let limits = Limits::default();
    println!("framing (ns per command)                        scanner  scan+decode  redis-protocol alone");
    for load in loads() {
        let ours = measure(load.count, || {
            let mut scanner = FrameScanner::default();
            feed(&load, |buf| {
                let mut n = 0;
                while let Some(argv) = scanner.next(buf, &limits).unwrap() {
                    black_box(argv);
                    n += 1;
                }
                n
            })
        });
        let scan_decode = measure(load.count, || {
            let mut scanner = FrameScanner::default();
            feed(&load, |buf| {
                let mut n = 0;
                while let Some(Scanned::Frame { .. }) = scanner.scan(buf, &limits).unwrap() {
                    let (frame, _, _) = decode_bytes_mut(buf).unwrap().unwrap();
                    let BytesFrame::Array(items) = frame else { panic!("not an array") };
                    let argv: Vec<Bytes> = items
                        .into_iter()
                        .map(|f| match f {
                            BytesFrame::BulkString(b) => b,
                            _ => panic!("not a bulk"),
                        })
                        .collect();
                    black_box(argv);
                    n += 1;
                }
                n
            })
        });
        let alone = measure(load.count, || {
            feed(&load, |buf| {
                let mut n = 0;
                while let Some((frame, _, _)) = decode_bytes_mut(buf).unwrap() {
                    black_box(frame);
                    n += 1;
                }
                n
            })
        });
        println!("{:<48} {ours:>7.0}  {scan_decode:>11.0}  {alone:>20.0}", load.name);
    }
}

/// The `redis-protocol` frame of a reply (the kinds the bench sends).
fn frame_of(r: &Reply) -> BytesFrame {
    match r {
        Reply::Simple(s) => BytesFrame::SimpleString(Bytes::from(s.clone())),
        Reply::Int(i) => BytesFrame::Integer(*i),
        Reply::Bulk(b) => BytesFrame::BulkString(b.clone()),
        Reply::Array(items) => BytesFrame::Array(items.iter().map(frame_of).collect()),
        other => panic!("not in the bench: {other:?}"),
    }
}

fn encoding() {
    let bulk = |n: usize| Reply::Bulk(Bytes::from(vec![b'x'; n]));
    let cases: Vec<(&str, Vec<Reply>)> = vec![
        ("1000 +OK", vec![Reply::ok(); 1000]),
        ("1000 bulks of 16 B", vec![bulk(16); 1000]),
        ("100 arrays of 10 bulks (KEYS-like)", vec![Reply::Array(vec![bulk(12); 10]); 100]),
        (
            "100 TENSORGET META BLOB (3 KiB)",
            vec![
                Reply::Array(vec![
                    Reply::Bulk(Bytes::from_static(b"dtype")),
                    Reply::Bulk(Bytes::from_static(b"FLOAT")),
                    Reply::Bulk(Bytes::from_static(b"shape")),
                    Reply::Array(vec![Reply::Int(1), Reply::Int(784)]),
                    Reply::Bulk(Bytes::from_static(b"blob")),
                    bulk(784 * 4),
                ]);
                100
            ],
        ),
        ("one 16 MiB bulk", vec![bulk(16 << 20)]),
    ];
    println!("encoding (ns per reply)                         Reply::encode  to frame+encode");
    for (name, replies) in cases {
        let size: usize = replies.iter().map(Reply::size_hint).sum();
        let ours = measure(replies.len(), || {
            let mut out = BytesMut::with_capacity(size);
            replies.iter().for_each(|r| r.encode(Protocol::Resp2, &mut out));
            black_box(out);
        });
        let theirs = measure(replies.len(), || {
            let mut out = BytesMut::with_capacity(size);
            for r in &replies {
                extend_encode(&mut out, &frame_of(r), false).unwrap();
            }
            black_box(out);
        });
        // The same bytes either way.
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        replies.iter().for_each(|r| r.encode(Protocol::Resp2, &mut a));
        replies.iter().for_each(|r| {
            extend_encode(&mut b, &frame_of(r), false).unwrap();
        });
        assert_eq!(a, b, "{name}: the encodings differ");
        println!("{name:<48} {ours:>13.0}  {theirs:>15.0}");
    }
}

fn main() {
    framing();
    println!();
    encoding();
}
