"""Run a transfer's parts on a thread pool, at most ``limit`` at a time, first error wins.

Parts of one transfer (ranged GETs of a download, parts of an upload) are
independent requests; boto3 and urllib3 release the GIL while they wait on the
socket and hashlib while it hashes, so threads overlap them. At most ``limit``
parts are in flight, so memory is ``limit`` parts, whatever the object size.
On the first failure the parts not yet started are cancelled and the running
ones are waited for (none keeps writing into a buffer the caller has let go),
then that failure is raised.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Callable, Iterable, List, Optional, Set


def new_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A pool for one backend in one process (its threads never cross a fork)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)


def run_bounded(pool: ThreadPoolExecutor, tasks: Iterable[Callable[[], None]], limit: int) -> None:
    """Run every task on ``pool``, at most ``limit`` at once; raise the first error after stopping the rest."""
    running: Set[Future] = set()
    error: Optional[BaseException] = None
    try:
        for task in tasks:
            while len(running) >= limit:
                done, running = _wait_some(running)
                error = _first_error(done)
                if error is not None:
                    raise error
            running.add(pool.submit(task))
        while running:
            done, running = _wait_some(running)
            error = _first_error(done)
            if error is not None:
                raise error
    finally:
        for future in running:
            future.cancel()
        wait(running)


def _wait_some(running: Set[Future]) -> tuple:
    done, pending = wait(running, return_when=FIRST_EXCEPTION if len(running) > 1 else "ALL_COMPLETED")
    return done, set(pending)


def _first_error(done: Iterable[Future]) -> Optional[BaseException]:
    for future in done:
        if not future.cancelled() and future.exception() is not None:
            return future.exception()
    return None


class InFlight:
    """Bounded background tasks fed one at a time by a producer (a writer's parts).

    :meth:`submit` blocks while ``limit`` tasks run, and raises the first
    failure of an earlier task; :meth:`finish` waits for the rest and raises it.
    """

    def __init__(self, pool: ThreadPoolExecutor, limit: int) -> None:
        self._pool = pool
        self._slots = threading.BoundedSemaphore(limit)
        self._futures: List[Future] = []
        self._error: Optional[BaseException] = None

    def submit(self, task: Callable[[], None]) -> None:
        self.raise_error()
        self._slots.acquire()
        try:
            self.raise_error()
            future = self._pool.submit(task)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(self._done)
        self._futures.append(future)

    def _done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None and self._error is None:
            self._error = future.exception()
        self._slots.release()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait for every task; raise the first failure."""
        wait(self._futures)
        self.raise_error()

    def cancel(self) -> None:
        """Cancel what has not started and wait for what has (errors are dropped)."""
        for future in self._futures:
            future.cancel()
        wait(self._futures)
