use bytes::Bytes;
use tessera_backend::mock::MockBackend;
use tessera_backend::{elements, from_elements, Backend, LoadOptions};
use tessera_common::model::{BackendKind, Device, ModelDef};

use super::*;

fn mock(op: &str, batchsize: u64, min: u64, min_timeout: u64) -> Arc<StoredModel> {
    let def = ModelDef {
        backend: BackendKind::Onnx,
        device_name: "CPU:7".into(),
        device: Device::Cpu(Some(7)),
        tag: Bytes::new(),
        batchsize,
        minbatchsize: min,
        minbatchtimeout: min_timeout,
        inputs: Vec::new(),
        outputs: Vec::new(),
        blob: Bytes::from(op.to_owned()).into(),
    };
    let loaded = MockBackend.load(op.as_bytes(), &LoadOptions::default()).unwrap();
    StoredModel::with_loaded(def, loaded)
}

fn x(rows: usize, v: f32) -> Vec<Tensor> {
    vec![from_elements(vec![rows as i64, 2], &vec![v; rows * 2])]
}

fn wait(rx: oneshot::Receiver<RunResult>) -> RunResult {
    rx.blocking_recv().unwrap()
}

#[test]
fn runs_and_counts() {
    let m = mock("mock:double", 0, 0, 0);
    let r = wait(engine().submit(m.clone(), x(1, 2.0), None, 1));
    let RunResult::Done(out) = r else { panic!("{r:?}") };
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![4.0, 4.0]);
    assert_eq!(m.stats.calls.load(Ordering::Relaxed), 1);
    assert_eq!(m.stats.samples.load(Ordering::Relaxed), 1);
}

#[test]
fn queued_requests_form_one_batch() {
    // A slow model occupies the single worker; the requests queued
    // behind it are then served as one batch of 4 rows.
    let slow = mock("mock:double:sleep=200", 0, 0, 0);
    let m = mock("mock:double", 4, 0, 0);
    let blocker = engine().submit(slow, x(1, 0.0), None, 1);
    std::thread::sleep(Duration::from_millis(20));
    let rxs: Vec<_> = (0..4).map(|i| engine().submit(m.clone(), x(1, i as f32), None, 1)).collect();
    wait(blocker);
    for (i, rx) in rxs.into_iter().enumerate() {
        let RunResult::Done(out) = wait(rx) else { panic!() };
        assert_eq!(out[0].as_ref().unwrap().shape, vec![1, 2]);
        assert_eq!(elements::<f32>(out[0].as_ref().unwrap())[0], 2.0 * i as f32);
    }
    assert_eq!(m.stats.calls.load(Ordering::Relaxed), 4);
    // One run for all four: every request is charged the batch's time,
    // so the four durations are equal (4 × one run).
    assert_eq!(m.stats.duration_us.load(Ordering::Relaxed) % 4, 0);
}

#[test]
fn min_batch_waits_then_times_out() {
    let m = mock("mock:double", 4, 2, 150);
    let start = Instant::now();
    let r = wait(engine().submit(m.clone(), x(1, 1.0), None, 1));
    assert!(matches!(r, RunResult::Done(_)));
    assert!(start.elapsed() >= Duration::from_millis(150), "ran before MINBATCHTIMEOUT");
    // Without MINBATCHTIMEOUT a lone request waits until its TIMEOUT.
    let m = mock("mock:double", 4, 2, 0);
    let r = wait(engine().submit(m, x(1, 1.0), Some(Duration::from_millis(50)), 1));
    assert!(matches!(r, RunResult::TimedOut), "{r:?}");
}

#[test]
fn gpu_batches_are_padded_to_batchsize() {
    let mut m = mock("mock:rows", 4, 0, 0);
    let mut def = m.def.clone();
    def.device = Device::Gpu(Some(3));
    def.device_name = "GPU:3".into();
    m = StoredModel::with_loaded(def, MockBackend.load(b"mock:rows", &LoadOptions::default()).unwrap());
    // One row in, run as four (the padding's rows are dropped).
    let RunResult::Done(out) = wait(engine().submit(m.clone(), x(1, 1.0), None, 1)) else { panic!() };
    let y = out[0].as_ref().unwrap();
    assert_eq!(y.shape, vec![1, 2]);
    assert_eq!(elements::<f32>(y), vec![4.0, 4.0]);
    assert_eq!(m.stats.samples.load(Ordering::Relaxed), 1);
    // The same model on a CPU runs the rows it was given.
    let cpu = mock("mock:rows", 4, 0, 0);
    let RunResult::Done(out) = wait(engine().submit(cpu, x(1, 1.0), None, 1)) else { panic!() };
    assert_eq!(elements::<f32>(out[0].as_ref().unwrap()), vec![1.0, 1.0]);
    // A GPU model whose output is not per row fails padded: it runs as
    // it came (a lone request works, as on a CPU), and is not padded again.
    let mut def = mock("mock:badbatch", 4, 0, 0).def.clone();
    def.device = Device::Gpu(None);
    let odd = StoredModel::with_loaded(def, MockBackend.load(b"mock:badbatch", &LoadOptions::default()).unwrap());
    assert!(matches!(wait(engine().submit(odd.clone(), x(1, 1.0), None, 1)), RunResult::Done(_)));
    assert!(odd.no_padding.load(Ordering::Relaxed));
    assert!(matches!(wait(engine().submit(odd, x(1, 1.0), None, 1)), RunResult::Done(_)));
}

#[test]
fn bad_batch_fails_every_request() {
    let slow = mock("mock:double:sleep=100", 0, 0, 0);
    let m = mock("mock:badbatch", 4, 0, 0);
    let blocker = engine().submit(slow, x(1, 0.0), None, 1);
    std::thread::sleep(Duration::from_millis(20));
    let a = engine().submit(m.clone(), x(1, 1.0), None, 1);
    let b = engine().submit(m.clone(), x(1, 1.0), None, 1);
    wait(blocker);
    for rx in [a, b] {
        let RunResult::Failed(e) = wait(rx) else { panic!() };
        assert_eq!(e, crate::error::Error::Model(batch::BAD_BATCH.into()));
    }
    assert_eq!(m.stats.errors.load(Ordering::Relaxed), 2);
}
