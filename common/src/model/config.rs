//! `AI.CONFIG`: the settings it changes or reads.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{eq, err, BackendKind};
use crate::error::{Error, Result};

/// An AI.CONFIG setting. RedisAI takes THREADS_PER_QUEUE, the parallelism
/// settings and MODEL_EXECUTION_TIMEOUT only at module load; here they can
/// be changed at run time too (they apply to models stored afterwards, and
/// to new run queues).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiConfig {
    BackendsPath(String),
    LoadBackend(BackendKind, String),
    ModelChunkSize(u64),
    ThreadsPerQueue(u64),
    IntraOpParallelism(u64),
    InterOpParallelism(u64),
    ModelExecutionTimeout(u64),
    /// `GET <name>` (upper-cased).
    Get(String),
}

impl AiConfig {
    /// Whether this changes the nodes (sent to every node) or reads one.
    pub fn is_get(&self) -> bool {
        matches!(self, AiConfig::Get(_))
    }
}

/// `AI.CONFIG <sub> ...` (argv[0] is the command).
pub fn parse_ai_config(argv: &[Bytes]) -> Result<AiConfig> {
    let arity = || Error::Arity(crate::command::arity_name(&argv[0]));
    let sub = argv.get(1).ok_or_else(arity)?;
    let value = argv.get(2);
    let number = |name: &str, min: u64| -> Result<u64> {
        let v = value.ok_or_else(|| Error::Verbatim(format!("ERR {name}: missing value")))?;
        crate::command::int_arg(v)
            .ok()
            .filter(|n| *n >= min as i64)
            .map(|n| n as u64)
            .ok_or_else(|| Error::Verbatim(format!("ERR {name}: invalid value")))
    };
    Ok(if eq(sub, "LOADBACKEND") {
        if argv.len() < 4 {
            return Err(arity());
        }
        let kind = BackendKind::parse(&argv[2]).ok_or_else(|| err("ERR unsupported backend"))?;
        AiConfig::LoadBackend(kind, String::from_utf8_lossy(&argv[3]).into_owned())
    } else if eq(sub, "BACKENDSPATH") {
        let v = value.ok_or_else(|| err("ERR BACKENDSPATH: missing path argument"))?;
        AiConfig::BackendsPath(String::from_utf8_lossy(v).into_owned())
    } else if eq(sub, "MODEL_CHUNK_SIZE") {
        let v = value.ok_or_else(|| err("ERR MODEL_CHUNK_SIZE: missing chunk size"))?;
        let n = crate::command::int_arg(v).ok().filter(|n| *n > 0);
        AiConfig::ModelChunkSize(n.ok_or_else(|| err("ERR MODEL_CHUNK_SIZE: invalid chunk size"))? as u64)
    } else if eq(sub, "THREADS_PER_QUEUE") {
        AiConfig::ThreadsPerQueue(number("THREADS_PER_QUEUE", 1)?)
    } else if eq(sub, "INTRA_OP_PARALLELISM") {
        AiConfig::IntraOpParallelism(number("INTRA_OP_PARALLELISM", 0)?)
    } else if eq(sub, "INTER_OP_PARALLELISM") {
        AiConfig::InterOpParallelism(number("INTER_OP_PARALLELISM", 0)?)
    } else if eq(sub, "MODEL_EXECUTION_TIMEOUT") {
        AiConfig::ModelExecutionTimeout(number("MODEL_EXECUTION_TIMEOUT", 1000)?)
    } else if eq(sub, "GET") {
        let v = value.ok_or_else(arity)?;
        AiConfig::Get(String::from_utf8_lossy(v).to_ascii_uppercase())
    } else {
        return Err(err("ERR unsupported subcommand"));
    })
}
