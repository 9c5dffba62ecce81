//! How the script commands change a keyspace: storing and deleting a
//! script, and the effects of a script's run (written as one entry, so
//! replicas apply what the run changed and never run the script).

use tessera_common::command::node::Written;
use tessera_common::command::NodeCommand;
use tessera_common::error::Error;
use tessera_common::reply::Reply;

use super::Effect;
use crate::data::keyspace::{Entry, Keyspace, Value};
use crate::engine::script::StoredScript;
use crate::error::Error as NodeError;

/// Applies AI.SCRIPTSTORE/SCRIPTSET, AI.SCRIPTDEL or a run's effects at
/// time `ts`.
pub fn apply(ks: &mut Keyspace, ts: i64, cmd: &NodeCommand, effects: &mut Vec<Effect>) -> Reply {
    match cmd {
        NodeCommand::ScriptStore { key, script } => {
            if let Some(Entry { value: Value::Str(_) | Value::Tensor(_) | Value::Model(_), .. }) = ks.get(key, ts) {
                return Error::WrongType.to_reply();
            }
            let stored = StoredScript::new(script.clone());
            effects.push(Effect::CompileScript(stored.clone()));
            ks.insert(key.clone(), Entry { value: Value::Script(stored), expire_at: None });
            Reply::ok()
        }
        NodeCommand::ScriptDel { key } => match ks.get(key, ts).map(|e| &e.value) {
            None => NodeError::EmptyScript.to_reply(),
            Some(Value::Script(_)) => {
                ks.remove(key);
                Reply::ok()
            }
            Some(_) => Error::WrongType.to_reply(),
        },
        NodeCommand::Effects { writes } => {
            for (key, w) in writes {
                match w {
                    Written::Str { value, expire_at } => {
                        ks.insert(key.clone(), Entry { value: Value::Str(value.clone()), expire_at: *expire_at })
                    }
                    Written::Tensor { tensor, expire_at } => {
                        ks.insert(key.clone(), Entry { value: Value::Tensor(tensor.clone()), expire_at: *expire_at })
                    }
                    Written::Expiry { expire_at } => {
                        ks.set_expiry(key, *expire_at, ts);
                    }
                    Written::Deleted => {
                        ks.remove(key);
                    }
                }
            }
            Reply::ok()
        }
        _ => NodeError::Internal("not a script command").to_reply(),
    }
}
