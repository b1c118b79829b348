"""configs/blip3o60k_ceph_checkpoints.py: blip3o60k_ceph.py plus checkpoints and logs on s3://, and its
custom_imports make mmengine serve those URIs with this project's backend, loader and streamed save."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.utils import import_modules_from_strings

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV = ("BLIP3O_DATA_ROOT", "BLIP3O_CEPH_FOLDER", "BLIP3O_CEPH_CONFIG", "BLIP3O_SHARDS_FOLDER", "BLIP3O_CKPT_ROOT")


def _load(name: str) -> dict:
    return Config.fromfile(str(REPO_ROOT / "configs" / name)).to_dict()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV:
        monkeypatch.delenv(var, raising=False)


def test_checkpoints_and_logs_on_s3_and_the_rest_as_the_ceph_config() -> None:
    cfg, base = _load("blip3o60k_ceph_checkpoints.py"), _load("blip3o60k_ceph.py")
    hooks = cfg.pop("default_hooks")
    assert hooks == dict(
        checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=True, out_dir="s3://blip3o-ckpts/checkpoints",
                        max_keep_ckpts=2),
        logger=dict(type="LoggerHook", interval=50, out_dir="s3://blip3o-ckpts/logs"))
    assert (cfg.pop("ckpt_root"), cfg.pop("load_from"), cfg.pop("resume")) == ("s3://blip3o-ckpts", None, False)
    assert cfg == base  # nothing else changed


def test_root_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLIP3O_CKPT_ROOT", "cluster1:s3://team/openuni")
    hooks = _load("blip3o60k_ceph_checkpoints.py")["default_hooks"]
    assert hooks["checkpoint"]["out_dir"] == "cluster1:s3://team/openuni/checkpoints"
    assert hooks["logger"]["out_dir"] == "cluster1:s3://team/openuni/logs"


def test_custom_imports_install_the_s3_checkpoint_side() -> None:
    cfg = _load("blip3o60k_ceph_checkpoints.py")
    import_modules_from_strings(**cfg["custom_imports"])  # as Runner.from_cfg does
    import mmengine.runner.runner as mm_runner
    from mmengine.fileio import get_file_backend
    from mmengine.runner.checkpoint import CheckpointLoader

    from blip3o_storage.integrations import mmengine_checkpoint
    from blip3o_storage.integrations.mmengine_backend import S3FileBackend

    out_dir = cfg["default_hooks"]["checkpoint"]["out_dir"]
    assert isinstance(get_file_backend(out_dir), S3FileBackend)  # no request: the client is built lazily
    assert CheckpointLoader._get_checkpoint_loader(out_dir + "/epoch_1.pth") is mmengine_checkpoint.load_from_blip3o_s3
    assert mm_runner.save_checkpoint is mmengine_checkpoint.save_checkpoint
