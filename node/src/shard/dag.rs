//! DAG runs on a replica (AI.DAGEXECUTE[_RO], AI.DAGRUN[_RO]).
//!
//! 1. **Check**, in RedisAI's order: read the LOAD keys, then for each op
//!    look its model or script up and check its arguments against it, then
//!    the command's own error if it has one ([`Dag::fails`]).
//! 2. **Run**: the ops' values live here, never in the keyspace. A model
//!    or script op starts as soon as the ops it reads from have finished
//!    (scripts also one after another, so their `redis.execute` calls keep
//!    DAG order): independent ops run at once, on their devices' queues and
//!    worker threads. After an op fails no later op starts; an op not run
//!    answers `NA`. TIMEOUT counts from arrival: an op that has not started
//!    by then is not run and the DAG answers `TIMEDOUT`.
//! 3. **Persist**: if every op succeeded, the PERSIST tensors and what the
//!    scripts' `redis.execute` calls changed are written as **one** log
//!    entry, fenced to the leadership term the DAG read under: all of it
//!    applies or none.
//!
//! A DAG that writes nothing (no PERSIST, no script) proposes nothing: it
//! is a linearizable read, whose confirmation (a read-index round, or the
//! lease) runs while the ops do. AI.DAGEXECUTE_RO and AI.DAGRUN_RO also run
//! on a follower, once it has applied up to the leader's read index.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tessera_backend::script::Script;
use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::model::{Dag, DagOp, ScriptRun};
use tessera_common::reply::Reply;
use tessera_common::slot::key_slot;
use tessera_common::tensor::Tensor;

use super::host::{Caller, Host};
use super::run::counts;
use super::script::{call_script, compiled};
use super::{input_tensor, Executed, Outcome, Shard};
use crate::data::keyspace::Value;
use crate::engine::model::StoredModel;
use crate::engine::registry::registry;
use crate::engine::script::StoredScript;
use crate::engine::{engine, RunResult};
use crate::error::Error as NodeError;
use crate::util::now_ms;

/// What a model or script op runs, found before anything runs.
enum Runner {
    Model(Arc<StoredModel>),
    Script(Arc<StoredScript>, Arc<dyn Script>),
}

/// How an op that ran came out.
enum Ran {
    Done(Vec<Option<Tensor>>),
    Failed(NodeError),
    TimedOut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Failed,
}

/// How long a follower waits for the leader's read index and for its own
/// state to reach it before it answers as a replica that cannot serve.
const FOLLOWER_READ_WAIT: Duration = Duration::from_secs(2);

fn na() -> Reply {
    Reply::Simple("NA".into())
}

impl Shard {
    /// Runs a DAG (see the module docs).
    /// `caller`: the user its scripts' `redis.execute` calls are checked
    /// against (none: every command allowed).
    pub async fn run_dag(&self, dag: &Dag, caller: Option<Caller>) -> Outcome {
        let arrived = Instant::now();
        let answer = |e: Executed| match e {
            Executed::Written(o) | Executed::Unwritten(o) => o,
        };
        if dag.writes() {
            return self.fenced(|fence| self.run_dag_in(dag, fence, arrived, caller.clone())).await;
        }
        // AI.DAGEXECUTE_RO / AI.DAGRUN_RO on a follower (a router spreading
        // read-only DAGs over the replicas sends them here): it waits until
        // it has applied what the leader had committed when asked, then
        // runs the DAG on its own copy of the data.
        if dag.kind.read_only() && !self.group.is_leader() {
            return match self.group.follower_read(FOLLOWER_READ_WAIT).await {
                Ok(()) => answer(self.run_dag_in(dag, None, arrived, caller).await),
                Err(u) => self.unconfirmed(u),
            };
        }
        // Read-only. A leader that has applied an entry of its term has
        // every acknowledged write: it reads at once, and the confirmation
        // that it still leads (started after the command arrived) runs
        // beside the ops. Otherwise it confirms first.
        if self.group.leading_applied_term().is_none() {
            if let Err(o) = self.confirm_dag_read().await {
                return o;
            }
            return answer(self.run_dag_in(dag, None, arrived, caller).await);
        }
        let (confirmed, ran) = tokio::join!(self.confirm_dag_read(), self.run_dag_in(dag, None, arrived, caller));
        match confirmed {
            Ok(()) => answer(ran),
            Err(not_here) => not_here,
        }
    }

    async fn run_dag_in(&self, dag: &Dag, fence: Option<u64>, arrived: Instant, caller: Option<Caller>) -> Executed {
        let error = |e: NodeError| Executed::Unwritten(Outcome::Error(e));
        if !dag.well_formed() {
            return error(NodeError::Internal("internal: a DAG whose values are out of range"));
        }
        let now = now_ms();
        // 1. Check.
        let (mut values, found) = {
            let d = self.data.lock();
            let mut values: Vec<Option<Tensor>> = vec![None; dag.values];
            for (v, k) in dag.load.iter().enumerate() {
                match input_tensor(d.ks.get(k, now).map(|e| &e.value)) {
                    Ok(t) => values[v] = Some(t),
                    Err(e) => return error(e),
                }
            }
            let found: Vec<Option<Result<Value, NodeError>>> = dag
                .ops
                .iter()
                .map(|op| {
                    let (key, empty) = match op {
                        DagOp::Model { run, .. } => (&run.key, NodeError::EmptyModel),
                        DagOp::Script { run, .. } => (&run.key, NodeError::EmptyScript),
                        DagOp::TensorSet { .. } | DagOp::TensorGet { .. } => return None,
                    };
                    Some(d.ks.get(key, now).map(|e| e.value.clone()).ok_or(empty))
                })
                .collect();
            (values, found)
        };
        let mut runners: Vec<Option<Runner>> = Vec::with_capacity(dag.ops.len());
        for (op, found) in dag.ops.iter().zip(found) {
            let runner = match (op, found) {
                (_, None) => None,
                (_, Some(Err(e))) => return error(e),
                (DagOp::Model { run, .. }, Some(Ok(Value::Model(m)))) => {
                    let checked = counts(&m).await.and_then(|(i, o)| run.check(i, o).map_err(NodeError::from));
                    if let Err(e) = checked {
                        return error(e);
                    }
                    Some(Runner::Model(m))
                }
                (DagOp::Script { run, .. }, Some(Ok(Value::Script(s)))) => {
                    if let Some(e) = &run.fails {
                        return error(e.clone().into());
                    }
                    match compiled(&s).await {
                        Ok(c) => Some(Runner::Script(s, c)),
                        Err(e) => return error(e),
                    }
                }
                (_, Some(Ok(_))) => return error(Error::WrongType.into()),
            };
            runners.push(runner);
        }
        if let Some(e) = &dag.fails {
            return error(e.clone().into());
        }
        for op in &dag.ops {
            if let DagOp::TensorSet { output, tensor, .. } = op {
                values[*output] = Some(tensor.clone());
            }
        }
        // 2. Run.
        let host = dag.ops.iter().find_map(|op| match op {
            DagOp::Script { run, .. } => {
                Some(Arc::new(Host::new(self.data.clone(), key_slot(&run.key), now).for_caller(caller.clone())))
            }
            _ => None,
        });
        let deadline = dag.timeout_ms.map(|t| arrived + Duration::from_millis(t));
        let run = run_ops(dag, &runners, &mut values, host.clone(), deadline).await;
        let Some((states, errors, failed_at)) = run else {
            return Executed::Unwritten(Outcome::Reply(Reply::Simple("TIMEDOUT".into())));
        };
        let stop = failed_at.unwrap_or(dag.ops.len());
        let mut replies: Vec<Reply> = dag
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| match op {
                // (It ran when parsed: RedisAI answers OK whatever failed.)
                DagOp::TensorSet { .. } => Reply::ok(),
                _ if i > stop => na(),
                DagOp::TensorGet { input, format, .. } => match &values[*input] {
                    Some(t) => t.reply(*format).unwrap_or_else(|e| e.to_reply()),
                    None => na(),
                },
                DagOp::Model { .. } | DagOp::Script { .. } => match (states[i], &errors[i]) {
                    (State::Done, _) => Reply::ok(),
                    (State::Failed, Some(e)) => e.to_reply(),
                    _ => na(),
                },
            })
            .collect();
        let reply = |replies: Vec<Reply>| Executed::Unwritten(Outcome::Reply(Reply::Array(replies)));
        if failed_at.is_some() || !dag.writes() {
            return reply(replies);
        }
        // 3. Persist (with the scripts' writes), as one entry.
        let host = match host.map(Arc::try_unwrap) {
            None => Host::new(self.data.clone(), dag.keys().next().map_or(0, |k| key_slot(k)), now),
            Some(Ok(h)) => h,
            Some(Err(_)) => return error(NodeError::Internal("internal: a script op outlived its DAG")),
        };
        let persisted =
            dag.persist.iter().zip(&dag.persisted).filter_map(|(k, v)| values[*v].clone().map(|t| (k.clone(), t)));
        let effects = match host.effects(persisted) {
            Ok(e) => e,
            // (RedisAI appends the error of a PERSIST that could not be
            // written; here nothing of the DAG is written then.)
            Err(e) => {
                replies.push(e.to_reply());
                return reply(replies);
            }
        };
        if effects.writes.is_empty() {
            return reply(replies);
        }
        let cmd = NodeCommand::Effects { writes: effects.writes, expected: effects.expected };
        match self.write_outputs(cmd, fence).await {
            Executed::Written(Outcome::Reply(r)) if !matches!(r, Reply::Error(_)) => {
                Executed::Written(Outcome::Reply(Reply::Array(replies)))
            }
            // Not written (TRYAGAIN, not the leader, a lost write): that is
            // the DAG's answer.
            other => other,
        }
    }
}

/// The ops' states, errors and the first failed op; `None` if the DAG
/// timed out.
type Finished = Option<(Vec<State>, Vec<Option<NodeError>>, Option<usize>)>;

/// Runs the model and script ops of `dag`, each once the ops it depends on
/// are done (see the module docs), filling `values` with their outputs.
async fn run_ops(
    dag: &Dag,
    runners: &[Option<Runner>],
    values: &mut [Option<Tensor>],
    host: Option<Arc<Host>>,
    deadline: Option<Instant>,
) -> Finished {
    let n = dag.ops.len();
    // Which op writes each value (none: LOADed or set by a TENSORSET).
    let mut producer: Vec<Option<usize>> = vec![None; values.len()];
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut last_script = None;
    for (i, op) in dag.ops.iter().enumerate() {
        let (inputs, outputs) = match op {
            DagOp::Model { inputs, outputs, .. } => (inputs, outputs),
            DagOp::Script { inputs, outputs, .. } => {
                deps[i].extend(last_script.replace(i));
                (inputs, outputs)
            }
            DagOp::TensorSet { .. } | DagOp::TensorGet { .. } => continue,
        };
        deps[i].extend(inputs.iter().filter_map(|v| producer[*v]));
        for v in outputs {
            producer[*v] = Some(i);
        }
    }
    let mut states: Vec<State> = dag
        .ops
        .iter()
        .map(|op| match op {
            DagOp::Model { .. } | DagOp::Script { .. } => State::Waiting,
            DagOp::TensorSet { .. } | DagOp::TensorGet { .. } => State::Done,
        })
        .collect();
    let mut errors: Vec<Option<NodeError>> = (0..n).map(|_| None).collect();
    let mut failed_at: Option<usize> = None;
    let mut timed_out = false;
    let threads = registry().settings().threads_per_queue;
    let mut running: FuturesUnordered<BoxFuture<'static, (usize, Ran)>> = FuturesUnordered::new();
    loop {
        // Start every op whose inputs are ready (none after a failure: the
        // ops before it still run, as they would have in DAG order).
        for i in 0..n {
            if timed_out || failed_at.is_some_and(|f| i >= f) {
                break;
            }
            if states[i] != State::Waiting || deps[i].iter().any(|d| states[*d] != State::Done) {
                continue;
            }
            let remaining = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(r) if !r.is_zero() => Some(r),
                    _ => {
                        timed_out = true;
                        continue;
                    }
                },
            };
            let (inputs, runner) = match (&dag.ops[i], &runners[i]) {
                (DagOp::Model { inputs, .. } | DagOp::Script { inputs, .. }, Some(r)) => (inputs, r),
                // (The check step gives every model and script op its runner.)
                _ => {
                    states[i] = State::Failed;
                    errors[i] = Some(NodeError::Internal("internal: a DAG op without its runner"));
                    failed_at = Some(failed_at.map_or(i, |f| f.min(i)));
                    continue;
                }
            };
            // (A value an op left empty, a model's non-tensor output.)
            let inputs: Option<Vec<Tensor>> = inputs.iter().map(|v| values[*v].clone()).collect();
            let Some(inputs) = inputs else {
                states[i] = State::Failed;
                errors[i] = Some(Error::ai("ERR INPUT key cannot be found in DAG").into());
                failed_at = Some(failed_at.map_or(i, |f| f.min(i)));
                continue;
            };
            let started = match (&dag.ops[i], runner, &host) {
                (_, Runner::Model(m), _) => {
                    let rx = engine().submit(m.clone(), inputs, remaining, threads);
                    async move {
                        let ran = match rx.await {
                            Ok(RunResult::Done(outs)) => Ran::Done(outs),
                            Ok(RunResult::TimedOut) => Ran::TimedOut,
                            Ok(RunResult::Failed(e)) => Ran::Failed(e),
                            Err(_) => Ran::Failed(NodeError::RunDropped),
                        };
                        (i, ran)
                    }
                    .boxed()
                }
                (DagOp::Script { run, .. }, Runner::Script(s, c), Some(host)) => {
                    let (s, c, run, host): (_, _, ScriptRun, _) = (s.clone(), c.clone(), run.clone(), host.clone());
                    let queue = s.def.device.queue_name();
                    let rx =
                        engine().run_on(&queue, remaining, threads, move || call_script(&s, &*c, &run, &inputs, &host));
                    async move {
                        let ran = match rx.await {
                            Ok(Some(Ok(outs))) => Ran::Done(outs.into_iter().map(Some).collect()),
                            Ok(Some(Err(e))) => Ran::Failed(e),
                            Ok(None) => Ran::TimedOut,
                            Err(_) => Ran::Failed(NodeError::RunDropped),
                        };
                        (i, ran)
                    }
                    .boxed()
                }
                _ => futures::future::ready((
                    i,
                    Ran::Failed(NodeError::Internal("internal: a DAG op without its runner")),
                ))
                .boxed(),
            };
            states[i] = State::Running;
            running.push(started);
        }
        // Every op that started is waited for, even after a failure.
        let Some((i, ran)) = running.next().await else { break };
        match ran {
            Ran::Done(outs) => {
                states[i] = State::Done;
                let outputs = match &dag.ops[i] {
                    DagOp::Model { outputs, .. } | DagOp::Script { outputs, .. } => outputs,
                    _ => continue,
                };
                for (v, t) in outputs.iter().zip(outs) {
                    values[*v] = t;
                }
            }
            Ran::Failed(e) => {
                states[i] = State::Failed;
                errors[i] = Some(e);
                failed_at = Some(failed_at.map_or(i, |f| f.min(i)));
            }
            Ran::TimedOut => timed_out = true,
        }
    }
    (!timed_out).then_some((states, errors, failed_at))
}
