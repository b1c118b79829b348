"""data.json -> :class:`SampleTable`, built once per node and mapped by every rank and worker.

The table file lives in a node-local cache folder (``table_cache_dir``; default
``$BLIP3O_TABLE_CACHE``, else ``<tempdir>/blip3o-cache-<uid>/tables``), named by
a hash of the data.json's identity -- each file's path or URI, size, and mtime
(local) or ETag (S3) -- and the table format version: an edited data.json gets
a new table, an unchanged one is never parsed again. The first rank to get
there builds it under an exclusive ``flock`` (temp file + ``os.replace``, so a
reader never maps half a table); the others wait on the lock and then map the
finished file. ``flock`` is released by the kernel when a builder dies, so a
crashed build leaves no stale lock.

Tables are pruned when one is built: those not used for 30 days, then the least
recently used beyond 20 GiB (:func:`prune_tables`; ``$BLIP3O_TABLE_MAX_AGE_DAYS``,
``$BLIP3O_TABLE_MAX_BYTES``), each under its lock, so a rank never loses one it is opening.

``table_cache_dir=False`` keeps the table in memory (bytes, no file): still
compact and free of copy-on-read in workers, but one copy per rank.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Union

from blip3o_storage.errors import BucketNotFoundError, ConfigError, ObjectNotFoundError
from blip3o_storage.reading.data_json import Entry, Parsed, parse_data_json_columns
from blip3o_storage.reading.disk_cache import check_cache_root
from blip3o_storage.reading.sample_table import FORMAT_VERSION, SampleTable, TableWriter
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.uri import is_s3_uri, parse_uri

__all__ = ["CacheDir", "data_files", "default_cache_dir", "load_sample_table", "prune_tables", "read_entries"]

logger = logging.getLogger(__name__)

#: ``None``: the default folder; ``False``: no file, an in-memory table; else the folder.
CacheDir = Union[str, "os.PathLike[str]", None, bool]


def default_cache_dir() -> Path:
    """``$BLIP3O_TABLE_CACHE``, else ``<tempdir>/blip3o-cache-<uid>/tables`` (node-local)."""
    env = os.environ.get("BLIP3O_TABLE_CACHE")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"blip3o-cache-{os.geteuid()}" / "tables"


def missing_bucket(uri: str, option: str, value: str) -> BucketNotFoundError:
    """A BucketNotFoundError naming the bucket and the option that points into it."""
    bucket = parse_uri(uri).bucket if is_s3_uri(uri) else uri
    return BucketNotFoundError(f"bucket {bucket!r} does not exist ({uri}, {option}={value}); "
                               f"create the bucket, or fix {option} or the endpoint in ceph_config")


def data_files(data_path: str, storage: Storage) -> list[str]:
    """The data.json files of ``data_path``: itself, or every ``*.json`` in the folder, sorted
    (every rank sees the same order), local or S3."""
    if not isinstance(data_path, (str, os.PathLike)) or not os.fspath(data_path):
        raise ConfigError(f"data_path must be a path or s3:// URI, got {data_path!r}")
    data_path = os.fspath(data_path)
    if data_path.endswith(".json"):
        files = [data_path]
    elif is_s3_uri(data_path):
        base = data_path.rstrip("/")
        try:
            files = [f"{base}/{info.key}" for info in storage.list(data_path, recursive=False)
                     if not info.is_dir and info.key.endswith(".json")]
        except BucketNotFoundError:
            raise missing_bucket(data_path, "data_path", data_path) from None
    else:
        files = glob.glob(os.path.join(glob.escape(data_path), "*.json"))
    if not files:
        raise ObjectNotFoundError(f"data_path {data_path}: no .json file there; pass data.json or a folder of them")
    return sorted(files)


def _read(path: str, data_path: str, storage: Storage) -> bytes:
    try:
        return storage.get(path)
    except BucketNotFoundError:
        raise missing_bucket(path, "data_path", data_path) from None
    except ObjectNotFoundError:
        raise ObjectNotFoundError(f"data file {path} does not exist (data_path={data_path})") from None


def read_entries(data_path: str, storage: Storage, files: list[str] | None = None) -> Iterator[list[Entry]]:
    """The validated entries of each data file of ``data_path``, one file at a time."""
    for parsed in read_parsed(data_path, storage, files):
        yield parsed.entries


def read_parsed(data_path: str, storage: Storage, files: list[str] | None = None) -> Iterator[Parsed]:
    """:func:`read_entries` with the path columns the table stores (see :func:`parse_data_json_columns`)."""
    for path in files if files is not None else data_files(data_path, storage):
        yield parse_data_json_columns(_read(path, data_path, storage), path)


def _identity(files: list[str], storage: Storage) -> str:
    """A hash of what the table is built from: each file and its version, and the format."""
    parts: list[object] = [FORMAT_VERSION]
    for path in files:
        if is_s3_uri(path):
            info = storage.stat(path)
            parts.append([path, info.size, info.etag, info.mtime])
        else:
            st = os.stat(path)
            parts.append([os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]


def _no_entries(data_path: str, files: list[str]) -> ConfigError:
    # an empty list is valid JSON, but a 0-sample dataset only fails later, far from here
    return ConfigError(f"data_path {data_path}: no entries in {', '.join(files)}; "
                       f"write the samples there (tools/make_data_json.py) or point data_path elsewhere")


def _write_table(path: Path, data_path: str, files: list[str], storage: Storage) -> None:
    """Build the table of ``files`` into ``path`` (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer = TableWriter(f)
            for parsed in read_parsed(data_path, storage, files):
                writer.add(parsed)
                del parsed  # one data file's entries in memory at a time
            writer.close()
            if writer.count == 0:
                raise _no_entries(data_path, files)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


#: Tables not used (mapped) for this many days are removed when a table is built ($BLIP3O_TABLE_MAX_AGE_DAYS).
MAX_AGE_DAYS = 30.0
#: Then the least recently used are removed until the folder holds this much ($BLIP3O_TABLE_MAX_BYTES).
MAX_BYTES = 20 << 30


@contextmanager
def _locked(root: Path, key: str, mode: int) -> Iterator[bool]:
    """Hold ``flock(mode)`` on the table's lock file (True), or False when ``mode`` has LOCK_NB
    and someone else holds it. The lock file may be removed by :func:`prune_tables` (under
    LOCK_EX) between our open and our lock: then it is not the file at that name any more, and
    we lock the new one, so two processes never think they hold the same table's lock."""
    name = root / f".table-{key}.lock"
    while True:
        with open(name, "a") as lock:
            try:
                fcntl.flock(lock, mode)
            except BlockingIOError:
                yield False
                return
            try:
                st = os.fstat(lock.fileno())
                try:
                    same = os.stat(name).st_ino == st.st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield True
                    return
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not a number") from None


def prune_tables(root: Path, max_age_days: float | None = None, max_bytes: float | None = None,
                 keep: tuple[Path, ...] = ()) -> list[Path]:
    """Remove the tables of ``root`` not used for ``max_age_days``, then the least recently used
    until the rest fit in ``max_bytes`` (defaults: :data:`MAX_AGE_DAYS`, :data:`MAX_BYTES`, or
    the environment variables named there); never one in ``keep``. Returns what was removed.

    "Used" is the table's mtime, which every :func:`load_sample_table` sets. A table is removed
    only under its exclusive lock, taken without waiting (a rank opening or building it holds
    the lock: the table is skipped), together with its lock file. A rank that has already
    mapped a removed table keeps reading it (an unlinked file stays valid while mapped); a
    later load builds it again."""
    max_age = _env_float("BLIP3O_TABLE_MAX_AGE_DAYS", MAX_AGE_DAYS) if max_age_days is None else max_age_days
    budget = _env_float("BLIP3O_TABLE_MAX_BYTES", MAX_BYTES) if max_bytes is None else max_bytes
    now = time.time()
    tables = []
    for path in root.glob("table-*.b3t"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        tables.append((st.st_mtime, st.st_size, path))
    tables.sort()  # least recently used first
    total = sum(size for _, size, _ in tables)
    kept = {p.resolve() for p in keep}
    removed = []
    for mtime, size, path in tables:
        if now - mtime <= max_age * 86400 and total <= budget:
            continue
        if path.resolve() in kept:
            continue
        key = path.name[len("table-"):-len(".b3t")]
        with _locked(root, key, fcntl.LOCK_EX | fcntl.LOCK_NB) as held:
            if not held:
                continue
            try:
                if path.stat().st_mtime != mtime:  # used since we looked
                    continue
                path.unlink()
            except FileNotFoundError:
                continue
            (root / f".table-{key}.lock").unlink(missing_ok=True)  # still ours: no one else can hold it
        total -= size
        removed.append(path)
        logger.info("removed the sample table %s (%.1f MB, last used %.1f days ago)",
                    path, size / 1e6, (now - mtime) / 86400)
    return removed


def load_sample_table(data_path: str, storage: Storage, cache_dir: CacheDir = None) -> SampleTable:
    """The entries of ``data_path`` (see :func:`data_files`) as a :class:`SampleTable`: mapped from
    the node's cache folder (built there first if needed, then the folder pruned: see
    :func:`prune_tables`), or in memory with ``cache_dir=False``."""
    data_path = os.fspath(data_path)
    files = data_files(data_path, storage)
    if cache_dir is False:
        out = io.BytesIO()
        writer = TableWriter(out)
        for parsed in read_parsed(data_path, storage, files):
            writer.add(parsed)
        writer.close()
        if writer.count == 0:
            raise _no_entries(data_path, files)
        return SampleTable(out.getvalue())
    root = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
    try:
        check_cache_root(root)
    except ConfigError as exc:
        raise ConfigError(f"table_cache_dir (the node-local sample table folder): {exc}; "
                          f"or set table_cache_dir=False to keep the table in memory") from None
    key = _identity(files, storage)
    path = root / f"table-{key}.b3t"
    with _locked(root, key, fcntl.LOCK_SH) as _:  # pruning waits while we find and map it
        if path.exists():
            os.utime(path)  # used now (what pruning goes by)
            return SampleTable.open(str(path))
    with _locked(root, key, fcntl.LOCK_EX) as _:  # one builder per node; the others wait, then map its file
        built = not path.exists()
        if built:
            logger.info("building the sample table of %s in %s", data_path, path)
            _write_table(path, data_path, files, storage)
        os.utime(path)
        table = SampleTable.open(str(path))
    if built:
        prune_tables(root, keep=(path,))
    return table
