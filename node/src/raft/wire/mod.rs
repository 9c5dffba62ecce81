//! The Raft network's link for small messages: one plain TCP connection per
//! ordered pair of nodes (a [`tessera_proto::link`] with the
//! [`tessera_proto::link::RAFT`] magic), carrying frames both ways, shared
//! by every group the two nodes host together. A frame's group and kind are
//! the Raft message's.
//!
//! Messages too large for it go as unary `RaftTransport.Call`s, each on its
//! own HTTP/2 stream (see [`super::network`]).
//!
//! This module has the serving end ([`serve`]); [`link`] is the calling end.

use std::sync::Arc;

use tessera_proto::link::{tune, Conn, FrameReader, Writer, RAFT};
use tessera_proto::v1::RaftMessage;

mod frame;
pub mod link;

use frame::{decode, encode, FRAME_MAX};
pub use link::{CallError, Link};

/// Serves one incoming link (the first `skip` bytes its magic, still
/// unread; none over TLS, where it was read to accept the link): each
/// request is handled at once by `handle` on a task of its own (a slow
/// group never holds up another) and its reply written as soon as it is
/// ready.
pub async fn serve<H, F>(stream: Conn, skip: usize, handle: H)
where
    H: Fn(RaftMessage) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = RaftMessage> + Send + 'static,
{
    tune(&stream.stream, RAFT);
    let writer = Arc::new(Writer::new(stream.clone()));
    if let Err(e) = writer.send(RAFT) {
        tracing::debug!(error = %e, "raft link closed before its handshake");
        return;
    }
    let handle = Arc::new(handle);
    let mut frames = FrameReader::new(stream, skip, FRAME_MAX);
    let read = async {
        loop {
            let m = match frames.next().await {
                Ok(f) => decode(f),
                Err(why) => return why,
            };
            let (handle, writer) = (handle.clone(), writer.clone());
            tokio::spawn(async move {
                let reply = handle(m).await;
                let _ = writer.send(&encode(reply));
            });
        }
    };
    let why = tokio::select! {
        why = read => why,
        why = writer.flush() => why,
    };
    writer.close(&why);
    tracing::debug!(reason = %why, "raft link from a peer closed");
}
