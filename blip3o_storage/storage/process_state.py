"""One mechanism for per-process state: clients, HTTP pools, locks, buffers, counters.

DataLoader workers are forked (or, with ``spawn``, get a pickled copy), and a
boto3 client or urllib3 pool shared across fork has been seen to hand one
worker another worker's response; a lock held by a parent thread at fork time
stays held forever in the child. So every object that holds such state
subclasses :class:`ProcessLocal` and builds it in one method,
:meth:`ProcessLocal._init_process_state`, which runs

* at construction,
* in a forked child, right after ``fork()`` (``os.register_at_fork``), for
  every live instance: the child never sees the parent's locks or clients;
* after unpickling: the names in ``_process_state`` are not pickled;
* on first use in a process whose pid differs from the builder's
  (:meth:`ProcessLocal._check_process`), a cheap guard for forks that bypass
  ``os.fork`` hooks (``os.register_at_fork`` covers ``os.fork`` and
  ``multiprocessing``'s fork start method; a raw ``clone`` would not).

Cost: one ``os.getpid()`` (about 50 ns) per guarded access; the fork hook walks
the live instances (a few per process: one per backend, cache, reader).
"""
from __future__ import annotations

import os
import threading
import weakref
from typing import Any, ClassVar, Dict, Tuple

_registry_lock = threading.Lock()
_live: weakref.WeakValueDictionary[int, ProcessLocal] = weakref.WeakValueDictionary()


class ProcessLocal:
    """Base class of every object holding per-process state.

    Subclasses list the attributes that belong to one process in
    ``_process_state`` and (re)create them in :meth:`_init_process_state`;
    they call ``super().__init__()`` before using them. Everything else is
    ordinary, picklable state.
    """

    #: Attributes rebuilt per process, never pickled.
    _process_state: ClassVar[Tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._reset_process_state()

    # -- to implement ----------------------------------------------------
    def _init_process_state(self) -> None:
        """Create every attribute named in ``_process_state`` (fresh locks, no client yet, zero counters)."""

    # -- the mechanism ---------------------------------------------------
    def _reset_process_state(self) -> None:
        self._owner_pid = os.getpid()
        self._init_process_state()
        with _registry_lock:
            _live[id(self)] = self

    def _check_process(self) -> None:
        """Rebuild the per-process state if this object was built in another process."""
        if self._owner_pid != os.getpid():
            self._reset_process_state()

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        for name in (*self._process_state, "_owner_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()


def _after_fork_in_child() -> None:
    """Every live ProcessLocal of the parent gets fresh state in the child (single-threaded here)."""
    global _registry_lock
    _registry_lock = threading.Lock()  # the parent's may have been held by a thread that is gone
    for obj in list(_live.values()):
        obj._reset_process_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
