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
reads both blocks. Each process keeps at most ``max_blocks`` blocks (least
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


_COUNTERS = ("reads", "fetches", "fetched_bytes", "waits")


class BlockReader(ProcessLocal):
    """Byte ranges of objects, served from aligned blocks of ``block_bytes`` fetched by ranged GET."""

    _process_state = ("_lock", "_blocks", "_counters", "_warned")

    def __init__(self, block_bytes: int = DEFAULT_BLOCK_BYTES, max_blocks: int = 4) -> None:
        if block_bytes < 4096 or max_blocks < 1:
            raise ValueError(f"block_bytes must be >= 4096 and max_blocks >= 1 (got {block_bytes}, {max_blocks})")
        self.block_bytes = int(block_bytes)
        self.max_blocks = int(max_blocks)
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._blocks: collections.OrderedDict[tuple[str, int], Future[bytes]] = collections.OrderedDict()
        self._counters = Counters(_COUNTERS)
        self._warned = False

    def __repr__(self) -> str:
        return f"BlockReader({self.block_bytes} bytes x {self.max_blocks})"

    def stats(self) -> dict[str, int]:
        """This process's counters: member ``reads``, block ``fetches`` (GETs) and their bytes,
        ``waits`` (reads that joined another thread's fetch)."""
        self._check_process()
        return {name: self._counters[name] for name in _COUNTERS}

    def holds(self, uri: str, start: int, length: int) -> bool:
        """True when every block of the range is here or being fetched: reading it
        needs no new request (prefetching it would only add thread overhead)."""
        self._check_process()  # in a new process nothing is held yet
        size = self.block_bytes
        with self._lock:
            return all((uri, b) in self._blocks
                       for b in range(start // size, (start + max(length, 1) - 1) // size + 1))

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
        parts = [self._block(storage, uri, b, object_size) for b in range(first, last + 1)]
        offset = start - first * size
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
        start = block * self.block_bytes
        want = min(self.block_bytes, object_size - start)
        try:
            data = storage.get_range(uri, start, want)
            if len(data) != want:
                raise CorruptDataError(f"{uri}: ranged read of block {block} returned {len(data)} bytes, "
                                       f"expected {want}; the object is not the one indexed")
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
