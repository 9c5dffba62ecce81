//! The Raft network's link for small messages: one plain TCP connection per
//! ordered pair of nodes (a [`tessera_proto::link`] with the
//! [`tessera_proto::link::RAFT`] magic), carrying frames both ways, shared
//! by every group the two nodes host together. A frame's group and kind are
//! the Raft message's.
//!
//! It replaces an HTTP/2 stream (`RaftTransport.Stream`, still served for
//! nodes of the previous release): see [`tessera_proto::link`] for why. A
//! node of the previous release answers the magic otherwise, and the link
//! then reports [`Handshake::Legacy`]: its messages go as unary `Call`s
//! instead.
//!
//! This module has the serving end ([`serve`]); [`link`] is the calling end.

use std::sync::Arc;

use tessera_proto::link::{encode_frame, tune, Frame, FrameReader, Writer, RAFT};
use tessera_proto::v1::RaftMessage;
use tokio::net::TcpStream;

pub mod link;

pub use link::{CallError, Handshake, Link};

/// Largest frame accepted: messages above `STREAM_MAX_BYTES` never take a
/// link, so anything much larger is a broken or foreign peer.
const FRAME_MAX: usize = 4 << 20;

/// `m` as a frame's bytes.
fn encode(m: RaftMessage) -> Vec<u8> {
    encode_frame(&Frame {
        id: m.id,
        group: m.group,
        kind: m.kind.clamp(0, 255) as u8,
        payload: m.payload,
        error: m.error,
    })
}

fn decode(f: Frame) -> RaftMessage {
    RaftMessage { group: f.group, kind: f.kind as i32, payload: f.payload, id: f.id, error: f.error }
}

/// Serves one incoming link (its magic still unread): each request is
/// handled at once by `handle` on a task of its own (a slow group never
/// holds up another) and its reply written as soon as it is ready.
pub async fn serve<H, F>(stream: TcpStream, handle: H)
where
    H: Fn(RaftMessage) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = RaftMessage> + Send + 'static,
{
    tune(&stream, RAFT);
    let stream = Arc::new(stream);
    let writer = Arc::new(Writer::new(stream.clone()));
    if let Err(e) = writer.send(RAFT) {
        tracing::debug!(error = %e, "raft link closed before its handshake");
        return;
    }
    let handle = Arc::new(handle);
    let mut frames = FrameReader::new(stream, RAFT.len(), FRAME_MAX);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(super) fn msg(id: u64, group: u32, payload: &[u8]) -> RaftMessage {
        RaftMessage { id, group, kind: 1, payload: payload.to_vec().into(), error: String::new() }
    }

    #[test]
    fn a_raft_message_survives_its_frame() {
        let m = RaftMessage { id: 9, group: 1, kind: 2, payload: Default::default(), error: "no such group".into() };
        let mut buf = bytes::BytesMut::from(&encode(m.clone())[..]);
        let f = tessera_proto::link::decode_frame(&mut buf, FRAME_MAX).unwrap().unwrap();
        assert_eq!(decode(f), m);
        let m = msg(u64::MAX, u32::MAX, b"payload");
        let mut buf = bytes::BytesMut::from(&encode(m.clone())[..]);
        assert_eq!(decode(tessera_proto::link::decode_frame(&mut buf, FRAME_MAX).unwrap().unwrap()), m);
    }
}
