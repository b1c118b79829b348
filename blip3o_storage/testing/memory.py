"""Memory of a process as the kernel counts it (Linux ``/proc``), for scale tests and benchmarks."""
from __future__ import annotations

import os


def smaps_rollup(pid: int | None = None) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes: Rss, Pss, Private_Dirty, Shared_Clean, ..."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def private_dirty(pid: int | None = None) -> int:
    """Bytes only this process has written: what a forked worker copied from its parent."""
    return smaps_rollup(pid)["Private_Dirty"]


def mapping_stats(path: str, pid: int | None = None) -> dict[str, int]:
    """Rss, Pss, Private_Clean, Private_Dirty (bytes) of this process's mappings of the file ``path``,
    summed (``/proc/<pid>/smaps``)."""
    keys = ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Shared_Clean")
    out = dict.fromkeys(keys, 0)
    inside = False
    with open(f"/proc/{pid or os.getpid()}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping's header line: "start-end perms offset dev inode path"
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and first[:-1] in out:
                out[first[:-1]] += int(line.split()[1]) * 1024
    return out


def peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")
