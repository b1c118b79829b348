"""Per-worker, sampler-aware prefetch of sample bytes in background threads.

Why: with remote storage a DataLoader worker spends most of a sample waiting
on the network; if it knows which samples it will be asked for next, a few
threads can have their bytes ready by then. Only raw bytes are fetched;
decoding stays in ``__getitem__`` (threads would fight over the GIL).

Which indices does *this* worker get next? The sampler's order, cut into
batches of ``batch_size`` (a short last batch is dropped with
``drop_last``), and batch ``k`` of an epoch goes to worker
``k % num_workers``. That is how torch's ``_MultiProcessingDataLoaderIter``
assigns batches with the default ``in_order=True`` (a round-robin
``itertools.cycle`` over the workers, restarted every epoch). With
``num_workers=0`` the main process gets every index in order.

The prediction is only a hint: the worker follows its expected stream with a
cursor, and when the index it is asked for is not where expected (another
epoch, ``in_order=False``, a random sampler whose copy in the worker draws a
different order, a bad-sample replacement) it resyncs or simply misses. A
miss reads synchronously, so results never depend on the prediction.

Threads, the buffer and the stream are created lazily in the process that
uses them and dropped on pickling and after ``fork`` (a thread pool does not
survive a fork), so a dataset can be used in the parent and then by workers.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.stats import Counters

logger = logging.getLogger(__name__)

__all__ = ["Prefetcher", "worker_stream"]

_GIVE_UP_AFTER = 8


def worker_stream(order: Iterable[int], batch_size: int = 1, worker_id: int = 0, num_workers: int = 0,
                  drop_last: bool = False) -> Iterator[int]:
    """The indices worker ``worker_id`` of ``num_workers`` receives, in order
    (lazily, so an infinite sampler works too)."""
    it = iter(order)
    if num_workers <= 1:
        if not drop_last:
            yield from it
            return
        worker_id, num_workers = 0, 1
    for k in itertools.count():
        batch = list(itertools.islice(it, batch_size))
        if not batch or (drop_last and len(batch) < batch_size):
            return
        if k % num_workers == worker_id:
            yield from batch


_COUNTERS = ("hits", "waits", "misses", "errors", "dropped", "resyncs")


class Prefetcher(ProcessLocal):
    """Bytes of upcoming keys, fetched by ``threads`` threads, at most ``depth`` samples ahead.

    ``plan(idx)`` is called by the dataset at the start of ``__getitem__``:
    it advances the cursor to ``idx`` and returns the next ``depth`` indices
    this worker expects; ``submit(keys, fn)`` starts fetching them;
    ``take(key)`` hands over finished bytes (waiting for an in-flight fetch)
    or None on a miss. Memory is bounded: at most ``max_pending`` fetches are
    kept, the oldest unclaimed ones are dropped.
    """

    _process_state = ("_lock", "_pool", "_pending", "_stream", "_ahead", "_exhausted", "_misaligned",
                      "_last_idx", "_planned", "_counters")

    def __init__(self, depth: int, threads: int = 4, sampler: Iterable[int] | None = None,
                 batch_size: int = 1, drop_last: bool = False) -> None:
        if depth < 0 or threads < 1:
            raise ValueError(f"prefetch depth must be >= 0 and threads >= 1 (got {depth}, {threads})")
        self.depth = depth
        self.threads = threads
        self.sampler = sampler
        self.batch_size = max(1, int(batch_size))
        self.drop_last = drop_last
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: collections.OrderedDict[str, _Part] = collections.OrderedDict()
        self._stream: Iterator[int] | None = None
        self._ahead: collections.deque[int] = collections.deque()
        self._exhausted = False
        self._misaligned = 0  # resyncs in a row that found nothing (no sampler: jumps in a row)
        self._last_idx: int | None = None  # the last index asked for, to tell sequential access
        self._planned: collections.OrderedDict[int, None] = collections.OrderedDict()  # handed out lately
        self._counters = Counters(_COUNTERS)

    def set_sampler(self, sampler: Iterable[int] | None, batch_size: int = 1, drop_last: bool = False) -> None:
        """Predict from ``sampler`` (a torch/mmengine Sampler or a list of indices)."""
        self._check_process()
        self.sampler, self.batch_size, self.drop_last = sampler, max(1, int(batch_size)), drop_last
        self._stream, self._ahead, self._exhausted = None, collections.deque(), False

    @property
    def max_pending(self) -> int:
        return max(8, 4 * self.depth)

    def stats(self) -> dict[str, int]:
        """This process's counters: hits, waits (taken while in flight), misses, errors, dropped, resyncs."""
        self._check_process()
        return {name: self._counters[name] for name in _COUNTERS}

    # -- prediction ---------------------------------------------------------
    def _new_stream(self) -> None:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 0)
        self._stream = worker_stream(self.sampler, self.batch_size, wid, nw, self.drop_last)  # type: ignore[arg-type]
        self._ahead = collections.deque()
        self._exhausted = False
        self._planned.clear()

    def _fill(self, n: int) -> None:
        while len(self._ahead) < n and not self._exhausted:
            nxt = next(self._stream, None)  # type: ignore[arg-type]
            if nxt is None:
                self._exhausted = True
            else:
                self._ahead.append(int(nxt))

    def _seek(self, idx: int, window: int) -> bool:
        self._fill(window)
        for pos, value in enumerate(itertools.islice(self._ahead, window)):
            if value == idx:
                for _ in range(pos + 1):
                    self._ahead.popleft()
                return True
        return False

    def plan(self, idx: int, n: int) -> list[int]:
        """Advance to ``idx``; the next up to ``depth`` indices expected after it.

        Without a sampler, the guess is ``idx+1, idx+2, ...`` modulo ``n``
        (right within a batch of a sequential sampler)."""
        self._check_process()
        if self.depth == 0:
            return []
        if self.sampler is None:
            with self._lock:
                # Without a sampler the guess only pays off for sequential access; stop guessing
                # (and sending GETs nobody asks for) once requests keep jumping.
                sequential = self._last_idx is None or idx == (self._last_idx + 1) % n
                self._last_idx = idx
                self._misaligned = 0 if sequential else self._misaligned + 1
                if self._misaligned >= _GIVE_UP_AFTER:
                    if self._misaligned == _GIVE_UP_AFTER:
                        logger.warning("prefetch in pid %d: requests are not sequential and no sampler was "
                                       "given (dataset.set_sampler / PrefetchSamplerHook); prediction off while "
                                       "they jump, reads are synchronous", os.getpid())
                    return []
            return [(idx + k) % n for k in range(1, min(self.depth, n - 1) + 1)]
        with self._lock:
            if self._misaligned >= _GIVE_UP_AFTER:
                return []
            window = max(4 * self.depth, 2 * self.batch_size, 16)
            if self._stream is None:
                self._new_stream()
            if not self._seek(idx, window):
                self._counters.add(resyncs=1)
                self._new_stream()  # a new epoch (or a first call) starts the sampler again
                if not self._seek(idx, window):
                    self._misaligned += 1
                    if self._misaligned == _GIVE_UP_AFTER:
                        logger.warning("prefetch in pid %d: requests do not follow the sampler's order "
                                       "(random sampler without a seed? in_order=False?); prediction off "
                                       "in this process, reads are synchronous", os.getpid())
                    return []
            self._misaligned = 0
            self._fill(self.depth)
            return list(itertools.islice(self._ahead, self.depth))

    def plan_new(self, idx: int, n: int) -> list[int]:
        """:meth:`plan`, less the indices it returned lately and not asked for since:
        what is new in the window.

        The window slides by one sample per call, so the caller has only one
        new sample to locate and submit instead of ``depth`` (an index handed
        out before whose fetch was dropped is read synchronously)."""
        return self.plan_next(idx, n)[1]

    def plan_next(self, idx: int, n: int) -> tuple[bool, list[int]]:
        """``(known, fresh)``: whether an earlier call handed ``idx`` out already (then it was
        submitted, or found readable without a request, back then), and :meth:`plan_new`'s list.

        Lets the caller skip locating ``idx`` again: in steady state every index was planned
        ``depth`` samples before it is asked for (in shard mode that saved one of the three
        index lookups + URI joins per sample)."""
        planned = self.plan(idx, n)
        with self._lock:
            known = self._planned.pop(idx, False) is None  # asked for: planned again later, it is new again
            fresh = [j for j in planned if j not in self._planned]
            for j in fresh:
                self._planned[j] = None
            while len(self._planned) > 2 * max(self.depth, 8):
                self._planned.popitem(last=False)
        return known, fresh

    # -- fetching -----------------------------------------------------------
    def submit(self, keys: Sequence[str], fn: Callable[[], list[bytes]]) -> None:
        """Fetch ``keys`` (one call of ``fn`` returns their bytes, in order) unless already pending."""
        self._check_process()
        with self._lock:
            if all(k in self._pending for k in keys):
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="prefetch")
            whole = self._pool.submit(_unless_exiting(fn))
            for i, key in enumerate(keys):
                if key not in self._pending:
                    self._pending[key] = _Part(whole, i)
            while len(self._pending) > self.max_pending:
                _, old = self._pending.popitem(last=False)
                self._counters.add(dropped=1)
                if not any(part.future is old.future for part in self._pending.values()):
                    old.future.cancel()  # nobody will take it: a fetch still queued is not sent

    def take(self, key: str, count_miss: bool = True) -> bytes | None:
        """The prefetched bytes of ``key`` (waiting if in flight), or None: read it yourself.
        ``count_miss=False``: not fetching it was deliberate (e.g. its block is already held)."""
        self._check_process()
        with self._lock:
            part = self._pending.pop(key, None)
            if part is None:
                self._counters.add(misses=int(count_miss))
                return None
        ready = part.done()
        try:
            data = part.result()
        except Exception:  # noqa: BLE001 - the synchronous read will raise it properly, with fallback
            self._counters.add(errors=1, misses=1)
            return None
        self._counters.add(**{"hits" if ready else "waits": 1})
        return data

    def close(self) -> None:
        """Stop the threads of this process (pending fetches are abandoned)."""
        self._check_process()  # a pool of another process is not ours to shut down
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._init_process_state()


_exiting = False


def _note_exit() -> None:
    global _exiting
    _exiting = True


# Why: at exit Python joins every pool thread only after it has run all queued work, so a
# DataLoader worker leaving with up to ``max_pending`` fetches queued would first send them all
# (against a store that is down, each one waits out its retries). ``threading._register_atexit``
# hooks run before that join; from then on queued fetches return at once without a request
# (fetches already running finish). The hook is inherited through fork and flags the exiting
# process only. Without it (not CPython >= 3.9) exit drains the queue as before.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_note_exit)


def _unless_exiting(fn: Callable[[], list[bytes]]) -> Callable[[], list[bytes]]:
    def run() -> list[bytes]:
        if _exiting:
            raise RuntimeError("prefetch abandoned: the process is exiting")
        return fn()
    return run


class _Part:
    """Item ``i`` of a future that returns a list (one fetch, several keys)."""

    __slots__ = ("future", "i")

    def __init__(self, future: Future[list[bytes]], i: int) -> None:
        self.future, self.i = future, i

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> bytes:
        return self.future.result()[self.i]
