"""One rank of a real multi-process training run, for tests/integration/test_multirank_training.py.

Launched by ``python -m torch.distributed.run --nproc_per_node N -m blip3o_storage.testing.multirank
CONFIG OUT EPOCHS [key=value ...]``: builds mmengine's Runner with ``launcher='pytorch'`` (gloo on
CPU) from ``configs/CONFIG`` with 2 DataLoader workers and batch 4, trains a tiny model for EPOCHS
epochs with a checkpoint per epoch, and writes ``OUT/rank<r>.json``: the image files this rank
trained on per epoch, the sample table file its dataset mapped (path and inode) and whether the
rank's DataLoader workers mapped that same file. ``key=value`` pairs override dataset keywords.
"""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import BaseModel, MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from mmengine.runner import Runner
from mmengine.utils import import_modules_from_strings
from torch.utils.data import get_worker_info

from blip3o_storage.testing.paths import REPO_ROOT

BATCH = 4
WORKERS = 2
SIZE = 32


@MODEL_WRAPPERS.register_module(force=True)
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine passes ``device_ids=[LOCAL_RANK]``, which DDP refuses for a CPU module."""

    def __init__(self, module: torch.nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module=module, device_ids=None, **kwargs)


def _mapped_by_me(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(" " + path) for line in f)


class SeenModel(BaseModel):
    """Records the image files of every batch, and which table file the worker that loaded it mapped."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen: list[str] = []
        self.worker_maps: list[bool] = []

    def forward(self, data: Any, data_samples: Any = None, mode: str = "loss") -> dict[str, torch.Tensor]:
        self.seen += list(data["image_file"])
        self.worker_maps += list(data.get("table_mapped", []))
        return {"loss": (data["pixel_values"].mean() * self.scale) ** 2}


def _collate_with_table_check(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """blip3o_collate, plus (in the worker) whether this worker has the dataset's table file mapped."""
    from blip3o_storage.training.collate import blip3o_collate

    out = blip3o_collate(batch)
    info = get_worker_info()
    table = getattr(info.dataset, "data_list", None) if info is not None else None
    path = getattr(table, "path", None)
    out["data"]["table_mapped"] = [bool(path) and _mapped_by_me(str(path))] * len(batch)
    return out


def main(argv: list[str]) -> int:
    config, out, epochs = argv[0], Path(argv[1]), int(argv[2])
    overrides: dict[str, Any] = {}
    for pair in argv[3:]:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)  # None, numbers
        except (ValueError, SyntaxError):
            overrides[key] = value
    dist.init_process_group("gloo")  # before the Runner, which would call torch.cuda.set_device
    rank = dist.get_rank()
    cfg = Config.fromfile(str(REPO_ROOT / "configs" / config))
    import_modules_from_strings(**cfg.custom_imports)
    loader = cfg.train_dataloader
    loader.update(num_workers=WORKERS, batch_size=BATCH, pin_memory=False, persistent_workers=False,
                  collate_fn=_collate_with_table_check)
    if "num_workers" in loader.sampler:
        loader.sampler.update(num_workers=WORKERS, batch_size=BATCH)
    loader.dataset.update(image_size=SIZE, min_image_size=16, **overrides)
    model = SeenModel()
    runner = Runner(model=model, work_dir=str(out / "work"), train_dataloader=loader, launcher="pytorch",
                    env_cfg=dict(dist_cfg=dict(backend="gloo")),
                    cfg=Config(dict(model_wrapper_cfg=dict(type="CPUDistributedDataParallel"))),
                    train_cfg=dict(by_epoch=True, max_epochs=epochs),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
                    custom_hooks=cfg.custom_hooks,
                    default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1)))
    runner.train()
    table = runner.train_dataloader.dataset.data_list
    per_epoch = len(model.seen) // epochs
    report = {"rank": rank, "world": dist.get_world_size(), "pid": os.getpid(),
              "epochs": [model.seen[e * per_epoch:(e + 1) * per_epoch] for e in range(epochs)],
              "table": str(table.path), "inode": os.stat(str(table.path)).st_ino,
              "rank_maps_table": _mapped_by_me(str(table.path)), "worker_maps": model.worker_maps,
              "sampler": type(runner.train_dataloader.sampler).__name__}
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
