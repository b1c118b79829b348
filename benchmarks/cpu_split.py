"""Give the S3 server its own CPUs for a benchmark run.

On a small machine the server (moto, or Ceph's radosgw + OSD) shares the
client's cores, so every request costs the client the server's CPU too
(measured on 2 cores: radosgw + OSD use 1.1 ms of CPU per 70 KB GET, our
client 0.5 ms). In a deployment the store runs elsewhere. With the split,
the server's processes (every thread) are pinned to the first CPUs and this
process and its children (DataLoader workers, upload CLIs) to the rest, for
BOTH the local-disk and the S3 passes, so they are compared on the same
client CPU budget. Affinities are restored afterwards.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def _tasks(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _set(pids: Iterable[int], cpus: set[int]) -> dict[int, set[int]]:
    before: dict[int, set[int]] = {}
    for pid in pids:
        for tid in _tasks(pid):
            try:
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError):
                continue
    return before


def ceph_pids(ceph_dir: Path | None = None) -> list[int]:
    """PIDs that tools/ceph_dev.sh recorded for its daemons (default dir: $CEPH_DEV_DIR or /tmp/blip3o-ceph)."""
    if ceph_dir is None:
        ceph_dir = Path(os.environ.get("CEPH_DEV_DIR", "/tmp/blip3o-ceph"))
    return [int(p.read_text().strip()) for p in sorted((ceph_dir / "run").glob("*.pid"))]


@contextlib.contextmanager
def split_cpus(server_pids: Iterable[int]) -> Iterator[str]:
    """Pin ``server_pids`` to the first half of the CPUs and this process to the rest."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield "not split (1 CPU)"
        return
    half = len(cpus) // 2
    server_cpus, client_cpus = set(cpus[:half]), set(cpus[half:])
    saved = _set(server_pids, server_cpus)
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, client_cpus)
    try:
        yield f"server on CPU {sorted(server_cpus)}, client (and its workers and CLIs) on CPU {sorted(client_cpus)}"
    finally:
        os.sched_setaffinity(0, mine)
        for tid, affinity in saved.items():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.sched_setaffinity(tid, affinity)
