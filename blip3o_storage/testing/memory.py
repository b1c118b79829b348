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


def mapping_pss(path: str, pid: int | None = None) -> tuple[int, int]:
    """(Rss, Pss) in bytes of this process's mappings of the file ``path`` (``/proc/<pid>/smaps``)."""
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid or os.getpid()}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and first == "Rss:":
                rss += int(line.split()[1]) * 1024
            elif inside and first == "Pss:":
                pss += int(line.split()[1]) * 1024
    return rss, pss


def peak_rss() -> int:
    """This process's peak resident set (VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")
