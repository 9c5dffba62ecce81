//! A Raft message as a link frame: the frame's id, group and kind are the
//! message's.

use tessera_proto::link::{encode_frame, Frame};
use tessera_proto::v1::RaftMessage;

/// Largest frame accepted: messages above `STREAM_MAX_BYTES` never take a
/// link, so anything much larger is a broken or foreign peer.
pub(super) const FRAME_MAX: usize = 4 << 20;

/// `m` as a frame's bytes.
pub(super) fn encode(m: RaftMessage) -> Vec<u8> {
    encode_frame(&Frame {
        id: m.id,
        group: m.group,
        kind: m.kind.clamp(0, 255) as u8,
        payload: m.payload,
        error: m.error,
    })
}

pub(super) fn decode(f: Frame) -> RaftMessage {
    RaftMessage { group: f.group, kind: f.kind as i32, payload: f.payload, id: f.id, error: f.error }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn msg(id: u64, group: u32, payload: &[u8]) -> RaftMessage {
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
