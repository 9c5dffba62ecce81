//! RedisAI scripts as commands see them: the stored definition and the
//! argument rules of AI.SCRIPTSTORE / AI.SCRIPTSET, and AI.SCRIPTEXECUTE /
//! AI.SCRIPTRUN parsed into a [`ScriptRun`] (on the router). The script
//! itself (compiling, running) is the node's.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{eq, err, Device};
use crate::command::{arity_name, int_arg};
use crate::error::{Error, Result};

/// A stored script: what is replicated and snapshotted. Every replica
/// compiles the source when it applies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptDef {
    pub device: Device,
    /// The device as the client spelled it (AI.SCRIPTGET and AI.INFO echo it).
    pub device_name: Bytes,
    pub tag: Bytes,
    /// Functions called as `fn(tensors, keys, args)`; any other function
    /// runs with the inputs one per parameter (AI.SCRIPTSET's scripts have
    /// none, so all of theirs do).
    pub entry_points: Vec<String>,
    /// The TorchScript source, up to its first NUL (as RedisAI reads it).
    pub source: String,
}

fn device(name: &Bytes) -> Result<Device> {
    match Device::parse(name) {
        None => Err(err("ERR unsupported device")),
        Some(Device::Tpu) => Err(err("ERR Error configuring script: unsupported device")),
        Some(d) => Ok(d),
    }
}

/// The largest script source stored (TorchScript functions are text: this
/// is far beyond any real one, and keeps compiling bounded).
pub const MAX_SOURCE: usize = 4 << 20;

fn source(b: &Bytes) -> Result<String> {
    let text = b.split(|c| *c == 0).next().unwrap_or_default();
    if text.len() > MAX_SOURCE {
        return Err(Error::Verbatim(format!(
            "ERR script source is too large: {} bytes, at most {MAX_SOURCE}",
            text.len()
        )));
    }
    Ok(String::from_utf8_lossy(text).into_owned())
}

const NO_ENTRY_POINTS: &str = "ERR Insufficient arguments, missing script entry points";
const NO_SOURCE: &str = "ERR Insufficient arguments, missing script SOURCE";

/// `AI.SCRIPTSTORE key device [TAG tag] ENTRY_POINTS n fn.. SOURCE src`
/// (argv[0] is the command). `ENTRY_POINTS n` takes the next `n` arguments
/// as names, whatever they are; anything after the source is ignored.
pub fn parse_scriptstore(argv: &[Bytes]) -> Result<ScriptDef> {
    if argv.len() < 8 {
        return Err(Error::Arity(arity_name(&argv[0])));
    }
    let mut i = 3;
    let mut tag = Bytes::new();
    if eq(&argv[i], "TAG") {
        tag = argv[i + 1].clone();
        i += 2;
    }
    if !argv.get(i).is_some_and(|a| eq(a, "ENTRY_POINTS")) {
        return Err(err(NO_ENTRY_POINTS));
    }
    let n = argv.get(i + 1).ok_or_else(|| err(NO_ENTRY_POINTS)).and_then(|c| {
        int_arg(c).map_err(|_| err("ERR Non numeric entry points number provided to AI.SCRIPTSTORE command"))
    })?;
    let start = i + 2;
    // (A negative count, as RedisAI reads it, asks for more than there is.)
    let names = usize::try_from(n)
        .ok()
        .and_then(|n| argv.get(start..start.checked_add(n)?))
        .ok_or_else(|| err(NO_ENTRY_POINTS))?;
    let entry_points = names.iter().map(|n| String::from_utf8_lossy(n).into_owned()).collect();
    let at = start + names.len();
    if !argv.get(at).is_some_and(|a| eq(a, "SOURCE")) || argv.len() <= at + 1 {
        return Err(err(NO_SOURCE));
    }
    Ok(ScriptDef {
        device: device(&argv[2])?,
        device_name: argv[2].clone(),
        tag,
        entry_points,
        source: source(&argv[at + 1])?,
    })
}

/// Deprecated `AI.SCRIPTSET key device [TAG tag] SOURCE src`.
pub fn parse_scriptset(argv: &[Bytes]) -> Result<ScriptDef> {
    if argv.len() != 5 && argv.len() != 7 {
        return Err(Error::Arity(arity_name(&argv[0])));
    }
    let mut i = 3;
    let mut tag = Bytes::new();
    if argv.len() == 7 && eq(&argv[i], "TAG") {
        tag = argv[i + 1].clone();
        i += 2;
    }
    if !eq(&argv[i], "SOURCE") {
        return Err(err(NO_SOURCE));
    }
    Ok(ScriptDef {
        device: device(&argv[2])?,
        device_name: argv[2].clone(),
        tag,
        entry_points: Vec::new(),
        source: source(&argv[i + 1])?,
    })
}

/// AI.SCRIPTEXECUTE / AI.SCRIPTRUN, parsed where it arrives (the router).
/// RedisAI looks the script up before it reads the arguments, so an error
/// in them ([`ScriptRun::fails`]) is answered once the script is found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRun {
    pub key: Bytes,
    pub function: String,
    /// KEYS: passed to the function, and the keys its `redis.execute`
    /// calls are expected to use.
    pub keys: Vec<Bytes>,
    pub inputs: Vec<Bytes>,
    /// ARGS: strings passed to the function.
    pub args: Vec<Bytes>,
    pub outputs: Vec<Bytes>,
    /// Milliseconds from queueing after which a run that has not started
    /// answers TIMEDOUT.
    pub timeout_ms: Option<u64>,
    /// The deprecated AI.SCRIPTRUN (metrics name it as AI.SCRIPTEXECUTE).
    pub deprecated: bool,
    /// The first error in the arguments, if any.
    pub fails: Option<Error>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Keys,
    Inputs,
    Args,
    Outputs,
}

impl ScriptRun {
    /// Parses `argv` (argv[0] is the command, argv[1] the script key,
    /// argv[2] the function; the caller checked there are three).
    pub fn parse(argv: &[Bytes], deprecated: bool) -> ScriptRun {
        Self::parse_in(argv, deprecated, false)
    }

    /// Parses one op of a DAG (`argv` is the op's tokens): as
    /// [`ScriptRun::parse`], except that TIMEOUT belongs to the DAG.
    pub fn parse_in_dag(argv: &[Bytes], deprecated: bool) -> ScriptRun {
        Self::parse_in(argv, deprecated, true)
    }

    fn parse_in(argv: &[Bytes], deprecated: bool, dag: bool) -> ScriptRun {
        let mut run = ScriptRun {
            key: argv.get(1).cloned().unwrap_or_default(),
            function: argv.get(2).map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default(),
            keys: Vec::new(),
            inputs: Vec::new(),
            args: Vec::new(),
            outputs: Vec::new(),
            timeout_ms: None,
            deprecated,
            fails: None,
        };
        let read = match deprecated {
            true => run.read_scriptrun(argv, dag),
            false => run.read_scriptexecute(argv, dag),
        };
        run.fails = read.err();
        run
    }

    /// `[KEYS n ..] [INPUTS n ..] [ARGS n ..] [OUTPUTS n ..] [TIMEOUT t]`,
    /// KEYS or INPUTS first, each scope once, TIMEOUT last.
    fn read_scriptexecute(&mut self, argv: &[Bytes], dag: bool) -> Result<()> {
        // (Only stand-alone: inside a DAG the scopes come in any order.)
        if !dag && !argv.get(3).is_some_and(|a| eq(a, "KEYS") || eq(a, "INPUTS")) {
            return Err(err("ERR KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command"));
        }
        let mut seen = Vec::new();
        let mut i = 3;
        while let Some(tok) = argv.get(i) {
            let scope = match () {
                _ if eq(tok, "KEYS") => Scope::Keys,
                _ if eq(tok, "INPUTS") => Scope::Inputs,
                _ if eq(tok, "ARGS") => Scope::Args,
                _ if eq(tok, "OUTPUTS") => Scope::Outputs,
                _ if eq(tok, "TIMEOUT") => {
                    let t =
                        argv.get(i + 1).ok_or_else(|| err("ERR No value provided for TIMEOUT in AI.SCRIPTEXECUTE"))?;
                    let t = int_arg(t).ok().filter(|t| *t > 0).ok_or_else(|| err("ERR Invalid value for TIMEOUT"))?;
                    self.timeout_ms = Some(t as u64);
                    if argv.len() > i + 2 {
                        return Err(err("ERR Encountered problem parsing AI.SCRIPTEXECUTE"));
                    }
                    if dag {
                        return Err(err(super::exec::TIMEOUT_IN_DAG));
                    }
                    return Ok(());
                }
                _ => {
                    return Err(Error::Verbatim(format!(
                        "ERR Invalid AI.SCRIPTEXECUTE command. Unexpected argument: {}",
                        String::from_utf8_lossy(tok)
                    )))
                }
            };
            if seen.contains(&scope) {
                let name = String::from_utf8_lossy(tok).to_uppercase();
                return Err(Error::Verbatim(format!(
                    "ERR Already Encountered {name} scope in AI.SCRIPTEXECUTE command"
                )));
            }
            seen.push(scope);
            let items = match scope {
                Scope::Keys => {
                    if argv.len() - i < 3 {
                        return Err(err("ERR Missing arguments after KEYS keyword"));
                    }
                    let n = int_arg(&argv[i + 1])
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| err("ERR Invalid or negative value found in number of KEYS"))?;
                    argv.get(i + 2..).filter(|rest| rest.len() as u64 >= n as u64).map(|rest| &rest[..n as usize]).ok_or_else(
                        || err("ERR Number of pre declared KEYS to be used in the command does not match the number of given arguments"),
                    )?
                }
                _ => {
                    let (what, count) = match scope {
                        Scope::Inputs => ("inputs", "inputs"),
                        // (RedisAI's words.)
                        Scope::Args => ("args", "keys"),
                        _ => ("outputs", "outputs"),
                    };
                    let c = argv.get(i + 1).ok_or_else(|| err("ERR Invalid arguments provided to AI.SCRIPTEXECUTE"))?;
                    let n = int_arg(c).map_err(|_| {
                        Error::Verbatim(format!("ERR Invalid argument for {count} count in AI.SCRIPTEXECUTE"))
                    })?;
                    usize::try_from(n).ok().and_then(|n| argv.get(i + 2..(i + 2).checked_add(n)?)).ok_or_else(|| {
                        Error::Verbatim(format!(
                            "ERR number of {what} to AI.SCRIPTEXECUTE command does not match the number of given arguments"
                        ))
                    })?
                }
            };
            let items = items.to_vec();
            i += 2 + items.len();
            match scope {
                Scope::Keys => self.keys = items,
                Scope::Inputs => self.inputs = items,
                Scope::Args => self.args = items,
                Scope::Outputs => self.outputs = items,
            }
        }
        Ok(())
    }

    /// `[TIMEOUT t] [INPUTS in.. [$ in..]] [OUTPUTS out..]`: one argument per
    /// key, TIMEOUT anywhere. `$` (a variadic list in RedisAI's old
    /// scripts) is checked and otherwise ignored, as in RedisAI 1.2.
    fn read_scriptrun(&mut self, argv: &[Bytes], dag: bool) -> Result<()> {
        let mut scope = None;
        let mut dollar = false;
        let mut i = 3;
        while let Some(tok) = argv.get(i) {
            i += 1;
            if eq(tok, "TIMEOUT") {
                if self.timeout_ms.is_some() {
                    return Err(err("ERR Already encountered an TIMEOUT section in SCRIPTRUN"));
                }
                let t = argv.get(i).and_then(|t| int_arg(t).ok()).filter(|t| *t > 0);
                self.timeout_ms = Some(t.ok_or_else(|| err("ERR Invalid value for TIMEOUT"))? as u64);
                i += 1;
            } else if eq(tok, "INPUTS") {
                match scope {
                    Some(Scope::Inputs) => return Err(err("ERR Already encountered an INPUTS keyword in SCRIPTRUN")),
                    Some(_) => return Err(err("ERR Already encountered an INPUTS section in SCRIPTRUN")),
                    None => scope = Some(Scope::Inputs),
                }
            } else if eq(tok, "OUTPUTS") {
                if scope == Some(Scope::Outputs) {
                    return Err(err("ERR Already encountered an OUTPUTS keyword in SCRIPTRUN"));
                }
                scope = Some(Scope::Outputs);
            } else if tok.as_ref() == b"$" {
                if scope != Some(Scope::Inputs) {
                    return Err(err("ERR Encountered a variable size list of tensors outside of input section"));
                }
                if dollar {
                    return Err(err("ERR Already encountered a variable size list of tensors"));
                }
                dollar = true;
            } else {
                match scope {
                    Some(Scope::Inputs) => self.inputs.push(tok.clone()),
                    Some(_) => self.outputs.push(tok.clone()),
                    None => return Err(err("ERR Unrecongnized parameter to SCRIPTRUN")),
                }
            }
        }
        if dag && self.timeout_ms.is_some() {
            return Err(err(super::exec::TIMEOUT_IN_DAG));
        }
        Ok(())
    }

    /// Every key the run names: script, KEYS, inputs, outputs.
    pub fn all_keys(&self) -> impl Iterator<Item = &Bytes> {
        std::iter::once(&self.key).chain(&self.keys).chain(&self.inputs).chain(&self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::argv;
    use super::*;

    #[test]
    fn scriptstore_in_redisais_order() {
        let p = |s: &str| parse_scriptstore(&argv(s)).map_err(|e| e.to_string());
        let d = p("AI.SCRIPTSTORE s CPU TAG v1 ENTRY_POINTS 2 bar baz SOURCE src").unwrap();
        assert_eq!(
            (d.device, &d.tag[..], d.entry_points.clone(), d.source.as_str()),
            (Device::Cpu(None), &b"v1"[..], vec!["bar".to_owned(), "baz".to_owned()], "src")
        );
        assert_eq!(&d.device_name[..], b"CPU");
        assert_eq!(
            p("AI.SCRIPTSTORE s CPU SOURCE src").unwrap_err(),
            "ERR wrong number of arguments for 'AI.SCRIPTSTORE' command"
        );
        assert_eq!(p("AI.SCRIPTSTORE s CPU TAG t SOURCE src x y").unwrap_err(), NO_ENTRY_POINTS);
        assert_eq!(
            p("AI.SCRIPTSTORE s CPU ENTRY_POINTS x bar SOURCE src").unwrap_err(),
            "ERR Non numeric entry points number provided to AI.SCRIPTSTORE command"
        );
        // The count takes its names whatever they are.
        assert_eq!(p("AI.SCRIPTSTORE s CPU ENTRY_POINTS 5 bar baz SOURCE src").unwrap_err(), NO_ENTRY_POINTS);
        assert_eq!(p("AI.SCRIPTSTORE s CPU ENTRY_POINTS -1 bar baz SOURCE src").unwrap_err(), NO_ENTRY_POINTS);
        assert_eq!(p("AI.SCRIPTSTORE s CPU ENTRY_POINTS 2 bar baz SOURCE").unwrap_err(), NO_SOURCE);
        assert_eq!(p("AI.SCRIPTSTORE s CPU ENTRY_POINTS 1 bar baz SOURCE src").unwrap_err(), NO_SOURCE);
        assert_eq!(p("AI.SCRIPTSTORE s XPU ENTRY_POINTS 1 bar SOURCE src").unwrap_err(), "ERR unsupported device");
        assert_eq!(
            p("AI.SCRIPTSTORE s TPU ENTRY_POINTS 1 bar SOURCE src").unwrap_err(),
            "ERR Error configuring script: unsupported device"
        );
        assert!(p("AI.SCRIPTSTORE s gpu:1 ENTRY_POINTS 0 SOURCE src x").unwrap().entry_points.is_empty());
        let cut = parse_scriptstore(&[
            Bytes::from("AI.SCRIPTSTORE"),
            Bytes::from("s"),
            Bytes::from("CPU"),
            Bytes::from("ENTRY_POINTS"),
            Bytes::from("1"),
            Bytes::from("f"),
            Bytes::from("SOURCE"),
            Bytes::from(&b"def f\0junk"[..]),
        ])
        .unwrap();
        assert_eq!(cut.source, "def f");
    }

    #[test]
    fn scriptset() {
        let p = |s: &str| parse_scriptset(&argv(s)).map_err(|e| e.to_string());
        let d = p("AI.SCRIPTSET s CPU TAG t SOURCE src").unwrap();
        assert!(d.entry_points.is_empty());
        assert_eq!(&d.tag[..], b"t");
        assert_eq!(
            p("AI.SCRIPTSET s CPU SOURCE").unwrap_err(),
            "ERR wrong number of arguments for 'AI.SCRIPTSET' command"
        );
        assert_eq!(p("AI.SCRIPTSET s CPU NOPE src").unwrap_err(), NO_SOURCE);
        assert_eq!(p("AI.SCRIPTSET s CPU SOURCE src x y").unwrap().source, "src");
        let huge = Bytes::from(vec![b'#'; MAX_SOURCE + 1]);
        let argv = [Bytes::from("AI.SCRIPTSET"), Bytes::from("s"), Bytes::from("CPU"), Bytes::from("SOURCE"), huge];
        let e = parse_scriptset(&argv).unwrap_err().to_string();
        assert_eq!(e, format!("ERR script source is too large: {} bytes, at most {MAX_SOURCE}", MAX_SOURCE + 1));
    }

    #[test]
    fn scriptexecute_arguments() {
        let fails = |s: &str| ScriptRun::parse(&argv(s), false).fails.map(|e| e.to_string());
        let r = ScriptRun::parse(
            &argv("AI.SCRIPTEXECUTE s bar KEYS 1 {1} INPUTS 2 a b ARGS 1 3 OUTPUTS 1 c TIMEOUT 5"),
            false,
        );
        assert_eq!(r.fails, None);
        assert_eq!((r.keys.len(), r.inputs.len(), r.args.len(), r.outputs.len(), r.timeout_ms), (1, 2, 1, 1, Some(5)));
        assert_eq!(r.all_keys().count(), 5);
        let cases = [
            ("AI.SCRIPTEXECUTE s bar", "ERR KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command"),
            ("AI.SCRIPTEXECUTE s bar OUTPUTS 1 c", "ERR KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command"),
            ("AI.SCRIPTEXECUTE s bar KEYS 1", "ERR Missing arguments after KEYS keyword"),
            ("AI.SCRIPTEXECUTE s bar KEYS x k{1}", "ERR Invalid or negative value found in number of KEYS"),
            ("AI.SCRIPTEXECUTE s bar KEYS 2 k{1}", "ERR Number of pre declared KEYS to be used in the command does not match the number of given arguments"),
            ("AI.SCRIPTEXECUTE s bar INPUTS OUTPUTS", "ERR Invalid argument for inputs count in AI.SCRIPTEXECUTE"),
            ("AI.SCRIPTEXECUTE s bar KEYS 1 {1} ARGS", "ERR Invalid arguments provided to AI.SCRIPTEXECUTE"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a ARGS x", "ERR Invalid argument for keys count in AI.SCRIPTEXECUTE"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 3 a b", "ERR number of inputs to AI.SCRIPTEXECUTE command does not match the number of given arguments"),
            ("AI.SCRIPTEXECUTE s bar INPUTS -1 a", "ERR number of inputs to AI.SCRIPTEXECUTE command does not match the number of given arguments"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a INPUTS 1 b", "ERR Already Encountered INPUTS scope in AI.SCRIPTEXECUTE command"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT", "ERR No value provided for TIMEOUT in AI.SCRIPTEXECUTE"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT 0", "ERR Invalid value for TIMEOUT"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a TIMEOUT 5 x", "ERR Encountered problem parsing AI.SCRIPTEXECUTE"),
            ("AI.SCRIPTEXECUTE s bar INPUTS 1 a FOO", "ERR Invalid AI.SCRIPTEXECUTE command. Unexpected argument: FOO"),
        ];
        for (cmd, want) in cases {
            assert_eq!(fails(cmd).as_deref(), Some(want), "{cmd}");
        }
        assert_eq!(fails("AI.SCRIPTEXECUTE s long KEYS 1 {$} INPUTS 0 ARGS 0 OUTPUTS 0"), None);
    }

    #[test]
    fn scriptrun_arguments() {
        let r = ScriptRun::parse(&argv("AI.SCRIPTRUN s bar INPUTS a $ b c TIMEOUT 5 OUTPUTS d"), true);
        assert_eq!((r.inputs.len(), r.outputs.len(), r.timeout_ms, r.fails), (3, 1, Some(5), None));
        assert_eq!(ScriptRun::parse(&argv("AI.SCRIPTRUN s bar"), true).fails, None);
        let fails = |s: &str| ScriptRun::parse(&argv(s), true).fails.map(|e| e.to_string());
        let cases = [
            ("AI.SCRIPTRUN s INPUTS a b OUTPUTS c", "ERR Unrecongnized parameter to SCRIPTRUN"),
            ("AI.SCRIPTRUN s f INPUTS a INPUTS b", "ERR Already encountered an INPUTS keyword in SCRIPTRUN"),
            ("AI.SCRIPTRUN s f OUTPUTS a INPUTS b", "ERR Already encountered an INPUTS section in SCRIPTRUN"),
            ("AI.SCRIPTRUN s f OUTPUTS a OUTPUTS b", "ERR Already encountered an OUTPUTS keyword in SCRIPTRUN"),
            ("AI.SCRIPTRUN s f OUTPUTS $", "ERR Encountered a variable size list of tensors outside of input section"),
            ("AI.SCRIPTRUN s f INPUTS $ a $ b", "ERR Already encountered a variable size list of tensors"),
            ("AI.SCRIPTRUN s f TIMEOUT 1 TIMEOUT 2", "ERR Already encountered an TIMEOUT section in SCRIPTRUN"),
            ("AI.SCRIPTRUN s f INPUTS a TIMEOUT", "ERR Invalid value for TIMEOUT"),
        ];
        for (cmd, want) in cases {
            assert_eq!(fails(cmd).as_deref(), Some(want), "{cmd}");
        }
    }
}
