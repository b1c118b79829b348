"""A server's CPU time from /proc, so the benchmark can put the store's cost per request beside the client's.

On the dev machine the store (radosgw + OSD + mon, or the moto process) shares the client's 2 cores;
its CPU per request says how much of a row's wall time is the server's, which the client cannot fix.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional


def proc_cpu_seconds(pids: Sequence[int]) -> Optional[float]:
    """utime + stime of ``pids`` (every thread) from /proc/PID/stat.

    None when /proc is not there or a process is gone (the row then says n/a, not 0).
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces; fields after ')' start at 3
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5): utime, stime
    return total / tick
