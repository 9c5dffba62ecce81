//! Key extraction for RedisAI's commands with movable keys (`getkeys-api`
//! in RedisAI): which argv positions name keys, for routing, CROSSSLOT checks
//! and `COMMAND GETKEYS` (model runs are routed by their parsed keys,
//! `model::ModelRun`). Returns `None` when argv is too malformed to tell.

use bytes::Bytes;

fn eq(a: &Bytes, b: &str) -> bool {
    a.eq_ignore_ascii_case(b.as_bytes())
}

/// The `<count> <item>...` list whose count is at `i`: the item indexes.
fn counted(argv: &[Bytes], i: usize) -> Option<std::ops::Range<usize>> {
    let n: usize = std::str::from_utf8(argv.get(i)?).ok()?.parse().ok()?;
    let end = (i + 1).checked_add(n)?;
    (end <= argv.len()).then_some(i + 1..end)
}

/// `AI.MODELEXECUTE key INPUTS n k.. OUTPUTS m k.. [TIMEOUT t]`: model, inputs, outputs.
pub(crate) fn keys_modelexecute(argv: &[Bytes]) -> Option<Vec<usize>> {
    if argv.len() < 2 {
        return None;
    }
    let mut keys = vec![1];
    let mut i = 2;
    while i < argv.len() {
        if eq(&argv[i], "INPUTS") || eq(&argv[i], "OUTPUTS") {
            let items = counted(argv, i + 1)?;
            i = items.end;
            keys.extend(items);
        } else {
            i += 1;
        }
    }
    Some(keys)
}

/// Where `AI.MODELRUN`'s INPUTS word is, and the OUTPUTS word that ends the
/// inputs: the first one after INPUTS (a later one is an output key, as the
/// parsed run, `model::ModelRun`, reads the command).
fn modelrun_words(argv: &[Bytes]) -> Option<(usize, Option<usize>)> {
    let inputs = (2..argv.len()).find(|i| eq(&argv[*i], "INPUTS"))?;
    Some((inputs, (inputs + 1..argv.len()).find(|i| eq(&argv[*i], "OUTPUTS"))))
}

/// `AI.MODELRUN key [TIMEOUT t] INPUTS k.. OUTPUTS k..`: the model and every
/// argument after INPUTS except the OUTPUTS word that ends the inputs.
pub(crate) fn keys_modelrun(argv: &[Bytes]) -> Option<Vec<usize>> {
    if argv.len() < 2 {
        return None;
    }
    let mut keys = vec![1];
    let (inputs, outputs) = modelrun_words(argv)?;
    keys.extend((inputs + 1..argv.len()).filter(|i| Some(*i) != outputs));
    Some(keys)
}

/// `AI.SCRIPTEXECUTE key fn [KEYS n ..] [INPUTS n ..] [ARGS n ..] [OUTPUTS n ..] [TIMEOUT t]`:
/// the script and every KEYS, INPUTS and OUTPUTS key (not ARGS).
pub(super) fn keys_scriptexecute(argv: &[Bytes]) -> Option<Vec<usize>> {
    if argv.len() < 3 {
        return None;
    }
    let mut keys = vec![1];
    let mut i = 3;
    while i < argv.len() {
        let scope = &argv[i];
        if eq(scope, "KEYS") || eq(scope, "INPUTS") || eq(scope, "OUTPUTS") || eq(scope, "ARGS") {
            let items = counted(argv, i + 1)?;
            i = items.end;
            if !eq(scope, "ARGS") {
                keys.extend(items);
            }
        } else {
            i += 1;
        }
    }
    Some(keys)
}

/// `AI.SCRIPTRUN key fn INPUTS k.. [$ ..] OUTPUTS k..`: the script and every
/// input/output (skipping `OUTPUTS` and `$`).
pub(super) fn keys_scriptrun(argv: &[Bytes]) -> Option<Vec<usize>> {
    if argv.len() < 3 {
        return None;
    }
    let mut keys = vec![1];
    let mut in_scope = false;
    let mut i = 3;
    while let Some(a) = argv.get(i) {
        if eq(a, "INPUTS") || eq(a, "OUTPUTS") {
            in_scope = true;
        } else if eq(a, "TIMEOUT") {
            // (Anywhere, as the parser reads it: its value is no key.)
            i += 1;
        } else if in_scope && a.as_ref() != b"$" {
            keys.push(i);
        }
        i += 1;
    }
    Some(keys)
}

/// DAG commands: LOAD and PERSIST keys, the ROUTING value, and the key after
/// every `AI.MODELEXECUTE`/`AI.SCRIPTEXECUTE` (and deprecated RUN) token.
pub(super) fn keys_dag(argv: &[Bytes]) -> Option<Vec<usize>> {
    let mut keys = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if eq(a, "LOAD") || eq(a, "PERSIST") {
            let items = counted(argv, i + 1)?;
            i = items.end;
            keys.extend(items);
            continue;
        }
        if eq(a, "ROUTING") {
            argv.get(i + 1)?;
            keys.push(i + 1);
            i += 2;
            continue;
        }
        if (eq(a, "AI.MODELEXECUTE") || eq(a, "AI.SCRIPTEXECUTE") || eq(a, "AI.MODELRUN") || eq(a, "AI.SCRIPTRUN"))
            && i + 1 < argv.len()
        {
            keys.push(i + 1);
            i += 2;
            continue;
        }
        i += 1;
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<Bytes> {
        s.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
    }

    /// Found by `tests/parse_fuzz.rs`: an output key named `OUTPUTS` was
    /// left out of the keys (so neither routed nor checked for its slot)
    /// and of the keys a run writes, and an input or model key named
    /// `OUTPUTS` was taken for the word. COMMAND GETKEYS and the parsed run
    /// agree on them.
    #[test]
    fn keys_named_like_keywords_are_keys() {
        use crate::model::ModelRun;
        let names = |argv: &[Bytes], idx: Vec<usize>| idx.into_iter().map(|i| argv[i].clone()).collect::<Vec<_>>();
        let parsed = |argv: &[Bytes], deprecated| ModelRun::parse(argv, deprecated).keys().cloned().collect::<Vec<_>>();
        let run = argv("AI.MODELRUN m TIMEOUT 5 INPUTS a b OUTPUTS OUTPUTS c");
        assert_eq!(keys_modelrun(&run), Some(vec![1, 5, 6, 8, 9]));
        assert_eq!(parsed(&run, true), names(&run, vec![1, 5, 6, 8, 9]));
        assert_eq!(ModelRun::parse(&run, true).outputs, names(&run, vec![8, 9]));
        let run = argv("AI.MODELRUN OUTPUTS INPUTS a OUTPUTS b");
        assert_eq!(keys_modelrun(&run), Some(vec![1, 3, 5]));
        assert_eq!(ModelRun::parse(&run, true).outputs, names(&run, vec![5]));
        let exec = argv("AI.MODELEXECUTE OUTPUTS INPUTS 1 OUTPUTS OUTPUTS 1 c");
        assert_eq!(keys_modelexecute(&exec), Some(vec![1, 4, 7]));
        assert_eq!(parsed(&exec, false), names(&exec, vec![1, 4, 7]));
        assert_eq!(ModelRun::parse(&exec, false).outputs, names(&exec, vec![7]));
    }
}
