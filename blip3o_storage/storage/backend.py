"""The one backend contract: an abstract base class with the primitives every
store implements and the methods written once on top of them.

Shaped like mmengine's ``BaseStorageBackend`` and fsspec's
``AbstractFileSystem``: a backend implements the byte-level primitives
(:meth:`~StorageBackend.get`, :meth:`~StorageBackend._get_range`,
:meth:`~StorageBackend.stat`, :meth:`~StorageBackend.put`,
:meth:`~StorageBackend.list`, :meth:`~StorageBackend.delete`,
:meth:`~StorageBackend.isdir`); text decoding, the range argument checks and
the ``isfile``/``exists`` defaults live here, once. A backend may override a
default with something cheaper for its store (a local ``exists`` is one
``stat`` call), never with other semantics.

The large-object methods (``open_read``, ``open_write``, ``put_file``,
``get_file``, ``copy``) have simple defaults on the primitives here (whole
objects in memory); ``LocalBackend`` and ``S3Backend`` override them with
streaming versions whose memory does not grow with the object.
"""
from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Optional, Union, cast

from blip3o_storage.errors import CorruptDataError, InvalidPathError, ObjectNotFoundError, StorageError
from blip3o_storage.storage.object_writer import BufferedPutWriter, ObjectWriter
from blip3o_storage.storage.range_reader import RangeReader

LocalPath = Union[str, "os.PathLike[str]"]
#: Read-ahead block of the default ``open_read`` (one ranged read per 8 MiB of sequential reads).
DEFAULT_READ_BLOCK = 8 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one object or file. ``key`` is relative to the listed prefix
    for :meth:`StorageBackend.list` results, else the full key/path."""

    key: str
    size: int
    etag: Optional[str] = None  # S3 ETag without quotes; None for local files
    mtime: Optional[float] = None
    is_dir: bool = False


def decode_text(data: bytes, uri: str, encoding: str = "utf-8") -> str:
    """``data`` decoded as ``encoding``; StorageError naming ``uri`` and the bad byte if it is not."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise StorageError(f"{uri}: not valid {encoding} text ({exc.reason} at byte {exc.start})") from None


def check_range(uri: str, start: int, length: int) -> None:
    """InvalidPathError naming ``uri`` unless ``start`` and ``length`` are non-negative."""
    if start < 0 or length < 0:
        raise InvalidPathError(f"{uri}: invalid range start={start} length={length}")


def write_atomically(path: str, fill: Callable[[str], None]) -> None:
    """Create ``path``'s folder, ``fill(tmp)`` a temp file beside it, then rename it to ``path``:
    a reader never sees half a file, and no temp file is left on any failure (Ctrl-C included).
    The one temp-and-rename of the storage layer (local writes, downloads, copies)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise



class StorageBackend(ABC):
    """Byte-level access to one kind of store. URIs are full strings
    (a local path or ``[cluster:]s3://bucket/key``).

    Errors are the package's (:mod:`blip3o_storage.errors`): a missing object
    is :class:`~blip3o_storage.errors.ObjectNotFoundError` (also a
    ``FileNotFoundError``), and so on, each naming the URI.
    """

    # -- primitives: every backend implements these ----------------------
    @abstractmethod
    def get(self, uri: str) -> bytes:
        """The whole object's bytes."""

    @abstractmethod
    def _get_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` (> 0) bytes from ``start`` (>= 0), fewer where the object ends;
        called by :meth:`get_range` after the argument checks."""

    @abstractmethod
    def stat(self, uri: str) -> ObjectInfo:
        """Size, ETag and mtime of one object (``key`` is the full key/path)."""

    @abstractmethod
    def put(self, uri: str, data: bytes, content_type: Optional[str] = None) -> Optional[str]:
        """Write ``data`` as the whole object, atomically; the stored ETag where the store has one."""

    @abstractmethod
    def list(self, uri: str, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Entries under the folder/prefix ``uri``, keys relative to it, in UTF-8 byte order;
        without ``recursive``, sub-folders once each (``is_dir``, key ending in '/')."""

    @abstractmethod
    def delete(self, uri: str) -> None:
        """Remove one object; a missing one is not an error (as S3 DeleteObject)."""

    @abstractmethod
    def isdir(self, uri: str) -> bool:
        """True if ``uri`` is a folder (for S3: a prefix with at least one object under it)."""

    # -- written once, on the primitives ---------------------------------
    def get_text(self, uri: str, encoding: str = "utf-8") -> str:
        """The object decoded as ``encoding``; StorageError naming ``uri`` if it is not such text."""
        return decode_text(self.get(uri), uri, encoding)

    def get_range(self, uri: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer where the object ends); ``length`` 0 is ``b""``.
        A negative ``start`` or ``length`` is an InvalidPathError."""
        check_range(uri, start, length)
        if length == 0:
            return b""
        return self._get_range(uri, start, length)

    def isfile(self, uri: str) -> bool:
        """True if ``uri`` is an object (a file), not a folder; False if missing."""
        try:
            return not self.stat(uri).is_dir
        except ObjectNotFoundError:
            return False

    def exists(self, uri: str) -> bool:
        """True for an object or a folder (for S3: a prefix with objects under it)."""
        return self.isfile(uri) or self.isdir(uri)

    # -- large objects: defaults on the primitives ------------------------
    def open_read(self, uri: str) -> BinaryIO:
        """A seekable binary reader of the object (``read``/``readinto``/``seek``/``tell``);
        it works as the file of ``torch.load``. Default: ranged reads with read-ahead."""
        info = self.stat(uri)
        if info.is_dir:
            raise ObjectNotFoundError(f"{uri}: is a folder, not an object (open for reading)")

        def fill(start: int, view: memoryview) -> None:
            data = self.get_range(uri, start, len(view))
            if len(data) != len(view):
                raise CorruptDataError(f"{uri}: asked for {len(view)} bytes at {start}, got {len(data)} "
                                       f"(the object is shorter than when it was opened?)")
            view[:] = data
        return cast(BinaryIO, RangeReader(uri, info.size, fill, block_size=DEFAULT_READ_BLOCK))

    def open_write(self, uri: str, content_type: Optional[str] = None) -> ObjectWriter:
        """A binary writer whose bytes become the object on ``close()``; nothing is visible at ``uri``
        before, and ``abort()`` or an exception inside ``with`` leaves nothing. Default: one ``put``."""
        return BufferedPutWriter(uri, lambda data: self.put(uri, data, content_type))

    def put_file(self, uri: str, local_path: LocalPath, content_type: Optional[str] = None) -> Optional[str]:
        """Upload the local file ``local_path`` as ``uri``; the stored ETag where the store has one."""
        path = os.fspath(local_path)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file (upload to {uri})") from None
        return self.put(uri, data, content_type)

    def get_file(self, uri: str, local_path: LocalPath) -> None:
        """Download ``uri`` to ``local_path`` (folders created) through a temp file renamed into place."""
        data = self.get(uri)

        def fill(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)
        write_atomically(os.fspath(local_path), fill)

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Copy one object to another URI of this backend."""
        self.put(dst_uri, self.get(src_uri))
