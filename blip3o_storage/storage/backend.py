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
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Optional

from blip3o_storage.errors import InvalidPathError, ObjectNotFoundError, StorageError


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
