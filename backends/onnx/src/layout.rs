//! Where a model's large weights lie in memory: aligned for their element
//! type where they are (each inside one part of the model's bytes), or
//! moved there, in the model's own buffer ([`arrange`]) or in a copy.

use std::ops::Range;

use bytes::Bytes;
use tessera_common::blob::Blob;

use crate::pb::Src;
use crate::weights::{element_size, plan, Initializer, SHARE_MIN_BYTES};

/// Where a moved weight starts: a multiple of this (ORT's own alignment).
pub const ALIGN: usize = 64;

// Moving every weight (each at least SHARE_MIN_BYTES) to a multiple of
// ALIGN fits in the room buffers of model bytes reserve.
const _: () = assert!(ALIGN * 1024 <= SHARE_MIN_BYTES);

/// Where the pieces of a model go when its `inits` (by offset, not
/// overlapping) are moved to multiples of [`ALIGN`] in a buffer at address
/// `base`: each piece (the bytes before a weight, the weight, ..., the
/// bytes after the last) as its range in the model and its new start.
fn pieces(len: usize, inits: &[Initializer], base: usize) -> Vec<(Range<usize>, usize)> {
    let mut out = Vec::with_capacity(2 * inits.len() + 1);
    let (mut at, mut to) = (0, 0);
    for init in inits {
        out.push((at..init.offset, to));
        to += init.offset - at;
        to += (ALIGN - (base + to) % ALIGN) % ALIGN;
        out.push((init.offset..init.offset + init.len, to));
        to += init.len;
        at = init.offset + init.len;
    }
    out.push((at..len, to));
    out
}

/// The end of the last of `pieces` in their new places.
fn laid_out_len(pieces: &[(Range<usize>, usize)]) -> usize {
    pieces.last().map_or(0, |(r, to)| to + r.len())
}

/// `model` copied into one new buffer with each of `inits` at a multiple
/// of [`ALIGN`]: the buffer, and the parts (positions in it) that are
/// `model` in order.
pub(crate) fn lay_out(model: &Src<'_>, inits: &[Initializer]) -> Option<(Bytes, Vec<Range<usize>>)> {
    let capacity = model.len() + ALIGN * inits.len();
    let mut buf = Vec::with_capacity(capacity);
    let base = buf.as_ptr() as usize;
    let pieces = pieces(model.len(), inits, base);
    let mut parts = Vec::with_capacity(pieces.len());
    for (from, to) in pieces {
        buf.resize(to, 0);
        parts.push(to..to + from.len());
        model.copy_to(from, &mut buf)?;
    }
    debug_assert_eq!(buf.as_ptr() as usize, base, "the capacity covers the padding");
    // The vector's memory becomes the buffer's as it is (no reallocation).
    Some((Bytes::from(buf), parts))
}

/// Whether each of `inits` lies aligned for its element type in `model`'s
/// memory, inside one part: where (the part, and the range in it) if all do.
pub(crate) fn in_place(model: &Src<'_>, inits: &[Initializer]) -> Option<Vec<(usize, Range<usize>)>> {
    inits
        .iter()
        .map(|i| {
            let (part, bytes) = model.within(&(i.offset..i.offset + i.len))?;
            let size = element_size(i.data_type).expect("split takes only shareable types");
            let start = bytes.as_ptr() as usize - model.part(part).as_ptr() as usize;
            (bytes.as_ptr() as usize).is_multiple_of(size).then_some((part, start..start + i.len))
        })
        .collect()
}

/// Lays an ONNX model out for [`Shared`] in the memory it lies in: when a
/// large weight lies misaligned for its type and `model`'s capacity has
/// room ([`tessera_common::blob::layout_room`]), every such weight is moved
/// to a multiple of [`ALIGN`] inside the vector (the bytes before it move
/// up with it; nothing is copied elsewhere) and the model comes back as
/// parts that skip the gaps. A model that needs no moving, cannot be laid
/// out, or is no ONNX model comes back as it was, in one part. Either way
/// the blob holds `model`'s bytes, and loading it shares every weight
/// without copying any.
pub fn arrange(mut model: Vec<u8>) -> Blob {
    let Some(inits) = plan(&Src::one(&model), SHARE_MIN_BYTES) else { return model.into() };
    if in_place(&Src::one(&model), &inits).is_some() {
        return model.into();
    }
    let base = model.as_ptr() as usize;
    let pieces = pieces(model.len(), &inits, base);
    let len = laid_out_len(&pieces);
    if len > model.capacity() {
        return model.into();
    }
    model.resize(len, 0);
    debug_assert_eq!(model.as_ptr() as usize, base, "no reallocation within the capacity");
    // Last piece first: each moves up (never down), into space that only
    // pieces after it held, and those have moved already.
    for (from, to) in pieces.iter().rev() {
        model.copy_within(from.clone(), *to);
    }
    let model = Bytes::from(model);
    Blob::from_parts(pieces.iter().map(|(from, to)| model.slice(*to..to + from.len())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::split;

    #[test]
    fn arrange_moves_misaligned_weights_where_they_lie_and_its_parts_parse_as_the_model() {
        use tessera_common::blob::layout_room;
        // Eight 64 KiB tables whose names grow a byte each: most lie
        // misaligned.
        let model = tessera_tests::onnx::embeddings(8, 256, 64);
        let (small, inits) = split(&Src::one(&model), SHARE_MIN_BYTES).expect("8 tables");
        assert_eq!(inits.len(), 8);
        let mut buf = Vec::with_capacity(model.len() + layout_room(model.len()));
        buf.extend_from_slice(&model);
        let at = buf.as_ptr();
        assert!(in_place(&Src::one(&buf), &inits).is_none(), "some table lies misaligned");
        let blob = arrange(buf);
        assert!(blob == model[..], "the same bytes");
        assert_eq!(blob.parts().len(), 2 * 8 + 1);
        assert_eq!(blob.parts()[0].as_ptr(), at, "laid out in the memory it lay in");
        let parts = Src::parts(blob.parts().iter().map(|p| &p[..]));
        assert_eq!(split(&parts, SHARE_MIN_BYTES), Some((small, inits)), "parsed across the parts alike");
        let (_, inits) = split(&parts, SHARE_MIN_BYTES).unwrap();
        let places = in_place(&parts, &inits).expect("every table aligned, each in one part");
        for (part, r) in places {
            assert_eq!((r.start, r.len()), (0, 64 << 10), "a table is a part of its own");
            assert!((blob.parts()[part].as_ptr() as usize).is_multiple_of(ALIGN));
        }
        // Without room, it stays as it was (the load copies it); so do
        // bytes that are no model, and a model with nothing to move.
        let tight = arrange(model.clone());
        assert!(tight.parts().len() == 1 && tight == model[..]);
        assert_eq!(arrange(b"junk".to_vec()), b"junk"[..]);
        let plain = tessera_tests::onnx::add_const(1.0);
        assert_eq!(arrange(plain.clone()).parts().len(), 1);
    }
}
