"""Local filesystem backend: same protocol as S3, for dev and fallback."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from types import TracebackType
from typing import BinaryIO, Callable, Iterator, Literal, Optional

from blip3o_storage.errors import AccessDeniedError, InvalidPathError, ObjectNotFoundError, StorageError
from blip3o_storage.storage.backend import LocalPath, ObjectInfo, StorageBackend, write_atomically
from blip3o_storage.storage.object_writer import ObjectWriter
from blip3o_storage.storage.uri import parse_uri


class PathTooLongError(InvalidPathError):
    """The local file system cannot name this path (ENAMETOOLONG): a component
    over its name limit (255 bytes on ext4/xfs/btrfs) or the whole path over
    PATH_MAX (4096). The same relpath can be a valid S3 key (up to 1024 bytes),
    so this is only raised by local reads, not checked in data.json."""


def _name_too_long(path: str, action: str) -> PathTooLongError:
    """The error for ENAMETOOLONG on ``path``, with the limits of the file system it is on."""
    parent = os.path.dirname(os.path.abspath(path)) or "/"
    while not os.path.isdir(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    try:
        name_max, path_max = os.pathconf(parent, "PC_NAME_MAX"), os.pathconf(parent, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in path.split(os.sep)), default=0)
    what = (f"a component is {longest} bytes, over the file system's {name_max}-byte name limit"
            if longest > name_max else f"the path is over the {path_max}-byte path limit")
    return PathTooLongError(f"{path}: name too long for the local file system ({action}): {what}; "
                            f"shorten the data.json entry or rename the file")


def _path(uri: str) -> str:
    parsed = parse_uri(uri)
    if parsed.is_s3:
        raise InvalidPathError(f"{uri!r} is an S3 URI; the local backend takes paths")
    return parsed.path


class _mapped_os_errors:
    """Context manager turning OSError into the package hierarchy, naming the path."""

    def __init__(self, path: str, action: str) -> None:
        self.path, self.action = path, action

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Optional[TracebackType]
                 ) -> Literal[False]:
        if exc is None or isinstance(exc, StorageError) or not isinstance(exc, OSError):
            return False
        if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise ObjectNotFoundError(f"{self.path}: no such file ({self.action})") from exc
        if isinstance(exc, PermissionError):
            raise AccessDeniedError(f"{self.path}: permission denied ({self.action})") from exc
        if exc.errno == errno.ENAMETOOLONG:
            raise _name_too_long(self.path, self.action) from exc
        if isinstance(exc, IsADirectoryError):
            raise ObjectNotFoundError(f"{self.path}: is a directory, not a file ({self.action})") from exc
        raise StorageError(f"{self.path}: {self.action} failed: {exc.strerror or exc}") from exc


class LocalBackend(StorageBackend):
    """Reads and writes plain files. ``put`` is atomic (temp file + rename)."""

    def get(self, uri: str) -> bytes:
        path = _path(uri)
        with _mapped_os_errors(path, "read"), open(path, "rb") as fh:
            return fh.read()

    def _get_range(self, uri: str, start: int, length: int) -> bytes:
        path = _path(uri)
        with _mapped_os_errors(path, "ranged read"), open(path, "rb") as fh:
            fh.seek(start)
            return fh.read(length)

    def exists(self, uri: str) -> bool:
        """One ``stat`` call (the default would make two)."""
        return os.path.exists(_path(uri))

    def isfile(self, uri: str) -> bool:
        return os.path.isfile(_path(uri))

    def isdir(self, uri: str) -> bool:
        return os.path.isdir(_path(uri))

    def stat(self, uri: str) -> ObjectInfo:
        path = _path(uri)
        with _mapped_os_errors(path, "stat"):
            st = os.stat(path)
        return ObjectInfo(key=path, size=st.st_size, mtime=st.st_mtime, is_dir=os.path.isdir(path))

    def put(self, uri: str, data: bytes, content_type: Optional[str] = None) -> None:
        """Write ``data`` through a temp file in the same folder, renamed into place; no ETag."""
        def fill(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(data)
        _atomic_file(_path(uri), "write", fill)

    def list(self, uri: str, recursive: bool = True) -> Iterator[ObjectInfo]:
        root = _path(uri)
        if not os.path.isdir(root):
            return
        if not recursive:
            with _mapped_os_errors(root, "list"):
                entries = sorted(os.scandir(root), key=lambda e: e.name)
            for entry in entries:
                if entry.is_dir():
                    yield ObjectInfo(key=entry.name + "/", size=0, is_dir=True)
                else:
                    st = entry.stat()
                    yield ObjectInfo(key=entry.name, size=st.st_size, mtime=st.st_mtime)
            return
        found = []
        for dirpath, _dirnames, filenames in os.walk(root):
            rel_dir = os.path.relpath(dirpath, root)
            for name in filenames:
                st = os.stat(os.path.join(dirpath, name))
                rel = name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}"
                found.append(ObjectInfo(key=rel, size=st.st_size, mtime=st.st_mtime))
        # S3 lists in UTF-8 byte order; match it so callers see one order everywhere.
        found.sort(key=lambda info: info.key.encode("utf-8"))
        yield from found

    def delete(self, uri: str) -> None:
        """Remove a file; a missing file is not an error (as S3 DeleteObject)."""
        path = _path(uri)
        with _mapped_os_errors(path, "delete"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- large objects: plain files, streamed -----------------------------
    def open_read(self, uri: str) -> BinaryIO:
        """The file itself, opened for binary reading."""
        path = _path(uri)
        with _mapped_os_errors(path, "open for reading"):
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            return open(path, "rb")

    def open_write(self, uri: str, content_type: Optional[str] = None) -> ObjectWriter:
        """A temp file in the destination folder, renamed into place on close (removed on abort)."""
        return LocalFileWriter(_path(uri))

    def put_file(self, uri: str, local_path: LocalPath, content_type: Optional[str] = None) -> None:
        """Copy ``local_path`` to ``uri`` (temp file + rename; never read whole)."""
        source = os.fspath(local_path)
        _copy_atomically(source, _path(uri), "upload", source)

    def get_file(self, uri: str, local_path: LocalPath) -> None:
        """Copy the file ``uri`` to ``local_path`` (temp file + rename)."""
        path = _path(uri)
        _copy_atomically(path, os.fspath(local_path), "download", path)

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """``shutil.copyfile`` semantics, atomically, creating the destination's folders (as ``put``)."""
        source = _path(src_uri)
        _copy_atomically(source, _path(dst_uri), "copy", source)


def _atomic_file(path: str, action: str, fill: Callable[[str], None]) -> None:
    """``fill(tmp)`` a temp file in ``path``'s folder (created), then rename it to ``path``; no temp left on failure."""
    with _mapped_os_errors(path, action):
        write_atomically(path, fill)


def _copy_atomically(source: str, destination: str, action: str, missing: str) -> None:
    """Copy ``source`` to ``destination`` through a temp file; ObjectNotFoundError naming ``missing``."""
    with _mapped_os_errors(missing, action):
        if os.path.isdir(source):
            raise IsADirectoryError(errno.EISDIR, "is a directory", source)
        with open(source, "rb"):
            pass
    def fill(tmp: str) -> None:
        shutil.copyfile(source, tmp)
    _atomic_file(destination, action, fill)


class LocalFileWriter(ObjectWriter):
    """Writes a temp file next to ``path``; ``close`` renames it into place, ``abort`` removes it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        directory = os.path.dirname(os.path.abspath(path))
        with _mapped_os_errors(path, "open for writing"):
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            os.makedirs(directory, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        self._fh: Optional[BinaryIO] = os.fdopen(fd, "wb")

    def _write(self, view: memoryview) -> None:
        assert self._fh is not None
        with _mapped_os_errors(self.uri, "write"):
            self._fh.write(view)

    def _commit(self) -> None:
        assert self._fh is not None
        with _mapped_os_errors(self.uri, "write"):
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.uri)

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)
