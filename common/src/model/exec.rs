//! `AI.MODELEXECUTE` and the deprecated `AI.MODELRUN`: their arguments.

use bytes::Bytes;

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

#[derive(Clone, Copy)]
enum Section {
    Inputs,
    Outputs,
}

/// One `INPUTS n k..` / `OUTPUTS n k..` section of MODELEXECUTE starting at
/// `i`, checked against the model's `expected` count: its keys and the
/// index after it.
fn exec_section(argv: &[Bytes], i: usize, section: Section, expected: usize) -> Result<(Vec<Bytes>, usize)> {
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
    if n != expected {
        return Err(Error::Verbatim(format!("Number of keys given as {word} here does not match model definition")));
    }
    let start = i + 2;
    if argv.len() < start + n {
        return Err(Error::Verbatim(format!(
            "ERR number of {lower} keys to AI.MODELEXECUTE command does not match the number of given arguments"
        )));
    }
    Ok((argv[start..start + n].to_vec(), start + n))
}

/// `AI.MODELEXECUTE key INPUTS n .. OUTPUTS m .. [TIMEOUT t]` against a
/// model with `n_in` inputs and `n_out` outputs (argv[0] is the command).
pub fn parse_modelexecute(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    let (inputs, i) = exec_section(argv, 2, Section::Inputs, n_in)?;
    let (outputs, i) = exec_section(argv, i, Section::Outputs, n_out)?;
    let mut timeout_ms = None;
    if let Some(tok) = argv.get(i) {
        if !eq(tok, "TIMEOUT") {
            return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(tok))));
        }
        timeout_ms = Some(timeout(argv.get(i + 1))?);
        if let Some(extra) = argv.get(i + 2) {
            return Err(Error::Verbatim(format!("Invalid argument: {}", String::from_utf8_lossy(extra))));
        }
    }
    Ok(ExecArgs { inputs, outputs, timeout_ms })
}

/// Deprecated `AI.MODELRUN key [TIMEOUT t] INPUTS k.. OUTPUTS k..`.
pub fn parse_modelrun(argv: &[Bytes], n_in: usize, n_out: usize) -> Result<ExecArgs> {
    let mut i = 2;
    let mut timeout_ms = None;
    if argv.get(i).is_some_and(|a| eq(a, "TIMEOUT")) {
        timeout_ms = Some(timeout(argv.get(i + 1)).map_err(|_| err("ERR Invalid value for TIMEOUT"))?);
        i += 2;
    }
    if !argv.get(i).is_some_and(|a| eq(a, "INPUTS")) {
        return Err(err("ERR INPUTS not specified"));
    }
    let rest = &argv[i + 1..];
    let out_at = rest.iter().position(|a| eq(a, "OUTPUTS")).unwrap_or(rest.len());
    let inputs = rest[..out_at].to_vec();
    let outputs = rest.get(out_at + 1..).unwrap_or_default().to_vec();
    if inputs.len() != n_in {
        return Err(err("Number of keys given as INPUTS here does not match model definition"));
    }
    if outputs.len() != n_out {
        return Err(err("Number of keys given as OUTPUTS here does not match model definition"));
    }
    Ok(ExecArgs { inputs, outputs, timeout_ms })
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
