"""``benchmarks/peers.py --quick`` as a user runs it (a subprocess from the repo root, its own moto server):
every row printed, every peer a column with a value or the reason it has none, never left out."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UPLOADERS = {"aws s3 sync": "aws", "s5cmd cp": "s5cmd", "s5cmd sync": "s5cmd", "rclone copy": "rclone"}
READERS = {"boto3": "boto3", "obstore": "obstore", "s3torchconnector": "s3torchconnector"}
ROWS = ["upload 67 files", "upload: client CPU per file", "upload: server CPU per file",
        "no-op re-upload of the same tree", "raw GET, 33 objects, 16 threads", "raw GET: client CPU per GET",
        "raw GET: server CPU per GET", "DataLoader per-object, bytes only",
        # issue #16 item 5, the training pipeline against local disk: shared cores, then --split-cpus
        "DataLoader per-object S3 vs local disk", "DataLoader per-object S3 vs local disk",
        "DataLoader shard mode", "DataLoader shard mode"]
LOCAL = "local disk"  # the DataLoader rows' baseline column: always there
ROW_KEYS = {"name", "unit", "project", "peers", "ratio_median", "ratio_min", "ratio_max", "target", "verdict"}


def _installed(peer: str) -> bool:
    """As the benchmark decides: a binary next to this Python or on PATH, or an importable module."""
    if peer == LOCAL:
        return True
    if peer in UPLOADERS:
        binary = UPLOADERS[peer]
        return (Path(sys.executable).parent / binary).is_file() or shutil.which(binary) is not None
    return importlib.util.find_spec(READERS[peer]) is not None


def _peers(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[str, list[dict]]:
    out_json = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, "benchmarks/peers.py", "--quick", "--work-dir", str(tmp_path / "work"),
                           "--json", str(out_json), *args], cwd=REPO, capture_output=True, text=True, timeout=400,
                          env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout, json.loads(out_json.read_text())


def _cells(table: str, row_name: str) -> dict[str, str]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    row = next(line for line in lines if line.startswith(f"| {row_name}"))
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))


@pytest.mark.slow
def test_quick_run_prints_every_row_and_every_installed_peer_measured(tmp_path: Path) -> None:
    table, rows = _peers([], tmp_path)
    assert [r["name"].split(" (")[0] for r in rows] == ROWS
    assert ["shared cores" in r["name"] for r in rows[-4:]] == [True, False, True, False]
    assert [r["target"] for r in rows[-4:]] == [0.9, 1.0, 1.0, 1.0]
    assert all(r["fastest_peer"] == LOCAL for r in rows[-4:])
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        assert row["project"] is not None and row["project"] > 0, row
    for line in ("- machine:", "- server: moto", "- tree: 67 files", "2 rounds", "- versions:", "s5cmd", "rclone"):
        assert line in table, table
    for row in rows:
        cells = _cells(table, row["name"])
        for peer, value in row["peers"].items():
            if _installed(peer):  # measured in both rounds, so it has a number, not a reason
                assert value is not None and value > 0, (peer, row)
                value_cell = cells[peer].split(" (")[0]  # on a DataLoader row: "51.9 (0.65x local disk)"
                assert value_cell.replace(",", "").replace(".", "", 1).isdigit(), (peer, cells)
            else:
                assert cells[peer] == "not installed", (peer, cells)
        if row["target"] is not None and any(v is not None for v in row["peers"].values()):
            assert row["verdict"] in ("PASS", "FAIL") and row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
            assert f"{row['ratio_median']:.2f}x" in cells["project / fastest peer (median [range])"]
            assert cells["verdict"] == row["verdict"]


@pytest.mark.slow
def test_a_missing_peer_is_a_not_installed_column_not_an_omission(tmp_path: Path) -> None:
    if (Path(sys.executable).parent / "rclone").is_file():
        pytest.skip("rclone sits next to this Python; an empty PATH cannot hide it")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))  # rclone lives on PATH (Debian's /usr/bin): now it cannot be found
    table, rows = _peers(["--rounds", "1", "--peers", "rclone copy,boto3"], tmp_path, env)
    upload = _cells(table, rows[0]["name"])
    assert upload["rclone copy"] == "not installed" and upload["verdict"] == "n/a", upload
    assert upload["s5cmd cp"] == "not run (--peers)", upload
    assert "rclone not installed" in table  # the versions line says so too
    get = _cells(table, rows[4]["name"])
    assert get["boto3"].replace(",", "").replace(".", "", 1).isdigit() and get["verdict"] in ("PASS", "FAIL"), get
