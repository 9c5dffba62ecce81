//! [`Blob`]: a model's bytes, held as one buffer or as parts.
//!
//! A model arrives as one buffer. A runtime that keeps the model's weights
//! in aligned memory of its own (ONNX, see `tessera-backend-onnx`) hands the
//! node that memory as parts (the bytes between the weights, and each
//! weight) and the node keeps those parts instead of the buffer: the model
//! is then held once. Everything that reads a model's bytes (`AI.MODELGET`,
//! snapshots, checksums) reads them through here, in order.

use std::ops::Range;

use bytes::Bytes;
use serde::de::Deserializer;
use serde::ser::{SerializeSeq, Serializer};

/// Bytes as a sequence of parts; equal to their concatenation.
#[derive(Clone, Default)]
pub struct Blob {
    parts: Vec<Bytes>,
    len: usize,
}

impl Blob {
    /// The concatenation of `parts` (empty ones are dropped).
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Blob {
        let parts: Vec<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let len = parts.iter().map(Bytes::len).sum();
        Blob { parts, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The bytes in one buffer: shared when they are in one part, else a copy.
    pub fn contiguous(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = Vec::with_capacity(self.len);
                many.iter().for_each(|p| out.extend_from_slice(p));
                out.into()
            }
        }
    }

    /// The bytes as a vector of their own, without copying them, when they
    /// are one part that nothing else shares: moved to the front of the
    /// allocation they lie in, whose capacity the vector keeps (room to lay
    /// them out in place, see [`layout_room`]). Else the blob, unchanged.
    pub fn into_vec(self) -> Result<Vec<u8>, Blob> {
        match <[Bytes; 1]>::try_from(self.parts) {
            Ok([one]) => one.try_into_mut().map(Vec::from).map_err(Blob::from),
            Err(parts) if parts.is_empty() => Ok(Vec::new()),
            Err(parts) => Err(Blob { parts, len: self.len }),
        }
    }

    /// The bytes in `range`, sharing the parts (panics out of bounds, as
    /// slicing does).
    pub fn slice(&self, range: Range<usize>) -> Blob {
        assert!(range.start <= range.end && range.end <= self.len, "{range:?} out of 0..{}", self.len);
        let mut parts = Vec::new();
        let mut at = 0;
        for p in &self.parts {
            let (s, e) = (range.start.max(at), range.end.min(at + p.len()));
            if s < e {
                parts.push(p.slice(s - at..e - at));
            }
            at += p.len();
        }
        Blob { parts, len: range.len() }
    }
}

/// Room past a model's `len` bytes with which a runtime can lay them out in
/// place (see `tessera-backend-onnx`'s `weights::arrange`: each weight of at
/// least 64 KiB moved to a 64-byte boundary). Buffers that a model's bytes
/// are assembled in reserve it.
pub fn layout_room(len: usize) -> usize {
    len / 1024 + 64
}

impl From<Bytes> for Blob {
    fn from(b: Bytes) -> Blob {
        Blob::from_parts([b])
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Blob {
        Bytes::from(v).into()
    }
}

impl From<&'static [u8]> for Blob {
    fn from(v: &'static [u8]) -> Blob {
        Bytes::from_static(v).into()
    }
}

impl PartialEq for Blob {
    fn eq(&self, other: &Blob) -> bool {
        if self.len != other.len {
            return false;
        }
        // Walk both part lists, comparing the overlapping runs.
        let (mut a, mut b) = (self.parts.iter(), other.parts.iter());
        let (mut x, mut y): (&[u8], &[u8]) = (&[], &[]);
        loop {
            if x.is_empty() {
                match a.next() {
                    Some(p) => x = p,
                    None => return y.is_empty() && b.next().is_none(),
                }
            }
            if y.is_empty() {
                match b.next() {
                    Some(p) => y = p,
                    None => return false,
                }
            }
            let n = x.len().min(y.len());
            if x[..n] != y[..n] {
                return false;
            }
            (x, y) = (&x[n..], &y[n..]);
        }
    }
}

impl Eq for Blob {}

impl PartialEq<[u8]> for Blob {
    fn eq(&self, other: &[u8]) -> bool {
        *self == Blob::from(Bytes::copy_from_slice(other))
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes in {} parts)", self.len, self.parts.len())
    }
}

/// A byte string. In one part, serde's bytes; in several, a sequence of
/// `u8`, which postcard writes exactly as it writes bytes (a varint length,
/// then the bytes), so the encoding never depends on how a blob is held.
impl serde::Serialize for Blob {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.parts.as_slice() {
            [] => s.serialize_bytes(&[]),
            [one] => s.serialize_bytes(one),
            many => {
                let mut seq = s.serialize_seq(Some(self.len))?;
                for b in many.iter().flat_map(|p| p.iter()) {
                    seq.serialize_element(b)?;
                }
                seq.end()
            }
        }
    }
}

/// Decoded as one part: inside a [`crate::shared::scope`] a slice of the
/// scope's buffer, else a copy.
impl<'de> serde::Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blob, D::Error> {
        crate::shared::bytes(d).map(Blob::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(v: &[&'static [u8]]) -> Blob {
        Blob::from_parts(v.iter().map(|p| Bytes::from_static(p)))
    }

    #[test]
    fn equality_is_by_content_whatever_the_parts() {
        let one = Blob::from(&b"abcdef"[..]);
        assert_eq!(one, parts(&[b"ab", b"", b"cde", b"f"]));
        assert_eq!(parts(&[b"a", b"bcdef"]), parts(&[b"abcd", b"ef"]));
        assert_ne!(one, parts(&[b"ab", b"cdx", b"f"]));
        assert_ne!(one, parts(&[b"abcde"]));
        assert_eq!(Blob::default(), parts(&[b""]));
        assert_eq!(parts(&[b"ab", b"c"]), b"abc"[..]);
    }

    #[test]
    fn slices_and_the_contiguous_form() {
        let b = parts(&[b"ab", b"cde", b"f"]);
        assert_eq!(b.len(), 6);
        assert_eq!(b.slice(1..5), b"bcde"[..]);
        assert_eq!(b.slice(1..5).parts().len(), 2);
        assert_eq!(b.slice(2..5).parts().len(), 1, "inside one part");
        assert!(b.slice(3..3).is_empty());
        assert_eq!(&b.contiguous()[..], b"abcdef");
        let single = Bytes::from_static(b"xyz");
        assert_eq!(Blob::from(single.clone()).contiguous().as_ptr(), single.as_ptr(), "one part is not copied");
    }

    #[test]
    fn a_lone_unshared_part_becomes_a_vector_without_a_copy() {
        let mut v = Vec::with_capacity(100);
        v.extend_from_slice(b"headerMODEL");
        let (at, cap) = (v.as_ptr(), v.capacity());
        let whole = Bytes::from(v);
        let model = Blob::from(whole.slice(6..));
        let shared = model.clone();
        let model = model.into_vec().expect_err("shared twice");
        drop(shared);
        let model = model.into_vec().expect_err("the whole buffer is still held");
        drop(whole);
        let v = model.into_vec().expect("the slice is all that is left");
        assert_eq!((&v[..], v.as_ptr(), v.capacity()), (&b"MODEL"[..], at, cap), "moved to the front, in place");
        assert!(parts(&[b"ab", b"c"]).into_vec().is_err(), "parts are never joined here");
        assert_eq!(Blob::default().into_vec().unwrap(), b"");
    }

    #[test]
    fn encodes_as_the_bytes_it_holds() {
        let whole: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let split = Blob::from_parts([
            Bytes::copy_from_slice(&whole[..10]),
            Bytes::copy_from_slice(&whole[10..700]),
            Bytes::copy_from_slice(&whole[700..]),
        ]);
        let a = postcard::to_stdvec(&Blob::from(whole.clone())).unwrap();
        let b = postcard::to_stdvec(&split).unwrap();
        assert_eq!(a, b);
        assert_eq!(postcard::experimental::serialized_size(&split).unwrap(), a.len());
        let back: Blob = postcard::from_bytes(&b).unwrap();
        assert_eq!(back, split);
        assert_eq!(back.parts().len(), 1);
    }
}
