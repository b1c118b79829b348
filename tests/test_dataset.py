"""BLIP3oDataset / CaptionDataset drop-ins: local disk, S3 over real HTTP
(moto server; Ceph RGW with --ceph), bad samples, fallback, workers, configs."""
from __future__ import annotations

import io
import itertools
import json
import logging
import pickle
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from mmengine import Config
from mmengine.dataset import DefaultSampler, InfiniteSampler
from PIL import Image
from torch.utils.data import DataLoader

from blip3o_storage import (ConfigError, CorruptDataError, InvalidPathError, ObjectNotFoundError, Storage,
                            TransientStorageError)
from blip3o_storage.training.collate import blip3o_collate
from blip3o_storage.training.dataset import (BLIP3oDataset, CaptionDataset, SampleRetriesExhaustedError,
                                    build_dataset_from_config, load_data_list)
from blip3o_storage.training.image_ops import ImageRejectedError, check_image, decode_image, load_pixel_values
from blip3o_storage.testing.local_s3 import free_port
from blip3o_storage.training.registry import BUILDER, build_component
from blip3o_storage.training.tokenizers import ByteTokenizer, build_prompt

from helpers import jpeg as _jpeg

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # small output size keeps the tests fast; configs are checked at their own 512
TEMPLATE = {"INSTRUCTION": "<|user|>\n{input}<|end|>\n<|assistant|>\n"}
LOGGER = "blip3o_storage.training.dataset"


# -- a tiny BLIP3o-style tree ---------------------------------------------
@dataclass
class TinyData:
    """``root/data.json`` + ``root/raw/<relpaths>``; which entries are good/bad."""

    root: Path
    entries: List[Dict[str, str]]
    good: List[int]
    bad: Dict[int, str]  # index -> expected reason
    captions: Dict[str, str] = field(default_factory=dict)  # image relpath -> raw caption text

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"

    def good_files(self) -> List[str]:
        return [self.entries[i]["image"] for i in self.good]


def make_tiny_data(root: Path, *, with_bad: bool = True, json_captions: bool = False) -> TinyData:
    raw = root / "raw"
    (raw / "dalle3").mkdir(parents=True)
    entries, good, bad, captions = [], [], {}, {}

    def add(name: str, image: bytes, caption: str, reason: str = "") -> None:
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
    arr = np.asarray(img.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1)


def local_ds(data: TinyData, cls=BLIP3oDataset, **kw) -> BLIP3oDataset:
    args = dict(data_path=str(data.data_json), image_folder=str(data.raw), cap_folder=str(data.raw),
                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0,
                prompt_template=TEMPLATE, min_image_size=80)
    args.update(kw)
    return cls(**args)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyData:
    return make_tiny_data(tmp_path / "blip3o")


@pytest.fixture
def tiny_s3(tiny: TinyData, s3_bucket, s3_endpoint):
    """The tiny tree uploaded: (data, bucket URI, endpoint)."""
    storage, bucket = s3_bucket
    upload_tree(storage, tiny.raw, f"{bucket}/raw")
    storage.put(f"{bucket}/data.json", tiny.data_json.read_bytes())
    return tiny, bucket, s3_endpoint


def s3_ds(tiny: TinyData, bucket: str, endpoint, cls=BLIP3oDataset, **kw) -> BLIP3oDataset:
    """Remote only: no local folders, so every byte comes over HTTP."""
    args = dict(data_path=str(tiny.data_json), ceph_folder=f"{bucket}/raw", ceph_config=endpoint.ceph_config(),
                tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, unconditional=0.0,
                prompt_template=TEMPLATE)
    args.update(kw)
    return cls(**args)


# -- samples ----------------------------------------------------------------
def test_local_sample_matches_openuni_contract(tiny: TinyData) -> None:
    ds = local_ds(tiny)
    assert len(ds) == len(tiny.entries)
    for i in tiny.good:
        sample = ds[i]
        image = tiny.entries[i]["image"]
        assert sample["type"] == "text2image" and sample["image_file"] == image
        pv = sample["pixel_values"]
        assert pv.shape == (3, SIZE, SIZE) and pv.dtype == torch.float32
        assert pv.min() >= -1.0 and pv.max() <= 1.0 and pv.min() < 0 < pv.max()
        assert torch.allclose(pv, reference_pixels(tiny.raw / image, SIZE), atol=1e-5)
        ids = sample["input_ids"]
        assert ids.dtype == torch.long and ids.dim() == 1
        expected = TEMPLATE["INSTRUCTION"].format(input=f"Generate an image: {tiny.captions[image].strip()}")
        assert ds.tokenizer.decode(ids) == expected
        assert ids[0] == ByteTokenizer.bos_token_id and ids[-1] == ByteTokenizer.eos_token_id
    assert ds.bad_sample_counts == {}
    assert ds.read_counts["local"] == 2 * len(tiny.good) and ds.read_counts["remote"] == 0


def test_exact_pixels_of_a_solid_png(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.new("RGB", (200, 100), (255, 0, 128)).save(raw / "red.png")
    (raw / "red.txt").write_text("red")
    (tmp_path / "d.json").write_text(json.dumps([{"image": "red.png", "annotation": "red.txt"}]))
    pv = BLIP3oDataset(data_path=str(tmp_path / "d.json"), image_folder=str(raw), cap_folder=str(raw),
                       tokenizer=ByteTokenizer(), image_size=8)[0]["pixel_values"]
    assert torch.equal(pv[0], torch.ones(8, 8)) and torch.equal(pv[1], -torch.ones(8, 8))
    assert torch.allclose(pv[2], torch.full((8, 8), 128 / 255 * 2 - 1), atol=1e-6)


def test_unconditional_and_truncation(tiny: TinyData) -> None:
    ds = local_ds(tiny, unconditional=1.0, max_length=10)
    ids = ds[0]["input_ids"]
    assert len(ids) == 10
    full = local_ds(tiny, unconditional=1.0, max_length=1000)[0]["input_ids"]
    assert ds.tokenizer.decode(full) == TEMPLATE["INSTRUCTION"].format(input="Generate an image.")
    assert torch.equal(ids, full[:10])


def test_s3_and_local_give_identical_samples(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    remote, local = s3_ds(tiny, bucket, endpoint), local_ds(tiny)
    for i in tiny.good:
        a, b = remote[i], local[i]
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["input_ids"], b["input_ids"])
        assert a["image_file"] == b["image_file"]
    assert remote.read_counts == {"remote": 2 * len(tiny.good)}
    assert remote.bad_sample_counts == {}


def test_caption_dataset_reads_json_captions_with_cap_source(tmp_path: Path, s3_bucket, s3_endpoint) -> None:
    tiny = make_tiny_data(tmp_path / "j", with_bad=False, json_captions=True)
    storage, bucket = s3_bucket
    upload_tree(storage, tiny.raw, f"{bucket}/raw")
    ds = s3_ds(tiny, bucket, s3_endpoint, cls=CaptionDataset, cap_source="prompt")
    for i in tiny.good:
        image = tiny.entries[i]["image"]
        assert ds.tokenizer.decode(ds[i]["input_ids"]) == TEMPLATE["INSTRUCTION"].format(
            input=f"Generate an image: {tiny.captions[image].strip()}")
    assert ds.read_counts["remote"] == 2 * len(tiny.good)
    # a cap_source the files do not have: every sample is a bad caption, retries exhaust
    wrong = s3_ds(tiny, bucket, s3_endpoint, cls=CaptionDataset, cap_source="nope", max_retries=2)
    with pytest.raises(SampleRetriesExhaustedError, match="bad_caption"):
        wrong[0]
    assert wrong.bad_sample_counts == {"bad_caption": 3}


def test_latents_from_s3(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    storage = Storage(endpoint.ceph_config())
    latents = {}
    for i in tiny.good:
        image = tiny.entries[i]["image"]
        latents[image] = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(i))
        buf = io.BytesIO()
        torch.save(latents[image], buf)
        storage.put(f"{bucket}/latents/{image}.pt", buf.getvalue())
    ds = s3_ds(tiny, bucket, endpoint, latents_ceph_folder=f"{bucket}/latents")
    for i in tiny.good:
        sample = ds[i]
        assert "pixel_values" not in sample  # latents replace pixels, as in OpenUni
        assert torch.equal(sample["image_latents"], latents[sample["image_file"]])
    batch = blip3o_collate([ds[i] for i in tiny.good])["data"]
    assert batch["image_latents"].shape == (len(tiny.good), 4, 8, 8)
    # a .pt that is not a tensor file is a counted corrupt sample, not a crash
    storage.put(f"{bucket}/latents/{tiny.entries[tiny.good[0]]['image']}.pt", b"not a torch file")
    sample = ds[tiny.good[0]]
    assert sample["image_file"] != tiny.entries[tiny.good[0]]["image"]
    assert ds.bad_sample_counts["corrupt"] == 1
    assert set(ds.bad_sample_counts) <= {"corrupt", "missing"}  # bad entries have no latents


# -- bad samples --------------------------------------------------------------
def test_bad_samples_are_replaced_counted_and_logged(tiny_s3, caplog: pytest.LogCaptureFixture) -> None:
    tiny, bucket, endpoint = tiny_s3
    ds = s3_ds(tiny, bucket, endpoint)
    good_files = set(tiny.good_files())
    caplog.set_level(logging.WARNING, logger=LOGGER)
    first = {}
    for idx, reason in tiny.bad.items():
        sample = ds[idx]
        assert sample["image_file"] in good_files
        first[idx] = sample["image_file"]
        image = tiny.entries[idx]["image"]
        assert any(image in r.getMessage() and f"reason={reason}" in r.getMessage() and bucket in r.getMessage()
                   for r in caplog.records), (idx, reason, [r.getMessage() for r in caplog.records])
    # each bad entry counted under its reason (replacements may hit other bad ones too)
    for reason in set(tiny.bad.values()):
        assert ds.bad_sample_counts[reason] >= 1
    assert sum(ds.bad_sample_counts.values()) == len(ds.bad_samples_log)
    assert {b.reason for b in ds.bad_samples_log} == set(tiny.bad.values())
    assert all(b.uri.startswith(f"{bucket}/raw/") for b in ds.bad_samples_log)
    # replacements are reproducible
    assert {idx: ds[idx]["image_file"] for idx in tiny.bad} == first


def test_exhausted_retries_raise_without_recursion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(3):
        (raw / f"{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
        (raw / f"{i}.txt").write_text("x")
    (tmp_path / "d.json").write_text(json.dumps([{"image": f"{i}.jpg", "annotation": f"{i}.txt"} for i in range(3)]))
    retries = sys.getrecursionlimit() + 100  # a recursive retry would hit RecursionError first
    ds = BLIP3oDataset(data_path=str(tmp_path / "d.json"), image_folder=str(raw), cap_folder=str(raw),
                       tokenizer=ByteTokenizer(), max_retries=retries)
    caplog.set_level(logging.ERROR, logger=LOGGER)  # keep the 1100 warnings out of the report
    with pytest.raises(SampleRetriesExhaustedError) as info:
        ds[1]
    message = str(info.value)
    assert "corrupt" in message and ".jpg" in message and f"max_retries={retries}" in message
    assert ds.bad_sample_counts == {"corrupt": retries + 1}
    none = BLIP3oDataset(data_path=str(tmp_path / "d.json"), image_folder=str(raw), cap_folder=str(raw),
                         tokenizer=ByteTokenizer(), max_retries=0)
    with pytest.raises(SampleRetriesExhaustedError, match=r"1\.jpg \(corrupt\)"):
        none[1]
    assert none.bad_sample_counts == {"corrupt": 1}


def test_setup_errors_propagate_instead_of_retrying(tiny: TinyData) -> None:
    ds = local_ds(tiny, ceph_folder="s3://b/raw", ceph_config=str(tiny.root / "missing.conf"),
                  image_folder=None, cap_folder=None)
    with pytest.raises(ConfigError, match="missing.conf"):
        ds[0]
    assert ds.bad_sample_counts == {}

    def broken_tokenizer(text: str) -> list:
        raise TypeError("bug in the tokenizer")
    with pytest.raises(TypeError, match="bug in the tokenizer"):
        local_ds(tiny, tokenizer=broken_tokenizer)[0]
    with pytest.raises(ConfigError, match="tokenizer is required"):
        local_ds(tiny, tokenizer=None)
    with pytest.raises(ConfigError, match="caption source"):
        local_ds(tiny, cap_folder=None)
    with pytest.raises(InvalidPathError):
        local_ds(tiny, ceph_folder="gs://bucket/raw")


# -- data.json ----------------------------------------------------------------
def test_data_json_from_s3_file_and_folder(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    ds = s3_ds(tiny, bucket, endpoint, data_path=f"{bucket}/data.json")
    assert ds.data_list == tiny.entries
    assert torch.equal(ds[0]["pixel_values"], local_ds(tiny)[0]["pixel_values"])
    storage = Storage(endpoint.ceph_config())
    storage.put(f"{bucket}/parts/b.json", json.dumps(tiny.entries[2:]).encode())
    storage.put(f"{bucket}/parts/a.json", json.dumps(tiny.entries[:2]).encode())
    storage.put(f"{bucket}/parts/readme.txt", b"not json")
    assert s3_ds(tiny, bucket, endpoint, data_path=f"{bucket}/parts").data_list == tiny.entries
    with pytest.raises(ObjectNotFoundError, match="nothere.json"):
        s3_ds(tiny, bucket, endpoint, data_path=f"{bucket}/nothere.json")


@pytest.mark.parametrize("content, error, match", [
    (b"[{\"image\": \"a.jpg\", ", CorruptDataError, r"malformed JSON .*line 1"),
    (b"{\"image\": \"a.jpg\"}", CorruptDataError, "expected a JSON list"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"}, {\"image\": \"b.jpg\"}]", CorruptDataError,
     r"entry 1 has no 'annotation'"),
    (b"[\"a.jpg\"]", CorruptDataError, "entry 0 is a str"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"}, {\"image\": \"../../etc/passwd\", \"annotation\": \"b\"}]",
     InvalidPathError, r"entry 1 'image'.*escapes"),
    (b"[{\"image\": \"/abs/a.jpg\", \"annotation\": \"a.txt\"}]", InvalidPathError, r"entry 0 'image'.*absolute"),
    (b"\xff\xfe[]", CorruptDataError, "not UTF-8"),
])
def test_malformed_data_json_is_a_clear_error(tmp_path: Path, content: bytes, error: type, match: str) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(content)
    with pytest.raises(error, match=match) as info:
        BLIP3oDataset(data_path=str(path), image_folder=str(tmp_path), cap_folder=str(tmp_path),
                      tokenizer=ByteTokenizer())
    assert str(path) in str(info.value)


def test_missing_data_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope.json"):
        load_data_list(str(tmp_path / "nope.json"), Storage())
    with pytest.raises(ObjectNotFoundError, match="no .json file"):
        load_data_list(str(tmp_path), Storage())


# -- local fallback -------------------------------------------------------------
def _unreachable_config() -> dict:
    return {"endpoint_url": f"http://127.0.0.1:{free_port()}", "access_key": "k", "secret_key": "s",
            "max_attempts": 1, "connect_timeout": 0.5, "read_timeout": 0.5}


def test_local_fallback_when_store_unreachable(tiny: TinyData, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    ds = local_ds(tiny, ceph_folder="s3://blip3o-60k/raw", ceph_config=_unreachable_config())
    ref = local_ds(tiny)
    for i in tiny.good:
        assert torch.equal(ds[i]["pixel_values"], ref[i]["pixel_values"])
    assert ds.read_counts == {"fallback_local": 2 * len(tiny.good)}
    notices = [r for r in caplog.records if "local fallback active" in r.getMessage()]
    assert len(notices) == 1 and "blip3o-60k/raw" in notices[0].getMessage()
    # once found down, the store is skipped during the cooldown instead of timing out per file
    assert ds.storage.retry_stats()["default"]["calls"] == 1
    eager = local_ds(tiny, ceph_folder="s3://blip3o-60k/raw", ceph_config=_unreachable_config(),
                     fallback_cooldown=0)
    assert torch.equal(eager[0]["pixel_values"], ref[0]["pixel_values"])
    assert eager.storage.retry_stats()["default"]["calls"] == 2 and eager.read_counts == {"fallback_local": 2}
    # without a local copy the same failure is a counted, retried bad sample
    remote_only = local_ds(tiny, ceph_folder="s3://blip3o-60k/raw", ceph_config=_unreachable_config(),
                           image_folder=None, cap_folder=None, max_retries=1)
    with pytest.raises(SampleRetriesExhaustedError, match="transient"):
        remote_only[0]
    assert remote_only.bad_sample_counts == {"transient": 2}
    with pytest.raises(TransientStorageError):
        remote_only.storage.get("s3://blip3o-60k/raw/x")


def test_local_fallback_when_store_not_configured(tiny: TinyData) -> None:
    ds = local_ds(tiny, ceph_folder="s3://blip3o-60k/raw", ceph_config=str(tiny.root / "no-petreloss.conf"))
    assert torch.equal(ds[0]["pixel_values"], local_ds(tiny)[0]["pixel_values"])
    assert ds.read_counts == {"fallback_local": 2}
    off = local_ds(tiny, ceph_folder="s3://blip3o-60k/raw", ceph_config=str(tiny.root / "no-petreloss.conf"),
                   local_fallback=False)
    with pytest.raises(ConfigError):
        off[0]


def test_fallback_on_object_missing_from_store(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    Storage(endpoint.ceph_config()).delete(f"{bucket}/raw/{tiny.entries[0]['image']}")
    ds = s3_ds(tiny, bucket, endpoint, image_folder=str(tiny.raw), cap_folder=str(tiny.raw))
    assert torch.equal(ds[0]["pixel_values"], local_ds(tiny)[0]["pixel_values"])
    assert ds.read_counts == {"fallback_local": 1, "remote": 1}
    assert ds.bad_sample_counts == {}


# -- processes, samplers, pickling ---------------------------------------------
def test_pickle_round_trip_of_a_used_dataset(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    ds = s3_ds(tiny, bucket, endpoint)
    before = ds[0]
    ds[len(ds) - 1]  # a bad one: counters non-empty
    assert ds._storage is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._storage is None
    assert clone.bad_sample_counts == ds.bad_sample_counts and len(clone) == len(ds)
    after = clone[0]
    assert torch.equal(before["pixel_values"], after["pixel_values"])
    assert clone.read_counts["remote"] == ds.read_counts["remote"] + 2


def test_dataloader_two_workers_over_http(tiny_s3) -> None:
    tiny, bucket, endpoint = tiny_s3
    ds = s3_ds(tiny, bucket, endpoint)
    ref = local_ds(tiny)
    expected = {ref.data_list[i]["image"]: ref[i] for i in tiny.good}
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=blip3o_collate)
    seen = []
    for batch in loader:
        data = batch["data"]
        assert data["pixel_values"].shape[1:] == (3, SIZE, SIZE)
        for row, image in enumerate(data["image_file"]):
            assert torch.equal(data["pixel_values"][row], expected[image]["pixel_values"])
            n = len(expected[image]["input_ids"])
            assert torch.equal(data["input_ids"][row, :n], expected[image]["input_ids"])
            assert data["attention_mask"][row].sum() == n
            seen.append(image)
    assert len(seen) == len(ds)
    assert set(tiny.good_files()) <= set(seen)  # every good sample read, bad ones replaced by good ones
    assert ds._storage is None  # the parent never opened a connection


def test_mmengine_default_and_infinite_samplers(tiny: TinyData) -> None:
    ds = local_ds(tiny, data_path=str(tiny.data_json))
    sampler = DefaultSampler(ds, shuffle=True, seed=3)
    order0 = list(sampler)
    sampler.set_epoch(1)
    assert sorted(order0) == list(range(len(ds))) and list(sampler) != order0
    files = [s for b in DataLoader(ds, sampler=sampler, batch_size=4, collate_fn=blip3o_collate)
             for s in b["data"]["image_file"]]
    assert len(files) == len(ds) and set(tiny.good_files()) <= set(files)
    infinite = InfiniteSampler(ds, shuffle=True, seed=3)
    loader = DataLoader(ds, sampler=infinite, batch_size=4, collate_fn=blip3o_collate)
    batches = list(itertools.islice(iter(loader), 5))  # more than one pass over 8 samples
    assert all(b["data"]["pixel_values"].shape == (4, 3, SIZE, SIZE) for b in batches)
    assert ds.bad_sample_counts  # the bad entries were met and replaced, not raised


# -- configs ------------------------------------------------------------------
def test_local_config_builds_a_working_dataset(tiny: TinyData, monkeypatch: pytest.MonkeyPatch) -> None:
    path = REPO_ROOT / "configs" / "blip3o60k_local.py"
    cfg = Config.fromfile(str(path))
    assert cfg.dataset["type"] == "BLIP3oDataset" and cfg.dataset["ceph_folder"] is None
    assert cfg.train_dataloader["sampler"]["type"] == "DefaultSampler"
    ds = build_dataset_from_config(str(path), data_path=str(tiny.data_json), image_folder=str(tiny.raw),
                                   cap_folder=str(tiny.raw))
    assert isinstance(ds, BLIP3oDataset)
    sample = ds[0]
    assert sample["pixel_values"].shape == (3, 512, 512)
    assert ds.tokenizer.decode(sample["input_ids"]).startswith("<|user|>\n")
    # the data root from the environment, no overrides
    monkeypatch.setenv("BLIP3O_DATA_ROOT", str(tiny.root))
    cfg = Config.fromfile(str(path))
    assert cfg.dataset["data_path"] == f"{tiny.root}/data.json"
    # mmengine's Runner builds the whole loader: dataset, sampler, collate_fn
    from mmengine.runner import Runner
    loader_cfg = cfg.train_dataloader.copy()
    loader_cfg.update(num_workers=0, persistent_workers=False, pin_memory=False, batch_size=2)
    loader_cfg["dataset"] = dict(loader_cfg["dataset"], image_size=SIZE)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batch = next(iter(loader))
    assert batch["data"]["pixel_values"].shape == (2, 3, SIZE, SIZE)
    assert batch["data"]["input_ids"].shape[0] == 2


def test_ceph_config_builds_a_dataset_reading_s3(tiny_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny, bucket, endpoint = tiny_s3
    conf = endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    path = REPO_ROOT / "configs" / "blip3o60k_ceph.py"
    cfg = Config.fromfile(str(path))
    assert cfg.dataset["ceph_folder"].startswith("s3://") and cfg.dataset["ceph_config"]
    ds = build_dataset_from_config(str(path), data_path=f"{bucket}/data.json", ceph_folder=f"{bucket}/raw",
                                   ceph_config=str(conf), image_folder=str(tiny.raw), cap_folder=str(tiny.raw),
                                   image_size=SIZE)
    assert torch.equal(ds[0]["pixel_values"], local_ds(tiny)[0]["pixel_values"])
    assert ds.read_counts == {"remote": 2}  # remote first, the local copy untouched
    monkeypatch.setenv("BLIP3O_DATA_ROOT", str(tiny.root))
    monkeypatch.setenv("BLIP3O_CEPH_FOLDER", f"{bucket}/raw")
    monkeypatch.setenv("BLIP3O_CEPH_CONFIG", str(conf))
    env_ds = build_dataset_from_config(str(path), key="train_dataloader.dataset", image_size=SIZE)
    assert env_ds.ceph_folder == f"{bucket}/raw" and env_ds.ceph_config == str(conf)
    assert torch.equal(env_ds[1]["pixel_values"], local_ds(tiny)[1]["pixel_values"])
    assert env_ds.read_counts == {"remote": 2}


# -- building blocks ------------------------------------------------------------
def test_build_component_forms() -> None:
    tok = ByteTokenizer()
    assert build_component(tok) is tok
    assert isinstance(build_component(ByteTokenizer), ByteTokenizer)
    assert build_component(dict(type="ByteTokenizer", add_eos=False)).add_eos is False
    assert isinstance(build_component(dict(type=ByteTokenizer)), ByteTokenizer)
    assert isinstance(build_component(dict(type="blip3o_storage.training.tokenizers.ByteTokenizer")), ByteTokenizer)
    assert build_component(dict(type=lambda n: n * 2, n=21)) == 42
    assert BUILDER.get("BLIP3oDataset") is BLIP3oDataset
    with pytest.raises(ConfigError, match="NoSuchTokenizer"):
        build_component(dict(type="NoSuchTokenizer"))
    with pytest.raises(ConfigError, match="no 'type'"):
        build_component(dict(add_eos=False))


def test_callable_tokenizer_and_openuni_template(tiny: TinyData) -> None:
    ds = local_ds(tiny, tokenizer=lambda text: {"input_ids": [[len(text), 7]]},
                  prompt_template=dict(INSTRUCTION="[{input}]", GENERATION="draw {input}", IMG_START_TOKEN="<img>"))
    prompt = build_prompt(tiny.captions[tiny.entries[0]["image"]], unconditional=False,
                          prompt_template=ds.prompt_template)
    assert prompt == "[draw A red fox in snow.]<img>"
    assert ds[0]["input_ids"].tolist() == [len(prompt), 7]


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    text = "Ünïcode 東京 \n<|user|>"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert max(ids) < tok.vocab_size and tok.decode(ids) == text
    assert tok.encode(text, return_tensors="pt").shape == (1, len(ids))
    assert tok(text)["input_ids"] == ids and tok.encode(text, add_special_tokens=False) == ids[1:-1]


def test_collate_pads_and_masks() -> None:
    samples = [{"input_ids": torch.tensor([5, 6, 7]), "pixel_values": torch.zeros(3, 4, 4), "image_file": "a"},
               {"input_ids": torch.tensor([9]), "pixel_values": torch.ones(3, 4, 4), "image_file": "b"}]
    data = blip3o_collate(samples, pad_index=0)["data"]
    assert data["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0]]
    assert data["attention_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert data["pixel_values"].shape == (2, 3, 4, 4) and data["image_file"] == ["a", "b"]
    left = blip3o_collate(samples, pad_index=0, padding_side="left")["data"]
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 9]]
    with pytest.raises(ValueError, match="pixel_values"):
        blip3o_collate([samples[0], {"input_ids": torch.tensor([1])}])


def test_image_ops_errors_name_the_key() -> None:
    with pytest.raises(CorruptDataError, match="s3://b/x.jpg"):
        decode_image(b"garbage", "s3://b/x.jpg")
    with pytest.raises(CorruptDataError, match="truncated.jpg"):
        decode_image(_jpeg(160, 120, 0)[:400], "truncated.jpg")
    with pytest.raises(ImageRejectedError, match="small.jpg") as info:
        check_image(Image.new("RGB", (80, 200)), "small.jpg", min_image_size=80)
    assert info.value.reason == "too_small"
    with pytest.raises(ImageRejectedError) as info:
        check_image(Image.new("RGB", (100, 1001)), "tall.jpg")
    assert info.value.reason == "bad_aspect"
    gray = io.BytesIO()
    Image.new("L", (90, 90), 255).save(gray, format="PNG")
    pv = load_pixel_values(gray.getvalue(), "g.png", image_size=4)
    assert pv.shape == (3, 4, 4) and torch.equal(pv, torch.ones(3, 4, 4))


def test_inline_captions_save_the_caption_request_and_change_nothing(tiny_s3, tmp_path: Path) -> None:
    tiny, bucket, endpoint = tiny_s3
    good = [tiny.entries[i] for i in tiny.good]
    plain_json = tmp_path / "plain.json"
    plain_json.write_text(json.dumps(good))
    inline_json = tmp_path / "inline.json"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make_data_json.py"), "--raw", str(tiny.raw),
                           "--out", str(inline_json), "--inline-captions"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    inline = {e["image"]: e for e in json.loads(inline_json.read_text())}
    assert all(inline[e["image"]]["caption"] == (tiny.raw / e["annotation"]).read_text().strip() for e in good)
    inline_json.write_text(json.dumps([inline[e["image"]] for e in good]))
    files = s3_ds(tiny, bucket, endpoint, data_path=str(plain_json))
    inlined = s3_ds(tiny, bucket, endpoint, data_path=str(inline_json), prefetch=2)
    inlined.set_epoch_order(list(range(len(good))))
    for i in range(len(good)):
        a, b = files[i], inlined[i]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
    assert files.read_counts["remote"] == 2 * len(good)
    assert inlined.read_counts["remote"] == len(good)  # one request per sample: the image
    off = s3_ds(tiny, bucket, endpoint, data_path=str(inline_json), inline_captions=False)
    assert torch.equal(off[0]["input_ids"], files[0]["input_ids"]) and off.read_counts["remote"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(good[0], caption=7)]))
    with pytest.raises(CorruptDataError, match="entry 0 'caption' is a int"):
        s3_ds(tiny, bucket, endpoint, data_path=str(bad))
