"""The local upload manifest: what ``tools/upload.py`` already hashed, so a re-run does not hash again.

One manifest per target (endpoint, bucket, prefix, resolved source folder) in
:func:`manifest_dir` (``$BLIP3O_UPLOAD_MANIFEST_DIR``, else
``$XDG_CACHE_HOME/blip3o-storage/upload-manifests``, else
``~/.cache/blip3o-storage/upload-manifests``; never inside the source folder, which
is the dataset). It records, per file, its relative path, size, mtime_ns,
ctime_ns and inode and the MD5 / multipart ETag of those bytes. On a re-run a
file whose four stat fields are all unchanged takes its ETag from here instead
of being read and hashed (the no-op re-upload hashed every file: 40% of its CPU
at 3,301 files, docs/perf16-profile.md); any change (a rewrite with the same size
and a restored mtime still changes ctime, which a writer cannot set back;
a replaced file changes the inode) means hashing again. It is only a local hash
cache: the store is still listed, and a key missing there or with another
size/ETag is uploaded again whatever the manifest says.

Format: text, one line per file ``relpath\\tsize\\tmtime_ns\\tctime_ns\\tinode\\tetag``
sorted by relpath (the order of keys in an S3 LIST, so the upload merges the
walk, the LIST and the manifest in one pass and memory does not grow with the
file count), a header line naming the target and a footer line with the entry
count and the SHA-256 of everything before it and of that count. Written to a temp file beside
it and renamed: a reader never sees half a manifest. A manifest whose header,
footer, hash, order or fields are wrong is ignored as a whole with a warning
(never trusted in part). It holds no credentials: the endpoint is stored without
any ``user:password@`` part.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Dict, Iterator, Optional, Tuple

logger = logging.getLogger(__name__)

__all__ = ["ENV_DIR", "ManifestEntry", "ManifestWriter", "StatFields", "UploadManifest", "manifest_dir",
           "stat_fields"]

ENV_DIR = "BLIP3O_UPLOAD_MANIFEST_DIR"
MAGIC = "blip3o-upload-manifest v1"
_FOOTER = "#end"
_TAIL = 256  # bytes read from the end to find the footer line

#: (size, mtime_ns, ctime_ns, inode) of a file.
StatFields = Tuple[int, int, int, int]


def stat_fields(st: os.stat_result) -> StatFields:
    """The four fields a rewrite or replacement of the file always changes (ctime cannot be set back)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def manifest_dir(override: Optional[os.PathLike | str] = None) -> Path:
    """Where manifests live: ``override``, ``$BLIP3O_UPLOAD_MANIFEST_DIR``, or the user's cache folder."""
    if override:
        return Path(override)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "blip3o-storage" / "upload-manifests"


def public_endpoint(url: Optional[str]) -> str:
    """The endpoint without any ``user:password@`` part ('aws' when none is configured)."""
    if not url:
        return "aws"
    scheme, _, rest = url.partition("//")
    return f"{scheme}//{rest.rsplit('@', 1)[-1]}" if rest else url.rsplit("@", 1)[-1]


@dataclass(frozen=True)
class ManifestEntry:
    """One file as it was when its ETag was computed."""

    rel: str
    stat: StatFields
    etag: str


class UploadManifest:
    """The manifest of one target; :meth:`entries` reads it, :meth:`writer` replaces it."""

    def __init__(self, path: Path, target: Dict[str, str]) -> None:
        self.path = path
        self.target = target
        #: Manifests found damaged and ignored (each one warned about).
        self.corrupt = 0

    @classmethod
    def for_target(cls, endpoint: Optional[str], bucket: str, prefix: str, src: os.PathLike | str,
                   directory: Optional[os.PathLike | str] = None) -> UploadManifest:
        target = {"endpoint": public_endpoint(endpoint), "bucket": bucket, "prefix": prefix,
                  "src": os.path.realpath(src)}
        name = hashlib.sha256(json.dumps(target, sort_keys=True).encode("utf-8")).hexdigest()[:32]
        return cls(manifest_dir(directory) / f"{name}.tsv", target)

    def _header(self) -> str:
        return f"{MAGIC}\t{json.dumps(self.target, sort_keys=True)}\n"

    def _damaged(self, why: str) -> None:
        self.corrupt += 1
        logger.warning("upload manifest %s is damaged (%s): ignored, every file is hashed again", self.path, why)

    def _check(self) -> Optional[int]:
        """The entry count if the file is whole (header, footer, hash), else None (warned)."""
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                fh.seek(max(0, size - _TAIL))
                tail = fh.read()
                cut = tail.rfind(b"\n", 0, len(tail) - 1) + 1 if tail.endswith(b"\n") else -1
                footer = tail[cut:].decode("ascii", "replace").rstrip("\n").split("\t") if cut >= 0 else []
                if len(footer) != 3 or footer[0] != _FOOTER:
                    self._damaged("no footer line: truncated?")
                    return None
                body_end = size - (len(tail) - cut)
                fh.seek(0)
                digest = hashlib.sha256()
                left = body_end
                while left > 0:
                    chunk = fh.read(min(left, 1 << 16))  # 64 KiB: memory independent of the file count
                    if not chunk:
                        break
                    digest.update(chunk)
                    left -= len(chunk)
                digest.update(f"{footer[0]}\t{footer[1]}\t".encode("ascii", "replace"))
                fh.seek(0)
                header = fh.readline().decode("utf-8", "replace")
        except OSError as exc:
            self._damaged(f"cannot read: {exc.strerror or exc}")
            return None
        if digest.hexdigest() != footer[2]:
            self._damaged("checksum mismatch")
            return None
        if header != self._header():
            self._damaged("written for another target or format")
            return None
        try:
            return int(footer[1])
        except ValueError:
            self._damaged("bad entry count")
            return None

    def entries(self) -> Iterator[ManifestEntry]:
        """The entries in relpath order; nothing if the manifest is absent or damaged.

        The whole file is checked (footer, SHA-256, header) before the first entry is
        yielded, so a damaged manifest is never trusted in part.
        """
        if not self.path.is_file():
            return
        count = self._check()
        if count is None:
            return
        seen = 0
        previous = ""
        with open(self.path, encoding="utf-8", errors="surrogateescape", newline="\n") as fh:
            fh.readline()
            for _ in range(count):
                line = fh.readline()
                fields = line.rstrip("\n").split("\t")
                try:
                    rel, size, mtime, ctime, ino, etag = fields
                    entry = ManifestEntry(rel, (int(size), int(mtime), int(ctime), int(ino)), etag)
                except ValueError:
                    self._damaged(f"bad line {seen + 2}")  # the hash matched: written by a broken writer
                    return
                if seen and rel <= previous:
                    self._damaged(f"line {seen + 2} out of order")
                    return
                previous = rel
                seen += 1
                yield entry

    def writer(self) -> ManifestWriter:
        """A new manifest for this target, written beside the old one; :meth:`ManifestWriter.commit` replaces it."""
        return ManifestWriter(self)


class ManifestWriter:
    """Entries added in relpath order go to a temp file; :meth:`commit` renames it into place."""

    def __init__(self, manifest: UploadManifest) -> None:
        self.manifest = manifest
        directory = manifest.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".tsv", dir=directory)
        self._fh: Optional[IO[bytes]] = os.fdopen(fd, "wb")
        self._digest = hashlib.sha256()
        self._previous: Optional[str] = None
        self.count = 0
        self._write(manifest._header().encode("utf-8"))

    def _write(self, data: bytes) -> None:
        assert self._fh is not None, "manifest writer already closed"
        self._fh.write(data)
        self._digest.update(data)

    def add(self, rel: str, stat: StatFields, etag: str) -> None:
        """Record ``rel``; names with a tab or newline (never a valid key) and out-of-order names are left out."""
        if "\t" in rel or "\n" in rel or "\t" in etag or "\n" in etag:
            return
        if self._previous is not None and rel <= self._previous:
            return
        self._previous = rel
        self.count += 1
        self._write(f"{rel}\t{stat[0]}\t{stat[1]}\t{stat[2]}\t{stat[3]}\t{etag}\n".encode("utf-8", "surrogateescape"))

    def commit(self) -> None:
        """Finish the file (footer, fsync) and rename it over the manifest."""
        if self._fh is None:
            return
        fh, self._fh = self._fh, None
        try:
            counted = f"{_FOOTER}\t{self.count}\t".encode("ascii")
            self._digest.update(counted)  # the count is covered too: a wrong one is damage, not trusted
            fh.write(counted + f"{self._digest.hexdigest()}\n".encode("ascii"))
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            os.replace(self._tmp, self.manifest.path)
        except BaseException:
            fh.close()
            self._remove_tmp()
            raise

    def discard(self) -> None:
        """Drop the temp file; the old manifest stays."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass
