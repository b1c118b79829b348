"""Tar shards for shard-mode tests: ``tars/<shard>.tar`` plus the same data extracted, and the
datasets that read them (per object or in shard mode)."""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blip3o_storage.testing.data import jpeg
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.transfer.safe_tar import build_data_json, extract_shard

SIZE = 32
TEMPLATE = {"INSTRUCTION": "<|user|>\n{input}<|end|>\n<|assistant|>\n"}
LONG = "l" * 120  # > 100 chars: needs a GNU/PAX long-name header before the member


def add_member(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def hostile_tar(tmp_path: Path, name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Path:
    """``tmp_path/evil.tar``: one good member, then ``name`` (of ``kind``, linking to ``link``)."""
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        add_member(tf, "00001.jpg", b"ok")
        add_member(tf, name, b"x", kind, link)
    return path


@dataclass
class Shards:
    """``tars/<shard>.tar`` and the same data extracted in ``raw/`` with ``data.json``."""

    root: Path
    entries: list[dict[str, str]]

    @property
    def tars(self) -> Path:
        return self.root / "tars"

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"


def make_shards(root: Path, fmt: int = tarfile.PAX_FORMAT) -> Shards:
    (root / "tars").mkdir(parents=True)
    layout = {"dalle3": 5, "text_1": 4}
    seed = 0
    for shard, n in layout.items():
        with tarfile.open(root / "tars" / f"{shard}.tar", "w", format=fmt) as tf:
            add_member(tf, "sub", kind=tarfile.DIRTYPE)
            for i in range(n):
                seed += 1
                key = f"{i:05d}" if i != 2 else f"sub/{LONG}"
                add_member(tf, f"{key}.jpg", jpeg(96 + 16 * (i % 3), 120 - 8 * i, seed))
                add_member(tf, f"{key}.txt", f"caption {shard} {i}: café ✓\n".encode())
            add_member(tf, "notes.md", b"# not a sample\n")
    for tar in sorted((root / "tars").glob("*.tar")):
        extract_shard(tar, root / "raw")
    entries, _ = build_data_json(root / "raw")
    (root / "data.json").write_text(json.dumps(entries))
    return Shards(root, entries)


def ds_for(shards: Shards, bucket: str, endpoint: S3Endpoint, mode: str, cls: Any = None, **kw: Any) -> Any:
    """A BLIP3oDataset (or ``cls``) over the uploaded shards: ``mode`` "shard" reads the tars, else raw/."""
    if cls is None:
        from blip3o_storage.training.dataset import BLIP3oDataset
        cls = BLIP3oDataset
    args: dict[str, Any] = dict(data_path=str(shards.data_json), ceph_config=endpoint.ceph_config(),
                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0,
                prompt_template=TEMPLATE, min_image_size=16)
    if mode == "shard":
        args.update(ceph_folder=f"{bucket}/shards", shard_index=f"{bucket}/shards/index.json")
    else:
        args.update(ceph_folder=f"{bucket}/raw")
    args.update(kw)
    return cls(**args)


def assert_same(a: dict, b: dict) -> None:
    import torch

    assert a["image_file"] == b["image_file"]
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert torch.equal(a["input_ids"], b["input_ids"])
