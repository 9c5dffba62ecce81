//! Links: plain TCP connections between Tessera processes that carry
//! length-prefixed frames both ways, for the messages that are sent most
//! often (Raft messages between nodes, router sessions to nodes).
//!
//! They replace HTTP/2 streams on those paths. Over h2 a message went from
//! its sender to the connection's task, which framed and wrote it; at the
//! other end the connection's task handed it to a stream reader, and the
//! reply went the same way back: two task hand-offs per message per end,
//! plus h2's own framing and flow control. On a link the sender writes its
//! frame to the socket itself when nothing is queued ahead of it, and one
//! task reads each direction.
//!
//! A link starts with an 8-byte magic naming what it carries. A node serves
//! links and gRPC (admin calls, snapshots, large Raft messages) on one port:
//! its listener tells a link from an HTTP/2 client by the first bytes
//! ([`sniff`]; an h2 client's start with `PRI * HTTP/2.0`) and answers a
//! link with the same magic. [`connect`] fails on any other answer.
//!
//! On a cluster with TLS ([`crate::tls`]) a link is a TLS session over its
//! socket ([`Conn`]): senders encrypt into it and write the records
//! themselves, as they write plain frames, and the reader decrypts.

mod open;

pub use open::{accept_tls, connect, sniff};

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A link's first 8 bytes: what it carries.
pub type Magic = [u8; 8];

/// Raft messages between nodes.
pub const RAFT: &Magic = b"TSRAFT\x00\x01";
/// A router's session with a node: `RequestBatch`es one way,
/// `ResponseBatch`es the other, one per frame.
pub const SESSION: &Magic = b"TSSESS\x00\x01";

/// A frame's header: the length of the rest (u32), then id (u64), group
/// (u32), kind (u8) and flags (u8), all little-endian; the payload (or, with
/// [`FLAG_ERROR`], the error text) follows.
const HEADER: usize = 4 + 8 + 4 + 1 + 1;
const FLAG_ERROR: u8 = 1;

/// One message on a link. What `group` and `kind` mean is the link's
/// business (a Raft link's are the Raft group and message kind); `id`
/// pairs a reply with its request where a link has replies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub id: u64,
    pub group: u32,
    pub kind: u8,
    pub payload: Bytes,
    /// Not empty: the request failed, and this says why (no payload).
    pub error: String,
}

/// Most bytes a connection holds queued for a peer that does not read them
/// (a paused process: its kernel still acknowledges what fits in its
/// buffer, so TCP never gives up on it). Past this the connection is closed
/// and its calls fail. (Counting the buffer the flusher is writing, a
/// connection holds up to twice this.) HTTP/2's flow control bounded this
/// before.
pub const QUEUE_MAX: usize = 64 << 20;

/// The kernel drops a connection whose sent bytes stay unacknowledged this
/// long (TCP_USER_TIMEOUT), and probes an idle one: a peer cut off by a
/// partition is noticed in seconds rather than after TCP's retransmission
/// back-off of minutes. The timeout also ends a connection whose peer
/// advertises a zero window that long: a Raft link's reader never stops
/// reading, but a session's does while a shard's queue is full, so a
/// session gets longer (its pings, [`SESSION_PING`], find a dead node).
const RAFT_USER_TIMEOUT: Duration = Duration::from_secs(5);
const SESSION_USER_TIMEOUT: Duration = Duration::from_secs(30);
const KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_PROBES: u32 = 3;

/// A session's frame kinds: a batch, or a ping the node sends back as it
/// came. The kernel answers keepalive probes even for a paused or hung
/// process; a ping is answered by the node's session itself, so a router
/// notices a node that stopped (as h2's keepalive pings did).
pub const KIND_BATCH: u8 = 0;
pub const KIND_PING: u8 = 1;
/// A node that is stopping asks its router to *drain* the session (node →
/// router): the router sends nothing more but [`KIND_END`], and fails the
/// commands it still holds over to other replicas (they never reached the
/// node). The node answers every command it read before `KIND_END`, then
/// closes the session: no command is left with an unknown outcome.
pub const KIND_DRAIN: u8 = 2;
/// The router's last frame on a session it drains (router → node).
pub const KIND_END: u8 = 3;
/// How often a router pings a node on its session, and how long it waits
/// for any frame before it closes the session (its requests get TRYAGAIN,
/// new ones go elsewhere).
pub const SESSION_PING: Duration = Duration::from_secs(5);
pub const SESSION_SILENCE_MAX: Duration = Duration::from_secs(20);
/// Largest frame a session accepts: a batch is cut after ~4 MiB, plus one
/// command or reply of up to a part (`parts::PART_BYTES`).
pub const SESSION_FRAME_MAX: usize = 16 << 20;
/// Bytes a session's sender lets queue before it waits for the socket to
/// take them (a long command or reply goes out part by part, not all
/// queued at once; see [`Writer::below`]).
pub const SESSION_PACE: usize = 4 << 20;

/// Sets the options every socket of a link carrying `magic` gets (both ends).
pub fn tune(stream: &TcpStream, magic: &Magic) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_fd();
    let user_timeout = if magic == SESSION { SESSION_USER_TIMEOUT } else { RAFT_USER_TIMEOUT };
    let _ = rustix::net::sockopt::set_tcp_user_timeout(fd, user_timeout.as_millis() as u32);
    let _ = rustix::net::sockopt::set_socket_keepalive(fd, true);
    let _ = rustix::net::sockopt::set_tcp_keepidle(fd, KEEPALIVE_IDLE);
    let _ = rustix::net::sockopt::set_tcp_keepintvl(fd, KEEPALIVE_INTERVAL);
    let _ = rustix::net::sockopt::set_tcp_keepcnt(fd, KEEPALIVE_PROBES);
}

fn header(f: &mut Vec<u8>, body: usize, id: u64, group: u32, kind: u8, flags: u8) {
    f.put_u32_le((HEADER - 4 + body) as u32);
    f.put_u64_le(id);
    f.put_u32_le(group);
    f.put_u8(kind);
    f.put_u8(flags);
}

/// `m` as bytes to send.
pub fn encode_frame(m: &Frame) -> Vec<u8> {
    let (flags, body): (u8, &[u8]) = match m.error.is_empty() {
        true => (0, &m.payload),
        false => (FLAG_ERROR, m.error.as_bytes()),
    };
    let mut f = Vec::with_capacity(HEADER + body.len());
    header(&mut f, body.len(), m.id, m.group, m.kind, flags);
    f.extend_from_slice(body);
    f
}

/// A frame whose payload is `m` encoded (straight into the frame, no copy).
pub fn encode_message<M: prost::Message>(kind: u8, m: &M) -> Vec<u8> {
    let len = m.encoded_len();
    let mut f = Vec::with_capacity(HEADER + len);
    header(&mut f, len, 0, 0, kind, 0);
    m.encode(&mut f).expect("a Vec grows as needed");
    f
}

/// The next whole frame at the front of `buf`, if one is there; frames
/// longer than `max` are an error.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(HEADER - 4..=max).contains(&len) {
        return Err(format!("link frame of {len} bytes"));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let mut f = buf.split_to(4 + len);
    f.advance(4);
    let id = f.get_u64_le();
    let group = f.get_u32_le();
    let kind = f.get_u8();
    let flags = f.get_u8();
    let mut m = Frame { group, kind, id, ..Default::default() };
    match flags & FLAG_ERROR {
        0 => m.payload = f.freeze(),
        _ => m.error = String::from_utf8_lossy(&f).into_owned(),
    }
    Ok(Some(m))
}

/// Why [`FrameReader::next`] ended when the peer closed the connection.
pub const CLOSED_BY_PEER: &str = "connection closed by peer";

/// A link's connection: its socket and, on a cluster with TLS, the TLS
/// session over it, which the link's reader and senders share.
#[derive(Clone)]
pub struct Conn {
    pub stream: Arc<TcpStream>,
    tls: Option<Arc<Mutex<rustls::Connection>>>,
}

impl From<Arc<TcpStream>> for Conn {
    fn from(stream: Arc<TcpStream>) -> Conn {
        Conn { stream, tls: None }
    }
}

impl From<TcpStream> for Conn {
    fn from(stream: TcpStream) -> Conn {
        Conn { stream: Arc::new(stream), tls: None }
    }
}

impl Conn {
    /// A link over a TLS session whose handshake is done (the socket and
    /// the session, taken apart: see `tokio_rustls`'s `into_inner`).
    pub fn tls(stream: TcpStream, session: rustls::Connection) -> Conn {
        let mut session = session;
        // (Bounded by the link's own queue: see `Writer::send`.)
        session.set_buffer_limit(None);
        Conn { stream: Arc::new(stream), tls: Some(Arc::new(Mutex::new(session))) }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// The socket as `std::io` sees it, for rustls: never blocks
/// (`WouldBlock` when the socket has nothing, or no room).
struct Sock<'a>(&'a TcpStream);

impl Read for Sock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes what `session` has encrypted to the socket, until it has nothing
/// left or the socket has no room: whether something is left.
fn write_tls(session: &mut rustls::Connection, stream: &TcpStream) -> std::io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut Sock(stream)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Reads one connection's frames in order.
pub struct FrameReader {
    stream: Arc<TcpStream>,
    tls: Option<Arc<Mutex<rustls::Connection>>>,
    buf: BytesMut,
    skip: usize,
    max: usize,
}

impl FrameReader {
    /// Frames from `conn` after its first `skip` bytes (a magic already
    /// looked at), each at most `max` bytes.
    pub fn new(conn: impl Into<Conn>, skip: usize, max: usize) -> FrameReader {
        let Conn { stream, tls } = conn.into();
        FrameReader { stream, tls, buf: BytesMut::with_capacity(64 << 10), skip, max }
    }

    /// Takes what the TLS session has decrypted into the buffer: whether
    /// it had anything. An error once the peer closed the session.
    fn take_plaintext(&mut self, session: &mut rustls::Connection) -> Result<bool, String> {
        use std::io::BufRead;
        let mut took = false;
        let mut reader = session.reader();
        loop {
            let n = match reader.fill_buf() {
                Ok([]) if took => return Ok(true),
                Ok([]) => return Err(CLOSED_BY_PEER.into()),
                Ok(chunk) => {
                    self.buf.extend_from_slice(chunk);
                    chunk.len()
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(took),
                Err(e) => return Err(e.to_string()),
            };
            reader.consume(n);
            took = true;
        }
    }

    /// The next frame; an error once the connection ends, saying why.
    pub async fn next(&mut self) -> Result<Frame, String> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len());
                self.buf.advance(n);
                self.skip -= n;
            }
            if self.skip == 0 {
                if let Some(m) = decode_frame(&mut self.buf, self.max)? {
                    return Ok(m);
                }
            }
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve(64 << 10);
            }
            if let Some(tls) = self.tls.clone() {
                // What the session holds decrypted first; then the socket.
                if self.take_plaintext(&mut tls.lock())? {
                    continue;
                }
                self.stream.readable().await.map_err(|e| e.to_string())?;
                let mut session = tls.lock();
                match session.read_tls(&mut Sock(&self.stream)) {
                    Ok(0) => return Err(CLOSED_BY_PEER.into()),
                    Ok(_) => {
                        if let Err(e) = session.process_new_packets() {
                            // (The alert that says why goes to the peer.)
                            let _ = write_tls(&mut session, &self.stream);
                            return Err(format!("TLS: {e}"));
                        }
                        // (A reply rustls owes the peer, a key update's.)
                        write_tls(&mut session, &self.stream).map_err(|e| e.to_string())?;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.to_string()),
                }
                continue;
            }
            self.stream.readable().await.map_err(|e| e.to_string())?;
            // A read that does not fill the buffer has emptied the socket:
            // say so (WouldBlock), and tokio clears the readiness it had
            // when the read began, as its own `poll_read` does on
            // edge-triggered pollers (data that comes after the read is a
            // new edge; a peer's close is never cleared). Otherwise the next
            // wait would return at once to a read that finds nothing: one
            // wasted syscall per frame.
            let spare = self.buf.capacity() - self.buf.len();
            let mut got = 0;
            let read = self.stream.try_io(Interest::READABLE, || {
                got = self.stream.try_read_buf(&mut self.buf)?;
                if cfg!(not(windows)) && got > 0 && got < spare {
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(got)
            });
            match read {
                Ok(0) => return Err(CLOSED_BY_PEER.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// One connection's sending side. A frame is written by the task that
/// sends it, at once, when nothing is queued ahead of it; what the socket
/// does not take goes to a queue that [`Writer::flush`] writes in order.
pub struct Writer {
    stream: Arc<TcpStream>,
    /// With TLS: frames are encrypted into the session, whose records are
    /// written as plain frames are; what is queued is plaintext.
    tls: Option<Arc<Mutex<rustls::Connection>>>,
    state: Mutex<WriteState>,
    wake: Notify,
    /// Told each time the flusher takes the queue, and when the connection
    /// breaks ([`Writer::below`] waits on it).
    taken: Notify,
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
    pub fn new(conn: impl Into<Conn>) -> Writer {
        let Conn { stream, tls } = conn.into();
        Writer { stream, tls, state: Mutex::default(), wake: Notify::new(), taken: Notify::new() }
    }

    /// Encrypts `data` into the TLS session and writes what the socket
    /// takes: whether records are left for the flusher.
    fn send_tls(&self, tls: &Mutex<rustls::Connection>, data: &[u8]) -> std::io::Result<bool> {
        let mut session = tls.lock();
        session.writer().write_all(data)?;
        write_tls(&mut session, &self.stream)
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
                drop(s);
                // Ends the connection's reader and flusher: what was queued
                // is dropped.
                let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Both);
                self.taken.notify_waiters();
                self.wake.notify_one();
                return Err(why);
            }
            s.queued.extend_from_slice(frame);
            return Ok(());
        }
        if let Some(tls) = &self.tls {
            match self.send_tls(tls, frame) {
                Ok(false) => return Ok(()),
                // (Encrypted, left in the session for the flusher.)
                Ok(true) => {}
                Err(e) => {
                    s.broken = Some(e.to_string());
                    return Err(e.to_string());
                }
            }
        } else {
            match self.stream.try_write(frame) {
                Ok(n) if n == frame.len() => return Ok(()),
                Ok(n) => s.queued.extend_from_slice(&frame[n..]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => s.queued.extend_from_slice(frame),
                Err(e) => {
                    s.broken = Some(e.to_string());
                    return Err(e.to_string());
                }
            }
        }
        s.flushing = true;
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Waits until at most `limit` bytes are queued (the flusher has taken
    /// the rest): a sender of a long stream of frames paces itself with
    /// it, rather than queue them all. An error if the connection broke.
    pub async fn below(&self, limit: usize) -> Result<(), String> {
        self.wait_until(|s| s.queued.len() <= limit).await
    }

    /// Waits until everything sent so far is written to the socket (none
    /// queued, none being written): what a sender does before it closes a
    /// connection cleanly. An error if the connection broke.
    pub async fn idle(&self) -> Result<(), String> {
        self.wait_until(|s| !s.flushing).await
    }

    /// Waits until `done` holds of the write state, checked each time the
    /// flusher takes the queue or finishes it; an error if the connection broke.
    async fn wait_until(&self, done: impl Fn(&WriteState) -> bool) -> Result<(), String> {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            {
                let s = self.state.lock();
                if let Some(e) = &s.broken {
                    return Err(e.clone());
                }
                if done(&s) {
                    return Ok(());
                }
            }
            taken.await;
        }
    }

    /// Writes what sends queued, until the connection fails; returns why.
    pub async fn flush(&self) -> String {
        let mut buf = Vec::new();
        loop {
            self.wake.notified().await;
            loop {
                // With TLS, the records already encrypted go first.
                if let Err(e) = self.drain_tls().await {
                    self.close(&e.to_string());
                    return e.to_string();
                }
                {
                    let mut s = self.state.lock();
                    if let Some(why) = &s.broken {
                        return why.clone();
                    }
                    if s.queued.is_empty() {
                        s.flushing = false;
                        drop(s);
                        // (Wakes `idle` too: everything sent is written.)
                        self.taken.notify_waiters();
                        break;
                    }
                    std::mem::swap(&mut buf, &mut s.queued);
                }
                self.taken.notify_waiters();
                if let Some(tls) = &self.tls {
                    // Encrypted now; written by `drain_tls` at the top.
                    if let Err(e) = tls.lock().writer().write_all(&buf) {
                        self.close(&e.to_string());
                        return e.to_string();
                    }
                    buf.clear();
                    if buf.capacity() > 4 << 20 {
                        buf = Vec::new();
                    }
                    continue;
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
                            self.close(&e.to_string());
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

    /// Writes the TLS session's records until none are left.
    async fn drain_tls(&self) -> std::io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        while write_tls(&mut tls.lock(), &self.stream)? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Marks the writer broken and shuts the socket down: tasks still
    /// holding the writer must not hold the connection open. [`Writer::flush`]
    /// returns.
    pub fn close(&self, why: &str) {
        self.state.lock().broken.get_or_insert_with(|| why.to_owned());
        let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Both);
        self.taken.notify_waiters();
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests;
