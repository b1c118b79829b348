"""Parsing and joining of storage URIs.

Three forms are accepted, the same as OpenUni's closed client and mmengine:

* a local path (``/data/raw/x.jpg``, ``raw/x.jpg``, ``file:///data/x.jpg``);
* ``s3://bucket/key``: the default cluster of the config;
* ``cluster:s3://bucket/key``: a named cluster of a petreloss.conf.

Keys are kept exactly as written (spaces, ``+``, ``%``, ``#`` and unicode are
legal S3 key characters; botocore does the URL encoding), so no
percent-decoding happens here.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from blip3o_storage.errors import InvalidPathError

PathLike = Union[str, os.PathLike]

_S3_RE = re.compile(r"^(?:(?P<cluster>[A-Za-z0-9_.\-]+):)?s3://(?P<rest>.*)$", re.DOTALL)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class StorageURI:
    """A parsed location: either a local ``path`` or an S3 ``bucket``/``key``."""

    scheme: str  # "file" or "s3"
    path: str = ""
    bucket: str = ""
    key: str = ""
    cluster: Optional[str] = None

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    def __str__(self) -> str:
        if not self.is_s3:
            return self.path
        prefix = f"{self.cluster}:" if self.cluster else ""
        return f"{prefix}s3://{self.bucket}/{self.key}"


def is_s3_uri(uri: PathLike) -> bool:
    """True for ``s3://...`` and ``cluster:s3://...``."""
    return isinstance(uri, str) and _S3_RE.match(uri) is not None


def parse_uri(uri: PathLike) -> StorageURI:
    """Parse ``uri`` into a :class:`StorageURI`; raise InvalidPathError on
    unsupported schemes or an S3 URI without a bucket."""
    if isinstance(uri, os.PathLike):
        return StorageURI(scheme="file", path=os.fspath(uri))
    if not isinstance(uri, str):
        raise InvalidPathError(f"expected a path or URI string, got {type(uri).__name__}: {uri!r}")
    if not uri:
        raise InvalidPathError("empty path or URI")
    if "\x00" in uri:
        raise InvalidPathError(f"NUL byte in path or URI {uri!r}")
    match = _S3_RE.match(uri)
    if match:
        rest = match.group("rest")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise InvalidPathError(f"{uri!r}: S3 URI has no bucket; write s3://bucket/key")
        return StorageURI(scheme="s3", bucket=bucket, key=key, cluster=match.group("cluster"))
    if uri.startswith("file://"):
        return StorageURI(scheme="file", path=uri[len("file://"):])
    if _SCHEME_RE.match(uri):
        raise InvalidPathError(
            f"{uri!r}: unsupported scheme; use a local path, s3://bucket/key or cluster:s3://bucket/key")
    return StorageURI(scheme="file", path=uri)


def check_relpath(relpath: str, *, source: str = "relpath") -> str:
    """Validate a data.json-style relative path and return it normalised
    (``./`` segments removed, ``/`` separators).

    Rejects absolute paths, ``..`` components, empty names and backslashes so a
    sample can never read outside its folder.
    """
    if not isinstance(relpath, str) or not relpath:
        raise InvalidPathError(f"{source}: empty or non-string relative path {relpath!r}")
    if "\x00" in relpath:
        raise InvalidPathError(f"{source}: NUL byte in relative path {relpath!r}")
    if "\\" in relpath:
        raise InvalidPathError(f"{source}: backslash in relative path {relpath!r}; use '/' separators")
    if relpath.startswith("/") or re.match(r"^[A-Za-z]:", relpath) or _SCHEME_RE.match(relpath):
        raise InvalidPathError(
            f"{source}: {relpath!r} is absolute; data.json paths must be relative to the folder")
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InvalidPathError(f"{source}: {relpath!r} escapes its folder ('..'); fix the entry")
    if not parts:
        raise InvalidPathError(f"{source}: {relpath!r} names no file")
    return "/".join(parts)


def join_uri(folder: PathLike, relpath: str, *, source: str = "relpath") -> str:
    """Join ``folder`` (local path or S3 URI) and a validated relative path."""
    rel = check_relpath(relpath, source=source)
    folder_str = os.fspath(folder)
    if is_s3_uri(folder_str):
        parsed = parse_uri(folder_str)
        base = str(parsed).rstrip("/") if parsed.key else str(parsed)
        return f"{base}/{rel}" if parsed.key else f"{base}{rel}"
    return str(Path(folder_str) / PurePosixPath(rel))
