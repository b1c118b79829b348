"""Where the bytes of a data.json relpath come from: one small protocol.

The dataset only ever asks "bytes of ``relpath`` under ``folder``"; a
:class:`SampleSource` answers in two steps so that prefetching and caching
can key on *what* is read before reading it:

* ``locate(folder, relpath) -> Ref``: which object and byte range (no I/O);
* ``read(storage, ref) -> bytes``: fetch it.

Everything else the dataset may ask a source is a method of the base class
with a default that fits a source without that capability, and a wrapper
(:class:`CachedSource`) passes each one on to what it wraps, so the dataset
never probes attributes or unwraps sources:

* ``locality_key`` / ``has_locality``: where a relpath's bytes live, for
  :meth:`~blip3o_storage.training.dataset.CaptionDataset.locality_groups`;
* ``resident(ref)``: readable without a new request (no prefetch needed);
* ``stats()``: this process's counters of the source's parts (``blocks``,
  ``cache``), merged into ``dataset.stats()``;
* ``disk_cache()``: the local cache in front of the reads, if any.

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

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.block_reader import DEFAULT_BLOCK_BYTES, BlockReader
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.uri import join_uri

__all__ = ["CachedSource", "LocalityKey", "ObjectSource", "Ref", "SampleSource", "ShardSource", "SourceStats",
           "build_source"]

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
    start: int | None = None
    length: int | None = None

    @property
    def key(self) -> str:
        return self.uri if self.start is None else f"{self.uri}@{self.start}+{self.length}"


#: Where a relpath's bytes live: (object URI, aligned block number); sorts in storage order.
LocalityKey = tuple[str, int]
#: What ``SampleSource.stats()`` returns: section name (``blocks``, ``cache``) -> that part's counters.
SourceStats = dict[str, dict[str, int]]


class SampleSource(abc.ABC):
    """Bytes of data.json relpaths, located first, then read.

    Subclasses implement :meth:`locate` and :meth:`read`; the other methods
    are capabilities with defaults meaning "none of that here".
    """

    @abc.abstractmethod
    def locate(self, folder: str, relpath: str) -> Ref:
        """Which object and byte range hold ``folder/relpath`` (no I/O)."""

    @abc.abstractmethod
    def read(self, storage: Storage, ref: Ref) -> bytes:
        """The bytes of ``ref``."""

    def read_many(self, storage: Storage, refs: Sequence[Ref]) -> list[bytes]:
        """The bytes of each of ``refs``, in order (default: one read each)."""
        return [self.read(storage, ref) for ref in refs]

    def has_locality(self) -> bool:
        """True when :meth:`locality_key` groups relpaths by where their bytes live."""
        return False

    def locality_key(self, folder: str, relpath: str) -> LocalityKey | None:
        """A sortable key of where ``relpath``'s bytes live; None without locality."""
        return self.locality_of(self.locate(folder, relpath)) if self.has_locality() else None

    def locality_of(self, ref: Ref) -> LocalityKey | None:
        """:meth:`locality_key` of a located ref; None without locality."""
        return None

    def expect(self, ref: Ref) -> None:
        """``ref`` will be read (a source that fetches more than asked for can then fetch less);
        called for every sample before the reads start. Nothing by default."""
        return None

    def resident(self, ref: Ref) -> bool:
        """True when ``ref`` can be read without a new request (prefetching it would not help)."""
        return False

    def disk_cache(self) -> DiskCache | None:
        """The local disk cache in front of this source's reads, if any."""
        return None

    def stats(self) -> SourceStats:
        """This process's counters of the source's parts, by section (none by default)."""
        return {}


class ObjectSource(SampleSource):
    """One object (or local file) per relpath: ``folder/relpath``, read whole."""

    def locate(self, folder: str, relpath: str) -> Ref:
        uri = join_uri(folder, relpath)
        return Ref(uri=uri, label=uri)

    def read(self, storage: Storage, ref: Ref) -> bytes:
        return storage.get(ref.uri)

    def __repr__(self) -> str:
        return "ObjectSource()"


class ShardSource(SampleSource, ProcessLocal):
    """Members of tar shards, by ranged GET, located through a :class:`ShardIndex`.

    ``folder`` (the dataset's ``ceph_folder``) is the folder holding the
    tars. The first read of each tar in a process checks its size against the
    index (one HEAD): a tar replaced after indexing would otherwise hand out
    wrong bytes at stale offsets. ``block_bytes`` (> 0) switches to block
    reads: each GET fetches an aligned block of that many bytes and the
    members in it are served from memory (``max_blocks`` per process).
    """

    _process_state = ("_checked",)  # each process checks the tar sizes again (no lock: a dict store is atomic)

    def __init__(self, index: ShardIndex, coalesce_gap: int = DEFAULT_COALESCE_GAP, block_bytes: int = 0,
                 max_blocks: int = 4) -> None:
        self.index = index
        self.coalesce_gap = coalesce_gap
        self.blocks: BlockReader | None = BlockReader(block_bytes, max_blocks) if block_bytes > 0 else None
        #: (folder, tar relpath) -> the tar's URI: a handful of tars, and a join (parse + checks,
        #: ~25 us) per located member otherwise. Plain data, so forked workers may share the copy.
        self._tar_uris: dict[tuple[str, str], str] = {}
        super().__init__()

    def _init_process_state(self) -> None:
        self._checked: dict[str, int] = {}  # tar uri -> indexed size, checked in this process

    def __repr__(self) -> str:
        reads = f", block reads {self.blocks.block_bytes} bytes" if self.blocks is not None else ""
        return f"ShardSource({self.index.source}, {len(self.index)} members{reads})"

    def has_locality(self) -> bool:
        return True

    def locality_of(self, ref: Ref) -> LocalityKey:
        """Where ``ref``'s bytes live, as a sortable key: (tar, aligned block), the
        block being the one block reads fetch it with (default size without them)."""
        size = self.blocks.block_bytes if self.blocks is not None else DEFAULT_BLOCK_BYTES
        return (ref.uri, (ref.start or 0) // size)

    def expect(self, ref: Ref) -> None:
        """With block reads, blocks are then fetched only across the expected members."""
        if self.blocks is not None:
            self.blocks.expect(ref.uri, ref.start or 0, ref.length or 0)

    def locate(self, folder: str, relpath: str) -> Ref:
        tar, offset, size = self.index.resolve(relpath)
        uri = self._tar_uris.get((folder, tar))
        if uri is None:
            uri = self._tar_uris[(folder, tar)] = join_uri(folder, tar)
        member = relpath.split("/", 1)[1] if "/" in relpath else relpath
        return Ref(uri=uri, label=f"{uri}#{member}", start=offset, length=size)

    def resident(self, ref: Ref) -> bool:
        """True when ``ref`` can be read without a new request (its blocks are held or in flight)."""
        return self.blocks is not None and self.blocks.holds(ref.uri, ref.start or 0, ref.length or 0)

    def stats(self) -> SourceStats:
        """``{"blocks": ...}`` with block reads (see :meth:`BlockReader.stats`), else nothing."""
        return {"blocks": self.blocks.stats()} if self.blocks is not None else {}

    def _indexed_size(self, uri: str) -> int:
        """The size the index records for tar ``uri``."""
        # The index names tars by their path under the folder (possibly with '/'): the longest match.
        names = [name for name in self.index.shard_sizes if uri == name or uri.endswith("/" + name)]
        if not names:
            raise CorruptDataError(f"{uri}: shard index {self.index.source} has no size for this tar; "
                                   "re-run tools/upload_shards.py")
        return self.index.shard_sizes[max(names, key=len)]

    def _check_tar(self, storage: Storage, uri: str) -> int:
        """The tar's indexed size, once per process checked against the stored tar (one HEAD)."""
        self._check_process()
        checked = self._checked.get(uri)
        if checked is not None:
            return checked
        expected = self._indexed_size(uri)
        actual = storage.stat(uri).size
        if actual != expected:
            raise CorruptDataError(f"{uri} is {actual} bytes but shard index {self.index.source} says {expected}: "
                                   "the tar changed after indexing; re-run tools/upload_shards.py")
        self._checked[uri] = expected
        return expected

    def read(self, storage: Storage, ref: Ref) -> bytes:
        return self.read_many(storage, [ref])[0]

    def read_many(self, storage: Storage, refs: Sequence[Ref]) -> list[bytes]:
        """Read ``refs``: from blocks with block reads, else one ranged GET per run
        of members of one tar that lie within ``coalesce_gap`` bytes of each other."""
        if self.blocks is not None:
            return [self.blocks.read(storage, ref.uri, ref.start or 0, ref.length or 0,
                                     self._check_tar(storage, ref.uri)) for ref in refs]
        out: list[bytes | None] = [None] * len(refs)
        order = sorted(range(len(refs)), key=lambda i: (refs[i].uri, refs[i].start or 0))
        run: list[int] = []

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


class CachedSource(SampleSource):
    """Any source, with a local :class:`DiskCache` in front (keyed by URI + range).

    Every capability is the wrapped source's; the cache adds its ``cache`` stats.
    """

    def __init__(self, inner: SampleSource, cache: DiskCache) -> None:
        self.inner = inner
        self.cache = cache

    def __repr__(self) -> str:
        return f"CachedSource({self.inner!r}, {self.cache.root}, max {self.cache.max_bytes} bytes)"

    def locate(self, folder: str, relpath: str) -> Ref:
        return self.inner.locate(folder, relpath)

    def has_locality(self) -> bool:
        return self.inner.has_locality()

    def locality_of(self, ref: Ref) -> LocalityKey | None:
        return self.inner.locality_of(ref)

    def expect(self, ref: Ref) -> None:
        self.inner.expect(ref)

    def resident(self, ref: Ref) -> bool:
        return self.inner.resident(ref)

    def disk_cache(self) -> DiskCache | None:
        return self.cache

    def stats(self) -> SourceStats:
        return {**self.inner.stats(), "cache": self.cache.stats()}

    def read(self, storage: Storage, ref: Ref) -> bytes:
        return self.read_many(storage, [ref])[0]

    def read_many(self, storage: Storage, refs: Sequence[Ref]) -> list[bytes]:
        out: list[bytes | None] = [self.cache.get(ref.key) for ref in refs]
        missing = [i for i, data in enumerate(out) if data is None]
        if missing:
            fetched = self.inner.read_many(storage, [refs[i] for i in missing])
            for i, data in zip(missing, fetched):
                self.cache.put(refs[i].key, data)
                out[i] = data
        return [b if b is not None else b"" for b in out]


def build_source(storage: Storage, shard_index: str | None = None, cache_dir: os.PathLike | str | None = None,
                 cache_max_bytes: int | None = None, block_bytes: int = 0) -> SampleSource:
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
