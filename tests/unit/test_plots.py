"""benchmarks/plots.py on a small synthetic benchmark JSON: the PNGs are written, are real PNGs,
and hold one bar per row (rows without a value left out)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from blip3o_storage.testing.paths import REPO_ROOT


def _load_plots() -> ModuleType:
    """benchmarks/plots.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_plots", REPO_ROOT / "benchmarks" / "plots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


plots = _load_plots()

ROWS: list[dict[str, Any]] = [
    {"id": "dataloader_local", "measurement": "DataLoader, local", "rate": 120.0, "rate_unit": "samples/s",
     "ratio_text": "baseline"},
    {"id": "dataloader_s3", "measurement": "DataLoader, S3", "rate": 110.0, "rate_unit": "samples/s",
     "ratio": 0.92, "ratio_of": "local"},
    {"id": "get_sequential", "measurement": "raw GET, 1 thread", "rate": 300.0, "rate_unit": "objects/s"},
    {"id": "get_threads", "measurement": "raw GET, 16 threads", "rate": 1500.0, "rate_unit": "objects/s",
     "ratio": 5.0, "ratio_of": "1 thread"},
    {"id": "upload_ours", "measurement": "upload, ours", "rate": 80.0, "rate_unit": "files/s", "ratio": 2.5,
     "ratio_of": "aws s3 sync"},
    {"id": "upload_aws", "measurement": "upload, aws", "rate": 32.0, "rate_unit": "files/s", "ratio": 1.0,
     "ratio_of": "aws s3 sync"},
    {"id": "upload_s5cmd", "measurement": "upload, s5cmd", "rate_text": "not installed"},  # no value: left out
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_one_bar_per_row_in_each_plot(tmp_path: Path) -> None:
    written = plots.plot_rows(ROWS, tmp_path)
    bars = {path.name: n for path, n in written.items()}
    assert bars == {"throughput_samples_s.png": 2, "throughput_objects_s.png": 2, "throughput_files_s.png": 2,
                    "ratio_vs_local.png": 1, "ratio_vs_1_thread.png": 1, "ratio_vs_aws_s3_sync.png": 2}
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and 2_000 < len(data) < 100_000, (path, len(data))


def test_generic_rows_with_median_and_range(tmp_path: Path) -> None:
    """Another script's rows: name/value/median/min/max, ratios with their own range."""
    rows = [{"name": f"variant {i}", "median": 10.0 * (i + 1), "min": 9.0 * (i + 1), "max": 11.0 * (i + 1),
             "unit": "MB/s", "ratio": 1.0 + i, "ratio_min": 0.9 + i, "ratio_max": 1.1 + i, "ratio_of": "disk"}
            for i in range(5)]
    written = plots.plot_rows(rows, tmp_path)
    assert {p.name: n for p, n in written.items()} == {"throughput_mb_s.png": 5, "ratio_vs_disk.png": 5}


def test_cli_reads_run_py_json_and_reports_left_out_rows(tmp_path: Path) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"header": ["x"], "rows": ROWS, "footnotes": []}))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "plots.py"), str(bench), "--out",
                           str(tmp_path / "png")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "throughput_samples_s.png (2 bars)" in proc.stdout and "1 row(s) without a value left out" in proc.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 6
    bench.write_text("{not json")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "plots.py"), str(bench)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "bench.json" in proc.stderr


def test_peer_rows_become_one_bar_per_tool_and_a_ratio_against_the_fastest(tmp_path: Path) -> None:
    """A benchmarks/peers.py row (project, peers{}, ratio_median/min/max) is plotted, not dropped."""
    row = {"name": "upload 10 files", "unit": "files/s", "project": 90.0, "project_range": [80.0, 95.0],
           "peers": {"s5cmd cp": 100.0, "aws s3 sync": 40.0}, "fastest_peer": "s5cmd cp",
           "ratio_median": 0.9, "ratio_min": 0.8, "ratio_max": 0.97, "verdict": "FAIL"}
    plain = plots.expand_peer_rows([row])
    assert [(r["name"], r["median"]) for r in plain] == [
        ("upload 10 files: project", 90.0), ("upload 10 files: s5cmd cp", 100.0),
        ("upload 10 files: aws s3 sync", 40.0)]
    written = plots.plot_rows([row], tmp_path)
    assert written == {tmp_path / "throughput_files_s.png": 3, tmp_path / "ratio_vs_the_fastest_peer.png": 1}
    ratio = plots.ratio_groups(plain)["the fastest peer"]
    assert (ratio[0].value, ratio[0].lo, ratio[0].hi) == (0.9, 0.8, 0.97)


def test_long_labels_that_differ_only_at_the_end_stay_apart() -> None:
    """peers.py's shared / --split-cpus DataLoader rows share their first ~95 characters: a label cut
    at the end drew both as the same text."""
    head = "DataLoader shard mode (block reads) vs local disk (2 workers, batch 4, JPEG decode, 1,100 samples, "
    shared, split = plots._label({"name": head + "shared cores"}), plots._label({"name": head + "--split-cpus"})
    assert shared != split and shared.endswith("shared cores") and split.endswith("--split-cpus")
    assert len(shared) == plots.LABEL_CHARS and shared.startswith("DataLoader shard mode") and "…" in shared
    assert plots._label({"name": "upload 10 files"}) == "upload 10 files"
