use super::*;
use crate::raft::wire::frame::tests::msg;
use crate::raft::wire::serve;
use tessera_proto::link::{sniff, QUEUE_MAX, RAFT as MAGIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A listener that hands each connection it accepts to `on_accept`;
/// its address.
async fn peer(mut on_accept: impl FnMut(TcpStream) + Send + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            on_accept(s);
        }
    });
    addr
}

/// A listener that serves links with `handle`, as the node's does.
async fn link_server<H, F>(handle: H) -> String
where
    H: Fn(RaftMessage) -> F + Send + Sync + Clone + 'static,
    F: std::future::Future<Output = RaftMessage> + Send + 'static,
{
    peer(move |s| {
        let handle = handle.clone();
        tokio::spawn(async move {
            if sniff(&s, &[MAGIC]).await == Some(0) {
                serve(s.into(), tessera_proto::link::RAFT.len(), handle).await;
            }
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_get_their_own_replies() {
    let addr = link_server(|m: RaftMessage| async move {
        // Later requests answer first: replies are matched by id, not order.
        tokio::time::sleep(Duration::from_millis(50 - (m.group as u64 % 50))).await;
        let mut payload = m.payload.to_vec();
        payload.reverse();
        RaftMessage { payload: payload.into(), ..m }
    })
    .await;
    let link = Link::open(2, addr);
    let calls = (0..200u32).map(|i| {
        let link = link.clone();
        async move {
            // Some bigger than a socket buffer, so sends queue behind each other.
            let payload: Vec<u8> = (0..(i as usize * 997) % 300_000).map(|b| (b + i as usize) as u8).collect();
            let reply = match link.call(msg(0, i, &payload), Duration::from_secs(10)).await {
                Ok(r) => r,
                Err(CallError::TimedOut) => panic!("call {i} timed out"),
                Err(CallError::Broken(e)) => panic!("call {i}: {e}"),
            };
            assert_eq!(reply.group, i);
            let mut want = payload;
            want.reverse();
            assert_eq!(&reply.payload[..], &want[..], "call {i}");
        }
    });
    futures::future::join_all(calls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_and_reconnects_after_the_peer_drops_the_link() {
    let addr = link_server(|m: RaftMessage| async move {
        RaftMessage { error: format!("group {} not here", m.group), payload: Default::default(), ..m }
    })
    .await;
    let link = Link::open(2, addr.clone());
    match link.call(msg(0, 5, b"x"), Duration::from_secs(5)).await {
        Err(CallError::Broken(e)) => assert_eq!(e, "group 5 not here"),
        _ => panic!("an error reply is an error"),
    }
    // A server that closes every link once the first frame arrives: the
    // call fails, and the link keeps reconnecting.
    let closer = peer(|mut s| {
        tokio::spawn(async move {
            let mut b = [0u8; 9];
            let _ = s.write_all(MAGIC).await;
            let _ = s.read_exact(&mut b).await;
        });
    })
    .await;
    let link = Link::open(3, closer);
    for _ in 0..3 {
        assert!(matches!(link.call(msg(0, 1, b"y"), Duration::from_secs(5)).await, Err(CallError::Broken(_))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_holds_a_bounded_queue() {
    // A peer that completes the handshake, then reads nothing (as a
    // SIGSTOPped node would) while its kernel keeps the connection up.
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    let addr = peer(move |mut s| {
        let held_tx = held_tx.clone();
        tokio::spawn(async move {
            let _ = s.write_all(MAGIC).await;
            let _ = held_tx.send(s);
        });
    })
    .await;
    let link = Link::open(5, addr);
    let payload = vec![7u8; 1 << 20];
    let mut timed_out = 0;
    let why = loop {
        assert!(timed_out < 200, "{timed_out} MiB went out unanswered and the link never gave up");
        match link.call(msg(0, 1, &payload), Duration::from_millis(5)).await {
            Err(CallError::TimedOut) => timed_out += 1,
            Err(CallError::Broken(e)) => break e,
            Ok(_) => panic!("nobody answers"),
        }
    };
    assert!(why.contains("not reading"), "{why}");
    assert!(timed_out * (1 << 20) > QUEUE_MAX, "gave up after {timed_out} MiB");
    // The link closed that connection and connects again.
    let first = held.recv().await.unwrap();
    let _second = tokio::time::timeout(Duration::from_secs(5), held.recv()).await.expect("reconnected").unwrap();
    let mut b = [0u8; 1];
    // The old connection's data ends (EOF after what was in flight).
    let mut first = first;
    let eof = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "the old connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_during_the_handshake_is_tried_again() {
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let addr = peer(move |s| {
        drop(s);
        let _ = accepted_tx.send(());
    })
    .await;
    let link = Link::open(6, addr);
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), accepted.recv()).await.expect("the link retries").unwrap();
    }
    assert!(matches!(link.call(msg(0, 1, b"z"), Duration::from_secs(5)).await, Err(CallError::Broken(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_answers_otherwise_fails_calls() {
    // What an h2 server does with a connection that does not start with
    // its preface: answers with a frame of its own and closes.
    let addr = peer(|mut s| {
        tokio::spawn(async move {
            let _ = s.write_all(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00").await;
        });
    })
    .await;
    let link = Link::open(4, addr);
    tokio::time::sleep(Duration::from_millis(200)).await;
    match link.call(msg(0, 1, b"z"), Duration::from_secs(5)).await {
        Err(CallError::Broken(e)) => assert!(e.contains("not connected") || e.contains("does not serve"), "{e}"),
        Err(CallError::TimedOut) => panic!("timed out"),
        Ok(_) => panic!("answered"),
    }
}
