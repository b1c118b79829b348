"""The conformance suite (:mod:`blip3o_storage.testing.conformance`) over real HTTP: S3Backend and the
Storage facade on moto_server and on the real Ceph RGW (with --ceph); object GET/PUT on the signed-HTTP
path, or (boto3_only) all through boto3. The serverless backends are in tests/unit/test_conformance_local.py."""
from __future__ import annotations

from typing import Any

import pytest

from blip3o_storage import Storage
from blip3o_storage.testing.conformance import NAMES, BackendConformance
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket


def _storage_on(endpoint: S3Endpoint, kind: str) -> tuple[Storage, str]:
    """(Storage, folder URI) in a fresh bucket: fast path (signed HTTP) unless ``kind`` ends with boto3_only."""
    _, bucket = new_bucket(endpoint)
    storage = Storage(endpoint.ceph_config(fast_path=not kind.endswith("boto3_only")))
    backend: Any = storage.backend_for(f"{bucket}/x")  # an S3Backend
    assert (backend.http is None) == kind.endswith("boto3_only")
    return storage, f"{bucket}/root"


class _OnS3(BackendConformance):
    """Storage (``facade``) or its S3Backend, in a fresh bucket on the server ``s3_root`` names."""

    facade = True

    @pytest.fixture
    def s3_root(self, request: pytest.FixtureRequest) -> tuple[Storage, str]:
        kind = request.param
        return _storage_on(request.getfixturevalue("moto_endpoint" if kind.startswith("moto") else "ceph_endpoint"),
                           kind)

    @pytest.fixture
    def backend(self, s3_root: tuple[Storage, str]):
        storage, folder = s3_root
        return storage if self.facade else storage.backend_for(folder)

    @pytest.fixture
    def root_uri(self, s3_root: tuple[Storage, str]) -> str:
        return s3_root[1]


@pytest.mark.parametrize("s3_root", ["moto_server", "moto_server_boto3_only"], indirect=True)
class TestStorageMotoServer(_OnS3):
    pass


@pytest.mark.parametrize("s3_root", ["moto_server"], indirect=True)
class TestS3BackendMotoServer(_OnS3):
    facade = False


@pytest.mark.parametrize("s3_root", [pytest.param("ceph_rgw", marks=pytest.mark.ceph),
                                     pytest.param("ceph_rgw_boto3_only", marks=pytest.mark.ceph)], indirect=True)
class TestStorageCephRGW(_OnS3):
    pass


@pytest.mark.parametrize("s3_root", [pytest.param("ceph_rgw", marks=pytest.mark.ceph)], indirect=True)
class TestS3BackendCephRGW(_OnS3):
    facade = False


def test_signed_http_path_passes_signature_checks_for_awkward_names(moto_auth_endpoint):
    """moto with auth on checks SigV4 like RGW does: the signed-HTTP path's own signing must
    hold for GET, ranged GET and PUT. moto's verifier rejects even boto3's own signature for keys
    with ``+``, ``%``, ``=&`` or non-ASCII (it re-encodes the decoded path), so those are checked
    against the real RGW only (the conformance suite with --ceph, where RGW verifies every request)."""
    storage = Storage(moto_auth_endpoint.ceph_config())
    backend = storage.s3_backend("s3://signed-names/x")
    backend.ensure_bucket("signed-names")
    assert backend.http is not None  # path-style endpoint: object GET/PUT go the signed-HTTP way
    for name in ["plain.txt", "with space.jpg", "hash#tag.txt", "deep/er/path/file.bin"]:
        uri = f"s3://signed-names/{name}"
        storage.put(uri, name.encode() * 3)
        assert storage.get(uri) == name.encode() * 3
        assert storage.get_range(uri, 1, 4) == (name.encode() * 3)[1:5]
    wrong = Storage(moto_auth_endpoint.ceph_config(secret_key="not-the-secret"))
    with pytest.raises(PermissionError):
        wrong.get(f"s3://signed-names/{NAMES[0]}")
