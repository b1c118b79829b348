"""Storage health in the training log: the DataLoader workers' storage counters as mmengine scalars.

Every dataset counter (``dataset.stats()``: reads and their bytes, bad samples by reason, local
fallbacks, S3 calls and retries per cluster, prefetch hits/misses, disk-cache and block-read
counters) lives in the worker process that did the work. :class:`StorageHealthHook` brings them
to the main process and logs them every ``interval`` iterations through
``runner.message_hub.update_scalar('train/storage/...')``: the LoggerHook prints them in the text
log and hands them to every visualizer backend (``scalars.json``, TensorBoard).

How the counters cross the process boundary: **each batch carries them.** The hook wraps the
train DataLoader's ``collate_fn`` (before the workers fork) in :class:`StatsCollate`, which, in a
worker, adds that worker's cumulative counters to the batch dict under :data:`STATS_KEY`; the
hook pops them in ``before_train_iter``, before the model sees the batch. Why this and not the
alternatives:

* no extra channel: the counters ride the DataLoader's own result queue, so they work with fork,
  spawn, ``persistent_workers`` on or off, and die with the worker (nothing to clean up), where
  shared-memory slots must be sized and allocated before the fork and reset when workers are
  re-forked each epoch, and files under work_dir need a writer cadence, atomic renames and reads;
* exact: a worker's last batch carries its final counts (its samples are all loaded by then),
  so the logged GET count equals the GETs made -- a file written every second loses the tail;
* cheap: once per *batch*, not per sample -- ``python benchmarks/health_overhead.py`` (moto, 2 busy
  cores, 5 rounds): ``flat_counters(dataset.stats())`` 64 us (42-144), pickling the 13 counters
  4 us / 248 bytes, against 249 ms (46-1505) to read and collate a batch of 4: 0.03 %; against
  a healthy RGW's >= 4 x 5 ms per batch (a 70 KB GET each) it stays below 1 %.

Totals are the sum over worker processes of each one's latest counters (a worker is one pid
*incarnation*: re-forked workers start at zero and are added to the dead ones' final counts);
rates (GETs/s, MB/s) are the change over the last interval divided by its wall time. With
``num_workers=0`` the main process's own dataset is read instead. Under distributed training each rank sums its own
workers (mmengine's LoggerHook writes rank 0's).

The bottleneck warning is logged once per run: when, over an interval after the first (worker
start-up makes the first slow on purpose), ``data_time`` is more than ``bottleneck_ratio`` (0.5)
of the iteration ``time`` of the IterTimerHook, the model waits more for data than it computes.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from torch.utils.data import get_worker_info

STATS_KEY = "_blip3o_storage_stats"
PREFIX = "train/storage/"
#: Counters summed over workers and logged as totals (flattened ``dataset.stats()`` names -> scalar name).
TOTALS = {
    "gets": "gets", "retries": "retries", "failures": "failures", "bad_samples": "bad_samples",
    "reads.fallback_local": "fallback_local", "prefetch.hits": "prefetch_hits",
    "prefetch.misses": "prefetch_misses", "cache.hits": "cache_hits", "cache.misses": "cache_misses",
}
_INCARNATION: tuple[int, int] | None = None


def incarnation() -> tuple[int, int]:
    """(pid, start ns) of this process: tells a re-forked worker from an old one with the same pid."""
    global _INCARNATION
    if _INCARNATION is None or _INCARNATION[0] != os.getpid():
        _INCARNATION = (os.getpid(), time.time_ns())
    return _INCARNATION


def flat_counters(stats: Mapping[str, Any]) -> dict[str, int]:
    """``dataset.stats()`` as flat ``section.name -> int``, plus the totals the hook logs:
    ``gets`` (S3 calls of every cluster: GETs in a worker), ``retries`` (ours + botocore's),
    ``failures``, ``bytes`` (remote bytes read) and ``bad_samples`` (all reasons)."""
    flat: dict[str, int] = {}
    for section, values in stats.items():
        if section == "storage_retries" or not isinstance(values, Mapping):
            continue
        for name, value in values.items():
            if isinstance(value, int):
                flat[f"{section}.{name}"] = value
    clusters = [v for v in stats.get("storage_retries", {}).values() if isinstance(v, Mapping)]
    flat["gets"] = sum(int(c.get("calls", 0)) for c in clusters)
    flat["retries"] = sum(int(c.get("retries", 0)) + int(c.get("botocore_retries", 0)) for c in clusters)
    flat["failures"] = sum(int(c.get("failures", 0)) for c in clusters)
    flat["bytes"] = int(stats.get("read_bytes", {}).get("remote", 0))
    flat["bad_samples"] = sum(int(v) for v in stats.get("bad_samples", {}).values())
    return flat


class StatsCollate:
    """``collate_fn`` wrapper: in a DataLoader worker, the batch dict also carries the worker's
    counters under :data:`STATS_KEY` (popped by the hook before the model sees the batch)."""

    def __init__(self, inner: Callable[[Any], Any]) -> None:
        self.inner = inner

    def __call__(self, instances: Any) -> Any:
        batch = self.inner(instances)
        info = get_worker_info()
        if info is not None and isinstance(batch, dict) and hasattr(info.dataset, "stats"):
            batch[STATS_KEY] = (incarnation(), flat_counters(info.dataset.stats()))
        return batch


@HOOKS.register_module(force=True)
class StorageHealthHook(Hook):
    """Logs the storage counters of every DataLoader worker every ``interval`` iterations
    (match the LoggerHook's interval, default 10) and warns once when the loader is the
    bottleneck. In a config::

        custom_hooks = [dict(type='StorageHealthHook', interval=10)]
    """

    priority = "NORMAL"  # after IterTimerHook (data_time is in), before LoggerHook (prints the scalars)

    def __init__(self, interval: int = 10, bottleneck_ratio: float = 0.5) -> None:
        if interval < 1 or not 0 < bottleneck_ratio < 1:
            raise ValueError("StorageHealthHook: interval must be >= 1 and 0 < bottleneck_ratio < 1")
        self.interval = interval
        self.bottleneck_ratio = bottleneck_ratio
        self.workers: dict[tuple[int, int], dict[str, int]] = {}
        self.warned = False
        self._last: tuple[float, dict[str, int]] = (time.monotonic(), {})

    def before_train(self, runner: Any) -> None:
        loader = runner.train_dataloader
        if not isinstance(loader.collate_fn, StatsCollate):
            loader.collate_fn = StatsCollate(loader.collate_fn)
        self._last = (time.monotonic(), {})

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if isinstance(data_batch, dict) and STATS_KEY in data_batch:
            worker, counters = data_batch.pop(STATS_KEY)
            self.workers[tuple(worker)] = counters

    def totals(self, runner: Any) -> dict[str, int]:
        """Counters summed over workers (or the main process's dataset, without workers)."""
        sources = list(self.workers.values())
        dataset: Any = getattr(runner.train_dataloader, "dataset", None)
        if not sources and hasattr(dataset, "stats"):
            sources = [flat_counters(dataset.stats())]
        out: dict[str, int] = {}
        for counters in sources:
            for name, value in counters.items():
                out[name] = out.get(name, 0) + value
        return out

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        if not (self.every_n_train_iters(runner, self.interval)
                or self.end_of_epoch(runner.train_dataloader, batch_idx)):
            return
        now, totals = time.monotonic(), self.totals(runner)
        then, before = self._last
        self._last = (now, totals)
        hub, elapsed = runner.message_hub, max(now - then, 1e-9)
        hub.update_scalar(PREFIX + "gets_per_s", (totals.get("gets", 0) - before.get("gets", 0)) / elapsed)
        hub.update_scalar(PREFIX + "mb_per_s", (totals.get("bytes", 0) - before.get("bytes", 0)) / elapsed / 1e6)
        hub.update_scalar(PREFIX + "mb", totals.get("bytes", 0) / 1e6)
        for name, scalar in TOTALS.items():
            hub.update_scalar(PREFIX + scalar, totals.get(name, 0))
        for name, value in totals.items():
            if name.startswith("bad_samples."):
                hub.update_scalar(PREFIX + "bad_" + name[len("bad_samples."):], value)
        self._check_bottleneck(runner)

    def _check_bottleneck(self, runner: Any) -> None:
        if self.warned or runner.iter + 1 < 2 * self.interval:
            return
        hub = runner.message_hub
        data_time, iter_time = hub.get_scalar("train/data_time"), hub.get_scalar("train/time")
        if data_time is None or iter_time is None:
            return
        data, total = data_time.mean(self.interval), iter_time.mean(self.interval)
        if total > 0 and data / total > self.bottleneck_ratio:
            self.warned = True
            runner.logger.warning(
                "the data loader is the bottleneck: over the last %d iterations the model waited %.0f%% of "
                "each iteration for data (data_time %.3f s of time %.3f s). More DataLoader workers, "
                "prefetch=, a disk cache (cache_dir=) or shard block reads help when the storage/gets_per_s "
                "and storage/mb_per_s scalars are far below what blip3o-doctor measures for the store; "
                "said once per run", self.interval, 100 * data / total, data, total)


__all__ = ["STATS_KEY", "StatsCollate", "StorageHealthHook", "flat_counters"]
