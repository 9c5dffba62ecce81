//! Model execution: one FIFO run queue per device (`CPU`, `CPU:1`, `GPU:0`,
//! ...), each served by its own worker threads — never the async runtime.
//!
//! Semantics follow RedisAI 1.2.7 (spec §21): a request whose TIMEOUT passed
//! before it was picked answers TIMEDOUT; for a model with BATCHSIZE, the
//! worker gathers queued requests for the same model whose inputs match
//! past dim 0 until the batch reaches BATCHSIZE, waits for MINBATCHSIZE up to
//! MINBATCHTIMEOUT, runs the batch once and splits the outputs back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tessera_backend::batch;
use tessera_backend::{Device, Tensor};
use tokio::sync::oneshot;

use super::model::StoredModel;
use crate::error::Error;

/// What a run answers.
#[derive(Debug)]
pub enum RunResult {
    Done(Vec<Option<Tensor>>),
    TimedOut,
    Failed(Error),
}

struct Job {
    model: Arc<StoredModel>,
    inputs: Vec<Tensor>,
    queued: Instant,
    deadline: Option<Instant>,
    done: oneshot::Sender<RunResult>,
}

impl Job {
    fn timed_out(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

/// Other work for a device's queue (a script's run): takes whether its
/// TIMEOUT passed while it was queued (it then only reports that).
struct Task {
    run: Box<dyn FnOnce(bool) + Send>,
    deadline: Option<Instant>,
}

/// What a queue holds, in order.
enum Item {
    Job(Job),
    Task(Task),
}

struct Queue {
    jobs: Mutex<VecDeque<Item>>,
    wake: Condvar,
}

/// The run queues of this node.
pub struct Engine {
    queues: Mutex<HashMap<String, Arc<Queue>>>,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

pub fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| Engine { queues: Mutex::new(HashMap::new()) })
}

impl Engine {
    /// Queues a run of `model` on its device's queue; the receiver gets the
    /// outcome. `timeout` counts from now and only applies before the run
    /// starts (a started run is never interrupted).
    pub fn submit(
        &self,
        model: Arc<StoredModel>,
        inputs: Vec<Tensor>,
        timeout: Option<Duration>,
        threads: usize,
    ) -> oneshot::Receiver<RunResult> {
        let (done, rx) = oneshot::channel();
        let queued = Instant::now();
        let q = self.queue(&model.def.device.queue_name(), threads);
        q.jobs.lock().push_back(Item::Job(Job { model, inputs, queued, deadline: timeout.map(|t| queued + t), done }));
        q.wake.notify_one();
        rx
    }

    /// Queues `f` on queue `name` (a device's, as [`Device::queue_name`]
    /// names it), in order with the model runs there; the receiver gets its
    /// result, or `None` if `timeout` passed before it started.
    pub fn run_on<R: Send + 'static>(
        &self,
        name: &str,
        timeout: Option<Duration>,
        threads: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> oneshot::Receiver<Option<R>> {
        let (done, rx) = oneshot::channel();
        let run = Box::new(move |timed_out: bool| {
            let _ = done.send(if timed_out { None } else { Some(f()) });
        });
        let q = self.queue(name, threads);
        q.jobs.lock().push_back(Item::Task(Task { run, deadline: timeout.map(|t| Instant::now() + t) }));
        q.wake.notify_one();
        rx
    }

    /// Queue depths by device, for INFO and metrics.
    pub fn depths(&self) -> Vec<(String, usize)> {
        self.queues.lock().iter().map(|(n, q)| (n.clone(), q.jobs.lock().len())).collect()
    }

    fn queue(&self, name: &str, threads: usize) -> Arc<Queue> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(name) {
            return q.clone();
        }
        let q = Arc::new(Queue { jobs: Mutex::new(VecDeque::new()), wake: Condvar::new() });
        for i in 0..threads.max(1) {
            let q = q.clone();
            let thread_name = format!("run-{name}-{i}");
            if let Err(e) = std::thread::Builder::new().name(thread_name).spawn(move || worker(&q)) {
                tracing::error!(queue = name, error = %e, "cannot start a run queue thread");
            }
        }
        queues.insert(name.to_owned(), q.clone());
        q
    }
}

/// What the worker decided for the front of the queue.
enum Pick {
    Run(Vec<Job>),
    Task(Task),
    /// A batch waiting for MINBATCHSIZE: its jobs went to the back.
    NotReady,
    Empty,
}

fn worker(q: &Queue) {
    let mut idle_rounds = 0usize;
    loop {
        let pick = {
            let mut jobs = q.jobs.lock();
            if jobs.is_empty() || idle_rounds > jobs.len() {
                // Nothing runnable: sleep until a push, or briefly so waiting
                // batches see their MINBATCHTIMEOUT and TIMEOUT pass.
                let wait = if jobs.is_empty() { Duration::from_millis(100) } else { Duration::from_millis(1) };
                q.wake.wait_for(&mut jobs, wait);
                idle_rounds = 0;
            }
            pick(&mut jobs, Instant::now())
        };
        match pick {
            Pick::Empty => {}
            Pick::NotReady => idle_rounds += 1,
            // A panic drops the run's reply channel (its caller answers
            // that the run was dropped); the worker goes on.
            Pick::Run(batch) => {
                idle_rounds = 0;
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(batch)));
            }
            Pick::Task(t) => {
                idle_rounds = 0;
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(false)));
            }
        }
    }
}

/// Pops the front job and, for a batching model, the jobs that join it.
fn pick(jobs: &mut VecDeque<Item>, now: Instant) -> Pick {
    let first = match jobs.pop_front() {
        None => return Pick::Empty,
        Some(Item::Task(t)) if t.deadline.is_some_and(|d| now >= d) => {
            (t.run)(true);
            return Pick::NotReady;
        }
        Some(Item::Task(t)) => return Pick::Task(t),
        Some(Item::Job(j)) => j,
    };
    if first.timed_out(now) {
        let _ = first.done.send(RunResult::TimedOut);
        return Pick::NotReady;
    }
    let def = &first.model.def;
    let limit = def.batchsize as usize;
    let own = batch::batch_size(&first.inputs);
    if limit == 0 || own == 0 || own >= limit {
        return Pick::Run(vec![first]);
    }
    // Gather matching jobs, front to back, until the batch is full.
    let mut total = own;
    let mut picked = Vec::new();
    for (i, item) in jobs.iter().enumerate() {
        if total >= limit {
            break;
        }
        let Item::Job(j) = item else { continue };
        if Arc::ptr_eq(&j.model, &first.model) && !j.timed_out(now) && batch::batchable(&first.inputs, &j.inputs) {
            let n = batch::batch_size(&j.inputs);
            if n > 0 {
                total += n;
                picked.push(i);
            }
        }
    }
    let min = def.minbatchsize as usize;
    let waited = now.duration_since(first.queued);
    let min_timeout = Duration::from_millis(def.minbatchtimeout);
    if min > 0 && total < min && !(def.minbatchtimeout > 0 && waited > min_timeout) {
        // Not enough yet: everyone goes to the back, in order.
        jobs.push_back(Item::Job(first));
        return Pick::NotReady;
    }
    let mut batch = vec![first];
    for i in picked.into_iter().rev() {
        if let Some(Item::Job(j)) = jobs.remove(i) {
            batch.insert(1, j);
        }
    }
    Pick::Run(batch)
}

fn run(batch: Vec<Job>) {
    let model = batch[0].model.clone();
    let loaded = match model.loaded() {
        Ok(m) => m,
        Err(e) => {
            for j in batch {
                model.stats.calls.fetch_add(1, Ordering::Relaxed);
                model.stats.errors.fetch_add(1, Ordering::Relaxed);
                let _ = j.done.send(RunResult::Failed(e.clone()));
            }
            return;
        }
    };
    // MODEL_EXECUTION_TIMEOUT: ONNX Runtime stops a run past it.
    let limit = Some(Duration::from_millis(super::registry::registry().settings().execution_timeout_ms));
    let sizes: Vec<usize> = batch.iter().map(|j| batch::batch_size(&j.inputs)).collect();
    // A GPU model with BATCHSIZE runs every batch padded to BATCHSIZE rows
    // (the padding's outputs are dropped). ONNX Runtime's CUDA kernels set
    // up again whenever the input shape changes, and auto-batching makes a
    // new shape of every batch size: on an H200, mnist took 15,000
    // samples/s with batches of 1..64 rows in turn and 447,000 with 64 rows
    // every time. On a CPU padding would only add work, so it is not done.
    // A model whose batch dim is fixed, or whose outputs are not per row,
    // fails padded where its unpadded run works: it is run again as it
    // came, and never padded again.
    let total: usize = sizes.iter().sum();
    let pad = match model.def.device {
        Device::Gpu(_)
            if model.def.batchsize > 0 && sizes.iter().all(|s| *s > 0) && !model.no_padding.load(Ordering::Relaxed) =>
        {
            (model.def.batchsize as usize).saturating_sub(total)
        }
        _ => 0,
    };
    let start = Instant::now();
    let run_as = |pad: usize| {
        if batch.len() == 1 && pad == 0 {
            return loaded.run_limited(&batch[0].inputs, limit).map(|out| vec![out]);
        }
        let parts: Vec<&[Tensor]> = batch.iter().map(|j| &j.inputs[..]).collect();
        let mut joined = batch::concat(&parts);
        let mut sizes = sizes.clone();
        if pad > 0 {
            joined = batch::pad(joined, pad);
            sizes.push(pad);
        }
        loaded.run_limited(&joined, limit).and_then(|out| batch::split(out, &sizes)).map(|mut per_request| {
            per_request.truncate(batch.len());
            per_request
        })
    };
    let mut result = run_as(pad);
    if pad > 0 && result.is_err() {
        let unpadded = run_as(0);
        if unpadded.is_ok() {
            model.no_padding.store(true, Ordering::Relaxed);
        }
        result = unpadded;
    }
    let took = start.elapsed().as_micros() as u64;
    metrics::histogram!("tessera_node_model_run_seconds").record(took as f64 / 1e6);
    metrics::histogram!("tessera_node_model_batch_requests").record(batch.len() as f64);
    let stats = &model.stats;
    match result {
        Ok(outs) => {
            for (j, out) in batch.into_iter().zip(outs) {
                stats.calls.fetch_add(1, Ordering::Relaxed);
                stats.duration_us.fetch_add(took, Ordering::Relaxed);
                let samples = out.first().and_then(|t| t.as_ref()).and_then(|t| t.shape.first().copied()).unwrap_or(0);
                stats.samples.fetch_add(samples.max(0) as u64, Ordering::Relaxed);
                let _ = j.done.send(RunResult::Done(out));
            }
        }
        Err(e) => {
            for j in batch {
                stats.calls.fetch_add(1, Ordering::Relaxed);
                stats.errors.fetch_add(1, Ordering::Relaxed);
                stats.duration_us.fetch_add(took, Ordering::Relaxed);
                let _ = j.done.send(RunResult::Failed(Error::Model(e.0.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests;
