//! A transaction (MULTI … EXEC) that runs a model or a script: the leader
//! runs it, then logs what it changed as one entry.
//!
//! A transaction of plain commands is logged as it is and applied by every
//! replica (`state::apply`). One that runs a model or a script cannot be:
//! replicas never run models. So the leader runs its commands in order
//! against an overlay on the shard ([`Host`]), each seeing the ones before
//! it (a TENSORSET feeds the MODELEXECUTE after it, whose outputs the
//! TENSORGET after that reads), and logs the overlay's changes as one
//! [`NodeCommand::Effects`] entry, fenced to its term. The entry carries
//! what every key the transaction touched (read, written or WATCHed) held
//! when it was read: if any moved before the entry applies, it writes
//! nothing, and the leader runs the transaction again (a few times, then
//! `TRYAGAIN`). So the transaction is serializable: its reads and writes
//! take effect at the one point its entry applies.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_common::command::node::{Transaction, TxOp};
use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::model::{ModelRun, ScriptRun};
use tessera_common::reply::Reply;
use tessera_common::slot::key_slot;
use tessera_common::tensor::Tensor;

use super::host::{Caller, Host};
use super::run::{counts, run_model};
use super::script::{call_script, compiled};
use super::{input_tensor, Executed, Outcome, Shard};
use crate::data::keyspace::{Entry, Value};
use crate::engine::engine;
use crate::engine::registry::registry;
use crate::error::Error as NodeError;
use crate::util::now_ms;

/// Runs of a transaction whose entry found a key moved, before `TRYAGAIN`.
const ATTEMPTS: usize = 3;

/// RedisAI's answer to a DAG inside MULTI (in its place in EXEC's reply).
const DAG_IN_TX: &str = "ERR Cannot run RedisAI command within a transaction or a LUA script";

impl Shard {
    /// EXEC of a transaction that runs a model or a script (see the module
    /// docs), read and fenced as a model run is ([`Shard::fenced`]).
    /// `caller`: the user its scripts' `redis.execute` calls are checked
    /// against (none: every command allowed).
    pub async fn run_transaction(&self, tx: &Transaction, caller: Option<Caller>) -> Outcome {
        for _ in 1..ATTEMPTS {
            match self.fenced(|fence| self.transaction_in(tx, fence, caller.clone())).await {
                Outcome::Error(NodeError::ScriptRaced) => continue,
                Outcome::Reply(Reply::Error(e)) if e.starts_with("TRYAGAIN") => continue,
                done => return done,
            }
        }
        self.fenced(|fence| self.transaction_in(tx, fence, caller.clone())).await
    }

    async fn transaction_in(&self, tx: &Transaction, fence: Option<u64>, caller: Option<Caller>) -> Executed {
        let now = now_ms();
        let slot = tx.commands().flat_map(NodeCommand::keys).next().map_or(0, |k| key_slot(k));
        let mut host = Host::new(self.data.clone(), slot, now).for_caller(caller);
        if tx.watched.iter().any(|(k, was)| host.get(k).as_ref().map(Entry::fingerprint) != *was) {
            return Executed::Unwritten(Outcome::Reply(Reply::NullArray));
        }
        let mut replies = Vec::with_capacity(tx.ops.len());
        for op in &tx.ops {
            let reply = match op {
                TxOp::Refused(e) => Reply::Error(e.clone()),
                TxOp::Run(NodeCommand::ModelExecute(run)) => {
                    model_in(&host, run).await.unwrap_or_else(|e| e.to_reply())
                }
                TxOp::Run(NodeCommand::ScriptExecute(run)) => match script_in(host, run).await {
                    Ok((reply, back)) => {
                        host = back;
                        reply
                    }
                    // (A script that timed out may still be running on its
                    // queue, with the overlay: nothing of it can be kept.)
                    Err(reply) => return Executed::Unwritten(Outcome::Reply(reply)),
                },
                TxOp::Run(NodeCommand::Dag(_)) => Reply::err(DAG_IN_TX),
                // (Their effects would not survive the overlay: a store is a
                // command of its own, or of a transaction that runs nothing.)
                TxOp::Run(c @ (NodeCommand::ModelStore { .. } | NodeCommand::ScriptStore { .. })) => {
                    Reply::err(format!(
                        "ERR {} cannot be in a transaction that runs a model or a script",
                        c.name().to_ascii_uppercase()
                    ))
                }
                TxOp::Run(cmd) => host.run(cmd),
            };
            replies.push(reply);
        }
        // Every key read, written or WATCHed must still hold what the run
        // saw when the entry applies.
        let touched = host.touched();
        let effects = match host.effects(std::iter::empty()) {
            Ok(e) => e,
            Err(e) => return Executed::Unwritten(Outcome::Error(e)),
        };
        if effects.writes.is_empty() {
            // Nothing to log, so nothing checks the reads at apply: they
            // were made at different moments of the run, and must all
            // still hold at one (now), or the transaction runs again.
            let now = now_ms();
            if self.data.lock().ks.moved(&touched, now) {
                return Executed::Unwritten(Outcome::Error(NodeError::ScriptRaced));
            }
            return Executed::Unwritten(Outcome::Reply(Reply::Array(replies)));
        }
        let cmd = NodeCommand::Effects { writes: effects.writes, expected: touched };
        match self.write_outputs(cmd, fence).await {
            Executed::Written(Outcome::Reply(r)) if !r.is_error() => {
                Executed::Written(Outcome::Reply(Reply::Array(replies)))
            }
            other => other,
        }
    }
}

/// A tensor the transaction reads.
fn tensor(host: &Host, key: &Bytes) -> Result<Tensor, NodeError> {
    input_tensor(host.get(key).as_ref().map(|e| &e.value))
}

/// AI.MODELEXECUTE / AI.MODELRUN inside a transaction: inputs from the
/// overlay, the run on the model's device queue, the outputs into the
/// overlay.
async fn model_in(host: &Host, run: &ModelRun) -> Result<Reply, NodeError> {
    let model = match host.get(&run.key).map(|e| e.value) {
        None => return Err(NodeError::EmptyModel),
        Some(Value::Model(m)) => m,
        Some(_) => return Err(Error::WrongType.into()),
    };
    let (n_in, n_out) = counts(&model).await?;
    run.check(n_in, n_out)?;
    let inputs = run.inputs.iter().map(|k| tensor(host, k)).collect::<Result<Vec<_>, _>>()?;
    let Some(pairs) = run_model(model, inputs, run).await? else {
        return Ok(Reply::Simple("TIMEDOUT".into()));
    };
    if pairs.is_empty() {
        return Ok(Reply::ok());
    }
    Ok(host.run(&NodeCommand::TensorMSet { pairs }))
}

/// AI.SCRIPTEXECUTE / AI.SCRIPTRUN inside a transaction: the script's
/// `redis.execute` calls and its outputs go to the overlay. The host is
/// lent to the script's device queue and handed back; a script that timed
/// out keeps it, and its answer (`TIMEDOUT`) is the transaction's.
async fn script_in(host: Host, run: &ScriptRun) -> Result<(Reply, Host), Reply> {
    let script = match host.get(&run.key).map(|e| e.value) {
        None => return Ok((NodeError::EmptyScript.to_reply(), host)),
        Some(Value::Script(s)) => s,
        Some(_) => return Ok((Error::WrongType.to_reply(), host)),
    };
    if let Some(e) = &run.fails {
        return Ok((e.to_reply(), host));
    }
    let inputs = match run.inputs.iter().map(|k| tensor(&host, k)).collect::<Result<Vec<_>, _>>() {
        Ok(i) => i,
        Err(e) => return Ok((e.to_reply(), host)),
    };
    let compiled = match compiled(&script).await {
        Ok(c) => c,
        Err(e) => return Ok((e.to_reply(), host)),
    };
    let host = Arc::new(host);
    let (call, lent) = (run.clone(), host.clone());
    let threads = registry().settings().threads_per_queue;
    let timeout = run.timeout_ms.map(Duration::from_millis);
    let queue = script.def.device.queue_name();
    let ran =
        engine().run_on(&queue, timeout, threads, move || call_script(&script, &*compiled, &call, &inputs, &lent));
    let result = ran.await;
    // (Once the run has answered, the queue's closure and its handle on
    // the host are gone.)
    let Ok(host) = Arc::try_unwrap(host) else {
        return Err(Reply::Simple("TIMEDOUT".into()));
    };
    let reply = match result {
        Ok(Some(Ok(outputs))) => {
            let pairs: Vec<(Bytes, Tensor)> = run.outputs.iter().cloned().zip(outputs).collect();
            if pairs.is_empty() {
                Reply::ok()
            } else {
                host.run(&NodeCommand::TensorMSet { pairs })
            }
        }
        Ok(Some(Err(e))) => e.to_reply(),
        Ok(None) => Reply::Simple("TIMEDOUT".into()),
        Err(_) => NodeError::RunDropped.to_reply(),
    };
    Ok((reply, host))
}
