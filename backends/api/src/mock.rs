//! A backend with no runtime, for unit tests of the execution engine.
//!
//! A model's bytes name what it does: `mock:add` (two FLOAT inputs, one
//! output: their sum), `mock:double` (one FLOAT input, doubled),
//! `mock:badbatch` (one input; always returns a `[1]` tensor), `mock:rows`
//! (one input; each output row holds the number of rows the run got), each optionally
//! followed by `:sleep=<ms>` (each run sleeps that long).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::{elements, from_elements, Backend, BackendError, BackendKind, LoadOptions, Model, Result, Tensor};

pub struct MockBackend;

impl Backend for MockBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Onnx
    }

    fn version(&self) -> String {
        "mock".into()
    }

    fn load(&self, blob: &[u8], _opts: &LoadOptions) -> Result<Arc<dyn Model>> {
        let text = std::str::from_utf8(blob).map_err(|_| BackendError::new("mock: not a mock model"))?;
        let mut parts = text.split(':');
        if parts.next() != Some("mock") {
            return Err(BackendError::new("mock: not a mock model"));
        }
        let op = parts.next().unwrap_or_default().to_owned();
        let inputs = match op.as_str() {
            "add" => vec!["a".to_owned(), "b".to_owned()],
            "double" | "badbatch" | "rows" => vec!["x".to_owned()],
            other => return Err(BackendError::new(format!("mock: unknown op {other}"))),
        };
        let sleep = parts
            .find_map(|p| p.strip_prefix("sleep="))
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        Ok(Arc::new(MockModel { op, inputs, outputs: vec!["y".into()], sleep, runs: AtomicUsize::new(0) }))
    }
}

pub struct MockModel {
    op: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    sleep: Duration,
    /// How many times `run` was called (batches count once).
    pub runs: AtomicUsize,
}

impl Model for MockModel {
    fn inputs(&self) -> &[String] {
        &self.inputs
    }

    fn outputs(&self) -> &[String] {
        &self.outputs
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(self.sleep);
        let x = elements::<f32>(&inputs[0]);
        let y: Vec<f32> = match self.op.as_str() {
            "add" => x.iter().zip(elements::<f32>(&inputs[1])).map(|(a, b)| a + b).collect(),
            "double" => x.iter().map(|v| v * 2.0).collect(),
            "rows" => vec![inputs[0].shape[0] as f32; x.len()],
            _ => return Ok(vec![Some(from_elements(vec![1], &[0f32]))]),
        };
        Ok(vec![Some(from_elements(inputs[0].shape.clone(), &y))])
    }
}
