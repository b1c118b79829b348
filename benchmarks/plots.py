#!/usr/bin/env python3
"""PNG plots of benchmark tables: throughput per row, and each row's ratio against its peer.

Usage::

    python benchmarks/run.py --quick --json bench.json
    python benchmarks/plots.py bench.json --out benchmarks/plots

Reads the JSON a benchmark writes -- ``{"rows": [...]}`` (``benchmarks/run.py --json``) or a bare
list of rows -- and writes, with matplotlib's Agg backend (no display needed):

* ``throughput_<unit>.png``: one horizontal bar per row measured in that unit (samples/s,
  objects/s, files/s ...), with the range over rounds as an error bar where the row has one;
* ``ratio_vs_<peer>.png``: one bar per row compared with ``peer`` (local disk, aws s3 sync,
  1 thread ...), a line at 1x (as fast as the peer).

Any script can feed it; a row is a dict with (first key present wins):

* label: ``name`` | ``measurement`` | ``id``;
* value: ``median`` | ``value`` | ``rate``, its unit ``unit`` | ``rate_unit``; range ``min``/``max``;
* ratio: ``ratio``, its range ``ratio_min``/``ratio_max``, against ``ratio_of`` (the peer).

A peer row (``benchmarks/peers.py --json``: ``project``, ``project_range``, ``peers`` {tool: value},
``ratio_median``/``ratio_min``/``ratio_max`` against ``fastest_peer``) becomes one bar for the project
and one per peer in its unit's plot, and one ratio bar against "the fastest peer".

Rows without a value (a tool not installed, a failed run) are left out and counted on stderr.
Figures are 80 dpi with at most 14 bars each: ~20-40 KB per PNG, small enough to commit.

Exit status: 0 plots written, 1 nothing to plot, 2 bad usage or unreadable JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display
import matplotlib.pyplot as plt

LABEL_CHARS = 60  # longer labels are cut with an ellipsis (run.py's measurements run to ~80)
LABEL_TAIL = 22  # ... in the middle: rows that differ only at the end ("shared cores" / "--split-cpus") stay apart
DPI = 80


@dataclass(frozen=True)
class Bar:
    """One bar: its label, value and optional range (lo, hi)."""

    label: str
    value: float
    lo: float | None = None
    hi: float | None = None


def _first(row: Mapping[str, Any], *keys: str) -> Any:
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _label(row: Mapping[str, Any]) -> str:
    text = str(_first(row, "name", "measurement", "id") or "?")
    if len(text) <= LABEL_CHARS:
        return text
    return text[:LABEL_CHARS - LABEL_TAIL - 1] + "…" + text[-LABEL_TAIL:]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def expand_peer_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` with each peer row (see the module docstring) split into plain rows."""
    plain: list[Mapping[str, Any]] = []
    for row in rows:
        if not isinstance(row.get("peers"), Mapping) or "project" not in row:
            plain.append(row)
            continue
        name, unit = str(_first(row, "name", "id") or "?"), row.get("unit")
        lo, hi = (row.get("project_range") or [None, None])[:2]
        plain.append({"name": f"{name}: project", "unit": unit, "median": row.get("project"), "min": lo, "max": hi,
                      "ratio": row.get("ratio_median"), "ratio_min": row.get("ratio_min"),
                      "ratio_max": row.get("ratio_max"), "ratio_of": "the fastest peer"})
        for peer, value in row["peers"].items():
            plain.append({"name": f"{name}: {peer}", "unit": unit, "median": value})
    return plain


def throughput_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Bar]]:
    """unit -> bars of the rows measured in it (rows without a value are left out)."""
    groups: dict[str, list[Bar]] = {}
    for row in rows:
        value = _number(_first(row, "median", "value", "rate"))
        if value is None:
            continue
        unit = str(_first(row, "unit", "rate_unit") or "value")
        groups.setdefault(unit, []).append(Bar(_label(row), value, _number(row.get("min")), _number(row.get("max"))))
    return groups


def ratio_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Bar]]:
    """peer -> bars of the rows' ratios against it."""
    groups: dict[str, list[Bar]] = {}
    for row in rows:
        ratio = _number(row.get("ratio"))
        if ratio is None:
            continue
        peer = str(row.get("ratio_of") or "baseline")
        groups.setdefault(peer, []).append(
            Bar(_label(row), ratio, _number(row.get("ratio_min")), _number(row.get("ratio_max"))))
    return groups


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "value"


def bar_chart(bars: Sequence[Bar], title: str, xlabel: str, path: Path, *, one_line: bool = False) -> int:
    """Write one horizontal bar chart to ``path``; the number of bars drawn."""
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.3), dpi=DPI)
    try:
        ys = list(range(len(bars)))[::-1]  # first row on top, as in the table
        err = None
        if any(b.lo is not None and b.hi is not None for b in bars):
            err = [[b.value - b.lo if b.lo is not None else 0.0 for b in bars],
                   [b.hi - b.value if b.hi is not None else 0.0 for b in bars]]
        drawn = ax.barh(ys, [b.value for b in bars], xerr=err, color="#4477aa", capsize=3)
        ax.set_yticks(ys, [b.label for b in bars], fontsize=8)
        for y, b in zip(ys, bars):
            ax.annotate(f"{b.value:.3g}", (b.value, y), xytext=(3, 0), textcoords="offset points",
                        va="center", fontsize=7)
        if one_line:
            ax.axvline(1.0, color="#cc3311", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.margins(x=0.12)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
        return len(drawn.patches)
    finally:
        plt.close(fig)


def plot_rows(rows: Sequence[Mapping[str, Any]], out: Path, title: str = "") -> dict[Path, int]:
    """Write every plot of ``rows`` under ``out``; {path: number of bars}."""
    out.mkdir(parents=True, exist_ok=True)
    rows = expand_peer_rows(rows)
    written: dict[Path, int] = {}
    prefix = f"{title}: " if title else ""
    for unit, bars in throughput_groups(rows).items():
        path = out / f"throughput_{slug(unit)}.png"
        ranged = " (bars: median, lines: range over rounds)" if any(b.lo is not None for b in bars) else ""
        written[path] = bar_chart(bars, f"{prefix}throughput{ranged}", unit, path)
    for peer, bars in ratio_groups(rows).items():
        path = out / f"ratio_vs_{slug(peer)}.png"
        written[path] = bar_chart(bars, f"{prefix}speed relative to {peer} (> 1: faster)", f"x {peer}", path,
                                  one_line=True)
    return written


def load_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a benchmark JSON: ``{"rows": [...]}`` or a list; ValueError naming the file."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data.get("rows") if isinstance(data, dict) else data
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected {{'rows': [...]}} or a list of row objects")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("json", type=Path, help="benchmark JSON (benchmarks/run.py --json)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/plots"), help="folder for the PNGs (%(default)s)")
    ap.add_argument("--title", default="", help="prefix for every plot's title (e.g. the target store)")
    args = ap.parse_args(argv)
    try:
        rows = load_rows(args.json)
    except (OSError, ValueError) as exc:
        print(f"plots: cannot read {args.json}: {exc}", file=sys.stderr)
        return 2
    written = plot_rows(rows, args.out, args.title)
    left_out = sum(1 for r in expand_peer_rows(rows) if _number(_first(r, "median", "value", "rate")) is None)
    for path, bars in written.items():
        print(f"wrote {path} ({bars} bar{'' if bars == 1 else 's'})")
    if left_out:
        print(f"plots: {left_out} row(s) without a value left out", file=sys.stderr)
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
