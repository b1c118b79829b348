"""The data checks of ``blip3o-doctor``: GET latency of a sample of objects, data.json references.

Latency is measured through :class:`~blip3o_storage.storage.facade.Storage` (the read path the
dataset uses, fast path included), one GET at a time, so p50/p99 are per-request times and not
queueing; 20 objects by default (a 70 KB BLIP3o image takes ~5 ms on a healthy local RGW, so
the check costs ~0.1 s; p99 of 20 is their maximum, said as such).

References are checked against one listing of the folder (1 LIST per 1000 keys: 120 requests
for BLIP3o-60k's 120k files, vs 120k HEADs), or, with ``--sample N``, by N HEADs of entries
drawn with a fixed seed (the same N every run).
"""
from __future__ import annotations

import random
import time
from collections.abc import Sequence

from blip3o_storage.cli.doctor_checks import FAIL, PASS, WARN, Result
from blip3o_storage.errors import ObjectNotFoundError, StorageError
from blip3o_storage.reading.bounded_json import loads_bounded
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.uri import join_uri

SHOW_MISSING = 10  # missing references listed by name


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank: with 20 values p99 is the largest, not an interpolation."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def check_latency(storage: Storage, folder: str, objects: int) -> Result:
    """GET up to ``objects`` objects listed under ``folder``: p50/p99 latency and MB/s."""
    try:
        listed = []
        for info in storage.list(folder):
            if not info.is_dir:
                listed.append(info.key)
            if len(listed) >= objects:
                break
    except StorageError as exc:
        return Result("latency", FAIL, f"cannot list {folder}: {exc}", "see the bucket check above")
    if not listed:
        return Result("latency", WARN, f"no objects under {folder} to time", "upload the data or fix the prefix")
    times, total = [], 0
    for key in listed:
        uri = join_uri(folder, key, source="listed key")
        start = time.perf_counter()
        try:
            total += len(storage.get(uri))
        except StorageError as exc:
            return Result("latency", FAIL, f"GET {uri} failed: {exc}", "see the checks above")
        times.append(time.perf_counter() - start)
    elapsed = sum(times)
    mb_s = total / elapsed / 1e6 if elapsed else 0.0
    return Result("latency", PASS, f"{len(times)} GETs: p50 {percentile(times, 0.5) * 1000:.1f} ms, "
                                   f"p99 {percentile(times, 0.99) * 1000:.1f} ms, {total / 1e6:.2f} MB at "
                                   f"{mb_s:.1f} MB/s (one at a time)")


def data_json_references(data: bytes, source: str) -> list[str]:
    """The relative paths a data.json names: every ``image``, and every ``annotation`` without an
    inline ``caption`` (those are never read). ValueError naming ``source`` if it is not one."""
    entries = loads_bounded(data.decode("utf-8-sig"))
    if not isinstance(entries, list):
        raise ValueError(f"{source}: expected a JSON list of {{'image', 'annotation'}} entries")
    refs: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{source}: entry {i} has no 'image'")
        refs.append(str(entry["image"]))
        if "caption" not in entry and "annotation" in entry:
            refs.append(str(entry["annotation"]))
    return refs


def check_references(storage: Storage, folder: str, data_json: str, sample: int | None) -> Result:
    """Every reference of ``data_json`` (or ``sample`` of them) present under ``folder``."""
    try:
        refs = data_json_references(storage.get(data_json), data_json)
    except (StorageError, ValueError, UnicodeDecodeError) as exc:
        return Result("data.json", FAIL, f"cannot read {data_json}: {exc}",
                      "pass the data.json the training config names (local path or s3:// URI)")
    if sample is not None and sample < len(refs):
        refs = random.Random(0).sample(refs, sample)
        missing = []
        for ref in refs:
            try:
                storage.stat(join_uri(folder, ref, source=data_json))
            except ObjectNotFoundError:
                missing.append(ref)
        how, method = f"a sample of {len(refs)}", "one HEAD each"
    else:
        try:
            present = {info.key for info in storage.list(folder) if not info.is_dir}
        except StorageError as exc:
            return Result("data.json", FAIL, f"cannot list {folder}: {exc}", "see the bucket check above")
        missing = [ref for ref in refs if ref.lstrip("/") not in present]
        how, method = f"all {len(refs)}", "one listing"
    if missing:
        shown = ", ".join(missing[:SHOW_MISSING]) + (f", ... and {len(missing) - SHOW_MISSING} more"
                                                      if len(missing) > SHOW_MISSING else "")
        return Result("data.json", FAIL,
                      f"{len(missing)} of {how} references missing under {folder} ({method}): {shown}",
                      "upload the missing files, or regenerate data.json from what is there (blip3o-make-data-json)")
    return Result("data.json", PASS, f"{how} references of {data_json} present under {folder} ({method})")
