//! The response side of a session: every response ready at poll time in
//! one batch, long replies in parts between them.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tessera_proto::parts::Outgoing;
use tessera_proto::v1::{response, ResponseBatch};
use tokio::sync::mpsc;

use tracing::debug;

use super::lane::Out;

/// Batches every response ready at poll time into one message. Long
/// replies go in parts (see [`tessera_proto::parts`]), one reply after
/// another, with the short replies ready by then between their parts.
pub(super) struct ResponseStream {
    rx: mpsc::Receiver<Out>,
    /// Whether `rx` has closed (every lane and the reader are gone).
    closed: bool,
    /// Long replies going out in parts, one after another.
    longs: VecDeque<Outgoing<()>>,
    /// Whether the last message was a part: replies ready since then go
    /// before the next part, so a long reply (a model's bytes) holds up the
    /// session's other replies by a part at most, not by all of itself.
    part_last: bool,
    _guard: SessionGuard,
}

impl ResponseStream {
    pub(super) fn new(rx: mpsc::Receiver<Out>, peer: Option<std::net::SocketAddr>) -> Self {
        ResponseStream { rx, closed: false, longs: VecDeque::new(), part_last: false, _guard: SessionGuard { peer } }
    }

    /// The next part of the long reply in front, alone in a message.
    fn next_part(&mut self) -> Option<ResponseBatch> {
        let out = self.longs.front_mut()?;
        let (part, last) = out.next_part();
        let r = tessera_proto::v1::Response {
            id: out.id,
            result: Some(response::Result::Reply(part)),
            total_len: out.total,
        };
        if last {
            self.longs.pop_front();
        }
        Some(ResponseBatch { responses: vec![r] })
    }

    /// Every short reply ready now, in one message (long ones join
    /// `longs`); `None` when none is.
    fn ready_replies(&mut self, cx: &mut Context<'_>) -> Option<ResponseBatch> {
        let mut responses = Vec::new();
        // At most about a part's worth of bytes per message, so the
        // router's receive buffer stays that small too.
        let mut bytes = 0;
        // (With a few long replies waiting, the lanes wait too.)
        while !self.closed && responses.len() < 1024 && bytes < tessera_proto::parts::PART_BYTES && self.longs.len() < 4
        {
            let r = match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Out::One(r))) => r,
                Poll::Ready(Some(Out::Long { id, pieces })) => {
                    self.longs.push_back(Outgoing::from_pieces(id, (), pieces));
                    continue;
                }
                Poll::Ready(None) => {
                    self.closed = true;
                    break;
                }
                Poll::Pending => break,
            };
            match r.result {
                Some(response::Result::Reply(b)) if b.len() > tessera_proto::parts::PART_BYTES => {
                    self.longs.extend(Outgoing::new(r.id, (), b).ok());
                    continue;
                }
                Some(response::Result::Reply(ref b)) => bytes += b.len(),
                _ => {}
            }
            responses.push(r);
        }
        (!responses.is_empty()).then_some(ResponseBatch { responses })
    }
}

impl Stream for ResponseStream {
    type Item = ResponseBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.part_last || this.longs.is_empty() {
            if let Some(batch) = this.ready_replies(cx) {
                this.part_last = false;
                return Poll::Ready(Some(batch));
            }
        }
        if let Some(part) = this.next_part() {
            this.part_last = true;
            return Poll::Ready(Some(part));
        }
        // Nothing long to send, and no reply ready: `rx` has the waker.
        match this.closed {
            true => Poll::Ready(None),
            false => Poll::Pending,
        }
    }
}

/// Counts open sessions while it lives.
struct SessionGuard {
    peer: Option<std::net::SocketAddr>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics::gauge!("tessera_node_sessions").decrement(1.0);
        debug!(peer = ?self.peer, "session closed");
    }
}
