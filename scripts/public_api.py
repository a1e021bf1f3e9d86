#!/usr/bin/env python3
"""The public API of the `idguard` library, one item per line, from rustdoc's HTML.

    scripts/public_api.py            # prints the listing
    scripts/public_api.py --check    # exits 1 when public-api.txt differs (CI)
    scripts/public_api.py --write    # rewrites public-api.txt

Items: modules, types, traits, functions, constants, macros; for types, their inherent
methods and associated constants, public fields and enum variants. Trait implementations
are left out (they follow from the types), and so are `#[doc(hidden)]` items such as
`idguard::internals`, which is for idguard's own crates only.
"""

import html
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTING = os.path.join(ROOT, "public-api.txt")
KINDS = {
    "struct": "struct", "enum": "enum", "trait": "trait", "fn": "fn", "constant": "const",
    "type": "type", "macro": "macro", "static": "static", "union": "union",
}


def document(target_dir):
    doc = os.path.join(target_dir, "doc", "idguard")
    shutil.rmtree(doc, ignore_errors=True)
    subprocess.run(
        ["cargo", "doc", "-p", "idguard", "--no-deps", "--quiet", "--features", "redis"],
        cwd=ROOT, check=True,
        env={**os.environ, "RUSTDOCFLAGS": ""},
    )
    return doc


def members(page):
    text = open(page, encoding="utf-8").read()
    start = text.find('id="implementations-list"')
    out = []
    if start >= 0:
        end = min(
            [i for i in (text.find(m, start) for m in (
                'id="trait-implementations', 'id="synthetic-implementations',
                'id="blanket-implementations')) if i >= 0] or [len(text)])
        inherent = text[start:end]
        out += ["fn " + m for m in re.findall(r'id="method\.([A-Za-z0-9_]+)"', inherent)]
        out += ["const " + m for m in re.findall(r'id="associatedconstant\.([A-Za-z0-9_]+)"', inherent)]
    out += ["field " + m for m in re.findall(r'id="structfield\.([A-Za-z0-9_]+)"', text)]
    out += ["variant " + m for m in re.findall(r'id="variant\.([A-Za-z0-9_]+)"', text)]
    if os.path.basename(page).startswith("trait."):
        # Required and provided methods, before the implementors.
        head = text[: text.find('id="implementors"')] if 'id="implementors"' in text else text
        out += ["fn " + m for m in re.findall(r'id="(?:ty)?method\.([A-Za-z0-9_]+)"', head)]
    return sorted(set(out))


def listing(doc):
    lines = set()
    for dirpath, _, files in os.walk(doc):
        rel = os.path.relpath(dirpath, doc)
        module = "idguard" if rel == "." else "idguard::" + rel.replace(os.sep, "::")
        if files and "index.html" in files:
            lines.add(f"mod {module}")
        for f in files:
            m = re.fullmatch(r"([a-z]+)\.([A-Za-z0-9_]+)\.html", f)
            if not m or m.group(1) not in KINDS:
                continue
            kind, name = KINDS[m.group(1)], m.group(2)
            page = os.path.join(dirpath, f)
            with open(page, encoding="utf-8") as fh:
                if 'http-equiv="refresh"' in fh.read(2048):
                    continue  # a redirect from a private path to the public one
            path = f"{module}::{name}"
            lines.add(f"{kind} {path}")
            if kind in ("struct", "enum", "trait", "union"):
                for member in members(os.path.join(dirpath, f)):
                    mk, mn = member.split(" ", 1)
                    lines.add(f"{mk} {path}::{html.unescape(mn)}")
    return sorted(lines)


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    lines = listing(document(target))
    text = "".join(line + "\n" for line in lines)
    if "--write" in sys.argv:
        open(LISTING, "w", encoding="utf-8").write(text)
    elif "--check" in sys.argv:
        old = open(LISTING, encoding="utf-8").read() if os.path.exists(LISTING) else ""
        if old != text:
            import difflib
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), "public-api.txt", "now"))
            print("the public API changed: review it, then run scripts/public_api.py --write")
            return 1
    else:
        sys.stdout.write(text)
    kinds = {}
    for line in lines:
        kinds[line.split(" ", 1)[0]] = kinds.get(line.split(" ", 1)[0], 0) + 1
    print(", ".join(f"{n} {k}" for k, n in sorted(kinds.items())), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
