//! The TORCH backend against libtorch and RedisAI's TorchScript test model.

use tessera_backend::{elements, from_elements, Backend, Device, LoadOptions};
use tessera_backend_torch::TorchBackend;
use tessera_tests::testdata;

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn pt_minimal_adds() {
    // RedisAI's pt-minimal.pt (saved by libtorch 1.x): forward(a, b) = a + b.
    let m = TorchBackend.load(&testdata("pt-minimal.pt"), &LoadOptions::default()).unwrap();
    assert_eq!(m.inputs(), ["a", "b"]);
    assert_eq!(m.outputs(), [""]);
    let a = from_elements(vec![2, 2], &[2f32, 3.0, 2.0, 3.0]);
    let out = m.run(&[a.clone(), a.clone()]).unwrap();
    let y = out[0].as_ref().unwrap();
    assert_eq!(y.shape, vec![2, 2]);
    assert_eq!(elements::<f32>(y), vec![4.0, 6.0, 4.0, 6.0]);
    // Concurrent runs share the module.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert!(m.run(&[a.clone(), a.clone()]).is_ok());
                }
            });
        }
    });
}

#[test]
#[cfg_attr(no_testdata, ignore = "needs RedisAI's test models: ../shared/testdata or TESSERA_TESTDATA")]
fn torch_errors_are_clear() {
    let e = TorchBackend.load(b"not a zip", &LoadOptions::default()).err().unwrap();
    assert!(e.0.contains("PytorchStreamReader") || e.0.contains("zip"), "{e}");
    assert!(!e.0.contains('\n'));
    let gpu = LoadOptions { device: Device::Gpu(None), ..Default::default() };
    match tessera_backend_torch::cuda_devices() {
        // The CPU-only libtorch tree, or no usable device: RedisAI's error.
        Err(why) => {
            eprintln!("no CUDA: {why}");
            assert_eq!(
                TorchBackend.load(&testdata("pt-minimal.pt"), &gpu).err().unwrap().0,
                "GPU requested but Torch couldn't find CUDA"
            );
        }
        // A GPU machine: the model runs there, and a missing device is refused.
        Ok(n) => {
            let m = TorchBackend.load(&testdata("pt-minimal.pt"), &gpu).unwrap();
            let a = from_elements(vec![2], &[1f32, 2.0]);
            assert_eq!(elements::<f32>(m.run(&[a.clone(), a]).unwrap()[0].as_ref().unwrap()), vec![2.0, 4.0]);
            let missing = LoadOptions { device: Device::Gpu(Some(n as u32)), ..Default::default() };
            let e = TorchBackend.load(&testdata("pt-minimal.pt"), &missing).err().unwrap().0;
            assert!(e.contains("requested but this node has"), "{e}");
        }
    }
    let m = TorchBackend.load(&testdata("pt-minimal.pt"), &LoadOptions::default()).unwrap();
    let a = from_elements(vec![2], &[1f32, 2.0]);
    let b = from_elements(vec![3], &[1f32, 2.0, 3.0]);
    let e = m.run(&[a.clone(), b]).unwrap_err();
    assert!(e.0.contains("size of tensor"), "{e}");
    let u16s = tessera_backend::from_elements(vec![2], &[1u16, 2]);
    assert_eq!(m.run(&[u16s, a.clone()]).unwrap_err().0, "Unsupported kUInt bits 16");
    assert!(m.run(&[a.clone(), a]).is_ok());
}
