"""The peer benchmark's arithmetic (benchmarks/peer_stats.py) on synthetic timings: the interleaving
order, same-round ratios for both directions of unit, median and range, verdicts, and a table that
names every peer, installed or not."""
from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    """A benchmarks/ module by file (benchmarks/ is a script folder, not a package; nothing edits sys.path)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


stats = _load("peer_stats")
NOT_INSTALLED, Measure, advantage = stats.NOT_INSTALLED, stats.Measure, stats.advantage
render_table = stats.render_table
round_order, same_round_ratios = stats.round_order, stats.same_round_ratios
summarize, verdict = stats.summarize, stats.verdict
proc_cpu_seconds = _load("proc_cpu").proc_cpu_seconds


def test_each_tool_takes_each_position_equally_often_over_len_tools_rounds() -> None:
    tools = ["project", "aws", "s5cmd", "rclone"]
    orders = [round_order(tools, r) for r in range(len(tools))]
    for position in range(len(tools)):
        assert sorted(order[position] for order in orders) == sorted(tools)
    assert all(sorted(order) == sorted(tools) for order in orders)
    assert round_order(tools, 0) == tools and round_order(tools, 1) == ["aws", "s5cmd", "rclone", "project"]


def test_rotation_over_any_number_of_rounds_keeps_every_tool_once_per_round() -> None:
    tools = ["a", "b", "c"]
    firsts = Counter(round_order(tools, r)[0] for r in range(9))
    assert firsts == Counter({"a": 3, "b": 3, "c": 3})  # who goes first is spread evenly
    assert all(Counter(round_order(tools, r)) == Counter(tools) for r in range(9))
    assert round_order([], 3) == []


def test_ratios_are_taken_within_a_round_against_that_rounds_fastest_peer() -> None:
    # load drifts 2x between rounds: same-round ratios stay at 1.2x while cross-round ones would not
    m = Measure("upload", "files/s", True, 1.0, project=[600.0, 300.0, 480.0],
                peers={"s5cmd": [500.0, 250.0, 100.0], "rclone": [100.0, 50.0, 400.0]})
    assert same_round_ratios(m) == pytest.approx([1.2, 1.2, 1.2])
    row = summarize(m)
    assert row["ratio_median"] == pytest.approx(1.2) and row["verdict"] == "PASS"
    assert row["project"] == 480.0 and row["peers"] == {"s5cmd": 250.0, "rclone": 100.0}
    assert row["fastest_peer"] == "s5cmd"


def test_lower_is_better_units_turn_the_ratio_so_that_above_one_means_ahead() -> None:
    m = Measure("no-op", "s", False, 1.0, project=[2.0, 4.0, 3.0, 1.0, 2.5],
                peers={"s5cmd sync": [1.0, 1.0, 1.5, 1.0, 1.0], "aws s3 sync": [5.0, 5.0, 5.0, 5.0, 5.0]})
    row = summarize(m)
    assert same_round_ratios(m) == pytest.approx([0.5, 0.25, 0.5, 1.0, 0.4])
    assert (row["ratio_median"], row["ratio_min"], row["ratio_max"]) == pytest.approx((0.5, 0.25, 1.0))
    assert row["verdict"] == "FAIL" and row["rounds"] == 5
    assert advantage(1.0, 2.0, higher_is_better=False) == 2.0 and advantage(1.0, 2.0, higher_is_better=True) == 0.5


def test_failed_runs_and_missing_peers_leave_their_rounds_out_without_shifting_the_others() -> None:
    m = Measure("get", "objects/s", True, 1.0, project=[100.0, None, 100.0, 100.0],
                peers={"obstore": [50.0, 50.0, None, 200.0], "boto3": [None, 10.0, None, 25.0], "s3torch": []})
    m.add_peer("s3torch", NOT_INSTALLED)
    # round 1: project failed; round 2: no peer value; rounds 0 and 3 remain, against their own round's best
    assert same_round_ratios(m) == pytest.approx([2.0, 0.5])
    row = summarize(m)
    assert row["rounds"] == 2 and row["peers"]["s3torch"] is None and row["peer_status"]["s3torch"] == NOT_INSTALLED


def test_verdicts_for_ratio_targets_absolute_limits_and_information_rows() -> None:
    assert verdict(1.0, 1.0) == "PASS" and verdict(0.99, 1.0) == "FAIL" and verdict(None, 1.0) == "n/a"
    assert verdict(None, None) == "info" and verdict(0.5, None) == "info"
    assert verdict(None, None, 0.24, 0.25, higher_is_better=False) == "PASS"
    assert verdict(None, None, 0.26, 0.25, higher_is_better=False) == "FAIL"
    assert verdict(2.0, 1.0, 0.30, 0.25, higher_is_better=False) == "FAIL"  # both must hold
    assert verdict(None, None, None, 0.25, higher_is_better=False) == "n/a"


def test_table_has_a_column_per_peer_saying_not_installed_or_not_applicable() -> None:
    up = Measure("upload", "files/s", True, 1.0, project=[600.0], peers={"s5cmd cp": [500.0]})
    up.add_peer("rclone copy", NOT_INSTALLED)
    get = Measure("GET CPU", "CPU-ms/GET", False, limit=0.25, project=[0.3], peers={"obstore": [0.2]})
    get.status["obstore"] = "failed in 1 of 2 rounds: wrong byte count"
    table = render_table([summarize(up), summarize(get)], ["s5cmd cp", "rclone copy", "obstore"])
    lines = table.splitlines()
    assert len({line.count("|") for line in lines}) == 1  # every row as wide as the header
    up_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert up_cells[3:6] == ["500", NOT_INSTALLED, "-"]
    assert up_cells[-3:] == ["1.20x [1.20-1.20] vs s5cmd cp", ">= 1x", "PASS"]
    get_cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert get_cells[5] == "0.2 (failed in 1 of 2 rounds: wrong byte count)"
    assert get_cells[-2:] == ["<= 0.25 CPU-ms/GET", "FAIL"]


def test_server_cpu_comes_from_proc_and_is_none_for_a_gone_process() -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")  # the benchmark then prints n/a for server CPU
    busy = proc_cpu_seconds([os.getpid()])
    assert busy is not None and busy > 0
    sum(i * i for i in range(2_000_000))
    later = proc_cpu_seconds([os.getpid()])
    assert later is not None and later >= busy
    assert proc_cpu_seconds([2**22 + 12345]) is None


def test_a_row_with_a_baseline_is_judged_against_it_not_against_the_fastest_peer() -> None:
    # the DataLoader rows: the project vs local disk of the same round; s3torchconnector shown with its own ratio
    m = Measure("DataLoader", "samples/s", True, 0.9, baseline="local disk", project=[90.0, 40.0, 85.0],
                peers={"local disk": [100.0, 50.0, 100.0], "s3torchconnector": [120.0, 45.0, 80.0]})
    assert same_round_ratios(m) == pytest.approx([0.9, 0.8, 0.85])  # not against s3torchconnector's 120
    row = summarize(m)
    assert row["ratio_median"] == pytest.approx(0.85) and row["fastest_peer"] == "local disk"
    assert row["verdict"] == "FAIL" and row["peer_ratios"] == {"s3torchconnector": pytest.approx(0.9)}
    table = render_table([row], ["s3torchconnector", "local disk"])
    cells = [c.strip() for c in table.splitlines()[2].strip("|").split("|")]
    assert cells[3:5] == ["80 (0.90x local disk)", "100"]
    assert cells[-3:] == ["0.85x [0.80-0.90] vs local disk", ">= 0.9x", "FAIL"]
    assert summarize(Measure("GET", "objects/s", True, 1.0, project=[1.0], peers={"a": [2.0]}))["peer_ratios"] == {}


def test_the_dataloader_rows_read_the_first_samples_of_every_shard() -> None:
    subset_entries = _load("peer_loaders").subset_entries
    entries = [{"image": f"{shard}/{i:03d}.jpg"} for i in range(5) for shard in ("a", "b", "c")]  # interleaved
    got = subset_entries(entries, 7)  # ceil(7 / 3) = 3 of each shard, data.json order kept
    assert [e["image"] for e in got] == [f"{s}/{i:03d}.jpg" for i in range(3) for s in ("a", "b", "c")]
    assert subset_entries(entries, 100) == entries
