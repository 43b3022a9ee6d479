#!/usr/bin/env python3
"""Regenerates the values table in README.md from values.yaml: every key, its default, and the
comment above it. python3 charts/egress-warden/values_table.py [--check]"""
import json
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).parent
BEGIN, END = "<!-- values-table:begin -->", "<!-- values-table:end -->"


def rows():
    """(dotted key, comment) for every key, in file order."""
    out, stack, comment = [], [], []
    for line in (HERE / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if not stripped.startswith("# yaml-language-server"):
                comment.append(stripped.lstrip("# "))
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not m:
            comment = []
            continue
        depth = len(m.group(1)) // 2
        stack = stack[:depth] + [m.group(2)]
        out.append((".".join(stack), " ".join(comment)))
        comment = []
    return out


def table():
    values = yaml.safe_load((HERE / "values.yaml").read_text())
    lines = ["| key | default | description |", "|---|---|---|"]
    for key, comment in rows():
        v = values
        for part in key.split("."):
            v = v[part]
        default = json.dumps(v) if not isinstance(v, dict) or not v else "(object)"
        lines.append(f"| `{key}` | `{default}` | {comment} |")
    return "\n".join(lines)


def main():
    readme = HERE / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    new = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if "--check" in sys.argv:
        missing = [k for k, c in rows() if not c]
        if missing:
            sys.exit(f"values.yaml keys without a comment: {missing}")
        if new != text:
            sys.exit("README.md values table is stale: run python3 charts/egress-warden/values_table.py")
        return
    readme.write_text(new)


if __name__ == "__main__":
    main()
