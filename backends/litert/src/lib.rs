//! TFLite models on LiteRT, Google's TFLite runtime, through its C API.
//!
//! The library is `libLiteRt.so` from the `ai-edge-litert` wheel on PyPI
//! (`native/setup_litert.sh` fetches it; no other channel this project can
//! reach ships a TFLite runtime library), loaded at run time as ONNX
//! Runtime is. It runs every TFLite operator, quantized ones included,
//! with TFLite's own kernels, so answers are TFLite's.
//!
//! The C API declared here is LiteRT 2.3.0's (the version setup pins): the
//! environment comes first when a model is created, tensor layouts are
//! inline arrays of at most 8 dimensions, CPU threads are an `xnnpack`
//! option. A compiled model is not safe to run from two threads at once,
//! so each model's runs take turns (RedisAI's TFLite backend runs one at a
//! time per model too).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr::{null, null_mut};
use std::sync::Arc;

use libloading::Library;
use parking_lot::Mutex;
use tessera_backend::{Backend, BackendError, BackendKind, DType, Device, LoadOptions, Model, Result, Tensor};

/// The LiteRT release setup fetches, whose C API this file declares (the
/// library reports no version of its own).
pub const LITERT_VERSION: &str = "2.3.0";

type Status = c_int;
type Index = usize;
type Handle = *mut c_void;

/// `LiteRtLayout`: rank (bits 0..6) and has_strides (bit 7) in one word,
/// then inline dimensions and strides.
#[repr(C)]
#[derive(Clone, Copy)]
struct Layout {
    rank_bits: u32,
    dimensions: [i32; 8],
    strides: [u32; 8],
}

/// `LiteRtRankedTensorType`.
#[repr(C)]
#[derive(Clone, Copy)]
struct RankedTensorType {
    element_type: c_int,
    layout: Layout,
}

/// `LiteRtAny` holding an integer.
#[repr(C)]
struct AnyInt {
    kind: c_int,
    value: i64,
}

/// `LiteRtEnvOption`.
#[repr(C)]
struct EnvOption {
    tag: c_int,
    value: AnyInt,
}

const ANY_INT: c_int = 2;
/// Which accelerators the environment registers: CPU only (no attempt to
/// load GPU or NPU plugins).
const ENV_AUTO_REGISTER_ACCELERATORS: c_int = 24;
/// LiteRT's own log: errors only.
const ENV_MIN_LOGGER_SEVERITY: c_int = 25;
const HW_CPU: c_int = 1;
const LOCK_READ: c_int = 0;
const LOCK_WRITE: c_int = 1;

macro_rules! api {
    ($($name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The LiteRT functions this backend calls, resolved once.
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
            _lib: Library,
        }

        impl Api {
            #[allow(non_snake_case)]
            fn load(path: &Path) -> std::result::Result<Api, String> {
                // SAFETY: loading runs the library's initialisers; libLiteRt
                // has no global constructors beyond the C++ runtime's.
                let lib = unsafe { Library::new(path) }.map_err(|e| e.to_string())?;
                $(
                    // SAFETY: the symbol's C signature is the one declared
                    // above (LiteRT 2.3.0's headers).
                    let $name = *unsafe {
                        lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(concat!(stringify!($name), "\0").as_bytes())
                    }
                    .map_err(|e| format!("{}: {e}", stringify!($name)))?;
                )*
                Ok(Api { $($name,)* _lib: lib })
            }
        }
    };
}

api! {
    LiteRtCreateEnvironment: fn(c_int, *const EnvOption, *mut Handle) -> Status;
    LiteRtDestroyEnvironment: fn(Handle);
    LiteRtCreateModelFromBuffer: fn(Handle, *const c_void, usize, *mut Handle) -> Status;
    LiteRtDestroyModel: fn(Handle);
    LiteRtGetNumModelSignatures: fn(Handle, *mut Index) -> Status;
    LiteRtGetModelSignature: fn(Handle, Index, *mut Handle) -> Status;
    LiteRtGetNumSignatureInputs: fn(Handle, *mut Index) -> Status;
    LiteRtGetNumSignatureOutputs: fn(Handle, *mut Index) -> Status;
    LiteRtGetSignatureInputName: fn(Handle, Index, *mut *const c_char) -> Status;
    LiteRtGetSignatureOutputName: fn(Handle, Index, *mut *const c_char) -> Status;
    LiteRtGetSignatureInputTensorByIndex: fn(Handle, Index, *mut Handle) -> Status;
    LiteRtGetSignatureOutputTensorByIndex: fn(Handle, Index, *mut Handle) -> Status;
    LiteRtGetRankedTensorType: fn(Handle, *mut RankedTensorType) -> Status;
    LiteRtCreateOptions: fn(*mut Handle) -> Status;
    LiteRtDestroyOptions: fn(Handle);
    LiteRtSetOptionsHardwareAccelerators: fn(Handle, c_int) -> Status;
    LiteRtCreateOpaqueOptions: fn(*const c_char, *mut c_void, Option<unsafe extern "C" fn(*mut c_void)>, *mut Handle) -> Status;
    LiteRtAddOpaqueOptions: fn(Handle, Handle) -> Status;
    LiteRtCreateCompiledModel: fn(Handle, Handle, Handle, *mut Handle) -> Status;
    LiteRtDestroyCompiledModel: fn(Handle);
    LiteRtGetCompiledModelInputBufferRequirements: fn(Handle, Index, Index, *mut Handle) -> Status;
    LiteRtGetCompiledModelOutputBufferRequirements: fn(Handle, Index, Index, *mut Handle) -> Status;
    LiteRtCreateManagedTensorBufferFromRequirements: fn(Handle, *const RankedTensorType, Handle, *mut Handle) -> Status;
    LiteRtGetTensorBufferPackedSize: fn(Handle, *mut usize) -> Status;
    LiteRtLockTensorBuffer: fn(Handle, *mut *mut c_void, c_int) -> Status;
    LiteRtUnlockTensorBuffer: fn(Handle) -> Status;
    LiteRtDestroyTensorBuffer: fn(Handle);
    LiteRtRunCompiledModel: fn(Handle, Index, usize, *mut Handle, usize, *mut Handle) -> Status;
}

/// LiteRT's status codes, in words (the library has no function for it).
fn status_text(s: Status) -> &'static str {
    match s {
        1 => "invalid argument",
        2 => "memory allocation failure",
        3 => "runtime failure",
        4 => "missing input tensor",
        5 => "unsupported",
        6 => "not found",
        7 => "timeout expired",
        8 => "wrong version",
        500 => "file I/O",
        501 => "invalid flatbuffer",
        502 => "dynamic loading",
        504 => "compilation",
        1000 => "index out of bounds",
        _ => "unknown error",
    }
}

fn check(s: Status, what: &str) -> Result<()> {
    match s {
        0 => Ok(()),
        s => Err(BackendError::new(format!("ERR TFLite (LiteRT) {what} failed: {} ({s})", status_text(s)))),
    }
}

/// The library and the environment every model of this backend shares.
struct Runtime {
    api: Api,
    env: Handle,
    /// Models are created and compiled one at a time (LiteRT does not
    /// promise that concurrent creation in one environment is safe).
    creating: Mutex<()>,
}

// SAFETY: the environment is created once and only read afterwards (models
// are created in it); LiteRT's environment is shared across threads by
// design.
unsafe impl Send for Runtime {}
unsafe impl Sync for Runtime {}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: every model holds an `Arc<Runtime>`: none is left.
        unsafe { (self.api.LiteRtDestroyEnvironment)(self.env) };
    }
}

/// TFLite on LiteRT.
pub struct LiteRtBackend {
    rt: Arc<Runtime>,
    threads: usize,
}

impl LiteRtBackend {
    /// Loads `libLiteRt.so` from `path`; models run on `threads` CPU
    /// threads each.
    pub fn load(path: &Path, threads: usize) -> Result<LiteRtBackend> {
        let api = Api::load(path).map_err(|e| BackendError::new(format!("cannot load {}: {e}", path.display())))?;
        let options = [
            EnvOption { tag: ENV_MIN_LOGGER_SEVERITY, value: AnyInt { kind: ANY_INT, value: 3 } },
            EnvOption { tag: ENV_AUTO_REGISTER_ACCELERATORS, value: AnyInt { kind: ANY_INT, value: HW_CPU.into() } },
        ];
        let mut env = null_mut();
        // SAFETY: two valid options; `env` receives the handle.
        check(unsafe { (api.LiteRtCreateEnvironment)(2, options.as_ptr(), &mut env) }, "environment")?;
        Ok(LiteRtBackend { rt: Arc::new(Runtime { api, env, creating: Mutex::new(()) }), threads: threads.max(1) })
    }
}

/// LiteRT's element types (TfLiteType's values) and the tensor types they
/// hold; STRING and the others have no counterpart here.
const ELEMENT_TYPES: [(c_int, DType); 9] = [
    (1, DType::Float),
    (2, DType::Int32),
    (3, DType::Uint8),
    (4, DType::Int64),
    (6, DType::Bool),
    (7, DType::Int16),
    (9, DType::Int8),
    (11, DType::Double),
    (17, DType::Uint16),
];

fn dtype_of(element_type: c_int) -> Result<DType> {
    ELEMENT_TYPES
        .iter()
        .find(|(e, _)| *e == element_type)
        .map(|(_, d)| *d)
        .ok_or_else(|| BackendError::new(format!("ERR TFLite tensor type {element_type} is not supported")))
}

fn shape_of(t: &RankedTensorType) -> Vec<i64> {
    let rank = (t.layout.rank_bits & 0x7f) as usize;
    t.layout.dimensions[..rank.min(8)].iter().map(|d| i64::from(*d)).collect()
}

/// A model's bytes, 64-byte aligned, as LiteRT reads them for the model's
/// whole life.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn copy(bytes: &[u8]) -> Result<Aligned> {
        let layout = std::alloc::Layout::from_size_align(bytes.len().max(1), 64)
            .map_err(|e| BackendError::new(format!("ERR model too large: {e}")))?;
        // SAFETY: a non-zero size; the copy fills what is read.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(BackendError::new("ERR out of memory for the model"));
        }
        // SAFETY: `ptr` holds `layout.size() >= bytes.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        Ok(Aligned { ptr, layout })
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `copy` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// What runs take turns on: the compiled model and its buffers.
struct Compiled {
    model: Handle,
    inputs: Vec<Handle>,
    outputs: Vec<Handle>,
}

struct LiteRtModel {
    rt: Arc<Runtime>,
    /// The model (signature 0: a model without signatures gets one made of
    /// its main subgraph's inputs and outputs).
    handle: Handle,
    compiled: Mutex<Compiled>,
    input_names: Vec<String>,
    output_names: Vec<String>,
    input_types: Vec<(DType, Vec<i64>)>,
    output_types: Vec<(DType, Vec<i64>)>,
    /// Read by LiteRT until the model is destroyed: dropped after it.
    _bytes: Aligned,
}

// SAFETY: the model handle is only read after load; the compiled model and
// its buffers are used under the mutex, one run at a time.
unsafe impl Send for LiteRtModel {}
unsafe impl Sync for LiteRtModel {}

impl Drop for LiteRtModel {
    fn drop(&mut self) {
        let api = &self.rt.api;
        let c = self.compiled.get_mut();
        // SAFETY: in LiteRT's order: buffers, compiled model, model (the
        // environment and the bytes go after, with `rt` and `_bytes`).
        unsafe {
            for b in c.inputs.iter().chain(&c.outputs) {
                (api.LiteRtDestroyTensorBuffer)(*b);
            }
            if !c.model.is_null() {
                (api.LiteRtDestroyCompiledModel)(c.model);
            }
            (api.LiteRtDestroyModel)(self.handle);
        }
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: LiteRT returns NUL-terminated names owned by the model.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

unsafe extern "C" fn free_cstring(p: *mut c_void) {
    // SAFETY: made by `CString::into_raw` below, freed once by LiteRT.
    drop(unsafe { CString::from_raw(p.cast()) });
}

impl Backend for LiteRtBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::TfLite
    }

    fn version(&self) -> String {
        format!("LiteRT-{LITERT_VERSION}")
    }

    fn load(&self, blob: &[u8], opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        match opts.device {
            Device::Cpu(_) => {}
            Device::Gpu(_) => return Err(BackendError::new("ERR GPU requested but TFLite couldn't find CUDA")),
            Device::Tpu => return Err(BackendError::new("ERR unsupported device")),
        }
        let (rt, api) = (self.rt.clone(), &self.rt.api);
        let _one_at_a_time = rt.creating.lock();
        let bytes = Aligned::copy(blob)?;
        let mut handle = null_mut();
        // SAFETY: `bytes` outlives the model (both are owned by the
        // `LiteRtModel` built below, or dropped here in order on error).
        let s = unsafe { (api.LiteRtCreateModelFromBuffer)(rt.env, bytes.ptr.cast(), blob.len(), &mut handle) };
        if s != 0 {
            return Err(BackendError::new("Failed to load model from buffer"));
        }
        // From here on, `model` owns the handle (and frees it on error).
        let mut model = LiteRtModel {
            rt: rt.clone(),
            handle,
            compiled: Mutex::new(Compiled { model: null_mut(), inputs: Vec::new(), outputs: Vec::new() }),
            input_names: Vec::new(),
            output_names: Vec::new(),
            input_types: Vec::new(),
            output_types: Vec::new(),
            _bytes: bytes,
        };
        let (mut signatures, mut sig) = (0, null_mut());
        // SAFETY (this block): handles from LiteRT, out-pointers to locals.
        unsafe {
            check((api.LiteRtGetNumModelSignatures)(handle, &mut signatures), "reading the model")?;
            if signatures == 0 {
                return Err(BackendError::new("ERR TFLite model has no signature"));
            }
            check((api.LiteRtGetModelSignature)(handle, 0, &mut sig), "reading the model")?;
            let (mut n_in, mut n_out) = (0, 0);
            check((api.LiteRtGetNumSignatureInputs)(sig, &mut n_in), "reading the model")?;
            check((api.LiteRtGetNumSignatureOutputs)(sig, &mut n_out), "reading the model")?;
            for i in 0..n_in {
                let (name, ty) = signature_tensor(
                    api,
                    (api.LiteRtGetSignatureInputName, api.LiteRtGetSignatureInputTensorByIndex),
                    sig,
                    i,
                    "reading an input",
                )?;
                model.input_names.push(name);
                model.input_types.push(ty);
            }
            for i in 0..n_out {
                let (name, ty) = signature_tensor(
                    api,
                    (api.LiteRtGetSignatureOutputName, api.LiteRtGetSignatureOutputTensorByIndex),
                    sig,
                    i,
                    "reading an output",
                )?;
                model.output_names.push(name);
                model.output_types.push(ty);
            }
            let mut options = null_mut();
            check((api.LiteRtCreateOptions)(&mut options), "compiling")?;
            let payload = CString::new(format!("num_threads = {}\n", self.threads)).expect("no NUL");
            let mut cpu = null_mut();
            let configured = check((api.LiteRtSetOptionsHardwareAccelerators)(options, HW_CPU), "compiling")
                .and_then(|()| {
                    let payload = payload.into_raw();
                    let s = (api.LiteRtCreateOpaqueOptions)(
                        c"xnnpack".as_ptr(),
                        payload.cast(),
                        Some(free_cstring),
                        &mut cpu,
                    );
                    if s != 0 {
                        // (Not taken: still ours to free.)
                        drop(CString::from_raw(payload));
                    }
                    check(s, "compiling")
                })
                // (The options own the CPU options from here.)
                .and_then(|()| check((api.LiteRtAddOpaqueOptions)(options, cpu), "compiling"));
            let compiled = configured.and_then(|()| {
                let mut cm = null_mut();
                check((api.LiteRtCreateCompiledModel)(rt.env, handle, options, &mut cm), "compiling").map(|()| cm)
            });
            (api.LiteRtDestroyOptions)(options);
            let c = model.compiled.get_mut();
            c.model = compiled?;
            for (i, (dtype, shape)) in model.input_types.iter().enumerate() {
                let mut req = null_mut();
                check((api.LiteRtGetCompiledModelInputBufferRequirements)(c.model, 0, i, &mut req), "allocating")?;
                c.inputs.push(buffer(api, rt.env, *dtype, shape, req)?);
            }
            for (i, (dtype, shape)) in model.output_types.iter().enumerate() {
                let mut req = null_mut();
                check((api.LiteRtGetCompiledModelOutputBufferRequirements)(c.model, 0, i, &mut req), "allocating")?;
                c.outputs.push(buffer(api, rt.env, *dtype, shape, req)?);
            }
        }
        Ok(Arc::new(model))
    }
}

/// The LiteRT calls naming a signature's `i`th input (or output) and giving
/// its tensor.
type SignatureAccess = (
    unsafe extern "C" fn(Handle, Index, *mut *const c_char) -> Status,
    unsafe extern "C" fn(Handle, Index, *mut Handle) -> Status,
);

/// The name, type and shape of tensor `i` of signature `sig`, read with
/// `access` (its inputs' or its outputs' calls).
///
/// # Safety
/// `sig` is a live signature of a live model.
unsafe fn signature_tensor(
    api: &Api,
    access: SignatureAccess,
    sig: Handle,
    i: Index,
    what: &str,
) -> Result<(String, (DType, Vec<i64>))> {
    let (mut name, mut t) = (null(), null_mut());
    // SAFETY: per this function's contract; out-pointers to locals.
    let mut ty = unsafe { std::mem::zeroed::<RankedTensorType>() };
    check(unsafe { (access.0)(sig, i, &mut name) }, what)?;
    check(unsafe { (access.1)(sig, i, &mut t) }, what)?;
    check(unsafe { (api.LiteRtGetRankedTensorType)(t, &mut ty) }, what)?;
    Ok((cstr(name), (dtype_of(ty.element_type)?, shape_of(&ty))))
}

/// A tensor buffer LiteRT manages, for a tensor of `dtype` and `shape`.
///
/// # Safety
/// `env` and `req` are live LiteRT handles.
unsafe fn buffer(api: &Api, env: Handle, dtype: DType, shape: &[i64], req: Handle) -> Result<Handle> {
    let Some(&(element_type, _)) = ELEMENT_TYPES.iter().find(|(_, d)| *d == dtype) else {
        return Err(BackendError::new(format!("ERR TFLite {} tensors are not supported", dtype.name())));
    };
    let mut layout = Layout { rank_bits: shape.len() as u32, dimensions: [0; 8], strides: [0; 8] };
    for (d, s) in layout.dimensions.iter_mut().zip(shape) {
        *d = *s as i32;
    }
    let ty = RankedTensorType { element_type, layout };
    let mut b = null_mut();
    // SAFETY: per this function's contract; `ty` lives across the call.
    check(unsafe { (api.LiteRtCreateManagedTensorBufferFromRequirements)(env, &ty, req, &mut b) }, "allocating")?;
    Ok(b)
}

impl Model for LiteRtModel {
    fn inputs(&self) -> &[String] {
        &self.input_names
    }

    fn outputs(&self) -> &[String] {
        &self.output_names
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        if inputs.len() != self.input_types.len() {
            return Err(BackendError::new(format!(
                "ERR TFLite model takes {} inputs, {} given",
                self.input_types.len(),
                inputs.len()
            )));
        }
        for (i, (t, (dtype, shape))) in inputs.iter().zip(&self.input_types).enumerate() {
            if t.dtype != *dtype || t.shape != *shape {
                return Err(BackendError::new(format!(
                    "ERR TFLite input {i} must be {} {:?}, got {} {:?}",
                    dtype.name(),
                    shape,
                    t.dtype.name(),
                    t.shape
                )));
            }
        }
        let api = &self.rt.api;
        let mut c = self.compiled.lock();
        let c = &mut *c;
        // SAFETY (this block): the compiled model and its buffers are
        // used by this run only (the mutex); each buffer is locked while
        // its bytes are copied, within the size LiteRT reports.
        unsafe {
            for (b, t) in c.inputs.iter().zip(inputs) {
                write(api, *b, &t.data)?;
            }
            let (n_in, n_out) = (c.inputs.len(), c.outputs.len());
            let s =
                (api.LiteRtRunCompiledModel)(c.model, 0, n_in, c.inputs.as_mut_ptr(), n_out, c.outputs.as_mut_ptr());
            check(s, "run")?;
            let mut outs = Vec::with_capacity(n_out);
            for (b, (dtype, shape)) in c.outputs.iter().zip(&self.output_types) {
                outs.push(Some(Tensor { dtype: *dtype, shape: shape.clone(), data: read(api, *b)?.into() }));
            }
            Ok(outs)
        }
    }
}

/// Copies `data` into buffer `b`.
///
/// # Safety
/// `b` is a live tensor buffer no one else uses meanwhile.
unsafe fn write(api: &Api, b: Handle, data: &[u8]) -> Result<()> {
    let mut size = 0;
    check(unsafe { (api.LiteRtGetTensorBufferPackedSize)(b, &mut size) }, "writing an input")?;
    if size != data.len() {
        return Err(BackendError::new(format!("ERR TFLite input holds {size} bytes, {} given", data.len())));
    }
    let mut p = null_mut();
    check(unsafe { (api.LiteRtLockTensorBuffer)(b, &mut p, LOCK_WRITE) }, "writing an input")?;
    // SAFETY: the locked buffer holds `size` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), size) };
    check(unsafe { (api.LiteRtUnlockTensorBuffer)(b) }, "writing an input")
}

/// The bytes of buffer `b`.
///
/// # Safety
/// As [`write`].
unsafe fn read(api: &Api, b: Handle) -> Result<Vec<u8>> {
    let mut size = 0;
    check(unsafe { (api.LiteRtGetTensorBufferPackedSize)(b, &mut size) }, "reading an output")?;
    let mut p = null_mut();
    check(unsafe { (api.LiteRtLockTensorBuffer)(b, &mut p, LOCK_READ) }, "reading an output")?;
    // SAFETY: the locked buffer holds `size` bytes.
    let out = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) }.to_vec();
    check(unsafe { (api.LiteRtUnlockTensorBuffer)(b) }, "reading an output")?;
    Ok(out)
}
