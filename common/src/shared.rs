//! Decoding large byte fields without copying them.
//!
//! serde's `Bytes` support copies every byte field out of the input. For a
//! model blob that is a second copy of a value that can be hundreds of MB,
//! made while the first (the request, or the reassembled log entry) is still
//! alive. Inside [`scope`], a field marked
//! `#[serde(deserialize_with = "crate::shared::bytes")]` becomes a slice of
//! the scope's source buffer instead, when it lies inside it and is at least
//! half of it, so a small field never keeps a large buffer alive.

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::{Deserializer, Error, SeqAccess, Visitor};

thread_local! {
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `f` (which decodes from `src`'s memory) with `src` as the buffer
/// that marked fields may share. Scopes nest; the innermost one counts.
pub fn scope<R>(src: &Bytes, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Bytes>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SOURCE.with(|s| *s.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(SOURCE.with(|s| s.borrow_mut().replace(src.clone())));
    f()
}

/// Postcard-decodes `T` from `src`, sharing its memory for marked fields.
pub fn decode<T: for<'de> serde::Deserialize<'de>>(src: &Bytes) -> Result<T, postcard::Error> {
    scope(src, || postcard::from_bytes(src))
}

/// `v` as a slice of the scope's source if it lies inside it and is at
/// least half of it; else a copy.
fn share(v: &[u8]) -> Bytes {
    SOURCE.with(|s| match &*s.borrow() {
        Some(src) if inside(src, v) && v.len() >= src.len() / 2 && !v.is_empty() => src.slice_ref(v),
        _ => Bytes::copy_from_slice(v),
    })
}

fn inside(src: &[u8], v: &[u8]) -> bool {
    let (s, e) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
    let (vs, ve) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
    vs >= s && ve <= e
}

/// `deserialize_with` for a `Bytes` field: shared with the scope's source
/// where the format lends its input (postcard does), else copied.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(share(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out.into())
        }
    }
    d.deserialize_bytes(V)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Doc {
        small: Bytes,
        #[serde(deserialize_with = "bytes")]
        big: Bytes,
        #[serde(deserialize_with = "bytes")]
        tiny: Bytes,
    }

    #[test]
    fn large_fields_share_the_source_and_small_ones_are_copied() {
        let doc =
            Doc { small: Bytes::from_static(b"ab"), big: Bytes::from(vec![7u8; 1000]), tiny: Bytes::from_static(b"x") };
        let src = Bytes::from(postcard::to_stdvec(&doc).unwrap());
        let back: Doc = decode(&src).unwrap();
        assert_eq!(back, doc);
        let range = src.as_ptr() as usize..src.as_ptr() as usize + src.len();
        assert!(range.contains(&(back.big.as_ptr() as usize)), "the big field is a slice of the source");
        assert!(!range.contains(&(back.tiny.as_ptr() as usize)), "a small field is copied");
        // Outside a scope (or from another buffer) everything is copied.
        let plain: Doc = postcard::from_bytes(&src).unwrap();
        assert!(!range.contains(&(plain.big.as_ptr() as usize)));
        assert_eq!(plain, doc);
    }

    #[test]
    fn scopes_nest_and_restore() {
        let a = Bytes::from_static(b"a");
        let b = Bytes::from_static(b"b");
        scope(&a, || {
            scope(&b, || SOURCE.with(|s| assert_eq!(s.borrow().as_deref(), Some(&b"b"[..]))));
            SOURCE.with(|s| assert_eq!(s.borrow().as_deref(), Some(&b"a"[..])));
        });
        SOURCE.with(|s| assert!(s.borrow().is_none()));
    }
}
