//! RedisAI commands: tensors, models, scripts and DAGs, each parsed into the
//! [`NodeCommand`] its shard runs.

use bytes::Bytes;

use super::node::NodeCommand;
use super::server::Local;
use super::table::CommandSpec;
use super::{arity_name, common_slot, keys_slot, Command, ParseLimits};
use crate::error::{Error, Result};
use crate::model::{
    parse_ai_config, parse_dag, parse_modelset, parse_modelstore, parse_scriptset, parse_scriptstore, DagKind,
    ModelRun, ScriptRun,
};
use crate::tensor::{parse_get_format, Tensor};

pub fn parse(spec: &CommandSpec, argv: Vec<Bytes>, limits: &ParseLimits) -> Result<Command> {
    match spec.name {
        "ai.tensorset" => {
            if argv.len() < 4 {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            // (RedisAI opens the key before it reads the arguments: a key
            // of another type answers WRONGTYPE first, so a wrong argument
            // is answered by the shard, after it has looked at the key.)
            let key = argv[1].clone();
            let cmd = match Tensor::parse_set(&argv[2..], limits.max_value_bytes) {
                Ok(tensor) => NodeCommand::TensorSet { key, tensor },
                Err(error) => NodeCommand::TensorArgError { key, get: false, error },
            };
            Ok(Command::Keyed { slot, cmd })
        }
        "ai.tensorget" => {
            if !(2..=4).contains(&argv.len()) {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            let key = argv[1].clone();
            let cmd = match parse_get_format(&argv[2..]) {
                Ok(format) => NodeCommand::TensorGet { key, format },
                Err(error) => NodeCommand::TensorArgError { key, get: true, error },
            };
            Ok(Command::Keyed { slot, cmd })
        }
        "ai.modelstore" | "ai.modelset" => {
            // (The parsers check the arity before the key is looked at.)
            let model = if spec.name == "ai.modelstore" { parse_modelstore(&argv)? } else { parse_modelset(&argv)? };
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ModelStore { key: argv[1].clone(), model } })
        }
        "ai.modelget" => {
            if !(2..=4).contains(&argv.len()) {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            let has = |w: &[u8]| argv[2..].iter().any(|a| a.eq_ignore_ascii_case(w));
            let (meta, blob) = (has(b"META"), has(b"BLOB"));
            Ok(Command::Keyed { slot, cmd: NodeCommand::ModelGet { key: argv[1].clone(), meta, blob } })
        }
        "ai.modeldel" => {
            if argv.len() != 2 {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ModelDel { key: argv[1].clone() } })
        }
        "ai.modelexecute" | "ai.modelrun" => {
            keys_first(spec, &argv)?;
            let deprecated = spec.name == "ai.modelrun";
            let (min, name) = if deprecated { (6, "AI.MODELRUN") } else { (8, "AI.MODELEXECUTE") };
            if argv.len() < min {
                return Err(Error::Verbatim(format!("ERR wrong number of arguments for '{name}' command")));
            }
            let run = ModelRun::parse(&argv, deprecated);
            let slot = keys_slot(run.keys())?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ModelExecute(run) })
        }
        "ai.scriptstore" | "ai.scriptset" => {
            let script =
                if spec.name == "ai.scriptstore" { parse_scriptstore(&argv)? } else { parse_scriptset(&argv)? };
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ScriptStore { key: argv[1].clone(), script } })
        }
        "ai.scriptget" => {
            if !(2..=4).contains(&argv.len()) {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            let has = |w: &[u8]| argv[2..].iter().any(|a| a.eq_ignore_ascii_case(w));
            let (meta, source) = (has(b"META"), has(b"SOURCE"));
            Ok(Command::Keyed { slot, cmd: NodeCommand::ScriptGet { key: argv[1].clone(), meta, source } })
        }
        "ai.scriptdel" => {
            if argv.len() != 2 {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ScriptDel { key: argv[1].clone() } })
        }
        "ai.scriptexecute" | "ai.scriptrun" => {
            keys_first(spec, &argv)?;
            let deprecated = spec.name == "ai.scriptrun";
            if argv.len() < 3 {
                let name = if deprecated { "AI.SCRIPTRUN" } else { "AI.SCRIPTEXECUTE" };
                return Err(Error::Verbatim(format!("ERR wrong number of arguments for '{name}' command")));
            }
            let run = ScriptRun::parse(&argv, deprecated);
            let slot = keys_slot(run.all_keys())?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::ScriptExecute(run) })
        }
        "ai._scriptscan" | "ai._modelscan" => {
            if argv.len() != 1 {
                let name = if spec.name == "ai._scriptscan" { "AI._SCRIPTSCAN" } else { "AI._MODELSCAN" };
                return Err(Error::Verbatim(format!("ERR wrong number of arguments for '{name}' command")));
            }
            Ok(Command::Fanout(super::Fanout::AiScan { scripts: spec.name == "ai._scriptscan" }))
        }
        "ai.info" => {
            if !(2..=3).contains(&argv.len()) {
                return Err(Error::Arity(arity_name(&argv[0])));
            }
            let slot = common_slot(&argv, &[1])?.unwrap_or(0);
            let reset = argv.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"RESETSTAT"));
            Ok(Command::Keyed { slot, cmd: NodeCommand::ModelInfo { key: argv[1].clone(), reset } })
        }
        "ai.config" => Ok(Command::Local(Local::AiConfig(parse_ai_config(&argv)?))),
        "ai.dagexecute" | "ai.dagexecute_ro" | "ai.dagrun" | "ai.dagrun_ro" => {
            let kind = match spec.name {
                "ai.dagexecute" => DagKind::Execute,
                "ai.dagexecute_ro" => DagKind::ExecuteRo,
                "ai.dagrun" => DagKind::Run,
                _ => DagKind::RunRo,
            };
            // Redis Cluster checks the keys COMMAND GETKEYS gives before the
            // command is parsed.
            if let Some(idx) = spec.key_indexes(&argv) {
                common_slot(&argv, &idx)?;
            }
            let dag = parse_dag(&argv, kind, limits.max_value_bytes)?;
            // (A DAGRUN of tensor ops only names no key: any shard runs it.)
            let slot = keys_slot(dag.keys())?.unwrap_or(0);
            Ok(Command::Keyed { slot, cmd: NodeCommand::Dag(dag) })
        }
        // (Every `ai.` entry of the command table is matched above.)
        _ => Err(super::unknown_command(&argv)),
    }
}

/// Redis Cluster finds a command's keys (RedisAI's run commands report
/// theirs through a callback) and answers CROSSSLOT before the command
/// checks its own arguments, its arity included.
fn keys_first(spec: &CommandSpec, argv: &[Bytes]) -> Result<()> {
    if let Some(idx) = spec.key_indexes(argv) {
        common_slot(argv, &idx)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::super::{parse, ParseLimits};
    use super::*;

    #[test]
    fn tensor_commands_route_by_key() {
        let c = parse(argv("AI.TENSORSET mytensor FLOAT 2 VALUES 2 3"), &ParseLimits::default()).unwrap();
        match c {
            Command::Keyed { slot, cmd: NodeCommand::TensorSet { tensor, .. } } => {
                assert_eq!(slot, 13014);
                assert_eq!(tensor.shape, vec![2]);
            }
            other => panic!("{other:?}"),
        }
        let e = parse(argv("AI.TENSORSET t FLOAT"), &ParseLimits::default()).unwrap_err();
        assert_eq!(e.to_string(), "ERR wrong number of arguments for 'AI.TENSORSET' command");
        let e = parse(argv("ai.tensorget t META BLOB VALUES"), &ParseLimits::default()).unwrap_err();
        assert_eq!(e.to_string(), "ERR wrong number of arguments for 'ai.tensorget' command");
        let e = parse(argv("AI.MODELEXECUTE m{1} INPUTS 1 a{2} OUTPUTS 1 b{1}"), &ParseLimits::default());
        assert_eq!(e.unwrap_err(), Error::CrossSlot);
        // Wrong in two ways: CROSSSLOT comes before the command's own checks.
        for two_wrongs in [
            "AI.MODELEXECUTE m{1} INPUTS 1 a{2} OUTPUTS 0",
            "AI.MODELRUN m{1} INPUTS a{2} OUTPUTS",
            "AI.SCRIPTEXECUTE s{1} f KEYS 1 k{2} FOO",
        ] {
            assert_eq!(parse(argv(two_wrongs), &ParseLimits::default()).unwrap_err(), Error::CrossSlot, "{two_wrongs}");
        }
    }

    /// The router sends a command again after its outcome was lost only if
    /// it changes nothing: a model run writes its outputs, so it is not.
    #[test]
    fn only_commands_that_change_nothing_are_retry_safe() {
        let keyed = |s: &str| match parse(argv(s), &ParseLimits::default()).unwrap() {
            Command::Keyed { cmd, .. } => cmd,
            other => panic!("{other:?}"),
        };
        for safe in ["AI.TENSORGET t{1} META", "GET k", "AI.MODELGET m META"] {
            assert!(keyed(safe).retry_safe(), "{safe}");
        }
        for unsafe_ in [
            "AI.MODELEXECUTE m{1} INPUTS 1 a{1} OUTPUTS 1 b{1}",
            "AI.MODELRUN m{1} INPUTS a{1} OUTPUTS b{1}",
            "AI.TENSORSET t FLOAT 1 VALUES 1",
            "SET k v",
            "INCR k",
        ] {
            assert!(!keyed(unsafe_).retry_safe(), "{unsafe_}");
        }
    }
}
