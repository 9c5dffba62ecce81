//! Links: framing, the listener's sniffing, pacing, and TLS links.

use super::open::exchange;
use super::*;
use tokio::net::TcpListener;

fn frame(id: u64, group: u32, payload: &[u8]) -> Frame {
    Frame { id, group, kind: 1, payload: payload.to_vec().into(), error: String::new() }
}

#[test]
fn frames_round_trip_whole_or_in_pieces() {
    let frames = [
        frame(7, 3, b"hello"),
        frame(u64::MAX, u32::MAX, &[]),
        Frame { id: 9, group: 1, kind: 2, payload: Default::default(), error: "no such group".into() },
    ];
    let bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
    // Fed one byte at a time, as a slow socket would.
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for b in &bytes {
        buf.put_u8(*b);
        while let Some(m) = decode_frame(&mut buf, 1 << 20).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, frames);
    assert!(buf.is_empty());
}

#[test]
fn a_message_frame_carries_the_message() {
    let m = crate::v1::RaftMessage { group: 3, kind: 1, payload: vec![9; 300].into(), id: 4, error: String::new() };
    let mut buf = BytesMut::from(&encode_message(5, &m)[..]);
    let f = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
    assert_eq!(f.kind, 5);
    assert_eq!(<crate::v1::RaftMessage as prost::Message>::decode(f.payload).unwrap(), m);
}

#[test]
fn an_oversized_or_undersized_length_is_an_error() {
    let mut buf = BytesMut::from(&(1025u32).to_le_bytes()[..]);
    assert!(decode_frame(&mut buf, 1024).is_err());
    let mut buf = BytesMut::from(&3u32.to_le_bytes()[..]);
    assert!(decode_frame(&mut buf, 1024).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_tells_links_from_http2_by_their_first_bytes() {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cases: [(&[&[u8]], Option<usize>); 6] = [
        (&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], None),
        (&[RAFT], Some(0)),
        (&[SESSION], Some(1)),
        // A magic in two writes: the listener waits for the rest.
        (&[&RAFT[..3], &RAFT[3..]], Some(0)),
        (&[&SESSION[..2], &SESSION[2..]], Some(1)),
        (&[&RAFT[..5], b"xyz"], None),
    ];
    for (writes, want) in cases {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        for w in writes {
            client.write_all(w).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sniff(&server, &[RAFT, SESSION]).await, want, "{writes:?}");
        // Sniffing consumes nothing.
        let mut first = vec![0u8; writes.iter().map(|w| w.len()).sum()];
        server.peek(&mut first).await.unwrap();
        assert_eq!(first, writes.concat());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_sender_never_queues_much_more_than_its_limit() {
    // A reader that takes its time; the sender sends 64 MiB in 1 MiB
    // frames, waiting each time until at most 2 MiB are queued.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut r = FrameReader::new(Arc::new(s), 0, 2 << 20);
        let mut total = 0;
        for i in 0..64u64 {
            let f = r.next().await.unwrap();
            assert_eq!(f.id, i);
            total += f.payload.len();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        total
    });
    let stream = Arc::new(TcpStream::connect(addr).await.unwrap());
    let w = Arc::new(Writer::new(stream));
    let flusher = tokio::spawn({
        let w = w.clone();
        async move { w.flush().await }
    });
    let mut most = 0;
    for i in 0..64u64 {
        w.send(&encode_frame(&frame(i, 0, &vec![i as u8; 1 << 20]))).unwrap();
        most = most.max(w.state.lock().queued.len());
        w.below(2 << 20).await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 64 << 20);
    assert!(most <= (3 << 20) + 64, "{most} bytes were queued");
    w.close("done");
    assert_eq!(flusher.await.unwrap(), "done");
}

/// A cluster CA and a member certificate it signed, in a folder of
/// their own (`ca.crt`, `c.crt`, `c.key`).
fn cluster_files() -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![crate::tls::SERVER_NAME.to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let unique = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), 0u8);
    let dir = std::env::temp_dir().join(format!("tessera-link-tls-{}-{unique:x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("c.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("c.key"), key.serialize_pem()).unwrap();
    dir
}

fn load(dir: &std::path::Path) -> crate::tls::ClusterTls {
    crate::tls::ClusterTls::load(&dir.join("c.crt"), &dir.join("c.key"), &dir.join("ca.crt")).unwrap()
}

/// Serves one TLS link on `listener` as a node does: handshake, ALPN,
/// magic, echo of the magic; then sends back each frame it reads.
async fn echo_tls(listener: TcpListener, tls: crate::tls::ClusterTls) -> Result<(), String> {
    let (s, _) = listener.accept().await.unwrap();
    let stream = tls.acceptor().accept(s).await.map_err(|e| e.to_string())?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(crate::tls::ALPN_LINK));
    let (which, conn) = accept_tls(stream, &[RAFT, SESSION]).await?;
    let w = Arc::new(Writer::new(conn.clone()));
    w.send(if which == 0 { RAFT } else { SESSION })?;
    let flusher = tokio::spawn({
        let w = w.clone();
        async move { w.flush().await }
    });
    let mut r = FrameReader::new(conn, 0, 4 << 20);
    let result = loop {
        match r.next().await {
            Ok(f) => {
                if let Err(e) = w.send(&encode_frame(&f)) {
                    break Err(e);
                }
            }
            Err(e) if e == CLOSED_BY_PEER => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    flusher.abort();
    result
}

/// A client's side of a TLS link: the handshake and the magic.
async fn open_tls(addr: std::net::SocketAddr, tls: &crate::tls::ClusterTls) -> std::io::Result<Conn> {
    let stream = tls.connect_link(TcpStream::connect(addr).await?).await?;
    let (stream, session) = exchange(stream, SESSION).await?.into_inner();
    Ok(Conn::tls(stream, rustls::Connection::Client(session)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cross_a_tls_link_both_ways_whole_and_in_order() {
    let dir = cluster_files();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(echo_tls(listener, load(&dir)));
    let conn = open_tls(addr, &load(&dir)).await.unwrap();
    assert!(conn.is_tls());
    let w = Arc::new(Writer::new(conn.clone()));
    let flusher = tokio::spawn({
        let w = w.clone();
        async move { w.flush().await }
    });
    // Small frames and frames larger than the socket takes at once (the
    // flusher writes their records), sent while the replies come back.
    let sizes: Vec<usize> = (0..200).map(|i| if i % 10 == 0 { 1 << 20 } else { i * 37 }).collect();
    let sender = tokio::spawn({
        let (w, sizes) = (w.clone(), sizes.clone());
        async move {
            for (i, n) in sizes.iter().enumerate() {
                w.send(&encode_frame(&frame(i as u64, 1, &vec![i as u8; *n]))).unwrap();
                w.below(4 << 20).await.unwrap();
            }
        }
    });
    let mut r = FrameReader::new(conn.clone(), 0, 4 << 20);
    for (i, n) in sizes.iter().enumerate() {
        let f = r.next().await.unwrap();
        assert_eq!((f.id, f.payload.len()), (i as u64, *n));
        assert!(f.payload.iter().all(|b| *b == i as u8));
    }
    sender.await.unwrap();
    w.idle().await.unwrap();
    w.close("done");
    flusher.abort();
    assert_eq!(server.await.unwrap(), Ok(()), "the server saw the link close");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_certificate_from_another_ca_gets_no_link() {
    let (ours, theirs) = (cluster_files(), cluster_files());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(echo_tls(listener, load(&ours)));
    // (TLS 1.3: the client's handshake ends before the server has
    // checked its certificate; the server's refusal ends the link.)
    assert!(open_tls(addr, &load(&theirs)).await.is_err(), "the server's echo never comes");
    assert!(server.await.unwrap().is_err(), "the server refused the handshake");
    // A client that trusts the server, with a certificate the server's
    // CA did not sign: the server refuses it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(echo_tls(listener, load(&ours)));
    let intruder =
        crate::tls::ClusterTls::load(&theirs.join("c.crt"), &theirs.join("c.key"), &ours.join("ca.crt")).unwrap();
    assert!(open_tls(addr, &intruder).await.is_err(), "no magic comes back");
    let refused = server.await.unwrap().unwrap_err();
    assert!(refused.contains("UnknownIssuer") || refused.contains("certificate"), "{refused}");
    for d in [ours, theirs] {
        std::fs::remove_dir_all(&d).unwrap();
    }
}
