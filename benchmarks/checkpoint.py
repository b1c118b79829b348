#!/usr/bin/env python3
"""Checkpoint rows: torch.save / torch.load of one checkpoint on S3, against ``aws s3 cp``.

Usage::

    python benchmarks/checkpoint.py                    # 1 GiB, moto server on 127.0.0.1
    python benchmarks/checkpoint.py --target ceph      # the RGW of tools/ceph_dev.sh (/tmp/blip3o-ceph/env)
    python benchmarks/checkpoint.py --size 4GiB --rounds 3
    python benchmarks/checkpoint.py --quick            # 96 MiB, 3 rounds: a smoke test

Each round, in alternating order (ours first in even rounds, aws first in odd ones):

* **save, ours**: a fresh process builds a state dict of ``--size`` bytes (float32 tensors of 64 MiB),
  records its RSS after imports and client creation (the baseline), then ``torch.save``\\ s it into
  ``Storage.open(uri, "wb")``; the time of that call alone, and the process's peak RSS (VmHWM);
* **save, aws**: ``aws s3 cp`` of the same checkpoint written to a local file (the same bytes);
* **load, ours**: a fresh process ``torch.load``\\ s it from ``Storage.open(uri, "rb")`` (time of that call);
* **load, aws**: ``aws s3 cp`` of the object to a local file.

On the dev RGW of ``tools/ceph_dev.sh`` (a 4 GiB memstore), the round's two objects are deleted and
RGW's garbage collector is run (``radosgw-admin gc process --include-all``) after every round: RGW keeps
deleted and overwritten data for 2 h before collecting it, and 5 rounds of 2 x 1 GiB would fill the
store (seen: HEALTH_ERR "1 full osd", every write hanging). Whatever happens, the run's objects and
unfinished uploads are removed at the end.

MB/s is bytes / seconds; the ratio is ours / aws within one round; the table shows the median over
rounds and the range of the same-round ratios. ``aws`` runs with its defaults (8 MiB parts,
10 requests in flight) and includes its start-up (measured separately and shown in a footnote).
Targets: save >= 1.0x, load >= 1.0x, peak RSS of the saving process above its baseline <=
checkpoint size + 256 MiB (the state dict itself is the checkpoint size: one copy, never two).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from blip3o_storage.cli.common import EXIT_FAILED, EXIT_OK
from blip3o_storage.cli.demo import StepFailed
from blip3o_storage.storage.part_sizing import MiB, parse_size
from blip3o_storage.storage.s3_backend import S3Backend
from run import Endpoint, Uploaders, fmt, note, timed  # benchmarks/run.py, next to this script

SAVE_TARGET = LOAD_TARGET = 1.0
RSS_SLACK = 256 * MiB
TENSOR_BYTES = 64 * MiB


# -- the child processes ------------------------------------------------------
def _vm(field: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def state_dict(size: int) -> dict:
    """``size`` bytes of float32 tensors of 64 MiB (the last one shorter), deterministic."""
    import torch
    generator = torch.Generator().manual_seed(0)
    tensors, left, i = {}, size, 0
    while left > 0:
        n = min(TENSOR_BYTES, left) // 4
        tensors[f"layer{i:03d}.weight"] = torch.randn(n, generator=generator)
        left -= n * 4 if n else left
        i += 1
    return tensors


def child(argv: list[str]) -> int:
    """``save CONF URI SIZE`` / ``load CONF URI`` / ``file PATH SIZE``: one measurement, JSON on stdout."""
    import torch

    from blip3o_storage import Storage

    mode = argv[0]
    if mode == "file":
        torch.save(state_dict(int(argv[2])), argv[1])
        return 0
    storage = Storage(argv[1])
    uri = argv[2]
    storage.s3_backend(uri).connect()
    baseline = _vm("VmRSS")
    if mode == "save":
        state = state_dict(int(argv[3]))
        t0 = time.perf_counter()
        with storage.open(uri, "wb") as writer:
            torch.save(state, writer)
        seconds = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        with storage.open(uri, "rb") as reader:
            state = torch.load(reader, weights_only=True)
        seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "baseline": baseline, "hwm": _vm("VmHWM"),
                      "tensor_bytes": sum(t.numel() * t.element_size() for t in state.values())}))
    return 0


def run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])))
    if proc.returncode != 0:
        raise StepFailed(f"child {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


# -- the bench -----------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="checkpoint size, e.g. 1GiB, 512MiB (default 1GiB; 96MiB --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 3 with --quick)")
    ap.add_argument("--target", choices=("moto", "ceph"), default="moto")
    ap.add_argument("--endpoint-url", default=None)
    ap.add_argument("--access-key", default=None)
    ap.add_argument("--secret-key", default=None)
    ap.add_argument("--bucket", default="blip3o-bench-ckpt")
    ap.add_argument("--work-dir", type=Path, default=Path("demo-work/bench-checkpoint"),
                    help="local files (the checkpoint for aws, downloads); default %(default)s (gitignored)")
    ap.add_argument("--quick", action="store_true", help="96 MiB, 3 rounds: a smoke test of every row")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    try:
        args.size = parse_size(args.size or ("96MiB" if args.quick else "1GiB"))
    except ValueError:
        ap.error(f"--size {args.size!r} is not a size (e.g. 1GiB, 512MiB, 1073741824)")
    args.rounds = args.rounds or (3 if args.quick else 5)
    if args.size < TENSOR_BYTES // 64 or args.rounds < 1:
        ap.error("--size must be >= 1 MiB and --rounds >= 1")
    if args.target == "ceph" and args.endpoint_url:
        ap.error("--target ceph and --endpoint-url are exclusive")
    return args


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ep = Endpoint(args, work)
    try:
        storage = ep.storage()
        backend = storage.s3_backend(f"s3://{args.bucket}/x")
        assert isinstance(backend, S3Backend)
        backend.ensure_bucket(args.bucket)
        aws = Uploaders(ep, work, concurrency=10)  # aws s3's own default max_concurrent_requests
        if aws.aws is None:
            raise StepFailed("aws (awscli) is not installed: pip install awscli")
        run_id = f"ckpt-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        ours_uri = f"s3://{args.bucket}/{run_id}/ours.pth"
        aws_uri = f"s3://{args.bucket}/{run_id}/aws.pth"
        local, download = work / "checkpoint.pth", work / "download.pth"
        note(f"== writing the {args.size / MiB:.0f} MiB checkpoint for aws to {local}")
        run_child(["file", str(local), str(args.size)])
        nbytes = local.stat().st_size
        startup, _, _ = timed([aws.aws, "--version"], env=aws.env)
        settings = backend.settings
        rounds: list[dict[str, Any]] = []
        run_prefix = f"s3://{args.bucket}/{run_id}/"
        try:
            object_bytes = run_rounds(args, ep, aws, ours_uri, aws_uri, local, download, storage, rounds)
        finally:
            clean_up(storage, backend, run_prefix, args.target)
        return {"size": args.size, "file_bytes": nbytes, "object_bytes": object_bytes, "rounds": rounds,
                "aws_startup_s": startup, "endpoint": ep.kind,
                "settings": f"multipart_threshold {settings.multipart_threshold // MiB} MiB, multipart_chunksize "
                            f"{settings.multipart_chunksize // MiB} MiB, max_concurrency {settings.max_concurrency}"}
    finally:
        ep.stop()


def clean_up(storage: Any, backend: S3Backend, prefix: str, target: str) -> None:
    """Remove the run's objects and unfinished uploads; on the dev RGW also collect the garbage now."""
    with contextlib.suppress(Exception):
        backend.abort_incomplete_uploads(prefix, older_than_s=0)
    with contextlib.suppress(Exception):
        for info in list(storage.list(prefix)):
            storage.delete(prefix + info.key)
    if target == "ceph":
        collect_rgw_garbage()


def collect_rgw_garbage() -> None:
    """``radosgw-admin gc process --include-all`` on the dev cluster (see the module docstring)."""
    conf = Path(os.environ.get("CEPH_DEV_DIR", "/tmp/blip3o-ceph")) / "ceph.conf"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(["radosgw-admin", "-c", str(conf), "-n", "client.rgw.dev", "--admin-socket=",
                        "gc", "process", "--include-all"], capture_output=True, timeout=120)


def run_rounds(args: argparse.Namespace, ep: Endpoint, aws: Uploaders, ours_uri: str, aws_uri: str, local: Path,
               download: Path, storage: Any, rounds: list[dict[str, Any]]) -> int:
    object_bytes = 0
    for r in range(args.rounds):
        note(f"== round {r + 1}/{args.rounds}")
        steps = {"ours_save": lambda: run_child(["save", str(ep.conf), ours_uri, str(args.size)]),
                 "aws_save": lambda: aws_cp(aws, [str(local), aws_uri]),
                 "ours_load": lambda: run_child(["load", str(ep.conf), ours_uri]),
                 "aws_load": lambda: aws_cp(aws, [aws_uri, str(download)])}
        order = ["ours_save", "aws_save", "ours_load", "aws_load"] if r % 2 == 0 else \
            ["aws_save", "ours_save", "aws_load", "ours_load"]
        result = {name: steps[name]() for name in order}
        download.unlink(missing_ok=True)
        object_bytes = storage.stat(ours_uri).size
        for uri in (ours_uri, aws_uri):
            storage.delete(uri)
        if args.target == "ceph":
            collect_rgw_garbage()
        rounds.append(result)
        note("   save ours {:.2f}s aws {:.2f}s; load ours {:.2f}s aws {:.2f}s; peak RSS +{:.0f} MiB".format(
            result["ours_save"]["seconds"], result["aws_save"]["seconds"], result["ours_load"]["seconds"],
            result["aws_load"]["seconds"], (result["ours_save"]["hwm"] - result["ours_save"]["baseline"]) / MiB))
    return object_bytes


def aws_cp(aws: Uploaders, paths: list[str]) -> dict[str, Any]:
    assert aws.aws is not None
    seconds, rc, tail = timed([aws.aws, "s3", "cp", *paths, "--endpoint-url", aws.ep.url, "--only-show-errors",
                               "--no-progress"], env=aws.env)
    if rc != 0:
        raise StepFailed(f"aws s3 cp {' '.join(paths)} exited {rc}:\n{tail}")
    return {"seconds": seconds}


def table(report: dict[str, Any]) -> tuple[str, bool]:
    rounds, nbytes = report["rounds"], report["file_bytes"]
    mb = nbytes / 1e6
    rows: list[list[str]] = []
    ok = True
    for op, target in (("save", SAVE_TARGET), ("load", LOAD_TARGET)):
        ours = [mb / r[f"ours_{op}"]["seconds"] for r in rounds]
        theirs = [mb / r[f"aws_{op}"]["seconds"] for r in rounds]
        ratios = [o / t for o, t in zip(ours, theirs)]
        passed = statistics.median(ratios) >= target
        ok &= passed
        what = "torch.save -> Storage.open(uri, 'wb')" if op == "save" else "torch.load <- Storage.open(uri, 'rb')"
        rows.append([f"{op}: {what}", fmt(statistics.median(ours)), fmt(statistics.median(theirs)), spread(ratios),
                     f">= {target:.1f}x", "PASS" if passed else "FAIL"])
    above = [r["ours_save"]["hwm"] - r["ours_save"]["baseline"] for r in rounds]
    absolute = [r["ours_save"]["hwm"] for r in rounds]
    limit = report["size"] + RSS_SLACK
    passed = max(above) <= limit
    ok &= passed
    rows.append(["peak RSS of the saving process (VmHWM)",
                 f"+{max(above) / MiB:.0f} MiB above baseline ({max(absolute) / MiB:.0f} MiB absolute)", "", "",
                 f"<= size + 256 MiB = {limit / MiB:.0f} MiB", "PASS" if passed else "FAIL"])
    cols = ["measurement", "ours MB/s (median)", "aws s3 cp MB/s (median)", "ours / aws: median [range]", "target",
            "result"]
    out = [f"- checkpoint: {report['size'] / MiB:.0f} MiB state dict ({nbytes / 1e6:.1f} MB file), "
           f"{len(rounds)} interleaved rounds",
           f"- store: {report['endpoint']}",
           f"- ours: {report['settings']}; aws s3 cp: defaults (8 MiB parts, 10 in flight)", "",
           "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    out += ["", f"1. aws s3 cp times include its start-up ({report['aws_startup_s']:.2f} s for `aws --version`); "
                "ours are the torch.save/torch.load call alone, in a process that already has its client.",
            "2. Peak RSS: the saving process's VmHWM minus its RSS after imports and client creation; the state "
            "dict it builds before saving is the checkpoint size, so one copy of the checkpoint plus the "
            "upload's part buffers is the expected peak."]
    return "\n".join(out), ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    args = parse_args(argv)
    try:
        report = bench(args)
    except StepFailed as exc:
        note(f"checkpoint bench failed: {exc}")
        return EXIT_FAILED
    text, _ok = table(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
