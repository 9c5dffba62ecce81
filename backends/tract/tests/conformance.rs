//! The tract backends against RedisAI's TF and TFLite test models.

use tessera_backend::{elements, from_elements, Backend, DType, Device, LoadOptions};
use tessera_backend_tract::{TfBackend, TfLiteBackend};
use tessera_tests::testdata;

fn tf_opts(inputs: &[&str], outputs: &[&str]) -> LoadOptions {
    LoadOptions {
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn tf_graph_multiplies() {
    let m = TfBackend.load(&testdata("graph.pb"), &tf_opts(&["a", "b"], &["mul"])).unwrap();
    assert_eq!(m.inputs(), ["a", "b"]);
    let a = from_elements(vec![2], &[2f32, 3.0]);
    let out = m.run(&[a.clone(), a.clone()]).unwrap();
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![4.0, 9.0]);
    // Another shape builds (and caches) another plan.
    let b = from_elements(vec![2, 2], &[1f32, 2.0, 3.0, 4.0]);
    let out = m.run(&[b.clone(), b]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().shape, vec![2, 2]);
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![1.0, 4.0, 9.0, 16.0]);
    // Shapes that do not broadcast: an error, and the model still runs.
    let c = from_elements(vec![3], &[1f32, 2.0, 3.0]);
    assert!(m.run(&[a.clone(), c]).is_err());
    assert!(m.run(&[a.clone(), a]).is_ok());
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn tf_errors_follow_redisai() {
    let g = testdata("graph.pb");
    let e = TfBackend.load(&g, &tf_opts(&["bad_input", "b"], &["mul"])).err().unwrap();
    assert_eq!(e.0, "ERR Input node named \"bad_input\" not found in TF graph.");
    let e = TfBackend.load(&g, &tf_opts(&["a", "b"], &["mult"])).err().unwrap();
    assert_eq!(e.0, "ERR Output node named \"mult\" not found in TF graph");
    // `mul` exists but is not a Placeholder.
    let e = TfBackend.load(&g, &tf_opts(&["mul", "b"], &["mul"])).err().unwrap();
    assert_eq!(e.0, "ERR Input node named \"mul\" not found in TF graph.");
    let e = TfBackend.load(b"\x08\x01garbage", &tf_opts(&["a"], &["mul"])).err().unwrap();
    assert_eq!(e.0, "Invalid GraphDef");
    let gpu = LoadOptions { device: Device::Gpu(None), ..tf_opts(&["a", "b"], &["mul"]) };
    assert_eq!(TfBackend.load(&g, &gpu).err().unwrap().0, "ERR GPU requested but TF couldn't find CUDA");
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn tflite_quantized_mnist_is_clear_either_way() {
    // RedisAI's quantized mnist: tract has no quantize ops for TFLite; the
    // load must then say so plainly (no panic, no empty message).
    match TfLiteBackend.load(&testdata("mnist_model_quant.tflite"), &LoadOptions::default()) {
        Ok(m) => {
            let x = tessera_backend::Tensor {
                dtype: DType::Float,
                shape: vec![1, 28, 28, 1],
                data: testdata("one.raw").into(),
            };
            let out = m.run(&[x]).expect("a loaded model runs");
            let scores = out[0].as_ref().unwrap();
            eprintln!("tflite output: {:?} {:?}", scores.dtype, scores.shape);
        }
        Err(e) => {
            assert_eq!(e.0, "ERR TFLite operator QUANTIZE is not supported by this build (tract)");
        }
    }
    assert_eq!(
        TfLiteBackend.load(b"garbage", &LoadOptions::default()).err().unwrap().0,
        "Failed to load model from buffer"
    );
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn tflite_float_model_runs() {
    // A float TFLite model, generated here: RedisAI's graph.pb (a * b)
    // planned for [2]-shaped inputs and written out by tract's TFLite writer.
    use tract_tensorflow::prelude::*;
    let tf = tract_tensorflow::tensorflow();
    let mut g = tf.model_for_read(&mut &testdata("graph.pb")[..]).unwrap();
    g.set_input_names(["a", "b"]).unwrap();
    g.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), tvec![2])).unwrap();
    g.set_input_fact(1, InferenceFact::dt_shape(f32::datum_type(), tvec![2])).unwrap();
    let typed = g.into_typed().unwrap().into_decluttered().unwrap();
    let mut blob = Vec::new();
    tract_tflite::tflite().write(&typed, &mut blob).unwrap();

    let m = TfLiteBackend.load(&blob, &LoadOptions::default()).unwrap();
    assert_eq!(m.inputs().len(), 2);
    let a = from_elements(vec![2], &[2f32, 3.0]);
    let out = m.run(&[a.clone(), a.clone()]).unwrap();
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![4.0, 9.0]);
    // RedisAI's TFLite errors for the wrong dtype and shape.
    let d = from_elements(vec![2], &[2f64, 3.0]);
    assert_eq!(
        m.run(&[d, a.clone()]).unwrap_err().0,
        "Input tensor type doesn't match the type expected by the model definition"
    );
    let long = from_elements(vec![3], &[1f32, 2.0, 3.0]);
    assert_eq!(m.run(&[long, a]).unwrap_err().0, "Failed to resize input tensors");
}
