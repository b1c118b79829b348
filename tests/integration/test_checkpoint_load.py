"""Checkpoints saved to and loaded from ``s3://`` through mmengine's own entry points.

Two load paths are checked (see ``blip3o_storage/integrations/mmengine_checkpoint.py``):
our loader, registered for ``(cluster:)s3://``, which ``torch.load``\\ s from a
streamed reader (``load_checkpoint``, ``Runner(load_from=...)``), and mmengine's
``load_from_ceph`` / ``backend_args=dict(backend='petrel')``, which go through
mmengine's PetrelBackend over our drop-in petrel ``Client``.
"""
from __future__ import annotations

from typing import Any, Dict

import mmengine.fileio as fileio
import mmengine.fileio.io as fileio_io
import mmengine.runner.checkpoint as mm_checkpoint
import mmengine.runner.runner as mm_runner
import pytest
import torch
from mmengine.runner import Runner, load_checkpoint, save_checkpoint
from mmengine.runner.checkpoint import CheckpointLoader

import blip3o_storage.integrations.mmengine_backend  # noqa: F401  (installs the integration)
from blip3o_storage.integrations import mmengine_checkpoint
from blip3o_storage.integrations.compat import install_petrel_client_shim


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))


def _equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def env(s3_bucket, s3_conf, monkeypatch):
    """A fresh bucket; its petreloss.conf (default cluster ``cluster1``) as BLIP3O_CEPH_CONFIG."""
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(s3_conf))
    monkeypatch.setattr(fileio_io, "backend_instances", {})
    storage, bucket = s3_bucket
    return storage, bucket, str(s3_conf)


def test_mmengine_names_are_ours_after_import() -> None:
    """The loader for both s3 prefixes, and every binding of save_checkpoint mmengine calls."""
    for uri in ("s3://b/k.pth", "cluster1:s3://b/k.pth"):
        assert CheckpointLoader._get_checkpoint_loader(uri) is mmengine_checkpoint.load_from_blip3o_s3
    for module in (mm_checkpoint, mm_runner, __import__("mmengine.runner", fromlist=["x"])):
        assert module.save_checkpoint is mmengine_checkpoint.save_checkpoint
    mmengine_checkpoint.install()  # idempotent: mmengine's function stays the one delegated to
    assert mm_runner.save_checkpoint.__wrapped__.__module__ == "mmengine.runner.checkpoint"


def test_save_and_load_checkpoint_on_s3(env) -> None:
    storage, bucket, _ = env
    source = _model(0)
    uri = f"{bucket}/ckpts/model.pth"
    save_checkpoint({"state_dict": source.state_dict(), "meta": {"epoch": 3}}, uri)
    assert storage.stat(uri).size > 0
    for name in (uri, f"cluster1:{uri}"):
        target = _model(1)
        assert not _equal(target.state_dict(), source.state_dict())
        checkpoint = load_checkpoint(target, name, map_location="cpu")
        assert checkpoint["meta"] == {"epoch": 3}
        assert _equal(target.state_dict(), source.state_dict())


def test_runner_load_from_s3(env, tmp_path) -> None:
    _, bucket, _ = env
    source = _model(0)
    uri = f"{bucket}/ckpts/pretrained.pth"
    save_checkpoint({"state_dict": source.state_dict()}, uri)
    runner = Runner(model=_model(1), work_dir=str(tmp_path / "work"), load_from=uri)
    runner.load_or_resume()
    assert _equal(runner.model.state_dict(), source.state_dict())


def test_petrel_backend_over_our_client(env) -> None:
    """``backend_args=dict(backend='petrel')`` and mmengine's own load_from_ceph: PetrelBackend over our Client."""
    storage, bucket, conf = env
    assert install_petrel_client_shim()
    petrel: Dict[str, Any] = dict(backend="petrel", conf_path=conf)
    assert type(fileio.get_file_backend(bucket, backend_args=petrel)).__name__ == "PetrelBackend"
    fileio.put(b"bytes", f"{bucket}/p/a.bin", backend_args=petrel)
    assert fileio.get(f"{bucket}/p/a.bin", backend_args=petrel) == b"bytes" == storage.get(f"{bucket}/p/a.bin")
    assert fileio.exists(f"{bucket}/p/a.bin", backend_args=petrel)
    assert list(fileio.list_dir_or_file(f"{bucket}/p", backend_args=petrel)) == ["a.bin"]

    source = _model(0)
    saved_by_petrel = f"{bucket}/p/petrel.pth"  # not our backend: mmengine's save_checkpoint, unchanged
    save_checkpoint({"state_dict": source.state_dict()}, saved_by_petrel, backend_args=petrel)
    saved_by_us = f"{bucket}/p/ours.pth"
    save_checkpoint({"state_dict": source.state_dict()}, saved_by_us)
    for uri in (saved_by_petrel, saved_by_us):
        for loader in (mm_checkpoint.load_from_ceph, mmengine_checkpoint.load_from_blip3o_s3):
            assert _equal(loader(uri, map_location="cpu")["state_dict"], source.state_dict()), (uri, loader)
