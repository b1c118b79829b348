"""The object-store config trains for real: mmengine's Runner builds the
dataloader (sampler, collate, workers) from configs/blip3o60k_ceph.py, the
PrefetchSamplerHook wires prefetch, and a tiny model sees every sample once."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmengine.utils import import_modules_from_strings
from PIL import Image

from blip3o_storage.testing.endpoints import new_bucket
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.training.hooks import wire_prefetch

SIZE = 32
N = 24


class TinyT2I(BaseModel):
    """Records which images it was trained on; loss from pixels and tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen: list = []

    def forward(self, data, data_samples=None, mode="loss"):  # OpenUni's models take the batch this way
        self.seen += list(data["image_file"])
        pixels = data["pixel_values"]
        assert pixels.shape[1:] == (3, SIZE, SIZE) and pixels.abs().max() <= 1.0
        assert data["input_ids"].shape == data["attention_mask"].shape
        loss = (pixels.mean() * self.scale) ** 2
        return {"loss": loss}


def make_dataset(tmp_path: Path, storage, bucket: str) -> list:
    rng = np.random.default_rng(0)
    entries = []
    for i in range(N):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48 + i, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
        storage.put(f"{bucket}/raw/shard/{i:03d}.jpg", buf.getvalue())
        storage.put(f"{bucket}/raw/shard/{i:03d}.txt", f"caption {i}".encode())
        entries.append({"image": f"shard/{i:03d}.jpg", "annotation": f"shard/{i:03d}.txt"})
    storage.put(f"{bucket}/data.json", json.dumps(entries).encode())
    return entries


def train(config: str, tmp_path: Path, epochs: int, **dataset_overrides) -> tuple:
    """Train TinyT2I with mmengine's Runner from ``configs/<config>``: 2 workers, batch 4
    (the sampler told too, where it takes them), small images; (model, runner)."""
    cfg = Config.fromfile(str(REPO_ROOT / "configs" / config))
    import_modules_from_strings(**cfg.custom_imports)  # as Runner.from_cfg does
    loader = cfg.train_dataloader
    loader.update(num_workers=2, batch_size=4, pin_memory=False)
    if "num_workers" in loader.sampler:
        loader.sampler.update(num_workers=2, batch_size=4)
    loader.dataset.update(image_size=SIZE, min_image_size=16, **dataset_overrides)
    model = TinyT2I()
    runner = Runner(model=model, work_dir=str(tmp_path / "work"), train_dataloader=loader,
                    train_cfg=dict(by_epoch=True, max_epochs=epochs),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
                    custom_hooks=cfg.custom_hooks, default_hooks=dict(checkpoint=None))
    runner.train()
    return model, runner


def test_runner_trains_one_epoch_from_the_object_store(moto_endpoint, tmp_path, monkeypatch):
    storage, bucket = new_bucket(moto_endpoint)
    entries = make_dataset(tmp_path, storage, bucket)
    conf = moto_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    monkeypatch.setenv("BLIP3O_CEPH_FOLDER", f"{bucket}/raw")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(conf))
    model, runner = train("blip3o60k_ceph.py", tmp_path, epochs=1, data_path=f"{bucket}/data.json",
                          image_folder=None, cap_folder=None)
    assert sorted(model.seen) == sorted(e["image"] for e in entries)  # every sample exactly once
    # PrefetchSamplerHook handed the Runner's sampler (and batch size) to the dataset before the workers forked
    dataset, built = runner.train_dataloader.dataset, runner.train_dataloader
    assert dataset._prefetcher.sampler is built.sampler and dataset._prefetcher.batch_size == 4
    assert wire_prefetch(built)


def test_runner_trains_one_epoch_from_shards_with_block_reads(moto_endpoint, tmp_path, monkeypatch):
    """configs/blip3o60k_shards.py: tars uploaded by tools/upload_shards.py, read in blocks,
    LocalitySampler built by the Runner; every sample once, far fewer GETs than samples."""
    import tarfile

    from blip3o_storage.cli import upload_shards

    storage, bucket = new_bucket(moto_endpoint)
    rng = np.random.default_rng(1)
    (tmp_path / "tars").mkdir()
    names = []
    for shard in ("dalle3", "text_1", "object_2"):
        with tarfile.open(tmp_path / "tars" / f"{shard}.tar", "w") as tf:
            for i in range(N // 3):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (40 + i, 56, 3), dtype=np.uint8)).save(buf, "JPEG")
                for name, data in ((f"{i:03d}.jpg", buf.getvalue()), (f"{i:03d}.txt", f"{shard} {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                names.append(f"{shard}/{i:03d}.jpg")
    conf = moto_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    assert upload_shards.main(["--config", str(conf), "--bucket", bucket[len("s3://"):], "--prefix", "shards",
                               str(tmp_path / "tars")]) == 0
    monkeypatch.setenv("BLIP3O_SHARDS_FOLDER", f"{bucket}/shards")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(conf))
    model, runner = train("blip3o60k_shards.py", tmp_path, epochs=2, shard_block_bytes=64 * 1024)
    assert sorted(model.seen) == sorted(names * 2)  # every sample exactly once per epoch
    first, second = model.seen[:N], model.seen[N:]
    assert first != second  # DistSamplerSeedHook gave the LocalitySampler a new epoch
    built = runner.train_dataloader
    assert type(built.sampler).__name__ == "LocalitySampler" and built.dataset._prefetcher.sampler is built.sampler
    groups = built.dataset.locality_groups()
    assert 3 <= len(groups) < N  # blocks of 64 KiB hold several samples each
