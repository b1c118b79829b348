"""StorageHealthHook in a real mmengine Runner: configs/blip3o60k_ceph.py with 2 forked DataLoader
workers reading from moto; the workers' storage counters reach the text log and the
LocalVisBackend's scalars.json, and the bottleneck warning fires only when the loader is slow."""
from __future__ import annotations

import io
import json
import re
import time
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
from blip3o_storage.training.health_hook import STATS_KEY

SIZE, N, BATCH, INTERVAL = 32, 24, 2, 3  # 12 iterations, logged every 3


class Model(BaseModel):
    """Trains on nothing; ``step_s`` of compute per iteration (0: the loader dominates)."""

    def __init__(self, step_s: float = 0.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.step_s = step_s
        self.seen = 0

    def forward(self, data, data_samples=None, mode="loss"):
        assert STATS_KEY not in data  # the hook took the counters out before the model
        self.seen += len(data["image_file"])
        if self.step_s:
            time.sleep(self.step_s)
        return {"loss": (data["pixel_values"].mean() * self.scale) ** 2}


def upload(storage, bucket: str) -> dict[str, int]:
    """N images and captions, and a data.json naming them plus one image that is not there; sizes by name."""
    rng = np.random.default_rng(0)
    entries, sizes = [], {}
    for i in range(N):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        for name, data in ((f"{i:03d}.jpg", buf.getvalue()), (f"{i:03d}.txt", f"caption {i}".encode())):
            storage.put(f"{bucket}/raw/{name}", data)
            sizes[name] = len(data)
        entries.append({"image": f"{i:03d}.jpg", "annotation": f"{i:03d}.txt"})
    entries.append({"image": "gone.jpg", "annotation": "gone.txt"})  # one missing sample, replaced by a retry
    storage.put(f"{bucket}/data.json", json.dumps(entries).encode())
    return sizes


def train(moto_endpoint, tmp_path: Path, monkeypatch, step_s: float, **dataset: object) -> tuple[Model, Path, dict]:
    """One epoch of configs/blip3o60k_ceph.py (with its StorageHealthHook), 2 forked workers;
    (model, the run's log folder, object sizes)."""
    storage, bucket = new_bucket(moto_endpoint)
    sizes = upload(storage, bucket)
    conf = moto_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    monkeypatch.setenv("BLIP3O_CEPH_FOLDER", f"{bucket}/raw")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(conf))
    cfg = Config.fromfile(str(REPO_ROOT / "configs" / "blip3o60k_ceph.py"))
    import_modules_from_strings(**cfg.custom_imports)
    hooks = [dict(h, interval=INTERVAL) if h["type"] == "StorageHealthHook" else h for h in cfg.custom_hooks]
    assert any(h["type"] == "StorageHealthHook" for h in hooks)  # on in the object-store config
    loader = cfg.train_dataloader
    loader.update(num_workers=2, batch_size=BATCH, pin_memory=False)
    loader.dataset.update(image_size=SIZE, min_image_size=16, data_path=f"{bucket}/data.json", image_folder=None,
                          cap_folder=None, **dataset)
    model = Model(step_s)
    runner = Runner(model=model, work_dir=str(tmp_path / "work"), train_dataloader=loader,
                    train_cfg=dict(by_epoch=True, max_epochs=1),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)), custom_hooks=hooks,
                    default_hooks=dict(checkpoint=None,
                                       logger=dict(type="LoggerHook", interval=INTERVAL, ignore_last=False)),
                    visualizer=dict(type="Visualizer", vis_backends=[dict(type="LocalVisBackend")]))
    runner.train()
    return model, Path(runner.log_dir), sizes


def scalars(log_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (log_dir / "vis_data" / "scalars.json").read_text().splitlines()]


def test_worker_counters_reach_the_log_and_scalars_json(moto_endpoint, tmp_path, monkeypatch):
    # prefetch off: every GET is made by the sample that needs it, so the count is exact
    model, log_dir, sizes = train(moto_endpoint, tmp_path, monkeypatch, step_s=0.5, prefetch=0)
    assert model.seen == N + 1  # 13 batches of 2 (the last of 1), the missing sample replaced
    rows = [r for r in scalars(log_dir) if "storage/gets" in r]
    assert [r["step"] for r in rows] == [3, 6, 9, 12, 13]
    last = rows[-1]
    # Made in the 2 workers, carried to the main process in their batches: N + 1 samples read
    # (N entries + the replacement of the missing one), an image and a caption GET each, plus the
    # GET of the missing image (404; its caption is never asked for).
    assert last["storage/gets"] == 2 * (N + 1) + 1, last
    assert last["storage/bad_missing"] == 1 and last["storage/bad_samples"] == 1, last
    assert last["storage/retries"] == 0 and last["storage/fallback_local"] == 0 and last["storage/failures"] == 0
    everything, pair = sum(sizes.values()), max(sizes[k] + sizes[k[:-3] + "txt"] for k in sizes if k.endswith("jpg"))
    assert everything <= last["storage/mb"] * 1e6 <= everything + pair, (last, everything)  # + the replacement
    assert all(r["storage/gets_per_s"] > 0 for r in rows[:-1]), rows
    assert sum(r["storage/mb_per_s"] for r in rows) > 0
    text = next(log_dir.glob("*.log")).read_text()
    line = next(x for x in text.splitlines() if "[13/13]" in x)
    assert re.search(r"storage/gets_per_s: [\d.]+ +storage/mb_per_s: [\d.]+ +storage/mb: [\d.]+ +storage/gets: 51 ",
                     line), line
    # 0.5 s of model per batch of 2: the 2 workers (~0.2 s a batch here) keep ahead, data_time ~ 0
    assert "the data loader is the bottleneck" not in text


def test_prefetch_counters_with_the_configs_prefetch(moto_endpoint, tmp_path, monkeypatch):
    _, log_dir, _ = train(moto_endpoint, tmp_path, monkeypatch, step_s=0.0)
    last = scalars(log_dir)[-1]
    assert last["storage/prefetch_hits"] >= N // 2, last  # prefetch=8 in the config: most samples were ready
    assert 2 * N + 1 <= last["storage/gets"] <= 2 * (N + 1) + 2, last  # + the missing image once more


def test_bottleneck_warning_fires_once_with_a_slow_loader(moto_endpoint, tmp_path, monkeypatch):
    """A model that takes no time: each iteration is all waiting for the 2 workers' S3 GETs and
    JPEG decodes (~0.2 s a batch here, prefetch off). Said once, though every interval qualifies."""
    _, log_dir, _ = train(moto_endpoint, tmp_path, monkeypatch, step_s=0.0, prefetch=0)
    text = next(log_dir.glob("*.log")).read_text()
    assert text.count("the data loader is the bottleneck") == 1, text[-3000:]
    assert re.search(r"the model waited \d+% of each iteration for data", text)
