#!/usr/bin/env python3
"""The README's architecture picture, from the imports the code really makes.

    python3 scripts/architecture.py           # print the module import graph and the picture
    python3 scripts/architecture.py --write   # rewrite README.md's Architecture section
    python3 scripts/architecture.py --check   # exit 1 when README.md's picture is stale or a cycle exists

An import is a `crate::NAME` path in a module's code (comments and
`#[cfg(test)] mod` blocks left out), NAME being another top-level module.
"""
import collections
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
VALUES = ("event", "decision", "net", "duration")


def graph():
    mods = set()
    for n in os.listdir(SRC):
        if n.endswith(".rs"):
            mods.add(n[:-3])
        elif os.path.isdir(os.path.join(SRC, n)):
            mods.add(n)
    mods -= {"main", "lib"}
    g = collections.defaultdict(set)
    for dp, _, fs in os.walk(SRC):
        for f in fs:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dp, f), SRC)
            top = rel.split("/")[0].replace(".rs", "")
            if top not in mods:
                continue
            with open(os.path.join(dp, f)) as fh:
                txt = "\n".join(l for l in fh.read().split("\n") if not l.lstrip().startswith("//"))
            m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod \w+", txt)
            if m:
                txt = txt[: m.start()]
            for t in re.findall(r"crate::(\w+)", txt):
                if t in mods and t != top:
                    g[top].add(t)
    return mods, g


def cycles(mods, g):
    index, low, stack, on, found, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def picture(mods, g):
    folders = sorted(n for n in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, n)))
    files = sorted(m for m in mods if m not in folders and m != "test_support")
    layer = {}

    def depth(m):
        if m not in layer:
            deps = [d for d in g[m] if d in folders]
            layer[m] = 0 if not deps else 1 + max(depth(d) for d in deps)
        return layer[m]

    rows = collections.defaultdict(list)
    for f in folders:
        rows[depth(f)].append(f)
    w = max(len(f) for f in folders) + 3
    out = []
    for r in sorted(rows, reverse=True):
        names = sorted(rows[r])
        out.append("  ".join("┌" + "─" * w + "┐" for _ in names))
        out.append("  ".join("│ " + (n + "/").ljust(w - 1) + "│" for n in names))
        out.append("  ".join("└" + "─" * w + "┘" for _ in names))
        for n in names:
            deps = sorted((d for d in g[n] if d in folders), key=lambda d: (-layer[d], d))
            if deps:
                out.append(f"   {n}/ ──► " + ", ".join(d + "/" for d in deps))
        out.append("")
    l1 = " values every stage shares: " + ", ".join(f + ".rs" for f in files if f in VALUES)
    l2 = " helpers: " + ", ".join(f + ".rs" for f in files if f not in VALUES)
    W = max(len(l1), len(l2)) + 1
    out += ["┌" + "─" * W + "┐", "│" + l1.ljust(W) + "│", "│" + l2.ljust(W) + "│", "└" + "─" * W + "┘"]
    return "\n".join(out)


SECTION = """## Architecture

Each box is a folder under `src/`; each arrow is an import its code
actually makes (read from the source, test modules aside). Folders lower
down never import folders higher up, so there is no cycle; `http` and
`cluster` never import `daemon`. The shared values (`event.rs`,
`decision.rs`, `net.rs`, `duration.rs`) and helpers are at the bottom.
`python3 scripts/architecture.py --write` draws it again; a test checks it.

```
{picture}
```

What each folder owns, file by file: [docs/architecture.md](docs/architecture.md).

"""


def readme_with(text, section):
    a = text.index("## Architecture\n")
    b = text.index("\n## ", a + 5) + 1
    return text[:a] + section + text[b:]


def main():
    mods, g = graph()
    found = cycles(mods, g)
    section = SECTION.format(picture=picture(mods, g))
    path = os.path.join(ROOT, "README.md")
    with open(path) as fh:
        text = fh.read()
    if "--check" in sys.argv:
        ok = True
        if found:
            print(f"import cycles: {found}")
            ok = False
        if readme_with(text, section) != text:
            print("README.md's Architecture picture is stale: run python3 scripts/architecture.py --write")
            ok = False
        sys.exit(0 if ok else 1)
    if "--write" in sys.argv:
        with open(path, "w") as fh:
            fh.write(readme_with(text, section))
        return
    for a in sorted(g):
        print(a, "->", " ".join(sorted(g[a])))
    print("cycles:", found or "none")
    print()
    print(picture(mods, g))


if __name__ == "__main__":
    main()
