"""Large objects over real HTTP (moto server; Ceph RGW with --ceph): multipart uploads above the
threshold, parallel ranged GETs, streams that ``torch.save``/``torch.load`` use, atomicity, cleanup of
killed uploads, bounded memory, and errors that name the URI.

Small limits keep it fast: threshold 5 MiB + 1, 5 MiB parts (S3's minimum), 4 in flight.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from blip3o_storage import Storage
from blip3o_storage.errors import AccessDeniedError, BucketNotFoundError, ObjectNotFoundError
from blip3o_storage.storage.range_reader import ObjectChangedError
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.forking import in_forked_child
from blip3o_storage.testing.paths import REPO_ROOT

MiB = 1 << 20
PART = 5 * MiB
THRESHOLD = PART + 1
CONCURRENCY = 4
LIMITS = {"multipart_threshold": THRESHOLD, "multipart_chunksize": PART, "max_concurrency": CONCURRENCY}
SIZES = {"empty": 0, "one": 1, "threshold-1": THRESHOLD - 1, "threshold": THRESHOLD, "threshold+1": THRESHOLD + 1,
         "parts+tail": 3 * PART + 12345, "exact-parts": 3 * PART}


def _expected_parts(size: int) -> int:
    """Parts of a multipart object of ``size`` bytes (0: one PUT)."""
    return 0 if size <= THRESHOLD else -(-size // PART)


def _parts_in(etag: str | None) -> int:
    return int(etag.rsplit("-", 1)[1]) if etag and "-" in etag else 0


@pytest.fixture
def big(s3_endpoint: S3Endpoint) -> tuple[Storage, str, S3Backend]:
    """(Storage with small multipart limits, 's3://fresh-bucket', its S3Backend)."""
    _, bucket = new_bucket(s3_endpoint)
    storage = Storage(s3_endpoint.ceph_config(**LIMITS))
    return storage, bucket, storage.s3_backend(bucket + "/x")


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_round_trips_at_every_boundary(big: tuple[Storage, str, S3Backend], tmp_path: Path, size: int) -> None:
    storage, bucket, backend = big
    data = os.urandom(size)
    parts = _expected_parts(size)
    # put / get (memoryview slices up; parallel ranged GETs down)
    storage.put(f"{bucket}/put", data)
    assert storage.get(f"{bucket}/put") == data
    assert _parts_in(storage.stat(f"{bucket}/put").etag) == parts
    # open_write in odd-sized pieces / open_read
    with storage.open(f"{bucket}/stream", "wb") as writer:
        for offset in range(0, size, 1_000_003):
            writer.write(data[offset:offset + 1_000_003])
    assert _parts_in(storage.stat(f"{bucket}/stream").etag) == parts
    with storage.open(f"{bucket}/stream", "rb") as reader:
        assert reader.read() == data
        reader.seek(size // 3)
        assert reader.read(PART + 7) == data[size // 3:size // 3 + PART + 7]
    # put_file / get_file
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    etag = storage.put_file(f"{bucket}/file", source)
    assert etag == storage.stat(f"{bucket}/file").etag and _parts_in(etag) == parts
    storage.get_file(f"{bucket}/file", tmp_path / "out" / "copy.bin")
    assert (tmp_path / "out" / "copy.bin").read_bytes() == data
    assert os.listdir(tmp_path / "out") == ["copy.bin"]
    # server-side copy (UploadPartCopy above the threshold)
    storage.copy(f"{bucket}/file", f"{bucket}/copied")
    assert storage.get(f"{bucket}/copied") == data
    # local -> s3 and s3 -> local through the facade's copy
    storage.copy(str(source), f"{bucket}/from-local")
    storage.copy(f"{bucket}/from-local", str(tmp_path / "to-local.bin"))
    assert (tmp_path / "to-local.bin").read_bytes() == data
    assert backend.list_multipart_uploads(bucket + "/") == []


def test_multipart_etag_is_checked_and_matches_parts(big: tuple[Storage, str, S3Backend]) -> None:
    storage, bucket, _ = big
    data = os.urandom(2 * PART + 10)
    digests = [hashlib.md5(data[o:o + PART]).digest() for o in range(0, len(data), PART)]
    expected = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
    with storage.open(f"{bucket}/etag", "wb") as writer:
        writer.write(data)
    assert storage.stat(f"{bucket}/etag").etag == expected
    assert writer.etag == expected  # type: ignore[attr-defined]


def test_torch_save_and_load_through_streams(big: tuple[Storage, str, S3Backend]) -> None:
    torch = pytest.importorskip("torch")
    storage, bucket, _ = big
    generator = torch.Generator().manual_seed(0)
    state = {"weight": torch.randn(1024, 3000, generator=generator), "bias": torch.randn(77, generator=generator),
             "step": torch.tensor(12345), "half": torch.randn(999, 7, generator=generator).half(),
             "nested": {"ints": torch.arange(10_000)}}
    uri = f"{bucket}/ckpt/epoch_1.pth"
    with storage.open(uri, "wb") as writer:
        torch.save(state, writer)
    assert _parts_in(storage.stat(uri).etag) >= 2  # ~12 MB: a multipart upload
    with storage.open(uri, "rb") as reader:
        loaded = torch.load(reader, weights_only=True)
    assert set(loaded) == set(state)
    for key in ("weight", "bias", "step", "half"):
        assert loaded[key].dtype == state[key].dtype and torch.equal(loaded[key], state[key])
    assert torch.equal(loaded["nested"]["ints"], state["nested"]["ints"])


@pytest.mark.parametrize("size", [100, 3 * PART], ids=["single-put", "multipart"])
def test_exception_inside_open_write_leaves_no_object_and_no_upload(big: tuple[Storage, str, S3Backend],
                                                                    size: int) -> None:
    storage, bucket, backend = big
    uri = f"{bucket}/crashed.pth"
    with pytest.raises(RuntimeError, match="out of memory"), storage.open(uri, "wb") as writer:
        writer.write(os.urandom(size))
        raise RuntimeError("CUDA out of memory")
    assert not storage.exists(uri)
    assert backend.list_multipart_uploads(bucket + "/") == []
    assert list(storage.list(bucket)) == []


def test_object_replaced_during_read_is_an_error_not_a_mix(big: tuple[Storage, str, S3Backend]) -> None:
    storage, bucket, _ = big
    uri = f"{bucket}/changing.bin"
    storage.put(uri, os.urandom(3 * PART))
    with storage.open(uri, "rb") as reader:
        first = reader.read(10)
        storage.put(uri, os.urandom(3 * PART))  # replaced between the reader's ranged GETs
        with pytest.raises(ObjectChangedError, match="changing.bin"):
            reader.seek(PART * 2)
            reader.read(PART)
    assert len(first) == 10


_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from blip3o_storage import Storage
    config, uri = json.loads(sys.argv[1]), sys.argv[2]
    writer = Storage(config).open(uri, "wb")
    writer.write(os.urandom(3 * 5 * 1024 * 1024))  # 3 parts: the upload has started
    print("parts-sent", flush=True)
    time.sleep(600)  # killed here, mid-upload
""")


def test_killed_writer_leaves_no_object_and_its_parts_are_cleaned_up(big: tuple[Storage, str, S3Backend],
                                                                     s3_endpoint: S3Endpoint) -> None:
    storage, bucket, backend = big
    uri = f"{bucket}/ckpt/killed.pth"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(s3_endpoint.ceph_config(**LIMITS)), uri],
                             stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"parts-sent"
        deadline = time.monotonic() + 60
        uploads = backend.list_multipart_uploads(bucket + "/ckpt/")
        while not (uploads and backend.list_parts(uploads[0].uri, uploads[0].upload_id)):
            assert time.monotonic() < deadline, "the child's multipart upload never showed a part"
            time.sleep(0.2)
            uploads = backend.list_multipart_uploads(bucket + "/ckpt/")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not storage.exists(uri)  # never completed: nothing visible
    with pytest.raises(ObjectNotFoundError, match="killed.pth"):
        storage.open(uri, "rb")
    left = backend.list_multipart_uploads(bucket + "/ckpt/")
    assert [u.uri for u in left] == [uri] and left[0].initiated is not None
    age = time.time() - left[0].initiated  # moto reports a fixed 2010 start time; RGW the real one
    assert backend.abort_incomplete_uploads(bucket + "/ckpt/", older_than_s=age + 3600) == 0  # too young
    assert backend.abort_incomplete_uploads(bucket + "/ckpt/", older_than_s=0) == 1
    assert backend.list_multipart_uploads(bucket + "/") == []


def test_missing_bucket_and_object_errors_name_the_uri(big: tuple[Storage, str, S3Backend], tmp_path: Path) -> None:
    storage, bucket, _ = big
    nobucket = f"s3://no-such-bucket-{uuid.uuid4().hex[:10]}/ckpt/epoch_1.pth"
    for write in (lambda: storage.put(nobucket, os.urandom(3 * PART)),
                  lambda: _write(storage, nobucket, 100),
                  lambda: _write(storage, nobucket, 3 * PART)):
        with pytest.raises(BucketNotFoundError, match=nobucket.split("/")[2]):
            write()
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(3 * PART))
    with pytest.raises(BucketNotFoundError, match="no-such-bucket"):
        storage.put_file(nobucket, source)
    missing = f"{bucket}/ckpt/missing.pth"
    for read in (lambda: storage.open(missing, "rb"), lambda: storage.get(missing),
                 lambda: storage.get_file(missing, tmp_path / "dl" / "m.pth"),
                 lambda: storage.copy(missing, f"{bucket}/other")):
        with pytest.raises(ObjectNotFoundError, match="missing.pth"):
            read()
    assert not (tmp_path / "dl" / "m.pth").exists()


def _write(storage: Storage, uri: str, size: int) -> None:
    with storage.open(uri, "wb") as writer:
        writer.write(os.urandom(size))


def test_no_write_permission_is_access_denied_naming_the_uri(moto_auth_endpoint: S3Endpoint,
                                                             tmp_path: Path) -> None:
    """Credentials the server rejects: AccessDeniedError naming the URI, for every write path."""
    _, bucket = new_bucket(moto_auth_endpoint)
    denied = Storage(moto_auth_endpoint.ceph_config(secret_key="not-the-secret", **LIMITS))
    uri = f"{bucket}/ckpt/denied.pth"
    source = tmp_path / "f.bin"
    source.write_bytes(os.urandom(2 * PART))
    for write in (lambda: _write(denied, uri, 2 * PART), lambda: _write(denied, uri, 10),
                  lambda: denied.put_file(uri, source), lambda: denied.put(uri, source.read_bytes())):
        with pytest.raises(AccessDeniedError, match="denied.pth"):
            write()


def test_transfer_pool_is_per_process(big: tuple[Storage, str, S3Backend]) -> None:
    storage, bucket, backend = big
    data = os.urandom(3 * PART)
    storage.put(f"{bucket}/fork.bin", data)
    assert storage.get(f"{bucket}/fork.bin") == data
    parent_pool = backend.transfer_pool

    def child() -> int:
        if backend._pool is not None:  # the parent's pool (and its threads) must not cross the fork
            return 3
        if storage.get(f"{bucket}/fork.bin") != data:
            return 4
        with storage.open(f"{bucket}/from-child.bin", "wb") as writer:
            writer.write(data)
        return 0 if backend.transfer_pool is not parent_pool else 5

    assert in_forked_child(child) == 0
    assert storage.get(f"{bucket}/from-child.bin") == data
    assert backend.transfer_pool is parent_pool


_MEMORY_PROBE = textwrap.dedent("""
    import json, os, sys, tracemalloc
    from blip3o_storage import Storage
    config, bucket, path, size = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    storage = Storage(config)
    storage.s3_backend(bucket + "/warm").connect()  # boto3 client (multipart calls) and signed-HTTP path,
    storage.get_range(bucket + "/warm", 0, 1)  # and a connection, made before measuring
    chunk = os.urandom(1 << 20)
    peaks = {}
    tracemalloc.start()
    def measure(name, fn):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peaks[name] = tracemalloc.get_traced_memory()[1] - base
    def stream():
        with storage.open(bucket + "/streamed", "wb") as writer:
            for _ in range(size >> 20):
                writer.write(chunk)
    measure("open_write", stream)
    measure("put_file", lambda: storage.put_file(bucket + "/file", path))
    measure("get_file", lambda: storage.get_file(bucket + "/file", path + ".back"))
    def read():
        with storage.open(bucket + "/streamed", "rb") as reader:
            while reader.read(1 << 20):
                pass
    measure("open_read", read)
    print(json.dumps(peaks))
""")


def test_memory_is_bounded_by_parts_not_object_size(big: tuple[Storage, str, S3Backend], tmp_path: Path,
                                                    s3_endpoint: S3Endpoint) -> None:
    """A 200 MiB object streamed up and down allocates at most part size x (concurrency + 2)
    (30 MiB here) at its peak, measured by tracemalloc in a fresh process."""
    storage, bucket, _ = big
    size = 200 * MiB
    storage.put(f"{bucket}/warm", b"w")
    path = tmp_path / "big.bin"
    with open(path, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(os.urandom(1 << 20))
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, json.dumps(s3_endpoint.ceph_config(**LIMITS)),
                           bucket, str(path), str(size)], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    bound = PART * (CONCURRENCY + 2)
    assert set(peaks) == {"open_write", "put_file", "get_file", "open_read"}
    for name, peak in peaks.items():
        assert peak < bound, f"{name}: peak {peak / MiB:.1f} MiB >= {bound / MiB:.0f} MiB, object {size // MiB} MiB"
    assert storage.stat(f"{bucket}/streamed").size == size
    assert Path(str(path) + ".back").stat().st_size == size
    for key in ("streamed", "file", "warm"):  # the dev RGW is a 4 GiB memstore: do not keep 400 MiB per run
        storage.delete(f"{bucket}/{key}")


def test_settings_accept_sizes_and_reject_bad_values(tmp_path: Path) -> None:
    from blip3o_storage.errors import ConfigError
    from blip3o_storage.storage.config import load_config
    conf = tmp_path / "petreloss.conf"
    conf.write_text("[c]\nhost_base = http://127.0.0.1:1\naccess_key = a\nsecret_key = b\n"
                    "multipart_threshold = 64MB\nmultipart_chunksize = 16MiB\nmax_concurrency = 4\n")
    settings = load_config(conf).settings_for(None)
    assert (settings.multipart_threshold, settings.multipart_chunksize, settings.max_concurrency) == (
        64 * MiB, 16 * MiB, 4)
    for key, value in (("multipart_chunksize", "1MB"), ("multipart_threshold", "lots"), ("max_concurrency", "0"),
                       ("multipart_threshold", "6GiB")):
        with pytest.raises(ConfigError, match=key):
            load_config({"endpoint_url": "http://127.0.0.1:1", key: value})


def test_reader_is_a_binary_file(big: tuple[Storage, str, S3Backend]) -> None:
    storage, bucket, _ = big
    storage.put(f"{bucket}/r.bin", b"0123456789")
    reader: Any = storage.open(f"{bucket}/r.bin", "rb")
    assert isinstance(reader, io.IOBase) and reader.seekable()
    assert reader.seek(-3, io.SEEK_END) == 7 and reader.read() == b"789"
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)
