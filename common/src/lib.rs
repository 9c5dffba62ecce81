//! What `tessera-router` and `tessera-node` share.
//!
//! * [`slot`] — key → hash slot (CRC16/XMODEM with hash tags), slot ranges;
//! * [`command`] — the command table and the parser that turns argv into
//!   typed commands once, plus [`command::NodeCommand`], the router→node form;
//! * [`tensor`] — RedisAI tensors: dtypes, BLOB/VALUES parsing, TENSORGET replies;
//! * [`reply`] — protocol-neutral replies and their RESP2/RESP3 encodings;
//! * [`error`] — every error a command can answer with, with its exact text;
//! * [`glob`] — Redis glob patterns for KEYS/SCAN/CONFIG GET.

#![forbid(unsafe_code)]

pub mod command;
pub mod error;
pub mod glob;
pub mod reply;
pub mod slot;
pub mod tensor;

pub use error::{Error, Result};
pub use reply::{Protocol, Reply};
