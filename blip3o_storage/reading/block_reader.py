"""Block reads: fetch aligned blocks of a tar once and serve its members from memory.

Why: a ranged GET per member still pays the store's fixed cost per request
(on Ceph RGW about 1 ms of server CPU, plus client signing and parsing) for
every sample. Read in blocks of several MiB, a tar costs one request per
block, and the rest is bytes (RGW: about 1.3 ms of CPU per MB). That only pays
off when the samples asked for next lie in the block just fetched, which is
what :class:`~blip3o_storage.training.locality_sampler.LocalitySampler` arranges
(shuffled blocks, shuffled within). With a sampler that jumps all over the
dataset every sample would fetch a whole block, so block reads are off
unless asked for (``shard_block_bytes``), and :meth:`BlockReader.stats`
counts fetches against member reads so a bad pairing shows.

Blocks are aligned (block ``b`` of a tar is bytes ``[b*B, (b+1)*B)``), so
every process and thread agrees on them; a member that crosses a boundary
reads both blocks. When the dataset says which members it will read
(:meth:`BlockReader.expect`, from its data.json), a block is fetched only from
the first to the last byte of those members inside it: a data.json that
keeps a run of each tar's samples (the first 100 of 300 per tar in the peer
benchmark) moves only that run (there 79 MB in 11 GETs a pass instead of 92 MB
of whole blocks; each MB ~1.3 ms of RGW CPU). Gaps between expected members
inside a block are still fetched: one GET a block stays cheaper. A read outside what
was expected still works, as one ranged GET of just that member (counted as
``unplanned``). Each process keeps at most ``max_blocks`` blocks (least
recently used go first), and threads asking for a block being fetched wait
for that one fetch instead of sending their own. State is per process: after
a fork (DataLoader workers) or unpickling the child starts empty, never with
a lock or a half-fetched block of its parent.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
from concurrent.futures import Future

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.stats import Counters

logger = logging.getLogger(__name__)

__all__ = ["BlockReader", "DEFAULT_BLOCK_BYTES"]

#: After this many reads in a process, warn (once) if fewer than 1 in ``_WASTE_RATIO`` reads came from a held block.
_WASTE_CHECK_AFTER = 64
_WASTE_RATIO = 2

#: 8 MiB: 20-50 BLIP3o images per request; a worker holds ``max_blocks`` of them.
DEFAULT_BLOCK_BYTES = 8 << 20


_COUNTERS = ("reads", "fetches", "fetched_bytes", "waits", "unplanned")


class BlockReader(ProcessLocal):
    """Byte ranges of objects, served from aligned blocks of ``block_bytes`` fetched by ranged GET."""

    _process_state = ("_lock", "_blocks", "_counters", "_warned")

    def __init__(self, block_bytes: int = DEFAULT_BLOCK_BYTES, max_blocks: int = 4) -> None:
        if block_bytes < 4096 or max_blocks < 1:
            raise ValueError(f"block_bytes must be >= 4096 and max_blocks >= 1 (got {block_bytes}, {max_blocks})")
        self.block_bytes = int(block_bytes)
        self.max_blocks = int(max_blocks)
        #: (uri, block) -> [first, end) of the expected bytes in it. Plain data (forked workers share
        #: the parent's copy); empty: nothing was said, blocks are fetched whole.
        self._spans: dict[tuple[str, int], tuple[int, int]] = {}
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[tuple[str, int], Future[bytes]] = collections.OrderedDict()
        self._counters = Counters(_COUNTERS)
        self._warned = False

    def __repr__(self) -> str:
        return f"BlockReader({self.block_bytes} bytes x {self.max_blocks})"

    def expect(self, uri: str, start: int, length: int) -> None:
        """Say that bytes ``start .. start+length`` of ``uri`` will be read; once anything is
        expected, each block is fetched from the first to the last expected byte in it.

        Call it for every member before the reads start (before the DataLoader forks its
        workers; the dataset does, from its data.json, when the sampler asks for locality)."""
        if length <= 0:
            return
        size, end = self.block_bytes, start + length
        for b in range(start // size, (end - 1) // size + 1):
            lo, hi = max(start, b * size), min(end, (b + 1) * size)
            span = self._spans.get((uri, b))
            self._spans[(uri, b)] = (min(lo, span[0]), max(hi, span[1])) if span else (lo, hi)

    def _span(self, uri: str, block: int, object_size: int) -> tuple[int, int]:
        """The bytes block ``block`` of ``uri`` is fetched as: the expected ones, else all of it."""
        span = self._spans.get((uri, block))
        if span is None:
            return block * self.block_bytes, min((block + 1) * self.block_bytes, object_size)
        return span[0], min(span[1], object_size)

    def _planned(self, uri: str, start: int, end: int, first: int, last: int) -> bool:
        """True when blocks ``first..last`` as fetched hold every byte of ``[start, end)``."""
        if not self._spans:
            return True
        size = self.block_bytes
        for b in range(first, last + 1):
            span = self._spans.get((uri, b))
            if span is None or span[0] > max(start, b * size) or span[1] < min(end, (b + 1) * size):
                return False
        return True

    def stats(self) -> dict[str, int]:
        """This process's counters: member ``reads``, block ``fetches`` (GETs) and their bytes,
        ``waits`` (reads that joined another thread's fetch), ``unplanned`` (reads outside
        what was expected: one ranged GET each)."""
        self._check_process()
        return {name: self._counters[name] for name in _COUNTERS}

    def holds(self, uri: str, start: int, length: int) -> bool:
        """True when every block of the range is here or being fetched: reading it
        needs no new request (prefetching it would only add thread overhead)."""
        self._check_process()  # in a new process nothing is held yet
        size = self.block_bytes
        first, last = start // size, (start + max(length, 1) - 1) // size
        if not self._planned(uri, start, start + max(length, 1), first, last):
            return False
        with self._lock:
            return all((uri, b) in self._blocks for b in range(first, last + 1))

    def read(self, storage: Storage, uri: str, start: int, length: int, object_size: int) -> bytes:
        """``length`` bytes of ``uri`` from ``start`` (``object_size``: the whole object's size,
        so the last block is asked for exactly)."""
        self._check_process()
        if length <= 0:
            return b""
        if start < 0 or start + length > object_size:
            raise CorruptDataError(f"{uri}: range {start}+{length} lies outside the object's {object_size} bytes; "
                                   "the index does not match this object")
        self._counters.add(reads=1)
        size = self.block_bytes
        first, last = start // size, (start + length - 1) // size
        if not self._planned(uri, start, start + length, first, last):
            self._counters.add(unplanned=1, fetches=1, fetched_bytes=length)
            return _get_exact(storage, uri, start, length, f"{start}+{length}")
        parts = [self._block(storage, uri, b, object_size) for b in range(first, last + 1)]
        offset = start - self._span(uri, first, object_size)[0]
        if len(parts) == 1:
            return parts[0][offset:offset + length]
        return b"".join(parts)[offset:offset + length]

    def _block(self, storage: Storage, uri: str, block: int, object_size: int) -> bytes:
        key = (uri, block)
        with self._lock:
            future = self._blocks.get(key)
            if future is not None:
                self._blocks.move_to_end(key)
                joined = not future.done()
            else:
                future = self._blocks[key] = Future()
                while len(self._blocks) > self.max_blocks:  # waiters keep their own reference
                    self._blocks.popitem(last=False)
                joined = None
        if joined is not None:
            if joined:
                self._counters.add(waits=1)
            return future.result()
        start, end = self._span(uri, block, object_size)
        try:
            data = _get_exact(storage, uri, start, end - start, f"of block {block}")
        except BaseException as exc:
            future.set_exception(exc)
            with self._lock:  # the next read tries again rather than inheriting this failure
                if self._blocks.get(key) is future:
                    del self._blocks[key]
            raise
        future.set_result(data)
        self._counters.add(fetches=1, fetched_bytes=len(data))
        fetches, reads = self._counters["fetches"], self._counters["reads"]
        with self._lock:
            wasteful = not self._warned and reads >= _WASTE_CHECK_AFTER and fetches * _WASTE_RATIO > reads
            self._warned = self._warned or wasteful
        if wasteful:
            logger.warning("block reads in pid %d: %d GETs of up to %d bytes for %d member reads; the samples "
                           "asked for do not stay within blocks (use LocalitySampler, or drop shard_block_bytes "
                           "for a random sampler)", os.getpid(), fetches, self.block_bytes, reads)
        return data


def _get_exact(storage: Storage, uri: str, start: int, length: int, what: str) -> bytes:
    """``length`` bytes of ``uri`` from ``start``; fewer means the tar is not the one indexed."""
    data = storage.get_range(uri, start, length)
    if len(data) != length:
        raise CorruptDataError(f"{uri}: ranged read {what} returned {len(data)} bytes, expected {length}; "
                               "the object is not the one indexed")
    return data
