//! Model runs on a replica: read the model and its inputs, run them on the
//! model's device queue, write the outputs through the log.

use std::sync::Arc;

use bytes::Bytes;
use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::model::{BackendKind, ModelRun};
use tessera_common::reply::Reply;
use tessera_common::tensor::Tensor;

use super::{input_tensor, Executed, Outcome, Shard};
use crate::data::keyspace::Value;
use crate::engine::model::StoredModel;
use crate::engine::registry::registry;
use crate::engine::{engine, RunResult};
use crate::error::Error as NodeError;
use crate::util::now_ms;

/// A model's input and output counts: TF's are declared; the others' come
/// from the loaded model (a model still loading on a new leader is waited
/// for, off the runtime).
pub(super) async fn counts(model: &Arc<StoredModel>) -> Result<(usize, usize), NodeError> {
    match model.try_loaded() {
        _ if model.def.backend == BackendKind::Tf => Ok((model.def.inputs.len(), model.def.outputs.len())),
        Some(l) => Ok((l.inputs().len(), l.outputs().len())),
        None => {
            let m = model.clone();
            match tokio::task::spawn_blocking(move || m.loaded()).await {
                Ok(Ok(l)) => Ok((l.inputs().len(), l.outputs().len())),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(NodeError::LoadFailed(e.to_string())),
            }
        }
    }
}

impl Shard {
    /// AI.MODELEXECUTE / AI.MODELRUN: reads the model and its inputs
    /// (linearizably), runs it on its device's queue, then writes every
    /// output in one log entry. The session orders it against commands that
    /// touch the same keys (see `serve::session`).
    ///
    /// Read and fenced as [`Shard::fenced`] says.
    pub async fn execute(&self, run: &ModelRun) -> Outcome {
        self.fenced(|fence| self.execute_in(run, fence)).await
    }

    async fn execute_in(&self, args: &ModelRun, fence: Option<u64>) -> Executed {
        let reply = |r: Reply| Executed::Unwritten(Outcome::Reply(r));
        let error = |e: NodeError| Executed::Unwritten(Outcome::Error(e));
        let model = match self.data.lock().ks.get(&args.key, now_ms()).map(|e| &e.value) {
            None => return error(NodeError::EmptyModel),
            Some(Value::Model(m)) => m.clone(),
            Some(_) => return error(Error::WrongType.into()),
        };
        let (n_in, n_out) = match counts(&model).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        if let Err(e) = args.check(n_in, n_out) {
            return error(e.into());
        }
        let inputs = {
            let d = self.data.lock();
            let now = now_ms();
            match args
                .inputs
                .iter()
                .map(|k| input_tensor(d.ks.get(k, now).map(|e| &e.value)))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(inputs) => inputs,
                Err(e) => return error(e),
            }
        };
        let pairs = match run_model(model, inputs, args).await {
            Ok(Some(pairs)) => pairs,
            Ok(None) => return reply(Reply::Simple("TIMEDOUT".into())),
            Err(e) => return error(e),
        };
        if pairs.is_empty() {
            return reply(Reply::ok());
        }
        self.write_outputs(NodeCommand::TensorMSet { pairs }, fence).await
    }
}

/// Runs `model` on `inputs` on its device's queue: each output with the
/// key `run` writes it to (`None`: the run timed out). Non-tensor outputs
/// (ONNX maps and sequences) write no key, as in RedisAI.
pub(super) async fn run_model(
    model: Arc<StoredModel>,
    inputs: Vec<Tensor>,
    run: &ModelRun,
) -> Result<Option<Vec<(Bytes, Tensor)>>, NodeError> {
    let threads = registry().settings().threads_per_queue;
    let timeout = run.timeout_ms.map(std::time::Duration::from_millis);
    let outs = match engine().submit(model, inputs, timeout, threads).await {
        Ok(RunResult::Done(outs)) => outs,
        Ok(RunResult::TimedOut) => return Ok(None),
        Ok(RunResult::Failed(e)) => return Err(e),
        Err(_) => return Err(NodeError::RunDropped),
    };
    Ok(Some(run.outputs.iter().cloned().zip(outs).filter_map(|(k, t)| t.map(|t| (k, t))).collect()))
}
