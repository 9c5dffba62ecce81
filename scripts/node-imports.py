#!/usr/bin/env python3
"""The node crate's import graph, file by file: which files each file's
non-test code uses (`use` paths and inline `crate::`/`super::` paths, not
comments), and any import circles (strongly connected groups of files).

    python3 scripts/node-imports.py [--graph]

Exits 1 if a circle exists."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "node", "src")

def files():
    for d, _, fs in os.walk(ROOT):
        for f in fs:
            if f.endswith(".rs") and "/bin" not in d and f != "main.rs":
                yield os.path.relpath(os.path.join(d, f), ROOT)

def module_of(path):
    p = path[:-3].split("/")
    if p[-1] in ("mod", "lib"):
        p = p[:-1]
    return p

def file_of(mod):
    """The file defining module path `mod` (a list), or None."""
    if not mod:
        return "lib.rs"
    for cand in ("/".join(mod) + ".rs", "/".join(mod) + "/mod.rs"):
        if os.path.exists(os.path.join(ROOT, cand)):
            return cand
    return None

def code(path):
    s = open(os.path.join(ROOT, path)).read()
    s = s.split("#[cfg(test)]")[0]
    s = re.sub(r"//.*", "", s)
    return s

def deps(path):
    me = module_of(path)
    s = code(path)
    out = set()
    # Expand `use a::{b, c::{d}}` crudely: every path segment chain that
    # starts with crate/super/self.
    for m in re.finditer(r"\b((?:crate|super|self)(?:::(?:super|[A-Za-z_][A-Za-z0-9_]*))+)", s):
        segs = m.group(1).split("::")
        if segs[0] == "crate":
            base, rest = [], segs[1:]
        else:
            base = me[:] if not path.endswith("mod.rs") and not path == "lib.rs" else me[:]
            # `super` in a.rs or a/mod.rs both refer to a's parent.
            rest = segs
            if rest[0] == "self":
                rest = rest[1:]
            while rest and rest[0] == "super":
                base = base[:-1]
                rest = rest[1:]
        # Longest prefix that is a module file.
        target = None
        for n in range(len(rest), -1, -1):
            f = file_of(base + rest[:n])
            if f:
                target = f
                break
        if target and target != path:
            out.add(target)
    # `use` groups: crate::a::{b, c} — b and c may be modules.
    for m in re.finditer(r"\b(crate|super)((?:::[a-z_]+)*)::\{([^}]*)\}", s):
        prefix = m.group(1) + m.group(2)
        for item in m.group(3).split(","):
            item = item.strip().split("::")[0]
            if item and item[0].islower():
                segs = (prefix + "::" + item).split("::")
                if segs[0] == "crate":
                    mod = segs[1:]
                else:
                    mod = me[:]
                    segs = segs
                    while segs and segs[0] == "super":
                        mod = mod[:-1]
                        segs = segs[1:]
                    mod = mod + segs
                f = file_of(mod)
                if f and f != path:
                    out.add(f)
    # `super::{A, b}` / `crate::{...}`: the module itself, for its own items.
    for m in re.finditer(r"\b(crate|super)((?:::super)*)::\{", s):
        mod = [] if m.group(1) == "crate" else me[:-1]
        for _ in m.group(2).split("::super")[1:]:
            mod = mod[:-1]
        f = file_of(mod)
        if f and f != path:
            out.add(f)
    # A module file naming one of its child modules (`child::item`).
    for child in re.findall(r"\bmod\s+([a-z_]+)\s*;", s):
        if re.search(r"(?<![:\w])%s::" % child, s):
            f = file_of(me + [child])
            if f:
                out.add(f)
    return out

graph = {f: deps(f) for f in sorted(files())}

index, low, stack, on, sccs = {}, {}, [], set(), []
def strong(v, counter=[0]):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v: break
        if len(c) > 1: sccs.append(sorted(c))
sys.setrecursionlimit(10000)
for v in graph:
    if v not in index:
        strong(v)
if "--graph" in sys.argv:
    for f, ds in graph.items():
        print(f"{f} -> {', '.join(sorted(ds)) or '-'}")
for c in sccs:
    print("circle:", " <-> ".join(c))
print(f"{len(graph)} files, {sum(len(d) for d in graph.values())} imports, {len(sccs)} circles")
sys.exit(1 if sccs else 0)
