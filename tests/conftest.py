"""Shared fixtures: S3 endpoints to run the same tests against.

* ``moto_server``: a real moto server process over HTTP (session-scoped).
* ``ceph_rgw``: the real Ceph RGW from ``tools/ceph_dev.sh`` (``--ceph``).
* ``s3_root``: a fresh bucket on a given endpoint, as ``s3://bucket`` plus a
  :class:`Storage` for it.
"""
from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import pytest

from blip3o_storage import Storage
from blip3o_storage.testing.local_s3 import LocalS3Server, start_moto_server

REPO_ROOT = Path(__file__).resolve().parents[1]
CEPH_DEV_DIR = Path(os.environ.get("CEPH_DEV_DIR", "/tmp/blip3o-ceph"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--ceph", action="store_true", default=False,
                     help="also run against the real Ceph RGW (tools/ceph_dev.sh up; started if needed)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if config.getoption("--ceph"):
        return
    skip = pytest.mark.skip(reason="needs --ceph (real Ceph RGW from tools/ceph_dev.sh)")
    for item in items:
        if "ceph" in item.keywords:
            item.add_marker(skip)


@dataclass
class S3Endpoint:
    """Where an S3 server listens and how to log in (credentials never printed)."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    ca_bundle: Optional[str] = None

    def ceph_config(self, **extra: object) -> dict:
        config = {"endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key}
        if self.ca_bundle:
            config["ca_bundle"] = self.ca_bundle
        config.update(extra)
        return config

    def write_petreloss_conf(self, path: Path, cluster: str = "cluster1") -> Path:
        path.write_text(f"[DEFAULT]\ndefault_cluster = {cluster}\n\n[{cluster}]\naccess_key = {self.access_key}\n"
                        f"secret_key = {self.secret_key}\nhost_base = {self.endpoint_url}\n")
        return path

    def __repr__(self) -> str:
        return f"S3Endpoint({self.name}, {self.endpoint_url})"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[LocalS3Server]:
    server = start_moto_server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_endpoint(moto_server: LocalS3Server) -> S3Endpoint:
    return S3Endpoint("moto_server", moto_server.endpoint_url, moto_server.access_key, moto_server.secret_key)


def _read_env_file(path: Path) -> dict:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


@pytest.fixture(scope="session")
def ceph_env(request: pytest.FixtureRequest) -> dict:
    if not request.config.getoption("--ceph"):
        pytest.skip("needs --ceph")
    env_file = CEPH_DEV_DIR / "env"
    status = subprocess.run(["bash", str(REPO_ROOT / "tools" / "ceph_dev.sh"), "status"], capture_output=True)
    if status.returncode != 0 or not env_file.exists():
        subprocess.run(["bash", str(REPO_ROOT / "tools" / "ceph_dev.sh"), "up"], check=True)
    return _read_env_file(env_file)


@pytest.fixture(scope="session")
def ceph_endpoint(ceph_env: dict) -> S3Endpoint:
    return S3Endpoint("ceph_rgw", ceph_env["CEPH_S3_ENDPOINT"], ceph_env["CEPH_S3_ACCESS_KEY"],
                      ceph_env["CEPH_S3_SECRET_KEY"])


@pytest.fixture(scope="session")
def ceph_https_endpoint(ceph_env: dict) -> S3Endpoint:
    return S3Endpoint("ceph_rgw_https", ceph_env["CEPH_S3_HTTPS_ENDPOINT"], ceph_env["CEPH_S3_ACCESS_KEY"],
                      ceph_env["CEPH_S3_SECRET_KEY"], ca_bundle=ceph_env["CEPH_S3_CA_BUNDLE"])


def new_bucket(endpoint: S3Endpoint) -> tuple:
    """Create a uniquely named bucket; return (Storage, 's3://bucket')."""
    storage = Storage(endpoint.ceph_config())
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    storage.backend_for(f"s3://{bucket}/x").ensure_bucket(bucket)
    return storage, f"s3://{bucket}"


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
    """A moto server that checks SigV4 signatures (moto skips auth unless told), with one
    IAM user allowed ``s3:*``: wrong access keys and wrong secrets get a real 403."""
    import json

    import boto3

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "3")  # CreateUser, CreateAccessKey, PutUserPolicy
        server = start_moto_server()
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1",
                           aws_access_key_id="setup", aws_secret_access_key="setup")
        iam.create_user(UserName="blip3o-test")
        key = iam.create_access_key(UserName="blip3o-test")["AccessKey"]
        iam.put_user_policy(UserName="blip3o-test", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        yield S3Endpoint("moto_auth", server.endpoint_url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        server.stop()
