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
"""
from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

logger = logging.getLogger(__name__)

_MAGIC = b"B3OC1\0"
_HEADER = struct.Struct(f"<{len(_MAGIC)}sQ16s")  # magic, length, blake2b-128 of the data
_TMP_DIR = "tmp"
_STALE_TMP_SECONDS = 3600.0
_LOW_WATERMARK = 0.9


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class DiskCache:
    """``get(key) -> bytes | None`` / ``put(key, data)`` under ``root``, total <= ``max_bytes``.

    Picklable: only the folder and the bound travel; counters and the size
    estimate are per process.
    """

    def __init__(self, root: os.PathLike | str, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be > 0, not {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._estimate: Optional[int] = None  # bytes in the folder as of our last scan + our writes
        self.hits = self.misses = self.evictions = self.puts = self.corrupt = 0

    def __getstate__(self) -> Dict[str, Any]:
        return {"root": self.root, "max_bytes": self.max_bytes}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.root, self.max_bytes = state["root"], state["max_bytes"]
        self._reset()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: counters and lock belong to the parent
            self._reset()

    def path_for(self, key: str) -> Path:
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / name[:2] / name

    def stats(self) -> Dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "puts": self.puts,
                "corrupt": self.corrupt}

    # -- reads --------------------------------------------------------------
    def get(self, key: str) -> Optional[bytes]:
        """The cached bytes of ``key``, or None (missing, unreadable or failing its check)."""
        self._check_pid()
        path = self.path_for(key)
        try:
            with open(path, "rb") as fh:
                blob = fh.read()
        except OSError:
            with self._lock:
                self.misses += 1
            return None
        data = self._unpack(blob)
        if data is None:
            logger.warning("disk cache: %s failed its check; removing it", path)
            try:
                path.unlink()
            except OSError:
                pass
            with self._lock:
                self.corrupt += 1
                self.misses += 1
            return None
        try:
            os.utime(path)  # LRU: a hit makes the entry young again
        except OSError:
            pass  # evicted by another process meanwhile: we still have the bytes
        with self._lock:
            self.hits += 1
        return data

    @staticmethod
    def _unpack(blob: bytes) -> Optional[bytes]:
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
        self._check_pid()
        total = _HEADER.size + len(data)
        if total > self.max_bytes * _LOW_WATERMARK:
            return False
        path = self.path_for(key)
        tmp_dir = self.root / _TMP_DIR
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
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
        with self._lock:
            self.puts += 1
            if self._estimate is None:
                self._estimate = self._scan_total()
            else:
                self._estimate += total
            over = self._estimate > self.max_bytes
        if over:
            self.evict()
        return True

    def _entries(self) -> List[Tuple[float, int, Path]]:
        """(mtime, size, path) of every entry; removes temp files of crashed writers."""
        out: List[Tuple[float, int, Path]] = []
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
        with self._lock:
            self.evictions += removed
            self._estimate = total
        return removed
