//! One client connection: read → frame → parse → dispatch, with pipelining.
//!
//! Commands are dispatched as soon as their frame is complete, so a pipeline
//! of N commands has up to `max_pipeline` of them in flight at the nodes at
//! once; replies are written strictly in request order, each encoded in the
//! protocol that was in force when its command was read (so `HELLO 3` answers
//! in RESP3 and everything after it too). Protocol errors are answered and
//! then the connection is closed; every other error keeps it open.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tessera_common::command::{self, table};
use tessera_common::error::code_of;
use tessera_common::reply::{Protocol, Reply};
use tessera_common::slot::SlotScope;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, debug_span, trace, Instrument};

use crate::codec::{FrameScanner, Limits};
use crate::dispatch::{dispatch, After, Pending};
use crate::error::Error;
use crate::Router;

/// Per-connection state that commands can change.
pub struct ConnState {
    pub id: u64,
    pub proto: Protocol,
    pub name: Option<Bytes>,
    /// The advertised virtual node this connection reached (None: plain port).
    pub vnode: Option<usize>,
    /// Slots that keyspace-wide commands cover on this connection.
    pub scope: SlotScope,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Whether the connection came through a TLS port.
    pub tls: bool,
    /// The user commands run as, and whether the connection has
    /// authenticated (or needs not: the default user has no password).
    pub user: Arc<tessera_common::acl::User>,
    pub authenticated: bool,
    /// The users' generation `user` was taken from (see `acl::follow`).
    pub users_generation: u64,
    pub created: Instant,
    /// This connection's commands dispatched and not yet answered, when the
    /// next one is dispatched (a read-only DAG goes to a follower only when
    /// there are none, so a pipelined write before it stays before it).
    pub in_flight: usize,
    /// The transaction being queued, between MULTI and EXEC.
    pub tx: Option<crate::multi::Tx>,
    /// The keys WATCHed since the last EXEC, DISCARD or UNWATCH.
    pub watching: Option<crate::multi::Watching>,
    /// A WATCH's read: no later command is dispatched before it is back.
    pub barrier: Option<crate::multi::WatchRead>,
}

impl ConnState {
    pub fn info_line(&self) -> String {
        format!(
            "id={} addr={} laddr={} fd=-1 name={} age={} idle=0 flags={} db=0 sub=0 psub=0 ssub=0 multi={} cmd=client user={} redir=-1 resp={}\n",
            self.id,
            self.peer,
            self.local,
            self.name.as_ref().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default(),
            self.created.elapsed().as_secs(),
            if self.tx.is_some() { "x" } else { "N" },
            self.tx.as_ref().map_or(-1, |t| t.queued() as i64),
            self.user.name,
            if self.proto == Protocol::Resp3 { 3 } else { 2 },
        )
    }
}

/// A pending reply with what is needed to write and account for it.
struct Tagged {
    pending: Pending,
    proto: Protocol,
    after: After,
    cmd: &'static str,
    start: Instant,
}

struct Done {
    reply: Reply,
    proto: Protocol,
    after: After,
    cmd: &'static str,
    start: Instant,
}

impl Future for Tagged {
    type Output = Done;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = &mut *self;
        Pin::new(&mut this.pending).poll(cx).map(|reply| Done {
            reply,
            proto: this.proto,
            after: this.after,
            cmd: this.cmd,
            start: this.start,
        })
    }
}

/// Where a connection came from and through which listener.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The advertised virtual node of the listener (None: the plain or TLS port).
    pub vnode: Option<usize>,
    pub tls: bool,
}

/// Serves one client on a TCP stream, or a TLS stream after its handshake.
pub async fn serve<S>(router: Arc<Router>, sock: S, from: Accepted, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Accepted { peer, local, vnode, tls } = from;
    let id = router.next_client_id();
    let (user, authenticated, users_generation) = router.users.initial();
    let mut conn = ConnState {
        id,
        proto: Protocol::Resp2,
        name: None,
        vnode,
        scope: router.topology.scope_of(vnode),
        peer,
        local,
        tls,
        user,
        authenticated,
        users_generation,
        created: Instant::now(),
        in_flight: 0,
        tx: None,
        watching: None,
        barrier: None,
    };
    let _admitted = Admitted::new(&router, &conn);
    let span = debug_span!("conn", id, %peer);
    let result = session(&router, &mut conn, sock, &mut shutdown).instrument(span).await;
    if let Err(e) = result {
        debug!(id, %peer, error = %e, "connection ended with an error");
    }
}

/// A connection's place among `--max-clients` and its `CLIENT LIST` entry,
/// given back however the connection's task ends (a panic included).
struct Admitted<'a> {
    router: &'a Router,
    id: u64,
}

impl<'a> Admitted<'a> {
    fn new(router: &'a Router, conn: &ConnState) -> Admitted<'a> {
        router.stats.connection_opened();
        router.update_client(conn);
        Admitted { router, id: conn.id }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.router.remove_client(self.id);
        self.router.stats.connection_closed();
    }
}

/// The connection's loop. Reads and writes never overlap (replies are
/// written between reads), so one stream serves both without a split.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    router: &Arc<Router>,
    conn: &mut ConnState,
    mut sock: S,
    shutdown: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = router.config.limits.clone();
    let max_pipeline = router.config.max_pipeline;
    let mut rbuf = BytesMut::with_capacity(16 * 1024);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut scanner = FrameScanner::default();
    let mut pending: FuturesOrdered<Tagged> = FuturesOrdered::new();
    let mut closing = false;
    let mut close_after_write = false;

    loop {
        // Dispatch every complete command in the buffer.
        while !closing && pending.len() < max_pipeline {
            if let Some(b) = &conn.barrier {
                if b.peek().is_none() {
                    break;
                }
                conn.barrier = None;
            }
            // Before AUTH, Redis's small limits: no one can make the router
            // buffer a large value without a password.
            let limits = if conn.authenticated { &limits } else { &Limits::UNAUTHENTICATED };
            let argv = match scanner.next(&mut rbuf, limits) {
                Ok(Some(argv)) if argv.is_empty() => continue,
                Ok(Some(argv)) => argv,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "protocol error; closing");
                    pending.push_back(tagged(
                        Pending::ready(Error::from(e).into()),
                        conn.proto,
                        After::Close,
                        "protocol",
                    ));
                    closing = true;
                    break;
                }
            };
            // The users changed: run as the user's new rules, or close if
            // the user was deleted.
            if !crate::acl::follow(&router.users, conn) {
                debug!(user = %conn.user.name, "the connection's user was deleted; closing");
                closing = true;
                break;
            }
            conn.in_flight = pending.len();
            let t = handle(router, conn, argv);
            if t.after == After::Close {
                closing = true;
            }
            pending.push_back(t);
        }
        // A large command (a model upload) grew the read buffer: once it is
        // consumed, let its memory go with the command instead of keeping
        // it for the connection's life.
        if rbuf.is_empty() && rbuf.capacity() > 1 << 20 {
            rbuf = BytesMut::with_capacity(16 * 1024);
        }

        // Write every reply that is already available, in order.
        while let Some(Some(done)) = pending.next().now_or_never() {
            close_after_write |= finish(router, done, &mut wbuf);
        }
        if !wbuf.is_empty() {
            sock.write_all(&wbuf).await?;
            // TLS records leave on flush (a no-op on TCP).
            sock.flush().await?;
            router.stats.bytes_out(wbuf.len());
            wbuf.clear();
            if wbuf.capacity() > 1 << 20 {
                wbuf = BytesMut::with_capacity(16 * 1024);
            }
        }
        if close_after_write || (closing && pending.is_empty()) {
            // Bounded: on TLS, shutting down writes a close_notify, which a
            // client that stopped reading would hold up forever.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), sock.shutdown()).await;
            return Ok(());
        }

        let barrier = conn.barrier.clone();
        let held = barrier.is_some();
        tokio::select! {
            _ = async { if let Some(b) = barrier { let _ = b.await; } }, if held => {}
            Some(done) = pending.next(), if !pending.is_empty() => {
                close_after_write |= finish(router, done, &mut wbuf);
            }
            r = sock.read_buf(&mut rbuf), if !closing && !held && pending.len() < max_pipeline => {
                match r? {
                    0 => return Ok(()),
                    n => router.stats.bytes_in(n),
                }
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
            }
        }
    }
}

fn tagged(pending: Pending, proto: Protocol, after: After, cmd: &'static str) -> Tagged {
    Tagged { pending, proto, after, cmd, start: Instant::now() }
}

/// Parses and dispatches one command.
fn handle(router: &Arc<Router>, conn: &mut ConnState, argv: Vec<Bytes>) -> Tagged {
    let spec = table::lookup(&argv[0]);
    let name = spec.map_or("unknown", |s| s.name);
    trace!(conn = conn.id, cmd = name, args = argv.len(), "command");
    let parsed = match spec {
        Some(spec) => match crate::acl::check(&router.users, conn, spec, &argv) {
            Ok(()) => crate::acl::check_parsed(
                &router.users,
                conn,
                spec,
                command::parse_spec(spec, argv, &router.parse_limits),
            ),
            Err(e) => Err(e),
        },
        None => Err(command::unknown_command(&argv)),
    };
    let proto_before = conn.proto;
    let (pending, after) = match parsed {
        parsed if crate::multi::concerns(conn, &parsed) => crate::multi::handle(router, conn, name, parsed),
        Ok(cmd) => dispatch(router, conn, cmd),
        Err(e) => (Pending::ready(e.to_reply()), After::Continue),
    };
    // HELLO answers in the protocol it negotiates.
    let proto = if name == "hello" { conn.proto } else { proto_before };
    tagged(pending, proto, after, name)
}

/// Encodes a finished reply and records it; true when the connection must close.
fn finish(router: &Router, done: Done, wbuf: &mut BytesMut) -> bool {
    let code = match &done.reply {
        Reply::Error(e) => code_of(e),
        _ => "ok",
    };
    router.stats.command(done.cmd, code, done.start.elapsed());
    done.reply.encode(done.proto, wbuf);
    done.after == After::Close
}
