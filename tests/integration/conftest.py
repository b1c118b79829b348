"""Server fixtures: S3 endpoints to run the same tests against.

* ``moto_server``: a real moto server process over HTTP (session-scoped).
* ``ceph_rgw``: the real Ceph RGW from ``tools/ceph_dev.sh`` (``--ceph``).
* ``s3_bucket``: a fresh bucket on each endpoint, as (:class:`Storage`, ``s3://bucket``).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blip3o_storage.testing.endpoints import (
    S3Endpoint,
    ceph_dev_env,
    ceph_endpoint_from_env,
    ceph_https_endpoint_from_env,
    moto_auth_server,
    new_bucket,
)
from blip3o_storage.testing.local_s3 import LocalS3Server, start_moto_server
from blip3o_storage.testing.shards import Shards
from blip3o_storage.testing.tiny import TinyData, upload_tree
from blip3o_storage.testing.tools import run_upload_shards


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalS3Server]:
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: LocalS3Server) -> S3Endpoint:
    return S3Endpoint("moto_server", moto_server.endpoint_url, moto_server.access_key, moto_server.secret_key)


@pytest.fixture(scope="session")
def ceph_env(request: pytest.FixtureRequest) -> dict:
    if not request.config.getoption("--ceph"):
        pytest.skip("needs --ceph")
    return ceph_dev_env()


@pytest.fixture(scope="session")
def ceph_endpoint(ceph_env: dict) -> S3Endpoint:
    return ceph_endpoint_from_env(ceph_env)


@pytest.fixture(scope="session")
def ceph_https_endpoint(ceph_env: dict) -> S3Endpoint:
    return ceph_https_endpoint_from_env(ceph_env)


@pytest.fixture(params=["moto_server", pytest.param("ceph_rgw", marks=pytest.mark.ceph)])
def s3_endpoint(request: pytest.FixtureRequest) -> S3Endpoint:
    """Every real-HTTP S3 server: moto always, Ceph RGW with --ceph."""
    return request.getfixturevalue("moto_endpoint" if request.param == "moto_server" else "ceph_endpoint")


@pytest.fixture
def s3_bucket(s3_endpoint: S3Endpoint) -> tuple:
    """(Storage, 's3://fresh-bucket') on each real-HTTP S3 server."""
    return new_bucket(s3_endpoint)


@pytest.fixture(scope="session")
def moto_auth_endpoint() -> Iterator[S3Endpoint]:
    """A moto server that checks SigV4 signatures, with one IAM user allowed ``s3:*``."""
    with moto_auth_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_conf(tmp_path: Path, s3_endpoint: S3Endpoint) -> Path:
    """A petreloss.conf for ``s3_endpoint``."""
    return s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")


@pytest.fixture
def target(s3_bucket: tuple, s3_conf: Path) -> tuple:
    """(storage, 's3://bucket', bucket name, CLI args for that bucket)."""
    storage, bucket_uri = s3_bucket
    bucket = bucket_uri[len("s3://"):]
    return storage, bucket_uri, bucket, ["--config", str(s3_conf), "--bucket", bucket]


@pytest.fixture
def uploaded(shards: Shards, s3_bucket, s3_endpoint, tmp_path: Path):
    """Shards uploaded with the CLI under shards/, the extracted files per object under raw/."""
    storage, bucket = s3_bucket
    name = bucket[len("s3://"):]
    assert run_upload_shards(s3_endpoint, tmp_path, "--bucket", name, "--prefix", "shards", str(shards.tars)) == 0
    for path in sorted(shards.raw.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            storage.put(f"{bucket}/raw/{path.relative_to(shards.raw).as_posix()}", path.read_bytes())
    return shards, bucket, s3_endpoint


@pytest.fixture
def tiny_s3(tiny: TinyData, s3_bucket, s3_endpoint):
    """The tiny tree uploaded: (data, bucket URI, endpoint)."""
    storage, bucket = s3_bucket
    upload_tree(storage, tiny.raw, f"{bucket}/raw")
    storage.put(f"{bucket}/data.json", tiny.data_json.read_bytes())
    return tiny, bucket, s3_endpoint
