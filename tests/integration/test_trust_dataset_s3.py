"""BLIP3oDataset against missing buckets and long keys on real S3 servers
(the serverless cases are in tests/unit/test_trust_dataset.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from blip3o_storage.errors import BucketNotFoundError
from blip3o_storage.testing.data import caption_tree as _tree
from blip3o_storage.testing.data import jpeg
from blip3o_storage.training.dataset import BLIP3oDataset, load_data_list
from blip3o_storage.training.tokenizers import ByteTokenizer


def test_long_key_still_reads_from_s3(tmp_path: Path, s3_bucket, s3_endpoint) -> None:
    """The same relpath is a valid S3 key: remote reads must not be refused for the local limit."""
    storage, bucket = s3_bucket
    long_name = "y" * 300
    storage.put(f"{bucket}/raw/{long_name}/a.jpg", jpeg(120, 100, 1))
    storage.put(f"{bucket}/raw/{long_name}/a.txt", b"long key")
    data_json = tmp_path / "d.json"
    data_json.write_text(json.dumps([{"image": f"{long_name}/a.jpg", "annotation": f"{long_name}/a.txt"}]))
    ds = BLIP3oDataset(data_path=str(data_json), ceph_folder=f"{bucket}/raw", ceph_config=s3_endpoint.ceph_config(),
                       tokenizer=ByteTokenizer(), image_size=16, unconditional=0.0)
    assert ds.tokenizer is not None
    assert ds.tokenizer.decode(ds[0]["input_ids"]) == "Generate an image: long key"
    assert ds.bad_sample_counts == {}


def test_data_json_in_a_missing_bucket_names_the_bucket(s3_bucket) -> None:
    storage, bucket = s3_bucket
    missing = bucket + "-missing"
    name = missing[len("s3://"):]
    for data_path in (f"{missing}/data.json", f"{missing}/parts"):
        with pytest.raises(BucketNotFoundError, match=f"bucket {name!r} does not exist") as info:
            load_data_list(data_path, storage)
        assert "data file does not exist" not in str(info.value)


def test_ceph_folder_in_a_missing_bucket_fails_at_once_naming_it(tmp_path: Path, s3_bucket, s3_endpoint) -> None:
    storage, bucket = s3_bucket
    data_json = _tree(tmp_path, {"a": b"a", "b": b"b", "c": b"c"})
    missing = bucket + "-missing"
    ds = BLIP3oDataset(data_path=str(data_json), ceph_folder=f"{missing}/raw", ceph_config=s3_endpoint.ceph_config(),
                       tokenizer=ByteTokenizer(), image_size=16, max_retries=10)
    with pytest.raises(BucketNotFoundError, match=f"bucket {missing[5:]!r}.*ceph_folder") as info:
        ds[0]
    assert "missing" not in ds.bad_sample_counts  # not 11 'missing' samples: one clear error
    assert isinstance(info.value, FileNotFoundError)
    # with the local copy configured, the missing bucket is a fallback like a missing object
    fb = BLIP3oDataset(data_path=str(data_json), ceph_folder=f"{missing}/raw", ceph_config=s3_endpoint.ceph_config(),
                       image_folder=str(tmp_path / "raw"), cap_folder=str(tmp_path / "raw"),
                       tokenizer=ByteTokenizer(), image_size=16)
    assert fb[1]["image_file"] == "b.jpg" and fb.read_counts["fallback_local"] == 2
    (tmp_path / "raw" / "b.jpg").unlink()  # no local copy of this one: a missing sample, named
    assert fb[1]["image_file"] != "b.jpg" and fb.bad_sample_counts == {"missing": 1}
    assert "does not exist" in fb.bad_samples_log[-1].message and missing[5:] in fb.bad_samples_log[-1].message
