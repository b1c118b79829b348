"""Upload an extracted dataset folder to S3, resumably and verifiably.

Modelled on boto3's s3transfer and s5cmd, cut down to what a dataset upload
needs:

* **plan** (:func:`plan_upload`): local files -> keys, Content-Type, size; every
  key validated up front (:func:`validate_keys`) because S3-compatible servers
  silently normalise ``a/./b``, ``a//b``, ``..`` and a leading ``/`` -- the
  object would land under a different key than readers ask for.
* **skip** (:func:`open_remote`): the prefix is LISTed (per folder, several at
  once, when the plan spans folders and pages), read by background threads
  while the upload runs and merged with the plan in key order (S3 lists keys in
  UTF-8 byte order; the plan is walked in that order), so memory holds a few
  pages, not a dict of every key (about 250 bytes a key).
  An object whose size and ETag already match the local file is not sent
  again. A single-part ETag is the object's MD5; a multipart ETag (``<hex>-N``)
  is the MD5 of the parts' MD5s, recomputed locally with the same part size.
  The local MD5/ETag of a file comes from the upload manifest
  (:mod:`blip3o_storage.transfer.manifest`) when the file's size, mtime, ctime
  and inode are those recorded, so a no-op re-run reads no file (and such a
  file is decided in the main thread, without a hand-off to a worker).
* **send** (:func:`upload_all`): a thread pool sharing the process's one
  pooled boto3 client. Small files go in one PUT with an explicit Content-MD5
  (the server rejects a corrupted body); files above the threshold go as a
  multipart upload with a Content-MD5 on *every* part, and the ETag returned by
  CompleteMultipartUpload is checked against the locally computed one. Every
  object is written whole (an interrupted multipart upload is aborted), so a
  re-run after Ctrl-C uploads exactly what is still missing.
* **verify** (:func:`verify`): one more LIST, merged the same way, size + ETag
  of every key against the local files.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import mimetypes
import os
import queue
import threading
import time
import unicodedata
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union, overload

from blip3o_storage.errors import InvalidPathError, StorageError, TransientStorageError
from blip3o_storage.storage.part_sizing import MAX_PART_SIZE, MIN_PART_SIZE, MiB, effective_part_size
from blip3o_storage.storage.part_sizing import MAX_PARTS as MAX_PARTS  # re-exported: callers import it from here
from blip3o_storage.storage.retry import retry_reason
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.storage.uri import check_relpath
from blip3o_storage.transfer.manifest import ManifestEntry, ManifestWriter, StatFields, UploadManifest, stat_fields
from blip3o_storage.transfer.tree_walk import TreeWalk, is_hidden, iter_tree_stat

logger = logging.getLogger(__name__)

DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_PART_SIZE = 16 * MiB
MAX_KEY_BYTES = 1024  # S3's maximum key length (UTF-8)
_READ_CHUNK = 1 * MiB
#: A file found changed after its upload is sent this many more times before it fails
#: (a file still being written keeps changing; one rewritten once is then sent whole).
CHANGED_FILE_RETRIES = 2
#: Stop when this many files in a row failed because the store could not be reached (connection
#: refused/reset, timeouts), at least :data:`STORE_DOWN_MIN` and at least one per worker: when the
#: server dies every in-flight file fails together, and each failure has already outlasted every
#: retry of its request, so a full round of them means the store is down, not one bad request.
STORE_DOWN_MIN = 8
#: Failure reasons (``retry.retry_reason``) that mean "no answer from the store".
UNREACHABLE_REASONS = frozenset({"connection", "connection-reset", "read-timeout", "connect-timeout", "timeout",
                                 "deadline"})
#: data.json fields that name files (relative paths); other fields are data.
REFERENCE_FIELDS = ("image", "images", "annotation", "annotations")

# Deterministic types for the files we know (the system mime.types can differ per host).
_CONTENT_TYPES = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff",
    ".txt": "text/plain; charset=utf-8", ".json": "application/json",
    ".jsonl": "application/x-ndjson", ".csv": "text/csv; charset=utf-8",
    ".tar": "application/x-tar", ".parquet": "application/vnd.apache.parquet",
}

ProgressFn = Callable[[int], None]
#: What a LIST says of one key: (key, size, ETag without quotes).
Listed = Tuple[str, int, Optional[str]]
#: A listing: key -> (size, ETag) from :func:`list_existing`, or :func:`open_listing`'s stream in key order.
Remote = Union[Dict[str, Tuple[int, Optional[str]]], Iterator[Listed], "Listing"]
#: Progress callbacks are batched to one call per this many seconds (tqdm's update under a lock per
#: file was ~4% of an upload's samples, docs/perf16-profile.md).
PROGRESS_EVERY = 0.1
T = TypeVar("T")


# -- value types -------------------------------------------------------------
class UploadItem:
    """One local file and the key it goes to (immutable).

    ``local_path`` (a Path) and ``content_type`` are made on first use: a no-op re-run of 6,600
    files that finds every file in the manifest needs neither, and making them cost ~15% of its CPU
    (pathlib parses each path; mimetypes looks each name up). ``fspath`` is the path as a string.
    ``stat``: the file's (size, mtime_ns, ctime_ns, inode) when it was planned, if known (the one
    stat per file)."""

    __slots__ = ("_path", "key", "size", "_content_type", "stat")

    def __init__(self, local_path: Union[str, Path], key: str, size: int, content_type: Optional[str] = None,
                 stat: Optional[StatFields] = None) -> None:
        self._path: Union[str, Path] = local_path
        self.key = key
        self.size = size
        self._content_type = content_type
        self.stat = stat

    @property
    def local_path(self) -> Path:
        path = self._path
        if not isinstance(path, Path):
            path = self._path = Path(path)
        return path

    @property
    def fspath(self) -> str:
        return os.fspath(self._path)

    @property
    def content_type(self) -> str:
        if self._content_type is None:  # from the key, as the plan always named it (not a resolved link's target)
            self._content_type = content_type_for(self.key)
        return self._content_type

    def _fields(self) -> Tuple[str, str, int, str, Optional[StatFields]]:
        return (self.fspath, self.key, self.size, self.content_type, self.stat)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UploadItem) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"UploadItem(local_path={self.fspath!r}, key={self.key!r}, size={self.size}, "
                f"content_type={self.content_type!r}, stat={self.stat!r})")


class ItemTable(Sequence[UploadItem]):
    """The items of a plan, compact: one key string and four int64 (size, mtime_ns, ctime_ns, inode)
    per file (about 130 bytes a file instead of about 640 for a list of :class:`UploadItem` with
    ``Path`` objects, measured with tracemalloc on a 20,000-file tree); the items are made when read.
    A file's path is ``root / relpath`` unless given (``--only-referenced`` resolves paths elsewhere)."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self._root = root
        self._prefix = prefix
        self._rels: List[str] = []
        self._sizes = array("q")
        self._mtimes = array("q")  # -1: stat not known
        self._ctimes = array("q")
        self._inodes = array("Q")
        self._root_text = os.fspath(root) + "/"
        self._paths: Dict[int, Path] = {}  # index -> path, where it is not root / relpath
        #: Whether the relpaths (so the keys) are in strictly increasing order: the order of a LIST.
        self.sorted_by_key = True

    def append_file(self, rel: str, size: int, path: Optional[Path] = None, stat: Optional[StatFields] = None) -> None:
        """Add the file ``rel`` (key ``prefix + rel``) of ``size`` bytes, with its :func:`stat_fields` if known."""
        if path is not None and path != self._root / rel:
            self._paths[len(self._rels)] = path
        if self._rels and rel <= self._rels[-1]:
            self.sorted_by_key = False
        self._rels.append(rel)
        self._sizes.append(size)
        mtime, ctime, inode = (stat[1], stat[2], stat[3]) if stat is not None else (-1, 0, 0)
        self._mtimes.append(mtime)
        self._ctimes.append(ctime)
        self._inodes.append(inode)

    def __len__(self) -> int:
        return len(self._rels)

    def _item(self, i: int) -> UploadItem:
        rel = self._rels[i]
        path: Union[str, Path] = self._paths.get(i) or self._root_text + rel  # a Path only when asked for
        size, mtime = self._sizes[i], self._mtimes[i]
        return UploadItem(path, self._prefix + rel, size,
                          stat=(size, mtime, self._ctimes[i], self._inodes[i]) if mtime >= 0 else None)

    @overload
    def __getitem__(self, i: int) -> UploadItem: ...

    @overload
    def __getitem__(self, i: slice) -> List[UploadItem]: ...

    def __getitem__(self, i: Union[int, slice]) -> Union[UploadItem, List[UploadItem]]:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for {len(self)} items")
        return self._item(i % len(self))

    def __iter__(self) -> Iterator[UploadItem]:
        for i in range(len(self._rels)):
            yield self._item(i)

    def rels(self) -> Iterator[str]:
        """The relpaths (keys without the prefix), in order."""
        return iter(self._rels)

    def keys(self) -> Iterator[str]:
        """The keys, in order, without making the items."""
        pre = self._prefix
        return (pre + rel for rel in self._rels)

    @property
    def total_bytes(self) -> int:
        return int(sum(self._sizes))


@dataclass
class UploadPlan:
    """What to upload, plus local problems found while planning (never dropped silently)."""

    items: Sequence[UploadItem] = field(default_factory=list)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (key or path, reason)
    skipped_hidden: int = 0
    #: Entries that are neither file nor folder (fifo, socket, device): listed, never read.
    skipped_special: List[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        if isinstance(self.items, ItemTable):
            return self.items.total_bytes
        return sum(item.size for item in self.items)


@dataclass
class UploadReport:
    """Outcome of :func:`upload_all` (bytes count uploaded bytes only)."""

    files: int = 0  # items considered
    bytes: int = 0  # bytes uploaded (or, with dry_run, that would be)
    skipped: int = 0  # already present with the same size + ETag
    skipped_bytes: int = 0
    uploaded: int = 0  # objects written (or, with dry_run, that would be)
    failed: List[Tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    #: key -> local ETag (MD5 hex or multipart ETag) computed on the way; lets verify skip re-hashing.
    etags: Dict[str, str] = field(default_factory=dict)
    #: key -> :func:`file_signature` of the file those bytes were read from (verify re-hashes a changed file).
    stats: Dict[str, Signature] = field(default_factory=dict)
    #: Set when the run stopped because the store could not be reached: the one message to show.
    store_down: Optional[str] = None
    #: Keys that failed because the store could not be reached (logged as one line, not one each).
    unreachable: List[str] = field(default_factory=list)
    not_attempted: int = 0  # files never tried because the run stopped early
    manifest_entries: int = 0  # files recorded in the new upload manifest

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted and self.store_down is None

    def summary(self) -> str:
        """``uploaded N files (X MB) skipped S failed F in T s (Y MB/s, Z files/s)``; MB = 10**6 bytes."""
        secs = max(self.seconds, 1e-9)
        verb = "would upload" if self.dry_run else "uploaded"
        return (f"{verb} {self.uploaded} files ({self.bytes / 1e6:.1f} MB) skipped {self.skipped} "
                f"failed {len(self.failed)} in {self.seconds:.1f} s "
                f"({self.bytes / 1e6 / secs:.1f} MB/s, {self.uploaded / secs:.1f} files/s)")


@dataclass
class VerifyReport:
    """Outcome of :func:`verify`."""

    ok: int = 0
    missing: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, str]] = field(default_factory=list)  # (key, reason)
    failed: List[Tuple[str, str]] = field(default_factory=list)  # local read errors

    @property
    def passed(self) -> bool:
        return not self.missing and not self.mismatched and not self.failed

    def summary(self) -> str:
        return (f"verified {self.ok} ok, {len(self.missing)} missing, {len(self.mismatched)} mismatched"
                f"{f', {len(self.failed)} unreadable' if self.failed else ''}")


class UploadInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`upload_all`; ``report`` holds what finished before it."""

    def __init__(self, report: UploadReport) -> None:
        super().__init__("upload interrupted")
        self.report = report


class _Cancelled(Exception):
    """Raised inside a worker when the run is being stopped."""


# -- keys --------------------------------------------------------------------
def normalise_prefix(prefix: str) -> str:
    """``''`` or ``'a/b/'``: keys are ``prefix + relpath``. A trailing '/' is optional."""
    if not prefix:
        return ""
    return prefix if prefix.endswith("/") else prefix + "/"


def key_problem(key: str) -> Optional[str]:
    """Why ``key`` would be mangled by an S3-compatible server, or None if it is safe."""
    if not key:
        return "empty key"
    if key.startswith("/"):
        return "leading '/'"
    if "\x00" in key:
        return "NUL byte"
    # isprintable() is False for every control character (and some others, which take the exact
    # check): one C call instead of a unicodedata lookup per character (0.26 ms a key, 14% of an
    # upload's main-thread CPU on 2,201 files).
    if not key.isprintable() and any(unicodedata.category(ch) == "Cc" for ch in key):
        return "control character"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"longer than {MAX_KEY_BYTES} bytes (UTF-8)"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8 (undecodable file name)"
    for part in key.split("/"):
        if part == "":
            return "empty path component ('//' or trailing '/')"
        if part in (".", ".."):
            return f"'{part}' path component"
    return None


def validate_keys(keys: Iterable[str]) -> None:
    """Raise InvalidPathError naming *every* bad key (not just the first) and why."""
    bad = [(key, problem) for key in keys for problem in [key_problem(key)] if problem]
    if bad:
        lines = "\n".join(f"  {key!r}: {problem}" for key, problem in bad)
        raise InvalidPathError(
            f"{len(bad)} key(s) would be changed or rejected by S3-compatible servers "
            f"(no '.', '..' or empty components, no leading '/', no control characters, "
            f"at most {MAX_KEY_BYTES} bytes); rename these files or fix --prefix:\n{lines}")


# -- planning ----------------------------------------------------------------
def content_type_for(path: os.PathLike | str) -> str:
    """Content-Type from the extension; text gets an explicit UTF-8 charset."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in _CONTENT_TYPES:
        return _CONTENT_TYPES[ext]
    guessed, encoding = mimetypes.guess_type(os.fspath(path), strict=False)
    if not guessed or encoding:  # .gz etc.: do not claim the decoded type
        return "application/octet-stream"
    return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed


def _rel_key(path: Path, root: Path) -> str:
    return "/".join(path.relative_to(root).parts)


def referenced_relpaths(data_json: Path) -> List[str]:
    """Relative paths named by a data.json (``image``/``annotation`` fields), in order, deduplicated.

    Raises StorageError if the file is not a JSON list of objects.
    """
    try:
        with open(data_json, encoding="utf-8") as fh:
            entries = json.load(fh)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{data_json}: cannot read data.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(entries, list):
        raise StorageError(f"{data_json}: expected a JSON list of entries, got {type(entries).__name__}")
    seen: Dict[str, None] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise StorageError(f"{data_json}: entry {i} is {type(entry).__name__}, expected an object")
        for name in REFERENCE_FIELDS:
            value = entry.get(name)
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, str) and v:
                    seen.setdefault(v, None)
    return list(seen)


def _resolve_reference(rel: str, root: Path, src_lex: Path, data_json: Path,
                       pre: str) -> Tuple[Optional[Path], str, str]:
    """A data.json relpath -> (local path or None, its key relative to ``src_lex`` without ``pre``,
    problem). When there is a problem the path is None and the second item is what to name
    in the failure: the prefixed key, or the reference itself when it has no key."""
    try:
        norm = check_relpath(rel, source=str(data_json))
    except InvalidPathError as exc:
        return None, rel, f"unsafe path in data.json: {exc}"
    path = root / norm
    abs_path = Path(os.path.abspath(path))
    if not abs_path.is_relative_to(src_lex):
        return None, rel, f"{path} is outside the source folder {src_lex}"
    rel_key = _rel_key(abs_path, src_lex)
    if is_hidden(rel_key):
        return None, pre + rel_key, (f"referenced by {data_json.name} but hidden (a dot-file or dot-folder, which "
                                     "is never uploaded: extraction temp files and markers); rename it or rebuild "
                                     "data.json with tools/make_data_json.py")
    if not path.is_file():
        return None, pre + rel_key, f"referenced by {data_json.name} but missing locally ({path})"
    return path, rel_key, ""


def plan_upload(src_dir: os.PathLike | str, prefix: str = "", only_referenced_by: Optional[os.PathLike | str] = None,
                *, ref_root: Optional[os.PathLike | str] = None) -> UploadPlan:
    """Map local files under ``src_dir`` to keys ``prefix + relpath`` and validate every key.

    The folder is walked by :func:`blip3o_storage.transfer.tree_walk.walk_tree`, the rule
    ``tools/make_data_json.py`` uses too: dot-entries skipped (counted),
    symlinked files and folders followed; a folder that cannot be listed, a
    dangling link or a link loop raises StorageError naming each one.

    With ``only_referenced_by`` (a data.json), the plan is exactly that file plus
    the files it references. Its relative paths are resolved against
    ``ref_root`` (default: ``src_dir/raw`` if that folder exists, else
    ``src_dir``, matching ``tools/make_data_json.py``); keys stay relative to
    ``src_dir`` so the bucket mirrors the local layout. Without it, a
    ``src_dir/data.json`` is checked the same way: every file it references must
    be in the plan. A referenced file that does not exist locally or is hidden
    (so would not be uploaded) goes to ``plan.failed``, so the upload fails
    instead of leaving data.json naming keys that are not in the bucket.

    Raises InvalidPathError listing every key S3 servers would mangle.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise StorageError(f"source folder {src} does not exist or is not a folder")
    pre = normalise_prefix(prefix)
    if pre and key_problem(pre[:-1]):
        raise InvalidPathError(f"--prefix {prefix!r} is not a safe key prefix: {key_problem(pre[:-1])}")
    table = ItemTable(src, pre)
    plan = UploadPlan(items=table)
    src_lex = Path(os.path.abspath(src))  # lexical (symlinks kept)
    root = Path(ref_root) if ref_root is not None else (src / "raw" if (src / "raw").is_dir() else src)
    if only_referenced_by is None:
        # Streamed: each file is packed with the walk's one stat as the walk finds it (no list of
        # paths), in key order (what the LIST is merged with).
        walk = TreeWalk(root=src)
        for rel, _path, st in iter_tree_stat(walk, key_order=True):
            table.append_file(rel, st.st_size, stat=stat_fields(st))
        walk.raise_problems()
        plan.skipped_hidden = len(walk.hidden)
        plan.skipped_special = walk.special
        validate_keys(table.keys())
        data_json = src / "data.json"
        if data_json.is_file():
            planned = set(table._rels)
            try:
                references = referenced_relpaths(data_json)
            except StorageError as exc:
                logger.warning("%s; its references are not checked (uploaded as a plain file)", exc)
                references = []
            root_rel = _under(root, src_lex)
            for rel in references:
                if root_rel is not None:
                    try:
                        if root_rel + check_relpath(rel) in planned:
                            continue  # the common case, with no stat: a planned file is a walked regular file
                    except InvalidPathError:
                        pass  # named by the checked way below
                _, rel_key, problem = _resolve_reference(rel, root, src_lex, data_json, pre)
                if problem:
                    plan.failed.append((rel_key, problem))
                elif rel_key not in planned:
                    plan.failed.append((pre + rel_key, f"referenced by {data_json.name} but not found by the "
                                                        "folder walk (not a regular file?)"))
            del planned, references
        return plan
    data_json = Path(only_referenced_by)
    if not data_json.is_file():
        raise StorageError(f"data.json {data_json} does not exist")
    src_abs = src.resolve()
    dj_abs = data_json.resolve()
    pairs = [(data_json, _rel_key(dj_abs, src_abs) if dj_abs.is_relative_to(src_abs) else data_json.name)]
    seen = {pairs[0][1]}
    for rel in referenced_relpaths(data_json):
        found, rel_key, problem = _resolve_reference(rel, root, src_lex, data_json, pre)
        if found is None:
            plan.failed.append((rel_key, problem))
            continue
        if rel_key not in seen:  # 'x.jpg' and './x.jpg' are one file
            seen.add(rel_key)
            pairs.append((found, rel_key))
    validate_keys(pre + rel for _, rel in pairs)
    pairs.sort(key=lambda pair: pair[1])  # key order, what the LIST is merged with
    for path, rel in pairs:
        st = path.stat()
        table.append_file(rel, st.st_size, path, stat=stat_fields(st))
    return plan


def _under(root: Path, src_lex: Path) -> Optional[str]:
    """``root`` relative to ``src_lex`` as a key prefix ('' or 'raw/'), or None if it is not lexically
    under it or involves a symlink (then references take the slow, checked way)."""
    abs_root = Path(os.path.abspath(root))
    if not abs_root.is_relative_to(src_lex) or abs_root.is_symlink():
        return None
    rel = _rel_key(abs_root, src_lex) if abs_root != src_lex else ""
    return rel + "/" if rel else ""


# -- hashing -----------------------------------------------------------------
def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_READ_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def multipart_etag(path: Path, part_size: int) -> str:
    """The ETag S3 gives a multipart upload of ``path`` in ``part_size`` parts:
    MD5 of the concatenated binary part MD5s, then ``-<number of parts>``."""
    return multipart_etags(path, [part_size])[part_size]


def _etag_of_parts(digests: List[bytes]) -> str:
    """A multipart ETag from the binary MD5s of the parts."""
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def local_etag_like(path: Path, size: int, remote_etag: Optional[str], part_size: int) -> Optional[str]:
    """The local file's ETag in the same form as ``remote_etag`` (single-part MD5
    or ``-N`` multipart), or None when it cannot match (part count differs)."""
    if remote_etag and "-" in remote_etag:
        try:
            parts = int(remote_etag.rsplit("-", 1)[1])
        except ValueError:
            return None
        part = effective_part_size(size, part_size)
        if max(1, (size + part - 1) // part) != parts:
            return None  # uploaded with another part size: cannot prove equality, re-upload
        return multipart_etag(path, part)
    return file_md5(path)


#: A hash of (size, mtime_ns, ctime_ns, inode): one int (32 bytes) where the tuple took about 200,
#: kept per file in :attr:`UploadReport.stats` (a 1,000,000-file re-run keeps a million of them).
Signature = int


def file_signature(path: Path) -> Signature:
    """A hash of (size, mtime_ns, ctime_ns, inode): any write to the file, or replacing it, changes it.

    ctime cannot be set back by a writer (unlike mtime, e.g. ``rsync -t``), so a
    rewrite that keeps size and mtime is still seen.
    """
    return hash(stat_fields(os.stat(path)))


def _stat(path: Union[str, Path]) -> StatFields:
    return stat_fields(os.stat(path))


def _same_form(a: str, b: Optional[str]) -> bool:
    """Whether two ETags are both single-part MD5s or both multipart (``-N``)."""
    return ("-" in a) == ("-" in (b or ""))


def _parts_match(etag: str, size: int, part_size: int) -> bool:
    """Whether a multipart ETag has the part count ``part_size`` gives (always true for an MD5): what
    :func:`local_etag_like` requires before it hashes, so the manifest decides as hashing would."""
    if "-" not in etag:
        return True
    try:
        parts = int(etag.rsplit("-", 1)[1])
    except ValueError:
        return False
    part = effective_part_size(size, part_size)
    return max(1, (size + part - 1) // part) == parts


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store did not answer (refused, reset, timed out), as opposed
    to an answer that was an error. Looks through the causes of a mapped StorageError."""
    seen = 0
    current: Optional[BaseException] = exc
    while current is not None and seen < 10:
        if not isinstance(current, StorageError):
            reason = retry_reason(current)  # a deadline error names the failure it stopped retrying
            if reason is not None:
                return reason in UNREACHABLE_REASONS
            if isinstance(current, (TimeoutError, ConnectionRefusedError)):
                return True
            if any(word in type(current).__name__ for word in ("Timeout", "Deadline")):
                return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def endpoint_name(backend: S3Backend) -> str:
    """The store's endpoint URL for messages (no user:password part), or 'AWS S3'."""
    url = backend.settings.endpoint_url
    if not url:
        return "AWS S3"
    return url.split("//", 1)[0] + "//" + url.split("//", 1)[-1].rsplit("@", 1)[-1]


def unreachable_message(backend: S3Backend, exc: BaseException, what: str) -> str:
    """One line for a store that does not answer: names the endpoint (never credentials)."""
    return (f"the store at {endpoint_name(backend)} is unreachable: {what} ({exc}); check that the server is up "
            "and reachable, then re-run the same command (it uploads only what is missing)")


# -- listing -----------------------------------------------------------------
def list_existing(backend: S3Backend, bucket: str, prefix: str = "") -> Dict[str, Tuple[int, Optional[str]]]:
    """key -> (size, ETag without quotes) for every object under ``prefix``, from ONE paginated LIST
    (about 250 bytes a key: the upload itself streams it instead, see :func:`open_listing`)."""
    return {key: (size, etag) for key, size, etag in _listed(backend, bucket, prefix)}


def _listed(backend: S3Backend, bucket: str, prefix: str) -> Iterator[Listed]:
    pre = normalise_prefix(prefix)
    for info in backend.list(f"s3://{bucket}/{pre}", recursive=True):
        if not info.is_dir:
            yield pre + info.key, info.size, info.etag


#: A listing is read ahead by this many pages of this many keys (S3's page): bounded memory.
LIST_CHUNK = 1000
LIST_AHEAD = 8


def open_listing(backend: S3Backend, bucket: str, prefix: str = "") -> Iterator[Listed]:
    """The objects under ``prefix`` as ``(key, size, ETag)`` in key order, read by a background
    thread at most :data:`LIST_AHEAD` pages ahead of the reader (the LIST overlaps the
    upload's own work; memory stays at a few pages however many keys).

    The first page is waited for here, so a missing bucket, bad credentials or a store that
    does not answer raise from this call, before anything is uploaded. Closing the returned
    iterator (or dropping it) stops the thread.
    """
    return _read_ahead(_listed(backend, bucket, prefix), LIST_CHUNK, LIST_AHEAD, "list")


def _read_ahead(source: Iterator[T], chunk: int, ahead: int, name: str, wait_first: bool = True) -> Iterator[T]:
    """``source`` read by a daemon thread in chunks, at most ``ahead`` chunks ahead; with ``wait_first``
    the first chunk (or the error that ended it) is awaited before returning."""
    chunks: queue.Queue[Tuple[str, Any]] = queue.Queue(maxsize=ahead)
    closed = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not closed.is_set():
            try:
                chunks.put((kind, value), timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            buf: List[T] = []
            for x in source:
                buf.append(x)
                if len(buf) >= chunk:
                    if not put("items", buf):
                        return
                    buf = []
            put("end", buf)
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, raised there
            put("error", exc)

    threading.Thread(target=produce, name=f"{name}-ahead", daemon=True).start()
    first: Optional[Tuple[str, Any]] = None
    if wait_first:
        first = chunks.get()
        if first[0] == "error":
            closed.set()
            raise first[1]

    def rest(current: Optional[Tuple[str, Any]]) -> Iterator[T]:
        try:
            while True:
                if current is None:
                    current = chunks.get()
                kind, value = current
                if kind == "error":
                    raise value
                yield from value
                if kind == "end":
                    return
                current = None
        finally:
            closed.set()

    return rest(first)


def _check_order(listing: Iterator[Listed]) -> Iterator[Listed]:
    """``listing``, raising if the store did not list keys in order (the merge would see keys as missing)."""
    previous: Optional[str] = None
    try:
        for entry in listing:
            if previous is not None and entry[0] <= previous:
                raise StorageError(f"the store listed {entry[0]!r} after {previous!r}: not in key order as S3 "
                                   "lists, so the upload cannot merge it with the local files; report this store")
            previous = entry[0]
            yield entry
    finally:
        close = getattr(listing, "close", None)
        if close is not None:
            close()


class Listing:
    """What the store holds under a prefix, asked for keys in increasing order (the plan's order):
    :meth:`find` moves forward through the LIST as it streams, nothing is kept behind."""

    def find(self, key: str) -> Optional[Tuple[int, Optional[str]]]:
        raise NotImplementedError

    def peek(self) -> None:
        """Read the first page now: a missing bucket or an unreachable store raises here."""

    def close(self) -> None:
        """Stop the read-ahead threads (the listing may be dropped half read)."""


class _StreamListing(Listing):
    """One key-ordered stream (one paginated LIST of the whole prefix, or a caller's stream)."""

    def __init__(self, stream: Iterator[Listed]) -> None:
        self._stream: Iterator[Listed] = _check_order(stream)
        self._current: Optional[Listed] = None
        self._started = False

    def peek(self) -> None:
        """Read the first entry now: a missing bucket or an unreachable store raises here."""
        if not self._started:
            self._current, self._started = next(self._stream, None), True

    def find(self, key: str) -> Optional[Tuple[int, Optional[str]]]:
        self.peek()
        current = self._current
        while current is not None and current[0] < key:
            current = next(self._stream, None)
        self._current = current
        return (current[1], current[2]) if current is not None and current[0] == key else None

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


#: Parallel LIST: keys are listed per folder at this depth below the prefix (``raw/<shard>/``),
#: at most :data:`LIST_PARALLEL` folders at once, each read ahead by 2 pages. One 1,000-key page
#: takes ~0.2 s on the dev RGW under load: a 2,201-file BLIP3o tree (11 shards) lists in ~0.15 s
#: instead of ~0.5 s serially.
LIST_UNIT_DEPTH = 2
LIST_PARALLEL = 8
#: More folders than this (a folder per file?) list serially: the per-folder table would be large.
MAX_LIST_UNITS = 10_000


def _unit_of(rel: str) -> Tuple[str, bool]:
    """The folder whose LIST holds ``rel``: ``('raw/s1/', True)`` (listed recursively) for a file at
    least :data:`LIST_UNIT_DEPTH` folders deep, else its own folder, listed without subfolders."""
    return _unit_of_folder(rel[: rel.rfind("/") + 1])


@functools.lru_cache(maxsize=4096)
def _unit_of_folder(folder: str) -> Tuple[str, bool]:
    """:func:`_unit_of` for the files of ``folder`` ('' or ending in '/'): the same for all of
    them, so cached (a plan's files come folder by folder)."""
    parts = folder.split("/", LIST_UNIT_DEPTH)
    if len(parts) > LIST_UNIT_DEPTH:
        return "/".join(parts[:LIST_UNIT_DEPTH]) + "/", True
    return folder, False


class _UnitListing(Listing):
    """One LIST per folder (:func:`_unit_of`), several at once, each folder's keys in order. The
    plan's keys of one folder come in increasing order, so each folder's stream only moves forward;
    a folder's stream is closed after its last planned key."""

    def __init__(self, backend: S3Backend, bucket: str, pre: str, units: Dict[Tuple[str, bool], str]) -> None:
        self._backend, self._bucket, self._pre = backend, bucket, pre
        self._last = units  # unit -> its last planned relpath
        self._order = list(units)  # by first planned key
        self._next = 0
        self._open: Dict[Tuple[str, bool], _StreamListing] = {}

    def _listed(self, unit: Tuple[str, bool]) -> Iterator[Listed]:
        folder, recursive = unit
        base = self._pre + folder
        for info in self._backend.list(f"s3://{self._bucket}/{base}", recursive=recursive):
            if not info.is_dir:
                yield base + info.key, info.size, info.etag

    def _stream(self, unit: Tuple[str, bool]) -> _StreamListing:
        while unit not in self._open:
            if self._next >= len(self._order):
                raise StorageError(f"internal: LIST of {unit[0]!r} asked for after its last key")
            opening = self._order[self._next]
            self._next += 1
            self._open[opening] = _StreamListing(_read_ahead(self._listed(opening), LIST_CHUNK, 2, "list",
                                                             wait_first=False))
        # Start the next folders' LISTs while this one is read.
        while len(self._open) < LIST_PARALLEL and self._next < len(self._order):
            ahead = self._order[self._next]
            self._next += 1
            self._open[ahead] = _StreamListing(_read_ahead(self._listed(ahead), LIST_CHUNK, 2, "list",
                                                           wait_first=False))
        return self._open[unit]

    def peek(self) -> None:
        if self._order:
            self._stream(self._order[0]).peek()

    def find(self, key: str) -> Optional[Tuple[int, Optional[str]]]:
        if not key.startswith(self._pre):
            return None
        rel = key[len(self._pre):]
        unit = _unit_of(rel)
        if unit not in self._last:
            return None
        stream = self._stream(unit)
        found = stream.find(key)
        if rel == self._last[unit]:
            stream.close()
            del self._open[unit]
        return found

    def close(self) -> None:
        for stream in self._open.values():
            stream.close()
        self._open.clear()


def open_remote(backend: S3Backend, bucket: str, prefix: str = "",
                items: Optional[Sequence[UploadItem]] = None) -> Listing:
    """The store's objects under ``prefix`` for a merge with ``items`` (in key order): one LIST per
    folder (:func:`_unit_of`) in parallel when a :func:`plan_upload` plan spans more than one
    folder and page, else one paginated LIST. The first page is read here, so a missing bucket,
    bad credentials or a store that does not answer raise from this call."""
    pre = normalise_prefix(prefix)
    listing: Optional[Listing] = None
    if isinstance(items, ItemTable) and items.sorted_by_key and len(items) > LIST_CHUNK:
        units: Dict[Tuple[str, bool], str] = {}
        for rel in items.rels():
            units[_unit_of(rel)] = rel  # insertion order: first planned key; value: the last one
            if len(units) > MAX_LIST_UNITS:
                break
        if 1 < len(units) <= MAX_LIST_UNITS:
            listing = _UnitListing(backend, bucket, pre, units)
    if listing is None:
        listing = _StreamListing(open_listing(backend, bucket, prefix))
    try:
        listing.peek()
    except BaseException:
        listing.close()
        raise
    return listing


def _joined(items: Iterable[UploadItem], listing: Listing, known: Iterator[ManifestEntry],
            pre: str) -> Iterator[Tuple[UploadItem, Optional[Tuple[int, Optional[str]]], Optional[ManifestEntry]]]:
    """Each item with its listed (size, ETag) and manifest entry, if any: a merge in key order
    (items and ``listing`` by key, ``known`` by relpath = key without ``pre``)."""
    try:
        entry = next(known, None)
        cut = len(pre)
        for item in items:
            key = item.key
            remote = listing.find(key)
            mine = None
            if key.startswith(pre):
                rel = key[cut:]
                while entry is not None and entry.rel < rel:
                    entry = next(known, None)
                if entry is not None and entry.rel == rel:
                    mine = entry
            yield item, remote, mine
    finally:
        listing.close()  # the listing's read-ahead threads stop
        close = getattr(known, "close", None)
        if close is not None:
            close()  # the manifest's file is closed


def _is_sorted(items: Sequence[UploadItem]) -> bool:
    if isinstance(items, ItemTable):
        return items.sorted_by_key
    keys = (item.key for item in items)
    previous = next(keys, None)
    for key in keys:
        if previous is None or key <= previous:
            return False
        previous = key
    return True


def _with_remote(items: Sequence[UploadItem], backend: S3Backend, bucket: str, prefix: str,
                 remote: Optional[Remote], manifest: Optional[Iterator[ManifestEntry]]
                 ) -> Iterator[Tuple[UploadItem, Optional[Tuple[int, Optional[str]]], Optional[ManifestEntry]]]:
    """Items with what the store (and the manifest) say of them: streamed when the items are in key
    order, by a dict lookup otherwise (a caller's own list in any order, or a dict it listed)."""
    if not isinstance(remote, dict) and _is_sorted(items):
        listing = (remote if isinstance(remote, Listing) else _StreamListing(remote) if remote is not None
                   else open_remote(backend, bucket, prefix, items))
        return _joined(items, listing, manifest if manifest is not None else iter(()), normalise_prefix(prefix))
    table = remote if isinstance(remote, dict) else list_existing(backend, bucket, prefix)
    return ((item, table.get(item.key), None) for item in items)


# -- uploading ---------------------------------------------------------------
class _Uploader:
    """Per-run state shared by the worker threads (one client, one stop flag)."""

    def __init__(self, backend: S3Backend, bucket: str, *,
                 multipart_threshold: int, part_size: int, dry_run: bool, progress: Optional[ProgressFn]) -> None:
        self.backend = backend
        self.bucket = bucket
        self.threshold = multipart_threshold
        self.part_size = part_size
        self.dry_run = dry_run
        self.progress = progress
        self.stop = threading.Event()
        self._progress_lock = threading.Lock()  # progress callbacks (tqdm.update) are not atomic
        self._unreported = 0
        self._reported_at = time.monotonic()
        self.count_skipped = False  # progress counts skipped files' bytes too

    def _tick(self, n: int) -> None:
        """Count ``n`` bytes done; the callback gets the sum at most every :data:`PROGRESS_EVERY` s."""
        if self.progress and n:
            with self._progress_lock:
                self._unreported += n
                now = time.monotonic()
                if now - self._reported_at >= PROGRESS_EVERY:
                    self.progress(self._unreported)
                    self._unreported, self._reported_at = 0, now

    def flush_progress(self) -> None:
        if self.progress:
            with self._progress_lock:
                if self._unreported:
                    self.progress(self._unreported)
                self._unreported = 0

    def settled(self, item: UploadItem, remote: Optional[Tuple[int, Optional[str]]],
                known: Optional[ManifestEntry]) -> Optional[Tuple[str, str, Optional[StatFields]]]:
        """:meth:`process`'s answer when it needs no I/O: the key is listed with the size and the
        ETag the manifest recorded for the file, whose planned stat is the recorded one. Run in the
        calling thread: a no-op re-run of 2,201 files spent most of its wall time handing each file
        to a worker thread and back on a loaded 2-core machine (wall 4x its CPU)."""
        if (remote is None or known is None or item.stat is None or remote[0] != item.size
                or known.stat != item.stat or known.etag != remote[1]
                or not _parts_match(known.etag, item.size, self.part_size)):
            return None
        if self.count_skipped:
            self._tick(item.size)
        return "skipped", known.etag, item.stat

    def process(self, item: UploadItem, remote: Optional[Tuple[int, Optional[str]]] = None,
                known: Optional[ManifestEntry] = None) -> Tuple[str, str, Optional[StatFields]]:
        """Skip or upload one item; returns (outcome 'skipped'|'uploaded', local ETag, the file's
        :func:`stat_fields` when those bytes were read). ``remote`` is the listed (size, ETag) of its
        key, ``known`` the manifest's entry of its file: its ETag is used without reading the file
        when the file's stat is still the recorded one."""
        if self.stop.is_set():
            raise _Cancelled()
        if remote is not None and remote[0] == item.size:
            before = item.stat or _stat(item.fspath)
            local: Optional[str] = None
            if known is not None and known.stat == before and _same_form(known.etag, remote[1]) and (
                    _parts_match(known.etag, item.size, self.part_size)):
                local = known.etag  # unchanged since it was hashed: not read again
            else:
                local = local_etag_like(item.local_path, item.size, remote[1], self.part_size)
            if local is not None and local == remote[1]:
                if self.count_skipped:
                    self._tick(item.size)
                return "skipped", remote[1], before  # the listing's string: no second copy per file
        if self.dry_run:
            self._tick(item.size)
            return "uploaded", "", None
        put = self._put_multipart if item.size > self.threshold else self._put_single
        uri = f"s3://{self.bucket}/{item.key}"
        for _attempt in range(CHANGED_FILE_RETRIES + 1):
            # Stat'ed again, not the plan's stat: a file changed since the plan is sent once, not twice.
            before = _stat(item.fspath)
            etag = put(item)
            after = _stat(item.fspath)
            if after == before:
                return "uploaded", etag, before
            # The object holds bytes read while the file was being written: a mix of versions
            # that may never have existed on disk (its ETag matches only what was sent).
            logger.warning("%s changed while it was being uploaded (size %d -> %d); sending it again",
                           item.local_path, item.size, after[0])
        try:
            self.backend.delete(uri)
        except StorageError as exc:
            logger.warning("%s: could not remove the object uploaded from a changing file (%s)", uri, exc)
        raise StorageError(f"{item.local_path} changed while it was being uploaded, {CHANGED_FILE_RETRIES + 1} "
                           f"times in a row (it is still being written?); its object was removed: re-run when "
                           "nothing writes to the file")

    def _put_single(self, item: UploadItem) -> str:
        with open(item.fspath, "rb") as fh:
            data = fh.read()
        if len(data) != item.size:
            raise StorageError(f"{item.local_path} changed size while uploading ({item.size} -> {len(data)})")
        digest = hashlib.md5(data, usedforsecurity=False)
        uri = f"s3://{self.bucket}/{item.key}"
        self.backend.put(uri, data, item.content_type, md5_digest=digest.digest())
        self._tick(item.size)
        return digest.hexdigest()

    def _put_multipart(self, item: UploadItem) -> str:
        """Multipart upload with a Content-MD5 per part; aborted on any failure or stop."""
        uri = f"s3://{self.bucket}/{item.key}"
        part_size = effective_part_size(item.size, self.part_size)
        upload_id = self.backend.create_multipart_upload(uri, item.content_type)
        parts: List[Tuple[int, str]] = []
        digests: List[bytes] = []
        sent = 0
        try:
            with open(item.local_path, "rb") as fh:
                number = 0
                while True:
                    if self.stop.is_set():
                        raise _Cancelled()
                    data = fh.read(part_size)
                    if not data:
                        break
                    number += 1
                    digest = hashlib.md5(data, usedforsecurity=False).digest()
                    parts.append((number, self.backend.upload_part(uri, upload_id, number, data, md5_digest=digest)))
                    digests.append(digest)
                    sent += len(data)
                    self._tick(len(data))
            if sent != item.size:
                raise StorageError(f"{item.local_path} changed size while uploading ({item.size} -> {sent})")
            got = self.backend.complete_multipart_upload(uri, upload_id, parts)
        except BaseException:
            try:
                self.backend.abort_multipart_upload(uri, upload_id)
            except Exception as exc:  # noqa: BLE001 - best effort; the original error matters
                logger.warning("%s: could not abort multipart upload (%s); the bucket may keep its parts "
                               "until a lifecycle rule removes them", uri, type(exc).__name__)
            raise
        expected = _etag_of_parts(digests)
        if got != expected:
            raise StorageError(f"{uri}: server ETag {got!r} != locally computed multipart ETag {expected!r}")
        return expected


def upload_all(items: Sequence[UploadItem], backend: S3Backend, bucket: str, *, prefix: str = "", workers: int = 16,
               multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD, part_size: int = DEFAULT_PART_SIZE,
               dry_run: bool = False, progress: Optional[ProgressFn] = None,
               existing: Optional[Remote] = None, manifest: Optional[UploadManifest] = None,
               checksum: bool = False, keep_etags: bool = True, count_skipped: bool = False) -> UploadReport:
    """Upload ``items`` to ``bucket`` with ``workers`` threads, skipping what is already there.

    ``existing`` is what the store holds under ``prefix``: a :func:`list_existing` dict, an
    :func:`open_listing` stream, or None for one LIST made here (streamed when ``items`` are in
    key order, as :func:`plan_upload` makes them). With ``manifest`` a file whose stat is the
    recorded one is not read to be compared (unless ``checksum``), and the manifest is replaced
    by one recording every file that is now in the store (not with ``dry_run``).
    ``keep_etags=False`` does not fill :attr:`UploadReport.etags`/``stats`` (a dict entry per file:
    the CLI verifies with the manifest instead). ``progress(n)`` is called from worker threads
    with uploaded byte counts (and skipped files' sizes with ``count_skipped``), batched per
    :data:`PROGRESS_EVERY` s. Per-file errors are collected in ``report.failed``; listing errors
    (missing bucket, bad credentials) raise.
    On Ctrl-C, queued files are cancelled, in-flight ones finish (a multipart
    upload stops at its next part and is aborted) and :class:`UploadInterrupted`
    carries the report so far.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size must be >= {MIN_PART_SIZE} bytes (S3 minimum)")
    if part_size > MAX_PART_SIZE:
        logger.warning("part size %g MiB is over S3's maximum part size; parts of at most %d MiB are sent",
                       part_size / MiB, MAX_PART_SIZE // MiB)
    if backend.settings.max_pool_connections < workers:
        logger.warning("max_pool_connections=%d < workers=%d: connections beyond the pool are discarded; "
                       "pass max_pool_connections=%d", backend.settings.max_pool_connections, workers, workers)
    started = time.monotonic()
    report = UploadReport(files=len(items), dry_run=dry_run)
    pre = normalise_prefix(prefix)
    known = manifest.entries() if manifest is not None and not checksum else None
    joined = _with_remote(items, backend, bucket, prefix, existing, known)
    uploader = _Uploader(backend, bucket, multipart_threshold=multipart_threshold, part_size=part_size,
                         dry_run=dry_run, progress=progress)
    uploader.count_skipped = count_skipped
    writer = _open_writer(manifest) if manifest is not None and not dry_run and _is_sorted(items) else None
    backend.connect(client=False)  # the shared connections, before the threads start (no boto3 client unless needed)

    down_after = max(STORE_DOWN_MIN, workers)
    streak: List[BaseException] = []  # failures in a row (in completion order) that got no answer
    # Results wait here until every earlier item is done, then go to the manifest in key order.
    finished: Dict[int, Optional[Tuple[str, str, StatFields]]] = {}
    next_out = 0

    def record(index: int, item: UploadItem, future: Future) -> None:
        finished[index] = None
        try:
            outcome, etag, stat = future.result()
        except _Cancelled:
            return
        except Exception as exc:  # noqa: BLE001 - one file's failure must not stop the others
            report.failed.append((item.key, str(exc) if isinstance(exc, StorageError)
                                  else f"{type(exc).__name__}: {exc}"))
            if isinstance(exc, (TransientStorageError, OSError)) and is_unreachable(exc):
                report.unreachable.append(item.key)
                streak.append(exc)
                if len(streak) >= down_after and report.store_down is None:
                    report.store_down = unreachable_message(
                        backend, streak[-1], f"{len(streak)} files in a row failed without an answer")
                    uploader.stop.set()
            else:
                streak.clear()  # the server answered
            return
        recorded(index, item, outcome, etag, stat)

    def recorded(index: int, item: UploadItem, outcome: str, etag: str, stat: Optional[StatFields]) -> None:
        """One file done: counted, and its (relpath, ETag, stat) held for the manifest."""
        finished[index] = None
        streak.clear()
        if keep_etags:
            if etag:
                report.etags[item.key] = etag
            if stat is not None:
                report.stats[item.key] = hash(stat)
        if etag and stat is not None and item.key.startswith(pre):
            finished[index] = (item.key[len(pre):], etag, stat)
        if outcome == "skipped":
            report.skipped += 1
            report.skipped_bytes += item.size
        else:
            report.uploaded += 1
            report.bytes += item.size

    def write_done() -> None:
        nonlocal next_out
        while next_out in finished:
            done = finished.pop(next_out)
            next_out += 1
            if done is not None and writer is not None:
                writer.add(done[0], done[2], done[1])

    # A bounded window of futures: memory stays flat for 1,000,000 files, and Ctrl-C has little
    # queued work to cancel. Results held for the in-order manifest are bounded too: no item is
    # started more than ``ahead`` after the oldest one not finished. Finished futures arrive on a
    # queue (O(1) an item; concurrent.futures.wait(FIRST_COMPLETED) sets up and tears down a waiter
    # on all 64 futures of the window at every wake-up).
    window = workers * 4
    ahead = max(window * 16, 1024)
    queue_ = enumerate(joined)
    inflight: Dict[Future, Tuple[int, UploadItem]] = {}
    completed: queue.SimpleQueue[Future] = queue.SimpleQueue()
    submitted = 0
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
    ok = False
    try:
        while True:
            while (len(inflight) < window and submitted - next_out < ahead and report.store_down is None):
                nxt = next(queue_, None)
                if nxt is None:
                    break
                index, (item, remote, mine) = nxt
                submitted += 1
                settled = uploader.settled(item, remote, mine)
                if settled is not None:  # nothing to read or send: decided here, no thread hand-off
                    recorded(index, item, *settled)
                    write_done()
                    continue
                future = pool.submit(uploader.process, item, remote, mine)
                inflight[future] = (index, item)
                future.add_done_callback(completed.put)
            if not inflight:
                break
            try:
                done = [completed.get(timeout=1.0)]
            except queue.Empty:
                continue
            while True:
                try:
                    done.append(completed.get_nowait())
                except queue.Empty:
                    break
            for future in done:
                record(*inflight.pop(future), future)
            write_done()
        ok = True
    except KeyboardInterrupt:
        uploader.stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, (index, item) in inflight.items():  # what finished while we waited for in-flight files
            if future.done() and not future.cancelled():
                record(index, item, future)
        write_done()
        report.interrupted = True
        report.seconds = time.monotonic() - started
        ok = True  # what finished in order is recorded: the re-run hashes only the rest
        raise UploadInterrupted(report) from None
    finally:
        pool.shutdown(wait=True)
        uploader.flush_progress()
        closer = getattr(joined, "close", None)
        if closer is not None:
            closer()  # stops the listing's read-ahead thread
        if writer is not None:
            _close_writer(writer, ok)
    if report.store_down is not None:
        report.not_attempted = report.files - report.uploaded - report.skipped - len(report.failed)
    report.seconds = time.monotonic() - started
    report.manifest_entries = writer.count if writer is not None and ok else 0
    return report


def _open_writer(manifest: UploadManifest) -> Optional[ManifestWriter]:
    try:
        return manifest.writer()
    except OSError as exc:
        logger.warning("cannot write the upload manifest in %s (%s): the next run hashes every file again",
                       manifest.path.parent, exc.strerror or exc)
        return None


def _close_writer(writer: ManifestWriter, commit: bool) -> None:
    if not commit:
        writer.discard()
        return
    try:
        writer.commit()
    except OSError as exc:
        logger.warning("cannot write the upload manifest %s (%s): the next run hashes every file again",
                       writer.manifest.path, exc.strerror or exc)


#: What a ``quick`` function of :func:`_in_order` returns for an item it has fully dealt with.
HANDLED = ("handled", None)


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[T], Tuple[str, Optional[str]]],
              items: Iterable[T], window: int,
              quick: Optional[Callable[[T], Optional[Tuple[str, Optional[str]]]]] = None
              ) -> Iterator[Tuple[T, Future]]:
    """``(item, pool.submit(fn, item))`` in order, with at most ``window`` submitted and not yet
    handed out: memory stays flat however many items (a future for each of 1,000,000 items is
    about 1 GB). ``quick(item)``, when given, is tried first in the calling thread: its answer
    (not None) is used without handing the item to a thread (a hand-off costs more than a
    stat: verifying 6,600 unchanged files took 1.0 s of wall time through the pool), and an
    item it answers :data:`HANDLED` (counted already) is not handed out at all."""
    pending: collections.deque = collections.deque()
    for item in items:
        future: Optional[Future] = None
        if quick is not None:
            try:
                answer = quick(item)
            except OSError as exc:
                future = Future()
                future.set_exception(exc)
            else:
                if answer is HANDLED:
                    continue
                if answer is not None:
                    future = Future()
                    future.set_result(answer)
        pending.append((item, future if future is not None else pool.submit(fn, item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


# -- verifying ---------------------------------------------------------------
def first_part_size(backend: S3Backend, bucket: str, key: str, size: int) -> Optional[int]:
    """Size of part 1 of a multipart object from one ``HEAD ?partNumber=1`` (AWS S3, moto, MinIO
    and newer Ceph RGW answer with that part's Content-Length and ``x-amz-mp-parts-count``), or
    None where the server ignores ``partNumber`` and answers for the whole object (RGW 16.2)."""
    part = backend.stat_part(f"s3://{bucket}/{key}", 1)
    if part.parts_count is None and part.size >= size:
        return None
    return part.size if part.size > 0 else None


class _PartHasher:
    """Running MD5s of one file cut in ``part_size`` parts."""

    def __init__(self, part_size: int) -> None:
        self.part_size = part_size
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.filled = 0
        self.digests: List[bytes] = []

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            take = min(len(view), self.part_size - self.filled)
            self.md5.update(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self.digests.append(self.md5.digest())
                self.md5, self.filled = hashlib.md5(usedforsecurity=False), 0

    def etag(self) -> str:
        return _etag_of_parts(self.digests + [self.md5.digest()] if self.filled else self.digests)


def multipart_etags(path: Path, part_sizes: Iterable[int]) -> Dict[int, str]:
    """:func:`multipart_etag` for several part sizes in ONE read of the file."""
    hashers = [_PartHasher(p) for p in sorted(set(part_sizes))]
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_READ_CHUNK), b""):
            for hasher in hashers:
                hasher.update(chunk)
    return {hasher.part_size: hasher.etag() for hasher in hashers}


#: Part sizes tried for a multipart ETag when the server cannot say the object's own (whole MiB:
#: what boto3/s3transfer (8), the AWS CLI, s5cmd, rclone and this tool use); at most this many.
MAX_PART_SIZE_GUESSES = 32


def part_size_guesses(size: int, parts: int) -> List[int]:
    """Whole-MiB part sizes (>= 5 MiB) that split ``size`` bytes into exactly ``parts`` parts."""
    if parts < 1 or size < 1:
        return []
    if parts == 1:
        return [max(MIN_PART_SIZE, -(-size // MiB) * MiB)]
    low = max(MIN_PART_SIZE, -(-size // parts))  # ceil(size / parts)
    high = -(-size // (parts - 1)) - 1  # the largest p with ceil(size / p) == parts
    first = -(-low // MiB)
    return [m * MiB for m in range(first, high // MiB + 1)][:MAX_PART_SIZE_GUESSES]


def verify(items: Iterable[UploadItem], backend: S3Backend, bucket: str, prefix: str = "", *,
           part_size: int = DEFAULT_PART_SIZE, workers: int = 8,
           known_etags: Optional[Dict[str, str]] = None,
           remote: Optional[Remote] = None,
           known_stats: Optional[Dict[str, Signature]] = None,
           manifest: Optional[UploadManifest] = None, in_key_order: Optional[bool] = None) -> VerifyReport:
    """Check every item against ONE LIST of ``prefix``: present, same size, same ETag.

    Items in key order (a :func:`plan_upload` plan, or any iterable the caller marks so with
    ``in_key_order=True``) are merged with the listing as it streams (memory does not grow
    with the file count); other items are looked up in a dict of the listing. With
    ``manifest`` (the one :func:`upload_all` just wrote) a file whose stat is the recorded one
    is not hashed again.

    ``known_etags`` (from :attr:`UploadReport.etags`) saves re-hashing files
    whose ETag form (single/multipart) matches the remote one; with
    ``known_stats`` (:attr:`UploadReport.stats`) only for files whose
    :func:`file_signature` has not changed since (a file written after its
    upload is hashed again). ``remote`` is a :func:`list_existing` result made
    just before (no upload since), which then serves as that LIST.

    A multipart ETag that ``part_size`` does not reproduce is not reported
    until the object's own part size (one ``HEAD ?partNumber=1``) was tried
    too: ``--verify-only`` without the upload's ``--part-size-mb`` must not
    call an intact object mismatched.
    """
    report = VerifyReport()
    known = known_etags or {}
    if in_key_order is None:
        in_key_order = isinstance(items, Sequence) and _is_sorted(items)
    streamed = in_key_order and not isinstance(remote, dict)
    if streamed:
        entries = manifest.entries() if manifest is not None else iter(())
        if isinstance(remote, Listing):
            listing = remote
        elif remote is not None and not isinstance(remote, dict):
            listing = _StreamListing(remote)
        else:
            listing = open_remote(backend, bucket, prefix, items if isinstance(items, Sequence) else None)
        joined = _joined(items, listing, entries, normalise_prefix(prefix))
    else:
        table = remote if isinstance(remote, dict) else list_existing(backend, bucket, prefix)
        joined = ((item, table.get(item.key), None) for item in items)

    def check_part_sizes(item: UploadItem, etag: str, local: Optional[str]) -> Tuple[str, Optional[str]]:
        """A multipart ETag ``part_size`` does not give: try the object's own part size."""
        try:
            parts = int(etag.rsplit("-", 1)[1])
        except ValueError:
            return "mismatched", f"ETag {etag} in bucket is not an MD5 or multipart ETag"
        used = effective_part_size(item.size, part_size)
        try:
            actual = first_part_size(backend, bucket, item.key, item.size)
        except StorageError as exc:
            logger.debug("%s: HEAD ?partNumber=1 failed (%s); guessing the part size", item.key, exc)
            actual = None
        if actual is not None:
            if actual != used and local_etag_like(item.local_path, item.size, etag, actual) == etag:
                return "ok", None
            return "mismatched", (f"ETag {etag} in bucket != {local or 'the local file'}"
                                  f"{'' if actual == used else f' (also hashed in its {actual}-byte parts)'}")
        guesses = [p for p in part_size_guesses(item.size, parts) if p != used]
        if guesses and etag in multipart_etags(item.local_path, guesses).values():
            return "ok", None
        return "mismatched", (f"ETag {etag} in bucket != {local or 'the local file'} in {used}-byte parts, nor in "
                              f"any whole-MiB part size giving {parts} parts; if it was uploaded with another "
                              "part size, pass that --part-size-mb")

    def check(joined_item: Tuple[UploadItem, Optional[Tuple[int, Optional[str]]], Optional[ManifestEntry]]
              ) -> Tuple[str, Optional[str]]:
        """The answer for an item :func:`settled` left open: listed with its size, the file to hash
        (or its ETag known from the upload)."""
        item, entry, recorded = joined_item
        assert entry is not None
        etag = entry[1]
        local = known.get(item.key)
        if local is not None and known_stats is not None and (
                known_stats.get(item.key) != file_signature(item.local_path)):
            local = None  # changed since it was hashed
        if local is None and recorded is not None and recorded.stat == _stat(item.fspath):
            local = recorded.etag  # the bytes uploaded, and the file has not changed since
        if local is None or ("-" in local) != ("-" in (etag or "")):
            local = local_etag_like(item.local_path, item.size, etag, part_size)
        if local == etag:
            return "ok", None
        if etag and "-" in etag:
            return check_part_sizes(item, etag, local)
        return "mismatched", f"ETag {etag} in bucket != {local} local"

    def settled(joined_item: Tuple[UploadItem, Optional[Tuple[int, Optional[str]]], Optional[ManifestEntry]]
                ) -> Optional[Tuple[str, Optional[str]]]:
        """The answer when it needs no more than a stat: missing, another size, or the manifest's
        ETag for an unchanged file (counted here: :data:`HANDLED`); else None, and :func:`check`,
        in a thread, hashes."""
        item, entry, recorded = joined_item
        if entry is None:
            return "missing", None
        size, etag = entry
        if size != item.size:
            return "mismatched", f"size {size} in bucket != {item.size} local"
        if (item.key not in known and recorded is not None and recorded.etag == etag
                and recorded.stat == _stat(item.fspath)):
            report.ok += 1  # an "ok" has no place in the report's lists: counted here, nothing handed on
            return HANDLED
        return None

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="verify") as pool:
        for (item, _, _), future in _in_order(pool, check, joined, window=max(1, workers) * 4, quick=settled):
            try:
                outcome, reason = future.result()
            except OSError as exc:
                report.failed.append((item.key, f"cannot read {item.local_path}: {exc.strerror or exc}"))
                continue
            if outcome == "ok":
                report.ok += 1
            elif outcome == "missing":
                report.missing.append(item.key)
            else:
                report.mismatched.append((item.key, reason or ""))
    return report


def empty_listing() -> Listing:
    """A listing of nothing (a bucket that does not exist yet, for ``--dry-run --create-bucket``)."""
    return _StreamListing(iter(()))
