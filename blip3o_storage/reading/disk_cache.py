"""A size-bounded local disk cache for sample bytes, safe across processes.

Why: the second epoch of a remote dataset should not pay the network again,
but a node's disk is finite and several DataLoader workers (processes) fill
the cache at once. So:

* entries are content-addressed (``sha256(key)``; the key names URI + byte
  range), so two writers of one key write the same bytes;
* writes go to a private temp file that is ``os.replace``-d into place: a
  reader sees the old file, the new file or none, never half of one;
* each file carries a header (magic, length, BLAKE2b digest) checked on read,
  so a torn or foreign file is a miss (and removed), never wrong bytes;
* LRU-ish eviction: a hit bumps the file's mtime; when this process's
  estimate of the total passes ``max_bytes`` it rescans the folder and
  deletes oldest-first down to 90 % of ``max_bytes``. The estimate is exact
  after each scan; other processes' writes since then are seen at the next
  scan, so the folder can briefly exceed the bound by what the other workers
  wrote in the meantime (each of them enforces it too).

Trust: whoever can write the folder can plant training data (entry names are
``sha256(key)`` of predictable keys, and the BLAKE2b check is not keyed), so
the folder must be this user's and not writable by group or others
(``ConfigError`` otherwise; a new folder is made ``0700``). Inside it nothing
is followed: an entry or shard folder that is a symlink (or not a regular
file/folder, or not ours) is refused, counted in ``refused``, and removed.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import struct
import tempfile
import threading
import time
from pathlib import Path

from blip3o_storage.errors import ConfigError
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.stats import Counters

logger = logging.getLogger(__name__)

_MAGIC = b"B3OC1\0"
_HEADER = struct.Struct(f"<{len(_MAGIC)}sQ16s")  # magic, length, blake2b-128 of the data
_TMP_DIR = "tmp"
_STALE_TMP_SECONDS = 3600.0
_LOW_WATERMARK = 0.9
_DIR_MODE = 0o700  # the cache holds training data: only its owner may read or plant it
#: open() flags for a cache entry or shard folder: never through a symlink; O_NONBLOCK so a
#: planted FIFO cannot hang a DataLoader worker in open() (it is refused by fstat right after).
_NOFOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def check_cache_root(root: Path) -> None:
    """Create ``root`` (``0700``) if missing; ConfigError unless it is a folder owned by
    this user that neither group nor others can write.

    Group-writable is refused like world-writable: every member of the group could
    plant entries, and the sticky bit does not help (it stops deleting others' files,
    not creating the missing, predictably named ones). ``root`` itself may be a
    symlink the user configured (e.g. to scratch): its target is checked.
    """
    try:
        root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        st = root.stat()
    except OSError as exc:
        raise ConfigError(f"cache_dir {root}: cannot create or read it ({exc.strerror or exc}); "
                          f"pick a folder you can write") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cache_dir {root} is not a folder; point cache_dir at a folder of your own")
    euid = os.geteuid()
    if st.st_uid != euid:
        raise ConfigError(f"cache_dir {root} is owned by uid {st.st_uid}, not by this process (uid {euid}): "
                          f"whoever owns it can plant training data there; use a folder of your own, or "
                          f"`chown {euid} {root}` if it is yours")
    mode = stat.S_IMODE(st.st_mode)
    who = ("others" if mode & stat.S_IWOTH else "its group") if mode & (stat.S_IWOTH | stat.S_IWGRP) else None
    if who is not None:
        raise ConfigError(f"cache_dir {root} is writable by {who} (mode {mode:04o}): anyone who can write "
                          f"there can plant training data; run `chmod go-w {root}` or use a private folder")


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


_COUNTERS = ("hits", "misses", "evictions", "puts", "corrupt", "refused")


class DiskCache(ProcessLocal):
    """``get(key) -> bytes | None`` / ``put(key, data)`` under ``root``, total <= ``max_bytes``.

    Picklable: only the folder and the bound travel; counters and the size
    estimate are per process.
    """

    _process_state = ("_lock", "_estimate", "_counters")

    def __init__(self, root: os.PathLike | str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be > 0, not {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        check_cache_root(self.root)
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()  # guards the estimate
        self._estimate: int | None = None  # bytes in the folder as of our last scan + our writes
        self._counters = Counters(_COUNTERS)

    def path_for(self, key: str) -> Path:
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / name[:2] / name

    def stats(self) -> dict[str, int]:
        """This process's counters: hits, misses, evictions, puts, corrupt (failed their check), refused."""
        self._check_process()
        return {name: self._counters[name] for name in _COUNTERS}

    def _refuse(self, path: Path, why: str) -> None:
        """Count and remove a planted entry (a symlink is removed, not what it points at)."""
        logger.warning("disk cache: %s is %s; not following it, removing it", path, why)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass
        self._counters.add(refused=1)

    def _open_dir(self, path: Path) -> int | None:
        """An fd of the real folder ``path`` (not a symlink, ours), None if missing or refused."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self._refuse(path, "a symlink or not a folder")
            return None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.close(fd)
            self._refuse(path, f"owned by uid {st.st_uid}")
            return None
        return fd

    def _read_entry(self, path: Path) -> bytes | None:
        """The raw file at ``path``, opened without following any symlink below ``root``."""
        dir_fd = self._open_dir(path.parent)
        if dir_fd is None:
            return None
        try:
            fd = os.open(path.name, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse(path, "a symlink")
            return None
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                self._refuse(path, "not a regular file of this user")
                return None
            return fh.read()

    def _real_dir(self, path: Path) -> bool:
        """Make ``path`` (0700) if missing; False (refused) if it is a symlink or not ours."""
        try:
            path.mkdir(mode=_DIR_MODE, exist_ok=True)
        except FileExistsError:
            pass  # a symlink to nowhere, a file: refused below
        except OSError as exc:  # e.g. the cache folder was removed, the disk is read-only
            logger.warning("disk cache: cannot create %s (%s); continuing without caching", path, exc)
            return False
        try:
            st = os.lstat(path)
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            self._refuse(path, "a symlink or not a folder of this user")
            return False
        return True

    # -- reads --------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        """The cached bytes of ``key``, or None (missing, unreadable or failing its check)."""
        self._check_process()
        path = self.path_for(key)
        try:
            blob = self._read_entry(path)
        except OSError:
            blob = None
        if blob is None:
            self._counters.add(misses=1)
            return None
        data = self._unpack(blob)
        if data is None:
            logger.warning("disk cache: %s failed its check; removing it", path)
            try:
                path.unlink()
            except OSError:
                pass
            self._counters.add(corrupt=1, misses=1)
            return None
        try:
            os.utime(path, follow_symlinks=False)  # LRU: a hit makes the entry young again
        except OSError:
            pass  # evicted by another process meanwhile: we still have the bytes
        self._counters.add(hits=1)
        return data

    @staticmethod
    def _unpack(blob: bytes) -> bytes | None:
        if len(blob) < _HEADER.size:
            return None
        magic, length, digest = _HEADER.unpack_from(blob)
        data = blob[_HEADER.size:]
        if magic != _MAGIC or length != len(data) or digest != _digest(data):
            return None
        return data

    # -- writes -------------------------------------------------------------
    def put(self, key: str, data: bytes) -> bool:
        """Store ``data`` (atomically); False when it cannot fit or the disk refuses."""
        self._check_process()
        total = _HEADER.size + len(data)
        if total > self.max_bytes * _LOW_WATERMARK:
            return False
        path = self.path_for(key)
        tmp_dir = self.root / _TMP_DIR
        if not (self._real_dir(tmp_dir) and self._real_dir(path.parent)):
            return False
        try:
            fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=f"{path.name[:16]}.{os.getpid()}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(_HEADER.pack(_MAGIC, len(data), _digest(data)))
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            logger.warning("disk cache: cannot write %s (%s); continuing without caching it", path, exc)
            return False
        self._counters.add(puts=1)
        with self._lock:
            if self._estimate is None:
                self._estimate = self._scan_total()
            else:
                self._estimate += total
            over = self._estimate > self.max_bytes
        if over:
            self.evict()
        return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every entry; removes temp files of crashed writers."""
        out: list[tuple[float, int, Path]] = []
        if not self.root.is_dir():
            return out
        now = time.time()
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if sub.name == _TMP_DIR:
                    if now - st.st_mtime > _STALE_TMP_SECONDS:
                        try:
                            os.unlink(entry.path)
                        except OSError:
                            pass
                    continue
                out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def total_bytes(self) -> int:
        """Bytes the entries take now (a fresh scan)."""
        return self._scan_total()

    def evict(self) -> int:
        """Delete oldest entries until the total is <= 90 % of max_bytes; returns how many."""
        entries = sorted(self._entries(), key=lambda e: e[0])
        total = sum(size for _, size, _ in entries)
        target = int(self.max_bytes * _LOW_WATERMARK)
        removed = 0
        for _, size, path in entries:
            if total <= target:
                break
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass  # another process evicted it: the bytes are gone either way
            except OSError:
                continue
            total -= size
        self._check_process()
        self._counters.add(evictions=removed)
        with self._lock:
            self._estimate = total
        return removed
