//! `AI.MODELEXECUTE` and the deprecated `AI.MODELRUN`: their arguments.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{eq, err};
use crate::error::{Error, Result};

/// A parsed AI.MODELEXECUTE / AI.MODELRUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecArgs {
    pub inputs: Vec<Bytes>,
    pub outputs: Vec<Bytes>,
    /// Milliseconds from queueing after which a run that has not started
    /// answers TIMEDOUT.
    pub timeout_ms: Option<u64>,
}

fn count(b: Option<&Bytes>, invalid: &str, nonpositive: &str) -> Result<usize> {
    let b = b.ok_or_else(|| err(invalid))?;
    let v = crate::command::int_arg(b).map_err(|_| err(invalid))?;
    if v <= 0 {
        return Err(err(nonpositive));
    }
    Ok(v as usize)
}

fn timeout(b: Option<&Bytes>) -> Result<u64> {
    let b = b.ok_or_else(|| err("ERR No value provided for TIMEOUT"))?;
    crate::command::int_arg(b)
        .ok()
        .filter(|t| *t > 0)
        .map(|t| t as u64)
        .ok_or_else(|| err("ERR Invalid value for TIMEOUT"))
}

/// A run inside a DAG takes the DAG's TIMEOUT, not its own.
pub(crate) const TIMEOUT_IN_DAG: &str = "ERR TIMEOUT not allowed within a DAG command";

#[derive(Clone, Copy)]
enum Section {
    Inputs,
    Outputs,
}

/// AI.MODELEXECUTE / AI.MODELRUN, parsed once where it arrives (the
/// router): the model, input and output keys and TIMEOUT, and what is left
/// to check once the model is found (RedisAI finds the model first, then
/// reads the arguments, comparing each count with the model's as it
/// reads it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRun {
    pub key: Bytes,
    pub inputs: Vec<Bytes>,
    pub outputs: Vec<Bytes>,
    /// Milliseconds from queueing after which a run that has not started
    /// answers TIMEDOUT.
    pub timeout_ms: Option<u64>,
    /// The deprecated AI.MODELRUN (metrics name it as AI.MODELEXECUTE).
    pub deprecated: bool,
    /// In RedisAI's order: the counts given, and the first error in the
    /// arguments, if any (the keys above are then those read before it).
    pub checks: Vec<Check>,
}

/// One check of a [`ModelRun`] that needs the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Check {
    /// This many inputs were given: the model must take as many.
    Inputs(usize),
    /// This many outputs were given: the model must give as many.
    Outputs(usize),
    /// The arguments are wrong: this error, once the model is found.
    Fails(Error),
}

impl ModelRun {
    /// Parses `argv` (argv[0] is the command, argv[1] the model key).
    pub fn parse(argv: &[Bytes], deprecated: bool) -> ModelRun {
        Self::parse_in(argv, deprecated, false)
    }

    /// Parses one op of a DAG (`argv` is the op's tokens): as
    /// [`ModelRun::parse`], except that TIMEOUT belongs to the DAG.
    pub fn parse_in_dag(argv: &[Bytes], deprecated: bool) -> ModelRun {
        Self::parse_in(argv, deprecated, true)
    }

    fn parse_in(argv: &[Bytes], deprecated: bool, dag: bool) -> ModelRun {
        let mut run = ModelRun {
            key: argv.get(1).cloned().unwrap_or_default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            timeout_ms: None,
            deprecated,
            checks: Vec::new(),
        };
        let failed = match deprecated {
            true => run.read_modelrun(argv, dag),
            false => run.read_modelexecute(argv, dag),
        };
        if let Err(e) = failed {
            run.checks.push(Check::Fails(e));
        }
        run
    }

    /// `key INPUTS n .. OUTPUTS m .. [TIMEOUT t]`.
    fn read_modelexecute(&mut self, argv: &[Bytes], dag: bool) -> Result<()> {
        let mut i = 2;
        for section in [Section::Inputs, Section::Outputs] {
            let (word, lower, upper) = match section {
                Section::Inputs => ("INPUTS", "input", "Input"),
                Section::Outputs => ("OUTPUTS", "output", "Output"),
            };
            if !argv.get(i).is_some_and(|a| eq(a, word)) {
                return Err(Error::Verbatim(format!("ERR {word} not specified")));
            }
            let n = count(
                argv.get(i + 1),
                &format!("ERR Invalid argument for {lower}_count"),
                &format!("ERR {upper} count must be a positive integer"),
            )?;
            self.checks.push(match section {
                Section::Inputs => Check::Inputs(n),
                Section::Outputs => Check::Outputs(n),
            });
            let start = i + 2;
            if argv.len() < start + n {
                return Err(Error::Verbatim(format!(
                    "ERR number of {lower} keys to AI.MODELEXECUTE command does not match the number of given arguments"
                )));
            }
            let keys = argv[start..start + n].to_vec();
            match section {
                Section::Inputs => self.inputs = keys,
                Section::Outputs => self.outputs = keys,
            }
            i = start + n;
        }
        if let Some(tok) = argv.get(i) {
            if !eq(tok, "TIMEOUT") {
                return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(tok))));
            }
            self.timeout_ms = Some(timeout(argv.get(i + 1))?);
            if let Some(extra) = argv.get(i + 2) {
                return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(extra))));
            }
            // (Refused in a DAG only once the whole op has been read, as
            // RedisAI does.)
            if dag {
                return Err(err(TIMEOUT_IN_DAG));
            }
        }
        Ok(())
    }

    /// `key [TIMEOUT t] INPUTS k.. OUTPUTS k..`: the first OUTPUTS after
    /// INPUTS ends the inputs.
    fn read_modelrun(&mut self, argv: &[Bytes], dag: bool) -> Result<()> {
        let mut i = 2;
        if argv.get(i).is_some_and(|a| eq(a, "TIMEOUT")) {
            self.timeout_ms = Some(timeout(argv.get(i + 1)).map_err(|_| err("ERR Invalid value for TIMEOUT"))?);
            i += 2;
        }
        if !argv.get(i).is_some_and(|a| eq(a, "INPUTS")) {
            return Err(err("ERR INPUTS not specified"));
        }
        let rest = &argv[i + 1..];
        let out_at = rest.iter().position(|a| eq(a, "OUTPUTS")).unwrap_or(rest.len());
        self.inputs = rest[..out_at].to_vec();
        self.outputs = rest.get(out_at + 1..).unwrap_or_default().to_vec();
        self.checks.push(Check::Inputs(self.inputs.len()));
        self.checks.push(Check::Outputs(self.outputs.len()));
        // (After the counts are checked against the model.)
        if dag && self.timeout_ms.is_some() {
            return Err(err(TIMEOUT_IN_DAG));
        }
        Ok(())
    }

    /// The checks against a model with `n_in` inputs and `n_out` outputs,
    /// in order: the first that fails is the run's answer.
    pub fn check(&self, n_in: usize, n_out: usize) -> Result<()> {
        for c in &self.checks {
            match c {
                Check::Inputs(n) if *n != n_in => {
                    return Err(err("Number of keys given as INPUTS here does not match model definition"))
                }
                Check::Outputs(n) if *n != n_out => {
                    return Err(err("Number of keys given as OUTPUTS here does not match model definition"))
                }
                Check::Fails(e) => return Err(e.clone()),
                Check::Inputs(_) | Check::Outputs(_) => {}
            }
        }
        Ok(())
    }

    /// Every key the run names: model, inputs, outputs.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.key).chain(&self.inputs).chain(&self.outputs)
    }
}

/// `AI.MODELEXECUTE key INPUTS n .. OUTPUTS m .. [TIMEOUT t]` against a
/// model with `n_in` inputs and `n_out` outputs (argv[0] is the command).
pub fn parse_modelexecute(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    checked(ModelRun::parse(argv, false), n_in, n_out)
}

/// Deprecated `AI.MODELRUN key [TIMEOUT t] INPUTS k.. OUTPUTS k..`.
pub fn parse_modelrun(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    checked(ModelRun::parse(argv, true), n_in, n_out)
}

fn checked(run: ModelRun, n_in: usize, n_out: usize) -> Result<ExecArgs> {
    run.check(n_in, n_out)?;
    Ok(ExecArgs { inputs: run.inputs, outputs: run.outputs, timeout_ms: run.timeout_ms })
}

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::*;

    #[test]
    fn modelexecute_args() {
        let ex = |s: &str| parse_modelexecute(&argv(s), 2, 1).map_err(|e| e.to_string());
        let a = ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT 5").unwrap();
        assert_eq!((a.inputs.len(), a.outputs.len(), a.timeout_ms), (2, 1, Some(5)));
        assert_eq!(ex("AI.MODELEXECUTE m OUTPUTS 1 c").unwrap_err(), "ERR INPUTS not specified");
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS x a b").unwrap_err(), "ERR Invalid argument for input_count");
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS 0 a b").unwrap_err(), "ERR Input count must be a positive integer");
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 1 a OUTPUTS 1 c").unwrap_err(),
            "Number of keys given as INPUTS here does not match model definition"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 2 c d").unwrap_err(),
            "Number of keys given as OUTPUTS here does not match model definition"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT").unwrap_err(),
            "ERR No value provided for TIMEOUT"
        );
        assert_eq!(
            ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c TIMEOUT 0").unwrap_err(),
            "ERR Invalid value for TIMEOUT"
        );
        assert_eq!(ex("AI.MODELEXECUTE m INPUTS 2 a b OUTPUTS 1 c FOO").unwrap_err(), "Invalid argument: FOO");
        let run = parse_modelrun(&argv("AI.MODELRUN m TIMEOUT 9 INPUTS a b OUTPUTS c"), 2, 1).unwrap();
        assert_eq!((run.inputs.len(), run.timeout_ms), (2, Some(9)));
    }
}
