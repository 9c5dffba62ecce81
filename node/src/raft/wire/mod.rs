//! The Raft network's link for small messages: one plain TCP connection per
//! ordered pair of nodes, carrying length-prefixed frames both ways, shared
//! by every group the two nodes host together.
//!
//! It replaces an HTTP/2 stream (`RaftTransport.Stream`, still served for
//! nodes of the previous release). Over h2 a message went from its caller
//! to the connection's task, which framed and wrote it; the receiver's
//! connection task handed it to a stream reader, that to a handler, the
//! handler's reply went back to the connection task, and on the way back
//! the same again. Here the caller writes its frame to the socket itself
//! when nothing is queued ahead of it, one task reads each direction, and
//! a handler writes its reply itself.
//!
//! A link starts with [`MAGIC`]; the node's listener tells it from an h2
//! client by its first bytes (an h2 client's start with `PRI * HTTP/2.0`)
//! and answers with [`MAGIC`]. A node of the previous release answers
//! otherwise, and the link then reports [`Handshake::Legacy`]: its messages
//! go as unary `Call`s instead.
//!
//! This module has what both ends share (frames, the [`Writer`]) and the
//! serving end ([`sniff`], [`serve`]); [`link`] is the calling end.

use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::Mutex;
use tessera_proto::v1::RaftMessage;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub mod link;

pub use link::{CallError, Handshake, Link};

/// First bytes each end of a link sends.
pub const MAGIC: &[u8; 8] = b"TSRAFT\x00\x01";

/// A frame's header: the length of the rest (u32), then id (u64), group
/// (u32), kind (u8) and flags (u8), all little-endian; the payload (or, with
/// [`FLAG_ERROR`], the error text) follows.
const HEADER: usize = 4 + 8 + 4 + 1 + 1;
const FLAG_ERROR: u8 = 1;

/// Largest frame accepted: messages above `STREAM_MAX_BYTES` never take a
/// link, so anything much larger is a broken or foreign peer.
const FRAME_MAX: usize = 4 << 20;

/// Most bytes a connection holds queued for a peer that does not read them
/// (a paused process: its kernel still acknowledges what fits in its
/// buffer, so TCP never gives up on it). Past this the connection is closed
/// and its calls fail; the link reconnects. (Counting the buffer the flusher
/// is writing, a connection holds up to twice this.) HTTP/2's flow control
/// bounded this before.
const QUEUE_MAX: usize = 64 << 20;

/// The kernel drops a connection whose sent bytes stay unacknowledged this
/// long (TCP_USER_TIMEOUT), and probes an idle one: a peer cut off by a
/// partition is noticed, and the link reconnects, in seconds rather than
/// after TCP's retransmission back-off of minutes.
const USER_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

/// Sets the options every link socket gets (both ends).
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_fd();
    let _ = rustix::net::sockopt::set_tcp_user_timeout(fd, USER_TIMEOUT.as_millis() as u32);
    let _ = rustix::net::sockopt::set_socket_keepalive(fd, true);
    let _ = rustix::net::sockopt::set_tcp_keepidle(fd, KEEPALIVE_IDLE);
    let _ = rustix::net::sockopt::set_tcp_keepintvl(fd, KEEPALIVE_INTERVAL);
    let _ = rustix::net::sockopt::set_tcp_keepcnt(fd, KEEPALIVE_PROBES);
}

/// `m` as a frame.
pub fn encode_frame(m: &RaftMessage) -> Vec<u8> {
    let (flags, body): (u8, &[u8]) = match m.error.is_empty() {
        true => (0, &m.payload),
        false => (FLAG_ERROR, m.error.as_bytes()),
    };
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.put_u32_le((HEADER - 4 + body.len()) as u32);
    f.put_u64_le(m.id);
    f.put_u32_le(m.group);
    f.put_u8(m.kind.clamp(0, 255) as u8);
    f.put_u8(flags);
    f.extend_from_slice(body);
    f
}

/// The next whole frame at the front of `buf`, if one is there.
fn decode_frame(buf: &mut BytesMut) -> Result<Option<RaftMessage>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(HEADER - 4..=FRAME_MAX).contains(&len) {
        return Err(format!("raft link frame of {len} bytes"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let mut f = buf.split_to(4 + len);
    f.advance(4);
    let id = f.get_u64_le();
    let group = f.get_u32_le();
    let kind = f.get_u8() as i32;
    let flags = f.get_u8();
    let mut m = RaftMessage { group, kind, id, ..Default::default() };
    match flags & FLAG_ERROR {
        0 => m.payload = f.freeze(),
        _ => m.error = String::from_utf8_lossy(&f).into_owned(),
    }
    Ok(Some(m))
}

/// Reads frames from `stream` (after `skip` bytes) and hands each to
/// `on_frame`, until the connection ends; returns why it ended.
async fn read_frames(stream: &TcpStream, mut skip: usize, mut on_frame: impl FnMut(RaftMessage)) -> String {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        if skip > 0 {
            let n = skip.min(buf.len());
            buf.advance(n);
            skip -= n;
        }
        if skip == 0 {
            loop {
                match decode_frame(&mut buf) {
                    Ok(Some(m)) => on_frame(m),
                    Ok(None) => break,
                    Err(e) => return e,
                }
            }
        }
        if buf.capacity() - buf.len() < 16 << 10 {
            buf.reserve(64 << 10);
        }
        if let Err(e) = stream.readable().await {
            return e.to_string();
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return "connection closed by peer".into(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return e.to_string(),
        }
    }
}

/// One connection's sending side. A frame is written by the task that
/// sends it, at once, when nothing is queued ahead of it; what the socket
/// does not take goes to a queue that [`Writer::flush`] writes in order.
pub struct Writer {
    stream: Arc<TcpStream>,
    state: Mutex<WriteState>,
    wake: Notify,
}

#[derive(Default)]
struct WriteState {
    queued: Vec<u8>,
    /// Bytes are queued (or being written by the flusher): a send must queue
    /// behind them, not write.
    flushing: bool,
    broken: Option<String>,
}

impl Writer {
    pub fn new(stream: Arc<TcpStream>) -> Writer {
        Writer { stream, state: Mutex::default(), wake: Notify::new() }
    }

    pub fn send(&self, frame: &[u8]) -> Result<(), String> {
        let mut s = self.state.lock();
        if let Some(e) = &s.broken {
            return Err(e.clone());
        }
        if s.flushing {
            if s.queued.len() + frame.len() > QUEUE_MAX {
                let why = format!("peer is not reading: {} bytes queued for it", s.queued.len());
                s.broken = Some(why.clone());
                // Ends the connection's reader and flusher: the link
                // reconnects, and what was queued is dropped.
                let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Both);
                return Err(why);
            }
            s.queued.extend_from_slice(frame);
            return Ok(());
        }
        match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => return Ok(()),
            Ok(n) => s.queued.extend_from_slice(&frame[n..]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => s.queued.extend_from_slice(frame),
            Err(e) => {
                s.broken = Some(e.to_string());
                return Err(e.to_string());
            }
        }
        s.flushing = true;
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Writes what sends queued, until the connection fails; returns why.
    pub async fn flush(&self) -> String {
        let mut buf = Vec::new();
        loop {
            self.wake.notified().await;
            loop {
                {
                    let mut s = self.state.lock();
                    if s.queued.is_empty() {
                        s.flushing = false;
                        break;
                    }
                    std::mem::swap(&mut buf, &mut s.queued);
                }
                let mut at = 0;
                while at < buf.len() {
                    let r = match self.stream.writable().await {
                        Ok(()) => self.stream.try_write(&buf[at..]),
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => {
                            self.state.lock().broken = Some(e.to_string());
                            return e.to_string();
                        }
                    }
                }
                buf.clear();
                if buf.capacity() > 4 << 20 {
                    // After a burst (a peer that was slow to read): give
                    // the memory back rather than keep it for the link's life.
                    buf = Vec::new();
                }
            }
        }
    }

    /// Marks the writer broken and shuts the socket down: handlers still
    /// running hold the writer, and must not hold the connection open.
    fn close(&self, why: &str) {
        self.state.lock().broken.get_or_insert_with(|| why.to_owned());
        let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Both);
    }
}

/// Serves one incoming link (its [`MAGIC`] still unread): each request is
/// handled at once by `handle` on a task of its own (a slow group never
/// holds up another) and its reply written as soon as it is ready.
pub async fn serve<H, F>(stream: TcpStream, handle: H)
where
    H: Fn(RaftMessage) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = RaftMessage> + Send + 'static,
{
    tune(&stream);
    let stream = Arc::new(stream);
    let writer = Arc::new(Writer::new(stream.clone()));
    if let Err(e) = writer.send(MAGIC) {
        tracing::debug!(error = %e, "raft link closed before its handshake");
        return;
    }
    let handle = Arc::new(handle);
    let read = read_frames(&stream, MAGIC.len(), |m| {
        let (handle, writer) = (handle.clone(), writer.clone());
        tokio::spawn(async move {
            let reply = handle(m).await;
            let _ = writer.send(&encode_frame(&reply));
        });
    });
    let why = tokio::select! {
        why = read => why,
        why = writer.flush() => why,
    };
    writer.close(&why);
    tracing::debug!(reason = %why, "raft link from a peer closed");
}

/// What the first bytes of an accepted connection say it is.
pub enum Sniffed {
    /// A raft link: hand it to [`serve`].
    Link,
    /// Anything else (an HTTP/2 client): hand it to the gRPC server.
    Other,
}

/// Waits (bounded) for enough of a new connection's first bytes to tell a
/// raft link from anything else, without consuming them.
pub async fn sniff(stream: &TcpStream) -> Sniffed {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut b = [0u8; 8];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut b)).await {
            Ok(Ok(n)) => n,
            _ => return Sniffed::Other,
        };
        if n == 0 || b[..n] != MAGIC[..n] {
            return Sniffed::Other;
        }
        if n == MAGIC.len() {
            return Sniffed::Link;
        }
        // A prefix of the magic: the rest is on its way.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use tokio::net::TcpListener;

    pub(super) fn msg(id: u64, group: u32, payload: &[u8]) -> RaftMessage {
        RaftMessage { id, group, kind: 1, payload: payload.to_vec().into(), error: String::new() }
    }

    #[test]
    fn frames_round_trip_whole_or_in_pieces() {
        let frames = [
            msg(7, 3, b"hello"),
            msg(u64::MAX, u32::MAX, &[]),
            RaftMessage { id: 9, group: 1, kind: 2, payload: Default::default(), error: "no such group".into() },
        ];
        let bytes: Vec<u8> = frames.iter().flat_map(encode_frame).collect();
        // Fed one byte at a time, as a slow socket would.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &bytes {
            buf.put_u8(*b);
            while let Some(m) = decode_frame(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn an_oversized_or_undersized_length_is_an_error() {
        let mut buf = BytesMut::from(&((FRAME_MAX + 1) as u32).to_le_bytes()[..]);
        assert!(decode_frame(&mut buf).is_err());
        let mut buf = BytesMut::from(&3u32.to_le_bytes()[..]);
        assert!(decode_frame(&mut buf).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_tells_links_from_http2_by_their_first_bytes() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cases: [(&[&[u8]], bool); 4] = [
            (&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], false),
            (&[MAGIC], true),
            // The magic in two writes: the listener waits for the rest.
            (&[&MAGIC[..3], &MAGIC[3..]], true),
            (&[&MAGIC[..5], b"xyz"], false),
        ];
        for (writes, link) in cases {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            for w in writes {
                client.write_all(w).await.unwrap();
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(matches!(sniff(&server).await, Sniffed::Link), link, "{writes:?}");
            // Sniffing consumes nothing.
            let mut first = vec![0u8; writes.iter().map(|w| w.len()).sum()];
            server.peek(&mut first).await.unwrap();
            assert_eq!(first, writes.concat());
        }
    }
}
