#!/usr/bin/env python3
"""Scale: the sample table and the upload tool at 60k, 1M and 10M entries (issue #14).

Usage::

    python benchmarks/scale.py [--sizes 60000,1000000,10000000] [--rounds 3] \
        [--upload-files 2000,8000] [--work-dir DIR] [--quick]

For each size, a synthetic data.json shaped like ``tools/make_data_json.py``'s
output (``{"image": "s00012/000123456.jpg", "annotation": "s00012/000123456.txt"}``,
one entry per line) is written, and every measurement runs in a fresh child
process (``--child``), so one does not inherit another's memory:

* table memory: the main process's sample table (the mapped file, all of it
  resident after a full pass, plus the Python objects still held after the
  load, by tracemalloc) over the data.json's bytes; target <= 0.5x.
* worker growth: a forked child looks up every entry once (an epoch in
  LocalitySampler-like order: blocks shuffled, entries in order inside) and
  reports the growth of its Private_Dirty (``/proc/<pid>/smaps_rollup``);
  target <= 32 MB. The time of a random-order lookup is shown too.
* 4 ranks: four independent processes load the same data.json at once into
  one cache folder, touch every entry and, while all four are alive, report
  the Rss/Pss/private bytes of their mappings of the table file; target: one
  file, the sum of the four Pss <= 1.1x one copy, and no private table pages.
* load time: building the table from the data.json (fresh cache folder: the
  first rank's cost) vs plain ``json.load`` of the same file, interleaved over
  ``--rounds`` rounds (median and range of the ratio); target <= 1.0x. The
  time to map an existing table (every other rank) is shown as well.
* upload: a tree of ``--upload-files`` tiny files is uploaded to a moto
  server with ``tools/upload.py`` and uploaded again (a no-op: every key
  skipped by the LIST), the peak RSS (VmHWM) of each run measured at each
  size; the 1,000,000-file figure is projected linearly from the two largest
  sizes (creating 1M files takes about 21 minutes on this machine's disk and
  uploading them to moto about 3 hours, at the ~95 PUT/s measured), and the
  row says so. Target < 1 GB.
* upload at scale (``--upload-scale``, default 10,000, 50,000 and 200,000
  files): peak RSS (VmHWM) of a fresh process that plans the tree
  (``plan_upload``; sizes above 200,000 are planned only), and of one that runs
  the no-op re-upload of ``tools/upload.py`` (plan, the LIST merged with the
  plan as a stream, the upload manifest, ``upload_all`` then ``verify``) on a
  listing that says every key is there: the stream is made from the local
  files (key, size, MD5) as ``open_listing`` yields it from the store, because
  no server here holds 200,000 objects (putting them takes ~35 min to moto).
  The first pass writes the manifest (hashing every file), the second is the
  measured no-op. The trees are 1,000-file folders linked into one root, so
  each size costs only its new folders. Target: < 1 GB, and flat in N.

Prints one markdown table, PASS/FAIL per row. Timings on a shared 2-core
machine are noisy: look at the range.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Optional

from blip3o_storage import Storage
from blip3o_storage.reading.table_cache import load_sample_table
from blip3o_storage.testing.memory import mapping_stats, peak_rss, private_dirty

MB = 1 << 20
RANKS = 4


# -- children (each in a fresh process) --------------------------------------------------------------
def child_json(path: str) -> dict[str, Any]:
    t = time.perf_counter()
    with open(path, "rb") as f:
        entries = json.load(f)
    return {"seconds": time.perf_counter() - t, "entries": len(entries)}


def child_build(path: str, cache: str) -> dict[str, Any]:
    """Only the timed build of the table into a fresh cache folder (the first rank's cost)."""
    gc.collect()
    t = time.perf_counter()
    table = load_sample_table(path, Storage(), cache)
    return {"seconds": time.perf_counter() - t, "entries": len(table)}


def _touch(table: Any) -> None:
    """Read one byte of every page of the table's mapping (all of it resident, nothing decoded)."""
    bytes(table._view[::4096])


def child_table(path: str, cache: str) -> dict[str, Any]:
    """Build (fresh cache) or map the table; its memory; a forked worker's growth over an epoch."""
    gc.collect()
    t = time.perf_counter()
    table = load_sample_table(path, Storage(), cache)
    seconds = time.perf_counter() - t
    # Python objects the table holds (tracemalloc slows allocation: not on while timing)
    tracemalloc.start()
    again = load_sample_table(path, Storage(), cache)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del again
    n = len(table)
    _touch(table)
    rss = mapping_stats(str(table.path))["Rss"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the DataLoader worker
        os.close(r)
        before = private_dirty()
        blocks = list(range(-(-n // 128)))
        random.Random(0).shuffle(blocks)
        for b in blocks:
            for i in range(b * 128, min(n, b * 128 + 128)):
                table[i]
        growth = private_dirty() - before
        rng = random.Random(1)
        k = 5_000
        t0 = time.perf_counter()
        for _ in range(k):
            table[rng.randrange(n)]
        lookup = (time.perf_counter() - t0) / k
        os.write(w, json.dumps({"growth": growth, "lookup_us": lookup * 1e6}).encode())
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.waitpid(pid, 0)
    worker = json.loads(out)
    return {"seconds": seconds, "entries": n, "file_bytes": table.nbytes, "mapped_rss": rss, "held": held,
            "worker_growth": worker["growth"], "lookup_us": worker["lookup_us"]}


def child_rank(path: str, cache: str, sync: str) -> dict[str, Any]:
    """One of RANKS ranks: load, touch, wait for all, report the table mapping's memory."""
    table = load_sample_table(path, Storage(), cache)
    _touch(table)
    Path(sync, f"ready-{os.getpid()}").touch()
    while len(list(Path(sync).glob("ready-*"))) < RANKS:
        time.sleep(0.05)
    time.sleep(0.5)  # all RANKS are mapped now
    stats = mapping_stats(str(table.path))
    Path(sync, f"measured-{os.getpid()}").touch()
    while len(list(Path(sync).glob("measured-*"))) < RANKS:  # stay mapped until every rank measured
        time.sleep(0.05)
    return {"path": str(table.path), "inode": os.stat(str(table.path)).st_ino, **stats}


def child_upload(argv: list[str]) -> dict[str, Any]:
    from blip3o_storage.cli import upload

    t = time.perf_counter()
    status = upload.main(argv)
    return {"status": status, "seconds": time.perf_counter() - t, "peak_rss": peak_rss()}


def child_upload_plan(tree: str) -> dict[str, Any]:
    from blip3o_storage.transfer.upload import plan_upload

    t = time.perf_counter()
    plan = plan_upload(Path(tree), "pre")
    return {"files": len(plan.items), "seconds": time.perf_counter() - t, "peak_rss": peak_rss()}


def child_upload_noop(tree: str, manifests: str, endpoint: str) -> dict[str, Any]:
    """Plan + upload_all + verify over a listing stream that has every key: the CLI's no-op re-run
    without the store (two passes: the first writes the manifest, the second is the no-op)."""
    import hashlib

    from blip3o_storage.transfer.manifest import UploadManifest
    from blip3o_storage.transfer.upload import plan_upload, upload_all, verify

    plan = plan_upload(Path(tree), "pre")
    backend = Storage({"endpoint_url": endpoint, "access_key": "k", "secret_key": "s"}).s3_backend("s3://b/x")
    manifest = UploadManifest.for_target(endpoint, "b", "pre/", tree, manifests)

    def listing() -> Any:  # what open_listing yields, computed from the files instead of a store
        for item in plan.items:
            yield item.key, item.size, hashlib.md5(item.local_path.read_bytes()).hexdigest()

    first = upload_all(plan.items, backend, "b", prefix="pre", workers=16, existing=listing(), manifest=manifest,
                       keep_etags=False)
    t = time.perf_counter()
    again = upload_all(plan.items, backend, "b", prefix="pre", workers=16, existing=listing(), manifest=manifest,
                       keep_etags=False)
    seconds = time.perf_counter() - t
    check = verify(plan.items, backend, "b", "pre", workers=16, remote=listing(), manifest=manifest)
    ok = first.skipped == again.skipped == check.ok == len(plan.items) and again.manifest_entries == len(plan.items)
    return {"files": len(plan.items), "ok": ok, "noop_seconds": seconds, "peak_rss": peak_rss()}


def run_child(*args: str) -> Any:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- data ----------------------------------------------------------------------------------------------
def write_data_json(path: Path, n: int) -> int:
    with open(path, "w", encoding="utf-8") as f:
        f.write("[\n")
        step = 100_000
        for start in range(0, n, step):
            part = ",\n".join(json.dumps({"image": f"s{i // 10_000:05d}/{i:09d}.jpg",
                                          "annotation": f"s{i // 10_000:05d}/{i:09d}.txt"})
                              for i in range(start, min(n, start + step)))
            f.write(part + (",\n" if start + step < n else "\n"))
        f.write("]\n")
    return path.stat().st_size


def write_tree(root: Path, n: int) -> None:
    for i in range(n):
        if i % 1000 == 0:
            folder = root / "raw" / f"s{i // 1000:05d}"
            folder.mkdir(parents=True)
        (folder / f"{i:08d}.txt").write_bytes(b"caption %d" % i)


# -- rows ----------------------------------------------------------------------------------------------
def fmt_range(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def measure_size(n: int, rounds: int, work: Path, rows: list[tuple[str, str, str, str]]) -> None:
    data = work / f"data-{n}.json"
    size = write_data_json(data, n)
    label = f"{n:,}"
    ratios, json_s, build_s = [], [], []
    for r in range(rounds):  # interleaved: json.load, then a fresh build
        j = run_child("json", str(data))
        cache = work / f"cache-{n}-{r}"
        t = run_child("build", str(data), str(cache))
        shutil.rmtree(cache, ignore_errors=True)
        json_s.append(j["seconds"])
        build_s.append(t["seconds"])
        ratios.append(t["seconds"] / j["seconds"])
        print(f"  {label}: round {r + 1}: json.load {j['seconds']:.2f}s, table build {t['seconds']:.2f}s",
              file=sys.stderr, flush=True)
    cache = work / f"cache-{n}-shared"
    run_child("table", str(data), str(cache))  # build once; then every rank maps it
    mapped = run_child("table", str(data), str(cache))
    table_mem = mapped["mapped_rss"] + mapped["held"]
    rows.append((label, "table memory in the main process / data.json bytes",
                 f"{table_mem / size:.3f} ({table_mem / MB:.1f} MB of {size / MB:.0f} MB; file "
                 f"{mapped['file_bytes'] / MB:.1f} MB, Python objects {mapped['held'] / 1024:.0f} KB)",
                 "PASS" if table_mem <= 0.5 * size else "FAIL"))
    growth = mapped["worker_growth"]
    rows.append((label, "forked worker Private_Dirty growth over an epoch",
                 f"{growth / MB:.2f} MB (random lookup {mapped['lookup_us']:.0f} us)",
                 "PASS" if growth <= 32 * MB else "FAIL"))
    rows.append((label, "load: table build / json.load (median, range)",
                 f"{fmt_range(ratios)}x; json.load {statistics.median(json_s):.2f}s, build "
                 f"{statistics.median(build_s):.2f}s ({n / statistics.median(build_s) / 1e6:.2f}M entries/s), "
                 f"map an existing table {mapped['seconds'] * 1000:.1f} ms",
                 "PASS" if statistics.median(ratios) <= 1.0 else "FAIL"))
    shutil.rmtree(cache, ignore_errors=True)
    # RANKS ranks at once on one node, one cache folder
    sync = Path(tempfile.mkdtemp(dir=work))
    cache = work / f"cache-{n}-ranks"
    procs = [subprocess.Popen([sys.executable, __file__, "--child", "rank", str(data), str(cache), str(sync)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(RANKS)]
    reports = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"rank failed: {err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    files = sorted(p.name for p in cache.iterdir() if p.name.startswith("table-"))
    one_copy = os.path.getsize(reports[0]["path"])
    pss = sum(r["Pss"] for r in reports)
    private = sum(r["Private_Clean"] + r["Private_Dirty"] for r in reports)
    same = len({(r["path"], r["inode"]) for r in reports}) == 1 and len(files) == 1
    rows.append((label, f"{RANKS} ranks: table files, sum of Pss / one copy, private table bytes",
                 f"{len(files)} file, {pss / one_copy:.2f}x (Pss {pss / MB:.1f} MB, Rss "
                 f"{sum(r['Rss'] for r in reports) / MB:.1f} MB, copy {one_copy / MB:.1f} MB), private "
                 f"{private / 1024:.0f} KB",
                 "PASS" if same and pss <= 1.1 * one_copy and private <= 0.01 * one_copy + 64 * 1024 else "FAIL"))
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(sync, ignore_errors=True)
    data.unlink()


def measure_upload(sizes: list[int], work: Path, rows: list[tuple[str, str, str, str]]) -> None:
    from blip3o_storage.testing.local_s3 import start_moto_server

    server = start_moto_server()
    try:
        conf = server.write_petreloss_conf(str(work / "petreloss.conf"))
        import boto3

        points = []
        for n in sizes:
            bucket = f"scale-{n}-{os.getpid()}"
            boto3.client("s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
                         aws_secret_access_key=server.secret_key, region_name="us-east-1").create_bucket(Bucket=bucket)
            tree = work / f"tree-{n}"
            write_tree(tree, n)
            argv = ["--config", conf, "--bucket", bucket, "--workers", "16", str(tree)]
            first = run_child("upload", json.dumps(argv))
            again = run_child("upload", json.dumps(argv))
            if first["status"] != 0 or again["status"] != 0:
                raise RuntimeError(f"upload of {n} files failed: {first}, {again}")
            points.append((n, first["peak_rss"], again["peak_rss"]))
            print(f"  upload {n} files: {first['seconds']:.0f}s peak {first['peak_rss'] / MB:.0f} MB; no-op re-run "
                  f"{again['seconds']:.0f}s peak {again['peak_rss'] / MB:.0f} MB", file=sys.stderr, flush=True)
            shutil.rmtree(tree)
        (n1, up1, re1), (n2, up2, re2) = points[-2], points[-1]
        for what, a, b in (("upload", up1, up2), ("no-op re-run", re1, re2)):
            slope = max(0.0, (b - a) / (n2 - n1))
            projected = b + slope * (1_000_000 - n2)
            rows.append(("1M files", f"{what}: peak RSS (measured at {n1:,} and {n2:,} files, projected)",
                         f"{a / MB:.0f} MB, {b / MB:.0f} MB -> {projected / MB:.0f} MB at 1,000,000 "
                         f"({slope:.0f} B/file; SCALED, not run at 1M)",
                         "PASS" if projected < 1024 * MB else "FAIL"))
    finally:
        server.stop()


def linked_tree(work: Path, n: int) -> Path:
    """A root whose raw/ holds ``n / 1000`` symlinked 1,000-file folders (created once in ``work/folders``)."""
    folders = work / "folders"
    root = work / f"linked-{n}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "raw").mkdir(parents=True)
    for k in range(-(-n // 1000)):
        folder = folders / f"s{k:05d}"
        if not folder.is_dir():
            folder.mkdir(parents=True)
            for i in range(k * 1000, (k + 1) * 1000):
                (folder / f"{i:08d}.txt").write_bytes(b"caption %d" % i)
        (root / "raw" / folder.name).symlink_to(folder, target_is_directory=True)
    return root


def measure_upload_scale(sizes: list[int], work: Path, rows: list[tuple[str, str, str, str]]) -> None:
    points: list[tuple[int, dict[str, Any], Optional[dict[str, Any]]]] = []
    for n in sizes:
        tree = linked_tree(work, n)
        plan = run_child("upload-plan", str(tree))
        noop = (run_child("upload-noop", str(tree), str(work / f"manifests-{n}"), "http://127.0.0.1:9")
                if n <= 200_000 else None)  # the no-op first hashes every file (plus the stand-in listing)
        if plan["files"] != -(-n // 1000) * 1000 or (noop is not None and not noop["ok"]):
            raise RuntimeError(f"upload scale run of {n} files went wrong: {plan}, {noop}")
        points.append((n, plan, noop))
        print(f"  upload scale {n} files: plan {plan['seconds']:.1f}s peak {plan['peak_rss'] / MB:.0f} MB"
              + (f"; no-op {noop['noop_seconds']:.1f}s peak {noop['peak_rss'] / MB:.0f} MB" if noop else ""),
              file=sys.stderr, flush=True)
        shutil.rmtree(tree)
    for what, key in (("upload planning", 1), ("no-op re-upload (plan + streamed LIST + manifest + verify)", 2)):
        measured: list[tuple[int, dict[str, Any]]] = []
        for n, plan_point, noop_point in points:
            point = plan_point if key == 1 else noop_point
            if point is not None:
                measured.append((n, point))
        if len(measured) < 2:
            continue
        (n1, a), (n2, b) = measured[0], measured[-1]
        per_file = max(0.0, (b["peak_rss"] - a["peak_rss"]) / (n2 - n1))
        values = ", ".join(f"{n:,}: {m['peak_rss'] / MB:.0f} MB" for n, m in measured)
        projected = b["peak_rss"] + per_file * max(0, 1_000_000 - n2)
        rows.append((f"{n2:,} files", f"{what}: peak RSS by file count",
                     f"{values} ({per_file:.0f} B/file from {n1:,} to {n2:,}"
                     + (f"; {projected / MB:.0f} MB projected at 1,000,000)" if n2 < 1_000_000 else ")"),
                     "PASS" if projected < 1024 * MB else "FAIL"))


class _Rows(list[tuple[str, str, str, str]]):
    """The table's rows, each also printed (stderr) as it is measured: a long run that is stopped
    still shows what it measured."""

    def append(self, row: tuple[str, str, str, str]) -> None:
        super().append(row)
        print("  row: | " + " | ".join(row) + " |", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="60000,1000000,10000000", help="comma-separated entry counts")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds per size (sizes >= 5M: at most 3)")
    ap.add_argument("--upload-files", default="2000,8000", help="two or more tree sizes for the upload rows")
    ap.add_argument("--upload-scale", default="10000,50000,200000",
                    help="tree sizes for the upload planning and no-op memory rows ('' to skip)")
    ap.add_argument("--work-dir", type=Path, default=None, help="where the files go (default: a temp folder)")
    ap.add_argument("--quick", action="store_true", help="small sizes: --sizes 20000,200000 --upload-files 300,1200")
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        result = {"json": lambda: child_json(*rest), "build": lambda: child_build(*rest),
                  "table": lambda: child_table(*rest),
                  "rank": lambda: child_rank(*rest), "upload": lambda: child_upload(json.loads(rest[0])),
                  "upload-plan": lambda: child_upload_plan(*rest),
                  "upload-noop": lambda: child_upload_noop(*rest)}[kind]()
        print(json.dumps(result))
        return 0
    if args.quick:
        args.sizes, args.upload_files, args.upload_scale = "20000,200000", "300,1200", "2000,8000"
    sizes = [int(s) for s in args.sizes.split(",") if s]
    upload_sizes = [int(s) for s in args.upload_files.split(",") if s]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="blip3o-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = _Rows()
    started = time.time()
    try:
        for n in sizes:
            measure_size(n, args.rounds if n < 5_000_000 else min(args.rounds, 3), work, rows)
        if len(upload_sizes) >= 2:
            measure_upload(upload_sizes, work, rows)
        scale_sizes = [int(s) for s in args.upload_scale.split(",") if s]
        if len(scale_sizes) >= 2:
            measure_upload_scale(scale_sizes, work, rows)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nbenchmarks/scale.py {' '.join(argv if argv is not None else sys.argv[1:])} "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"{time.time() - started:.0f}s)\n")
    print("| entries | measure | result | verdict |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0 if all(r[3] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
