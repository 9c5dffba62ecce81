//! What `tessera-router` and `tessera-node` share.
//!
//! * [`slot`] — key → hash slot (CRC16/XMODEM with hash tags), slot ranges;
//! * [`command`] — the command table and the parser that turns argv into
//!   typed commands once, plus [`command::NodeCommand`], the router→node form;
//! * [`tensor`] — RedisAI tensors: dtypes, BLOB/VALUES parsing, TENSORGET replies;
//! * [`reply`] — protocol-neutral replies and their RESP2/RESP3 encodings;
//! * [`error`] — every error a command can answer with, with its exact text;
//! * [`acl`] — ACL users: Redis 7's rules, the permission check, descriptions;
//! * [`glob`] — Redis glob patterns for KEYS/SCAN/CONFIG GET;
//! * [`shared`] — decoding large byte fields (model blobs) without a copy;
//! * [`blob`] — a model's bytes, in one buffer or in parts.

#![forbid(unsafe_code)]

pub mod acl;
pub mod blob;
pub mod command;
pub mod error;
pub mod glob;
pub mod model;
pub mod reply;
pub mod shared;
pub mod slot;
pub mod tensor;

pub use error::{Error, Result};
pub use reply::{Protocol, Reply};

/// Appends `v` as a LEB128 varint: postcard's integers and lengths, and
/// protobuf's keys and lengths.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes [`put_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Postcard-encodes `value` into a vector allocated once with `capacity`.
pub(crate) fn encode<T: serde::Serialize>(value: &T, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    encode_into(value, &mut out);
    out
}

/// Postcard-encodes `value` at the end of `out`, with `extend_from_slice`
/// (postcard's own vector output grows it a byte at a time).
pub fn encode_into<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) {
    struct Append<'a>(&'a mut Vec<u8>);
    impl postcard::ser_flavors::Flavor for Append<'_> {
        type Output = ();
        fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
            self.0.extend_from_slice(data);
            Ok(())
        }
        fn try_push(&mut self, data: u8) -> postcard::Result<()> {
            self.0.push(data);
            Ok(())
        }
        fn finalize(self) -> postcard::Result<()> {
            Ok(())
        }
    }
    postcard::serialize_with_flavor(value, Append(out)).expect("serializing into a vector cannot fail")
}
