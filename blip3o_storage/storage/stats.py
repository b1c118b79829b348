"""One helper for the counters the package reports (retries, cache hits, block reads, prefetch).

Counters are per process: a DataLoader worker counts its own requests, and
``dataset.stats()`` / ``Storage.retry_stats()`` read the calling process's.
A forked or unpickled copy starts at zero with a fresh lock (see
:mod:`blip3o_storage.storage.process_state`), so a worker never reports, nor
deadlocks on, its parent's counters.
"""
from __future__ import annotations

import threading
from typing import Dict, Iterable, Mapping, Optional

from blip3o_storage.storage.process_state import ProcessLocal


class Counters(ProcessLocal):
    """Named integer counters, plus named tallies (reason -> count), updated under one lock."""

    _process_state = ("_lock", "_values", "_tallies")

    def __init__(self, names: Iterable[str], tallies: Iterable[str] = ()) -> None:
        self._names = tuple(names)
        self._tally_names = tuple(tallies)
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[str, int] = dict.fromkeys(self._names, 0)
        self._tallies: Dict[str, Dict[str, int]] = {name: {} for name in self._tally_names}

    def add(self, **deltas: int) -> None:
        """``counters.add(hits=1, bytes=n)``; an unknown name is a KeyError (a typo must not count silently)."""
        self._check_process()
        with self._lock:
            for name, delta in deltas.items():
                if name not in self._values:
                    raise KeyError(f"unknown counter {name!r}; known: {', '.join(self._names)}")
                self._values[name] += delta

    def tally(self, name: str, key: str, delta: int = 1) -> None:
        """Count ``key`` under the tally ``name`` (e.g. retries by reason)."""
        self._check_process()
        with self._lock:
            table = self._tallies[name]
            table[key] = table.get(key, 0) + delta

    def __getitem__(self, name: str) -> int:
        self._check_process()
        return self._values[name]

    def snapshot(self, extra: Optional[Mapping[str, object]] = None) -> Dict[str, object]:
        """The counters (and a copy of each tally) as a plain dict, plus ``extra``."""
        self._check_process()
        with self._lock:
            out: Dict[str, object] = dict(self._values)
            out.update({name: dict(table) for name, table in self._tallies.items()})
        if extra:
            out.update(extra)
        return out
