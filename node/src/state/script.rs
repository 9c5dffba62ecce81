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
        NodeCommand::Effects { writes, expected } => {
            if ks.moved(expected, ts) {
                return NodeError::ScriptRaced.to_reply();
            }
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tessera_common::command::node::Written;
    use tessera_common::command::NodeCommand;
    use tessera_common::reply::Reply;

    use super::apply;
    use crate::data::keyspace::{Entry, Keyspace, Value};

    fn str_entry(v: &str) -> Entry {
        Entry { value: Value::Str(Bytes::copy_from_slice(v.as_bytes())), expire_at: None }
    }

    #[test]
    fn effects_write_nothing_if_a_key_they_change_moved_meanwhile() {
        let mut ks = Keyspace::new();
        let k = Bytes::from("n{1}");
        ks.insert(k.clone(), str_entry("1"));
        // The script read "1" and left "2"; another write made it "5" first.
        let effects = NodeCommand::Effects {
            writes: vec![(k.clone(), Written::Str { value: Bytes::from("2"), expire_at: None })],
            expected: vec![(k.clone(), Some(str_entry("1").fingerprint()))],
        };
        ks.insert(k.clone(), str_entry("5"));
        let r = apply(&mut ks, 0, &effects, &mut Vec::new());
        assert!(matches!(&r, Reply::Error(e) if e.starts_with("TRYAGAIN")), "{r:?}");
        assert!(matches!(&ks.get(&k, 0).unwrap().value, Value::Str(v) if v == "5"));
        // Unmoved, they apply; a key that was absent must still be.
        ks.insert(k.clone(), str_entry("1"));
        assert_eq!(apply(&mut ks, 0, &effects, &mut Vec::new()), Reply::ok());
        assert!(matches!(&ks.get(&k, 0).unwrap().value, Value::Str(v) if v == "2"));
        let fresh = NodeCommand::Effects {
            writes: vec![(Bytes::from("x{1}"), Written::Deleted)],
            expected: vec![(Bytes::from("x{1}"), None)],
        };
        ks.insert(Bytes::from("x{1}"), str_entry("meanwhile"));
        assert!(matches!(apply(&mut ks, 0, &fresh, &mut Vec::new()), Reply::Error(_)));
        // Deadlines count: the same value with another TTL has moved.
        let a = Entry { expire_at: Some(10), ..str_entry("1") };
        assert_ne!(a.fingerprint(), str_entry("1").fingerprint());
    }
}
