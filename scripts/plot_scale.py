#!/usr/bin/env python3
"""Plots the allowlist scale curves for docs/performance.md.

`plot_scale.py SCALE.jsonl OUT_DIR` reads the JSON lines of examples/policy_scale.rs and
writes OUT_DIR/scale-load.png (load time and memory against rule count) and
OUT_DIR/scale-decision.png (median decision time against rule count).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, out):
    rows = [json.loads(line) for line in open(src, encoding="utf-8") if line.strip()]
    assert rows, f"{src}: no measurements"
    os.makedirs(out, exist_ok=True)
    n = [r["rules"] for r in rows]

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(n, [r["load_ms"] for r in rows], "o-", label="load (parse + index), ms")
    ax.loglog(n, [r["policy_mib"] for r in rows], "s-", label="resident memory, MiB")
    ax.axhline(300, color="grey", ls=":", lw=1)
    ax.axhline(50, color="grey", ls="--", lw=1)
    ax.axvline(100_000, color="grey", ls="-", lw=0.5)
    ax.set_xlabel("rules in the allowlist")
    ax.set_title("Allowlist load time and memory (targets at 100k: 300 ms, 50 MB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scale-load.png"), dpi=100)

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [
        ("exact_ns", "exact name"),
        ("wildcard_ns", "wildcard name"),
        ("miss_ns", "name not listed"),
        ("ip_ns", "IP in a CIDR"),
        ("ip_miss_ns", "IP not listed"),
    ]:
        ax.semilogx(n, [r[key] for r in rows], "o-", label=label)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("rules in the allowlist")
    ax.set_ylabel("median decision time, ns")
    ax.set_title("Decision time (target at 100k: 1 µs median)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scale-decision.png"), dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
