//! The calling end of raft links: [`Link`] keeps one connected to a peer
//! and matches replies to calls by id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tessera_proto::v1::RaftMessage;
use tokio::sync::oneshot;

use tessera_proto::link::{FrameReader, Writer, RAFT};

use super::frame::{decode, encode, FRAME_MAX};

/// Bytes queued for a peer while its link is being (re)connected; calls
/// beyond it fail at once rather than pile up behind a dead peer.
const BACKLOG_MAX: usize = 8 << 20;

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<RaftMessage, String>>>>>;

pub enum CallError {
    TimedOut,
    Broken(String),
}

enum Conn {
    /// Not connected: frames wait here, sent first when it is.
    Connecting(Vec<u8>),
    Up(Arc<Writer>),
}

/// The link to one peer: callers send a request and wait for the reply with
/// its id. A task keeps it connected until the link is dropped.
pub struct Link {
    target: u64,
    waiting: Waiting,
    conn: Arc<Mutex<Conn>>,
    next_id: AtomicU64,
    _stop: oneshot::Sender<()>,
}

impl Link {
    pub fn open(target: u64, addr: String) -> Arc<Link> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let link = Link {
            target,
            waiting: Waiting::default(),
            conn: Arc::new(Mutex::new(Conn::Connecting(Vec::new()))),
            next_id: AtomicU64::new(1),
            _stop: stop_tx,
        };
        let driver = drive(addr, link.waiting.clone(), link.conn.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop_rx => {}
                _ = driver => {}
            }
        });
        Arc::new(link)
    }

    pub async fn call(&self, msg: RaftMessage, timeout: Duration) -> Result<RaftMessage, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let frame = encode(RaftMessage { id, ..msg });
        // Registered before it is sent: the reply may come back at once.
        self.waiting.lock().insert(id, tx);
        let sent = match &mut *self.conn.lock() {
            Conn::Up(w) => w.send(&frame),
            Conn::Connecting(backlog) if backlog.len() + frame.len() <= BACKLOG_MAX => {
                backlog.extend_from_slice(&frame);
                Ok(())
            }
            Conn::Connecting(_) => Err(format!("link to node {} is not connected", self.target)),
        };
        if let Err(e) = sent {
            self.waiting.lock().remove(&id);
            return Err(CallError::Broken(e));
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.waiting.lock().remove(&id);
                Err(CallError::TimedOut)
            }
            Ok(Err(_)) => Err(CallError::Broken(format!("link to node {} broke", self.target))),
            Ok(Ok(Err(e))) => Err(CallError::Broken(e)),
            Ok(Ok(Ok(m))) => Ok(m),
        }
    }
}

/// Longest wait before a broken link is connected again (it starts at 20 ms
/// and doubles): short, or a restarted peer would miss heartbeats for long
/// enough to start an election.
const RELINK_MAX: Duration = Duration::from_millis(200);

/// Keeps a link connected: connects, sends what waited, reads replies until
/// the connection fails, fails whatever waits on it, and starts over.
async fn drive(addr: String, waiting: Waiting, conn: Arc<Mutex<Conn>>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let why = match tessera_proto::link::connect(&addr, RAFT).await {
            Err(e) => e,
            Ok(stream) => {
                backoff = Duration::from_millis(20);
                let writer = Arc::new(Writer::new(stream.clone()));
                let up = {
                    let mut c = conn.lock();
                    let backlog = match &mut *c {
                        Conn::Connecting(b) => std::mem::take(b),
                        Conn::Up(_) => Vec::new(),
                    };
                    let sent = writer.send(&backlog);
                    *c = Conn::Up(writer.clone());
                    sent
                };
                let why = match up {
                    Err(e) => e,
                    Ok(()) => {
                        let mut frames = FrameReader::new(stream, 0, FRAME_MAX);
                        let replies = async {
                            loop {
                                let reply = match frames.next().await {
                                    Ok(f) => decode(f),
                                    Err(why) => return why,
                                };
                                if let Some(tx) = waiting.lock().remove(&reply.id) {
                                    let _ = tx.send(if reply.error.is_empty() { Ok(reply) } else { Err(reply.error) });
                                }
                            }
                        };
                        tokio::select! {
                            why = replies => why,
                            why = writer.flush() => why,
                        }
                    }
                };
                writer.close(&why);
                why
            }
        };
        *conn.lock() = Conn::Connecting(Vec::new());
        // Whatever was sent on it has no answer coming.
        for (_, tx) in waiting.lock().drain() {
            let _ = tx.send(Err(why.clone()));
        }
        tracing::debug!(peer = %addr, reason = %why, "raft link down");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RELINK_MAX);
    }
}

#[cfg(test)]
mod tests;
