"""Where a DataLoader pass's CPU goes: local disk, shard mode and per-object S3, side by side.

The profile behind peers.py's DataLoader rows (issue #16, item 5). Each pass is peers.py's
``loader_pass`` (the shipped configs' dataset, 2 forked workers, every sample decoded and checked);
modes alternate in a rotated order each round. Per pass: samples/s, client CPU (this process plus
its reaped workers), of which this process, and the store's CPU from /proc (tools/ceph_dev.sh's
daemons). Then the I/O alone: the subset's images read in this process without decoding, page-cache
reads against shard-mode block reads (``locality_groups()`` included), CPU per sample.

Needs the tree a peers.py run leaves in ``demo-work/peers`` (``upload-src/``, ``tars/``) and, once,
``--upload`` to put it in the bucket:

    PYTHONPATH=$PWD python benchmarks/loader_cpu.py --upload --split-cpus --rounds 3

Measured 2026-11-30 (split CPUs, 1,100 samples): client CPU per pass local 33.8 s, shard mode 34.0 s,
per-object 34.4 s + 4.35 s of the store's; I/O alone 0.059 ms a sample from the page cache, 0.121 ms
in shard mode (docs/perf16-profile.md, "Session 15").
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cpu_split import ceph_pids, split_cpus  # benchmarks/, next to this script
from peer_loaders import LOCAL, PROJECT, SHARDS, LoaderSetup, build_dataset, loader_pass, subset_entries
from peer_tools import children_cpu_seconds, self_cpu_seconds
from proc_cpu import proc_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
MODES = {"local": LOCAL, "shard": SHARDS, "object": PROJECT}


def upload(src: Path, bucket: str, conf: Path) -> None:
    """The tars (shard mode, prefix shards/) and the extracted tree (per-object, raw/), untimed."""
    run = [sys.executable, "tools/upload_shards.py", str(src / "tars"), "--bucket", bucket, "--prefix", "shards",
           "--config", str(conf), "--no-data-json", "--create-bucket"]
    subprocess.run(run, check=True, cwd=REPO)
    subprocess.run([sys.executable, "tools/upload.py", str(src / "upload-src"), "--bucket", bucket, "--config",
                    str(conf)], check=True, cwd=REPO)


def server_cpu(pids: list[int]) -> float:
    seconds = proc_cpu_seconds(pids)
    return float("nan") if seconds is None else seconds  # a store that went away: n/a, not 0


def pass_row(mode: str, setup: LoaderSetup, seed: int, pids: list[int]) -> dict[str, float]:
    dataset = build_dataset(MODES[mode], setup)
    own0, kids0, server0, t0 = self_cpu_seconds(), children_cpu_seconds(), server_cpu(pids), time.monotonic()
    rate = loader_pass(dataset, setup, seed=seed, locality=mode == "shard")
    own = self_cpu_seconds() - own0
    return {"rate": rate, "wall": time.monotonic() - t0, "client": own + children_cpu_seconds() - kids0, "main": own,
            "server": server_cpu(pids) - server0}


def io_alone(setup: LoaderSetup, entries: list[dict[str, Any]]) -> dict[str, float]:
    """CPU seconds to read every image once: from the page cache, and through shard mode's block reads."""
    t0 = time.process_time()
    local = 0
    for entry in entries:
        with open(setup.raw / entry["image"], "rb") as f:
            local += len(f.read())
    local_s = time.process_time() - t0
    dataset = build_dataset(SHARDS, setup)
    source, folder = dataset.sample_source, dataset.ceph_folder
    t0 = time.process_time()
    shard = 0
    for group in dataset.locality_groups():
        for i in group:
            shard += len(source.read(dataset.storage, source.locate(folder, entries[i]["image"])))
    if shard != local:
        raise RuntimeError(f"shard mode read {shard} bytes, the page cache {local}")
    return {"local": local_s, "shard": time.process_time() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=REPO / "demo-work" / "peers", help="peers.py's work folder")
    ap.add_argument("--bucket", default="blip3o-prof")
    ap.add_argument("--config", type=Path, default=Path("/tmp/blip3o-ceph/petreloss.conf"))
    ap.add_argument("--upload", action="store_true", help="upload the tars and the tree first (untimed)")
    ap.add_argument("--split-cpus", action="store_true", help="the store on the first half of the CPUs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=1100)
    ap.add_argument("--modes", default="local,shard,object", help="comma-separated of %(default)s")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.rounds < 1 or not modes or any(m not in MODES for m in modes):
        ap.error(f"--rounds must be >= 1 and --modes a comma-separated subset of {','.join(MODES)}")
    if not (args.src / "upload-src" / "data.json").is_file():
        ap.error(f"{args.src}/upload-src/data.json not found: run benchmarks/peers.py --target ceph once first")
    if args.upload:
        upload(args.src, args.bucket, args.config)
    entries = subset_entries(json.loads((args.src / "upload-src" / "data.json").read_text()), args.samples)
    data_json = args.src / "loader-cpu-data.json"
    data_json.write_text(json.dumps(entries))
    setup = LoaderSetup(data_json=data_json, raw=args.src / "upload-src" / "raw", objects=f"s3://{args.bucket}/raw",
                        shards=f"s3://{args.bucket}/shards", conf=args.config, image_size=None, workers=2,
                        batch_size=4)
    pids = ceph_pids()
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    io: list[dict[str, float]] = []
    with split_cpus(pids) if args.split_cpus else contextlib.nullcontext("shared cores") as where:
        print(f"CPUs: {where}; {len(entries)} samples a pass", flush=True)
        for r in range(args.rounds):
            for mode in modes[r % len(modes):] + modes[:r % len(modes)]:
                row = pass_row(mode, setup, r, pids)
                rows[mode].append(row)
                print(f"round {r + 1} {mode:6s} {row['rate']:6.1f} samples/s, client CPU {row['client']:.2f} s "
                      f"(this process {row['main']:.2f}), server CPU {row['server']:.2f} s", flush=True)
            io.append(io_alone(setup, entries))
    print("\n| mode | samples/s per pass | client CPU s (median) | this process | server CPU s |")
    print("|---|---|---|---|---|")
    for mode in modes:
        med = {k: statistics.median(row[k] for row in rows[mode]) for k in ("client", "main", "server")}
        rates = " / ".join(f"{row['rate']:.1f}" for row in rows[mode])
        print(f"| {mode} | {rates} | {med['client']:.2f} | {med['main']:.2f} | {med['server']:.2f} |")
    n = len(entries)
    for kind in ("local", "shard"):
        per = [x[kind] / n * 1000 for x in io]
        print(f"I/O alone, {kind}: {statistics.median(per):.3f} ms a sample [{min(per):.3f}-{max(per):.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
