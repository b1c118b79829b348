"""The main job end to end, on an embedded BLIP3o-60k-shaped dataset.

Usage::

    python tools/demo.py                       # local moto S3 server on 127.0.0.1
    python tools/demo.py --target ceph         # the RGW of tools/ceph_dev.sh (/tmp/blip3o-ceph/env)
    python tools/demo.py --endpoint-url URL [--config petreloss.conf | --access-key K --secret-key S]

Steps, each a real CLI of this repo run as a subprocess (so the demo
exercises exactly what a user runs):

1. ``tools/make_demo_data.py``  -- 11 shard tars named like the real ones
2. ``tools/extract.py``         -- tars -> ``<work>/data/BLIP3o-60k/raw/<shard>/``
3. ``tools/make_data_json.py``  -- pair ``{key}.jpg`` + ``{key}.txt`` -> ``data.json``
4. S3 endpoint                   -- moto server on loopback, or an existing one
5. ``petreloss.conf``            -- connection settings for that endpoint
6. ``tools/upload.py``           -- upload (``--create-bucket``), verify
7. read back                     -- ``configs/blip3o60k_ceph.py`` through a multi-worker
                                    DataLoader; every sample decoded and checked

It runs from a checkout of the repository (``pip install -e .``): the steps
are its ``tools/*.py`` and the read-back uses its ``configs/``.

Exit status (see ``blip3o_storage.cli.common``): 0 only when every sample was
read from S3 (no local fallback) and none was bad; 1 a step failed or a sample
was bad; 2 bad usage; 130 interrupted (Ctrl-C or SIGTERM). Re-running is
cheap: generation and extraction are skipped when done, and uploading to an
existing endpoint skips objects already there. The local server is shut down
on success, error and Ctrl-C.
"""
from __future__ import annotations

import argparse
import configparser
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blip3o_storage.cli.common import EXIT_FAILED, EXIT_OK, interruptible, parser_from_doc

#: The checkout this package runs from (an editable install or PYTHONPATH): tools/ and configs/.
REPO = Path(__file__).resolve().parents[2]

log = logging.getLogger("demo")

CEPH_ENV_FILE = Path(os.environ.get("CEPH_DEV_DIR", "/tmp/blip3o-ceph")) / "env"
CEPH_CONFIG = REPO / "configs" / "blip3o60k_ceph.py"


class StepFailed(RuntimeError):
    """A step failed; the message says which and why."""


# -- small helpers, shared with benchmarks/run.py ---------------------------
def header(step: int, total: int, title: str) -> None:
    print(f"\n==> [{step}/{total}] {title}", flush=True)


def run_tool(args: Sequence[str], what: str, env: dict[str, str] | None = None,
             quiet: bool = False) -> float:
    """Run ``python <args>`` from the repo root; raise StepFailed on a non-zero exit.

    Returns the wall time in seconds. ``quiet`` captures the output and shows
    it only when the tool fails.
    """
    cmd = [sys.executable, *map(str, args)]
    log.debug("running %s", " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        if quiet and proc.stdout:
            sys.stdout.write(proc.stdout)
        raise StepFailed(f"{what} failed with exit status {proc.returncode}: {' '.join(cmd)}")
    return elapsed


def read_ceph_env(path: Path = CEPH_ENV_FILE) -> dict[str, str]:
    """Endpoint and keys of the dev RGW written by ``tools/ceph_dev.sh up``."""
    if not path.is_file():
        raise StepFailed(f"{path} does not exist; start the dev cluster with `tools/ceph_dev.sh up` "
                         "(or `make ceph-up`)")
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    missing = [k for k in ("CEPH_S3_ENDPOINT", "CEPH_S3_ACCESS_KEY", "CEPH_S3_SECRET_KEY") if not values.get(k)]
    if missing:
        raise StepFailed(f"{path} lacks {', '.join(missing)}")
    return values


def write_petreloss_conf(path: Path, endpoint_url: str, access_key: str, secret_key: str,
                         cluster: str = "demo") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds a secret key
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(f"[DEFAULT]\ndefault_cluster = {cluster}\n\n[{cluster}]\naccess_key = {access_key}\n"
                 f"secret_key = {secret_key}\nhost_base = {endpoint_url}\n")
    return path


def conf_with_endpoint(src: Path, dest: Path, endpoint_url: str) -> Path:
    """Copy a petreloss.conf, pointing its default cluster at ``endpoint_url``."""
    parser = configparser.ConfigParser(interpolation=None)
    with open(src, encoding="utf-8") as fh:
        parser.read_file(fh)
    sections = parser.sections()
    default = parser.defaults().get("default_cluster") or (sections[0] if len(sections) == 1 else None)
    if default is None or default not in sections:
        raise StepFailed(f"--config {src}: cannot tell its default cluster (set default_cluster in [DEFAULT])")
    parser.set(default, "host_base", endpoint_url)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        parser.write(fh)
    return dest


class StatsCollate:
    """The config's collate, plus a snapshot of the reading worker's counters.

    Dataset counters live in each DataLoader worker; attaching them to every
    batch lets the main process see bad samples, fallbacks and retries of all
    workers without relying on log scraping.
    """

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        from torch.utils.data import get_worker_info

        batch = self.collate(instances)
        info = get_worker_info()
        dataset: Any = info.dataset if info is not None else None
        batch["worker_stats"] = (info.id if info is not None else -1,
                                 dataset.stats() if dataset is not None else None)
        return batch


def build_collate(spec: Any) -> Any:
    """A config ``collate_fn=dict(type=..., **kw)`` -> a callable (as mmengine's Runner does)."""
    from blip3o_storage.training.registry import resolve_type

    if spec is None:
        from blip3o_storage.training.collate import blip3o_collate
        return blip3o_collate
    spec = dict(spec)
    fn = resolve_type(spec.pop("type"))
    return functools.partial(fn, **spec) if spec else fn


def merge_worker_stats(per_worker: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Sum the latest counters of every worker."""
    bad: dict[str, int] = {}
    reads: dict[str, int] = {}
    retries = {"calls": 0, "retries": 0, "botocore_retries": 0, "failures": 0}
    for stats in per_worker.values():
        if not stats:
            continue
        for k, v in stats["bad_samples"].items():
            bad[k] = bad.get(k, 0) + v
        for k, v in stats["reads"].items():
            reads[k] = reads.get(k, 0) + v
        for cluster in stats["storage_retries"].values():
            for k in retries:
                retries[k] += int(cluster.get(k, 0))
    extra: dict[str, dict[str, Any]] = {}  # e.g. prefetch / cache counters, when the config turns them on
    for stats in per_worker.values():
        for section, values in (stats or {}).items():
            if section in ("bad_samples", "reads", "storage_retries") or not isinstance(values, dict):
                continue
            bucket = extra.setdefault(section, {})
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    bucket[k] = bucket.get(k, 0) + v
    return {"bad_samples": bad, "reads": reads, "storage_retries": retries, "extra": extra}


def read_through_dataloader(dataset: Any, *, batch_size: int, workers: int, collate: Any,
                            progress: bool | None = None, desc: str = "read") -> dict[str, Any]:
    """Iterate ``dataset`` once; check every sample; return counts and timings."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=StatsCollate(collate), drop_last=False,
                        prefetch_factor=4 if workers > 0 else None)
    n = len(dataset)
    seen: list[str] = []
    undecodable: list[str] = []
    per_worker: dict[int, dict[str, Any]] = {}
    t0 = time.monotonic()
    first_batch_s = None
    with tqdm(total=n, unit="sample", desc=desc, disable=None if progress is None else not progress) as bar:
        if hasattr(dataset, "set_sampler"):  # lets the dataset's prefetch (if configured) follow our order
            dataset.set_sampler(loader.sampler, batch_size, False)
        iterator = iter(loader)
        try:
            for batch in iterator:
                if first_batch_s is None:
                    first_batch_s = time.monotonic() - t0
                worker_id, stats = batch.pop("worker_stats")
                per_worker[worker_id] = stats
                data = batch["data"]
                files = data.get("image_file", [])
                pixels = data.get("pixel_values")
                ok_shape = (pixels is not None and pixels.ndim == 4 and pixels.shape[0] == len(files)
                            and pixels.shape[1] == 3 and pixels.shape[2] == pixels.shape[3] == dataset.image_size)
                if not ok_shape or not bool(torch.isfinite(pixels).all()) or data["input_ids"].shape[0] != len(files):
                    undecodable.extend(files)
                seen.extend(files)
                bar.update(len(files))
        finally:
            del iterator  # shuts the workers down now, also on Ctrl-C
    elapsed = time.monotonic() - t0
    if workers == 0:
        per_worker[-1] = dataset.stats()
    merged = merge_worker_stats(per_worker)
    return {"samples": len(seen), "unique": len(set(seen)), "expected": n, "seen": seen,
            "undecodable": undecodable, "seconds": elapsed, "first_batch_s": first_batch_s or 0.0,
            "samples_per_s": len(seen) / elapsed if elapsed > 0 else 0.0, **merged}


def sample_bytes(data_root: Path) -> dict[str, int]:
    """image relpath -> bytes of image + caption, from data.json and the local copy."""
    raw = data_root / "raw"
    entries = json.loads((data_root / "data.json").read_text())
    return {e["image"]: (raw / e["image"]).stat().st_size + (raw / e["annotation"]).stat().st_size for e in entries}


def build_ceph_dataset(data_root: Path, ceph_folder: str, conf: Path, image_size: int) -> Any:
    """``configs/blip3o60k_ceph.py`` pointed at the demo data through its env overrides."""
    from mmengine.config import Config

    from blip3o_storage.training.dataset import build_dataset_from_config

    os.environ["BLIP3O_DATA_ROOT"] = str(data_root)
    os.environ["BLIP3O_CEPH_FOLDER"] = ceph_folder
    os.environ["BLIP3O_CEPH_CONFIG"] = str(conf)
    cfg = Config.fromfile(str(CEPH_CONFIG))
    dataset = build_dataset_from_config(cfg, key="train_dataloader.dataset", image_size=image_size)
    return cfg, dataset


# -- the job ---------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = parser_from_doc(__doc__ or "")
    ap.add_argument("--work-dir", type=Path, default=Path("demo-work"),
                    help="everything goes here (default %(default)s)")
    ap.add_argument("--samples-per-shard", type=int, default=40, help="default %(default)s -> 440 samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-image-size", type=int, default=1024,
                    help="longest edge of the largest generated JPEGs (default %(default)s)")
    ap.add_argument("--image-size", type=int, default=256,
                    help="the dataset's image_size (resize/crop target; default %(default)s, the config says 512)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train_dataloader.batch_size")
    ap.add_argument("--target", choices=("moto", "ceph"), default="moto",
                    help="moto: a moto server on 127.0.0.1 (default); ceph: the RGW of tools/ceph_dev.sh")
    ap.add_argument("--endpoint-url", default=None, help="use this existing S3 endpoint instead of a local server")
    ap.add_argument("--config", type=Path, default=None,
                    help="petreloss.conf for an existing endpoint "
                         "(its host_base is replaced by --endpoint-url if given)")
    ap.add_argument("--access-key", default=None,
                    help="with --endpoint-url and no --config (default $AWS_ACCESS_KEY_ID)")
    ap.add_argument("--secret-key", default=None,
                    help="with --endpoint-url and no --config (default $AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--bucket", default="blip3o-60k-demo", help="default %(default)s")
    ap.add_argument("--prefix", default="", help="key prefix inside the bucket (default: none)")
    ap.add_argument("--upload-workers", type=int, default=16)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.samples_per_shard < 1 or args.workers < 0 or args.image_size < 16:
        ap.error("--samples-per-shard must be >= 1, --workers >= 0, --image-size >= 16")
    if args.config is not None and not args.config.is_file():
        ap.error(f"--config {args.config} does not exist")
    if args.target == "ceph" and (args.endpoint_url or args.config):
        ap.error("--target ceph takes its endpoint from the dev cluster; drop --endpoint-url/--config")
    return args


def endpoint_conf(args: argparse.Namespace, work: Path) -> tuple:
    """(petreloss.conf path, description, local server or None) for the chosen endpoint."""
    from blip3o_storage.testing.local_s3 import start_moto_server

    conf = work / "petreloss.conf"
    if args.target == "ceph":
        env = read_ceph_env()
        write_petreloss_conf(conf, env["CEPH_S3_ENDPOINT"], env["CEPH_S3_ACCESS_KEY"], env["CEPH_S3_SECRET_KEY"])
        return conf, f"Ceph RGW at {env['CEPH_S3_ENDPOINT']} (tools/ceph_dev.sh)", None
    if args.config is not None:
        if args.endpoint_url:
            conf_with_endpoint(args.config, conf, args.endpoint_url)
            return conf, f"existing endpoint {args.endpoint_url} (keys from {args.config})", None
        return args.config.resolve(), f"existing endpoint from {args.config}", None
    if args.endpoint_url:
        access = args.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = args.secret_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise StepFailed("--endpoint-url needs --config, or --access-key/--secret-key "
                             "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
        write_petreloss_conf(conf, args.endpoint_url, access, secret)
        return conf, f"existing endpoint {args.endpoint_url}", None
    server = start_moto_server(log_path=str(work / "moto-server.log"))
    server.write_petreloss_conf(str(conf), cluster="demo")
    os.chmod(conf, 0o600)
    pid = server.process.pid if server.process is not None else "?"
    where = f"moto server at {server.endpoint_url} (pid {pid}, log {work / 'moto-server.log'})"
    return conf, where, server


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    if not (REPO / "tools").is_dir() or not CEPH_CONFIG.is_file():
        raise StepFailed(f"the demo runs from a checkout of the repository (tools/ and configs/), not from "
                         f"{REPO}: clone it and `pip install -e .` there (or run `make demo`)")
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tars = work / "tars"
    data_root = work / "data" / "BLIP3o-60k"
    raw = data_root / "raw"
    total = 7
    timings: dict[str, float] = {}
    print(f"BLIP3o-60k storage demo: work dir {work}, {args.samples_per_shard} samples x 11 shards, "
          f"{args.workers} DataLoader worker(s)", flush=True)

    header(1, total, "generate 11 BLIP3o-60k-shaped shard tars (tools/make_demo_data.py)")
    manifest = tars / ".make_demo_data.json"
    before = manifest.read_text() if manifest.is_file() else None
    timings["generate"] = run_tool(["tools/make_demo_data.py", "--out", tars, "--samples-per-shard",
                                    args.samples_per_shard, "--seed", args.seed, "--image-size",
                                    args.source_image_size], "generate")
    regenerated = manifest.read_text() != before

    header(2, total, "extract the shards (tools/extract.py)")
    extract = ["tools/extract.py", "--src", tars, "--dest", raw]
    if regenerated and raw.exists():
        extract.append("--overwrite")  # new tars: the extracted copy from older ones is stale
    timings["extract"] = run_tool(extract, "extract")

    header(3, total, "pair images with captions into data.json (tools/make_data_json.py)")
    timings["data_json"] = run_tool(["tools/make_data_json.py", "--raw", raw, "--out", data_root / "data.json",
                                     "--strict"], "make_data_json")
    sizes = sample_bytes(data_root)
    expected = args.samples_per_shard * 11
    if len(sizes) != expected:
        raise StepFailed(f"data.json has {len(sizes)} entries, expected {expected}")

    server = None
    try:
        header(4, total, "S3 endpoint")
        t0 = time.monotonic()
        conf, where, server = endpoint_conf(args, work)
        timings["server"] = time.monotonic() - t0
        print(f"using {where}", flush=True)

        header(5, total, "connection settings (petreloss.conf)")
        print(f"wrote {conf}" if conf.parent == work else f"using {conf}", flush=True)

        header(6, total, f"upload data.json + raw/ to s3://{args.bucket}/{args.prefix} (tools/upload.py)")
        upload = ["tools/upload.py", data_root, "--bucket", args.bucket, "--config", conf,
                  "--create-bucket", "--workers", args.upload_workers]
        if args.prefix:
            upload += ["--prefix", args.prefix]
        timings["upload"] = run_tool(upload, "upload")

        prefix = args.prefix.strip("/")
        ceph_folder = f"s3://{args.bucket}/{prefix + '/' if prefix else ''}raw"
        header(7, total, f"read back through configs/blip3o60k_ceph.py from {ceph_folder}")
        cfg, dataset = build_ceph_dataset(data_root, ceph_folder, conf, args.image_size)
        batch_size = args.batch_size or int(cfg.train_dataloader.batch_size)
        print(f"dataset: {type(dataset).__name__}, {len(dataset)} samples, image_size {dataset.image_size}, "
              f"batch_size {batch_size}, {args.workers} worker(s), collate {cfg.train_dataloader.collate_fn['type']}",
              flush=True)
        result = read_through_dataloader(dataset, batch_size=batch_size, workers=args.workers,
                                         collate=build_collate(cfg.train_dataloader.collate_fn))
        timings["read"] = result["seconds"]
    finally:
        if server is not None:
            server.stop()
            print("moto server stopped", flush=True)

    bad = sum(result["bad_samples"].values())
    reads = result["reads"]
    fallback = reads.get("fallback_local", 0)
    remote = reads.get("remote", 0)
    nbytes = sum(sizes.get(f, 0) for f in result["seen"])
    missing = sorted(set(sizes) - set(result["seen"]))
    retries = result["storage_retries"]
    print("\n==> result", flush=True)
    print(f"read {result['samples']}/{len(sizes)} samples ({result['unique']} distinct) in {result['seconds']:.2f} s: "
          f"{result['samples_per_s']:.1f} samples/s, {nbytes / 1e6:.1f} MB "
          f"({nbytes / 1e6 / max(result['seconds'], 1e-9):.1f} MB/s); "
          f"first batch after {result['first_batch_s']:.2f} s",
          flush=True)
    print(f"bad samples: {bad}{' ' + str(result['bad_samples']) if bad else ''}; "
          f"undecodable: {len(result['undecodable'])}; "
          f"reads: remote {remote}, local fallback {fallback}; S3 calls {retries['calls']}, "
          f"retries {retries['retries']} (+{retries['botocore_retries']} by botocore), failures {retries['failures']}",
          flush=True)
    for section, values in result["extra"].items():
        print(f"{section}: " + ", ".join(f"{k} {v:g}" for k, v in sorted(values.items())), flush=True)
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + f"; total {time.monotonic() - t_start:.1f} s", flush=True)
    problems = []
    if result["samples"] != len(sizes) or missing:
        problems.append(f"{len(missing)} sample(s) never read (e.g. {', '.join(missing[:3])})")
    if bad:
        problems.append(f"{bad} bad sample(s): {result['bad_samples']}")
    if result["undecodable"]:
        problems.append(f"{len(result['undecodable'])} undecodable sample(s)")
    if fallback:
        problems.append(f"{fallback} read(s) fell back to the local copy instead of S3")
    if reads.get("local", 0):
        problems.append(f"{reads['local']} read(s) came from the local copy instead of S3")
    if problems:
        print("DEMO FAILED: " + "; ".join(problems), flush=True)
        return EXIT_FAILED
    print("DEMO OK: every sample read from S3 and decoded", flush=True)
    return EXIT_OK


def _sigterm(signum: int, frame: Any) -> None:
    """SIGTERM (e.g. a CI timeout) takes the same clean path as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _sigterm)
    return interruptible(lambda: _checked(args), "\ninterrupted; cleaned up. Re-run the same command to continue "
                                                 "(finished steps are skipped)")


def _checked(args: argparse.Namespace) -> int:
    try:
        return run_demo(args)
    except StepFailed as exc:
        print(f"\nDEMO FAILED: {exc}", flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
