"""BLIP3oDataset and its building blocks on local files (no server): samples, bad samples, data.json,
the local fallback, samplers, configs, tokenizers, collate (the S3 cases are in tests/integration/test_dataset.py)."""
from __future__ import annotations

import io
import itertools
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from mmengine import Config
from mmengine.dataset import DefaultSampler, InfiniteSampler
from PIL import Image
from torch.utils.data import DataLoader

from blip3o_storage import (
    ConfigError,
    CorruptDataError,
    InvalidPathError,
    ObjectNotFoundError,
    Storage,
    TransientStorageError,
)
from blip3o_storage.testing.data import jpeg as _jpeg
from blip3o_storage.testing.local_s3 import free_port
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.testing.tiny import LOGGER, SIZE, TEMPLATE, TinyData, local_ds, reference_pixels
from blip3o_storage.training.collate import blip3o_collate
from blip3o_storage.training.dataset import (
    BLIP3oDataset,
    SampleRetriesExhaustedError,
    build_dataset_from_config,
    load_data_list,
)
from blip3o_storage.training.image_ops import ImageRejectedError, check_image, decode_image, load_pixel_values
from blip3o_storage.training.registry import BUILDER, build_component
from blip3o_storage.training.tokenizers import ByteTokenizer, build_prompt


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
        assert ds.tokenizer is not None
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
    assert ds.tokenizer is not None
    assert ds.tokenizer.decode(full) == TEMPLATE["INSTRUCTION"].format(input="Generate an image.")
    assert torch.equal(ids, full[:10])


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
    assert ds.tokenizer is not None
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


# -- building blocks ------------------------------------------------------------
def test_build_component_forms() -> None:
    tok = ByteTokenizer()
    assert build_component(tok) is tok
    assert isinstance(build_component(ByteTokenizer), ByteTokenizer)
    built = build_component(dict(type="ByteTokenizer", add_eos=False))
    assert built is not None
    assert built.add_eos is False
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
    pt = tok.encode(text, return_tensors="pt")
    assert isinstance(pt, torch.Tensor)
    assert pt.shape == (1, len(ids))
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
