//! TorchScript scripts on libtorch, through `script.cpp`: compile a
//! script's source, check its entry points, run its functions, and pass the
//! script's `redis.execute` / `redisAI.model_execute` calls to the
//! [`ScriptHost`] of the run.
//!
//! The host of a run is known to C++ through a thread-local pointer for the
//! length of the run, so one compiled script runs on several threads at
//! once, each with its own host.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tessera_backend::script::{HostReply, Script, ScriptCall, ScriptHost};
use tessera_backend::{BackendError, Device, Result, Tensor};
use torch_sys::C_tensor;

use super::{cuda_devices, free, from_torch, to_torch, torch_err};

#[repr(C)]
#[derive(Clone, Copy)]
struct TsStr {
    ptr: *const c_char,
    len: usize,
}

impl TsStr {
    fn of(b: &[u8]) -> TsStr {
        TsStr { ptr: b.as_ptr().cast(), len: b.len() }
    }

    /// Safety: `ptr` must point to `len` readable bytes.
    unsafe fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.ptr.cast(), self.len)
    }
}

/// One node of a reply tree, flattened in pre-order (see `script.cpp`).
#[repr(C)]
struct TsReply {
    kind: i32,
    n: i64,
    ptr: *const c_char,
}

type ExecCb = extern "C" fn(*mut c_void, *const TsStr, usize, *mut *const TsReply, *mut usize, *mut TsStr) -> c_int;
type ModelCb = extern "C" fn(
    *mut c_void,
    TsStr,
    *const *mut C_tensor,
    usize,
    i64,
    *mut *const *mut C_tensor,
    *mut usize,
    *mut TsStr,
) -> c_int;

extern "C" {
    fn tessera_script_init(exec: ExecCb, model: ModelCb, err: *mut *mut c_char) -> c_int;
    fn tessera_script_compile(src: *const c_char, len: usize, err: *mut *mut c_char) -> *mut c_void;
    fn tessera_script_free(h: *mut c_void);
    fn tessera_script_signature(h: *mut c_void, f: *const c_char, f_len: usize, kinds: *mut i32, cap: usize) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn tessera_script_run(
        h: *mut c_void,
        f: *const c_char,
        f_len: usize,
        entry: c_int,
        device: c_int,
        inputs: *const *mut C_tensor,
        n_in: usize,
        keys: *const TsStr,
        n_keys: usize,
        args: *const TsStr,
        n_args: usize,
        n_outputs: i64,
        host: *mut c_void,
        outs: *mut *mut *mut C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Takes a malloc'd message from C++ (freeing it).
fn take_err(err: *mut c_char) -> String {
    if err.is_null() {
        return "ERR Generic error".to_owned();
    }
    // Safety: C++ handed over a NUL-terminated malloc'd string.
    let m = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { free(err.cast()) };
    m
}

/// Registers the script operators once per process.
fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        let mut err = std::ptr::null_mut();
        // Safety: the callbacks are plain functions that live forever.
        match unsafe { tessera_script_init(exec_cb, model_cb, &mut err) } {
            0 => Ok(()),
            _ => Err(take_err(err)),
        }
    })
    .clone()
    .map_err(BackendError::new)
}

// Argument kinds, as `script.cpp` reports them.
const TENSOR_LIST: i32 = 2;
const STR_LIST: i32 = 3;

/// A compiled script.
pub struct TorchScript {
    handle: NonNull<c_void>,
    /// -1: the CPU; k: CUDA device k.
    device: c_int,
    entry_points: Vec<String>,
}

// Safety: a compilation unit is not changed after it is defined, and
// libtorch runs its functions on several threads at once (each function
// guards its own executor); RedisAI shares one script across its queue
// threads the same way.
unsafe impl Send for TorchScript {}
unsafe impl Sync for TorchScript {}

impl Drop for TorchScript {
    fn drop(&mut self) {
        // Safety: the handle came from tessera_script_compile, freed once.
        unsafe { tessera_script_free(self.handle.as_ptr()) }
    }
}

impl TorchScript {
    /// Compiles `source` (up to its first NUL, as RedisAI reads it) for
    /// `device`, and checks each entry point's signature, with RedisAI's
    /// errors.
    pub fn compile(source: &str, device: Device, entry_points: &[String]) -> Result<TorchScript> {
        init()?;
        let device = match device {
            Device::Cpu(_) => -1,
            Device::Gpu(index) => match cuda_devices() {
                Ok(n) if (index.unwrap_or(0) as usize) < n => index.unwrap_or(0) as c_int,
                Ok(n) => {
                    return Err(BackendError::new(format!(
                        "ERR GPU:{} requested but this node has {n} CUDA device{}",
                        index.unwrap_or(0),
                        if n == 1 { "" } else { "s" }
                    )))
                }
                Err(_) => return Err(BackendError::new("GPU requested but Torch couldn't find CUDA")),
            },
            Device::Tpu => return Err(BackendError::new("ERR Error configuring script: unsupported device")),
        };
        let source = source.split('\0').next().unwrap_or_default();
        let mut err = std::ptr::null_mut();
        // Safety: the source is read within its length.
        let handle = unsafe { tessera_script_compile(source.as_ptr().cast(), source.len(), &mut err) };
        let Some(handle) = NonNull::new(handle) else {
            return Err(torch_err(take_err(err)));
        };
        let script = TorchScript { handle, device, entry_points: entry_points.to_vec() };
        for name in entry_points {
            script.check_entry_point(name)?;
        }
        Ok(script)
    }

    fn check_entry_point(&self, name: &str) -> Result<()> {
        if name.split('.').any(str::is_empty) {
            return Err(BackendError::new(format!("Function {name} does not exist in the given script.")));
        }
        let mut kinds = [0i32; 3];
        // Safety: `kinds` holds 3 entries, as `cap` says.
        let n = unsafe {
            tessera_script_signature(self.handle.as_ptr(), name.as_ptr().cast(), name.len(), kinds.as_mut_ptr(), 3)
        };
        if n < 0 {
            return Err(BackendError::new(format!("Function {name} does not exist in the given script.")));
        }
        if n != 3 {
            return Err(BackendError::new(format!(
                "Wrong number of inputs in function {name}. Expected 3 but was {n}"
            )));
        }
        if kinds != [TENSOR_LIST, STR_LIST, STR_LIST] {
            return Err(BackendError::new(format!(
                "Wrong inputs type in function {name}. Expected signature similar to: \
                 def {name}(tensors: List[Tensor], keys: List[str], args: List[str])"
            )));
        }
        Ok(())
    }
}

impl Script for TorchScript {
    fn run(&self, call: &ScriptCall<'_>, host: &dyn ScriptHost) -> Result<Vec<Tensor>> {
        // (libtorch asserts on a qualified name with an empty part.)
        if call.function.split('.').any(str::is_empty) {
            return Err(BackendError::new(format!("Function does not exist: {}", call.function)));
        }
        // Kept alive across the call: C++ borrows them.
        let inputs = call.inputs.iter().map(to_torch).collect::<Result<Vec<_>>>()?;
        let pointers: Vec<*mut C_tensor> = inputs.iter().map(|t| t.as_ptr() as *mut C_tensor).collect();
        let keys: Vec<TsStr> = call.keys.iter().map(|k| TsStr::of(k)).collect();
        let args: Vec<TsStr> = call.args.iter().map(|a| TsStr::of(a)).collect();
        let entry = self.entry_points.iter().any(|e| e == call.function);
        // The callbacks find the host through this pointer (to a fat one).
        let mut host: &dyn ScriptHost = host;
        let host_ptr = (&mut host as *mut &dyn ScriptHost).cast::<c_void>();
        let mut outs: *mut *mut C_tensor = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // Safety: every array is read within its length while it lives; the
        // outputs are new tensors adopted below, their array freed.
        let n = unsafe {
            tessera_script_run(
                self.handle.as_ptr(),
                call.function.as_ptr().cast(),
                call.function.len(),
                entry as c_int,
                self.device,
                pointers.as_ptr(),
                pointers.len(),
                keys.as_ptr(),
                keys.len(),
                args.as_ptr(),
                args.len(),
                call.outputs as i64,
                host_ptr,
                &mut outs,
                &mut err,
            )
        };
        match n {
            -1 => return Err(torch_err(take_err(err))),
            -2 => return Err(BackendError::new(format!("Function returned non-tensor values{}", call.function))),
            _ => {}
        }
        let tensors: Vec<tch::Tensor> = (0..n as usize)
            // Safety: `outs` holds `n` new tensors, each adopted once.
            .map(|i| unsafe { tch::Tensor::from_ptr(*outs.add(i)) })
            .collect();
        if !outs.is_null() {
            unsafe { free(outs.cast()) };
        }
        if tensors.len() != call.outputs {
            return Err(BackendError::new(format!(
                "Function returned unexpected number of outputs - {}",
                call.function
            )));
        }
        tensors.iter().map(from_torch).collect()
    }
}

/// Where the callbacks keep what they hand to C++: valid until the next
/// callback on the same thread (C++ copies it at once).
#[derive(Default)]
struct Scratch {
    nodes: Vec<TsReply>,
    strings: Vec<Bytes>,
    err: String,
    outs: Vec<*mut C_tensor>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn flatten(r: HostReply, s: &mut Scratch) {
    match r {
        HostReply::Nil => s.nodes.push(TsReply { kind: 0, n: 0, ptr: std::ptr::null() }),
        HostReply::Str(b) => {
            s.nodes.push(TsReply { kind: 1, n: b.len() as i64, ptr: b.as_ptr().cast() });
            // (The bytes stay where they are: `Bytes` moves its handle only.)
            s.strings.push(b);
        }
        HostReply::Int(i) => s.nodes.push(TsReply { kind: 2, n: i, ptr: std::ptr::null() }),
        HostReply::Array(items) => {
            s.nodes.push(TsReply { kind: 3, n: items.len() as i64, ptr: std::ptr::null() });
            for i in items {
                flatten(i, s);
            }
        }
    }
}

/// Puts `msg` in the scratch and points `err` at it.
fn fail(s: &mut Scratch, msg: String, err: *mut TsStr) -> c_int {
    s.err = msg;
    // Safety: `err` is C++'s out-parameter.
    unsafe { *err = TsStr::of(s.err.as_bytes()) };
    -1
}

/// Safety: `host` is the pointer `TorchScript::run` passed for this run.
unsafe fn host_of<'a>(host: *mut c_void) -> &'a dyn ScriptHost {
    *host.cast::<&dyn ScriptHost>()
}

extern "C" fn exec_cb(
    host: *mut c_void,
    argv: *const TsStr,
    argc: usize,
    reply: *mut *const TsReply,
    n_nodes: *mut usize,
    err: *mut TsStr,
) -> c_int {
    // A panic must not unwind into C++.
    let result = std::panic::catch_unwind(|| {
        // Safety: C++ passes `argc` strings that live for the call.
        let argv: Vec<Bytes> = (0..argc).map(|i| Bytes::copy_from_slice(unsafe { (*argv.add(i)).bytes() })).collect();
        unsafe { host_of(host) }.execute(&argv)
    });
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.nodes.clear();
        s.strings.clear();
        match result {
            Ok(Ok(r)) => {
                flatten(r, &mut s);
                // Safety: C++'s out-parameters.
                unsafe {
                    *reply = s.nodes.as_ptr();
                    *n_nodes = s.nodes.len();
                }
                0
            }
            Ok(Err(e)) => fail(&mut s, e, err),
            Err(_) => fail(&mut s, "redis.execute failed: the host panicked".into(), err),
        }
    })
}

extern "C" fn model_cb(
    host: *mut c_void,
    key: TsStr,
    inputs: *const *mut C_tensor,
    n_in: usize,
    n_out: i64,
    outs: *mut *const *mut C_tensor,
    n_outs: *mut usize,
    err: *mut TsStr,
) -> c_int {
    let result = std::panic::catch_unwind(|| -> std::result::Result<Vec<tch::Tensor>, String> {
        // Safety: C++ lends `n_in` tensors for the call; each is shared (a
        // new handle to the same storage), not adopted.
        let inputs = (0..n_in)
            .map(|i| from_torch(&unsafe { tch::Tensor::clone_from_ptr(*inputs.add(i)) }))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.0)?;
        let key = unsafe { key.bytes() };
        let outputs = unsafe { host_of(host) }.model_execute(key, inputs, n_out.max(0) as usize)?;
        outputs.iter().map(|t| to_torch(t).map_err(|e| e.0)).collect()
    });
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.outs.clear();
        match result {
            Ok(Ok(tensors)) => {
                // C++ adopts each pointer (and deletes it).
                s.outs.extend(tensors.into_iter().map(|t| {
                    let mut t = std::mem::ManuallyDrop::new(t);
                    t.as_mut_ptr()
                }));
                // Safety: C++'s out-parameters.
                unsafe {
                    *outs = s.outs.as_ptr();
                    *n_outs = s.outs.len();
                }
                0
            }
            Ok(Err(e)) => fail(&mut s, e, err),
            Err(_) => fail(&mut s, "redisAI.model_execute failed: the host panicked".into(), err),
        }
    })
}

/// [`TorchScript::compile`] as the backend trait hands it out.
pub fn compile(source: &str, device: Device, entry_points: &[String]) -> Result<Arc<dyn Script>> {
    Ok(Arc::new(TorchScript::compile(source, device, entry_points)?))
}
