//! The TF operators the tract backend adds (`src/tf_ops.rs`) against what
//! TensorFlow 2.21 computes (`fixtures/tf_ops_reference.py` prints the
//! table), and RedisAI's TF graphs that need them.

use tessera_backend::{elements, from_elements, Backend, DType, LoadOptions, Tensor};
use tessera_backend_tract::TfBackend;
use tessera_tests::testdata;
use tract_tensorflow::tfpb;
use tract_tensorflow::tfpb::tensorflow::DataType;

fn opts(inputs: &[&str], outputs: &[&str]) -> LoadOptions {
    LoadOptions {
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        outputs: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn placeholder(name: &str, dtype: DataType) -> tfpb::tensorflow::NodeDef {
    tfpb::node().name(name).op("Placeholder").attr("dtype", dtype)
}

/// A graph `y = op(x…)` over placeholders `x0, x1, …` of `dtypes`.
fn graph(op: &str, dtypes: &[DataType]) -> Vec<u8> {
    let mut g = tfpb::graph();
    let mut node = tfpb::node().name("y").op(op).attr("T", dtypes[dtypes.len() - 1]);
    for (i, dt) in dtypes.iter().enumerate() {
        g = g.node(placeholder(&format!("x{i}"), *dt));
        node = node.input(format!("x{i}"));
    }
    g.node(node).write_to_bytes().unwrap()
}

/// (op, input, what TensorFlow answers)
#[rustfmt::skip]
const UNARY: &[(&str, &[f64], &[f64])] = &[
    ("Floor", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-3.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0]),
    ("Exp", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[0.08208499848842621, 0.22313016653060913, 0.6065306663513184, 1.0, 1.3498587608337402, 1.6487212181091309, 4.481688976287842, 12.182494163513184]),
    ("Sqrt", &[1.0, 1.5, 2.0, 4.0, 10.0], &[1.0, 1.2247449159622192, 1.4142135381698608, 2.0, 3.1622776985168457]),
    ("Square", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[6.25, 2.25, 0.25, 0.0, 0.09000000357627869, 0.25, 2.25, 6.25]),
    ("Reciprocal", &[1.0, 1.5, 2.0, 4.0, 10.0], &[1.0, 0.6666666865348816, 0.5, 0.25, 0.10000000149011612]),
    ("Inv", &[1.0, 1.5, 2.0, 4.0, 10.0], &[1.0, 0.6666666865348816, 0.5, 0.25, 0.10000000149011612]),
    ("Round", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-2.0, -2.0, -0.0, 0.0, 0.0, 0.0, 2.0, 2.0]),
    ("Sign", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-1.0, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
    ("Sin", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-0.5984721779823303, -0.9974949955940247, -0.4794255495071411, 0.0, 0.29552021622657776, 0.4794255495071411, 0.9974949955940247, 0.5984721779823303]),
    ("Cos", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-0.8011435866355896, 0.07073719799518585, 0.8775825500488281, 1.0, 0.9553365111351013, 0.8775825500488281, 0.07073719799518585, -0.8011435866355896]),
    ("Tan", &[-0.8999999761581421, -0.5, 0.0, 0.25, 0.5, 0.8999999761581421], &[-1.2601581811904907, -0.5463024973869324, 0.0, 0.25534191727638245, 0.5463024973869324, 1.2601581811904907]),
    ("Asin", &[-0.8999999761581421, -0.5, 0.0, 0.25, 0.5, 0.8999999761581421], &[-1.1197694540023804, -0.5235987901687622, 0.0, 0.252680242061615, 0.5235987901687622, 1.1197694540023804]),
    ("Acos", &[-0.8999999761581421, -0.5, 0.0, 0.25, 0.5, 0.8999999761581421], &[2.690565824508667, 2.094395160675049, 1.5707963705062866, 1.3181160688400269, 1.0471975803375244, 0.4510268568992615]),
    ("Atan", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-1.1902899742126465, -0.9827937483787537, -0.4636475443840027, 0.0, 0.29145678877830505, 0.4636475443840027, 0.9827937483787537, 1.1902899742126465]),
    ("Sinh", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-6.050204753875732, -2.129279375076294, -0.5210952758789062, 0.0, 0.30452030897140503, 0.5210952758789062, 2.129279375076294, 6.050204753875732]),
    ("Cosh", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[6.132289409637451, 2.352409601211548, 1.1276259422302246, 1.0, 1.04533851146698, 1.1276259422302246, 2.352409601211548, 6.132289409637451]),
    ("Asinh", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-1.6472312211990356, -1.19476318359375, -0.4812118411064148, 0.0, 0.29567307233810425, 0.4812118411064148, 1.19476318359375, 1.6472312211990356]),
    ("Acosh", &[1.0, 1.5, 2.0, 4.0, 10.0], &[0.0, 0.9624236822128296, 1.316957950592041, 2.063436985015869, 2.993222951889038]),
    ("Atanh", &[-0.8999999761581421, -0.5, 0.0, 0.25, 0.5, 0.8999999761581421], &[-1.4722193479537964, -0.5493061542510986, 0.0, 0.2554128170013428, 0.5493061542510986, 1.4722193479537964]),
    ("Erf", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-0.9995929598808289, -0.9661051034927368, -0.5204998850822449, 0.0, 0.3286267817020416, 0.5204998850822449, 0.9661051034927368, 0.9995929598808289]),
    ("Elu", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-0.9179149866104126, -0.7768698334693909, -0.39346933364868164, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5]),
    ("Selu", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-1.613785743713379, -1.3658143281936646, -0.6917581558227539, 0.0, 0.3152103126049042, 0.5253505110740662, 1.5760514736175537, 2.6267526149749756]),
    ("Softplus", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[0.07888974249362946, 0.20141325891017914, 0.4740769863128662, 0.6931471824645996, 0.8543552160263062, 0.9740769267082214, 1.7014132738113403, 2.578889846801758]),
    ("LeakyRelu", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-0.5, -0.30000001192092896, -0.10000000149011612, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5]),
    ("StopGradient", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5]),
    ("PreventGradient", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5]),
    ("Snapshot", &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5], &[-2.5, -1.5, -0.5, 0.0, 0.30000001192092896, 0.5, 1.5, 2.5]),
];

#[test]
fn added_unary_operators_give_tensorflows_answers() {
    for (op, x, want) in UNARY {
        let m = TfBackend
            .load(&graph(op, &[DataType::DtFloat]), &opts(&["x0"], &["y"]))
            .unwrap_or_else(|e| panic!("{op}: {}", e.0));
        let x: Vec<f32> = x.iter().map(|v| *v as f32).collect();
        let out = m.run(&[from_elements(vec![x.len() as i64], &x)]).unwrap();
        let got = elements::<f32>(out[0].as_ref().unwrap());
        for (g, w) in got.iter().zip(*want) {
            assert!((f64::from(*g) - w).abs() <= 1e-5 * w.abs().max(1.0), "{op}: {got:?} != {want:?}");
        }
    }
}

#[test]
fn added_logic_operators_give_tensorflows_answers() {
    let (f, b) = (DataType::DtFloat, DataType::DtBool);
    let a = from_elements(vec![4], &[1f32, 2.0, 3.0, 4.0]);
    let c = from_elements(vec![4], &[1f32, 0.0, 3.0, 5.0]);
    let mask = Tensor { dtype: DType::Bool, shape: vec![4], data: vec![1u8, 0, 1, 0].into() };
    let ne = TfBackend.load(&graph("NotEqual", &[f, f]), &opts(&["x0", "x1"], &["y"])).unwrap();
    let out = ne.run(&[a.clone(), c.clone()]).unwrap();
    assert_eq!(out[0].as_ref().unwrap().data.as_ref(), &[0u8, 1, 0, 1]);
    let not = TfBackend.load(&graph("LogicalNot", &[b]), &opts(&["x0"], &["y"])).unwrap();
    assert_eq!(not.run(std::slice::from_ref(&mask)).unwrap()[0].as_ref().unwrap().data.as_ref(), &[0u8, 1, 0, 1]);
    let select = TfBackend.load(&graph("SelectV2", &[b, f, f]), &opts(&["x0", "x1", "x2"], &["y"])).unwrap();
    let out = select.run(&[mask, a, c]).unwrap();
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![1.0, 0.0, 3.0, 5.0]);
}

#[test]
fn an_operator_tract_lacks_is_named_at_load() {
    let e = TfBackend
        .load(&graph("SquaredDifference", &[DataType::DtFloat, DataType::DtFloat]), &opts(&["x0", "x1"], &["y"]));
    let e = e.err().expect("SquaredDifference is not supported").0;
    assert!(e.starts_with("ERR TF operators not supported by this build: y (Unimplemented(SquaredDifference))"), "{e}");
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn graph_v2_gives_tensorflows_answer() {
    let m = TfBackend.load(&testdata("graph_v2.pb"), &opts(&["x"], &["Identity"])).unwrap();
    let x: Vec<f32> = (0..784).map(|i| (i % 17) as f32 / 16.0).collect();
    let out = m.run(&[from_elements(vec![1, 28, 28], &x)]).unwrap();
    let got = elements::<f32>(out[0].as_ref().unwrap());
    let want = [
        0.09701859951019287,
        0.13150069117546082,
        0.19554035365581512,
        0.10028518736362457,
        0.07037368416786194,
        0.04462539404630661,
        0.04555158317089081,
        0.27350783348083496,
        0.029826031997799873,
        0.011770573444664478,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((f64::from(*g) - w).abs() < 1e-5, "{got:?}");
    }
}

/// RedisAI's fraud-detection graph (aibench's) froze training-time dropout
/// into it: a RandomUniform mask through Floor. TensorFlow's own answer is
/// therefore random; the mean over many runs is TensorFlow's (0.04674 /
/// 0.95326 over 4000 runs, per-run standard deviation 0.0185).
#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn creditcardfraud_loads_and_answers_as_tensorflow_does_on_average() {
    let m = TfBackend.load(&testdata("creditcardfraud.pb"), &opts(&["transaction", "reference"], &["output"])).unwrap();
    let t: Vec<f32> = (0..30).map(|i| i as f32 / 30.0 - 0.5).collect();
    let r: Vec<f32> = (0..256).map(|i| i as f32 / 255.0).collect();
    let inputs = [from_elements(vec![1, 30], &t), from_elements(vec![256], &r)];
    let runs = 2000;
    let mut sum = [0f64; 2];
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..runs {
        let out = m.run(&inputs).unwrap();
        let p = elements::<f32>(out[0].as_ref().unwrap());
        assert_eq!(out[0].as_ref().unwrap().shape, vec![1, 2]);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-5, "{p:?}");
        sum[0] += f64::from(p[0]);
        sum[1] += f64::from(p[1]);
        distinct.insert(p[0].to_bits());
    }
    let mean = [sum[0] / runs as f64, sum[1] / runs as f64];
    eprintln!("mean {mean:?} distinct {}", distinct.len());
    // (The mean of 2000 runs is within 0.0005 of TensorFlow's at one
    // standard deviation; 0.004 is eight.)
    assert!((mean[0] - 0.04674).abs() < 0.004 && (mean[1] - 0.95326).abs() < 0.004, "{mean:?}");
    assert!(distinct.len() > 100, "dropout makes each run differ, as in TensorFlow");
}
