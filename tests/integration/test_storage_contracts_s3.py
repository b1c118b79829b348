"""The S3 backend's public gateway and multipart calls (issue #15) against every
real-HTTP S3 server (moto always, Ceph RGW with ``--ceph``), and an upload with a
part size over S3's maximum (sized by s3transfer's ChunksizeAdjuster, verified
with the same size). The server-free contracts are in ``test_storage_contracts.py``.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from blip3o_storage import InvalidPathError, ObjectNotFoundError
from blip3o_storage.transfer.upload import MIN_PART_SIZE, MiB, UploadItem, upload_all, verify


def test_call_is_the_gateway_with_retries_and_error_mapping(s3_bucket) -> None:
    storage, bucket = s3_bucket
    backend = storage.s3_backend(bucket + "/x")
    name = bucket[len("s3://"):]
    before = backend.stats.snapshot()["calls"]
    head = backend.call(f"{bucket}/x", "head bucket", lambda client: client.head_bucket(Bucket=name))
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 200
    with pytest.raises(ObjectNotFoundError, match=re.escape(f"{bucket}/missing") + r".*\(my head\)"):
        backend.call(f"{bucket}/missing", "my head", lambda client: client.head_object(Bucket=name, Key="missing"))
    assert backend.stats.snapshot()["calls"] == before + 2
    assert backend.bucket_exists(name)
    assert not backend.bucket_exists(name + "-none")
    assert backend.ensure_bucket(name) is False


def test_multipart_upload_through_public_methods(s3_bucket) -> None:
    storage, bucket = s3_bucket
    backend = storage.s3_backend(bucket + "/x")
    uri = f"{bucket}/mp/object.bin"
    first, second = os.urandom(MIN_PART_SIZE), os.urandom(1234)
    upload_id = backend.create_multipart_upload(uri, "application/octet-stream")
    etags = [backend.upload_part(uri, upload_id, 1, first), backend.upload_part(uri, upload_id, 2, second)]
    listed = backend.list_parts(uri, upload_id)
    assert [(n, size) for n, size, _ in listed] == [(1, len(first)), (2, len(second))]
    assert [etag for _, _, etag in listed] == [e.strip('"') for e in etags]
    etag = backend.complete_multipart_upload(uri, upload_id, [(1, etags[0]), (2, etags[1])])
    digests = [hashlib.md5(first).digest(), hashlib.md5(second).digest()]
    assert etag == f"{hashlib.md5(b''.join(digests)).hexdigest()}-2"
    assert storage.get(uri) == first + second
    part = backend.stat_part(uri, 1)
    # AWS, moto, MinIO, newer RGW: part 1 and the count; RGW 16.2 ignores partNumber (whole object)
    assert (part.size, part.parts_count) in ((len(first), 2), (len(first) + len(second), None))


def test_aborted_multipart_upload_is_gone(s3_bucket) -> None:
    storage, bucket = s3_bucket
    backend = storage.s3_backend(bucket + "/x")
    uri = f"{bucket}/mp/aborted.bin"
    upload_id = backend.create_multipart_upload(uri)
    backend.upload_part(uri, upload_id, 1, b"x" * 100)
    backend.abort_multipart_upload(uri, upload_id)
    with pytest.raises(ObjectNotFoundError):
        backend.list_parts(uri, upload_id)
    assert not storage.exists(uri)
    with pytest.raises(InvalidPathError, match="names a bucket"):
        backend.create_multipart_upload(bucket)


def test_upload_with_a_6000_mib_part_size_is_accepted_and_verifies(s3_bucket, tmp_path: Path, caplog) -> None:
    storage, bucket = s3_bucket
    backend = storage.s3_backend(bucket + "/x")
    name = bucket[len("s3://"):]
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(6 * MiB))
    items = [UploadItem(local_path=path, key="p/big.bin", size=6 * MiB, content_type="application/octet-stream")]
    report = upload_all(items, backend, name, prefix="p/", workers=1, multipart_threshold=MIN_PART_SIZE,
                        part_size=6000 * MiB)
    assert report.ok and report.uploaded == 1, report.failed
    assert report.etags["p/big.bin"].endswith("-1")  # one multipart part, within 5 GiB
    assert "over S3's maximum part size" in caplog.text
    assert verify(items, backend, name, "p/", part_size=6000 * MiB).passed
