//! TorchScript scripts on libtorch: compile errors and entry-point checks in
//! RedisAI's words, both calling conventions, outputs, and the calls a
//! script makes back into its host (a mock of the node here).

use std::sync::Mutex;

use bytes::Bytes;
use tessera_backend::script::{HostReply, Script, ScriptCall, ScriptHost};
use tessera_backend::{elements, from_elements, Device, Tensor};
use tessera_backend_torch::TorchScript;

const SCRIPT: &str = "
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    b = tensors[1]
    return a + b

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    l = tensors[1:]
    return a + l[0]

def pair(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * int(args[0]), tensors[0] + len(keys)

def nothing(tensors: List[Tensor], keys: List[str], args: List[str]):
    return None

def legacy(a, b):
    return a - b

def legacy_list(a, rest: List[Tensor]):
    return rest[0] + rest[1]

def counter(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0], args[0])
    v = redis.execute('INCR', keys[0])
    return torch.tensor(int(str(v)))

def listed(tensors: List[Tensor], keys: List[str], args: List[str]):
    vals = redis.asList(redis.execute('MGET', keys[0], keys[1]))
    out = torch.zeros([len(vals)])
    for i in range(len(vals)):
        out[i] = float(str(vals[i]))
    return out

def fails(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute('SET', keys[0])
    return tensors[0]

def model(tensors: List[Tensor], keys: List[str], args: List[str]):
    outs = redisAI.model_execute(keys[0], tensors, 1)
    return outs[0]
";

fn x(v: &[f32]) -> Tensor {
    from_elements(vec![v.len() as i64], v)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A host with a string keyspace (SET, INCR, MGET), and a "model" that
/// doubles its inputs.
#[derive(Default)]
struct Host {
    kv: Mutex<std::collections::HashMap<Bytes, i64>>,
    calls: Mutex<Vec<Vec<Bytes>>>,
}

impl ScriptHost for Host {
    fn execute(&self, argv: &[Bytes]) -> Result<HostReply, String> {
        self.calls.lock().unwrap().push(argv.to_vec());
        let mut kv = self.kv.lock().unwrap();
        let cmd = String::from_utf8_lossy(&argv[0]).to_uppercase();
        match (cmd.as_str(), argv.len()) {
            ("SET", 3) => {
                kv.insert(argv[1].clone(), String::from_utf8_lossy(&argv[2]).parse().unwrap());
                Ok(HostReply::Str(b("OK")))
            }
            ("INCR", 2) => {
                let v = kv.entry(argv[1].clone()).or_default();
                *v += 1;
                Ok(HostReply::Int(*v))
            }
            ("MGET", _) => Ok(HostReply::Array(
                argv[1..]
                    .iter()
                    .map(|k| kv.get(k).map_or(HostReply::Nil, |v| HostReply::Str(b(&v.to_string()))))
                    .collect(),
            )),
            _ => Err(format!(
                "Redis command returned an error: ERR wrong number of arguments for '{}' command",
                cmd.to_lowercase()
            )),
        }
    }

    fn model_execute(&self, key: &[u8], inputs: Vec<Tensor>, outputs: usize) -> Result<Vec<Tensor>, String> {
        if key != b"m" {
            return Err("ERR model key is empty".into());
        }
        assert_eq!(outputs, 1);
        Ok(vec![x(&elements::<f32>(&inputs[0]).iter().map(|v| v * 2.0).collect::<Vec<_>>())])
    }
}

fn compile(entry: &[&str]) -> TorchScript {
    let entry: Vec<String> = entry.iter().map(|s| s.to_string()).collect();
    TorchScript::compile(SCRIPT, Device::Cpu(None), &entry).unwrap()
}

fn run(
    s: &TorchScript,
    function: &str,
    inputs: &[Tensor],
    keys: &[&str],
    args: &[&str],
    outputs: usize,
) -> Result<Vec<Tensor>, String> {
    let keys: Vec<Bytes> = keys.iter().map(|k| b(k)).collect();
    let args: Vec<Bytes> = args.iter().map(|a| b(a)).collect();
    let call = ScriptCall { function, inputs, keys: &keys, args: &args, outputs };
    s.run(&call, &Host::default()).map_err(|e| e.0)
}

#[test]
fn compile_errors_and_entry_points_in_redisais_words() {
    let err = |src: &str, entry: &[&str]| {
        let entry: Vec<String> = entry.iter().map(|s| s.to_string()).collect();
        TorchScript::compile(src, Device::Cpu(None), &entry).err().unwrap().0
    };
    let syntax = err("def bar(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return a +\n", &[]);
    assert!(!syntax.contains('\n') && !syntax.is_empty(), "{syntax}");
    assert_eq!(err(SCRIPT, &["bar", "nope"]), "Function nope does not exist in the given script.");
    assert_eq!(err(SCRIPT, &["legacy"]), "Wrong number of inputs in function legacy. Expected 3 but was 2");
    let wrong = "def f(tensors: List[Tensor], keys: List[str], args: List[Tensor]):\n    return tensors[0]\n";
    assert_eq!(
        err(wrong, &["f"]),
        "Wrong inputs type in function f. Expected signature similar to: \
         def f(tensors: List[Tensor], keys: List[str], args: List[str])"
    );
    // The source ends at its first NUL, as RedisAI reads it.
    let cut = format!("{SCRIPT}\0def broken(:");
    assert!(TorchScript::compile(&cut, Device::Cpu(None), &["bar".into()]).is_ok());
}

#[test]
fn entry_points_and_legacy_functions_run() {
    let s = compile(&["bar", "bar_variadic", "pair", "nothing"]);
    let (a, c) = (x(&[2.0, 3.0]), x(&[1.0, 1.0]));
    let out = run(&s, "bar", &[a.clone(), c.clone()], &[], &[], 1).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![3.0, 4.0]);
    let out = run(&s, "bar_variadic", &[a.clone(), c.clone(), a.clone()], &[], &[], 1).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![3.0, 4.0]);
    // Tuples flatten; ARGS are strings the script converts; KEYS are a list.
    let out = run(&s, "pair", std::slice::from_ref(&a), &["k1", "k2"], &["3"], 2).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![6.0, 9.0]);
    assert_eq!(elements::<f32>(&out[1]), vec![4.0, 5.0]);
    // OUTPUTS 0: whatever the function returns is ignored.
    assert!(run(&s, "nothing", &[], &[], &[], 0).unwrap().is_empty());
    assert_eq!(run(&s, "nothing", &[], &[], &[], 1).unwrap_err(), "Function returned non-tensor valuesnothing");
    assert_eq!(
        run(&s, "bar", &[a.clone(), c.clone()], &[], &[], 2).unwrap_err(),
        "Function returned unexpected number of outputs - bar"
    );
    assert_eq!(run(&s, "missing", &[], &[], &[], 1).unwrap_err(), "Function does not exist: missing");
    // Not an entry point: inputs bind one per parameter, a list takes the rest.
    let out = run(&s, "legacy", &[a.clone(), c.clone()], &[], &[], 1).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![1.0, 2.0]);
    let out = run(&s, "legacy_list", &[a.clone(), c.clone(), a.clone()], &[], &[], 1).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![3.0, 4.0]);
    assert_eq!(
        run(&s, "legacy", std::slice::from_ref(&a), &[], &[], 1).unwrap_err(),
        "Wrong number of inputs provided to function: legacy"
    );
    // A run-time error is the interpreter's, on one line.
    let e = run(&s, "bar", std::slice::from_ref(&a), &[], &[], 1).unwrap_err();
    assert!(e.contains("out of range") && !e.contains('\n'), "{e}");
}

#[test]
fn scripts_call_back_into_their_host() {
    let s = compile(&["counter", "listed", "fails", "model"]);
    let host = Host::default();
    let call = |function: &str, keys: &[&str], args: &[&str]| {
        let keys: Vec<Bytes> = keys.iter().map(|k| b(k)).collect();
        let args: Vec<Bytes> = args.iter().map(|a| b(a)).collect();
        let inputs = [x(&[1.0, 2.0])];
        s.run(&ScriptCall { function, inputs: &inputs, keys: &keys, args: &args, outputs: 1 }, &host)
    };
    let out = call("counter", &["k"], &["41"]).unwrap();
    assert_eq!(elements::<i64>(&out[0]), vec![42]);
    assert_eq!(host.calls.lock().unwrap()[0], vec![b("SET"), b("k"), b("41")]);
    host.kv.lock().unwrap().insert(b("j"), 7);
    let out = call("listed", &["k", "j"], &[]).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![42.0, 7.0]);
    let e = call("fails", &["k"], &[]).unwrap_err().0;
    assert!(e.contains("Redis command returned an error: ERR wrong number of arguments for 'set' command"), "{e}");
    let out = call("model", &["m"], &[]).unwrap();
    assert_eq!(elements::<f32>(&out[0]), vec![2.0, 4.0]);
    let e = call("model", &["nope"], &[]).unwrap_err().0;
    assert!(e.contains("ERR model key is empty"), "{e}");
}

#[test]
fn one_script_runs_on_several_threads_each_with_its_host() {
    let s = compile(&["counter"]);
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                let host = Host::default();
                for i in 0..20 {
                    let keys = [b("k")];
                    let args = [b(&(t * 100 + i).to_string())];
                    let call = ScriptCall { function: "counter", inputs: &[], keys: &keys, args: &args, outputs: 1 };
                    let out = s.run(&call, &host).unwrap();
                    assert_eq!(elements::<i64>(&out[0]), vec![t * 100 + i + 1]);
                }
                assert_eq!(host.calls.lock().unwrap().len(), 40);
            });
        }
    });
}
