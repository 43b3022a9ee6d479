#!/usr/bin/env python3
"""Median of several peers.sh tables, cell by cell: `bench_median.py run1.md run2.md ...`.

Each cell of peers.sh's tables is a value, optionally followed by its ratio to direct,
`13.40 (0.45×)`; the median is taken of values and of ratios separately (the ratio of
each run is to the direct row of that same run).
"""
import re
import statistics
import sys

CELL = re.compile(r"^\s*([0-9.]+)(?:\s*\(([0-9.]+)×\))?\s*$")


def tables(path):
    """{header tuple: {proxy: [cells]}} for each markdown table in a file."""
    found, header = {}, None
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:
            header = tuple(cells)
            found[header] = {}
        elif not set(cells[0]) <= set("-"):
            found[header][cells[0]] = cells[1:]
    return found


def median_cell(cells):
    parsed = [CELL.match(c) for c in cells]
    if not all(parsed):
        return cells[0]
    value = statistics.median(float(m.group(1)) for m in parsed)
    ratios = [float(m.group(2)) for m in parsed if m.group(2)]
    text = f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if len(ratios) == len(parsed):
        text += f" ({statistics.median(ratios):.2f}×)"
    return text


def main(paths):
    runs = [tables(p) for p in paths]
    assert runs and all(runs), "no tables found"
    print(f"Median of {len(paths)} runs ({', '.join(paths)}).\n")
    for header, rows in runs[0].items():
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for proxy, cells in rows.items():
            columns = zip(*[r.get(header, {}).get(proxy, cells) for r in runs])
            # The version column is text (5.7, 1.11.1): taken from the first run.
            out = [c[0] if name == "version" else median_cell(list(c))
                   for name, c in zip(header[1:], columns)]
            print("| " + proxy + " | " + " | ".join(out) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
