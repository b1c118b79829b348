"""Issue #12 (trust): hostile inputs to the dataset, and who may write the disk cache.

16-bit images, BOM and empty captions, deeply nested JSON, over-long names,
missing buckets, empty data.json, and a cache folder someone else can write.
Real files, a real moto server over HTTP (Ceph RGW with --ceph), no mocks.
"""
from __future__ import annotations

import io
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from blip3o_storage import ConfigError, CorruptDataError, Storage
from blip3o_storage.reading.disk_cache import DiskCache
from blip3o_storage.testing.data import caption_tree as _tree
from blip3o_storage.training.dataset import BLIP3oDataset, CaptionDataset, load_data_list
from blip3o_storage.training.image_ops import decode_image, load_pixel_values
from blip3o_storage.training.tokenizers import ByteTokenizer

NOBODY = 65534
MID_GREY_16 = 32768  # 0x8000: the 8-bit value is 128, not 255


def _tensor_to_byte(pv: torch.Tensor) -> torch.Tensor:
    return ((pv + 1.0) * 127.5).round()


# -- 16-bit images -------------------------------------------------------------------------
def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_grey_png_keeps_its_grey_level() -> None:
    data = _png16(np.full((96, 120), MID_GREY_16, dtype=np.uint16))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit file
    pv = load_pixel_values(data, "grey16.png", image_size=16)
    assert pv.shape == (3, 16, 16)
    assert torch.all(_tensor_to_byte(pv) == 128), _tensor_to_byte(pv).unique()


def test_16bit_gradient_png_maps_by_value_range() -> None:
    """A 16-bit ramp 0..65535 becomes the 8-bit ramp 0..255 (>> 8), not a white field."""
    ramp = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16)  # 0, 257, ..., 65535
    image = decode_image(_png16(np.tile(ramp, (90, 1))), "ramp.png")
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image)[0, :, 0], np.arange(256, dtype=np.uint8))


def test_16bit_rgb_png_keeps_its_colour() -> None:
    """Pillow loads 48-bit RGB PNGs as 8-bit RGB already (high bytes): a guard that it stays so."""
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    row = b"\0" + struct.pack(">HHH", MID_GREY_16, 65535, 0) * 90
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 90, 90, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(row * 90)) + chunk(b"IEND", b""))
    assert tuple(np.asarray(decode_image(data, "rgb48.png"))[0, 0]) == (128, 255, 0)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_modes_through_tiff_and_mode_i(mode: str) -> None:
    """Every 16-bit grey mode Pillow hands out (I;16 little/big endian, and I from 16-bit sources)."""
    if mode == "I":
        # Pillow < 10 opened 16-bit PNGs as mode I; a 16-bit PGM still opens as I.
        data = b"P5 90 90 65535\n" + MID_GREY_16.to_bytes(2, "big") * (90 * 90)
    else:
        src = Image.frombytes(mode, (90, 90), MID_GREY_16.to_bytes(2, "little" if mode == "I;16" else "big") * 8100)
        buf = io.BytesIO()
        src.save(buf, format="TIFF")
        data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).mode == mode
    assert np.all(np.asarray(decode_image(data, f"x.{mode}")) == 128)


# -- captions ----------------------------------------------------------------------------------
def _ds(data_json: Path, cls=BLIP3oDataset, **kw: Any) -> BLIP3oDataset:
    raw = str(data_json.parent / "raw")
    args = dict(data_path=str(data_json), image_folder=raw, cap_folder=raw, tokenizer=ByteTokenizer(),
                image_size=16, unconditional=0.0, retry_seed=3)
    args.update(kw)
    return cls(**args)


def _prompt(ds: BLIP3oDataset, idx: int) -> str:
    assert ds.tokenizer is not None
    return ds.tokenizer.decode(ds[idx]["input_ids"])


def test_bom_is_stripped_from_txt_json_and_inline_captions(tmp_path: Path) -> None:
    bom = "\ufeff".encode()
    txt = _tree(tmp_path / "t", {"a": bom + b"a fox in snow\n"})
    assert _prompt(_ds(txt), 0) == "Generate an image: a fox in snow"
    js = _tree(tmp_path / "j", {"a": bom + json.dumps({"caption": "a fox"}).encode()}, suffix=".json")
    ds = _ds(js, cls=CaptionDataset)
    assert _prompt(ds, 0) == "Generate an image: a fox" and ds.bad_sample_counts == {}
    inline = _tree(tmp_path / "i", {"a": None}, inline={"a": "\ufeffa fox"})
    assert _prompt(_ds(inline), 0) == "Generate an image: a fox"
    bom_json = tmp_path / "bom.json"  # data.json itself saved by a BOM-writing editor
    bom_json.write_bytes(bom + txt.read_bytes())
    assert load_data_list(str(bom_json), Storage()) == json.loads(txt.read_text())


@pytest.mark.parametrize("suffix, content, inline", [
    (".txt", b"", None),
    (".txt", b" \n\t \r\n", None),
    (".txt", "\ufeff  \n".encode(), None),
    (".json", json.dumps({"caption": "   "}).encode(), None),
    (".txt", None, ""),
    (".txt", None, " \ufeff "),
])
def test_empty_captions_are_bad_samples(tmp_path: Path, suffix: str, content: Any, inline: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    data_json = _tree(tmp_path, {"bad": content, "good": json.dumps({"caption": "good one"}).encode()
                                 if suffix == ".json" else b"good one"},
                      suffix=suffix, inline={"bad": inline} if inline is not None else None)
    ds = _ds(data_json, cls=CaptionDataset if suffix == ".json" else BLIP3oDataset)
    with caplog.at_level(logging.WARNING, logger="blip3o_storage.training.dataset"):
        sample = ds[0]
    assert sample["image_file"] == "good.jpg"
    assert ds.tokenizer is not None
    assert ds.tokenizer.decode(sample["input_ids"]) == "Generate an image: good one"
    assert ds.bad_sample_counts == {"empty_caption": 1}
    record = ds.bad_samples_log[-1]
    assert record.index == 0 and record.reason == "empty_caption" and "empty" in record.message
    assert "bad.jpg" in caplog.text


def test_unconditional_prompt_is_not_a_bad_caption(tmp_path: Path) -> None:
    """OpenUni's classifier-free-guidance path drops the caption on purpose: not bad data."""
    ds = _ds(_tree(tmp_path, {"a": b"a fox", "b": b"a cat"}), unconditional=1.0)
    assert _prompt(ds, 0) == "Generate an image." and _prompt(ds, 1) == "Generate an image."
    assert ds.bad_sample_counts == {}


# -- nested JSON, long names -------------------------------------------------------------------
def test_deeply_nested_data_json_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(CorruptDataError, match="nested too deeply") as info:
        BLIP3oDataset(data_path=str(path), image_folder=str(tmp_path), cap_folder=str(tmp_path),
                      tokenizer=ByteTokenizer())
    assert str(path) in str(info.value)


def test_deeply_nested_caption_file_is_a_bad_sample(tmp_path: Path) -> None:
    data_json = _tree(tmp_path, {"deep": b"[" * 100_000, "ok": json.dumps({"caption": "fine"}).encode()},
                      suffix=".json")
    ds = _ds(data_json, cls=CaptionDataset)
    assert ds[0]["image_file"] == "ok.jpg"
    assert ds.bad_sample_counts == {"bad_caption": 1}
    assert "deep.json" in ds.bad_samples_log[-1].uri and "nested" in ds.bad_samples_log[-1].message


def test_over_long_file_name_is_a_named_bad_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    long_name = "x" * 300  # > 255 bytes, the name limit of ext4/xfs/btrfs; a valid S3 key (<= 1024 bytes)
    data_json = _tree(tmp_path, {"ok": b"fine"})
    entries = json.loads(data_json.read_text())
    data_json.write_text(json.dumps([{"image": f"{long_name}/a.jpg", "annotation": f"{long_name}/a.txt"}]
                                    + entries))
    ds = _ds(data_json)
    with caplog.at_level(logging.WARNING, logger="blip3o_storage.training.dataset"):
        assert ds[0]["image_file"] == "ok.jpg"
    assert ds.bad_sample_counts == {"bad_path": 1}
    record = ds.bad_samples_log[-1]
    assert record.index == 0 and "name too long" in record.message and "255" in record.message
    assert f"{data_json}[0]" in caplog.text


# -- missing bucket, empty data.json -------------------------------------------------------------
def test_empty_data_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[]")
    with pytest.raises(ConfigError, match="no entries") as info:
        BLIP3oDataset(data_path=str(path), image_folder=str(tmp_path), cap_folder=str(tmp_path),
                      tokenizer=ByteTokenizer())
    assert str(path) in str(info.value)
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "a.json").write_text("[]")
    (folder / "b.json").write_text(" [ ] ")
    with pytest.raises(ConfigError, match=r"no entries.*a\.json.*b\.json"):
        load_data_list(str(folder), Storage())


# -- disk cache: who may write it ------------------------------------------------------------------
def test_cache_dir_is_created_private(tmp_path: Path) -> None:
    root = tmp_path / "new" / "cache"
    cache = DiskCache(root, max_bytes=1 << 20)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert cache.put("k", b"data") and cache.get("k") == b"data"
    for sub in root.iterdir():
        assert stat.S_IMODE(sub.stat().st_mode) == 0o700, sub


@pytest.mark.parametrize("mode, words", [(0o777, "writable by others"), (0o1777, "writable by others"),
                                         (0o770, "writable by its group"), (0o720, "writable by its group")])
def test_cache_dir_writable_by_others_is_refused(tmp_path: Path, mode: int, words: str) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(root, mode)
    with pytest.raises(ConfigError, match=words) as info:
        DiskCache(root, max_bytes=1 << 20)
    assert str(root) in str(info.value) and "chmod" in str(info.value)


def test_cache_dir_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="owned by uid 65534") as info:
        DiskCache(root, max_bytes=1 << 20)
    assert str(root) in str(info.value) and "chown" in str(info.value)


def test_dataset_refuses_an_unsafe_cache_dir(tmp_path: Path) -> None:
    data_json = _tree(tmp_path / "d", {"a": b"a"})
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chmod(cache, 0o777)
    with pytest.raises(ConfigError, match="cache_dir"):
        _ds(data_json, ceph_folder="s3://b/raw", cache_dir=str(cache))


def test_planted_symlinks_in_the_cache_are_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = DiskCache(root, max_bytes=1 << 20)
    # A well-formed entry elsewhere (valid header and digest) that a symlink points at.
    elsewhere = DiskCache(tmp_path / "elsewhere", max_bytes=1 << 20)
    assert elsewhere.put("victim", b"planted bytes")
    target = elsewhere.path_for("victim")
    link = cache.path_for("victim")
    link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    link.symlink_to(target)
    assert cache.get("victim") is None  # not served
    assert cache.stats()["refused"] == 1 and not os.path.lexists(link)  # counted, dropped
    assert target.read_bytes() and elsewhere.get("victim") == b"planted bytes"  # target untouched
    # A symlinked shard folder: neither read through nor written through.
    assert elsewhere.put("other", b"other bytes")
    sub = cache.path_for("other").parent
    assert not sub.exists()
    sub.symlink_to(elsewhere.path_for("other").parent)
    assert cache.get("other") is None and cache.stats()["refused"] == 2 and not os.path.lexists(sub)
    sub.symlink_to(elsewhere.path_for("other").parent)  # planted again, before a write
    before = sorted(p.name for p in elsewhere.path_for("other").parent.iterdir())
    assert not cache.put("other", b"new bytes") and cache.stats()["refused"] == 3
    assert sorted(p.name for p in elsewhere.path_for("other").parent.iterdir()) == before
    assert elsewhere.get("other") == b"other bytes"
    # A symlinked temp folder: writes refused, nothing created where it points.
    if (root / "tmp").exists():
        (root / "tmp").rmdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "tmp").symlink_to(outside)
    assert not cache.put("third", b"x")
    assert list(outside.iterdir()) == []
