"""The one small protocol every backend implements, and its value types."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Protocol, runtime_checkable

from blip3o_storage.errors import StorageError


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


@runtime_checkable
class StorageBackend(Protocol):
    """Byte-level access to one kind of store. URIs are full strings
    (a local path or ``[cluster:]s3://bucket/key``)."""

    def get(self, uri: str) -> bytes: ...

    def get_text(self, uri: str, encoding: str = "utf-8") -> str: ...

    def get_range(self, uri: str, start: int, length: int) -> bytes: ...

    def exists(self, uri: str) -> bool: ...

    def isdir(self, uri: str) -> bool: ...

    def stat(self, uri: str) -> ObjectInfo: ...

    def put(self, uri: str, data: bytes, content_type: Optional[str] = None) -> None: ...

    def list(self, uri: str, recursive: bool = True) -> Iterator[ObjectInfo]: ...

    def delete(self, uri: str) -> None: ...
