"""The front door: ``tools/demo.py`` end to end and ``benchmarks/run.py --quick``.

Both run as users run them (subprocesses from the repo root) on tiny sizes,
each against its own moto server on loopback.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARDS = 11

BENCH_ROWS = ["dataloader_local", "dataloader_s3", "rawread_local", "rawread_s3", "get_sequential", "get_threads",
              "upload_ours", "upload_aws", "upload_s5cmd", "upload_rclone", "noop_ours", "noop_aws", "noop_s5cmd",
              "noop_rclone"]
BENCH_LABELS = ["DataLoader, configs/blip3o60k_local.py", "DataLoader, configs/blip3o60k_ceph.py",
                "bytes only (no decode), local disk", "bytes only (no decode), S3", "raw GET of the images",
                "upload, tools/upload.py", "upload, aws s3 sync", "upload, s5cmd sync", "upload, rclone copy",
                "no-op re-upload, tools/upload.py", "no-op re-upload, aws s3 sync", "no-op re-upload, s5cmd",
                "no-op re-upload, rclone"]


def _run(args: list, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_end_to_end_reads_every_sample(tmp_path: Path) -> None:
    per_shard = 3
    proc = _run(["tools/demo.py", "--work-dir", tmp_path / "work", "--samples-per-shard", per_shard,
                 "--workers", 2], timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    match = re.search(r"^read (\d+)/(\d+) samples \((\d+) distinct\)", proc.stdout, re.M)
    assert match, out[-4000:]
    read, total, distinct = map(int, match.groups())
    assert read == total == distinct == per_shard * SHARDS
    assert re.search(r"^bad samples: 0; undecodable: 0; reads: remote (\d+), local fallback 0", proc.stdout, re.M), \
        proc.stdout[-2000:]
    assert "DEMO OK" in proc.stdout
    for step in range(1, 8):
        assert f"==> [{step}/7]" in proc.stdout
    assert "moto server stopped" in proc.stdout
    # the real tools did their work in the work dir
    raw = tmp_path / "work" / "data" / "BLIP3o-60k" / "raw"
    assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(
        p.stem for p in (tmp_path / "work" / "tars").glob("*.tar"))
    assert len(json.loads((raw.parent / "data.json").read_text())) == per_shard * SHARDS


@pytest.mark.slow
def test_benchmark_quick_prints_every_row(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = _run(["benchmarks/run.py", "--quick", "--work-dir", tmp_path / "bench", "--json", out_json], timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    table = proc.stdout
    for label in BENCH_LABELS:
        assert label in table, f"row {label!r} missing from:\n{table}"
    for line in ("- machine:", "- server: moto", "- dataset: 33 samples", "- versions:", "moto is a single Python"):
        assert line in table, table

    result = json.loads(out_json.read_text())
    rows = {r["id"]: r for r in result["rows"]}
    assert list(rows) == BENCH_ROWS
    # the judged rows carry a numeric ratio and a verdict
    dl = rows["dataloader_s3"]
    assert isinstance(dl["ratio"], float) and dl["ratio"] > 0
    assert dl["result"] in ("PASS", "FAIL")
    table_line = next(line for line in table.splitlines() if "configs/blip3o60k_ceph.py" in line)
    assert re.search(r"\| \d+\.\d+x local \|", table_line), table_line
    for key in ("dataloader_local", "rawread_local", "rawread_s3", "get_sequential", "get_threads", "upload_ours",
                "noop_ours"):
        assert isinstance(rows[key]["seconds"], float) and rows[key]["seconds"] > 0, rows[key]
    aws_installed = rows["upload_aws"].get("seconds") is not None
    if shutil.which("aws") or (Path(sys.executable).parent / "aws").is_file():
        assert aws_installed, rows["upload_aws"]
    if aws_installed:
        up = rows["upload_ours"]
        assert isinstance(up["ratio"], float) and up["ratio"] > 0
        assert up["result"] in ("PASS", "FAIL")
        assert isinstance(rows["noop_ours"]["ratio"], float)
        up_line = next(line for line in table.splitlines() if "upload, tools/upload.py" in line)
        assert re.search(r"\| \d+\.\d+x aws s3 sync \|", up_line), up_line
    for tool in ("s5cmd", "rclone"):
        row = rows[f"upload_{tool}"]
        assert row.get("seconds") is not None or row.get("rate_text") == "not installed", row


SHARD_BENCH_ROWS = ["local disk (extracted files)", "per-object S3", "per-object S3 + prefetch", "shard mode S3",
                    "shard mode S3 + prefetch", "shard mode S3 + cache (2nd epoch)", "local disk, LocalitySampler",
                    "shard mode S3 + block reads, LocalitySampler",
                    "shard mode S3 + block reads + prefetch, LocalitySampler"]


@pytest.mark.slow
def test_shard_benchmark_prints_every_mode_and_a_verdict(tmp_path: Path) -> None:
    proc = _run(["benchmarks/shards.py", "--samples-per-shard", 2, "--image-size", 96, "--output-size", 32,
                 "--rounds", 1, "--workers", 1, "--batch-size", 2, "--block-bytes", 16384,
                 "--work-dir", tmp_path / "bench"], timeout=240)
    assert proc.returncode in (0, 1), (proc.stdout + proc.stderr)[-4000:]  # 1: the target failed (moto)
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in SHARD_BENCH_ROWS:
            rows[cells[0]] = cells
    assert list(rows) == SHARD_BENCH_ROWS, proc.stdout
    for _name, cells in rows.items():
        assert float(cells[1]) > 0 and re.fullmatch(r"\d+\.\d\dx", cells[3]), cells
    verdicts = re.findall(r"^- (shard mode .*): (\d+\.\d\d)x (PASS|FAIL)$", proc.stdout, re.M)
    assert len(verdicts) == 4, proc.stdout
    assert (proc.returncode == 0) == any(v == "PASS" for _, _, v in verdicts)
    assert re.search(r"\| shards \+ index\.json \+ data\.json .* \| 13 \|", proc.stdout), proc.stdout
