"""The one per-process-state mechanism (issue #15): real forks and real pickles."""
from __future__ import annotations

import pickle
import threading

import pytest

from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.stats import Counters
from blip3o_storage.testing.forking import in_forked_child


class Holder(ProcessLocal):
    _process_state = ("_lock", "client")
    builds = 0

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self.client = object()  # stands for a boto3 client / urllib3 pool


def test_a_forked_child_gets_fresh_locks_and_clients_even_while_a_parent_thread_holds_the_lock() -> None:
    holder = Holder("a")
    parent_client = holder.client
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        # Without the at-fork reset the child would block forever on the copied, held lock.
        code = in_forked_child(
            lambda: 0 if holder._lock.acquire(timeout=2) and holder.client is not parent_client else 1)
    finally:
        release.set()
        thread.join()
    assert code == 0


def test_pickling_drops_the_process_state_and_the_copy_builds_its_own() -> None:
    holder = Holder("b")
    copy = pickle.loads(pickle.dumps(holder))
    assert copy.name == "b" and copy.client is not holder.client
    assert copy._lock.acquire(blocking=False)
    assert "client" not in holder.__getstate__() and "_lock" not in holder.__getstate__()


def test_counters_are_per_process_and_reject_unknown_names() -> None:
    counters = Counters(["hits", "misses"], tallies=["by_reason"])
    counters.add(hits=2)
    counters.tally("by_reason", "timeout")
    assert counters.snapshot() == {"hits": 2, "misses": 0, "by_reason": {"timeout": 1}}
    assert in_forked_child(lambda: counters["hits"]) == 0  # a worker starts at zero, not at its parent's counts
    assert pickle.loads(pickle.dumps(counters)).snapshot() == {"hits": 0, "misses": 0, "by_reason": {}}
    with pytest.raises(KeyError, match="unknown counter 'hit'"):
        counters.add(hit=1)
    assert counters["hits"] == 2
