"""A seekable, read-only file over an object, served by ranged reads.

``Storage.open(uri, "rb")`` returns one. Small reads (a zip reader's headers,
``torch.load``'s record lookups) come from a read-ahead block that starts at one
part and doubles while reads stay sequential, up to ``max_ahead`` (part size x
concurrency: 128 MiB at the defaults); a read of a block or more goes straight
into the caller's buffer (``readinto``: torch fills a tensor's storage this way,
with no copy), which the backend's ``fill`` splits into parallel ranged GETs.
Memory is the read-ahead block, never the object.
"""
from __future__ import annotations

import io
import os
from typing import Any, Callable, Optional

from blip3o_storage.errors import CorruptDataError

#: ``fill(offset, view)``: put the object's bytes ``offset .. offset+len(view)`` into ``view``, all of them.
Fill = Callable[[int, memoryview], None]


class ObjectChangedError(CorruptDataError):
    """The object was replaced while it was being read in parts (its ETag changed between
    ranged GETs): the bytes would be a mix of two versions, so none are returned."""


class RangeReader(io.RawIOBase):
    """Seekable reads of ``size`` bytes at ``uri`` through ``fill``."""

    def __init__(self, uri: str, size: int, fill: Fill, *, block_size: int, max_ahead: Optional[int] = None) -> None:
        super().__init__()
        self.uri = uri
        self.size = size
        self._fill = fill
        self._block = max(1, block_size)
        self._max_ahead = max(self._block, max_ahead or self._block)
        self._ahead = self._block
        self._pos = 0
        self._cache_start = 0
        self._cache: Optional[memoryview] = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self.closed:
            raise ValueError(f"{self.uri}: seek on a closed reader")
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence!r}")
        target = base + offset
        if target < 0:
            raise OSError(22, f"{self.uri}: negative seek position {target}")
        self._pos = target
        return target

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError(f"{self.uri}: read from a closed reader")
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        done = 0
        cache = self._cache
        if want and cache is not None and self._cache_start <= self._pos < self._cache_start + len(cache):
            at = self._pos - self._cache_start
            done = min(want, len(cache) - at)
            view[:done] = cache[at:at + done]
        rest = want - done
        if rest:
            at = self._pos + done
            if rest >= self._block:  # big: straight into the caller's buffer, in parallel parts
                self._fill(at, view[done:want])
            else:
                sequential = cache is not None and at == self._cache_start + len(cache)
                self._ahead = min(self._ahead * 2, self._max_ahead) if sequential else self._block
                self._cache = cache = None  # let the old block go before the new one is allocated
                block = memoryview(bytearray(min(self._ahead, self.size - at)))
                self._fill(at, block)
                self._cache_start, self._cache = at, block
                view[done:want] = block[:rest]
        self._pos += want
        return want

    def read(self, size: Optional[int] = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        buffer = bytearray(max(0, min(size, self.size - self._pos)))
        self.readinto(buffer)
        return bytes(buffer)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        self._cache = None
        super().close()
