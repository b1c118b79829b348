"""The conformance suite (:mod:`blip3o_storage.testing.conformance`) on backends that need no server:
local disk (the backend itself and through Storage) and moto in-process (through Storage)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from blip3o_storage import Storage
from blip3o_storage.storage.local_backend import LocalBackend
from blip3o_storage.testing.conformance import BackendConformance


class TestLocalBackend(BackendConformance):
    @pytest.fixture
    def backend(self) -> LocalBackend:
        return LocalBackend()

    @pytest.fixture
    def root_uri(self, tmp_path) -> str:
        return str(tmp_path / "root")


class TestStorageLocal(BackendConformance):
    @pytest.fixture
    def backend(self) -> Storage:
        return Storage()

    @pytest.fixture
    def root_uri(self, tmp_path) -> str:
        return str(tmp_path / "root")


class TestStorageMotoInProcess(BackendConformance):
    @pytest.fixture
    def backend(self, monkeypatch) -> Iterator[Storage]:
        for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "BLIP3O_CEPH_CONFIG"):
            monkeypatch.delenv(var, raising=False)
        with mock_aws():
            storage = Storage({"access_key": "testing", "secret_key": "testing", "region": "us-east-1"})
            backend: Any = storage.backend_for("s3://conformance/x")  # an S3Backend
            backend.ensure_bucket("conformance")
            yield storage

    @pytest.fixture
    def root_uri(self) -> str:
        return "s3://conformance/root"
