"""A compact, read-only, fork- and rank-shareable table of data.json entries.

A list of dicts costs about 820 bytes per entry and, worse, every forked
DataLoader worker that indexes it writes to the pages of those objects
(reference counts), so each worker ends up with a private copy (issue #14:
410 MB per worker per 2M entries). Here the entries are packed in blocks of
:data:`BLOCK` entries, each block msgpack-encoded and zlib-compressed (level
1), in one buffer, with one numpy array of block offsets: a handful of Python
objects whatever the number of entries, so indexing in a worker touches no
shared page for writing. The buffer is either a ``bytes`` or a read-only
``mmap`` of a table file (:mod:`blip3o_storage.reading.table_cache`), which all
ranks and workers of a node then share as page cache.

Measured on 1,000,000 make_data_json entries (73 MB of data.json): the table
is 5.6 MB (0.08x), a random lookup decodes one block in about 40 us, and
:class:`SampleTable` keeps the last block decoded per process, so sequential
reads (LocalitySampler) decode each block once.

File layout (little-endian): ``MAGIC`` (8 bytes), version, entries, block
size, blocks, offsets position (5 x uint64), the blocks, then ``blocks + 1``
uint64 block offsets from the start of the file (written last, so a table is
written in one pass, one block in memory).
"""
from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO, Union, overload

import msgspec
import numpy as np

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.data_json import Entry

__all__ = ["BLOCK", "FORMAT_VERSION", "SampleTable", "TableWriter"]

MAGIC = b"B3OTABLE"
FORMAT_VERSION = 1
BLOCK = 128  # entries per block: 128 keeps a lookup near 40 us and the table near 0.08x of the JSON
_HEADER = struct.Struct("<8sQQQQQ")
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[dict[str, str]])

Buffer = Union[bytes, mmap.mmap]


class TableWriter:
    """Streams entries into a table file (or an in-memory buffer) block by block: memory is one
    block plus one offset per block, however many entries are written."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending: list[Entry] = []
        self._offsets: list[int] = [_HEADER.size]
        self.count = 0
        out.write(b"\0" * _HEADER.size)  # rewritten by close() once the counts are known

    def extend(self, entries: Iterable[Entry]) -> None:
        """Add ``entries`` in order."""
        pending = self._pending
        for entry in entries:
            pending.append(entry)
            if len(pending) == BLOCK:
                self._write_block(pending)
                pending.clear()

    def add_list(self, entries: Sequence[Entry]) -> None:
        """Add a list of entries (slices whole blocks out of it: faster than :meth:`extend`)."""
        start = 0
        if self._pending:
            start = min(BLOCK - len(self._pending), len(entries))
            self.extend(entries[:start])
        full_end = start + (len(entries) - start) // BLOCK * BLOCK
        for j in range(start, full_end, BLOCK):
            self._write_block(entries[j:j + BLOCK])
        self.extend(entries[full_end:])

    def _write_block(self, block: Sequence[Entry]) -> None:
        data = zlib.compress(_ENCODER.encode(block), 1)
        self._out.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self.count += len(block)

    def close(self) -> None:
        """Write the last block, the offsets after the blocks, and the header."""
        if self._pending:
            self._write_block(self._pending)
            self._pending = []
        n_blocks = len(self._offsets) - 1
        offsets_at = self._offsets[-1]
        self._out.write(np.asarray(self._offsets, dtype="<u8").tobytes())
        self._out.seek(0)
        self._out.write(_HEADER.pack(MAGIC, FORMAT_VERSION, self.count, BLOCK, n_blocks, offsets_at))


class SampleTable(Sequence[dict[str, str]]):
    """Read-only entries over a packed buffer; ``table[i]`` decodes one entry on demand."""

    def __init__(self, buf: Buffer, source: str = "<memory>", path: str | None = None) -> None:
        if len(buf) < _HEADER.size:
            raise CorruptDataError(f"sample table {source}: {len(buf)} bytes, shorter than its header")
        magic, version, count, block, n_blocks, offsets_at = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != FORMAT_VERSION:
            raise CorruptDataError(f"sample table {source}: not a version-{FORMAT_VERSION} table "
                                   f"(magic {magic!r}, version {version}); delete it to rebuild")
        if (offsets_at + 8 * (n_blocks + 1) != len(buf) or block < 1
                or -(-count // block) != n_blocks):
            raise CorruptDataError(f"sample table {source}: truncated or inconsistent "
                                   f"({len(buf)} bytes, {count} entries); delete it to rebuild")
        self._offsets = np.frombuffer(buf, dtype="<u8", count=n_blocks + 1, offset=offsets_at)
        self._buf = buf
        self._view = memoryview(buf)
        self._count = int(count)
        self._block = int(block)
        #: The file this table maps (None: an in-memory table).
        self.path = path
        self.source = source
        self._cached: tuple[int, list[dict[str, str]]] = (-1, [])

    # -- construction ----------------------------------------------------------
    @classmethod
    def open(cls, path: str) -> SampleTable:
        """Map the table file ``path`` read-only (shared with every process mapping it)."""
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(buf, source=path, path=path)

    @classmethod
    def from_entries(cls, entries: Sequence[Entry]) -> SampleTable:
        """An in-memory table (no file) of ``entries``."""
        import io

        out = io.BytesIO()
        writer = TableWriter(out)
        writer.add_list(entries)
        writer.close()
        return cls(out.getvalue())

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # a pickled (spawned, deep-copied) table maps the same file again, or copies the bytes
        if self.path is not None:
            return (SampleTable.open, (self.path,))
        return (SampleTable, (bytes(self._buf), self.source))

    # -- reading ---------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the packed table (file size when mapped)."""
        return len(self._buf)

    def __len__(self) -> int:
        return self._count

    def _decode_block(self, b: int) -> list[dict[str, str]]:
        if self._cached[0] == b:
            return self._cached[1]
        start, end = int(self._offsets[b]), int(self._offsets[b + 1])
        try:
            entries = _DECODER.decode(zlib.decompress(self._view[start:end]))
        except (zlib.error, msgspec.MsgspecError) as exc:
            raise CorruptDataError(f"sample table {self.source}: block {b} is corrupt ({exc}); "
                                   f"delete the file to rebuild it") from None
        self._cached = (b, entries)
        return entries

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
        return dict(self._decode_block(i // self._block)[i % self._block])  # a copy: callers may edit it

    def __iter__(self) -> Iterator[dict[str, str]]:
        for b in range(len(self._offsets) - 1):
            start, end = int(self._offsets[b]), int(self._offsets[b + 1])
            yield from _DECODER.decode(zlib.decompress(self._view[start:end]))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = self.path or "memory"
        return f"SampleTable({self._count} entries, {self.nbytes} bytes, {where})"

