//! A minimal protobuf reader and writer: enough to walk an ONNX model's
//! messages (onnx.proto) and copy every other field through untouched.
//! Offsets are kept relative to the whole model, which may lie in parts.

use std::borrow::Cow;
use std::ops::Range;

/// Nesting this deep is malformed. Deeper than protobuf's own limit (100,
/// counting messages a walk does not enter): whatever ONNX Runtime's parser
/// takes, a walk looks into.
pub const MAX_DEPTH: usize = 400;

/// A model's bytes as the reader sees them: one slice, or parts in order
/// (a model laid out for its runtime, see `weights::arrange`). Positions
/// are offsets in the whole model.
pub struct Src<'a> {
    parts: Vec<&'a [u8]>,
    /// Where each part starts in the whole.
    starts: Vec<usize>,
    len: usize,
}

impl<'a> Src<'a> {
    pub fn one(model: &'a [u8]) -> Src<'a> {
        Src::parts([model])
    }

    /// A blob's bytes, in its parts.
    pub fn of(blob: &'a tessera_common::blob::Blob) -> Src<'a> {
        Src::parts(blob.parts().iter().map(|p| &p[..]))
    }

    pub fn parts(parts: impl IntoIterator<Item = &'a [u8]>) -> Src<'a> {
        let (mut src, mut len) = (Src { parts: Vec::new(), starts: Vec::new(), len: 0 }, 0);
        for p in parts.into_iter().filter(|p| !p.is_empty()) {
            src.parts.push(p);
            src.starts.push(len);
            len += p.len();
        }
        src.len = len;
        src
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `pos` lies in, and `pos` within it.
    fn locate(&self, pos: usize) -> Option<(usize, usize)> {
        if pos >= self.len {
            return None;
        }
        let i = self.starts.partition_point(|s| *s <= pos) - 1;
        Some((i, pos - self.starts[i]))
    }

    fn byte(&self, pos: usize) -> Option<u8> {
        match self.parts.as_slice() {
            [one] => one.get(pos).copied(),
            _ => self.locate(pos).map(|(i, at)| self.parts[i][at]),
        }
    }

    /// Part `i` (parts are numbered without the empty ones).
    pub fn part(&self, i: usize) -> &'a [u8] {
        self.parts[i]
    }

    /// The bytes of `r` when they lie in one part (which, and where in it).
    pub fn within(&self, r: &Range<usize>) -> Option<(usize, &'a [u8])> {
        if r.is_empty() {
            return (r.start <= self.len).then_some((0, &[]));
        }
        let (i, at) = self.locate(r.start)?;
        self.parts[i].get(at..at + r.len()).map(|b| (i, b))
    }

    /// The bytes of `r`: borrowed when they lie in one part, else joined.
    pub fn get(&self, r: Range<usize>) -> Option<Cow<'a, [u8]>> {
        if let Some((_, b)) = self.within(&r) {
            return Some(Cow::Borrowed(b));
        }
        let mut out = Vec::with_capacity(r.len());
        self.copy_to(r, &mut out)?;
        Some(Cow::Owned(out))
    }

    /// Appends the bytes of `r` to `out`.
    pub fn copy_to(&self, r: Range<usize>, out: &mut Vec<u8>) -> Option<()> {
        if r.start > r.end || r.end > self.len {
            return None;
        }
        for (p, start) in self.parts.iter().zip(&self.starts) {
            let (s, e) = (r.start.max(*start), r.end.min(start + p.len()));
            if s < e {
                out.extend_from_slice(&p[s - start..e - start]);
            }
        }
        Some(())
    }
}

pub enum Value {
    Varint(u64),
    /// Where a length-delimited payload lies in the whole model.
    Bytes(Range<usize>),
    /// A fixed-size value or a group: skipped.
    Fixed,
}

pub struct Field {
    pub number: u64,
    pub value: Value,
    /// The whole field (key included), as offsets in the whole model.
    pub span: Range<usize>,
}

/// Reads the fields of the message at `pos..end` of a [`Src`].
pub struct Reader<'s, 'a> {
    src: &'s Src<'a>,
    pub pos: usize,
    pub end: usize,
}

impl<'s, 'a> Reader<'s, 'a> {
    /// A reader of the message in `r` (which must lie in `src`).
    pub fn new(src: &'s Src<'a>, r: Range<usize>) -> Self {
        Reader { src, pos: r.start, end: r.end.min(src.len()) }
    }

    fn byte(&mut self) -> Option<u8> {
        if self.pos >= self.end {
            return None;
        }
        let b = self.src.byte(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A field's key as protobuf reads it: at most 5 bytes, kept to 32 bits
    /// (a longer encoding of field 7 is field 7 to ONNX Runtime, so it is
    /// here too); field 0 is malformed.
    fn key(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..5 {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let key = v & u64::from(u32::MAX);
                return (key >> 3 != 0).then_some(key);
            }
        }
        None
    }

    /// The next field; `Some(None)` at the end, `None` on malformed input.
    pub fn next(&mut self) -> Option<Option<Field>> {
        if self.pos >= self.end {
            return Some(None);
        }
        let start = self.pos;
        let key = self.key()?;
        let value = self.value(key, 0)?;
        Some(Some(Field { number: key >> 3, value, span: start..self.pos }))
    }

    /// The value after `key`; `None` for an end of group with no start, or
    /// no wire type.
    fn value(&mut self, key: u64, depth: usize) -> Option<Value> {
        Some(match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                self.pos = self.pos.checked_add(n).filter(|p| *p <= self.end)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let at = self.pos;
                self.pos = at.checked_add(len).filter(|p| *p <= self.end)?;
                Value::Bytes(at..self.pos)
            }
            // A group (unused by onnx.proto, but a parser skips one it does
            // not know, so this one does too).
            3 => {
                self.skip_group(key >> 3, depth)?;
                Value::Fixed
            }
            _ => return None,
        })
    }

    /// Skips the fields of a group up to its end (the start's key read).
    fn skip_group(&mut self, number: u64, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        loop {
            let key = self.key()?;
            if key & 7 == 4 {
                return (key >> 3 == number).then_some(());
            }
            self.value(key, depth + 1)?;
        }
    }
}

pub use tessera_common::{put_varint, varint_len};

pub fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_in_parts_reads_as_it_does_whole() {
        // Field 1: a 300-byte payload (its length a 2-byte varint); field
        // 2: the varint 150.
        let mut whole = Vec::new();
        put_bytes(&mut whole, 1, &[7u8; 300]);
        put_varint(&mut whole, 2 << 3);
        put_varint(&mut whole, 150);
        // Cut inside the first key's length, inside the payload, and inside
        // the last varint.
        let parts = [&whole[..2], &whole[2..100], &whole[100..whole.len() - 1], &whole[whole.len() - 1..]];
        for src in [Src::one(&whole), Src::parts(parts.iter().copied().chain([&[][..]]))] {
            let mut r = Reader::new(&src, 0..src.len());
            let f = r.next().unwrap().unwrap();
            let Value::Bytes(payload) = f.value else { panic!("field 1 is bytes") };
            assert_eq!((f.number, payload.clone(), f.span), (1, 3..303, 0..303));
            assert_eq!(src.get(payload.clone()).unwrap(), &[7u8; 300][..]);
            let f = r.next().unwrap().unwrap();
            assert!(matches!((f.number, f.value), (2, Value::Varint(150))));
            assert!(r.next().unwrap().is_none());
            let mut copy = Vec::new();
            src.copy_to(0..src.len(), &mut copy).unwrap();
            assert_eq!(copy, whole);
            assert!(src.copy_to(0..src.len() + 1, &mut copy).is_none());
        }
        let src = Src::parts(parts);
        assert!(matches!(src.get(10..20), Some(Cow::Borrowed(_))), "inside one part: borrowed");
        assert!(matches!(src.get(50..150), Some(Cow::Owned(_))), "across parts: joined");
        assert_eq!(src.within(&(2..100)).map(|(i, b)| (i, b.len())), Some((1, 98)));
        assert!(src.within(&(2..101)).is_none());
        // A payload longer than its message is malformed.
        let mut r = Reader::new(&src, 0..200);
        assert!(r.next().is_none());
    }
}
