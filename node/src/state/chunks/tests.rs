use bytes::Bytes;

use super::*;

/// `op` encoded and cut into `n` parts.
pub(crate) fn parts(op: &LogOp, n: usize) -> Vec<Bytes> {
    let whole = Bytes::from(encode(op));
    let size = whole.len().div_ceil(n);
    (0..n).map(|i| whole.slice(i * size..((i + 1) * size).min(whole.len()))).collect()
}

#[test]
fn chunks_assemble_in_order_and_interrupted_writes_are_dropped() {
    let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from("k"); 100] });
    let p = parts(&op, 3);
    let mut c = Chunks::default();
    assert!(c.add(1, 0, 3, p[0].clone(), 10, 1).is_none());
    assert!(c.add(1, 1, 3, p[1].clone(), 11, 1).is_none());
    assert_eq!(join(c.add(1, 2, 3, p[2].clone(), 12, 1).unwrap().unwrap()).unwrap(), op);
    assert!(c.is_empty());
    // A part out of order (a new leader's retry) drops the write.
    assert!(c.add(2, 0, 3, p[0].clone(), 20, 1).is_none());
    assert!(matches!(c.add(2, 2, 3, p[2].clone(), 21, 1), Some(Err(_))));
    assert!(c.is_empty());
    // An abandoned write is forgotten once its parts are old.
    assert!(c.add(3, 0, 3, p[0].clone(), 30, 1).is_none());
    assert!(c.add(4, 0, 3, p[0].clone(), 30 + CHUNKS_KEPT_MS + 1, 1).is_none());
    assert_eq!(c.len(), 1);
    // Any later entry forgets it too (each applied entry prunes).
    c.prune(30 + 2 * CHUNKS_KEPT_MS, 1);
    assert_eq!(c.len(), 1, "write 4 started later");
    c.prune(31 + 2 * CHUNKS_KEPT_MS + 1, 1);
    assert!(c.is_empty());
    // A write whose leader lost its leadership is forgotten as soon as
    // an entry of a later term applies (the next leader's first); a
    // part of it logged after that is an error, never half a write.
    assert!(c.add(5, 0, 3, p[0].clone(), 40, 7).is_none());
    c.prune(41, 7);
    assert_eq!(c.len(), 1, "same term: it may go on");
    c.prune(42, 8);
    assert!(c.is_empty());
    assert!(matches!(c.add(5, 1, 3, p[1].clone(), 43, 9), Some(Err(_))));
}

#[test]
fn a_local_write_keeps_no_parts_and_a_snapshot_gets_them() {
    let op = LogOp::Command(NodeCommand::Del { keys: vec![Bytes::from(vec![7u8; 100_000]); 100] });
    let p = crate::state::encode_parts(&op, CHUNK_BYTES);
    assert!(p.len() >= 3);
    let local = LocalWrites::default();
    local.insert(5, op.clone(), None);
    let (mut mine, mut theirs) = (Chunks::default(), Chunks::default());
    assert!(mine.add_part(5, 0, p.len() as u32, p[0].clone(), 1, 1, true).is_none());
    assert!(mine.add_part(5, 1, p.len() as u32, p[1].clone(), 1, 1, false).is_none());
    for (i, part) in p.iter().enumerate().take(2) {
        assert!(theirs.add(5, i as u32, p.len() as u32, part.clone(), 1, 1).is_none());
    }
    assert!(mine.pending[&5].data.iter().all(|d| d.is_empty()), "counted, not kept");
    // A snapshot taken now holds the parts, as another replica's does.
    let mut snap = mine.clone();
    snap.fill_local(&local);
    assert_eq!(encode(&snap), encode(&theirs));
    // The last part yields the write as local; without its local copy
    // (never: only after a term change drops both) it is dropped.
    let last = p.len() - 1;
    for i in 2..last {
        assert!(mine.add_part(5, i as u32, p.len() as u32, p[i].clone(), 1, 1, false).is_none());
    }
    let done = mine.add_part(5, last as u32, p.len() as u32, p[last].clone(), 1, 1, false);
    assert!(matches!(done, Some(Ok((_, true)))));
    local.remove(5);
    let mut gone = Chunks::default();
    assert!(gone.add_part(6, 0, 3, p[0].clone(), 1, 1, true).is_none());
    gone.fill_local(&local);
    assert!(gone.is_empty(), "a local write whose copy is gone is not snapshotted half");
}

/// The store of an ONNX model for the CPU whose bytes are `blob`.
fn onnx_store(blob: Vec<u8>) -> LogOp {
    let model = tessera_common::model::ModelDef {
        backend: tessera_common::model::BackendKind::Onnx,
        device_name: "CPU".into(),
        device: tessera_common::model::Device::Cpu(None),
        tag: Bytes::new(),
        batchsize: 0,
        minbatchsize: 0,
        minbatchtimeout: 0,
        inputs: vec![],
        outputs: vec![],
        blob: Bytes::from(blob).into(),
    };
    LogOp::Command(NodeCommand::ModelStore { key: Bytes::from("m"), model })
}

#[test]
fn a_chunked_model_store_keeps_its_blob_in_the_joined_parts() {
    let op = onnx_store(vec![9u8; 10_000]);
    let mut c = Chunks::default();
    let p = parts(&op, 4);
    for (i, part) in p.iter().enumerate().take(3) {
        assert!(c.add(1, i as u32, 4, part.clone(), 1, 1).is_none());
    }
    let joined = c.add(1, 3, 4, p[3].clone(), 1, 1).map(|parts| join(parts.unwrap()));
    let Some(Ok(LogOp::Command(NodeCommand::ModelStore { model, .. }))) = joined else {
        panic!("the last part yields the model store");
    };
    assert_eq!(model.blob, vec![9u8; 10_000][..]);
    // Not in any of the parts: a slice of the one buffer they were joined in.
    let at = model.blob.parts()[0].as_ptr() as usize;
    assert!(p.iter().all(|p| !(p.as_ptr() as usize..p.as_ptr() as usize + p.len()).contains(&at)));
}

/// An ONNX model whose weights lie misaligned comes out of the join
/// laid out for ONNX Runtime in the join's own buffer: the same bytes,
/// as parts, each weight at a 64-byte boundary (so its load copies
/// nothing).
#[cfg(feature = "onnx")]
#[test]
fn a_joined_onnx_model_is_laid_out_where_it_was_joined() {
    let bytes = tessera_tests::onnx::embeddings(8, 256, 64);
    let op = onnx_store(bytes.clone());
    let Ok(LogOp::Command(NodeCommand::ModelStore { model, .. })) = join(parts(&op, 3)) else {
        panic!("the parts join into the model store");
    };
    assert!(model.blob == bytes[..], "the same bytes");
    let parts = model.blob.parts();
    assert_eq!(parts.len(), 17, "eight tables and the bytes around them");
    assert!(parts.iter().skip(1).step_by(2).all(|w| (w.as_ptr() as usize).is_multiple_of(64)));
    // One buffer: each part lies after the one before it.
    assert!(parts.windows(2).all(|w| w[1].as_ptr() as usize >= w[0].as_ptr() as usize + w[0].len()));
    let span = parts[16].as_ptr() as usize + parts[16].len() - parts[0].as_ptr() as usize;
    assert!(span <= bytes.len() + tessera_common::blob::layout_room(bytes.len()));
}
