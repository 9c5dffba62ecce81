//! The ONNX backend against ONNX Runtime itself and RedisAI's test models.
//! Needs the library `native/setup_ort.sh` fetches (`ORT_DYLIB_PATH`, or the
//! default cache path).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use tessera_backend::{elements, from_elements, from_strings, Backend, Device, LoadOptions, Tensor};
use tessera_backend_onnx::OnnxBackend;
use tessera_tests::testdata;

pub fn ort_lib() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/tessera/ort/libonnxruntime.so")
    })
}

fn backend() -> Arc<OnnxBackend> {
    static B: OnceLock<Arc<OnnxBackend>> = OnceLock::new();
    B.get_or_init(|| Arc::new(OnnxBackend::load(&ort_lib(), 2).expect("ONNX Runtime (run native/setup_ort.sh)")))
        .clone()
}

fn one() -> Tensor {
    Tensor { dtype: tessera_backend::DType::Float, shape: vec![1, 1, 28, 28], data: testdata("one.raw").into() }
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn mnist_reads_a_one() {
    let m = backend().load(&testdata("mnist.onnx"), &LoadOptions::default()).unwrap();
    assert_eq!(m.inputs().len(), 1);
    assert_eq!(m.outputs().len(), 1);
    let out = m.run(&[one()]).unwrap();
    let scores = elements::<f32>(out[0].as_ref().unwrap());
    assert_eq!(out[0].as_ref().unwrap().shape, vec![1, 10]);
    let best = (0..10).max_by(|a, b| scores[*a].total_cmp(&scores[*b])).unwrap();
    assert_eq!(best, 1);
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn names_come_from_the_session() {
    let m = backend().load(&testdata("linear_iris.onnx"), &LoadOptions::default()).unwrap();
    assert_eq!(m.inputs(), ["float_input"]);
    assert_eq!(m.outputs(), ["variable"]);
    let x = from_elements(vec![1, 4], &[5.0f32, 3.4, 1.6, 0.4]);
    let out = m.run(&[x]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().shape[0], 1);
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn non_tensor_outputs_are_skipped() {
    // logreg_iris: label (INT64 tensor) and probabilities (a sequence of maps).
    let m = backend().load(&testdata("logreg_iris.onnx"), &LoadOptions::default()).unwrap();
    assert_eq!(m.outputs().len(), 2);
    let x = from_elements(vec![1, 4], &[5.0f32, 3.4, 1.6, 0.4]);
    let out = m.run(&[x]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().dtype, tessera_backend::DType::Int64);
    assert!(out[1].is_none());
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn bad_input_gives_clear_errors() {
    let b = backend();
    let e = b.load(b"not a model", &LoadOptions::default()).err().unwrap();
    assert!(!e.0.is_empty() && !e.0.contains('\n'), "{e}");
    // No GPU here: with ORT's CPU build RedisAI's exact message; with its
    // GPU build (and no CUDA libraries or driver) the same, with the reason.
    // (On a GPU machine with the GPU build the model loads.)
    match b.load(&testdata("mnist.onnx"), &LoadOptions { device: Device::Gpu(None), ..Default::default() }) {
        Ok(_) => assert!(b.has_cuda()),
        Err(e) if b.has_cuda() => assert!(e.0.starts_with("ERR GPU requested but ONNX couldn't find CUDA ("), "{e}"),
        Err(e) => assert_eq!(e.0, "ERR GPU requested but ONNX couldn't find CUDA"),
    }
    let m = b.load(&testdata("mnist.onnx"), &LoadOptions::default()).unwrap();
    // Wrong shape, wrong dtype, wrong count: errors, and the model still runs.
    let bad_shape = from_elements(vec![1, 1, 28, 27], &vec![0f32; 28 * 27]);
    let e = m.run(&[bad_shape]).unwrap_err();
    assert!(e.0.contains("dimensions") || e.0.contains("Got"), "{e}");
    let bad_type = from_elements(vec![1, 1, 28, 28], &vec![0f64; 784]);
    assert!(m.run(&[bad_type]).is_err());
    assert!(m.run(&[]).unwrap_err().0.starts_with("ERR Expected 1 inputs"));
    let bad_utf8 = from_strings(vec![1], &[&b"\xff"[..]]);
    assert!(m.run(&[bad_utf8]).is_err());
    assert!(m.run(&[one()]).is_ok());
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn concurrent_runs_use_several_sessions() {
    let m = backend().load(&testdata("mnist.onnx"), &LoadOptions::default()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert!(m.run(&[one()]).is_ok());
                }
            });
        }
    });
}

#[test]
fn a_run_past_its_limit_is_terminated() {
    let m = backend().load(&tessera_tests::onnx::matmul_chain(1024, 32), &LoadOptions::default()).unwrap();
    let x = from_elements(vec![1024, 1024], &vec![0f32; 1024 * 1024]);
    let start = std::time::Instant::now();
    let out = m.run_limited(std::slice::from_ref(&x), None).unwrap();
    let whole = start.elapsed();
    assert_eq!(out[0].as_ref().unwrap().shape, vec![1024, 1024]);
    assert!(whole > std::time::Duration::from_millis(400), "the model must be slow for this test: {whole:?}");
    let start = std::time::Instant::now();
    let e = m.run_limited(std::slice::from_ref(&x), Some(std::time::Duration::from_millis(50))).unwrap_err();
    assert!(e.0.contains("Exiting due to terminate flag being set to true"), "{e}");
    assert!(start.elapsed() < whole, "stopped early: {:?} of {whole:?}", start.elapsed());
    // The flag belonged to that run: the model runs again, within a limit.
    assert!(m.run_limited(&[x], Some(std::time::Duration::from_secs(600))).is_ok());
}

#[test]
fn the_generated_add_model_adds() {
    let m = backend().load(&tessera_tests::onnx::add_const(2.5), &LoadOptions::default()).unwrap();
    let out = m.run(&[from_elements(vec![1], &[4.0f64])]).unwrap();
    assert_eq!(elements::<f64>(out[0].as_ref().unwrap()), [6.5]);
}
