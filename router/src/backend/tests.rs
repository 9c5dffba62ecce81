//! [`NodeClient`] against stand-ins for a node: one serving sessions as
//! links, one answering the handshake with something else, and mute ones
//! for the session's pings.

use super::*;
use prost::Message;
use std::sync::atomic::AtomicUsize;
use tessera_proto::parts::Outgoing;
use tessera_proto::v1::{Response, ResponseBatch};
use tokio::net::TcpListener;

/// A node stand-in that answers each command with itself as a bulk
/// reply, long commands and replies in parts as a node sends them.
#[derive(Default)]
struct Echo {
    joiner: Joiner,
}

impl Echo {
    fn answer(&mut self, batch: RequestBatch) -> Vec<ResponseBatch> {
        let mut out = Vec::new();
        for r in batch.requests {
            let command = match r.total_len {
                0 => r.command,
                total => match self.joiner.add(r.id, total, &r.command).unwrap() {
                    Some(whole) => whole,
                    None => continue,
                },
            };
            let reply = Reply::bulk(command);
            match reply.size_hint() > tessera_proto::parts::PART_BYTES {
                true => {
                    let mut long = Outgoing::from_pieces(r.id, (), reply.to_parts(64 << 10));
                    loop {
                        let (part, last) = long.next_part();
                        let result = Some(response::Result::Reply(part));
                        out.push(ResponseBatch {
                            responses: vec![Response { id: r.id, result, total_len: long.total }],
                        });
                        if last {
                            break;
                        }
                    }
                }
                false => {
                    let result = Some(response::Result::Reply(reply.to_bytes().into()));
                    out.push(ResponseBatch { responses: vec![Response { id: r.id, result, total_len: 0 }] });
                }
            }
        }
        out
    }
}

/// Serves sessions as links, as a node does; counts them.
async fn link_node(sessions: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            assert_eq!(link::sniff(&s, &[link::SESSION]).await, Some(0));
            sessions.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let s = Arc::new(s);
                let writer = Arc::new(Writer::new(s.clone()));
                writer.send(link::SESSION).unwrap();
                let mut frames = FrameReader::new(s, link::SESSION.len(), link::SESSION_FRAME_MAX);
                let mut echo = Echo::default();
                let serve = async {
                    while let Ok(f) = frames.next().await {
                        for b in echo.answer(RequestBatch::decode(f.payload).unwrap()) {
                            writer.send(&link::encode_message(0, &b)).unwrap();
                            writer.below(link::SESSION_PACE).await.unwrap();
                        }
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = writer.flush() => {}
                }
            });
        }
    });
    addr
}

/// Many concurrent commands, a few longer than a part, each answered
/// with its own bytes.
async fn round_trips(addr: String) {
    let client = NodeClient::spawn(addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !client.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = (0..300usize).map(|i| {
        let len = if i % 100 == 7 { (9 << 20) + i } else { i * 31 };
        let command: Bytes = (0..len).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>().into();
        let rx = client.call(request::Target::Slot(i as u32), command.clone());
        async move {
            match rx.await.unwrap() {
                NodeReply::Reply(Reply::Bulk(b)) => assert!(b == command, "reply {i} differs"),
                other => panic!("call {i}: {other:?}"),
            }
        }
    });
    futures::future::join_all(calls).await;
}

/// A node that completes the handshake, then hands each frame it gets to
/// `on_frame` (with its writer) until that returns false.
async fn fake_node(on_frame: impl Fn(&Writer, link::Frame) -> bool + Copy + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let s = Arc::new(s);
                let writer = Writer::new(s.clone());
                writer.send(link::SESSION).unwrap();
                let mut frames = FrameReader::new(s, link::SESSION.len(), link::SESSION_FRAME_MAX);
                while let Ok(f) = frames.next().await {
                    if !on_frame(&writer, f) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A node that never answers a request; with `pong`, it sends pings back
/// (as a node's session does).
async fn mute_node(pong: bool) -> String {
    fake_node(move |writer, f| {
        if pong && f.kind == link::KIND_PING {
            writer.send(&link::encode_frame(&f)).unwrap();
        }
        true
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_answering_pings_is_noticed() {
    // A paused node's kernel still accepts what is sent, so nothing but
    // the missing pongs tells it from a node with a slow command.
    let (silent, slow) = (NodeClient::spawn(mute_node(false).await), NodeClient::spawn(mute_node(true).await));
    for c in [&silent, &slow] {
        while !c.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let start = std::time::Instant::now();
    let (mut to_silent, mut to_slow) =
        (silent.call(request::Target::Slot(1), "a".into()), slow.call(request::Target::Slot(1), "b".into()));
    let reply = tokio::time::timeout(Duration::from_secs(60), &mut to_silent).await.expect("noticed").unwrap();
    let took = start.elapsed();
    match reply {
        NodeReply::Lost(e) => assert!(e.to_string().starts_with("TRYAGAIN connection to node"), "{e}"),
        other => panic!("{other:?}"),
    }
    // (Silence counts from the session's start, just before `start`.)
    assert!(took >= link::SESSION_SILENCE_MAX - Duration::from_secs(1), "gave up after {took:?}");
    assert!(took < link::SESSION_SILENCE_MAX + 3 * link::SESSION_PING, "took {took:?}");
    // The node that answers pings keeps its session, and the call waits.
    assert!(slow.is_connected());
    assert!(matches!(to_slow.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_round_trip_on_a_session_link() {
    let sessions = Arc::new(AtomicUsize::new(0));
    round_trips(link_node(sessions.clone()).await).await;
    assert_eq!(sessions.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_the_handshake_otherwise_gets_no_session() {
    // What an HTTP/2 server sends first: its SETTINGS frame.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(s)
            });
        }
    });
    let client = NodeClient::spawn(addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!client.is_connected());
    let reply = client.call(request::Target::Slot(1), Bytes::from_static(b"x")).await.unwrap();
    assert!(matches!(reply, NodeReply::Unreachable(_)), "{reply:?}");
}

/// A node that closes the session as soon as the first part of a long
/// command arrives, answering nothing.
async fn node_closing_at_a_part() -> String {
    fake_node(|writer, f| {
        let part = f.kind == link::KIND_BATCH
            && RequestBatch::decode(f.payload).unwrap().requests.iter().any(|r| r.total_len > 0);
        if part {
            writer.close("a part arrived");
        }
        !part
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_held_behind_a_long_one_fail_over_when_the_session_ends() {
    let client = NodeClient::spawn(node_closing_at_a_part().await);
    while !client.is_connected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 64 MiB: far more parts than the link queues before the node is gone.
    let long = client.call(request::Target::Slot(1), vec![7u8; 64 << 20].into());
    let same_slot = client.call(request::Target::Slot(1), "after".into());
    let shard_wide = client.call(request::Target::Shard(0), "keys".into());
    let reply = |rx: oneshot::Receiver<NodeReply>| async move {
        tokio::time::timeout(Duration::from_secs(30), rx).await.expect("answered").unwrap()
    };
    // None of them reached the node whole: safe to send elsewhere.
    for (what, rx) in
        [("the long command", long), ("a command of its slot", same_slot), ("a shard-wide one", shard_wide)]
    {
        match reply(rx).await {
            NodeReply::Unreachable(_) => {}
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A node that drains its session (as one that is stopping does): it holds
/// the reply to the first command it reads, asks the router to drain, and
/// answers everything it read once the router's last frame came. Reports
/// the commands it read, and what (if anything) came after that last frame.
async fn draining_node() -> (String, tokio::sync::oneshot::Receiver<(Vec<Bytes>, Option<String>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (done, report) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        assert_eq!(link::sniff(&s, &[link::SESSION]).await, Some(0));
        let s = Arc::new(s);
        let writer = Arc::new(Writer::new(s.clone()));
        writer.send(link::SESSION).unwrap();
        let flush = tokio::spawn({
            let writer = writer.clone();
            async move { writer.flush().await }
        });
        let mut frames = FrameReader::new(s, link::SESSION.len(), link::SESSION_FRAME_MAX);
        let (mut read, mut held) = (Vec::new(), Vec::new());
        loop {
            let f = frames.next().await.unwrap();
            match f.kind {
                link::KIND_PING => continue,
                link::KIND_END => break,
                _ => {}
            }
            let batch = RequestBatch::decode(f.payload).unwrap();
            if read.is_empty() {
                writer
                    .send(&link::encode_frame(&link::Frame { kind: link::KIND_DRAIN, ..Default::default() }))
                    .unwrap();
            }
            for r in batch.requests {
                read.push(r.command.clone());
                held.push(r);
            }
        }
        let answers = Echo::default().answer(RequestBatch { requests: held });
        for b in answers {
            writer.send(&link::encode_message(link::KIND_BATCH, &b)).unwrap();
        }
        writer.idle().await.unwrap();
        // Nothing may follow the router's last frame: it closes once answered.
        let after = tokio::time::timeout(Duration::from_secs(5), frames.next()).await;
        let after = match after {
            Ok(Err(why)) if why == link::CLOSED_BY_PEER => None,
            other => Some(format!("{other:?}")),
        };
        flush.abort();
        let _ = done.send((read, after));
    });
    (addr, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_answers_what_it_read_and_the_rest_fails_over() {
    let (addr, report) = draining_node().await;
    let c = NodeClient::spawn(addr);
    while !c.is_connected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = c.call(request::Target::Slot(1), "first".into());
    // Once the node has asked, the router sends it nothing new.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.is_connected() {
        assert!(tokio::time::Instant::now() < deadline, "the router never saw the drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let later = c.call(request::Target::Slot(1), "later".into());
    assert!(matches!(later.await.unwrap(), NodeReply::Unreachable(_)), "a command after the drain must fail over");
    assert_eq!(first.await.unwrap(), NodeReply::Reply(Reply::bulk(Bytes::from("first"))));
    let (read, after) = tokio::time::timeout(Duration::from_secs(10), report).await.unwrap().unwrap();
    assert_eq!(read, vec![Bytes::from("first")], "the node read something after it asked to drain");
    assert_eq!(after, None, "the router sent more after its last frame, or did not close");
}
