"""Extract BLIP3o-60k WebDataset shards into ``data/BLIP3o-60k/raw/<shard>/``.

Usage::

    python tools/extract.py --src DIR_WITH_TARS --dest data/BLIP3o-60k/raw \
        [--workers N] [--overwrite] [shard ...]

Shards run in parallel worker processes; each is validated in full before a
byte is written, extracted into a temp dir and committed by a rename (see
``blip3o_storage.transfer.safe_tar``). Re-running skips shards that are already done.
A failing shard is logged with its reason and makes the exit status non-zero,
but the other shards still finish. A damaged or truncated tar fails naming the
byte offset of the damage (nothing of it is extracted); a member name repeated
in a tar keeps its last copy, as ``tar -x`` does, and is counted in the summary.

Ctrl-C stops every worker: a shard in progress removes its temp dir, shards
not started are not started, finished shards stay; re-running finishes the rest.

Exit status (see ``blip3o_storage.cli.common``): 0 every shard extracted or
already done; 1 any shard failed (hostile, damaged or truncated tar, disk full,
a folder without a marker); 2 bad usage (no such --src or shard); 130
interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import queue as queue_mod
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import Manager
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from blip3o_storage.cli.common import EXIT_FAILED, EXIT_OK, ignore_sigint, interruptible, parser_from_doc
from blip3o_storage.transfer.safe_tar import ExtractResult, extract_shard, shard_name

log = logging.getLogger("extract")

#: The 11 shards of BLIP3o-60k; used only to warn when some are missing.
BLIP3O_SHARDS = (
    "dalle3", "geneval_train", "human_gestures", "journeyDB", "mscoco_human",
    "object_1", "object_2", "occupation_1", "occupation_2", "text_1", "text_2",
)
_PROGRESS_CHUNK = 8 << 20  # batch progress messages so the queue stays cheap


def _interrupt_task(signum: int, frame: Any) -> None:
    """SIGINT while a worker extracts: stop that shard (extract_shard removes its temp dir).
    Only the first one counts: Ctrl-C reaches the worker, then the parent forwards it too."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _worker(tar_path: str, dest: str, overwrite: bool, q: Any, stop: Any) -> ExtractResult | None:
    """Extract one shard in a worker process, streaming byte counts to ``q``; None when the
    run was interrupted (``stop`` set) before this shard started.

    Workers ignore SIGINT (:func:`~blip3o_storage.cli.common.ignore_sigint`) except while
    they extract, so an idle worker never prints a traceback on Ctrl-C."""
    if stop.is_set():
        return None
    signal.signal(signal.SIGINT, _interrupt_task)
    try:
        return _extract(tar_path, dest, overwrite, q)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _extract(tar_path: str, dest: str, overwrite: bool, q: Any) -> ExtractResult:
    shard = shard_name(tar_path)
    pending = 0

    def progress(n: int) -> None:
        nonlocal pending
        pending += n
        if pending >= _PROGRESS_CHUNK:
            q.put((shard, pending))
            pending = 0

    result = extract_shard(tar_path, dest, progress=progress, overwrite=overwrite)
    if pending:
        q.put((shard, pending))
    return result


def _resolve_shards(src: Path, names: list[str]) -> list[Path]:
    """Tar paths to extract: the named ones, or every ``*.tar`` in ``src``."""
    if not src.is_dir():
        raise ValueError(f"--src {src} is not a directory")
    if not names:
        tars = sorted(p for p in src.iterdir() if p.name.endswith(".tar") and p.is_file())
        if not tars:
            raise ValueError(f"no *.tar files in {src}")
        found = {p.name[:-4] for p in tars}
        missing = [s for s in BLIP3O_SHARDS if s not in found]
        if missing:
            log.warning("BLIP3o-60k shards not in %s: %s", src, ", ".join(missing))
        return tars
    tars = []
    for n in names:
        p = src / (n if n.endswith(".tar") else n + ".tar")
        if not p.is_file():
            raise ValueError(f"shard {n!r}: {p} does not exist")
        if p not in tars:
            tars.append(p)
    return tars


def _drain(q: Any, bar: tqdm, done_bytes: dict[str, int]) -> None:
    """Move queued byte counts from the workers onto the progress bar."""
    while True:
        try:
            shard, n = q.get_nowait()
        except queue_mod.Empty:
            return
        done_bytes[shard] = done_bytes.get(shard, 0) + n
        bar.update(n)


def _run_pool(args: argparse.Namespace, tars: list[Path], names: dict[str, str], sizes: dict[str, int],
              workers: int, interrupted: threading.Event, results: list[ExtractResult],
              failures: list[tuple[str, str]], done_bytes: dict[str, int]) -> None:
    """Extract every shard in a process pool, filling ``results``/``failures``; raises
    KeyboardInterrupt once ``interrupted`` is set and the shards in progress have stopped."""
    with Manager() as mgr, logging_redirect_tqdm():
        q, stop = mgr.Queue(), mgr.Event()
        bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"shards 0/{len(tars)}", disable=None)
        with bar, ProcessPoolExecutor(max_workers=workers, initializer=ignore_sigint) as pool:
            futs: dict[Future, str] = {
                pool.submit(_worker, str(t), str(args.dest), args.overwrite, q, stop): str(t)
                for t in tars
            }
            pending = set(futs)
            n_done = 0
            try:
                while pending:
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                    _drain(q, bar, done_bytes)
                    for fut in finished:
                        tar = futs[fut]
                        shard = names[tar]
                        n_done += 1
                        try:
                            res = fut.result()
                        except Exception as e:  # noqa: BLE001 - one shard's failure must not stop the rest
                            failures.append((shard, f"{type(e).__name__}: {e}"))
                            log.error("shard %s FAILED: %s: %s", shard, type(e).__name__, e)
                        else:
                            if res is None:  # not started: the run is being interrupted
                                continue
                            results.append(res)
                            if res.skipped_already_done:
                                log.info("shard %s already extracted, skipped", shard)
                            else:
                                log.info("shard %s: %d files, %.1f MB", shard, res.files,
                                         res.bytes / 1e6)
                            if res.duplicates:
                                log.warning("shard %s: %d repeated member name(s), the last copy of "
                                            "each extracted: %s%s", shard, len(res.duplicates),
                                            ", ".join(res.duplicates[:20]),
                                            f" (+{len(res.duplicates) - 20} more)"
                                            if len(res.duplicates) > 20 else "")
                        # top the bar up to the tar size (headers, skipped or failed shards)
                        _drain(q, bar, done_bytes)
                        rest = sizes[tar] - done_bytes.get(shard, 0)
                        if rest > 0:
                            bar.update(rest)
                            done_bytes[shard] = sizes[tar]
                        bar.set_description(f"shards {n_done}/{len(tars)}")
            except KeyboardInterrupt:  # a worker's shard interrupted raises here too
                _stop_workers(stop, pending)
                log.warning("interrupted: stopping the shard(s) in progress (finished shards stay)")
                raise


def _stop_workers(stop: Any, pending: set) -> None:
    """Ctrl-C in the parent: no new shard starts, and the workers' running shards stop (the
    SIGINT is forwarded, for when it was sent to this process alone rather than the group)."""
    try:
        stop.set()
    except Exception as exc:  # noqa: BLE001 - the interrupt may have cut a call to the Manager short
        log.debug("could not tell the workers to stop: %s", exc)
    for fut in pending:
        fut.cancel()
    for child in multiprocessing.active_children():  # the pool's workers (the Manager ignores SIGINT)
        try:
            os.kill(child.pid, signal.SIGINT)  # type: ignore[arg-type]
        except (OSError, TypeError):
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    ap = parser_from_doc(__doc__ or "")
    ap.add_argument("--src", required=True, type=Path, help="directory holding the *.tar shards")
    ap.add_argument("--dest", required=True, type=Path, help="e.g. data/BLIP3o-60k/raw")
    ap.add_argument("--workers", type=int, default=None,
                    help="parallel processes (default: min(#shards, #CPUs))")
    ap.add_argument("--overwrite", action="store_true",
                    help="re-extract shards that are done or whose folder lacks a marker")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    ap.add_argument("shards", nargs="*", help="shard names (default: every *.tar in --src)")
    args = ap.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")
    return interruptible(lambda: _run(ap, args))


def _run(ap: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Everything after argument parsing."""
    try:
        tars = _resolve_shards(args.src, args.shards)
        names = {str(t): shard_name(t) for t in tars}
    except ValueError as e:  # InvalidPathError is a ValueError too
        ap.error(str(e))
    workers = args.workers or min(len(tars), os.cpu_count() or 1)
    sizes = {str(t): t.stat().st_size for t in tars}
    log.info("extracting %d shard(s) from %s into %s with %d worker(s)",
             len(tars), args.src, args.dest, workers)

    t0 = time.monotonic()
    results: list[ExtractResult] = []
    failures: list[tuple[str, str]] = []
    done_bytes: dict[str, int] = {}

    # Ctrl-C only sets a flag that the loop acts on between waits. Raised asynchronously, the
    # KeyboardInterrupt could land inside concurrent.futures.wait() while it holds a Future's lock:
    # the pool's manager thread then blocks on that lock and shutdown() joins it forever (seen
    # under load in CI). The flag stays set up until the pool has shut down.
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
    try:
        _run_pool(args, tars, names, sizes, workers, interrupted, results, failures, done_bytes)
    finally:
        signal.signal(signal.SIGINT, previous)

    elapsed = time.monotonic() - t0
    extracted = [r for r in results if not r.skipped_already_done]
    skipped = [r for r in results if r.skipped_already_done]
    log.info(
        "summary: %d shard(s) extracted, %d skipped as done, %d failed; "
        "%d files, %.1f MB, %d repeated member name(s) in %.1f s",
        len(extracted), len(skipped), len(failures),
        sum(r.files for r in extracted), sum(r.bytes for r in extracted) / 1e6,
        sum(len(r.duplicates) for r in extracted), elapsed,
    )
    for shard, reason in failures:
        log.error("failed shard %s: %s", shard, reason)
    return EXIT_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
