//! The checkers.
//!
//! * Registers (SET/GET, AI.TENSORSET/AI.TENSORGET, AI.MODELSTORE/EXECUTE):
//!   per-key linearizability with the Wing–Gong search and Lowe's memo of
//!   (linearized set, state), as in Knossos and Porcupine. Operations that
//!   failed or timed out are unknown: a write may have happened at any time
//!   after its invocation, or never; an unknown read tells nothing.
//! * Grow-only sets: every add acknowledged before a read began is in that
//!   read, a read never loses what an earlier read saw, and the final read
//!   after healing holds every acknowledged add (no lost writes).
//!
//! A violation comes with a minimal failing history: operations are dropped
//! one at a time as long as the rest still fails.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::{Op, OpKind};

/// The value a model reader records when the output it read back was not
/// computed from the input it wrote.
pub const FOREIGN: u64 = u64::MAX;

/// Search steps after which a key's history is reported as undecided.
const STEP_LIMIT: u64 = 20_000_000;

#[derive(Debug)]
pub struct Violation {
    pub key: String,
    pub what: String,
    /// The smallest failing history found, in invocation order.
    pub history: Vec<Op>,
}

#[derive(Debug, Default)]
pub struct Checked {
    pub keys: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search ran past the step limit (neither proved nor refuted).
    pub undecided: Vec<String>,
}

/// Checks every key of `history`.
pub fn check(history: &[Op]) -> Checked {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut out = Checked { keys: by_key.len(), ..Default::default() };
    for (key, ops) in by_key {
        let is_set = ops.iter().any(|o| matches!(o.kind, OpKind::Add(_) | OpKind::SetRead { .. }));
        if is_set {
            out.violations.extend(check_set(key, &ops));
        } else {
            match check_register(&ops) {
                Verdict::Linearizable => {}
                Verdict::Undecided => out.undecided.push(key.to_string()),
                Verdict::Violation(what, history) => out.violations.push(Violation { key: key.into(), what, history }),
            }
        }
    }
    out
}

enum Verdict {
    Linearizable,
    Undecided,
    Violation(String, Vec<Op>),
}

/// One register operation as the search sees it.
#[derive(Clone, Copy, Debug)]
struct ROp {
    write: bool,
    value: Option<u64>,
    call: u64,
    ret: u64,
    /// Index into the key's original operations (for the report).
    src: usize,
}

fn check_register(ops: &[&Op]) -> Verdict {
    let read_values: HashSet<u64> = ops
        .iter()
        .filter(|o| o.ok())
        .filter_map(|o| match o.kind {
            OpKind::Read(Some(v)) => Some(v),
            _ => None,
        })
        .collect();
    let written: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Write(v) => Some(v),
            _ => None,
        })
        .collect();
    // A value nobody wrote can never be read.
    if let Some(bad) = ops.iter().find(|o| o.ok() && matches!(o.kind, OpKind::Read(Some(v)) if !written.contains(&v))) {
        let what = if bad.kind == OpKind::Read(Some(FOREIGN)) {
            "a model run's output does not belong to the input it was given (a stale input or output tensor)"
        } else {
            "read a value that was never written"
        };
        return Verdict::Violation(what.into(), vec![(*bad).clone()]);
    }
    let mut r = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        match o.kind {
            OpKind::Write(v) if o.ok() => r.push(ROp { write: true, value: Some(v), call: o.call, ret: o.ret, src: i }),
            // An unknown write may take effect at any time after it was
            // invoked. If nobody read it, putting it last explains it, so
            // it constrains nothing and is left out.
            OpKind::Write(v) if read_values.contains(&v) => {
                r.push(ROp { write: true, value: Some(v), call: o.call, ret: u64::MAX, src: i })
            }
            OpKind::Read(v) if o.ok() => r.push(ROp { write: false, value: v, call: o.call, ret: o.ret, src: i }),
            _ => {}
        }
    }
    match linearizable(&r) {
        Search::Yes => Verdict::Linearizable,
        Search::Undecided => Verdict::Undecided,
        Search::No => {
            let minimal = shrink(r);
            let mut history: Vec<Op> = minimal.iter().map(|o| ops[o.src].clone()).collect();
            history.sort_by_key(|o| o.call);
            let what = if history.iter().any(|o| o.workload == "final") {
                "not linearizable: the final read after healing misses an acknowledged write (lost write)"
            } else {
                "not linearizable (stale read, lost write or split brain)"
            };
            Verdict::Violation(what.into(), history)
        }
    }
}

/// Drops operations one at a time while the rest still fails. A write that
/// a remaining read saw is kept (without it the read alone would "fail").
fn shrink(mut ops: Vec<ROp>) -> Vec<ROp> {
    loop {
        let mut removed = false;
        let mut i = ops.len();
        while i > 0 {
            i -= 1;
            let o = ops[i];
            if o.write && ops.iter().any(|r| !r.write && r.value == o.value) {
                continue;
            }
            let mut rest = ops.clone();
            rest.remove(i);
            if matches!(linearizable(&rest), Search::No) {
                ops = rest;
                removed = true;
            }
        }
        if !removed {
            return ops;
        }
    }
}

#[derive(Debug, PartialEq)]
enum Search {
    Yes,
    No,
    Undecided,
}

const NONE: usize = usize::MAX;

/// Wing & Gong's search with Lowe's memoization, over a doubly linked list
/// of call and return events (a call is "lifted" out when its operation is
/// linearized, and put back when the search backtracks).
fn linearizable(ops: &[ROp]) -> Search {
    let n = ops.len();
    if n == 0 {
        return Search::Yes;
    }
    // Events sorted by time; at equal times calls come first (the weaker
    // order: the two operations count as concurrent).
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.call, 0, i));
        events.push((o.ret, 1, i));
    }
    events.sort_unstable();
    // Entry 0 is the list head; entry k + 1 is events[k].
    let len = events.len() + 1;
    let mut next = vec![NONE; len];
    let mut prev = vec![NONE; len];
    let mut op_of = vec![0usize; len];
    let mut is_call = vec![false; len];
    let mut ret_entry = vec![0usize; n];
    for (k, &(_, kind, op)) in events.iter().enumerate() {
        let e = k + 1;
        op_of[e] = op;
        is_call[e] = kind == 0;
        if kind == 1 {
            ret_entry[op] = e;
        }
        prev[e] = k;
        next[k] = e;
    }
    let lift = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, m: usize| {
        for x in [e, m] {
            next[prev[x]] = next[x];
            if next[x] != NONE {
                prev[next[x]] = prev[x];
            }
        }
    };
    let unlift = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>, m: usize| {
        for x in [m, e] {
            next[prev[x]] = x;
            if next[x] != NONE {
                prev[next[x]] = x;
            }
        }
    };
    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<u64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut e = next[0];
    let mut steps = 0u64;
    while next[0] != NONE {
        steps += 1;
        if steps > STEP_LIMIT {
            return Search::Undecided;
        }
        if e == NONE {
            return Search::No;
        }
        if is_call[e] {
            let op = op_of[e];
            let o = &ops[op];
            let (ok, after) = if o.write { (true, o.value) } else { (o.value == state, state) };
            if ok {
                linearized[op / 64] |= 1 << (op % 64);
                if seen.insert((linearized.clone(), after)) {
                    stack.push((e, state));
                    state = after;
                    lift(e, &mut next, &mut prev, ret_entry[op]);
                    e = next[0];
                    continue;
                }
                linearized[op / 64] &= !(1 << (op % 64));
            }
            e = next[e];
        } else {
            // An operation returned before it could be linearized: undo
            // the last choice and try the next candidate after it.
            let Some((top, before)) = stack.pop() else { return Search::No };
            let op = op_of[top];
            state = before;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(top, &mut next, &mut prev, ret_entry[op]);
            e = next[top];
        }
    }
    Search::Yes
}

/// The grow-only set checks for one set key.
fn check_set(key: &str, ops: &[&Op]) -> Vec<Violation> {
    let mut out = Vec::new();
    let acked: Vec<&Op> = ops.iter().copied().filter(|o| o.ok() && matches!(o.kind, OpKind::Add(_))).collect();
    let attempted: HashMap<u64, &Op> = ops
        .iter()
        .filter_map(|o| match o.kind {
            OpKind::Add(e) => Some((e, *o)),
            _ => None,
        })
        .collect();
    let reads: Vec<&Op> = ops.iter().copied().filter(|o| o.ok() && matches!(o.kind, OpKind::SetRead { .. })).collect();
    for r in &reads {
        let OpKind::SetRead { asked, present } = &r.kind else { continue };
        let present: HashSet<u64> = present.iter().copied().collect();
        let asked: HashSet<u64> = asked.iter().copied().collect();
        for e in &present {
            if !attempted.contains_key(e) {
                out.push(Violation {
                    key: key.into(),
                    what: format!("set read returned element {e}, which was never added"),
                    history: vec![(*r).clone()],
                });
            }
        }
        // Every add acknowledged before this read began must be in it (one
        // violation per read, naming the first missing add and the count).
        let missing: Vec<&&Op> = acked
            .iter()
            .filter(
                |a| matches!(a.kind, OpKind::Add(e) if a.ret < r.call && asked.contains(&e) && !present.contains(&e)),
            )
            .collect();
        if let Some(a) = missing.first() {
            let OpKind::Add(e) = a.kind else { unreachable!("filtered on Add") };
            let n = missing.len();
            let what = if r.workload == "final" {
                format!(
                    "lost write: acknowledged add of {e} (and {} more) missing from the final read after healing",
                    n - 1
                )
            } else {
                format!(
                    "stale read: add of {e} (and {} more) acknowledged before the read began, missing from it",
                    n - 1
                )
            };
            out.push(Violation { key: key.into(), what, history: vec![(**a).clone(), (*r).clone()] });
        }
    }
    // A later read never loses an element an earlier (completed) read saw.
    for r1 in &reads {
        for r2 in &reads {
            if r1.ret >= r2.call {
                continue;
            }
            let (OpKind::SetRead { present: p1, .. }, OpKind::SetRead { asked: a2, present: p2 }) =
                (&r1.kind, &r2.kind)
            else {
                continue;
            };
            let p2: HashSet<u64> = p2.iter().copied().collect();
            let a2: HashSet<u64> = a2.iter().copied().collect();
            if let Some(e) = p1.iter().find(|e| a2.contains(e) && !p2.contains(e)) {
                let mut history = vec![(*r1).clone(), (*r2).clone()];
                if let Some(add) = attempted.get(e) {
                    history.insert(0, (*add).clone());
                }
                out.push(Violation {
                    key: key.into(),
                    what: format!("element {e} seen by a read disappeared from a later read"),
                    history,
                });
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Outcome;

    fn op(kind: OpKind, call: u64, ret: u64, ok: bool) -> Op {
        Op {
            workload: "reg".into(),
            worker: 0,
            key: "k".into(),
            kind,
            call,
            ret,
            outcome: if ok { Outcome::Ok } else { Outcome::Unknown("timeout".into()) },
        }
    }

    fn w(v: u64, call: u64, ret: u64) -> Op {
        op(OpKind::Write(v), call, ret, true)
    }

    fn r(v: Option<u64>, call: u64, ret: u64) -> Op {
        op(OpKind::Read(v), call, ret, true)
    }

    #[test]
    fn sequential_and_concurrent_histories_pass() {
        let h = vec![w(1, 0, 10), r(Some(1), 11, 20), w(2, 21, 30), r(Some(2), 31, 40)];
        assert!(check(&h).violations.is_empty());
        // A read concurrent with a write may see either value.
        let h = vec![w(1, 0, 10), w(2, 20, 50), r(Some(1), 25, 30), r(Some(2), 35, 40)];
        assert!(check(&h).violations.is_empty());
        // An empty register reads as no key.
        assert!(check(&[r(None, 0, 1), w(1, 2, 3)]).violations.is_empty());
    }

    #[test]
    fn a_stale_read_is_caught_with_a_minimal_history() {
        let h = vec![
            w(1, 0, 10),
            r(Some(1), 11, 12),
            w(2, 20, 30),
            w(3, 31, 32),
            r(Some(3), 33, 34),
            r(Some(1), 40, 50), // stale: 3 was acknowledged first
        ];
        let c = check(&h);
        assert_eq!(c.violations.len(), 1, "{c:?}");
        let v = &c.violations[0];
        // Two writes and the stale read explain it; the rest is dropped.
        let kinds: Vec<OpKind> = v.history.iter().map(|o| o.kind.clone()).collect();
        assert_eq!(kinds.len(), 3, "{v:?}");
        assert_eq!(kinds[0], OpKind::Write(1));
        assert!(matches!(kinds[1], OpKind::Write(2) | OpKind::Write(3)), "{v:?}");
        assert_eq!(kinds[2], OpKind::Read(Some(1)));
    }

    #[test]
    fn a_lost_write_is_caught() {
        // The write of 2 was acknowledged; the final read sees 1.
        let mut fin = r(Some(1), 100, 110);
        fin.workload = "final".into();
        let h = vec![w(1, 0, 10), w(2, 20, 30), fin];
        let c = check(&h);
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].what.contains("lost write"), "{}", c.violations[0].what);
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        // Timed out, later seen: fine. Timed out, never seen: fine.
        let h = vec![
            w(1, 0, 10),
            op(OpKind::Write(2), 20, 30, false),
            r(Some(1), 31, 35),
            r(Some(2), 40, 45),
            op(OpKind::Write(3), 50, 60, false),
            r(Some(2), 70, 80),
        ];
        assert!(check(&h).violations.is_empty(), "{:?}", check(&h));
        // But once seen, it cannot be "unseen" by a later read.
        let h = vec![w(1, 0, 10), op(OpKind::Write(2), 20, 30, false), r(Some(2), 40, 45), r(Some(1), 50, 55)];
        assert_eq!(check(&h).violations.len(), 1);
        // An unknown read tells nothing.
        let h = vec![w(1, 0, 10), op(OpKind::Read(Some(7)), 20, 30, false)];
        assert!(check(&h).violations.is_empty());
    }

    #[test]
    fn a_value_never_written_is_a_violation() {
        let c = check(&[w(1, 0, 10), r(Some(9), 20, 30)]);
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].what.contains("never written"));
    }

    #[test]
    fn split_brain_is_caught() {
        // Two clients see different orders of the same two writes.
        let h = vec![
            w(1, 0, 100),
            w(2, 0, 100),
            r(Some(1), 10, 20),
            r(Some(2), 30, 40),
            r(Some(1), 50, 60),
            r(Some(2), 70, 80),
        ];
        assert_eq!(check(&h).violations.len(), 1);
    }

    #[test]
    fn many_concurrent_operations_are_decided_quickly() {
        // 1000 operations, about 5 overlapping at any time (more than the
        // workloads' 3 clients per key): linearizable by design.
        let mut h = Vec::new();
        let mut t = 0;
        for v in 1..=500u64 {
            h.push(w(v, t, t + 50));
            h.push(r(Some(v), t + 45, t + 60));
            t += 12;
        }
        let c = check(&h);
        assert!(c.violations.is_empty() && c.undecided.is_empty(), "{c:?}");
    }

    fn set_op(kind: OpKind, call: u64, ret: u64, ok: bool, workload: &str) -> Op {
        let mut o = op(kind, call, ret, ok);
        o.key = "s".into();
        o.workload = workload.into();
        o
    }

    #[test]
    fn set_checks() {
        let add = |e, c, r, ok| set_op(OpKind::Add(e), c, r, ok, "set");
        let read = |asked: &[u64], present: &[u64], c, r, w: &str| {
            set_op(OpKind::SetRead { asked: asked.to_vec(), present: present.to_vec() }, c, r, true, w)
        };
        let good = vec![
            add(1, 0, 10, true),
            add(2, 5, 15, false),
            read(&[1, 2], &[1], 20, 30, "set"),
            read(&[1, 2], &[1, 2], 40, 50, "final"),
        ];
        assert!(check(&good).violations.is_empty(), "{:?}", check(&good));
        let lost = vec![add(1, 0, 10, true), add(2, 5, 15, true), read(&[1, 2], &[1], 40, 50, "final")];
        let c = check(&lost);
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].what.starts_with("lost write"), "{}", c.violations[0].what);
        let flicker = vec![add(1, 0, 10, false), read(&[1], &[1], 20, 30, "set"), read(&[1], &[], 40, 50, "set")];
        assert_eq!(check(&flicker).violations.len(), 1);
    }
}
