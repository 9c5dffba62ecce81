//! A minimal protobuf reader and writer: enough to walk an ONNX model's
//! messages (onnx.proto) and copy every other field through untouched.
//! Offsets are kept relative to the whole model.

/// Nesting this deep is malformed. Deeper than protobuf's own limit (100,
/// counting messages a walk does not enter): whatever ONNX Runtime's parser
/// takes, a walk looks into.
pub const MAX_DEPTH: usize = 400;

pub enum Value<'a> {
    Varint(u64),
    /// A length-delimited payload and its offset in the whole model.
    Bytes(&'a [u8], usize),
    /// A fixed-size value or a group: skipped.
    Fixed,
}

pub struct Field<'a> {
    pub number: u64,
    pub value: Value<'a>,
    /// The whole field (key included), as offsets in the whole model.
    pub span: (usize, usize),
}

pub struct Reader<'a> {
    buf: &'a [u8],
    pub pos: usize,
    /// Offset of `buf` in the whole model.
    base: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
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
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                let key = v & u64::from(u32::MAX);
                return (key >> 3 != 0).then_some(key);
            }
        }
        None
    }

    /// The next field; `Some(None)` at the end, `None` on malformed input.
    pub fn next(&mut self) -> Option<Option<Field<'a>>> {
        if self.pos == self.buf.len() {
            return Some(None);
        }
        let start = self.pos;
        let key = self.key()?;
        let value = self.value(key, 0)?;
        Some(Some(Field { number: key >> 3, value, span: (self.base + start, self.base + self.pos) }))
    }

    /// The value after `key`; `None` for an end of group with no start, or
    /// no wire type.
    fn value(&mut self, key: u64, depth: usize) -> Option<Value<'a>> {
        Some(match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                self.pos = self.pos.checked_add(n).filter(|p| *p <= self.buf.len())?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let at = self.pos;
                self.pos = at.checked_add(len).filter(|p| *p <= self.buf.len())?;
                Value::Bytes(&self.buf[at..self.pos], self.base + at)
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

pub fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

pub use tessera_common::put_varint;

pub fn put_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}
