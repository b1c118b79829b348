"""Where the bytes of a data.json relpath come from: one small protocol.

The dataset only ever asks "bytes of ``relpath`` under ``folder``"; a
:class:`SampleSource` answers in two steps so that prefetching and caching
can key on *what* is read before reading it:

* ``locate(folder, relpath) -> Ref``: which object and byte range (no I/O);
* ``read(storage, ref) -> bytes``: fetch it.

Implementations: :class:`ObjectSource` (one object per file, the original
layout), :class:`ShardSource` (a ranged GET into a tar, via
:class:`~blip3o_storage.reading.shard_index.ShardIndex`) and :class:`CachedSource`
(wraps either with a :class:`~blip3o_storage.reading.disk_cache.DiskCache`).
``read_many`` lets a source fetch several refs at once (ShardSource merges
neighbouring members of one tar, e.g. a sample's image and caption, into one
request); the default reads them one by one. With ``block_bytes`` a
ShardSource reads whole aligned blocks of a tar instead and serves members
from them (:mod:`blip3o_storage.reading.block_reader`; pair it with
:class:`~blip3o_storage.training.locality_sampler.LocalitySampler`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, runtime_checkable

from blip3o_storage.storage.process_state import DropsLocksOnPickle
from blip3o_storage.reading.block_reader import DEFAULT_BLOCK_BYTES, BlockReader
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.storage.uri import join_uri

__all__ = ["CachedSource", "ObjectSource", "Ref", "SampleSource", "ShardSource", "build_source"]

#: Neighbouring members of one tar closer than this are fetched in one request.
DEFAULT_COALESCE_GAP = 64 * 1024


@dataclass(frozen=True)
class Ref:
    """One read: ``uri`` whole (``start is None``) or ``length`` bytes from ``start``.

    ``label`` is what traces and errors show (for a tar member
    ``<tar uri>#<member>``, which keeps the member's extension, so caption
    parsing by extension still works); ``key`` names exactly these bytes
    (URI + range) for caches and prefetch buffers.
    """

    uri: str
    label: str
    start: Optional[int] = None
    length: Optional[int] = None

    @property
    def key(self) -> str:
        return self.uri if self.start is None else f"{self.uri}@{self.start}+{self.length}"


@runtime_checkable
class SampleSource(Protocol):
    """Bytes of data.json relpaths, located first, then read."""

    def locate(self, folder: str, relpath: str) -> Ref: ...

    def read(self, storage: Any, ref: Ref) -> bytes: ...

    def read_many(self, storage: Any, refs: Sequence[Ref]) -> List[bytes]: ...


class ObjectSource:
    """One object (or local file) per relpath: ``folder/relpath``, read whole."""

    def locate(self, folder: str, relpath: str) -> Ref:
        uri = join_uri(folder, relpath)
        return Ref(uri=uri, label=uri)

    def read(self, storage: Any, ref: Ref) -> bytes:
        return storage.get(ref.uri)

    def read_many(self, storage: Any, refs: Sequence[Ref]) -> List[bytes]:
        return [self.read(storage, ref) for ref in refs]

    def __repr__(self) -> str:
        return "ObjectSource()"


class ShardSource(DropsLocksOnPickle):
    """Members of tar shards, by ranged GET, located through a :class:`ShardIndex`.

    ``folder`` (the dataset's ``ceph_folder``) is the folder holding the
    tars. The first read of each tar in a process checks its size against the
    index (one HEAD): a tar replaced after indexing would otherwise hand out
    wrong bytes at stale offsets. ``block_bytes`` (> 0) switches to block
    reads: each GET fetches an aligned block of that many bytes and the
    members in it are served from memory (``max_blocks`` per process).
    """

    _pickle_locks = ()  # none: a dict store is atomic, and a lock held by a prefetch thread at fork would hang
    _pickle_resets = {"_checked": {}}  # each process checks the tar sizes again

    def __init__(self, index: ShardIndex, coalesce_gap: int = DEFAULT_COALESCE_GAP, block_bytes: int = 0,
                 max_blocks: int = 4) -> None:
        self.index = index
        self.coalesce_gap = coalesce_gap
        self.blocks: Optional[BlockReader] = BlockReader(block_bytes, max_blocks) if block_bytes > 0 else None
        self._checked: Dict[str, Tuple[int, int]] = {}  # tar uri -> (pid that checked it, indexed size)

    def __repr__(self) -> str:
        reads = f", block reads {self.blocks.block_bytes} bytes" if self.blocks is not None else ""
        return f"ShardSource({self.index.source}, {len(self.index)} members{reads})"

    def locality_key(self, folder: str, relpath: str) -> tuple:
        """Where ``relpath``'s bytes live, as a sortable key: (tar, aligned block), the
        block being the one block reads fetch it with (default size without them)."""
        ref = self.locate(folder, relpath)
        size = self.blocks.block_bytes if self.blocks is not None else DEFAULT_BLOCK_BYTES
        return (ref.uri, (ref.start or 0) // size)

    def locate(self, folder: str, relpath: str) -> Ref:
        tar, offset, size = self.index.resolve(relpath)
        uri = join_uri(folder, tar)
        member = relpath.split("/", 1)[1] if "/" in relpath else relpath
        return Ref(uri=uri, label=f"{uri}#{member}", start=offset, length=size)

    def resident(self, ref: Ref) -> bool:
        """True when ``ref`` can be read without a new request (its blocks are held or in flight)."""
        return self.blocks is not None and self.blocks.holds(ref.uri, ref.start or 0, ref.length or 0)

    def _indexed_size(self, uri: str) -> int:
        """The size the index records for tar ``uri``."""
        # The index names tars by their path under the folder (possibly with '/'): the longest match.
        names = [name for name in self.index.shard_sizes if uri == name or uri.endswith("/" + name)]
        if not names:
            raise CorruptDataError(f"{uri}: shard index {self.index.source} has no size for this tar; "
                                   "re-run tools/upload_shards.py")
        return self.index.shard_sizes[max(names, key=len)]

    def _check_tar(self, storage: Any, uri: str) -> int:
        """The tar's indexed size, once per process checked against the stored tar (one HEAD)."""
        checked = self._checked.get(uri)
        if checked is not None and checked[0] == os.getpid():
            return checked[1]
        expected = self._indexed_size(uri)
        actual = storage.stat(uri).size
        if actual != expected:
            raise CorruptDataError(f"{uri} is {actual} bytes but shard index {self.index.source} says {expected}: "
                                   "the tar changed after indexing; re-run tools/upload_shards.py")
        self._checked[uri] = (os.getpid(), expected)
        return expected

    def read(self, storage: Any, ref: Ref) -> bytes:
        return self.read_many(storage, [ref])[0]

    def read_many(self, storage: Any, refs: Sequence[Ref]) -> List[bytes]:
        """Read ``refs``: from blocks with block reads, else one ranged GET per run
        of members of one tar that lie within ``coalesce_gap`` bytes of each other."""
        if self.blocks is not None:
            return [self.blocks.read(storage, ref.uri, ref.start or 0, ref.length or 0,
                                     self._check_tar(storage, ref.uri)) for ref in refs]
        out: List[Optional[bytes]] = [None] * len(refs)
        order = sorted(range(len(refs)), key=lambda i: (refs[i].uri, refs[i].start or 0))
        run: List[int] = []

        def flush() -> None:
            if not run:
                return
            first, uri = refs[run[0]], refs[run[0]].uri
            self._check_tar(storage, uri)
            start = first.start or 0
            end = max((refs[i].start or 0) + (refs[i].length or 0) for i in run)
            blob = storage.get_range(uri, start, end - start)
            if len(blob) != end - start:
                raise CorruptDataError(f"{first.label}: ranged read of {uri} returned {len(blob)} bytes, the index "
                                       f"says {end - start}; the tar in the store is not the one indexed")
            for i in run:
                s = (refs[i].start or 0) - start
                out[i] = blob[s:s + (refs[i].length or 0)]
            run.clear()

        for i in order:
            if run:
                prev = refs[run[-1]]
                end = max((refs[j].start or 0) + (refs[j].length or 0) for j in run)
                if refs[i].uri != prev.uri or (refs[i].start or 0) - end > self.coalesce_gap:
                    flush()
            run.append(i)
        flush()
        return [b if b is not None else b"" for b in out]


class CachedSource:
    """Any source, with a local :class:`DiskCache` in front (keyed by URI + range)."""

    def __init__(self, inner: SampleSource, cache: DiskCache) -> None:
        self.inner = inner
        self.cache = cache

    def __repr__(self) -> str:
        return f"CachedSource({self.inner!r}, {self.cache.root}, max {self.cache.max_bytes} bytes)"

    def locate(self, folder: str, relpath: str) -> Ref:
        return self.inner.locate(folder, relpath)

    def read(self, storage: Any, ref: Ref) -> bytes:
        return self.read_many(storage, [ref])[0]

    def read_many(self, storage: Any, refs: Sequence[Ref]) -> List[bytes]:
        out: List[Optional[bytes]] = [self.cache.get(ref.key) for ref in refs]
        missing = [i for i, data in enumerate(out) if data is None]
        if missing:
            fetched = self.inner.read_many(storage, [refs[i] for i in missing])
            for i, data in zip(missing, fetched):
                self.cache.put(refs[i].key, data)
                out[i] = data
        return [b if b is not None else b"" for b in out]


def build_source(storage: Any, shard_index: Optional[str] = None, cache_dir: Optional[os.PathLike | str] = None,
                 cache_max_bytes: Optional[int] = None, block_bytes: int = 0) -> SampleSource:
    """The source a dataset's remote reads go through, from its keywords.

    The shard index is loaded here (once, in the main process) so a missing
    or malformed index fails at construction, like a bad data.json.
    """
    source: SampleSource = (ShardSource(ShardIndex.load(storage, shard_index), block_bytes=block_bytes)
                            if shard_index else ObjectSource())
    if cache_dir is not None:
        source = CachedSource(source, DiskCache(cache_dir, cache_max_bytes or DEFAULT_CACHE_MAX_BYTES))
    return source


DEFAULT_CACHE_MAX_BYTES = 16 << 30
