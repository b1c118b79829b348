"""BLIP3oDataset / CaptionDataset drop-ins: local disk, S3 over real HTTP
(moto server; Ceph RGW with --ceph), bad samples, fallback, workers, configs."""
from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine import Config
from torch.utils.data import DataLoader

from blip3o_storage import CorruptDataError, ObjectNotFoundError, Storage
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.testing.tiny import LOGGER, SIZE, TEMPLATE, local_ds, make_tiny_data, s3_ds, upload_tree
from blip3o_storage.training.collate import blip3o_collate
from blip3o_storage.training.dataset import CaptionDataset, SampleRetriesExhaustedError, build_dataset_from_config


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
    assert ds.tokenizer is not None
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
