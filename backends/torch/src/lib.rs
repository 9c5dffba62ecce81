//! The TORCH backend: TorchScript modules on libtorch 2.13 (the CPU-capable
//! tree `native/fetch_libtorch.sh` builds from PyPI wheels, or its CUDA tree
//! with `--gpu`), through `tch`. `GPU`/`GPU:<n>` models live on that CUDA
//! device: inputs are copied to it and outputs back for each run.
//!
//! Input names and the output count come from `forward`'s schema (a small
//! C++ shim, as tch does not expose it): RedisAI reports the argument names
//! and checks MODELEXECUTE's counts against them. Outputs are unnamed (`""`),
//! as in RedisAI.
//!
//! Scripts (AI.SCRIPTSTORE) are compiled from TorchScript source and run by
//! [`script`], through a second shim.

mod script;

pub use script::TorchScript;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Once, OnceLock};

use tch::{CModule, IValue, Kind};
use tessera_backend::{Backend, BackendError, BackendKind, DType, Device, LoadOptions, Model, Result, Tensor};

pub const LIBTORCH_VERSION: &str = "2.13.0";

extern "C" {
    fn tessera_torch_forward_schema(
        data: *const c_char,
        len: usize,
        names: *mut *mut c_char,
        names_len: *mut usize,
        n_inputs: *mut c_int,
        n_outputs: *mut c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn free(p: *mut c_void);
    fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
    fn dlerror() -> *mut c_char;
}

const RTLD_NOW: c_int = 2;
const RTLD_GLOBAL: c_int = 0x100;

/// The number of CUDA devices libtorch can use, or why it can use none.
///
/// libtorch's CUDA half lives in `libtorch_cuda.so`, which registers itself
/// when loaded; nothing links it (the linker drops it as unused), so it is
/// loaded here, once, from the loader path (`LD_LIBRARY_PATH`, then the
/// binary's runpath to the libtorch tree). The CPU-only tree setup builds
/// has no such library: then every GPU model is refused at MODELSTORE.
pub fn cuda_devices() -> std::result::Result<usize, String> {
    static CUDA: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    CUDA.get_or_init(|| {
        // Safety: dlopen/dlerror with a NUL-terminated name; the handle is
        // kept for the life of the process (the library is never closed).
        let handle = unsafe { dlopen(c"libtorch_cuda.so".as_ptr(), RTLD_NOW | RTLD_GLOBAL) };
        if handle.is_null() {
            let why = unsafe { dlerror() };
            let why = if why.is_null() {
                "unknown error".to_owned()
            } else {
                unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
            };
            return Err(format!("libtorch_cuda.so not loaded: {why}"));
        }
        if !tch::Cuda::is_available() {
            return Err("libtorch_cuda.so loaded but no CUDA device is usable".to_owned());
        }
        Ok(tch::Cuda::device_count().max(0) as usize)
    })
    .clone()
}

/// libtorch's message without the C++ backtrace that follows it.
fn torch_err(e: impl std::fmt::Display) -> BackendError {
    let text = e.to_string();
    let first = text.split("\nException raised from").next().unwrap_or(&text);
    BackendError::new(first.trim().to_owned())
}

/// `forward`'s argument names (without `self`) and output count.
fn forward_schema(blob: &[u8]) -> Result<(Vec<String>, usize)> {
    let mut names: *mut c_char = std::ptr::null_mut();
    let mut names_len = 0usize;
    let (mut n_in, mut n_out) = (0, 0);
    let mut err: *mut c_char = std::ptr::null_mut();
    // Safety: the shim reads `blob` within its length and hands back
    // malloc'd buffers (or an error string), freed here.
    let rc = unsafe {
        tessera_torch_forward_schema(
            blob.as_ptr().cast(),
            blob.len(),
            &mut names,
            &mut names_len,
            &mut n_in,
            &mut n_out,
            &mut err,
        )
    };
    if rc != 0 {
        let msg = if err.is_null() {
            "ERR Generic error".to_owned()
        } else {
            let m = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
            unsafe { free(err.cast()) };
            m
        };
        return Err(torch_err(msg));
    }
    let bytes = unsafe { std::slice::from_raw_parts(names.cast::<u8>(), names_len) }.to_vec();
    unsafe { free(names.cast()) };
    let list: Vec<String> =
        bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect();
    debug_assert_eq!(list.len(), n_in as usize);
    Ok((list, n_out.max(0) as usize))
}

pub struct TorchBackend;

impl TorchBackend {
    /// Applies the thread settings once per process (libtorch refuses to
    /// change them after parallel work has started).
    fn threads(opts: &LoadOptions) {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            if opts.intra_op_threads > 0 {
                tch::set_num_threads(opts.intra_op_threads as i32);
            }
            if opts.inter_op_threads > 0 {
                tch::set_num_interop_threads(opts.inter_op_threads as i32);
            }
        });
    }
}

impl Backend for TorchBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Torch
    }

    fn version(&self) -> String {
        LIBTORCH_VERSION.into()
    }

    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        let device = match opts.device {
            Device::Cpu(_) => tch::Device::Cpu,
            Device::Gpu(index) => match cuda_devices() {
                Ok(n) => {
                    let index = index.unwrap_or(0) as usize;
                    if index >= n {
                        return Err(BackendError::new(format!(
                            "ERR GPU:{index} requested but this node has {n} CUDA device{}",
                            if n == 1 { "" } else { "s" }
                        )));
                    }
                    tch::Device::Cuda(index)
                }
                Err(_) => return Err(BackendError::new("GPU requested but Torch couldn't find CUDA")),
            },
            Device::Tpu => return Err(BackendError::new("ERR unsupported device")),
        };
        Self::threads(opts);
        let mut module = CModule::load_data_on_device(&mut &blob[..], device).map_err(torch_err)?;
        let (inputs, n_out) = forward_schema(blob)?;
        module.set_eval();
        Ok(Arc::new(TorchModel { module, device, inputs, outputs: vec![String::new(); n_out] }))
    }

    fn compile_script(
        &self,
        source: &str,
        device: Device,
        entry_points: &[String],
    ) -> Result<Arc<dyn tessera_backend::script::Script>> {
        script::compile(source, device, entry_points)
    }
}

struct TorchModel {
    module: CModule,
    /// Where the module's weights live; inputs are copied there, outputs
    /// back to the host.
    device: tch::Device,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

// Safety: a TorchScript module's forward may run on several threads at once
// (libtorch's JIT is thread-safe for inference; RedisAI shares one module
// across its queue threads the same way).
unsafe impl Send for TorchModel {}
unsafe impl Sync for TorchModel {}

fn kind_of(d: DType) -> Result<Kind> {
    Ok(match d {
        DType::Float => Kind::Float,
        DType::Double => Kind::Double,
        DType::Int8 => Kind::Int8,
        DType::Int16 => Kind::Int16,
        DType::Int32 => Kind::Int,
        DType::Int64 => Kind::Int64,
        DType::Uint8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
        DType::Uint16 => return Err(BackendError::new("Unsupported kUInt bits 16")),
        DType::String => return Err(BackendError::new("ERR Unsupported input data type: STRING")),
    })
}

fn dtype_of(k: Kind) -> Result<DType> {
    Ok(match k {
        Kind::Float => DType::Float,
        Kind::Double => DType::Double,
        Kind::Int8 => DType::Int8,
        Kind::Int16 => DType::Int16,
        Kind::Int => DType::Int32,
        Kind::Int64 => DType::Int64,
        Kind::Uint8 => DType::Uint8,
        Kind::Bool => DType::Bool,
        other => return Err(BackendError::new(format!("{other:?} is not supported by dlpack"))),
    })
}

fn to_torch(t: &Tensor) -> Result<tch::Tensor> {
    Ok(tch::Tensor::from_data_size(&t.data, &t.shape, kind_of(t.dtype)?))
}

fn from_torch(t: &tch::Tensor) -> Result<Tensor> {
    let dtype = dtype_of(t.kind())?;
    // A no-op for host tensors; a device-to-host copy for CUDA ones.
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let n = t.numel();
    let elem = dtype.size().unwrap_or(1);
    let mut data = vec![0u8; n * elem];
    t.copy_data_u8(&mut data, n);
    Ok(Tensor { dtype, shape: t.size(), data: data.into() })
}

fn outputs(v: IValue, out: &mut Vec<Option<Tensor>>) -> Result<()> {
    match v {
        IValue::Tensor(t) => out.push(Some(from_torch(&t)?)),
        IValue::Tuple(items) | IValue::GenericList(items) => {
            for i in items {
                outputs(i, out)?;
            }
        }
        IValue::TensorList(ts) => {
            for t in ts {
                out.push(Some(from_torch(&t)?));
            }
        }
        _ => return Err(BackendError::new("Function returned non-tensor values")),
    }
    Ok(())
}

impl Model for TorchModel {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        let args = inputs
            .iter()
            .map(|t| to_torch(t).map(|t| IValue::Tensor(t.to_device(self.device))))
            .collect::<Result<Vec<_>>>()?;
        let result = tch::no_grad(|| self.module.forward_is(&args)).map_err(torch_err)?;
        let mut out = Vec::with_capacity(self.outputs.len());
        outputs(result, &mut out)?;
        if out.len() != self.outputs.len() {
            return Err(BackendError::new("ERR Model did not generate the expected number of outputs"));
        }
        Ok(out)
    }
}
