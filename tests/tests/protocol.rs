//! The RESP edge against a real router: exact replies in RESP2 and RESP3,
//! pipelining order, bad input answered Redis-style without losing data, and
//! protocol errors that close only the offending connection.

use std::time::{Duration, Instant};

use tessera_tests::{Cluster, Resp};

fn cluster() -> Cluster {
    Cluster::start(3, 1).expect("cluster starts")
}

#[test]
fn seed_walkthrough_replies_exactly_as_redisai() {
    let c = cluster();
    let mut r = Resp::connect(c.cluster[0]).unwrap();
    assert_eq!(r.cmd(&["AI.TENSORSET", "tA", "FLOAT", "2", "VALUES", "2", "3"]).unwrap(), "+OK\r\n");
    assert_eq!(r.cmd(&["EXISTS", "tA"]).unwrap(), ":1\r\n");
    assert_eq!(r.cmd(&["TYPE", "tA"]).unwrap(), "+AI_TENSOR\r\n");
    assert_eq!(
        r.cmd(&["AI.TENSORGET", "tA", "META", "VALUES"]).unwrap(),
        "*6\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:2\r\n$6\r\nvalues\r\n*2\r\n$1\r\n2\r\n$1\r\n3\r\n"
    );
    assert_eq!(r.cmd(&["AI.TENSORGET", "tA", "BLOB"]).unwrap(), "$8\r\n\0\0\0@\0\0@@\r\n");
    assert_eq!(
        r.cmd(&["AI.TENSORGET", "tA", "META"]).unwrap(),
        "*4\r\n$5\r\ndtype\r\n$5\r\nFLOAT\r\n$5\r\nshape\r\n*1\r\n:2\r\n"
    );
    // float32 0.1 prints as %.17g of the widened double.
    r.cmd(&["AI.TENSORSET", "f", "FLOAT", "1", "VALUES", "0.1"]).unwrap();
    assert_eq!(r.cmd(&["AI.TENSORGET", "f", "VALUES"]).unwrap(), "*1\r\n$19\r\n0.10000000149011612\r\n");
    // Negative VALUES are accepted (RedisAI 1.2.7 rejects them: a bug).
    assert_eq!(r.cmd(&["AI.TENSORSET", "n", "INT8", "2", "VALUES", "-1", "-128"]).unwrap(), "+OK\r\n");
    assert_eq!(r.cmd(&["AI.TENSORGET", "n", "VALUES"]).unwrap(), "*2\r\n:-1\r\n:-128\r\n");
    assert_eq!(
        r.cmd(&["AI.TENSORGET", "missing", "META"]).unwrap(),
        "-ERR tensor key is empty or in a different shard\r\n"
    );
}

#[test]
fn resp3_hello_maps_nulls_and_doubles() {
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    let hello = r.cmd(&["HELLO", "3"]).unwrap();
    assert!(hello.starts_with("%7\r\n$6\r\nserver\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    assert_eq!(r.cmd(&["GET", "nope"]).unwrap(), "_\r\n");
    r.cmd(&["AI.TENSORSET", "d", "DOUBLE", "2", "VALUES", "1.5", "2"]).unwrap();
    assert_eq!(r.cmd(&["AI.TENSORGET", "d", "VALUES"]).unwrap(), "*2\r\n,1.5\r\n,2\r\n");
    let info = r.cmd(&["CLUSTER", "INFO"]).unwrap();
    assert!(info.starts_with("=") && info.contains("txt:cluster_state:ok\r\n"), "{info}");
    assert_eq!(r.cmd(&["HELLO", "2"]).unwrap().lines().next(), Some("*14"));
    assert_eq!(r.cmd(&["GET", "nope"]).unwrap(), "$-1\r\n");
    assert_eq!(r.cmd(&["HELLO", "4"]).unwrap(), "-NOPROTO unsupported protocol version\r\n");
}

#[test]
fn pipelined_replies_come_back_in_order() {
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    let mut batch = Vec::new();
    for i in 0..2000 {
        // Alternate keys on different shards so replies race inside the router.
        let key = if i % 2 == 0 { "{a}counter" } else { "{b}counter" };
        batch.extend_from_slice(format!("*2\r\n$4\r\nINCR\r\n${}\r\n{key}\r\n", key.len()).as_bytes());
    }
    batch.extend_from_slice(b"PING\r\n");
    r.send_raw(&batch).unwrap();
    for i in 0..2000 {
        assert_eq!(r.read().unwrap(), format!(":{}\r\n", i / 2 + 1), "reply {i}");
    }
    assert_eq!(r.read().unwrap(), "+PONG\r\n");
}

/// Long commands (over 4 MiB) go to the node in parts, and commands for
/// other slots overtake them; a pipeline still sees its own writes: a read
/// of the same slot, or a whole-shard command, comes after a long write.
#[test]
fn a_pipeline_sees_its_own_long_writes() {
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    assert_eq!(r.cmd(&["FLUSHALL"]).unwrap(), "+OK\r\n");
    let values: Vec<Vec<u8>> = [(b'a', 6), (b'b', 9), (b'c', 5)].iter().map(|&(b, mb)| vec![b; mb << 20]).collect();
    let mut batch: Vec<&[&[u8]]> = Vec::new();
    let sets: Vec<[&[u8]; 3]> = values.iter().map(|v| [&b"SET"[..], &b"L{1}"[..], &v[..]]).collect();
    batch.push(&sets[0]);
    batch.push(&[b"INCR", b"{5}c"]); // another slot of the shard: may overtake
    batch.push(&[b"DBSIZE"]); // every shard: after both
    batch.push(&sets[1]);
    batch.push(&[b"GET", b"L{1}"]);
    batch.push(&sets[2]);
    batch.push(&[b"GET", b"L{1}"]);
    batch.push(&[b"INCR", b"{5}c"]);
    for cmd in &batch {
        r.send(cmd).unwrap();
    }
    let bulk = |v: &[u8]| format!("${}\r\n{}\r\n", v.len(), String::from_utf8_lossy(v));
    let expected = [
        "+OK\r\n".to_string(),
        ":1\r\n".into(),
        ":2\r\n".into(),
        "+OK\r\n".into(),
        bulk(&values[1]),
        "+OK\r\n".into(),
        bulk(&values[2]),
        ":2\r\n".into(),
    ];
    for (i, want) in expected.iter().enumerate() {
        let got = r.read().unwrap();
        assert!(got == *want, "reply {i}: {}... (want {}...)", &got[..got.len().min(40)], &want[..want.len().min(40)]);
    }
}

#[test]
fn bad_input_gets_redis_errors_and_loses_nothing() {
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    r.cmd(&["AI.TENSORSET", "t", "INT16", "2", "VALUES", "7", "8"]).unwrap();
    r.cmd(&["SET", "s", "v"]).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["GET"], "-ERR wrong number of arguments for 'get' command\r\n"),
        (&["NOPE", "x"], "-ERR unknown command 'NOPE', with args beginning with: 'x' \r\n"),
        (&["AI.TENSORSET", "t", "FLOAT"], "-ERR wrong number of arguments for 'AI.TENSORSET' command\r\n"),
        (&["AI.TENSORSET", "t", "FLOAT32", "1"], "-ERR invalid data type\r\n"),
        (&["AI.TENSORSET", "t", "FLOAT", "0"], "-ERR invalid or negative value found in tensor shape\r\n"),
        (&["AI.TENSORSET", "t", "FLOAT", "-2"], "-ERR invalid or negative value found in tensor shape\r\n"),
        (&["AI.TENSORSET", "t", "FLOAT", "two"], "-ERR invalid or negative value found in tensor shape\r\n"),
        (
            &["AI.TENSORSET", "t", "FLOAT", "2", "BLOB", "abc"],
            "-ERR data length does not match tensor shape and type\r\n",
        ),
        (
            &["AI.TENSORSET", "t", "FLOAT", "2", "VALUES", "1"],
            "-ERR wrong number of values was given in 'AI.TENSORSET' command\r\n",
        ),
        (&["AI.TENSORSET", "t", "INT8", "1", "VALUES", "300"], "-ERR invalid value\r\n"),
        (
            &["AI.TENSORSET", "s", "FLOAT", "1"],
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        (&["AI.TENSORGET", "s"], "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
        (&["AI.TENSORGET", "t", "JSON"], "-ERR unsupported data format\r\n"),
        // Wrong in two ways at once: RedisAI looks at the key first.
        (
            &["AI.TENSORSET", "s", "BADTYPE", "1"],
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        (
            &["AI.TENSORSET", "s", "FLOAT", "-1"],
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        (
            &["AI.TENSORSET", "s", "FLOAT", "2", "VALUES", "1"],
            "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        ),
        (&["AI.TENSORGET", "s", "FOO"], "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
        (&["AI.TENSORGET", "nokey", "FOO"], "-ERR tensor key is empty or in a different shard\r\n"),
        (&["AI.TENSORGET", "nokey", "BLOB", "VALUES"], "-ERR tensor key is empty or in a different shard\r\n"),
        (
            &["AI.TENSORSET", "nokey", "FLOAT", "2", "VALUES", "1"],
            "-ERR wrong number of values was given in 'AI.TENSORSET' command\r\n",
        ),
        (&["AI.TENSORSET", "nokey", "INT8", "2", "VALUES", "x", "300"], "-ERR invalid value\r\n"),
        (&["AI.TENSORGET", "t", "BLOB", "VALUES"], "-ERR both BLOB and VALUES specified\r\n"),
        (&["INCR", "t"], "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"),
        (&["INCR", "s"], "-ERR value is not an integer or out of range\r\n"),
        (&["MGET", "a", "b"], "-CROSSSLOT Keys in request don't hash to the same slot\r\n"),
        (&["SELECT", "1"], "-ERR SELECT is not allowed in cluster mode\r\n"),
        (&["SET", "k", "v", "EX", "0"], "-ERR invalid expire time in 'set' command\r\n"),
    ];
    for (args, want) in cases {
        assert_eq!(&r.cmd(args).unwrap(), want, "{args:?}");
    }
    // Commands whose arity the table leaves open (-1) are checked by their
    // parsers before anything is indexed: the connection lives on, and
    // its place among `--max-clients` is not lost.
    let clients = |r: &mut Resp| {
        let info = r.cmd(&["INFO", "clients"]).unwrap();
        info.lines().find_map(|l| l.strip_prefix("connected_clients:")).map(|n| n.trim().to_owned()).unwrap()
    };
    let before = clients(&mut r);
    for _ in 0..4 {
        for name in ["AI.MODELSTORE", "AI.MODELSET"] {
            let mut bare = Resp::connect(c.plain).unwrap();
            let want = format!("-ERR wrong number of arguments for '{name}' command\r\n");
            assert_eq!(bare.cmd(&[name]).unwrap(), want);
            assert_eq!(bare.cmd(&["PING"]).unwrap(), "+PONG\r\n", "the connection closed after a bare {name}");
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while clients(&mut r) != before {
        assert!(std::time::Instant::now() < deadline, "connected_clients {} after, {before} before", clients(&mut r));
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Nothing stored changed, and the connection still works.
    assert_eq!(r.cmd(&["AI.TENSORGET", "t", "VALUES"]).unwrap(), "*2\r\n:7\r\n:8\r\n");
    assert_eq!(r.cmd(&["GET", "s"]).unwrap(), "$1\r\nv\r\n");
    assert_eq!(r.cmd(&["SELECT", "0"]).unwrap(), "+OK\r\n");
}

#[test]
fn protocol_errors_close_only_that_connection() {
    let c = cluster();
    let mut other = Resp::connect(c.plain).unwrap();
    other.cmd(&["SET", "keep", "1"]).unwrap();
    for (bad, want) in [
        (&b"*1\r\n:5\r\n"[..], "-ERR Protocol error: expected '$', got ':'\r\n"),
        (&b"*abc\r\n"[..], "-ERR Protocol error: invalid multibulk length\r\n"),
        (&b"*1\r\n$-5\r\n"[..], "-ERR Protocol error: invalid bulk length\r\n"),
        // Over the 512 MB default: refused from the header alone.
        (&b"*2\r\n$3\r\nSET\r\n$600000000\r\n"[..], "-ERR Protocol error: invalid bulk length\r\n"),
        (&b"SET \"unbalanced\r\n"[..], "-ERR Protocol error: unbalanced quotes in request\r\n"),
    ] {
        let mut r = Resp::connect(c.plain).unwrap();
        r.send_raw(bad).unwrap();
        assert_eq!(r.read().unwrap(), want, "{:?}", String::from_utf8_lossy(bad));
        assert!(r.is_closed(), "connection must close after a protocol error");
    }
    assert_eq!(other.cmd(&["GET", "keep"]).unwrap(), "$1\r\n1\r\n");
}

/// What a node's port does with links that go wrong after their
/// handshake: it closes that connection, and serves on.
#[test]
fn garbage_on_a_node_link_closes_only_that_connection() {
    use std::io::{Read, Write};
    use tessera_proto::link::{RAFT, SESSION};
    let c = cluster();
    let mut other = Resp::connect(c.plain).unwrap();
    other.cmd(&["SET", "keep", "1"]).unwrap();
    // A frame's length, id, group, kind and flags, then its payload.
    let frame = |len: u32, payload: &[u8]| [&len.to_le_bytes()[..], &[0u8; 14], payload].concat();
    for (magic, garbage) in [
        // Not a RequestBatch.
        (SESSION, frame(14 + 5, &[0xff; 5])),
        // Longer than any frame may be.
        (SESSION, frame(u32::MAX, b"")),
        (RAFT, frame(1 << 30, b"")),
        // Shorter than a header.
        (RAFT, frame(3, b"")),
    ] {
        for node in &c.node_addrs {
            let mut s = std::net::TcpStream::connect(node).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&[&magic[..], &garbage].concat()).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).expect("the node closes the link");
            assert_eq!(&got[..], &magic[..], "the node answers the handshake, then closes");
        }
    }
    assert_eq!(other.cmd(&["GET", "keep"]).unwrap(), "$1\r\n1\r\n");
    let mut r = Resp::connect(c.plain).unwrap();
    for i in 0..20 {
        let key = format!("after:{i}");
        assert_eq!(r.cmd(&["SET", &key, "v"]).unwrap(), "+OK\r\n");
        assert_eq!(r.cmd(&["GET", &key]).unwrap(), "$1\r\nv\r\n");
    }
}

#[test]
fn configured_limits_refuse_large_frames_before_buffering() {
    let c = Cluster::start_with(1, 1, &["--max-bulk-len", "1024", "--max-inline-len", "64", "--max-array-len", "8"])
        .expect("cluster starts");
    let mut r = Resp::connect(c.plain).unwrap();
    r.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2048\r\n").unwrap();
    assert_eq!(r.read().unwrap(), "-ERR Protocol error: invalid bulk length\r\n");
    let mut r = Resp::connect(c.plain).unwrap();
    r.send_raw(&[b'A'; 100]).unwrap();
    assert_eq!(r.read().unwrap(), "-ERR Protocol error: too big inline request\r\n");
    let mut r = Resp::connect(c.plain).unwrap();
    r.send_raw(b"*9\r\n").unwrap();
    assert_eq!(r.read().unwrap(), "-ERR Protocol error: invalid multibulk length\r\n");
    let mut r = Resp::connect(c.plain).unwrap();
    let big = vec![b'x'; 1024];
    r.send(&[b"SET", b"k", &big]).unwrap();
    assert_eq!(r.read().unwrap(), "+OK\r\n");
}

#[test]
fn keys_expire_deterministically_and_are_purged() {
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    assert_eq!(r.cmd(&["SET", "e", "v", "PX", "150"]).unwrap(), "+OK\r\n");
    let pttl: i64 = r.cmd(&["PTTL", "e"]).unwrap().trim_start_matches(':').trim().parse().unwrap();
    assert!((1..=150).contains(&pttl), "pttl {pttl}");
    assert_eq!(r.cmd(&["TTL", "nokey"]).unwrap(), ":-2\r\n");
    r.cmd(&["SET", "p", "v"]).unwrap();
    assert_eq!(r.cmd(&["TTL", "p"]).unwrap(), ":-1\r\n");
    assert_eq!(r.cmd(&["EXPIRE", "p", "100"]).unwrap(), ":1\r\n");
    assert_eq!(r.cmd(&["PERSIST", "p"]).unwrap(), ":1\r\n");
    assert_eq!(r.cmd(&["TTL", "p"]).unwrap(), ":-1\r\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Once expired the key is gone for reads, and the sweeper removes it
        // from the keyspace (DBSIZE counts unpurged keys, as Redis does).
        let gone = r.cmd(&["GET", "e"]).unwrap() == "$-1\r\n";
        let purged = r.cmd(&["DBSIZE"]).unwrap() == ":1\r\n";
        if gone && purged {
            break;
        }
        assert!(Instant::now() < deadline, "key did not expire");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(r.cmd(&["EXPIRE", "p", "-1"]).unwrap(), ":1\r\n");
    assert_eq!(r.cmd(&["EXISTS", "p"]).unwrap(), ":0\r\n");
}

#[test]
fn cluster_introspection_and_command_table() {
    let c = cluster();
    let mut r = Resp::connect(c.cluster[1]).unwrap();
    let nodes = r.cmd(&["CLUSTER", "NODES"]).unwrap();
    let lines: Vec<&str> = nodes.lines().skip(1).filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 2, "{nodes}");
    let me = lines.iter().find(|l| l.contains("myself,master")).expect("myself line");
    assert!(me.contains(&format!(" {}@", c.cluster[1])), "{me}");
    let slots = r.cmd(&["CLUSTER", "SLOTS"]).unwrap();
    assert!(slots.starts_with("*2\r\n*3\r\n:0\r\n:8191\r\n*4\r\n$9\r\n127.0.0.1\r\n"), "{slots}");
    assert_eq!(r.cmd(&["CLUSTER", "KEYSLOT", "{user1000}.following"]).unwrap(), ":3443\r\n");
    let myid = r.cmd(&["CLUSTER", "MYID"]).unwrap();
    assert!(me.starts_with(myid.lines().nth(1).unwrap()), "{myid} vs {me}");
    r.cmd(&["SET", "{user1000}.following", "x"]).unwrap();
    assert_eq!(r.cmd(&["CLUSTER", "COUNTKEYSINSLOT", "3443"]).unwrap(), ":1\r\n");
    assert_eq!(r.cmd(&["CLUSTER", "GETKEYSINSLOT", "3443", "10"]).unwrap(), "*1\r\n$20\r\n{user1000}.following\r\n");
    // COMMAND lists RedisAI commands with their key positions.
    let info = r.cmd(&["COMMAND", "INFO", "AI.TENSORSET", "ai.modelexecute"]).unwrap();
    assert!(
        info.contains("ai.tensorset") && info.contains("ai.modelexecute") && info.contains("movablekeys"),
        "{info}"
    );
    assert_eq!(
        r.cmd(&["COMMAND", "GETKEYS", "AI.MODELEXECUTE", "m{1}", "INPUTS", "1", "a{1}", "OUTPUTS", "1", "b{1}"])
            .unwrap(),
        "*3\r\n$4\r\nm{1}\r\n$4\r\na{1}\r\n$4\r\nb{1}\r\n"
    );
    assert!(r.cmd(&["CONFIG", "GET", "save"]).unwrap().starts_with("*2\r\n$4\r\nsave\r\n"));
    // The plain port's INFO keyspace covers every slot.
    let info = Resp::connect(c.plain).unwrap().cmd(&["INFO"]).unwrap();
    assert!(info.contains("cluster_enabled:1") && info.contains("loading:0") && info.contains("db0:keys=1,"), "{info}");
    assert_eq!(r.cmd(&["CLIENT", "SETNAME", "probe"]).unwrap(), "+OK\r\n");
    assert_eq!(r.cmd(&["CLIENT", "GETNAME"]).unwrap(), "$5\r\nprobe\r\n");
    assert_eq!(r.cmd(&["CLIENT", "SETINFO", "LIB-NAME", "x"]).unwrap(), "+OK\r\n");
    assert!(r.cmd(&["CLIENT", "LIST"]).unwrap().contains("name=probe"));
}

#[test]
fn metrics_endpoint_counts_commands() {
    use std::io::{Read, Write};
    let c = cluster();
    let mut r = Resp::connect(c.plain).unwrap();
    r.cmd(&["SET", "m", "1"]).unwrap();
    r.cmd(&["GET"]).unwrap();
    let mut s = std::net::TcpStream::connect(c.router_metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("tessera_router_commands_total{cmd=\"set\",code=\"ok\"} 1"), "{body}");
    assert!(body.contains("tessera_router_commands_total{cmd=\"get\",code=\"ERR\"} 1"), "{body}");
    assert!(body.contains("tessera_router_command_duration_seconds_bucket"), "{body}");
}
