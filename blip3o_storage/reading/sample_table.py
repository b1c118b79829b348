"""A compact, read-only, fork- and rank-shareable table of data.json entries.

A list of dicts costs about 820 bytes per entry and, worse, every forked
DataLoader worker that indexes it writes to the pages of those objects
(reference counts), so each worker ends up with a private copy (issue #14:
410 MB per worker per 2M entries). Here the entries are packed in blocks of
:data:`BLOCK` entries, each zlib-compressed (level 1): the image paths and the
annotation paths as newline-joined columns (an annotation that is its image
with another extension is stored as that swap), captions msgpack'd, or, for a
file whose paths the exact parser normalised, the msgpack'd entries. With two
numpy arrays (block offsets, first entry of each block) that is a handful of
Python objects whatever the number of entries, so indexing in a worker
touches no shared page for writing. The buffer is either a ``bytes`` or a
read-only ``mmap`` of a table file (:mod:`blip3o_storage.reading.table_cache`),
which all ranks and workers of a node then share as page cache.

Measured (benchmarks/scale.py, make_data_json-shaped entries): 1,000,000
entries (70 MB of data.json) make a 2.4 MB table (0.035x), 10,000,000 a 24.3 MB
one; a forked worker reading all 10M entries grows by 3.7 MB of private memory.
A lookup in block order takes 3.7 us (the last decoded block is kept per
process), a random one 40-75 us (one block decoded).

File layout (little-endian): ``MAGIC`` (8 bytes), version, entries, blocks,
offsets position (4 x uint64), the blocks, then ``blocks + 1`` uint64 block
offsets from the start of the file and ``blocks + 1`` uint64 first entries
(written last, so a table is written in one pass, one block in memory).
"""
from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from operator import attrgetter
from typing import Any, BinaryIO, Union, overload

import msgspec
import numpy as np

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.data_json import Entry, Parsed, derive, derive_file, swap

__all__ = ["BLOCK", "FORMAT_VERSION", "SampleTable", "TableWriter"]

MAGIC = b"B3OTABLE"
FORMAT_VERSION = 2
BLOCK = 128  # entries per block: a random lookup decodes one (40-75 us); the table is 0.035x of the JSON
_HEADER = struct.Struct("<8sQQQQ")  # magic, version, entries, blocks, where the offsets start
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[dict[str, str]])
_CAPTIONS = msgspec.msgpack.Decoder(list[Union[str, None]])
# block kinds: path columns, image column + extension swap, msgpack'd entries (each + captions)
_COLUMNS, _DERIVED, _ENTRIES = b"C", b"D", b"M"


_GROUP = 64  # blocks compressed per task: ~25 us of task overhead each, not per block
_THREADS = max(1, min(4, os.cpu_count() or 1))  # zlib releases the GIL while it compresses


def _compress(payloads: list[bytes]) -> list[bytes]:
    return [zlib.compress(p, 1) for p in payloads]


def _payloads(parsed: Parsed) -> Iterator[tuple[bytes, int]]:
    """Each block's uncompressed payload and its number of entries."""
    columns, n = parsed.columns, parsed.count
    entries = parsed.entries if columns is None or parsed.captions else []
    captions = list(map(attrgetter("caption"), entries)) if columns is not None and parsed.captions else []
    with_captions = captions.count(msgspec.UNSET) != len(captions)
    if columns is not None:  # block boundaries as ints (numpy scalars index bytes slowly)
        bounds = list(range(0, n, BLOCK)) + [n]
        image_ends = columns[0].ends[bounds].tolist()
        annotation_ends = columns[1].ends[bounds].tolist()
        derived_file = (parsed.derived or derive_file(columns[0].data, columns[1].data)) if n else None
    for block, j in enumerate(range(0, n, BLOCK)):
        k = min(n, j + BLOCK)
        if columns is None:
            yield _ENTRIES + _ENCODER.encode(entries[j:k]), k - j
            continue
        images, annotations = columns
        image_col = images.data[image_ends[block] + 1:image_ends[block + 1]]
        annotation_col = b""
        derived = derived_file
        if derived is None:
            annotation_col = annotations.data[annotation_ends[block] + 1:annotation_ends[block + 1]]
            derived = derive(image_col, annotation_col)
        if derived is not None:  # annotation = image with another extension: stored as the two extensions
            parts = [_DERIVED, image_col, b"\0", derived]
        else:
            parts = [_COLUMNS, image_col, b"\0", annotation_col]
        if with_captions:
            parts += [b"\0", _ENCODER.encode([None if c is msgspec.UNSET else c for c in captions[j:k]])]
        yield b"".join(parts), k - j


Buffer = Union[bytes, mmap.mmap]


class TableWriter:
    """Streams entries into a table file (or an in-memory buffer) block by block: memory is one
    few groups of :data:`_GROUP` blocks plus two ints per block, however many entries are written.
    Groups are compressed by :data:`_THREADS` threads (zlib releases the GIL)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._offsets: list[int] = [_HEADER.size]
        self._starts: list[int] = [0]
        self.count = 0
        out.write(b"\0" * _HEADER.size)  # rewritten by close() once the counts are known

    def add(self, parsed: Parsed) -> None:
        """Add one data file's entries, in order (its last block may be short)."""
        group: list[bytes] = []
        sizes: list[int] = []
        pending: deque[tuple[Future[list[bytes]], list[int]]] = deque()
        if parsed.count <= 8 * BLOCK * _GROUP or _THREADS == 1:  # small: starting threads costs more
            payloads = list(_payloads(parsed))
            self._write_all(_compress([p for p, _ in payloads]), [n for _, n in payloads])
            return
        with ThreadPoolExecutor(_THREADS) as pool:
            for payload, size in _payloads(parsed):
                group.append(payload)
                sizes.append(size)
                if len(group) == _GROUP:
                    pending.append((pool.submit(_compress, group), sizes))
                    group, sizes = [], []
                    if len(pending) > 2 * _THREADS:  # a bounded window: a few groups in memory
                        self._write(*pending.popleft())
            if group:
                pending.append((pool.submit(_compress, group), sizes))
            while pending:
                self._write(*pending.popleft())

    def _write(self, future: Future[list[bytes]], sizes: list[int]) -> None:
        self._write_all(future.result(), sizes)

    def _write_all(self, blocks: list[bytes], sizes: list[int]) -> None:
        for data, size in zip(blocks, sizes):
            self._out.write(data)
            self._offsets.append(self._offsets[-1] + len(data))
            self.count += size
            self._starts.append(self.count)

    def close(self) -> None:
        """Write the last blocks, the block offsets and first entries after them, and the header."""
        n_blocks = len(self._offsets) - 1
        offsets_at = self._offsets[-1]
        self._out.write(np.asarray(self._offsets, dtype="<u8").tobytes())
        self._out.write(np.asarray(self._starts, dtype="<u8").tobytes())
        self._out.seek(0)
        self._out.write(_HEADER.pack(MAGIC, FORMAT_VERSION, self.count, n_blocks, offsets_at))


class SampleTable(Sequence[dict[str, str]]):
    """Read-only entries over a packed buffer; ``table[i]`` decodes one entry on demand."""

    def __init__(self, buf: Buffer, source: str = "<memory>", path: str | None = None) -> None:
        if len(buf) < _HEADER.size:
            raise CorruptDataError(f"sample table {source}: {len(buf)} bytes, shorter than its header")
        magic, version, count, n_blocks, offsets_at = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise CorruptDataError(f"sample table {source}: not a version-{FORMAT_VERSION} table "
                                   f"(magic {magic!r}, version {version}); delete it to rebuild")
        if offsets_at + 16 * (n_blocks + 1) != len(buf):
            raise CorruptDataError(f"sample table {source}: truncated or inconsistent "
                                   f"({len(buf)} bytes, {count} entries); delete it to rebuild")
        self._offsets = np.frombuffer(buf, dtype="<u8", count=n_blocks + 1, offset=offsets_at)
        self._starts = np.frombuffer(buf, dtype="<u8", count=n_blocks + 1, offset=offsets_at + 8 * (n_blocks + 1))
        if int(self._starts[-1]) != count or int(self._offsets[-1]) != offsets_at:
            raise CorruptDataError(f"sample table {source}: truncated or inconsistent "
                                   f"({len(buf)} bytes, {count} entries); delete it to rebuild")
        # Blocks of BLOCK entries (one data file, or files of whole blocks): entry i is in block
        # i // BLOCK. Else a binary search (with a uint64 key: an int key makes numpy cast the whole
        # array to float64 on every call, ~20 us a lookup at 1M entries).
        self._uniform = bool(np.array_equal(self._starts[:-1], np.arange(n_blocks, dtype=np.uint64) * BLOCK))
        self._buf = buf
        self._view = memoryview(buf)
        self._count = int(count)
        #: The file this table maps (None: an in-memory table).
        self.path = path
        self.source = source
        self._inode = -1
        self._cached: tuple[int, list[dict[str, str]]] = (-1, [])

    # -- construction ----------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> SampleTable:
        """Map the table file ``path`` read-only (shared with every process mapping it)."""
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            inode = os.fstat(f.fileno()).st_ino
        table = cls(buf, source=path, path=path)
        table._inode = inode
        return table

    @classmethod
    def from_entries(cls, entries: Sequence[Entry]) -> SampleTable:
        """An in-memory table (no file) of ``entries``."""
        import io

        out = io.BytesIO()
        writer = TableWriter(out)
        writer.add(Parsed(list(entries)))
        writer.close()
        return cls(out.getvalue())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # a pickled (spawned, deep-copied) table maps the same file again, or copies the bytes
        # (also when the file was pruned from the cache since: this process's mapping still holds it)
        if self.path is not None:
            try:
                if os.stat(self.path).st_ino == self._inode:
                    return (SampleTable.open, (self.path,))
            except FileNotFoundError:
                pass
        return (SampleTable, (bytes(self._buf), self.source))

    # -- reading ---------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the packed table (file size when mapped)."""
        return len(self._buf)

    def __len__(self) -> int:
        return self._count

    def _read_block(self, b: int) -> list[dict[str, str]]:
        start, end = int(self._offsets[b]), int(self._offsets[b + 1])
        try:
            raw = zlib.decompress(self._view[start:end])
            if raw[:1] == _ENTRIES:
                return _DECODER.decode(memoryview(raw)[1:])
            parts = raw[1:].split(b"\0", 2)
            images = parts[0].decode().split("\n")
            if raw[:1] == _DERIVED:
                old, _, new = parts[1].partition(b"/")
                parts[1] = (parts[0] + b"\n").replace(swap(old), swap(new))[:-1]
            annotations = parts[1].decode().split("\n")
            if len(parts) == 2:
                return [{"image": i, "annotation": a} for i, a in zip(images, annotations)]
            return [{"image": i, "annotation": a} if c is None else {"image": i, "annotation": a, "caption": c}
                    for i, a, c in zip(images, annotations, _CAPTIONS.decode(parts[2]))]
        except (zlib.error, msgspec.MsgspecError, UnicodeDecodeError, IndexError) as exc:
            raise CorruptDataError(f"sample table {self.source}: block {b} is corrupt ({exc}); "
                                   f"delete the file to rebuild it") from None

    def _decode_block(self, b: int) -> list[dict[str, str]]:
        if self._cached[0] != b:
            self._cached = (b, self._read_block(b))
        return self._cached[1]

    @overload
    def __getitem__(self, i: int) -> dict[str, str]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, str]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, str] | list[dict[str, str]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        n = self._count
        if not -n <= i < n:
            raise IndexError(f"entry {i} out of range for {n} entries")
        i %= n
        b = i // BLOCK if self._uniform else int(self._starts.searchsorted(np.uint64(i), side="right")) - 1
        return dict(self._decode_block(b)[i - int(self._starts[b])])  # a copy: callers may edit it

    def __iter__(self) -> Iterator[dict[str, str]]:
        for b in range(len(self._offsets) - 1):
            yield from self._read_block(b)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"SampleTable({self._count} entries, {self.nbytes} bytes, {where})"

