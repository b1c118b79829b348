"""A tiny BLIP3o-style tree (good and bad samples, known captions) and the datasets that read it,
locally or from a bucket."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from blip3o_storage.storage.facade import Storage
from blip3o_storage.testing.data import jpeg as _jpeg
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.training.dataset import BLIP3oDataset, CaptionDataset

SIZE = 32  # small output size keeps the tests fast; configs are checked at their own 512
TEMPLATE = {"INSTRUCTION": "<|user|>\n{input}<|end|>\n<|assistant|>\n"}
LOGGER = "blip3o_storage.training.dataset"


@dataclass
class TinyData:
    """``root/data.json`` + ``root/raw/<relpaths>``; which entries are good/bad."""

    root: Path
    entries: list[dict[str, str]]
    good: list[int]
    bad: dict[int, str]  # index -> expected reason
    captions: dict[str, str] = field(default_factory=dict)  # image relpath -> raw caption text

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"

    def good_files(self) -> list[str]:
        return [self.entries[i]["image"] for i in self.good]


def make_tiny_data(root: Path, *, with_bad: bool = True, json_captions: bool = False) -> TinyData:
    raw = root / "raw"
    (raw / "dalle3").mkdir(parents=True)
    entries: list[dict[str, str]] = []
    good: list[int] = []
    bad: dict[int, str] = {}
    captions: dict[str, str] = {}

    def add(name: str, image: bytes | None, caption: str, reason: str = "") -> None:
        image_rel = f"dalle3/{name}.jpg"
        cap_rel = f"dalle3/{name}.{'json' if json_captions else 'txt'}"
        if image is not None:
            (raw / image_rel).write_bytes(image)
        if caption is not None:
            text = json.dumps({"prompt": caption, "caption": "other"}) if json_captions else caption
            (raw / cap_rel).write_text(text, encoding="utf-8")
        captions[image_rel] = caption
        (bad.__setitem__(len(entries), reason) if reason else good.append(len(entries)))
        entries.append({"image": image_rel, "annotation": cap_rel})

    add("00001", _jpeg(160, 120, 1), "  A red fox in snow.\n")
    add("00002", _jpeg(100, 150, 2), "Ünïcode café, 東京 at night")
    add("00003", _jpeg(128, 128, 3), "a square image")
    add("00004", _jpeg(300, 90 + 10, 4), "wide but allowed")
    if with_bad:
        add("00005", _jpeg(160, 120, 5)[:300], "truncated jpeg", reason="corrupt")
        add("00006", _jpeg(50, 50, 6), "too small", reason="too_small")
        add("00007", _jpeg(1100, 100, 7), "aspect 11:1", reason="bad_aspect")
        add("00008", None, "image never uploaded", reason="missing")
    (root / "data.json").write_text(json.dumps(entries))
    return TinyData(root, entries, good, bad, captions)


def upload_tree(storage: Storage, local: Path, prefix: str) -> int:
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.put(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
            count += 1
    return count


def reference_pixels(path: Path, size: int) -> torch.Tensor:
    """Independent of image_ops: center square crop, BICUBIC, [-1, 1], CHW."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    square = img.crop((x0, y0, x0 + s, y0 + s))
    arr = np.asarray(square.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


def local_ds(data: TinyData, cls: type[CaptionDataset] = BLIP3oDataset, **kw: Any) -> CaptionDataset:
    args: dict[str, Any] = dict(data_path=str(data.data_json), image_folder=str(data.raw), cap_folder=str(data.raw),
                                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0,
                                prompt_template=TEMPLATE, min_image_size=80)
    args.update(kw)
    return cls(**args)


def s3_ds(tiny: TinyData, bucket: str, endpoint: S3Endpoint, cls: type[CaptionDataset] = BLIP3oDataset,
          **kw: Any) -> CaptionDataset:
    """Remote only: no local folders, so every byte comes over HTTP."""
    args: dict[str, Any] = dict(data_path=str(tiny.data_json), ceph_folder=f"{bucket}/raw",
                                ceph_config=endpoint.ceph_config(), tokenizer=dict(type="ByteTokenizer"),
                                image_size=SIZE, unconditional=0.0, prompt_template=TEMPLATE)
    args.update(kw)
    return cls(**args)
