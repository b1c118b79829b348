"""The tools' memory does not grow with the file count like lists of objects do (issue #14), on a
20,000-file tree: planning keeps about 90 bytes a file (a list of UploadItems kept about 640, with a
peak of 830, so the bound below fails on it), and verify keeps a bounded window of futures (it made
one per file up front, about 1 KB each). The 1,000,000-file figures are in benchmarks/scale.py."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest

from blip3o_storage import Storage
from blip3o_storage.testing.data import many_small_files
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.transfer.upload import plan_upload, verify

N = 20_000
T = TypeVar("T")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_small_files(tmp_path_factory.mktemp("scale") / "src", N)


def _peak(fn: Callable[[], T]) -> tuple[T, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


#: Planning measured in a fresh interpreter: in the whole suite's process, threads left by earlier
#: tests (pools, servers' clients) allocate while tracemalloc traces, and the peak rose from ~90-300
#: to ~490 bytes a file in one full run, with the code unchanged.
_PLAN_PEAK = """
import sys, tracemalloc
from pathlib import Path
from blip3o_storage.transfer.upload import plan_upload
tracemalloc.start()
plan = plan_upload(Path(sys.argv[1]), "pre")
print(len(plan.items), len(plan.failed), tracemalloc.get_traced_memory()[1])
"""


def test_planning_keeps_about_a_key_per_file(tree: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", _PLAN_PEAK, str(tree)], check=True, capture_output=True,
                         text=True, env=env, timeout=300).stdout.split()
    planned, failed, peak = (int(v) for v in out[-3:])
    assert (planned, failed) == (N, 0)
    plan = plan_upload(tree, "pre")
    assert len(plan.items) == N and plan.failed == []
    items = list(plan.items)
    assert items[0].key == "pre/raw/s000/0000000.txt" and items[0].local_path == tree / "raw/s000/0000000.txt"
    assert items[-1].size == len(b"caption %d" % (N - 1)) and plan.total_bytes == sum(i.size for i in items)
    assert peak / N < 350, f"planning peaked at {peak / N:.0f} bytes a file"


def test_verify_keeps_a_bounded_window(tree: Path, moto_endpoint: S3Endpoint) -> None:
    storage, bucket = new_bucket(moto_endpoint)
    backend = Storage(moto_endpoint.ceph_config()).s3_backend(f"{bucket}/x")
    plan = plan_upload(tree)
    remote: dict[str, tuple[int, Optional[str]]] = {
        i.key: (i.size, hashlib.md5(i.local_path.read_bytes()).hexdigest()) for i in plan.items}
    first = next(iter(plan.items))
    remote[first.key] = (first.size, "0" * 32)  # one mismatch, so the check can fail
    check, peak = _peak(lambda: verify(plan.items, backend, bucket[len("s3://"):], part_size=5 << 20,
                                       workers=4, remote=remote))
    assert check.ok == N - 1 and [k for k, _ in check.mismatched] == [first.key] and not check.missing
    assert peak < 8 << 20, f"verify peaked at {peak / 1e6:.1f} MB for {N} files"
