"""mmengine.fileio goes through our backend for s3://, and the petrel
``Client`` drop-in behaves like the closed client."""
from __future__ import annotations

import importlib
import io
import sys

import mmengine.fileio as fileio
import mmengine.fileio.io as fileio_io
import pytest

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (registers the backend)
from blip3o_storage.integrations.compat import install_petrel_client_shim
from blip3o_storage.integrations.mmengine_backend import S3FileBackend
from blip3o_storage.integrations.petrel_client import Client
from blip3o_storage.testing.endpoints import new_bucket


@pytest.fixture
def conf_bucket(s3_endpoint, tmp_path, monkeypatch):
    """A fresh bucket plus a petreloss.conf for it, also exported as BLIP3O_CEPH_CONFIG."""
    storage, bucket = new_bucket(s3_endpoint)
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf", cluster="cluster1")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(conf))
    # mmengine caches backends (enable_singleton) by prefix + backend_args: without this, a call
    # with no backend_args would reuse the backend built from an earlier test's BLIP3O_CEPH_CONFIG
    # (the moto server when the Ceph RGW run comes second).
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    return storage, bucket, str(conf)


def test_s3_prefix_maps_to_our_backend(conf_bucket):
    storage, bucket, _ = conf_bucket
    assert isinstance(fileio.get_file_backend(f"{bucket}/x.txt"), S3FileBackend)
    assert isinstance(fileio.get_file_backend(f"cluster1:{bucket}/x.txt"), S3FileBackend)


def test_mmengine_fileio_roundtrip(conf_bucket):
    storage, bucket, conf = conf_bucket
    args = {"backend": "blip3o_s3", "ceph_config": conf}
    fileio.put(b"\x00binary\xff", f"{bucket}/raw/a.bin", backend_args=args)
    fileio.put_text("caption ü", f"{bucket}/raw/sub/b.txt", backend_args=args)
    assert fileio.get(f"{bucket}/raw/a.bin", backend_args=args) == b"\x00binary\xff"
    assert fileio.get_text(f"cluster1:{bucket}/raw/sub/b.txt") == "caption ü"  # via env config
    assert storage.get(f"{bucket}/raw/sub/b.txt") == "caption ü".encode()
    assert fileio.exists(f"{bucket}/raw/a.bin")
    assert not fileio.exists(f"{bucket}/raw/none.bin")
    assert fileio.isdir(f"{bucket}/raw/sub")
    assert fileio.isfile(f"{bucket}/raw/a.bin") and not fileio.isfile(f"{bucket}/raw/sub")
    assert fileio.join_path(f"{bucket}/raw/", "sub", "b.txt") == f"{bucket}/raw/sub/b.txt"
    with fileio.get_local_path(f"{bucket}/raw/a.bin") as local, open(local, "rb") as fh:
        assert fh.read() == b"\x00binary\xff"
    with pytest.raises(FileNotFoundError, match="none.bin"):
        fileio.get(f"{bucket}/raw/none.bin")


def test_mmengine_list_dir_or_file(conf_bucket):
    storage, bucket, _ = conf_bucket
    for name in ["a.jpg", "b.txt", "d1/c.jpg", "d1/d2/e.txt"]:
        storage.put(f"{bucket}/root/{name}", b"x")
    root = f"{bucket}/root"
    assert sorted(fileio.list_dir_or_file(root)) == ["a.jpg", "b.txt", "d1"]
    assert sorted(fileio.list_dir_or_file(root, list_dir=False)) == ["a.jpg", "b.txt"]
    assert sorted(fileio.list_dir_or_file(root, list_file=False)) == ["d1"]
    assert sorted(fileio.list_dir_or_file(root, list_dir=False, recursive=True)) == \
        ["a.jpg", "b.txt", "d1/c.jpg", "d1/d2/e.txt"]
    assert sorted(fileio.list_dir_or_file(root, list_dir=False, suffix=".jpg", recursive=True)) == \
        ["a.jpg", "d1/c.jpg"]
    assert sorted(fileio.list_dir_or_file(root, recursive=True)) == \
        ["a.jpg", "b.txt", "d1", "d1/c.jpg", "d1/d2", "d1/d2/e.txt"]


def test_petrel_client_conventions(conf_bucket):
    storage, bucket, conf = conf_bucket
    client = Client(conf)
    url = f"cluster1:{bucket}/images/0001.jpg"
    assert client.get(url) is None  # missing key -> None, as the closed client
    assert client.put(url, b"jpeg-bytes") == len(b"jpeg-bytes")
    assert client.get(url) == b"jpeg-bytes"
    stream = client.get(url, enable_stream=True)
    assert isinstance(stream, io.BytesIO)
    assert stream.read() == b"jpeg-bytes"
    assert client.contains(url) and not client.contains(f"cluster1:{bucket}/images")
    assert client.isdir(f"cluster1:{bucket}/images")
    client.put(f"{bucket}/images/sub/x.txt", "text")
    assert sorted(client.list(f"{bucket}/images/")) == ["0001.jpg", "sub/"]
    assert client.size(url) == len(b"jpeg-bytes")
    client.delete(url)
    assert client.get(url) is None


def test_petrel_shim_lets_openuni_import_unchanged(conf_bucket, monkeypatch):
    _, bucket, conf = conf_bucket
    monkeypatch.delitem(sys.modules, "petrel_client", raising=False)
    monkeypatch.delitem(sys.modules, "petrel_client.client", raising=False)
    assert install_petrel_client_shim()
    module = importlib.import_module("petrel_client.client")
    client = module.Client(conf)
    client.put(f"{bucket}/shim.txt", b"ok")
    assert client.get(f"{bucket}/shim.txt") == b"ok"
