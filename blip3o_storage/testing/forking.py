"""Run a check in a real forked child (fork-safety tests of per-process state)."""
from __future__ import annotations

import os
from typing import Callable


def in_forked_child(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a child made by ``os.fork()``; its return value (0-255) is the exit status,
    99 if it raised. A real fork, so ``os.register_at_fork`` hooks run as in DataLoader workers."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os._exit(fn())
        except BaseException:  # noqa: BLE001 - the child must never return into the parent's test
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
