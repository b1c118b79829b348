"""S3 endpoints the tests (and anyone checking a deployment) run against.

:class:`S3Endpoint` names a server and its credentials; :func:`new_bucket` makes a fresh bucket on it.
The pytest fixtures that start servers (``tests/conftest.py``) build on these helpers.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blip3o_storage.storage.facade import Storage
from blip3o_storage.testing.local_s3 import start_moto_server
from blip3o_storage.testing.paths import REPO_ROOT

CEPH_DEV_DIR = Path(os.environ.get("CEPH_DEV_DIR", "/tmp/blip3o-ceph"))


@dataclass
class S3Endpoint:
    """Where an S3 server listens and how to log in (credentials never printed)."""

    name: str
    endpoint_url: str
    access_key: str
    secret_key: str
    ca_bundle: str | None = None

    def ceph_config(self, **extra: object) -> dict:
        config: dict = {"endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key}
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


def new_bucket(endpoint: S3Endpoint) -> tuple:
    """Create a uniquely named bucket; return (Storage, 's3://bucket')."""
    storage = Storage(endpoint.ceph_config())
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    backend: Any = storage.backend_for(f"s3://{bucket}/x")  # an S3Backend
    backend.ensure_bucket(bucket)
    return storage, f"s3://{bucket}"


def read_env_file(path: Path) -> dict:
    """``KEY=value`` lines of a shell env file (``tools/ceph_dev.sh`` writes one)."""
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip('"')
    return values


def ceph_dev_env(start: bool = True) -> dict:
    """The env of the Ceph RGW from ``tools/ceph_dev.sh`` (started first if it is not up and ``start``)."""
    env_file = CEPH_DEV_DIR / "env"
    status = subprocess.run(["bash", str(REPO_ROOT / "tools" / "ceph_dev.sh"), "status"], capture_output=True)
    if (status.returncode != 0 or not env_file.exists()) and start:
        subprocess.run(["bash", str(REPO_ROOT / "tools" / "ceph_dev.sh"), "up"], check=True)
    return read_env_file(env_file)


def ceph_endpoint_from_env(env: dict) -> S3Endpoint:
    return S3Endpoint("ceph_rgw", env["CEPH_S3_ENDPOINT"], env["CEPH_S3_ACCESS_KEY"], env["CEPH_S3_SECRET_KEY"])


def ceph_https_endpoint_from_env(env: dict) -> S3Endpoint:
    return S3Endpoint("ceph_rgw_https", env["CEPH_S3_HTTPS_ENDPOINT"], env["CEPH_S3_ACCESS_KEY"],
                      env["CEPH_S3_SECRET_KEY"], ca_bundle=env["CEPH_S3_CA_BUNDLE"])


@contextmanager
def moto_auth_server() -> Iterator[S3Endpoint]:
    """A moto server that checks SigV4 signatures (moto skips auth unless told), with one
    IAM user allowed ``s3:*``: wrong access keys and wrong secrets get a real 403."""
    import boto3

    saved = os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT")
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # CreateUser, CreateAccessKey, PutUserPolicy
    try:
        server = start_moto_server()
    finally:
        if saved is None:
            del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
        else:
            os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = saved
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
