"""The DataLoader rows of the peer benchmark (benchmarks/peers.py): the training pipeline, S3 vs local disk.

Issue #16 item 5: "DataLoader per-object S3 >= 0.9x local disk on shared cores (the store on the
same 2 cores), and >= 1.0x with --split-cpus; shard mode >= 1.0x local on both". Every pass here is
what training does per sample: the shipped configs' BLIP3oDataset (``configs/blip3o60k_local.py``,
``blip3o60k_ceph.py``, ``blip3o60k_shards.py``: JPEG decode, square crop, resize to the config's
``image_size``, tokenised caption), ``blip3o_collate``, a torch DataLoader with forked workers and a
shuffling sampler, worker start-up included (the configs' S3 loaders are not persistent). The peer is
s3torchconnector's ``S3MapDataset`` with the same decode + tokenisation as its transform (same
sampler, same DataLoader). Shard mode reads the uploaded tars with block reads and the
``LocalitySampler`` its config uses. Every pass is checked: every sample once, tensors of the
right shape, nothing read from a local copy.

The rows read a subset of the tree (``--loader-samples``, 1,100 by default: the first 100 images of
each of the 11 shards, so shard mode's blocks stay dense): 10,011 files x 8 passes x 5 rounds of
JPEG decoding does not fit a benchmark run on 2 cores (~40 s a pass).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # run.py is imported by peers.py; here only its type (this module loads on its own in tests)
    from run import Endpoint

REPO = Path(__file__).resolve().parents[1]

LOCAL, PROJECT, SHARDS, S3TORCH = "local disk", "project", "shard mode", "s3torchconnector"


def subset_entries(entries: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The first ``ceil(n / shards)`` entries of each shard (first path component), data.json order kept."""
    shards: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        shards.setdefault(str(e["image"]).split("/", 1)[0], []).append(e)
    per = math.ceil(n / max(1, len(shards)))
    keep = {id(e) for group in shards.values() for e in group[:per]}
    return [e for e in entries if id(e) in keep]


@dataclass
class LoaderSetup:
    """Where each pass reads from, and how the loader is built (same for every pass)."""

    data_json: Path  # the subset's data.json (local: the table every pass indexes)
    raw: Path  # the extracted tree (local disk pass)
    objects: str  # s3://bucket/prefix/raw: per-object passes
    shards: str  # s3://bucket/prefix-of-tars: shard mode
    conf: Path  # petreloss.conf of the endpoint
    image_size: Optional[int]  # None: the configs' value
    workers: int
    batch_size: int


def _config(name: str, env: dict[str, str]) -> Any:
    from mmengine.config import Config

    os.environ.update(env)
    return Config.fromfile(str(REPO / "configs" / name))


def build_dataset(kind: str, s: LoaderSetup) -> Any:
    """The shipped config's dataset for ``kind`` (local disk, project, shard mode), on the subset."""
    from blip3o_storage.training.dataset import build_dataset_from_config

    over: dict[str, Any] = {"data_path": str(s.data_json), "table_cache_dir": False}
    if s.image_size is not None:
        over["image_size"] = s.image_size
    if kind == LOCAL:
        cfg = _config("blip3o60k_local.py", {"BLIP3O_DATA_ROOT": str(s.raw.parent)})
    elif kind == PROJECT:
        cfg = _config("blip3o60k_ceph.py", {"BLIP3O_DATA_ROOT": str(s.raw.parent), "BLIP3O_CEPH_FOLDER": s.objects,
                                            "BLIP3O_CEPH_CONFIG": str(s.conf)})
        over["local_fallback"] = False  # a failed GET must fail the pass, not read the local copy
    elif kind == SHARDS:
        cfg = _config("blip3o60k_shards.py", {"BLIP3O_SHARDS_FOLDER": s.shards, "BLIP3O_CEPH_CONFIG": str(s.conf)})
    else:
        raise ValueError(kind)
    return build_dataset_from_config(cfg, key="train_dataloader.dataset", **over)


class S3TorchSample:
    """s3torchconnector's transform: the same decode + caption tokenisation as BLIP3oDataset's sample.

    Module level and plain attributes: the DataLoader's forked workers inherit it.
    """

    def __init__(self, reference: Any, captions: dict[str, str]) -> None:
        self.image_size, self.min_image_size = reference.image_size, reference.min_image_size
        self.max_aspect_ratio, self.crop = reference.max_aspect_ratio, reference.crop
        self.process_text, self.captions = reference._process_text, captions

    def __call__(self, reader: Any) -> dict[str, Any]:
        from blip3o_storage.training.image_ops import load_pixel_values

        key = reader.key
        pixels = load_pixel_values(reader.read(), key, image_size=self.image_size, min_image_size=self.min_image_size,
                                   max_aspect_ratio=self.max_aspect_ratio, crop=self.crop)
        return {"pixel_values": pixels, **self.process_text(self.captions[key]), "image_file": key}


def s3torch_dataset(ep: Endpoint, s: LoaderSetup, reference: Any) -> Any:
    """``S3MapDataset`` over the subset's images (same objects as the project's pass)."""
    from s3torchconnector import S3ClientConfig, S3MapDataset

    entries = json.loads(s.data_json.read_text())
    bucket, prefix = s.objects[len("s3://"):].split("/", 1)
    captions = {f"{prefix}/{e['image']}": e["caption"] for e in entries}
    uris = [f"{s.objects}/{e['image']}" for e in entries]
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ep.access, ep.secret
    return S3MapDataset.from_objects(uris, region="us-east-1", endpoint=ep.url,
                                     transform=S3TorchSample(reference, captions),
                                     s3client_config=S3ClientConfig(force_path_style=True))


def loader_pass(dataset: Any, s: LoaderSetup, seed: int, locality: bool = False) -> float:
    """One epoch through a fresh DataLoader (worker start-up included); samples/s.

    Raises RuntimeError when a sample is missing, repeated or malformed.
    """
    import torch
    from mmengine.dataset import DefaultSampler
    from torch.utils.data import DataLoader

    from blip3o_storage.training.collate import blip3o_collate
    from blip3o_storage.training.locality_sampler import LocalitySampler

    sampler: Any = (LocalitySampler(dataset, batch_size=s.batch_size, num_workers=s.workers, seed=seed) if locality
                    else DefaultSampler(dataset, shuffle=True, seed=seed))
    if hasattr(dataset, "set_sampler"):  # what PrefetchSamplerHook does in training
        dataset.set_sampler(sampler, batch_size=s.batch_size)
    loader: Any = DataLoader(dataset, sampler=sampler, batch_size=s.batch_size, num_workers=s.workers,
                             collate_fn=blip3o_collate)
    seen: list[str] = []
    size = None
    # The check reads every pixel in this process on one thread, as a training loop hands a batch on.
    # With torch's default two intra-op threads here, the second one spin-waits between batches: the
    # main process then took 8.5-10.4 s of CPU per 13 s pass (1,100 samples at 512 px) instead of 4.1-4.6 s,
    # out of the same 2 cores as the workers, and that spread was the largest noise in these rows.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    try:
        for batch in loader:
            pixels = batch["data"]["pixel_values"]
            size = size or pixels.shape[-1]
            if (pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, size, size)
                    or not bool(torch.isfinite(pixels).all())):
                raise RuntimeError(f"malformed batch: pixel_values {tuple(pixels.shape)}")
            seen.extend(batch["data"]["image_file"])
    finally:
        torch.set_num_threads(threads)
    seconds = time.monotonic() - t0
    if len(seen) != len(dataset) or len(set(seen)) != len(seen):
        raise RuntimeError(f"{len(seen)} samples ({len(set(seen))} distinct), expected {len(dataset)}")
    return len(seen) / seconds


Factory = Callable[[], Any]


def factories(ep: Endpoint, s: LoaderSetup, with_s3torch: bool) -> dict[str, Factory]:
    """A fresh dataset per pass (no state carried from one pass to the next)."""
    out: dict[str, Factory] = {LOCAL: lambda: build_dataset(LOCAL, s), PROJECT: lambda: build_dataset(PROJECT, s),
                               SHARDS: lambda: build_dataset(SHARDS, s)}
    if with_s3torch:
        out[S3TORCH] = lambda: s3torch_dataset(ep, s, build_dataset(LOCAL, s))
    return out
