//! The LiteRT backend against RedisAI's TFLite test model (quantized) and
//! a float model. Needs the library `native/setup_litert.sh` fetches
//! (`TESSERA_LITERT_LIB`, or the default cache path).

use std::path::PathBuf;
use std::sync::Arc;

use tessera_backend::{elements, Backend, DType, LoadOptions, Tensor};
use tessera_backend_litert::LiteRtBackend;
use tessera_tests::testdata;

fn backend() -> Arc<LiteRtBackend> {
    static B: std::sync::OnceLock<Arc<LiteRtBackend>> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let lib = std::env::var_os("TESSERA_LITERT_LIB").map(PathBuf::from).unwrap_or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
            home.join(".cache/tessera/litert/libLiteRt.so")
        });
        Arc::new(LiteRtBackend::load(&lib, 1).expect("LiteRT (run native/setup_litert.sh)"))
    })
    .clone()
}

/// RedisAI's quantized mnist (QUANTIZE, int8 per-channel convolutions and
/// fully connected layers, DEQUANTIZE) on its `one.raw`: the digit 1, with
/// the probabilities TensorFlow Lite itself gives (TF 2.21's interpreter).
#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn quantized_mnist_gives_tflites_answer() {
    let m = backend().load(&testdata("mnist_model_quant.tflite"), &LoadOptions::default()).unwrap();
    assert_eq!(m.inputs(), ["Placeholder"]);
    assert_eq!(m.outputs(), ["ArgMax", "Softmax"]);
    let x = Tensor { dtype: DType::Float, shape: vec![1, 28, 28], data: testdata("one.raw").into() };
    for _ in 0..3 {
        let out = m.run(std::slice::from_ref(&x)).unwrap();
        let argmax = out[0].as_ref().unwrap();
        assert_eq!((argmax.dtype, argmax.shape.clone()), (DType::Int64, vec![1]));
        assert_eq!(elements::<i64>(argmax), vec![1]);
        let p = elements::<f32>(out[1].as_ref().unwrap());
        let tflite = [
            0.00390625, 0.5546875, 0.00390625, 0.015625, 0.1328125, 0.015625, 0.0078125, 0.0390625, 0.03125, 0.19921875,
        ];
        assert_eq!(p, tflite);
    }
    // A wrong shape or type is refused, and the model still runs.
    let bad = Tensor { dtype: DType::Float, shape: vec![1, 784], data: testdata("one.raw").into() };
    let e = m.run(&[bad]).err().unwrap().0;
    assert_eq!(e, "ERR TFLite input 0 must be FLOAT [1, 28, 28], got FLOAT [1, 784]");
    assert!(m.run(&[x]).is_ok());
}

#[test]
fn garbage_is_refused_clearly() {
    let e = backend().load(b"not a flatbuffer", &LoadOptions::default()).err().unwrap().0;
    assert_eq!(e, "Failed to load model from buffer");
    let gpu = LoadOptions { device: tessera_backend::Device::Gpu(None), ..Default::default() };
    let e = backend().load(b"x", &gpu).err().unwrap().0;
    assert_eq!(e, "ERR GPU requested but TFLite couldn't find CUDA");
}

/// Many threads, one model: runs take turns (a compiled model is not safe to
/// run from two threads at once) and every answer is right.
#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn concurrent_runs_take_turns() {
    let m = backend().load(&testdata("mnist_model_quant.tflite"), &LoadOptions::default()).unwrap();
    let x = Tensor { dtype: DType::Float, shape: vec![1, 28, 28], data: testdata("one.raw").into() };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    let out = m.run(std::slice::from_ref(&x)).unwrap();
                    assert_eq!(elements::<i64>(out[0].as_ref().unwrap()), vec![1]);
                }
            });
        }
    });
}
