"""Ceph-only checks against the real RGW from ``tools/ceph_dev.sh`` (run with ``--ceph``).

* https (beast ``ssl_endpoint``, self-signed cert): boto3 >= 1.36's default
  request checksums make RGW 16.2 answer ``411 MissingContentLength``; our
  ``botocore_config`` (``request_checksum_calculation='when_required'``) works.
  Plus ``verify_ssl = false`` and the error without the CA bundle.
* Wrong credentials: RGW checks SigV4 signatures (moto does not by default),
  so a bad secret or access key must give AccessDeniedError (PermissionError)
  naming the URI and never the secret.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from blip3o_storage import AccessDeniedError, Storage, StorageError, TransientStorageError
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.transfer.upload import multipart_etag, plan_upload, upload_all, verify

pytestmark = pytest.mark.ceph

MiB = 1 << 20


def raw_client(endpoint: S3Endpoint, **config: Any):
    """A plain boto3 client: botocore defaults plus path addressing (and ``config``)."""
    return boto3.client("s3", endpoint_url=endpoint.endpoint_url, region_name="us-east-1",
                        aws_access_key_id=endpoint.access_key, aws_secret_access_key=endpoint.secret_key,
                        verify=endpoint.ca_bundle, config=Config(s3={"addressing_style": "path"}, **config))


# -- https: the checksum setting ---------------------------------------------
def test_boto3_default_checksums_fail_over_https_with_411(ceph_https_endpoint):
    """Why botocore_config sets request_checksum_calculation='when_required' off AWS."""
    _, bucket_uri = new_bucket(ceph_https_endpoint)
    bucket = bucket_uri[len("s3://"):]
    default = raw_client(ceph_https_endpoint)
    try:
        default.put_object(Bucket=bucket, Key="default.txt", Body=b"hello")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "MissingContentLength", exc.response
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 411, exc.response
    else:
        pytest.fail(f"boto3 {boto3.__version__} / botocore {botocore.__version__} with default settings could "
                    f"PUT over https to this Ceph RGW: the 411 MissingContentLength this test documents is gone. "
                    f"Re-check whether blip3o_storage.storage.s3_backend.botocore_config still needs "
                    f"request_checksum_calculation='when_required', then update this test.")
    # The one setting is the whole difference: the same client with it succeeds.
    fixed = raw_client(ceph_https_endpoint, request_checksum_calculation="when_required",
                       response_checksum_validation="when_required")
    fixed.put_object(Bucket=bucket, Key="fixed.txt", Body=b"hello")
    assert fixed.get_object(Bucket=bucket, Key="fixed.txt")["Body"].read() == b"hello"


def test_storage_over_https_put_get_list_and_multipart_upload(ceph_https_endpoint, tmp_path: Path):
    storage, bucket_uri = new_bucket(ceph_https_endpoint)  # ceph_config() carries the CA bundle
    bucket = bucket_uri[len("s3://"):]
    assert storage.backend_for(bucket_uri + "/x").settings.verify == ceph_https_endpoint.ca_bundle
    payload = os.urandom(300_000)
    storage.put(f"{bucket_uri}/dir/blob.bin", payload)
    storage.put(f"{bucket_uri}/dir/sub/caption.txt", "ünïcode".encode())
    assert storage.get(f"{bucket_uri}/dir/blob.bin") == payload
    assert storage.get_range(f"{bucket_uri}/dir/blob.bin", 1000, 500) == payload[1000:1500]
    assert storage.get_text(f"{bucket_uri}/dir/sub/caption.txt") == "ünïcode"
    assert storage.stat(f"{bucket_uri}/dir/blob.bin").size == len(payload)
    assert [i.key for i in storage.list(f"{bucket_uri}/dir")] == ["blob.bin", "sub/caption.txt"]
    assert [(i.key, i.is_dir) for i in storage.list(f"{bucket_uri}/dir", recursive=False)] == \
        [("blob.bin", False), ("sub/", True)]

    src = tmp_path / "src"
    (src / "raw").mkdir(parents=True)
    big = os.urandom(11 * MiB)  # 3 parts of 5 MiB: multipart, every part with a Content-MD5
    (src / "raw" / "shard.tar").write_bytes(big)
    (src / "raw" / "0001.txt").write_text("small")
    plan = plan_upload(src, "up")
    backend = storage.backend_for(bucket_uri + "/x")
    report = upload_all(plan.items, backend, bucket, prefix="up", workers=2,
                        multipart_threshold=5 * MiB, part_size=5 * MiB)
    assert report.ok and report.uploaded == 2, report.failed
    assert storage.get(f"{bucket_uri}/up/raw/shard.tar") == big
    assert storage.stat(f"{bucket_uri}/up/raw/shard.tar").etag == multipart_etag(src / "raw" / "shard.tar", 5 * MiB)
    assert storage.stat(f"{bucket_uri}/up/raw/shard.tar").etag.endswith("-3")
    assert verify(plan.items, backend, bucket, "up", part_size=5 * MiB).passed


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_ssl_false_works_without_ca_bundle(ceph_https_endpoint):
    _, bucket_uri = new_bucket(ceph_https_endpoint)
    storage = Storage({"endpoint_url": ceph_https_endpoint.endpoint_url, "access_key": ceph_https_endpoint.access_key,
                       "secret_key": ceph_https_endpoint.secret_key, "verify_ssl": False})
    assert storage.s3_backend(bucket_uri + "/x").settings.verify is False
    storage.put(f"{bucket_uri}/insecure.txt", b"ok")
    assert storage.get(f"{bucket_uri}/insecure.txt") == b"ok"


def test_without_ca_bundle_verification_fails_clearly(ceph_https_endpoint, monkeypatch):
    for var in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    _, bucket_uri = new_bucket(ceph_https_endpoint)
    # max_attempts=2 keeps botocore's own backoff short; we check that we add no retries on top.
    storage = Storage({"endpoint_url": ceph_https_endpoint.endpoint_url, "access_key": ceph_https_endpoint.access_key,
                       "secret_key": ceph_https_endpoint.secret_key, "max_attempts": 2})
    uri = f"{bucket_uri}/never.txt"
    with pytest.raises(StorageError) as info:
        storage.get(uri)
    message = str(info.value)
    assert uri in message
    assert "SSL" in message and "certificate verify failed" in message and "ca_bundle" in message
    assert not isinstance(info.value, TransientStorageError)  # a bad certificate is not transient
    assert ceph_https_endpoint.secret_key not in message and ceph_https_endpoint.secret_key not in repr(info.value)
    stats = storage.retry_stats()["default"]
    assert stats["retries"] == 0, stats
    with pytest.raises(StorageError, match="certificate verify failed"):
        storage.put(f"{bucket_uri}/never.txt", b"x")


# -- authentication (RGW checks signatures) ---------------------------------
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_wrong_credentials_are_access_denied_naming_uri_not_secret(request, scheme, wrong):
    good: S3Endpoint = request.getfixturevalue("ceph_endpoint" if scheme == "http" else "ceph_https_endpoint")
    storage, bucket_uri = new_bucket(good)
    storage.put(f"{bucket_uri}/obj.txt", b"data")
    bad_secret = "WrongSecret" + uuid.uuid4().hex
    bad = S3Endpoint("bad", good.endpoint_url,
                     good.access_key if wrong == "secret" else "WRONGKEY" + uuid.uuid4().hex[:12].upper(),
                     bad_secret if wrong == "secret" else good.secret_key, ca_bundle=good.ca_bundle)
    bad_storage = Storage(bad.ceph_config())
    calls = {
        "get": lambda: bad_storage.get(f"{bucket_uri}/obj.txt"),
        "stat": lambda: bad_storage.stat(f"{bucket_uri}/obj.txt"),
        "put": lambda: bad_storage.put(f"{bucket_uri}/new.txt", b"x"),
        "list": lambda: list(bad_storage.list(f"{bucket_uri}/")),
    }
    for name, call in calls.items():
        with pytest.raises(AccessDeniedError) as info:
            call()
        assert isinstance(info.value, PermissionError)
        message = str(info.value)
        assert bucket_uri in message and "access denied" in message, (name, message)
        for secret in (bad_secret, good.secret_key):
            assert secret not in message and secret not in repr(info.value), name
    assert bad_storage.retry_stats()["default"]["retries"] == 0
    assert not storage.exists(f"{bucket_uri}/new.txt")
