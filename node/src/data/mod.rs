//! The data a shard replica holds: its keyspace (tensors and models, with
//! expiry) and the dump a snapshot is made of.

pub mod keyspace;

/// Bytes to be written as pieces (a snapshot file): small ones gathered
/// into buffers, large shared ones kept as they are, so that writing a
/// shard's models copies none of them into memory first.
#[derive(Default)]
pub struct Pieces {
    done: Vec<bytes::Bytes>,
    small: Vec<u8>,
    len: usize,
}

/// Shared bytes at least this long become pieces of their own.
const SHARED_PIECE_BYTES: usize = 64 << 10;

impl Pieces {
    /// Appends a copy of `b`.
    pub fn extend(&mut self, b: &[u8]) {
        self.small.extend_from_slice(b);
        self.len += b.len();
    }

    /// Appends `b`, shared when it is large.
    pub fn share(&mut self, b: &bytes::Bytes) {
        if b.len() < SHARED_PIECE_BYTES {
            return self.extend(b);
        }
        if !self.small.is_empty() {
            self.done.push(std::mem::take(&mut self.small).into());
        }
        self.done.push(b.clone());
        self.len += b.len();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish(mut self) -> Vec<bytes::Bytes> {
        if !self.small.is_empty() {
            self.done.push(self.small.into());
        }
        self.done
    }
}
