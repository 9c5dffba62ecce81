//! Large weights are given to ONNX Runtime as tensors over the model's own
//! bytes, not copied (see `weights.rs`). Its own test binary: it measures
//! this process's memory, which other tests running beside it would move.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tessera_backend::{elements, from_elements, Backend, DType, LoadOptions, Tensor};
use tessera_backend_onnx::weights::{self, split, Shared, Src, SHARE_MIN_BYTES};
use tessera_backend_onnx::OnnxBackend;
use tessera_common::blob::{layout_room, Blob};

/// One ONNX Runtime environment per process, warmed up by a first model
/// (so ORT's own one-time allocations are not measured).
fn backend() -> &'static OnnxBackend {
    static B: OnceLock<OnnxBackend> = OnceLock::new();
    B.get_or_init(|| {
        let b = load();
        let warm = b.load_shared(&Blob::from(tessera_tests::onnx::embedding(1024, 64, 0)), &LoadOptions::default());
        rows(&*warm.unwrap(), &[1]);
        b
    })
}

fn load() -> OnnxBackend {
    let lib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/tessera/ort/libonnxruntime.so")
    });
    OnnxBackend::load(&lib, 2).expect("ONNX Runtime (run native/setup_ort.sh)")
}

/// The tests measure this process's memory: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads `blob` and returns the model with the growth of the peak and of
/// the resident memory it caused, in KiB.
fn measured_load(blob: &Blob) -> (std::sync::Arc<dyn tessera_backend::Model>, u64, u64) {
    let b = backend();
    let before = status_kib("VmRSS:");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
    let m = b.load_shared(blob, &LoadOptions::default()).unwrap();
    let peak = status_kib("VmHWM:").saturating_sub(before);
    let after = status_kib("VmRSS:").saturating_sub(before);
    (m, peak, after)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rows(m: &dyn tessera_backend::Model, ids: &[i64]) -> Vec<f32> {
    let x = from_elements(vec![ids.len() as i64], ids);
    let y = m.run(&[x]).unwrap().remove(0).expect("Y");
    assert_eq!(y.dtype, DType::Float);
    elements::<f32>(&y)
}

#[test]
fn weights_are_shared_aligned_or_laid_out_once_when_not() {
    let _serial = serial();
    // Doc strings of 0..6 bytes before W put it at every alignment. (Memory
    // is measured with 64 MiB below: freed 8 MiB blocks are reused from
    // the heap without showing in the RSS.)
    let (mut aligned_seen, mut misaligned_seen) = (false, false);
    for shift in 0..6 {
        let blob = Bytes::from(tessera_tests::onnx::embedding(2048, 1024, shift));
        let (_, taken) = split(&Src::one(&blob), SHARE_MIN_BYTES).unwrap();
        let aligned = (blob.as_ptr() as usize + taken[0].offset).is_multiple_of(4);
        (aligned_seen, misaligned_seen) = (aligned_seen || aligned, misaligned_seen || !aligned);
        let shared = Shared::new(&blob.clone().into()).unwrap().expect("W is 8 MiB");
        assert_eq!(shared.shared_count(), 1);
        // Misaligned, the model is copied once, with W aligned, and the copy
        // (equal to the model) is offered to take the place of its bytes.
        match shared.laid_out() {
            None => assert!(aligned, "shift {shift}"),
            Some(copy) => {
                assert!(!aligned, "shift {shift}");
                assert_eq!(*copy, blob[..], "shift {shift}");
                let w = copy.parts()[1].as_ptr() as usize;
                assert!(w.is_multiple_of(weights::ALIGN) && copy.parts()[1].len() == 8 << 20);
            }
        }
        // The session is built on the shared (or copied) tensor, not from
        // the whole model as it came, and reads the right rows.
        let m = backend().load_shared(&blob.clone().into(), &LoadOptions::default()).unwrap();
        assert!(m.holds_bytes(), "shift {shift}: the weights are shared");
        assert_eq!(m.bytes().is_some(), !aligned);
        let y = rows(&*m, &[0, 7, 2047]);
        assert_eq!(y.len(), 3 * 1024);
        assert!(y[..1024].iter().all(|v| *v == 0.0) && y[1024..2048].iter().all(|v| *v == 7.0));
        assert!(y[2048..].iter().all(|v| *v == 2047.0), "shift {shift}");
    }
    assert!(aligned_seen && misaligned_seen);
}

#[test]
fn an_initializer_listed_as_an_input_is_shared_too() {
    let _serial = serial();
    // IR 3 models list their initializers among the graph's inputs.
    let blob = Blob::from(tessera_tests::onnx::embedding_as_input(8192, 256));
    let size = (blob.len() / 1024) as u64;
    let (m, peak, after) = measured_load(&blob);
    println!("IR 3 shared weights: {size} KiB model loaded with peak +{peak} KiB, resident +{after} KiB");
    assert!(rows(&*m, &[8191]).iter().all(|v| *v == 8191.0));
    assert!(m.holds_bytes(), "the weights are shared");
}

#[test]
fn external_data_is_refused() {
    let _serial = serial();
    // (The check does not look at the location: ORT would.)
    for location in ["etc/hostname", "/etc/hostname"] {
        let e =
            backend().load_shared(&Blob::from(tessera_tests::onnx::external_weight(location)), &LoadOptions::default());
        assert_eq!(
            e.err().expect(location).0,
            "ERR ONNX models with external data are not supported: send the weights inside the model"
        );
    }
}

#[test]
fn a_weight_the_optimizer_folds_loads_as_it_came() {
    let _serial = serial();
    // ORT reads W while it loads (constant folding), before a session gets
    // the shared tensors: that fails, and the model loads as it came.
    let n = 1 << 18;
    let blob = Blob::from(tessera_tests::onnx::folded_sum(n));
    assert!(Shared::new(&blob).unwrap().is_some(), "W would be shared");
    let m = backend().load_shared(&blob, &LoadOptions::default());
    let m = m.unwrap();
    assert!(!m.holds_bytes(), "loaded from its bytes, not shared");
    let y = m.run(&[Tensor { dtype: DType::Float, shape: vec![1], data: 1f32.to_le_bytes().to_vec().into() }]);
    assert_eq!(elements::<f32>(&y.unwrap().remove(0).unwrap()), [n as f32 + 1.0]);
}

#[test]
fn a_large_table_costs_no_second_copy() {
    let _serial = serial();
    // 64 MiB of weights.
    let mut blob = Bytes::from(tessera_tests::onnx::embedding(64 * 1024, 256, 0));
    let (_, taken) = split(&Src::one(&blob), SHARE_MIN_BYTES).unwrap();
    // Place the model so that W lies aligned (large allocations are).
    let pad = (4 - taken[0].offset % 4) % 4;
    let mut v = vec![0u8; pad + blob.len()];
    v[pad..].copy_from_slice(&blob);
    blob = Bytes::from(v).slice(pad..);
    assert_eq!((blob.as_ptr() as usize + taken[0].offset) % 4, 0);
    let size_kib = (blob.len() / 1024) as u64;
    let (m, peak, after) = measured_load(&blob.into());
    let y = rows(&*m, &[65535]);
    assert!(y.iter().all(|v| *v == 65535.0));
    println!("FIGURE shared weights: {size_kib} KiB model loaded with peak +{peak} KiB, resident +{after} KiB");
    // A copy of the table would be 64 MiB more; ORT's own start-up far less.
    assert!(peak < size_kib / 4, "peak grew {peak} KiB loading a {size_kib} KiB model");
    assert!(after < size_kib / 4, "RSS grew {after} KiB loading a {size_kib} KiB model");
}

#[test]
fn weights_lying_anywhere_cost_one_copy_that_replaces_the_bytes() {
    let _serial = serial();
    // As in a real model: many weights, most not aligned where they lie.
    // 8 tables of 8 MiB.
    let blob = Bytes::from(tessera_tests::onnx::embeddings(8, 8192, 256));
    let (_, taken) = split(&Src::one(&blob), SHARE_MIN_BYTES).unwrap();
    assert_eq!(taken.len(), 8);
    let misaligned = taken.iter().filter(|t| !(blob.as_ptr() as usize + t.offset).is_multiple_of(4)).count();
    assert!(misaligned >= 4, "{misaligned} of 8 misaligned");
    let size_kib = (blob.len() / 1024) as u64;
    let (m, peak, after) = measured_load(&blob.clone().into());
    println!(
        "FIGURE laid-out weights: {size_kib} KiB model, {misaligned} of 8 weights misaligned, loaded with peak \
         +{peak} KiB, resident +{after} KiB (the copy the caller keeps instead of its bytes)"
    );
    // Row r holds r * (1 + 2 + … + 8).
    assert!(rows(&*m, &[8191]).iter().all(|v| *v == 8191.0 * 36.0));
    let copy = m.bytes().expect("laid out");
    assert_eq!(copy, blob[..]);
    assert!(copy.parts().iter().skip(1).step_by(2).all(|w| (w.as_ptr() as usize).is_multiple_of(weights::ALIGN)));
    // One copy of the model (each weight copied apart would be the same
    // once more while the model loads); ORT's own allocations far less.
    assert!(peak < size_kib + size_kib / 4, "peak grew {peak} KiB loading a {size_kib} KiB model");
    assert!(after < size_kib + size_kib / 4, "RSS grew {after} KiB loading a {size_kib} KiB model");
    // The caller drops its bytes and keeps the copy: the model is held once.
    drop(blob);
    assert!(rows(&*m, &[3]).iter().all(|v| *v == 3.0 * 36.0));
}

#[test]
fn weights_laid_out_where_they_lie_load_without_a_copy() {
    let _serial = serial();
    // The same eight 8 MiB tables, in a buffer with room to spare, as the
    // node assembles a model's bytes: laid out in that buffer, they load
    // with no copy at all.
    let model = tessera_tests::onnx::embeddings(8, 8192, 256);
    let mut buf = Vec::with_capacity(model.len() + layout_room(model.len()));
    buf.extend_from_slice(&model);
    let at = buf.as_ptr();
    let blob = weights::arrange(buf);
    assert_eq!(blob.parts().len(), 17, "laid out");
    assert_eq!(blob.parts()[0].as_ptr(), at, "where it lay");
    assert!(blob == model[..]);
    let size_kib = (blob.len() / 1024) as u64;
    let (m, peak, after) = measured_load(&blob);
    println!(
        "FIGURE weights laid out in place: {size_kib} KiB model loaded with peak +{peak} KiB, resident +{after} KiB"
    );
    assert!(rows(&*m, &[8191]).iter().all(|v| *v == 8191.0 * 36.0));
    assert!(m.holds_bytes() && m.bytes().is_none(), "shared where they lie: no copy to keep");
    assert!(peak < size_kib / 4, "peak grew {peak} KiB loading a {size_kib} KiB model");
    assert!(after < size_kib / 4, "RSS grew {after} KiB loading a {size_kib} KiB model");
}
