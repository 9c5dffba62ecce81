//! Script runs on a replica: read the script and its inputs, run the
//! function on the script's device queue with a [`Host`] for its calls back
//! into the store, then write what it changed and its outputs through the
//! log, as one entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_backend::script::Script;

use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::model::ScriptRun;
use tessera_common::reply::Reply;
use tessera_common::tensor::Tensor;

use super::host::{Caller, Host};
use super::{input_tensor, Executed, Outcome, Shard};
use crate::data::keyspace::Value;
use crate::engine::engine;
use crate::engine::registry::registry;
use crate::engine::script::StoredScript;
use crate::error::Error as NodeError;
use crate::util::now_ms;

/// The compiled script: compiled on this replica when its entry applied; a
/// new leader may still be at it: waited for here (off the runtime), not on
/// the device queue.
pub(super) async fn compiled(script: &Arc<StoredScript>) -> Result<Arc<dyn Script>, NodeError> {
    if let Some(c) = script.try_compiled() {
        return Ok(c);
    }
    let s = script.clone();
    match tokio::task::spawn_blocking(move || s.compiled()).await {
        Ok(result) => result,
        Err(e) => Err(NodeError::LoadFailed(e.to_string())),
    }
}

/// Calls `run`'s function of `script` (on a device queue's thread),
/// counting the call in the script's statistics.
pub(super) fn call_script(
    script: &StoredScript,
    compiled: &dyn Script,
    run: &ScriptRun,
    inputs: &[Tensor],
    host: &Host,
) -> Result<Vec<Tensor>, NodeError> {
    use std::sync::atomic::Ordering::Relaxed;
    let start = Instant::now();
    let c = tessera_backend::script::ScriptCall {
        function: &run.function,
        inputs,
        keys: &run.keys,
        args: &run.args,
        outputs: run.outputs.len(),
    };
    let result = compiled.run(&c, host).map_err(|e| NodeError::Model(e.0));
    // (Never 0 µs: RedisAI's clients see the duration grow with each call.)
    script.stats.duration_us.fetch_add((start.elapsed().as_micros() as u64).max(1), Relaxed);
    script.stats.calls.fetch_add(1, Relaxed);
    if result.is_err() {
        script.stats.errors.fetch_add(1, Relaxed);
    }
    result
}

impl Shard {
    /// AI.SCRIPTEXECUTE / AI.SCRIPTRUN, read and fenced as a model run is
    /// (see [`Shard::fenced`]).
    /// `caller`: the user its `redis.execute` calls are checked against
    /// (none: every command allowed).
    pub async fn run_script(&self, run: &ScriptRun, caller: Option<Caller>) -> Outcome {
        self.fenced(|fence| self.run_script_in(run, fence, caller.clone())).await
    }

    async fn run_script_in(&self, run: &ScriptRun, fence: Option<u64>, caller: Option<Caller>) -> Executed {
        let error = |e: NodeError| Executed::Unwritten(Outcome::Error(e));
        let now = now_ms();
        let (script, inputs) = {
            let d = self.data.lock();
            let script = match d.ks.get(&run.key, now).map(|e| &e.value) {
                None => return error(NodeError::EmptyScript),
                Some(Value::Script(s)) => s.clone(),
                Some(_) => return error(Error::WrongType.into()),
            };
            if let Some(e) = &run.fails {
                return error(e.clone().into());
            }
            match run
                .inputs
                .iter()
                .map(|k| input_tensor(d.ks.get(k, now).map(|e| &e.value)))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(inputs) => (script, inputs),
                Err(e) => return error(e),
            }
        };
        let compiled = match compiled(&script).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        let slot = tessera_common::slot::key_slot(&run.key);
        let host = Host::new(self.data.clone(), slot, now).for_caller(caller);
        let call = run.clone();
        let threads = registry().settings().threads_per_queue;
        let timeout = run.timeout_ms.map(Duration::from_millis);
        let queue = script.def.device.queue_name();
        let ran = engine().run_on(&queue, timeout, threads, move || {
            call_script(&script, &*compiled, &call, &inputs, &host).map(|outputs| (outputs, host))
        });
        let (outputs, host) = match ran.await {
            Ok(Some(Ok(done))) => done,
            Ok(Some(Err(e))) => return error(e),
            Ok(None) => return Executed::Unwritten(Outcome::Reply(Reply::Simple("TIMEDOUT".into()))),
            Err(_) => return error(NodeError::RunDropped),
        };
        let effects = match host.effects(run.outputs.iter().cloned().zip(outputs)) {
            Ok(e) => e,
            Err(e) => return error(e),
        };
        if effects.writes.is_empty() {
            return Executed::Unwritten(Outcome::Reply(Reply::ok()));
        }
        let cmd = NodeCommand::Effects { writes: effects.writes, expected: effects.expected };
        self.write_outputs(cmd, fence).await
    }
}
