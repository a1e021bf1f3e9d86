#!/usr/bin/env python3
"""The `use crate::…` graph among the library's top-level modules (src/*), and its cycles.

    scripts/module_graph.py            # prints "module -> what it uses" and any cycle
    scripts/module_graph.py --check    # exits 1 when there is a cycle (CI)

Test modules (`#[cfg(test)] mod tests`) and comments are left out: tests may reach
anywhere. `internals` (re-exports for idguard's own crates) and `lib.rs` sit on top.
"""

import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def modules():
    names = []
    for entry in sorted(os.listdir(SRC)):
        path = os.path.join(SRC, entry)
        if entry.endswith(".rs") and entry != "lib.rs":
            names.append(entry[:-3])
        elif os.path.isdir(path):
            names.append(entry)
    return names


def code(path):
    text = open(path, encoding="utf-8").read()
    text = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(l.split("//")[0] for l in text.splitlines())


def graph():
    mods = modules()
    edges = {m: set() for m in mods}
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, f), SRC)
            top = rel.split(os.sep)[0].removesuffix(".rs")
            if top not in edges:
                continue
            text = code(os.path.join(dirpath, f))
            used = set(re.findall(r"\bcrate::([a-z_]+)", text))
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                used |= set(re.findall(r"\b([a-z_]+)(?:::|\s*[,}]|$)", group))
            edges[top] |= {u for u in used if u in edges and u != top}
    return edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    edges = graph()
    for m in sorted(edges):
        print(f"{m:10} -> {' '.join(sorted(edges[m])) or '-'}")
    found = cycles(edges)
    for c in found:
        print("cycle among: " + ", ".join(c))
    if not found:
        print("no cycles")
    return 1 if found and "--check" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
