//! Large weights shared with the node's copy of the model bytes.
//!
//! Built from bytes, an ONNX Runtime session parses the model (a copy of
//! every weight) and then copies each weight again into its own tensors: a
//! model costs 2× its size while it loads and 1× for as long as it is loaded,
//! on top of the bytes the node keeps for `AI.MODELGET`, snapshots and
//! reloads. Instead, [`split`] rewrites the model without the bytes of its
//! large initializers, and the session gets each of them as a tensor over the
//! node's own bytes (ORT's `AddInitializer`, which uses the value it is given
//! and copies nothing on the CPU). When a weight's bytes are not aligned for
//! its element type (most of a real model's are not: they lie wherever the
//! protobuf put them), the whole model is copied once into a buffer laid
//! out with every weight aligned, and that copy is offered to the node in
//! place of its bytes ([`Shared::laid_out`]): the model is still held once.
//!
//! The rewritten initializers are marked as external data at location `.`
//! (a directory): ORT checks that the location exists but never reads it,
//! because the given tensor takes its place; were one ever read, the read
//! would fail ("Random-access reads require a regular file"), never yield
//! wrong weights.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::CString;
use std::ops::Range;
use std::ptr::{self, NonNull};

use bytes::Bytes;
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;
use ort::sys::{ONNXTensorElementDataType as Elem, OrtStatusPtr, OrtValue};
use ort::AsPointer;
use tessera_common::blob::Blob;

pub use crate::layout::{arrange, ALIGN};
use crate::layout::{in_place, lay_out};
pub use crate::pb::Src;
use crate::pb::{put_bytes, put_varint, varint_len, Reader, Value, MAX_DEPTH};

/// Initializers with fewer raw bytes stay in the model (sharing them would
/// save nothing worth a tensor each).
pub const SHARE_MIN_BYTES: usize = 64 << 10;

/// The external-data location of a shared initializer, resolved against
/// [`FOLDER`]: it exists (ORT checks) and is no regular file.
pub const LOCATION: &str = ".";
pub const FOLDER: &str = "/";

/// One initializer taken out of the model.
#[derive(Debug, PartialEq)]
pub struct Initializer {
    pub name: String,
    /// ONNX `TensorProto.DataType` (ORT's element types use the same numbers).
    pub data_type: i32,
    pub dims: Vec<i64>,
    /// Where its raw bytes are in the model.
    pub offset: usize,
    pub len: usize,
}

/// Whether any tensor anywhere in `model` (initializers, constants,
/// subgraphs, functions) points at an external data file. Such a model
/// would have ONNX Runtime read files of the node's file system; the node
/// refuses it. `false` for bytes that do not parse (ORT reports those).
pub fn references_external_data(model: &Src<'_>) -> bool {
    let mut external = false;
    let _ = walk_model(model, &mut |seen| {
        if let Seen::Tensor(t, _) = seen {
            external |= t.external;
        }
    });
    external
}

/// `model` without the raw bytes of its top-level initializers of at least
/// `min_bytes`, and those initializers (by offset); `None` when there is
/// nothing to take out or the bytes do not parse as the protobuf an ONNX
/// model is (ORT then gets the model as it came, and reports what is wrong
/// with it). A name that more than one tensor of the model uses (a
/// subgraph's own, say) is never taken: ORT gives a shared tensor to every
/// initializer of its name.
pub fn split(model: &Src<'_>, min_bytes: usize) -> Option<(Vec<u8>, Vec<Initializer>)> {
    let taken = plan(model, min_bytes)?;
    // The new bytes of each taken tensor, by the span of its field.
    let mut rewritten: Vec<(Range<usize>, Vec<u8>)> = Vec::new();
    let mut r = Reader::new(model, 0..model.len());
    while let Some(f) = r.next()? {
        if let (7, Value::Bytes(graph)) = (f.number, f.value) {
            let mut r = Reader::new(model, graph);
            while let Some(f) = r.next()? {
                if let (5, Value::Bytes(tensor)) = (f.number, f.value) {
                    if let Some((offset, _)) = tensor_info(model, tensor.clone())?.raw {
                        if taken.binary_search_by_key(&offset, |t| t.offset).is_ok() {
                            rewritten.push((f.span, external_tensor(model, tensor)?));
                        }
                    }
                }
            }
        }
    }
    let field_len = |len: usize| varint_len((5 << 3) | 2) + varint_len(len as u64) + len;
    let saved: usize = rewritten.iter().map(|(span, new)| span.len() - field_len(new.len())).sum();
    let mut out = Vec::with_capacity(model.len() - saved + 16);
    let mut r = Reader::new(model, 0..model.len());
    while let Some(f) = r.next()? {
        let (7, Value::Bytes(graph)) = (f.number, &f.value) else {
            model.copy_to(f.span, &mut out)?;
            continue;
        };
        let inside = |span: &Range<usize>| span.start >= graph.start && span.end <= graph.end;
        let changes: Vec<_> = rewritten.iter().filter(|(span, _)| inside(span)).collect();
        let graph_len =
            graph.len() - changes.iter().map(|(span, new)| span.len() - field_len(new.len())).sum::<usize>();
        put_varint(&mut out, (7 << 3) | 2);
        put_varint(&mut out, graph_len as u64);
        let mut pos = graph.start;
        for (span, new) in changes {
            model.copy_to(pos..span.start, &mut out)?;
            put_bytes(&mut out, 5, new);
            pos = span.end;
        }
        model.copy_to(pos..graph.end, &mut out)?;
    }
    Some((out, taken))
}

/// The initializers [`split`] takes out of `model`, by offset, without
/// rewriting it; `None` when there are none.
pub(crate) fn plan(model: &Src<'_>, min_bytes: usize) -> Option<Vec<Initializer>> {
    if cfg!(target_endian = "big") {
        return None; // raw_data is little-endian; ORT swaps it when it copies
    }
    let mut taken = Vec::new();
    let mut names: HashMap<Cow<'_, [u8]>, usize> = HashMap::new();
    let mut external = false;
    walk_model(model, &mut |seen| match seen {
        Seen::Tensor(t, top) => {
            external |= t.external;
            if top {
                taken.extend(shareable(&t, min_bytes));
            }
            if let Some(name) = t.name {
                *names.entry(name).or_default() += 1;
            }
        }
        // A node's output of the same name (a subgraph's Constant, say)
        // would become one more initializer of that name inside ORT.
        Seen::Output(name) => *names.entry(name).or_default() += 1,
    })?;
    taken.retain(|t| names.get(t.name.as_bytes()) == Some(&1));
    if external || taken.is_empty() {
        return None;
    }
    taken.sort_by_key(|t| t.offset);
    Some(taken)
}

/// What a `TensorProto` says of itself (offsets in the whole model).
struct TensorInfo<'a> {
    name: Option<Cow<'a, [u8]>>,
    data_type: i32,
    dims: Vec<i64>,
    /// Offset and length of its raw_data.
    raw: Option<(usize, usize)>,
    external: bool,
}

fn tensor_info<'a>(model: &Src<'a>, tensor: Range<usize>) -> Option<TensorInfo<'a>> {
    let mut t = TensorInfo { name: None, data_type: 0, dims: Vec::new(), raw: None, external: false };
    let mut r = Reader::new(model, tensor);
    while let Some(f) = r.next()? {
        match (f.number, f.value) {
            (1, Value::Varint(d)) => t.dims.push(d as i64),
            (1, Value::Bytes(packed)) => {
                let mut p = Reader::new(model, packed);
                while p.pos < p.end {
                    t.dims.push(p.varint()? as i64);
                }
            }
            (2, Value::Varint(v)) => t.data_type = v as i32,
            (8, Value::Bytes(n)) => t.name = Some(model.get(n)?),
            (9, Value::Bytes(b)) => t.raw = Some((b.start, b.len())),
            // protobuf reads the enum as an int32; any value but DEFAULT (0)
            // is taken as EXTERNAL (1) here, whatever ORT would make of it.
            (14, Value::Varint(v)) if v as u32 != 0 => t.external = true,
            (13, _) => t.external = true,
            _ => {}
        }
    }
    Some(t)
}

/// A top-level initializer worth sharing: raw bytes of a numeric type,
/// exactly as many as its shape says (anything else is left for ORT).
fn shareable(t: &TensorInfo<'_>, min_bytes: usize) -> Option<Initializer> {
    let (name, (offset, len)) = (std::str::from_utf8(t.name.as_deref()?).ok()?, t.raw?);
    let size = element_size(t.data_type)?;
    let count = t.dims.iter().try_fold(1usize, |n, d| usize::try_from(*d).ok().and_then(|d| n.checked_mul(d)));
    if t.external || len < min_bytes || count.and_then(|c| c.checked_mul(size)) != Some(len) {
        return None;
    }
    Some(Initializer { name: name.to_owned(), data_type: t.data_type, dims: t.dims.clone(), offset, len })
}

/// The tensor at `tensor` without its raw_data, marked as external data at
/// [`LOCATION`].
fn external_tensor(model: &Src<'_>, tensor: Range<usize>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let mut len = 0;
    let mut r = Reader::new(model, tensor);
    while let Some(f) = r.next()? {
        match f.value {
            Value::Bytes(b) if f.number == 9 => len = b.len(),
            _ => model.copy_to(f.span, &mut out)?,
        }
    }
    for (key, value) in [("location", LOCATION.to_owned()), ("length", len.to_string())] {
        let mut entry = Vec::new();
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, value.as_bytes());
        put_bytes(&mut out, 13, &entry);
    }
    put_varint(&mut out, 14 << 3);
    put_varint(&mut out, 1); // data_location: EXTERNAL
    Some(out)
}

/// Calls `visit` with every `TensorProto` in the model (and whether it is
/// an initializer of the main graph), following onnx.proto's messages that
/// hold tensors: graphs, nodes, attributes, sparse tensors, functions and
/// training graphs. `None` when the bytes do not parse.
fn walk_model<'a>(model: &Src<'a>, visit: &mut dyn FnMut(Seen<'a>)) -> Option<()> {
    walk(model, 0..model.len(), Msg::Model, false, 0, visit)
}

/// What [`walk_model`] reports.
enum Seen<'a> {
    /// A tensor, and whether it is an initializer of the main graph.
    Tensor(TensorInfo<'a>, bool),
    /// The name of a node's output.
    Output(Cow<'a, [u8]>),
}

#[derive(Clone, Copy)]
enum Msg {
    Model,
    Graph,
    Node,
    Attribute,
    Sparse,
    Function,
    Training,
}

fn walk<'a>(
    model: &Src<'a>,
    at: Range<usize>,
    msg: Msg,
    top: bool,
    depth: usize,
    visit: &mut dyn FnMut(Seen<'a>),
) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut r = Reader::new(model, at);
    while let Some(f) = r.next()? {
        let Value::Bytes(b) = f.value else { continue };
        let next = match (msg, f.number) {
            (Msg::Model, 7) => Some((Msg::Graph, true)),
            (Msg::Model, 20) => Some((Msg::Training, false)),
            (Msg::Model, 25) => Some((Msg::Function, false)),
            (Msg::Training, 1 | 2) => Some((Msg::Graph, false)),
            (Msg::Function, 7) | (Msg::Graph, 1) => Some((Msg::Node, false)),
            (Msg::Graph, 15) | (Msg::Attribute, 22 | 23) => Some((Msg::Sparse, false)),
            (Msg::Node, 5) | (Msg::Function, 11) => Some((Msg::Attribute, false)),
            (Msg::Attribute, 6 | 11) => Some((Msg::Graph, false)),
            _ => None,
        };
        if let Some((inner, inner_top)) = next {
            walk(model, b, inner, inner_top, depth + 1, visit)?;
            continue;
        }
        match (msg, f.number) {
            (Msg::Graph, 5) | (Msg::Attribute, 5 | 10) | (Msg::Sparse, 1 | 2) => {
                let is_top_initializer = top && matches!(msg, Msg::Graph);
                visit(Seen::Tensor(tensor_info(model, b)?, is_top_initializer));
            }
            (Msg::Node, 2) => visit(Seen::Output(model.get(b)?)),
            _ => {}
        }
    }
    Some(())
}

/// Bytes per element of the ONNX data types that can be shared as they lie.
pub(crate) fn element_size(data_type: i32) -> Option<usize> {
    Some(match data_type {
        2 | 3 | 9 => 1,       // UINT8, INT8, BOOL
        4 | 5 | 10 | 16 => 2, // UINT16, INT16, FLOAT16, BFLOAT16
        1 | 6 | 12 => 4,      // FLOAT, INT32, UINT32
        7 | 11 | 13 => 8,     // INT64, DOUBLE, UINT64
        _ => return None,     // STRING, complex, sub-byte and 8-bit floats
    })
}

fn element_type(data_type: i32) -> Option<Elem> {
    Some(match data_type {
        1 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        2 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
        3 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
        4 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16,
        5 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
        6 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
        7 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
        9 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
        10 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
        11 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
        12 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32,
        13 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
        16 => Elem::ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
        _ => return None,
    })
}

/// A model's large weights taken out of its bytes, ready to be given to
/// sessions. Must outlive every session created with it (a model drops its
/// sessions first).
pub struct Shared {
    /// The model without the shared bytes (what sessions are built from).
    pub model: Vec<u8>,
    values: Vec<(CString, Tensor)>,
    /// When a weight did not lie aligned for its type: the model's bytes
    /// laid out again in a buffer of this model's own, each weight at a
    /// multiple of [`ALIGN`], as parts in order (see [`Shared::laid_out`]).
    laid_out: Option<Blob>,
    /// Keeps the memory the tensors point into (the model's, or the copy).
    _weights: Vec<Bytes>,
}

struct Tensor(NonNull<OrtValue>);

// SAFETY: an OrtValue over memory nobody writes may be used and released
// from any thread; sessions only read initializers.
unsafe impl Send for Tensor {}
unsafe impl Sync for Tensor {}

impl Drop for Tensor {
    fn drop(&mut self) {
        // SAFETY: created by CreateTensorWithDataAsOrtValue, released once;
        // the sessions that used it are gone (see `Shared`).
        unsafe { (ort::api().ReleaseValue)(self.0.as_ptr()) }
    }
}

fn check(status: OrtStatusPtr) -> Result<(), String> {
    if status.0.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null status is a valid OrtStatus we own.
    unsafe {
        let msg = std::ffi::CStr::from_ptr((ort::api().GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (ort::api().ReleaseStatus)(status.0);
        Err(msg)
    }
}

impl Shared {
    /// Takes `blob`'s large initializers out; `None` when there are none
    /// (or the bytes are no ONNX model).
    pub fn new(blob: &Blob) -> Result<Option<Shared>, String> {
        // (A blob holds no empty parts: its parts and `src`'s are numbered
        // alike.)
        let src = Src::of(blob);
        let Some((model, inits)) = split(&src, SHARE_MIN_BYTES) else { return Ok(None) };
        // Weights are used where they lie when all of them lie aligned,
        // each in one part (as in a blob from `arrange`, or any blob in one
        // part); else the whole model is copied once, laid out so they all
        // do, and the copy takes the place of `blob` (the node keeps it
        // instead).
        let (weights, laid_out): (Vec<Bytes>, Option<Blob>) = match in_place(&src, &inits) {
            Some(places) => (places.into_iter().map(|(part, r)| blob.parts()[part].slice(r)).collect(), None),
            None => {
                let (buf, parts) = lay_out(&src, &inits).ok_or("the model's bytes do not parse")?;
                let weights = parts.iter().skip(1).step_by(2).map(|p| buf.slice(p.clone())).collect();
                (weights, Some(Blob::from_parts(parts.into_iter().map(|p| buf.slice(p)))))
            }
        };
        let mut shared = Shared { model, values: Vec::new(), laid_out, _weights: weights.clone() };
        let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
            .map_err(|e| e.message().to_owned())?;
        for (init, data) in inits.into_iter().zip(&weights) {
            let elem = element_type(init.data_type).expect("split takes only shareable types");
            let size = element_size(init.data_type).expect("split takes only shareable types");
            if data.len() != init.len || !(data.as_ptr() as usize).is_multiple_of(size) {
                return Err(format!("weight {} is not aligned after its layout", init.name));
            }
            let mut value = ptr::null_mut();
            // SAFETY: `data` is `init.len` bytes that live as long as
            // `shared` (in `_weights`) and are never written; ORT only reads
            // initializers.
            check(unsafe {
                (ort::api().CreateTensorWithDataAsOrtValue)(
                    info.ptr(),
                    data.as_ptr().cast_mut().cast(),
                    init.len,
                    init.dims.as_ptr(),
                    init.dims.len(),
                    elem,
                    &mut value,
                )
            })?;
            let value = Tensor(NonNull::new(value).ok_or("ONNX Runtime returned no tensor")?);
            let name = CString::new(init.name).map_err(|_| "an initializer's name holds a NUL byte".to_owned())?;
            shared.values.push((name, value));
        }
        Ok(Some(shared))
    }

    /// Gives `builder`'s session the weights.
    pub fn add_to(&self, builder: SessionBuilder) -> Result<SessionBuilder, String> {
        // A model whose optimizers fold a shared weight fails here (see
        // `OnnxBackend::first_session`): that failure is no error to log.
        let err = |e: ort::Error<SessionBuilder>| e.message().to_owned();
        let builder = builder.with_config_entry("session.model_external_initializers_file_folder_path", FOLDER);
        let mut builder = builder.map_err(err)?.with_log_level(ort::logging::LogLevel::Fatal).map_err(err)?;
        for (name, value) in &self.values {
            // SAFETY: the options pointer is live for this call; the value
            // outlives the session (see `Shared`), as AddInitializer needs.
            check(unsafe { (ort::api().AddInitializer)(builder.ptr_mut(), name.as_ptr(), value.0.as_ptr()) })?;
        }
        Ok(builder)
    }

    /// The model's bytes as laid out again, when a weight did not lie
    /// aligned: the owner of the bytes the model was loaded from keeps
    /// these instead (they are equal), so the model is held once.
    pub fn laid_out(&self) -> Option<&Blob> {
        self.laid_out.as_ref()
    }

    /// Initializers given as shared tensors.
    pub fn shared_count(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(fields: &[(u64, &[u8])]) -> Vec<u8> {
        let mut m = Vec::new();
        for (n, b) in fields {
            put_bytes(&mut m, *n, b);
        }
        m
    }

    /// A FLOAT [1] tensor named `name` with external data.
    fn external(name: &str) -> Vec<u8> {
        let mut t = Vec::new();
        put_varint(&mut t, 1 << 3);
        put_varint(&mut t, 1); // dims
        put_varint(&mut t, 2 << 3);
        put_varint(&mut t, 1); // FLOAT
        put_bytes(&mut t, 8, name.as_bytes());
        put_bytes(&mut t, 13, &msg(&[(1, b"location"), (2, b"etc/hostname")]));
        put_varint(&mut t, 14 << 3);
        put_varint(&mut t, 1);
        t
    }

    #[test]
    fn large_initializers_are_taken_out_and_the_rest_is_kept() {
        let model = tessera_tests::onnx::embedding(1024, 32, 0);
        let (small, taken) = split(&Src::one(&model), SHARE_MIN_BYTES).expect("W is 128 KiB");
        assert_eq!(taken.len(), 1);
        let w = &taken[0];
        assert_eq!(
            (w.name.as_str(), w.data_type, w.dims.as_slice(), w.len),
            ("W", 1, &[1024i64, 32][..], 1024 * 32 * 4)
        );
        // The offset is where W's floats lie in the model: row r holds r.
        let row = |r: usize| f32::from_le_bytes(model[w.offset + r * 128..][..4].try_into().unwrap());
        assert_eq!((row(0), row(1), row(1023)), (0.0, 1.0, 1023.0));
        assert!(small.len() < 1024, "{} bytes left", small.len());
        assert!(split(&Src::one(&model), usize::MAX).is_none(), "nothing to take out");
        // The rewritten tensor says where its bytes went, and the bytes
        // before and after W's field are the original ones.
        let s = String::from_utf8_lossy(&small);
        assert!(s.contains("location") && s.contains("131072"), "{s}");
        assert!(references_external_data(&Src::one(&small)) && !references_external_data(&Src::one(&model)));
        let tail = &model[w.offset + w.len..];
        assert!(small.ends_with(tail), "what follows the initializer is kept as it was");
        let head = &model[..w.offset - 20];
        assert_eq!(&small[..16], &head[..16], "the model's first fields are kept as they were");
    }

    #[test]
    fn small_odd_or_ambiguous_initializers_stay() {
        // A 1-element DOUBLE constant is far under the limit.
        assert!(split(&Src::one(&tessera_tests::onnx::add_const(1.0)), SHARE_MIN_BYTES).is_none());
        // Garbage is "nothing to take out", never a panic.
        for junk in [&b"not a model"[..], b"\x3a\xff\xff\xff\xff\x0f", b"\x3a\x05ab", b"\x3c", b"\x3b\x08", b""] {
            assert!(split(&Src::one(junk), 0).is_none());
            assert!(!references_external_data(&Src::one(junk)));
        }
        // Raw bytes that do not match the shape are left for ORT to report:
        // W's first dim, 1024 (key 0x08, varint 0x80 0x08), becomes 1023.
        let model = tessera_tests::onnx::embedding(1024, 32, 0);
        let pos = model.windows(3).position(|w| w == [0x08, 0x80, 0x08]).expect("dims field");
        let mut odd = model.clone();
        odd[pos + 1..pos + 3].copy_from_slice(&[0xff, 0x07]);
        assert!(split(&Src::one(&odd), 0).is_none());
        // A second tensor named W (a constant in a node's attribute), or a
        // node output named W: ORT would give it the shared tensor too, so
        // W is not shared.
        let mut w = Vec::new();
        put_bytes(&mut w, 8, b"W");
        put_bytes(&mut w, 9, &1f32.to_le_bytes());
        let constant = msg(&[(4, b"Constant"), (5, &msg(&[(1, b"value"), (5, &w)]))]);
        let output = msg(&[(2, b"W"), (4, b"Identity")]);
        for node in [constant, output] {
            let mut ambiguous = model.clone();
            ambiguous.extend_from_slice(&msg(&[(7, &msg(&[(1, &node)]))]));
            assert!(!references_external_data(&Src::one(&ambiguous)));
            assert!(split(&Src::one(&ambiguous), 0).is_none());
        }
        let mut lone = model.clone();
        lone.extend_from_slice(&msg(&[(7, &msg(&[(1, &msg(&[(2, b"V"), (4, b"Identity")]))]))]));
        assert!(split(&Src::one(&lone), 0).is_some(), "another name changes nothing");
    }

    #[test]
    fn external_data_is_found_wherever_it_is() {
        let ext = external("E");
        let mut only_location = Vec::new();
        put_bytes(&mut only_location, 13, &msg(&[(1, b"location"), (2, b"x")]));
        let mut only_flag = Vec::new();
        put_varint(&mut only_flag, 14 << 3);
        put_varint(&mut only_flag, (1 << 32) | 1); // an int32 1 to protobuf
        let attr = |field: u64, inner: &[u8]| msg(&[(1, b"value"), (field, inner)]);
        let node_with = |a: &[u8]| msg(&[(4, b"Constant"), (5, a)]);
        let graph_with_node = |n: &[u8]| msg(&[(1, n)]);
        let in_graph = graph_with_node(&node_with(&attr(5, &ext)));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("initializer", msg(&[(7, &msg(&[(5, &ext)]))])),
            ("only external_data", msg(&[(7, &msg(&[(5, &only_location)]))])),
            ("only data_location", msg(&[(7, &msg(&[(5, &only_flag)]))])),
            ("attribute t", msg(&[(7, &in_graph)])),
            ("attribute tensors", msg(&[(7, &graph_with_node(&node_with(&attr(10, &ext))))])),
            ("attribute g", msg(&[(7, &graph_with_node(&node_with(&attr(6, &in_graph))))])),
            ("attribute graphs", msg(&[(7, &graph_with_node(&node_with(&attr(11, &in_graph))))])),
            ("attribute sparse_tensor", msg(&[(7, &graph_with_node(&node_with(&attr(22, &msg(&[(1, &ext)])))))])),
            ("attribute sparse_tensors", msg(&[(7, &graph_with_node(&node_with(&attr(23, &msg(&[(2, &ext)])))))])),
            ("sparse initializer", msg(&[(7, &msg(&[(15, &msg(&[(1, &ext)]))]))])),
            ("function node", msg(&[(25, &msg(&[(7, &node_with(&attr(5, &ext)))]))])),
            ("function attribute_proto", msg(&[(25, &msg(&[(11, &attr(5, &ext))]))])),
            ("training initialization", msg(&[(20, &msg(&[(1, &msg(&[(5, &ext)]))]))])),
            ("training algorithm", msg(&[(20, &msg(&[(2, &in_graph)]))])),
        ];
        for (what, model) in cases {
            assert!(references_external_data(&Src::one(&model)), "{what}");
        }
        // Behind an unknown group field (a parser skips it) it is found.
        let graph = msg(&[(7, &msg(&[(5, &ext)]))]);
        let mut grouped = vec![0x0b, 0x08, 0x01, 0x0c]; // field 1: start, a varint, end
        grouped.extend_from_slice(&graph);
        assert!(references_external_data(&Src::one(&grouped)));
        // Field 7's key written in 5 bytes with bits past 32 (protobuf
        // drops them: it is the graph to ONNX Runtime) is the graph here.
        let mut long_key = vec![0xba, 0x80, 0x80, 0x80, 0x10];
        long_key.extend_from_slice(&graph[1..]);
        assert!(references_external_data(&Src::one(&long_key)));
        // A key of 6 bytes protobuf refuses, as this reader does.
        let mut too_long = vec![0xba, 0x80, 0x80, 0x80, 0x80, 0x00];
        too_long.extend_from_slice(&graph[1..]);
        assert!(!references_external_data(&Src::one(&too_long)));
    }
}
