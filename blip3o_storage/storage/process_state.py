"""Pickling for objects that hold threading locks (DataLoader workers get a pickled copy)."""
from __future__ import annotations

import copy
import threading
from typing import Any, ClassVar, Dict, Mapping, Tuple


class DropsLocksOnPickle:
    """Pickle without the locks named in ``_pickle_locks``; the copy gets fresh, unlocked ones.

    A lock cannot be pickled, and a copy of one held by another thread would stay held.
    ``_pickle_resets`` (attribute -> value, copied per pickle) replaces per-process state
    such as a client, which must not travel either.
    """

    _pickle_locks: ClassVar[Tuple[str, ...]] = ("_lock",)
    _pickle_resets: ClassVar[Mapping[str, Any]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._pickle_locks:
            state.pop(name, None)
        state.update({name: copy.copy(value) for name, value in self._pickle_resets.items()})
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in self._pickle_locks:
            setattr(self, name, threading.Lock())
