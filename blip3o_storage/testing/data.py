"""Test data: deterministic JPEGs, source trees like data/BLIP3o-60k, tar shards."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A JPEG of smooth gradients + noise: JPEG-realistic, and crops/resizes are position-sensitive.

    The same (size, seed, quality) always gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    rng.integers(0, 256, (height, width))], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_dataset(root: Path, n: int = 6, size: int = 3000, shards: tuple = ("s1", "s2")) -> Path:
    """SRC like data/BLIP3o-60k: raw/<shard>/<k>.jpg + .txt, data.json, a done-marker."""
    src = root / "BLIP3o-60k"
    entries = []
    for shard in shards:
        d = src / "raw" / shard
        d.mkdir(parents=True)
        (d / ".extracted").write_text("done\n")
        for i in range(n):
            (d / f"{i:05d}.jpg").write_bytes(os.urandom(size + i))
            (d / f"{i:05d}.txt").write_text(f"caption {shard} {i} — ünïcode\n", encoding="utf-8")
            entries.append({"image": f"{shard}/{i:05d}.jpg", "annotation": f"{shard}/{i:05d}.txt"})
    (src / "data.json").write_text(json.dumps(entries))
    return src


def local_files(src: Path) -> dict:
    """key -> bytes of every non-hidden file (what a full upload must produce)."""
    return {"/".join(p.relative_to(src).parts): p.read_bytes() for p in sorted(src.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(src).parts)}


def make_shard_tar(path: Path, members: dict) -> Path:
    """A plain tar shard with ``members`` (name -> bytes), as tools/upload_shards.py takes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def caption_tree(root: Path, captions: dict[str, Any], *, suffix: str = ".txt",
          inline: dict[str, str] | None = None) -> Path:
    """root/raw/<name>.jpg + caption files with the given raw content; returns data.json."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    entries = []
    for i, (name, content) in enumerate(captions.items()):
        (raw / f"{name}.jpg").write_bytes(jpeg(120, 100, i))
        entry = {"image": f"{name}.jpg", "annotation": f"{name}{suffix}"}
        if content is not None:
            (raw / f"{name}{suffix}").write_bytes(content if isinstance(content, bytes) else content.encode())
        if inline and name in inline:
            entry["caption"] = inline[name]
        entries.append(entry)
    (root / "data.json").write_text(json.dumps(entries), encoding="utf-8")
    return root / "data.json"


def many_small_files(root: Path, n: int) -> Path:
    """``n`` tiny caption files under ``root/raw/sNNN/`` in folders of 1,000 (the layout the
    bounded-memory tests of the upload tool walk); returns ``root``."""
    for i in range(n):
        folder = root / "raw" / f"s{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:07d}.txt").write_bytes(b"caption %d" % i)
    return root
