#!/usr/bin/env python3
"""The project side by side with the tools a user would pick instead: one run, one server, one table.

Usage::

    python benchmarks/peers.py                    # embedded moto server on 127.0.0.1
    python benchmarks/peers.py --target ceph      # the RGW of tools/ceph_dev.sh (/tmp/blip3o-ceph/env)
    python benchmarks/peers.py --quick            # tiny tree, 2 rounds: a smoke test of every row
    python benchmarks/peers.py --rounds 7 --json peers.json

Rows (issue #16), each the project vs every peer on the same files, the same server, the same
concurrency (``--concurrency``, 16), every tool once per round in a rotated order, ``--rounds``
rounds (5); the ratio is the project's advantage over the round's fastest peer (> 1: ahead), median
and range over the rounds, PASS/FAIL against the target:

* upload of a BLIP3o-shaped tree (``--samples-per-shard``, see Size) into a fresh prefix:
  ``tools/upload.py`` vs ``aws s3 sync``, ``s5cmd cp``, ``rclone copy``; target >= 1x;
* no-op re-upload of the same tree: ``tools/upload.py`` vs ``aws s3 sync``, ``s5cmd sync``,
  ``rclone copy``; target >= 1x;
* raw GET of every image with ``--threads`` threads in this process: ``Storage.get`` vs boto3,
  obstore, s3torchconnector; objects/s (target >= 1x) and client CPU-ms per GET (target <= 0.25);
* the server's CPU per request (from /proc: radosgw + OSD + mon for Ceph, the moto process) beside
  the client's, and the uploaders' client CPU per file (informational rows);
* a torch DataLoader (``--loader-workers`` forked workers, bytes only) over the same images: our
  per-object dataset vs s3torchconnector's ``S3MapDataset`` (informational);
* the DataLoader rows of issue #16 item 5, the training pipeline (JPEG decode, the shipped configs;
  benchmarks/peer_loaders.py) against local disk: per-object S3 (target >= 0.9x local disk) with
  s3torchconnector's ``S3MapDataset`` as a peer column, and shard mode with block reads (>= 1.0x),
  each on shared cores (the store on the same cores as the loader) and with the CPUs split
  (benchmarks/cpu_split.py: the store on the first half, the loader and its workers on the rest;
  per-object >= 1.0x). These read ``--loader-samples`` samples (default 1,100) of the tree.

Size: the issue's full tree (``--samples-per-shard 455``: 10,011 files, 352 MB) takes ~6 min a
round for the upload rows alone on the shared 2-core dev machine (30+ min for 5 rounds), so the
default is ``--samples-per-shard 150`` (3,301 files, 116 MB: ~4 min a round for upload + GET);
pass 455 for the full size. The DataLoader rows (8 passes of 1,100 decoded samples a round) took
~12 min a round at load average 10-25 on 2026-11-30 (~20 CPU-ms a sample: ~11 s a pass on 2 quiet
cores); ``--rounds 3 --loader-samples 550`` halves that. ``--rows`` runs a subset of the row
groups (upload, get, loader).

A peer that is not installed is a column saying so, never left out. The table goes to stdout
(markdown), progress to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from blip3o_storage.cli import demo
from blip3o_storage.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from blip3o_storage.cli.demo import StepFailed
from cpu_split import ceph_pids, split_cpus
from peer_loaders import LOCAL, S3TORCH, SHARDS, LoaderSetup, factories, loader_pass, subset_entries
from peer_stats import NOT_INSTALLED, Measure, render_table, round_order, summarize
from peer_tools import (
    FIRST_UPLOAD,
    NOOP_UPLOAD,
    READERS,
    CommandFailed,
    Cost,
    ProjectBytes,
    delete_prefix,
    get_all,
    importable,
    installed,
    measure,
    project_getter,
    project_upload,
    read_with_dataloader,
    run_command,
    s3torch_dataset,
    versions,
)
from run import Endpoint, Uploaders, count_prefix, mirror_without_hidden, note

PROJECT = "project"
ROW_GROUPS = {"upload", "get", "loader"}
LOADER_TARGET_SHARED = 0.9  # issue #16 item 5: per-object S3 >= 0.9x local disk on shared cores
LOADER_TARGET_SPLIT = 1.0  # ... >= 1.0x with --split-cpus; shard mode >= 1.0x on both
RATIO_TARGET = 1.0  # issue #16: every row >= 1.0x the fastest peer
GET_CPU_LIMIT_MS = 0.25  # issue #16 item 4: GET client CPU per request <= 0.25 ms


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("moto", "ceph"), default="moto")
    ap.add_argument("--endpoint-url", default=None)
    ap.add_argument("--access-key", default=None)
    ap.add_argument("--secret-key", default=None)
    ap.add_argument("--bucket", default="blip3o-peers")
    ap.add_argument("--rounds", type=int, default=None, help="default 5 (2 with --quick)")
    ap.add_argument("--concurrency", type=int, default=16, help="uploads in flight for every uploader "
                    "(upload.py --workers, aws max_concurrent_requests, s5cmd --numworkers, rclone --transfers)")
    ap.add_argument("--threads", type=int, default=16, help="GET threads for every reader (default %(default)s)")
    ap.add_argument("--loader-workers", type=int, default=2,
                    help="DataLoader workers for the per-object DataLoader row; 0 leaves the row out (default 2)")
    ap.add_argument("--samples-per-shard", type=int, default=None,
                    help="default 150 (3,301 files, ~116 MB; 455 is the issue's full 10,011 files, ~352 MB, "
                         "which does not fit a run on 2 shared cores); 3 with --quick")
    ap.add_argument("--loader-samples", type=int, default=None,
                    help="samples of the training-pipeline DataLoader rows (the first N/11 of each shard; "
                         "default 1,100; 22 with --quick)")
    ap.add_argument("--loader-image-size", type=int, default=None,
                    help="image_size of those rows (default: the configs' 512; 64 with --quick)")
    ap.add_argument("--loader-batch-size", type=int, default=4, help="default %(default)s (the configs')")
    ap.add_argument("--rows", default="upload,get,loader",
                    help="row groups to run: upload (upload + no-op), get (raw GET), loader (the DataLoader "
                         "rows); default all")
    ap.add_argument("--image-size", type=int, default=None, help="default 1024 (256 with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peers", default=None,
                    help="comma-separated subset of: " + ", ".join(all_peers()) + " (default: all)")
    ap.add_argument("--work-dir", type=Path, default=Path("demo-work/peers"), help="default %(default)s (gitignored)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 2 rounds: a smoke test of every row")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows (list of dicts) as JSON here")
    args = ap.parse_args(argv)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.samples_per_shard = args.samples_per_shard or (3 if args.quick else 150)
    args.loader_samples = args.loader_samples or (22 if args.quick else 1100)
    args.loader_image_size = args.loader_image_size or (64 if args.quick else None)
    args.row_groups = {g.strip() for g in args.rows.split(",") if g.strip()}
    if not args.row_groups or args.row_groups - ROW_GROUPS:
        ap.error(f"--rows: choose from {sorted(ROW_GROUPS)} (got {args.rows!r})")
    args.image_size = args.image_size or (256 if args.quick else 1024)
    if min(args.rounds, args.concurrency, args.threads, args.samples_per_shard) < 1 or args.loader_workers < 0:
        ap.error("--rounds, --concurrency, --threads and --samples-per-shard must be >= 1, --loader-workers >= 0")
    if args.target == "ceph" and args.endpoint_url:
        ap.error("--target ceph and --endpoint-url are exclusive")
    chosen = set(all_peers()) if args.peers is None else {p.strip() for p in args.peers.split(",") if p.strip()}
    unknown = chosen - set(all_peers())
    if unknown:
        ap.error(f"--peers: unknown {sorted(unknown)}; choose from {all_peers()}")
    args.peer_set = chosen
    return args


def all_peers() -> list[str]:
    return list(dict.fromkeys([*FIRST_UPLOAD, *NOOP_UPLOAD, *READERS]))


# -- the input tree -------------------------------------------------------------


def prepare_tree(args: argparse.Namespace, work: Path) -> tuple[Path, list[str], int, int]:
    """Generate the BLIP3o-shaped tree as benchmarks/run.py does (make_demo_data + extract + data.json).

    Returns the upload source (a hard-linked copy without dot-files), the image paths under raw/,
    the file count and the byte count. Generation is skipped when the same tars are there.
    """
    tars, data_root = work / "tars", work / "data" / "BLIP3o-60k"
    raw = data_root / "raw"
    manifest = tars / ".make_demo_data.json"
    before = manifest.read_text() if manifest.is_file() else None
    demo.run_tool(["tools/make_demo_data.py", "--out", str(tars), "--samples-per-shard", str(args.samples_per_shard),
                   "--image-size", str(args.image_size), "--seed", str(args.seed)], "generate", quiet=True)
    extract = ["tools/extract.py", "--src", str(tars), "--dest", str(raw)]
    if manifest.read_text() != before and raw.exists():
        extract.append("--overwrite")
    if before is None or "--overwrite" in extract or not (data_root / "data.json").is_file():
        demo.run_tool(extract, "extract", quiet=True)
        demo.run_tool(["tools/make_data_json.py", "--raw", str(raw), "--out", str(data_root / "data.json"), "--strict",
                       "--inline-captions"], "make_data_json", quiet=True)
    images = [e["image"] for e in json.loads((data_root / "data.json").read_text())]
    src = work / "upload-src"
    n_files, n_bytes = mirror_without_hidden(data_root, src)
    return src, images, n_files, n_bytes


# -- one run ---------------------------------------------------------------------


class PeerBench:
    """Every tool against one endpoint; the rows fill one round at a time."""

    def __init__(self, args: argparse.Namespace, ep: Endpoint, work: Path, src: Path, images: list[str],
                 n_files: int, n_bytes: int) -> None:
        self.args, self.ep, self.src, self.images = args, ep, src, images
        self.n_files, self.n_bytes = n_files, n_bytes
        self.up = Uploaders(ep, work, args.concurrency)
        self.storage = ep.storage()
        self.bucket = args.bucket
        self.run_id = f"peers-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        #: Prefixes prepare_reads uploaded, for cleanup_loader.
        self._read_prefixes: list[str] = []
        self.server_pids = server_pids(args, ep)
        n_get = len(images)
        self.upload = Measure(f"upload {n_files:,} files ({n_bytes / 1e6:.0f} MB)", "files/s", True, RATIO_TARGET)
        self.upload_cpu = Measure("upload: client CPU per file", "CPU-ms/file", False)
        self.upload_server = Measure("upload: server CPU per file", "CPU-ms/file", False)
        self.noop = Measure("no-op re-upload of the same tree", "s", False, RATIO_TARGET)
        self.get = Measure(f"raw GET, {n_get:,} objects, {args.threads} threads", "objects/s", True, RATIO_TARGET)
        self.get_cpu = Measure("raw GET: client CPU per GET", "CPU-ms/GET", False, limit=GET_CPU_LIMIT_MS)
        self.get_server = Measure("raw GET: server CPU per GET", "CPU-ms/GET", False)
        self.loader = Measure(f"DataLoader per-object, bytes only ({args.loader_workers} workers, batch 4)",
                              "samples/s", True)
        pipeline = (f"{args.loader_workers} workers, batch {args.loader_batch_size}, JPEG decode, "
                    f"{args.loader_samples:,} samples")
        self.cpu_modes = ("shared", "split")
        self.dl = {mode: Measure(f"DataLoader per-object S3 vs local disk ({pipeline}, {what})", "samples/s", True,
                                 target, baseline=LOCAL)
                   for mode, what, target in (("shared", "shared cores", LOADER_TARGET_SHARED),
                                              ("split", "--split-cpus", LOADER_TARGET_SPLIT))}
        self.shard = {mode: Measure(f"DataLoader shard mode (block reads) vs local disk ({pipeline}, {what})",
                                    "samples/s", True, LOADER_TARGET_SPLIT, baseline=LOCAL)
                      for mode, what in (("shared", "shared cores"), ("split", "--split-cpus"))}
        self.split_text = ""
        self.loader_setup: Optional[LoaderSetup] = None
        self.readers: dict[str, Any] = {}
        self.errors: dict[tuple[int, str, str], str] = {}  # (round, phase, tool) -> why that run has no value
        self._register_peers()

    def measures(self) -> list[Measure]:
        groups = self.args.row_groups
        rows = [self.upload, self.upload_cpu, self.upload_server, self.noop] if "upload" in groups else []
        rows += [self.get, self.get_cpu, self.get_server] if "get" in groups else []
        if "loader" in groups and self.args.loader_workers:
            rows += [self.loader, *self.dl.values(), *self.shard.values()]
        return rows

    def _register_peers(self) -> None:
        """Every peer gets a column on its rows: a value, 'not installed', or 'not run (--peers)'."""
        for table, measures in ((FIRST_UPLOAD, (self.upload, self.upload_cpu, self.upload_server)),
                                (NOOP_UPLOAD, (self.noop,))):
            for name, (binary, _) in table.items():
                status = self._peer_status(name, installed(self.up, binary))
                for m in measures:
                    m.add_peer(name, status)
        for name, (module, factory) in READERS.items():
            status = self._peer_status(name, importable(module))
            for m in (self.get, self.get_cpu, self.get_server):
                m.add_peer(name, status)
            if not status:
                self.readers[name] = factory(self.ep, self.bucket, self.args.threads)
        s3torch = self._peer_status("s3torchconnector", importable("s3torchconnector"))
        self.loader.add_peer("s3torchconnector", s3torch)
        for m in self.dl.values():
            m.add_peer(LOCAL)
            m.add_peer(S3TORCH, s3torch)
        for m in self.shard.values():
            m.add_peer(LOCAL)
        self.readers[PROJECT] = project_getter(self.ep, self.bucket, self.args.threads)

    def _peer_status(self, name: str, present: bool) -> str:
        if name not in self.args.peer_set:
            return "not run (--peers)"
        return "" if present else NOT_INSTALLED

    def prefix(self, r: int, tool: str) -> str:
        return f"{self.run_id}/r{r}/{tool.replace(' ', '-')}/"

    # -- uploads --
    def active(self, m: Measure) -> list[str]:
        """The project and every peer of ``m`` that can run: each of them runs every round, failed or not,
        so that value i of every series is round i's (the same-round ratios depend on it)."""
        return [PROJECT] + [t for t in m.peers if not m.status.get(t)]

    def upload_round(self, r: int) -> None:
        measures = (self.upload, self.upload_cpu, self.upload_server)
        for tool in round_order(self.active(self.upload), r):
            note(f"   round {r + 1}: upload, {tool}")
            cost = self._upload(tool, r, FIRST_UPLOAD, tool, "upload")
            if cost is not None and not self._uploaded_all(tool, r):
                self.errors[(r, "upload", tool)] = "wrong object count"
                cost = None
            self._record(tool, measures, cost, lambda c: self.n_files / c.seconds,
                         lambda c: 1e3 * c.client_cpu / self.n_files,
                         lambda c: None if c.server_cpu is None else 1e3 * c.server_cpu / self.n_files)

    def noop_round(self, r: int) -> None:
        for tool in round_order(self.active(self.noop), r):
            # the no-op goes over what the same family of tool uploaded (s5cmd sync over s5cmd cp's prefix)
            first = next((t for t in FIRST_UPLOAD if t.split()[0] == tool.split()[0]), tool)
            cost = None
            if (r, "upload", first) in self.errors:  # nothing complete to re-upload over: not a no-op
                note(f"   round {r + 1}: no-op re-upload, {tool}: skipped, its upload failed")
                self.errors[(r, "noop", tool)] = "its upload failed"
            else:
                note(f"   round {r + 1}: no-op re-upload, {tool}")
                cost = self._upload(tool, r, NOOP_UPLOAD, first, "noop")
            self._record(tool, (self.noop,), cost, lambda c: c.seconds)

    def _upload(self, tool: str, r: int, table: dict[str, Any], prefix_tool: str, phase: str) -> Optional[Cost]:
        command = project_upload if tool == PROJECT else table[tool][1]
        cmd = command(self.up, self.src, self.bucket, self.prefix(r, prefix_tool))
        try:
            cost = measure(lambda: run_command(self.up, tool, cmd), self.server_pids, children=True)
            note(f"      {cost.seconds:.2f} s, client CPU {cost.client_cpu:.2f} s")
            return cost
        except CommandFailed as exc:
            note(f"   {exc}")
            self.errors[(r, phase, tool)] = "error (see stderr)"
            return None

    def _uploaded_all(self, tool: str, r: int) -> bool:
        """Object count and bytes under the tool's prefix must be the tree's: a fast wrong upload is no upload."""
        count, size = count_prefix(self.storage, self.bucket, self.prefix(r, tool))
        if (count, size) != (self.n_files, self.n_bytes):
            note(f"   {tool}: {count} objects / {size} B uploaded, expected {self.n_files} / {self.n_bytes}")
            return False
        return True

    # -- reads --
    def get_round(self, r: int) -> None:
        base = self.prefix(r, PROJECT) if "upload" in self.args.row_groups else self.loader_prefix
        keys = [f"{base}raw/{image}" for image in self.images]
        expected = sum((self.src / "raw" / image).stat().st_size for image in self.images)
        n = len(keys)
        for tool in round_order(list(self.readers), r):
            note(f"   round {r + 1}: GET, {tool}")
            cost = self._get_all(tool, keys, expected, r)
            self._record(tool, (self.get, self.get_cpu, self.get_server), cost, lambda c: n / c.seconds,
                         lambda c: 1e3 * c.client_cpu / n,
                         lambda c: None if c.server_cpu is None else 1e3 * c.server_cpu / n)

    def loader_round(self, r: int) -> None:
        """Our per-object dataset vs s3torchconnector's S3MapDataset, same objects, same DataLoader settings."""
        uris = [f"s3://{self.bucket}/{self.loader_prefix}raw/{image}" for image in self.images]
        expected = sum((self.src / "raw" / image).stat().st_size for image in self.images)
        workers = self.args.loader_workers
        for tool in round_order(self.active(self.loader), r):
            note(f"   round {r + 1}: DataLoader, {tool}")
            dataset = ProjectBytes(str(self.ep.conf), uris) if tool == PROJECT else s3torch_dataset(self.ep, uris)
            cost = self._load_all(tool, dataset, workers, expected, r)
            self._record(tool, (self.loader,), cost, lambda c: len(uris) / c.seconds)

    # -- the training-pipeline DataLoader rows (peer_loaders.py) --
    @property
    def loader_prefix(self) -> str:
        return f"{self.run_id}/loader/"

    def prepare_reads(self, work: Path) -> str:
        """What the read rows need before round 1, untimed: '' when ready, else why the run stops."""
        groups = self.args.row_groups
        try:
            if "loader" in groups and self.args.loader_workers or ("get" in groups and "upload" not in groups):
                note(f"== read rows: upload the tree to s3://{self.bucket}/{self.loader_prefix} (untimed)")
                self._read_prefixes = [self.loader_prefix]
                run_command(self.up, PROJECT, project_upload(self.up, self.src, self.bucket, self.loader_prefix))
            if "loader" in groups and self.args.loader_workers:
                self._read_prefixes.append(f"{self.run_id}/shards/")
                self.prepare_loader(work, work / "tars")
        except (CommandFailed, OSError) as exc:
            note(f"== preparing the read rows failed: {exc}")
            return f"preparing the read rows failed: {exc}"
        return ""

    def cleanup_loader(self) -> None:
        """Remove what prepare_reads uploaded (a failure is reported, the table still prints).

        Only what was uploaded, once: with ``--rows upload,get`` nothing was, and the bucket
        may already be gone when the exit stack calls this a second time."""
        prefixes, self._read_prefixes = self._read_prefixes, []
        for prefix in prefixes:
            try:
                removed = delete_prefix(self.storage, self.bucket, prefix)
            except Exception as exc:  # noqa: BLE001 - cleanup only
                note(f"== cleanup of s3://{self.bucket}/{prefix} failed: {exc}")
                continue
            if removed:
                note(f"== removed {removed} objects under s3://{self.bucket}/{prefix}")

    def prepare_loader(self, work: Path, tars: Path) -> None:
        """Upload the tars (shard mode) once, untimed; the subset's data.json."""
        note("== DataLoader rows: upload the shards (untimed)")
        bucket = self.bucket
        run_command(self.up, PROJECT, [sys.executable, "tools/upload_shards.py", str(tars), "--bucket", bucket,
                                       "--prefix", f"{self.run_id}/shards", "--config", str(self.ep.conf),
                                       "--no-data-json"])
        entries = subset_entries(json.loads((self.src / "data.json").read_text()), self.args.loader_samples)
        data_json = work / "loader-data.json"
        data_json.write_text(json.dumps(entries))
        self.loader_setup = LoaderSetup(data_json=data_json, raw=self.src / "raw",
                                        objects=f"s3://{bucket}/{self.loader_prefix}raw",
                                        shards=f"s3://{bucket}/{self.run_id}/shards",
                                        conf=self.ep.conf, image_size=self.args.loader_image_size,
                                        workers=self.args.loader_workers, batch_size=self.args.loader_batch_size)
        note(f"   {len(entries)} samples")

    def pipeline_round(self, r: int) -> None:
        """Local disk, our per-object and shard-mode datasets, s3torchconnector: shared cores, then split."""
        assert self.loader_setup is not None
        setup = self.loader_setup
        makers = factories(self.ep, setup, with_s3torch=not self.dl["shared"].status.get(S3TORCH))
        for mode in self.cpu_modes:
            with (split_cpus(self.server_pids) if mode == "split" else contextlib.nullcontext("")) as split:
                if split:
                    self.split_text = split
                for tool in round_order(list(makers), r):
                    note(f"   round {r + 1}: DataLoader ({mode}), {tool}")
                    try:
                        rate: Optional[float] = loader_pass(makers[tool](), setup, seed=r, locality=tool == SHARDS)
                        note(f"      {rate:.1f} samples/s")
                    except (RuntimeError, OSError) as exc:  # a store error is an OSError (errors.py)
                        note(f"   {tool}: {exc!r}")
                        self.errors[(r, f"dl-{mode}", tool)] = f"error: {type(exc).__name__}"
                        rate = None
                    targets = {LOCAL: [self.dl[mode].peers[LOCAL], self.shard[mode].peers[LOCAL]],
                               PROJECT: [self.dl[mode].project], SHARDS: [self.shard[mode].project],
                               S3TORCH: [self.dl[mode].peers[S3TORCH]]}[tool]
                    for series in targets:
                        series.append(rate)

    def _load_all(self, tool: str, dataset: Any, workers: int, expected: int, r: int) -> Optional[Cost]:
        """One DataLoader pass (worker start-up included, as a training epoch pays it), checked by bytes."""
        got: list[int] = []
        cost = measure(lambda: got.append(read_with_dataloader(dataset, workers, 4)), self.server_pids,
                       children=False)
        note(f"      {cost.seconds:.2f} s")
        if got != [expected]:
            note(f"   {tool}: read {got} bytes, expected {expected}")
            self.errors[(r, "loader", tool)] = "wrong byte count"
            return None
        return cost

    def _get_all(self, tool: str, keys: list[str], expected: int, r: int) -> Optional[Cost]:
        """One reader GETs every key, timed; None (and why in ``errors``) when the bytes do not add up."""
        getter, threads = self.readers[tool], self.args.threads
        get_all(getter, keys[:threads], threads)  # connections up, outside the timing
        got: list[int] = []
        cost = measure(lambda: got.append(get_all(getter, keys, threads)), self.server_pids, children=False)
        note(f"      {cost.seconds:.2f} s, client CPU {cost.client_cpu:.2f} s")
        if got != [expected]:
            note(f"   {tool}: read {got} bytes, expected {expected}")
            self.errors[(r, "get", tool)] = "wrong byte count"
            return None
        return cost

    # -- bookkeeping --
    @staticmethod
    def _record(tool: str, measures: Sequence[Measure], cost: Optional[Cost], *values: Any) -> None:
        """Append this round's value (None when the run failed) to each measure, in the order given."""
        for m, value in zip(measures, values):
            series = m.project if tool == PROJECT else m.peers[tool]
            series.append(None if cost is None else value(cost))

    def mark_failures(self) -> None:
        """Rounds a tool failed show in its cell as 'failed in N of M rounds (why)' (details on stderr)."""
        # (phase in ``errors``, the measures it fills, the tool name its project series ran as)
        groups: list[tuple[str, tuple[Measure, ...], str]] = [
            ("upload", (self.upload, self.upload_cpu, self.upload_server), PROJECT), ("noop", (self.noop,), PROJECT),
            ("get", (self.get, self.get_cpu, self.get_server), PROJECT), ("loader", (self.loader,), PROJECT)]
        for mode in self.cpu_modes:
            groups += [(f"dl-{mode}", (self.dl[mode],), PROJECT), (f"dl-{mode}", (self.shard[mode],), SHARDS)]
        for phase, measures, project_as in groups:
            for tool in self.active(measures[0]):
                ran_as = project_as if tool == PROJECT else tool
                whys = sorted({why for (_, p, t), why in self.errors.items() if (p, t) == (phase, ran_as)})
                series = measures[0].project if tool == PROJECT else measures[0].peers[tool]
                failed = sum(v is None for v in series)
                if failed:
                    for m in measures:
                        m.status[tool] = f"failed in {failed} of {len(series)} rounds: {', '.join(whys)}"

    def cleanup_round(self, r: int) -> None:
        """Delete the round's objects (untimed): keeps moto's memory and the dev cluster's disk flat.

        A failed cleanup is reported, not raised: the rounds measured so far are still worth printing.
        """
        prefix = f"s3://{self.bucket}/{self.run_id}/r{r}/"
        try:
            removed = delete_prefix(self.storage, self.bucket, f"{self.run_id}/r{r}/")
        except Exception as exc:  # noqa: BLE001 - any store error: say which objects are left, go on
            note(f"   round {r + 1}: cleanup of {prefix} failed, objects left there: {exc}")
            return
        note(f"   round {r + 1}: removed {removed} objects")


def server_pids(args: argparse.Namespace, ep: Endpoint) -> list[int]:
    """The processes whose CPU is the server's: the dev cluster's daemons, or the embedded moto server."""
    if args.target == "ceph":
        return ceph_pids()
    if ep.server is not None and ep.server.process is not None:
        return [ep.server.process.pid]
    return []  # an external endpoint: its CPU is not ours to see


def header(args: argparse.Namespace, ep: Endpoint, bench: PeerBench, load: Optional[float],
           seconds: float) -> list[str]:
    vers = versions(bench.up)
    where = ", ".join(f"{k} {v}" for k, v in vers.items())
    return [
        f"machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
        + (f", load average {load:.2f} at start" if load is not None else "")
        + " (shared: other jobs may run; see the ranges)",
        f"server: {ep.kind}; server CPU from /proc of pids {bench.server_pids or 'n/a (external endpoint)'}",
        f"tree: {bench.n_files:,} files, {bench.n_bytes / 1e6:.1f} MB (tools/make_demo_data.py --samples-per-shard "
        f"{args.samples_per_shard} --image-size {args.image_size} --seed {args.seed}); GET reads the "
        f"{len(bench.images):,} images",
        f"concurrency {args.concurrency} (uploads), {args.threads} threads (GET), {args.rounds} rounds, "
        "tools interleaved in a rotated order each round",
        f"DataLoader rows: CPU split {bench.split_text or 'not run'}; per-object reads go through "
        "configs/blip3o60k_ceph.py (prefetch 8, 4 threads), shard mode through configs/blip3o60k_shards.py "
        "(8 MiB blocks, LocalitySampler), local disk through configs/blip3o60k_local.py",
        f"versions: {where}",
        f"total time: {seconds:.0f} s",
    ]


FOOTNOTES = [
    "Ratio = the project's advantage over the fastest peer of the same round (> 1: the project is ahead; for "
    "seconds and CPU-ms the peer's value over ours), median of the rounds and [min-max]; peer columns are medians.",
    "Uploads are command lines timed wall-clock (start-up included; tools/upload.py includes its verification "
    "LIST); each writes a fresh prefix and its object count and bytes are checked. The no-op is the command "
    "again over the same prefix (s5cmd: `sync` over what `s5cmd cp` wrote).",
    "Client CPU: RUSAGE_CHILDREN for uploaders, RUSAGE_SELF (all threads) for the in-process readers; server "
    "CPU: utime+stime from /proc of the server's processes over the same interval.",
    "DataLoader rows vs local disk: the ratio is against the local-disk pass of the same round and CPU mode "
    "(shared cores, or --split-cpus: the store pinned to the first half of the CPUs, this process and its "
    "workers to the rest, local disk included); s3torchconnector's cell shows its own ratio to local disk. "
    "Each pass is a fresh DataLoader (worker start-up included), every sample decoded and checked.",
]


def remove_empty_bucket(storage: Any, bucket: str) -> None:
    """The bucket this run created goes when it is empty (a failure is reported: the table still prints)."""
    try:
        if not any(True for _ in storage.list(f"s3://{bucket}/")):
            storage.s3_backend(f"s3://{bucket}/x").client.delete_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        note(f"== could not remove bucket {bucket}: {exc}")


def run_rounds(bench: PeerBench, rounds: int) -> str:
    """All rounds; on an error that is no tool's failure (the store went away) stop, and say why.

    Returns '' when every round ran. A restarted dev cluster must not throw away 20 minutes of rounds.
    """
    for r in range(rounds):
        note(f"== round {r + 1}/{rounds}")
        groups = bench.args.row_groups
        try:
            if "upload" in groups:
                bench.upload_round(r)
                bench.noop_round(r)
            if "get" in groups:
                bench.get_round(r)
            if "loader" in groups and bench.args.loader_workers:
                bench.loader_round(r)
                bench.pipeline_round(r)
        except Exception as exc:  # noqa: BLE001 - report the rounds so far, with the reason
            note(f"== round {r + 1} stopped: {exc!r}")
            bench.cleanup_round(r)
            return f"round {r + 1} of {rounds} stopped by {type(exc).__name__}: {exc}"
        bench.cleanup_round(r)
    return ""


def run(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    t_start = time.monotonic()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    note("== tree: generate, extract, data.json")
    src, images, n_files, n_bytes = prepare_tree(args, work)
    note(f"   {n_files} files, {n_bytes / 1e6:.1f} MB, {len(images)} images")
    with contextlib.ExitStack() as stack:
        note("== S3 endpoint")
        ep = Endpoint(args, work)
        stack.callback(ep.stop)
        bench = PeerBench(args, ep, work, src, images, n_files, n_bytes)
        created = bench.storage.s3_backend(f"s3://{args.bucket}/x").ensure_bucket(args.bucket)
        stack.callback(bench.cleanup_loader)
        stopped = bench.prepare_reads(work)
        if not stopped:
            stopped = run_rounds(bench, args.rounds)
        bench.cleanup_loader()
        bench.mark_failures()
        if created and ep.server is None:
            remove_empty_bucket(bench.storage, args.bucket)
        rows = [summarize(m) for m in bench.measures()]
        lines = header(args, ep, bench, load, time.monotonic() - t_start)
        if stopped:
            lines.append(f"STOPPED EARLY: {stopped}; the rows hold the rounds measured before")
    peer_names = [*all_peers(), LOCAL]
    table = "\n".join([*(f"- {line}" for line in lines), "", render_table(rows, peer_names), "",
                       *(f"{i}. {text}" for i, text in enumerate(FOOTNOTES, 1))])
    return table, rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # tools' chatter to stderr; stdout is the table
            table, rows = run(args)
    except KeyboardInterrupt:
        note("interrupted")
        return EXIT_INTERRUPTED
    except StepFailed as exc:
        note(f"BENCH FAILED: {exc}")
        return EXIT_FAILED
    print(table, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
        note(f"wrote {args.json}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
