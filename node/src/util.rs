//! Small helpers every layer of the node uses: the clock, the postcard
//! encoding of what is logged, sent and snapshotted, and running heavy work
//! without stalling the runtime.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Largest gRPC message a node sends or takes (a 512 MB value plus framing).
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs `f`, which may take a while (copying or decoding hundreds of MB),
/// without stalling the other tasks of this runtime worker: on the
/// multi-threaded runtime they move to another worker meanwhile, so
/// heartbeats keep flowing while a large model is decoded.
pub fn heavy<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// [`heavy`] for async code: `f(v)` runs on the blocking pool, so the task
/// awaiting it goes on polling whatever else it drives (a session lane's
/// other commands) meanwhile.
pub async fn heavy_off<T: Send + 'static, R: Send + 'static>(v: T, f: impl FnOnce(T) -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(move || f(v)).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Sizes above which [`heavy`] is worth its cost.
pub const HEAVY_BYTES: usize = 4 << 20;

/// `v`'s postcard encoding, in a buffer sized for it first: a buffer grown
/// from empty copies a tensor about ten times over as it reallocates, once
/// for the log and once per follower.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(v).unwrap_or(0);
    postcard::to_extend(v, Vec::with_capacity(size)).expect("our types always serialize")
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> std::io::Result<T> {
    postcard::from_bytes(b).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
