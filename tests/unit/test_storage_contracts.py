"""The storage layer's contracts (issue #15): one backend base class, the S3
backend's public gateway (retries, deadline, error mapping) with multipart and
bucket calls, part sizes within S3's limits, per-process state.

No server here (the client is built, never used): the gateway, multipart and
upload cases against real servers are in ``integration/test_storage_contracts_s3.py``.
"""
from __future__ import annotations

import inspect
import os
import pickle
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

import blip3o_storage
from blip3o_storage import InvalidPathError, ObjectInfo, ObjectNotFoundError, Storage, StorageBackend, StorageError
from blip3o_storage.cli import common as cli_common
from blip3o_storage.storage.local_backend import LocalBackend
from blip3o_storage.storage.retry import RetryStats
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.transfer import upload as upload_module
from blip3o_storage.transfer.upload import (
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    MiB,
    effective_part_size,
    local_etag_like,
    multipart_etag,
)

GiB = 1024 * MiB
#: A config whose client is built but never sends a request.
OFFLINE = {"endpoint_url": "http://127.0.0.1:9", "access_key": "AK", "secret_key": "SK"}
TiB = 1024 * GiB


# -- 1. one backend base class ------------------------------------------------
class DictBackend(StorageBackend):
    """The primitives only, over a dict: everything else comes from the base class."""

    def __init__(self) -> None:
        self.objects: Dict[str, bytes] = {}
        self.range_calls: List[tuple] = []

    def get(self, uri: str) -> bytes:
        try:
            return self.objects[uri]
        except KeyError:
            raise ObjectNotFoundError(f"{uri}: no such object") from None

    def _get_range(self, uri: str, start: int, length: int) -> bytes:
        self.range_calls.append((start, length))
        return self.get(uri)[start:start + length]

    def stat(self, uri: str) -> ObjectInfo:
        return ObjectInfo(key=uri, size=len(self.get(uri)))

    def put(self, uri: str, data: bytes, content_type: Optional[str] = None) -> None:
        self.objects[uri] = data

    def list(self, uri: str, recursive: bool = True) -> Iterator[ObjectInfo]:
        prefix = uri.rstrip("/") + "/"
        for key in sorted(k for k in self.objects if k.startswith(prefix)):
            yield ObjectInfo(key=key[len(prefix):], size=len(self.objects[key]))

    def delete(self, uri: str) -> None:
        self.objects.pop(uri, None)

    def isdir(self, uri: str) -> bool:
        return any(True for _ in self.list(uri))


def test_storage_backend_is_an_abstract_base_class_with_the_primitives_abstract() -> None:
    assert blip3o_storage.StorageBackend is StorageBackend
    with pytest.raises(TypeError):
        StorageBackend()  # type: ignore[abstract]
    assert StorageBackend.__abstractmethods__ == {"get", "_get_range", "stat", "put", "list", "delete", "isdir"}

    class Partial(StorageBackend):
        def get(self, uri: str) -> bytes:
            return b""

    with pytest.raises(TypeError, match="abstract"):
        Partial()  # type: ignore[abstract]
    assert issubclass(LocalBackend, StorageBackend) and issubclass(S3Backend, StorageBackend)
    assert isinstance(Storage().backend_for("/tmp/x"), StorageBackend)


def test_shared_methods_are_written_once_on_the_primitives() -> None:
    backend = DictBackend()
    backend.put("m/a.txt", "ünï\n".encode())
    backend.put("m/bad.txt", b"\xff\xfe")
    assert backend.get_text("m/a.txt") == "ünï\n"
    with pytest.raises(StorageError, match="bad.txt.*not valid utf-8"):
        backend.get_text("m/bad.txt")
    # range checks: once, before the backend's own read
    assert backend.get_range("m/a.txt", 1, 2) == "ünï\n".encode()[1:3]
    assert backend.get_range("m/a.txt", 3, 0) == b""
    for start, length in ((-1, 2), (0, -1)):
        with pytest.raises(InvalidPathError, match="a.txt: invalid range"):
            backend.get_range("m/a.txt", start, length)
    assert backend.range_calls == [(1, 2)]
    # isfile / exists defaults
    assert backend.isfile("m/a.txt") and not backend.isfile("m/none") and not backend.isfile("m")
    assert backend.exists("m/a.txt") and backend.exists("m") and not backend.exists("m/none")
    # the subclasses do not redefine what the base writes once
    for cls in (LocalBackend, S3Backend):
        assert "get_text" not in vars(cls) and "get_range" not in vars(cls), cls


def test_local_backend_contract(tmp_path: Path) -> None:
    storage = Storage()
    path = str(tmp_path / "d" / "f.bin")
    storage.put(path, b"0123456789")
    assert storage.isfile(path) and not storage.isfile(str(tmp_path / "d")) and not storage.isfile(path + "x")
    assert storage.get_range(path, 8, 10) == b"89"
    with pytest.raises(InvalidPathError):
        storage.get_range(path, -1, 1)


def test_facade_types_the_s3_backend(tmp_path: Path) -> None:
    storage = Storage(OFFLINE)
    backend = storage.s3_backend("s3://any-bucket/key")
    assert isinstance(backend, S3Backend) and backend is storage.backend_for("s3://any-bucket/other")
    with pytest.raises(InvalidPathError, match="not an S3 URI"):
        storage.s3_backend(str(tmp_path / "local"))


# -- 2. the public S3 gateway (its calls against servers: integration/test_storage_contracts_s3.py)
def test_upload_and_cli_use_only_the_public_backend_api() -> None:
    for module in (upload_module, cli_common):
        source = inspect.getsource(module)
        assert not re.search(r"backend\._\w", source), module.__name__
        assert not re.search(r"\.client\b", source), module.__name__


# -- 3. part sizes within S3's limits ------------------------------------------
@pytest.mark.parametrize("requested", [1 * MiB, 5 * MiB, 16 * MiB, 6000 * MiB, 10 * GiB])
@pytest.mark.parametrize("size", [1, 12 * MiB, 6 * GiB, 200 * GiB, 5 * TiB])
def test_part_sizes_are_within_s3_limits(requested: int, size: int) -> None:
    part = effective_part_size(size, requested)
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE == 5 * GiB
    assert -(-size // part) <= MAX_PARTS == 10_000
    if MIN_PART_SIZE <= requested <= MAX_PART_SIZE and -(-size // requested) <= MAX_PARTS:
        assert part == requested  # a size that fits is used as asked


def test_6000_mib_parts_are_capped_and_verify_uses_the_same_size(tmp_path: Path) -> None:
    assert effective_part_size(100 * MiB, 6000 * MiB) == 5 * GiB
    assert effective_part_size(5 * TiB, 6000 * MiB) == 5 * GiB  # 1024 parts
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 * MiB))
    single = multipart_etag(path, 5 * GiB)
    assert single.endswith("-1")
    assert local_etag_like(path, 3 * MiB, single, 6000 * MiB) == single


# -- 4. per-process state ---------------------------------------------------------
def test_s3_backend_pid_guard_rebuilds_the_client_after_a_fork_that_bypassed_the_hooks() -> None:
    backend = Storage(OFFLINE).s3_backend("s3://b/x")
    client = backend.client
    assert backend._client_pid == os.getpid() and backend.client is client
    backend._owner_pid = -1  # as in a child forked without os.fork's hooks: state built elsewhere
    assert backend.client is not client and backend._client_pid == os.getpid()


def test_storage_and_retry_stats_pickle_without_locks_and_keep_their_shape() -> None:
    storage = Storage(OFFLINE)
    backend = storage.s3_backend("s3://b/x")
    backend.stats.add(calls=3)
    backend.stats.record_retry("connection")
    expected = {"calls": 3, "retries": 1, "botocore_retries": 0, "failures": 0, "by_reason": {"connection": 1}}
    assert storage.retry_stats() == {"default": expected}
    assert "_lock" not in storage.__getstate__()
    clone = pickle.loads(pickle.dumps(storage))
    assert clone._lock.acquire(blocking=False)
    zero = {"calls": 0, "retries": 0, "botocore_retries": 0, "failures": 0, "by_reason": {}}
    assert clone.retry_stats() == {"default": zero}  # counters are per process
    assert isinstance(clone.s3_backend("s3://b/x").stats, RetryStats)


def test_no_drops_locks_on_pickle_in_the_storage_layer() -> None:
    from blip3o_storage.storage import facade, retry, s3_backend
    for module in (facade, retry, s3_backend):
        assert "DropsLocksOnPickle" not in inspect.getsource(module), module.__name__
