//! Scripts (RedisAI's TorchScript functions): what a compiled script offers
//! the node, and what the node offers a running script in return.
//!
//! A script runs one function per call. While it runs it may call back into
//! the store through its [`ScriptHost`]: `redis.execute(...)` runs a Redis
//! command, `redisAI.model_execute(...)` runs a stored model. The host is
//! the node's; the backend only passes the calls through.

use bytes::Bytes;

use crate::{Result, Tensor};

/// A reply to a script's `redis.execute`, as the script sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostReply {
    /// A nil reply: `None` in the script.
    Nil,
    /// A bulk or status string: `str`.
    Str(Bytes),
    /// An integer: `int`.
    Int(i64),
    /// An array: `List[Any]`.
    Array(Vec<HostReply>),
}

/// What a running script may call. Called on the thread that runs the
/// script, while it runs.
pub trait ScriptHost {
    /// Runs the command `argv` (argv[0] is its name). An error is the text
    /// the script's exception carries.
    fn execute(&self, argv: &[Bytes]) -> std::result::Result<HostReply, String>;

    /// Runs the model at `key` on `inputs`, expecting `outputs` outputs.
    fn model_execute(
        &self,
        key: &[u8],
        inputs: Vec<Tensor>,
        outputs: usize,
    ) -> std::result::Result<Vec<Tensor>, String>;
}

/// One call of a script's function.
#[derive(Clone, Copy, Debug)]
pub struct ScriptCall<'a> {
    pub function: &'a str,
    pub inputs: &'a [Tensor],
    /// KEYS and ARGS (entry points only: other functions take the inputs
    /// alone, one per parameter).
    pub keys: &'a [Bytes],
    pub args: &'a [Bytes],
    /// How many tensors the call must return (0: whatever it returns is
    /// ignored).
    pub outputs: usize,
}

/// A compiled script. `run` may be called from several threads at once.
pub trait Script: Send + Sync {
    fn run(&self, call: &ScriptCall<'_>, host: &dyn ScriptHost) -> Result<Vec<Tensor>>;
}
