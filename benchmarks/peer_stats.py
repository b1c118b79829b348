"""The arithmetic of the peer benchmark (benchmarks/peers.py), kept free of I/O so it is unit-tested.

Why same-round ratios: on a shared 2-core machine the load of other processes drifts by 2x over
minutes, so a project time from round 1 compared with a peer time from round 4 measures the drift.
Every tool runs once per round, in an order rotated each round (nobody always goes first, when
caches are cold, or last, when the server has piled up objects), and the ratio is taken within a
round; the table shows the median of those ratios and their range.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

NOT_INSTALLED = "not installed"


def round_order(tools: Sequence[str], round_index: int) -> list[str]:
    """``tools`` rotated by ``round_index``: each tool takes every position equally often over len(tools) rounds."""
    if not tools:
        return []
    k = round_index % len(tools)
    return list(tools[k:]) + list(tools[:k])


@dataclass
class Measure:
    """One table row: the project's value and each peer's value, per round (None = that run failed).

    ``higher_is_better`` says which way the unit points (files/s: higher; seconds, CPU-ms: lower);
    the ratio is always oriented so that > 1 means the project is ahead. ``target`` None = shown
    for information, not judged, unless ``limit`` is set: an absolute bound on the project's median
    (the issue's "GET client CPU <= 0.25 ms"). ``status`` holds why a tool has no values ("not installed", an error).
    ``baseline`` names the one peer the ratio is taken against (the DataLoader rows: "local disk", not the
    fastest peer); the other peers of such a row are shown with their own same-round ratio to it.
    """

    name: str
    unit: str
    higher_is_better: bool
    target: Optional[float] = None
    limit: Optional[float] = None
    baseline: Optional[str] = None
    project: list[Optional[float]] = field(default_factory=list)
    peers: dict[str, list[Optional[float]]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    def add_peer(self, name: str, status: str = "") -> None:
        """Register a peer, installed or not: a peer never drops out of the table silently."""
        self.peers.setdefault(name, [])
        if status:
            self.status[name] = status


def advantage(project: float, peer: float, higher_is_better: bool) -> float:
    """How many times better the project is than ``peer`` (> 1: ahead), for either direction of unit."""
    if higher_is_better:
        return project / peer if peer else float("inf")
    return peer / project if project else float("inf")


def best_peer_value(values: Sequence[Optional[float]], higher_is_better: bool) -> Optional[float]:
    """The fastest peer's value among one round's values (None: no peer produced one)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return max(present) if higher_is_better else min(present)


def same_round_ratios(m: Measure, series: Optional[Sequence[Optional[float]]] = None) -> list[float]:
    """Per round: the project's (or ``series``') advantage over that round's fastest peer, or over the
    ``baseline`` peer when the row has one; rounds without both are left out."""
    ratios = []
    others = [m.peers.get(m.baseline, [])] if m.baseline is not None else list(m.peers.values())
    for r, value in enumerate(m.project if series is None else series):
        if value is None:
            continue
        best = best_peer_value([vals[r] if r < len(vals) else None for vals in others], m.higher_is_better)
        if best is not None:
            ratios.append(advantage(value, best, m.higher_is_better))
    return ratios


def median_or_none(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def verdict(ratio_median: Optional[float], target: Optional[float], project: Optional[float] = None,
            limit: Optional[float] = None, higher_is_better: bool = True) -> str:
    """PASS/FAIL against the ratio target and/or the absolute limit; 'info' for an unjudged row;
    'n/a' when a judged row has nothing to judge (no ratio, no project value)."""
    if target is None and limit is None:
        return "info"
    checks = []
    if target is not None:
        if ratio_median is None:
            return "n/a"
        checks.append(ratio_median >= target)
    if limit is not None:
        if project is None:
            return "n/a"
        checks.append(project >= limit if higher_is_better else project <= limit)
    return "PASS" if all(checks) else "FAIL"


def fastest_peer(m: Measure) -> Optional[str]:
    """The peer with the best median value (the one the ratio mostly compares against), or the baseline."""
    if m.baseline is not None:
        return m.baseline
    medians = {name: median_or_none(vals) for name, vals in m.peers.items()}
    present = {name: v for name, v in medians.items() if v is not None}
    if not present:
        return None
    pick = max if m.higher_is_better else min
    return pick(present, key=lambda name: present[name])


def summarize(m: Measure) -> dict[str, Any]:
    """The JSON row a plotting script reads: medians, ratio median and range, verdict."""
    ratios = same_round_ratios(m)
    ratio_median = statistics.median(ratios) if ratios else None
    project = median_or_none(m.project)
    return {
        "name": m.name,
        "unit": m.unit,
        "higher_is_better": m.higher_is_better,
        "project": project,
        "project_range": _range(m.project),
        "peers": {name: median_or_none(vals) for name, vals in m.peers.items()},
        "peer_status": dict(m.status),
        "fastest_peer": fastest_peer(m),
        "ratio_median": ratio_median,
        "ratio_min": min(ratios) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "rounds": len(ratios),
        "target": m.target,
        "limit": m.limit,
        "verdict": verdict(ratio_median, m.target, project, m.limit, m.higher_is_better),
        "baseline": m.baseline,
        # with a baseline: each other peer's median same-round ratio to it (s3torchconnector vs local disk)
        "peer_ratios": {name: _median_ratio(m, vals) for name, vals in m.peers.items()
                        if m.baseline is not None and name != m.baseline},
    }


def _median_ratio(m: Measure, series: Sequence[Optional[float]]) -> Optional[float]:
    ratios = same_round_ratios(m, series)
    return statistics.median(ratios) if ratios else None


def _range(values: Sequence[Optional[float]]) -> Optional[list[float]]:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def fmt_value(value: Optional[float]) -> str:
    """Three significant figures: files/s in the hundreds and CPU-ms of 0.2 in one column format."""
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def render_table(rows: Sequence[dict[str, Any]], peer_names: Sequence[str]) -> str:
    """Markdown: one column per peer (its median, or why it has none), ratio median [min-max], verdict."""
    cols = ["row", "unit", "project", *peer_names, "project / fastest peer (median [range])", "target", "verdict"]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        cells = [row["name"], row["unit"], fmt_value(row["project"])]
        for peer in peer_names:
            if peer not in row["peers"]:
                cells.append("-")  # the peer does not do this operation
            elif row["peers"][peer] is None:
                cells.append(row["peer_status"].get(peer) or "n/a")
            else:  # a peer that failed some rounds shows its value and why the others are missing
                why = row["peer_status"].get(peer)
                ratio = (row.get("peer_ratios") or {}).get(peer)
                vs = f" ({ratio:.2f}x {row['baseline']})" if ratio is not None else ""
                cells.append(fmt_value(row["peers"][peer]) + vs + (f" ({why})" if why else ""))
        if row["ratio_median"] is None:
            cells.append("n/a")
        else:
            cells.append(f"{row['ratio_median']:.2f}x [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}] "
                         f"vs {row['fastest_peer']}")
        cells.append(target_text(row))
        cells.append(row["verdict"])
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def target_text(row: dict[str, Any]) -> str:
    """'>= 1x' for a ratio target, '<= 0.25 CPU-ms/GET' for an absolute one, both when both apply."""
    parts = []
    if row["target"] is not None:
        parts.append(f">= {row['target']:g}x")
    if row.get("limit") is not None:
        parts.append(f"{'>=' if row['higher_is_better'] else '<='} {row['limit']:g} {row['unit']}")
    return " and ".join(parts)
