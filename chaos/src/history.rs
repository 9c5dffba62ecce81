//! What the workloads did: every operation with its invocation and
//! completion times (nanoseconds since the run started) and what came back.
//!
//! An operation that failed or timed out is *unknown*: it may or may not have
//! taken effect, and the checker treats it so.

use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an operation did to its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// A register write of a unique value (SET, AI.TENSORSET, AI.MODELSTORE).
    Write(u64),
    /// A register read; `None` is "no such key". Only meaningful when the
    /// operation completed.
    Read(Option<u64>),
    /// Adds a unique element to a grow-only set.
    Add(u64),
    /// Reads a grow-only set: which of the `asked` elements were present.
    SetRead { asked: Vec<u64>, present: Vec<u64> },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok,
    /// An error reply or a timeout: the effect is unknown.
    Unknown(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    /// Which workload: "reg", "tensor", "set", "model", "final".
    pub workload: String,
    pub worker: usize,
    pub key: String,
    pub kind: OpKind,
    /// Invocation time, ns since the start of the run.
    pub call: u64,
    /// Completion time, ns since the start of the run.
    pub ret: u64,
    pub outcome: Outcome,
}

impl Op {
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }
}

/// A fault the nemesis injected, and when it was lifted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultEvent {
    pub name: String,
    pub detail: String,
    /// Nodes it hit.
    pub nodes: Vec<usize>,
    /// Shards whose leader it hit (leader-targeted faults).
    pub led_shards: Vec<u32>,
    pub start: u64,
    pub end: u64,
}

/// Everything recorded in one run, shared by the worker threads.
pub struct Recorder {
    pub start: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// Nanoseconds since the run started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn push(&self, op: Op) {
        self.ops.lock().expect("history lock").push(op);
    }

    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().expect("history lock"))
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}
