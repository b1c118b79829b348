"""Reliability: fault injection, bad inputs, nothing lost.

* Uploads and DataLoader reads through :mod:`fault_proxy` (resets, 503
  SlowDown, stalls, truncated bodies) lose and corrupt nothing, and retries
  are counted (exactly: every injected fault on a read is one retry).
* Bad inputs (ceph_config, cluster, credentials, bucket, data.json, images)
  each raise a clear error of our hierarchy *and* the matching built-in, naming
  the input and never containing a secret.
* Property tests (hypothesis) for petreloss.conf parsing.
* Concurrency: DataLoader workers x threads on one client pool, no
  "Connection pool is full" and no wrong byte; a negative control shows the
  check does fire with a too-small pool.

Figures are printed as ``REL {...}`` lines (``pytest -s`` shows them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import string
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset, get_worker_info

from blip3o_storage import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    CorruptDataError,
    InvalidPathError,
    ObjectNotFoundError,
    Storage,
    StorageError,
    load_config,
    load_petreloss_conf,
)
from blip3o_storage.testing import data as helpers
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.fault_proxy import FAULTS, FaultProxy, FaultRates
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.training.dataset import BLIP3oDataset, SampleRetriesExhaustedError

# 3 workers on a 2-core box is the point of these tests, not a mistake.
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")

UPLOAD = str(REPO_ROOT / "tools" / "upload.py")
SECRET = "s3cr3t-REL-DO-NOT-LEAK"
SIZE = 32
READ_FAULTS = ("reset", "slowdown", "truncate")  # each costs exactly one retry of a GET


def report(name: str, **figures: object) -> None:
    """A ``REL`` line with the figures of one run (for the README's REL section)."""
    print(f"\nREL {json.dumps({'test': name, **figures}, sort_keys=True)}")


def jpeg(width: int, height: int, seed: int) -> bytes:
    return helpers.jpeg(width, height, seed, quality=85)


def write_conf(path: Path, endpoint_url: str, access_key: str, secret_key: str, cluster: str = "cluster1",
               **options: object) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in options.items())
    path.write_text(f"[DEFAULT]\ndefault_cluster = {cluster}\n\n[{cluster}]\naccess_key = {access_key}\n"
                    f"secret_key = {secret_key}\nhost_base = {endpoint_url}\n{extra}")
    return path


def put_all(storage: Storage, objects: Dict[str, bytes], threads: int = 16) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: storage.put(*kv), objects.items()))


def assert_names_and_no_secret(exc: BaseException, *names: str, secrets: tuple = (SECRET,)) -> None:
    message = str(exc)
    for name in names:
        assert name in message, f"{name!r} not named in: {message}"
    text = "".join(traceback.format_exception(exc)) + repr(exc)
    for secret in secrets:
        assert secret not in text


# =========================================================================
# 1. a full upload under faults: 0 missing, 0 corrupt
# =========================================================================
def write_tree(root: Path, files: Dict[str, bytes]) -> Dict[str, bytes]:
    """Write ``files`` (relative key -> bytes) under ``root``; return them."""
    for key, data in files.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def make_upload_tree(root: Path, n_pairs: int) -> Dict[str, bytes]:
    """raw/<shard>/<i>.jpg (random 1-5 KB) + .txt, data.json: 2 * n_pairs + 1 files."""
    files: Dict[str, bytes] = {}
    entries = []
    rng = np.random.default_rng(0)
    for i in range(n_pairs):
        shard = f"s{i % 8}"
        files[f"raw/{shard}/{i:05d}.jpg"] = rng.bytes(1000 + int(rng.integers(0, 4000)))
        files[f"raw/{shard}/{i:05d}.txt"] = f"caption {i} ünïcode\n".encode()
        entries.append({"image": f"{shard}/{i:05d}.jpg", "annotation": f"{shard}/{i:05d}.txt"})
    files["data.json"] = json.dumps(entries).encode()
    return write_tree(root, files)


def test_upload_under_faults_loses_and_corrupts_nothing(tmp_path, moto_endpoint):
    src = tmp_path / "BLIP3o-60k"
    expected = make_upload_tree(src, 1000)
    direct, bucket_uri = new_bucket(moto_endpoint)
    bucket = bucket_uri[len("s3://"):]
    rates = FaultRates(reset=0.04, slowdown=0.04, stall=0.04, truncate=0.04, truncate_request=0.04,
                       stall_seconds=0.2)
    with FaultProxy(moto_endpoint.endpoint_url, rates, seed=2024) as proxy:
        conf = write_conf(tmp_path / "petreloss.conf", proxy.endpoint_url, moto_endpoint.access_key,
                          moto_endpoint.secret_key, max_attempts=6)
        started = time.monotonic()
        proc = subprocess.run([sys.executable, UPLOAD, "--config", str(conf), "--bucket", bucket, "--prefix", "rel",
                               "--workers", "16", str(src)], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300)
        seconds = time.monotonic() - started
        counts = proxy.snapshot()
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    assert "failed 0" in proc.stdout and f"verified {len(expected)} ok, 0 missing, 0 mismatched" in proc.stdout
    assert moto_endpoint.secret_key not in proc.stdout + proc.stderr

    # Check against the server directly (not through the proxy): every key, every byte.
    listed = {info.key: info for info in direct.list(f"{bucket_uri}/rel/")}
    missing = sorted(set(expected) - set(listed))
    extra = sorted(set(listed) - set(expected))

    def md5_of(key: str) -> str:
        return hashlib.md5(direct.get(f"{bucket_uri}/rel/{key}")).hexdigest()
    with ThreadPoolExecutor(8) as pool:
        remote_md5 = dict(zip(listed, pool.map(md5_of, listed)))
    corrupt = sorted(k for k, data in expected.items()
                     if k in remote_md5 and remote_md5[k] != hashlib.md5(data).hexdigest())
    bad_etag = sorted(k for k, info in listed.items() if info.etag != remote_md5[k])
    assert (missing, extra, corrupt, bad_etag) == ([], [], [], [])
    # faults really happened, of every kind a PUT can get
    assert all(counts[name] > 0 for name in ("reset", "slowdown", "stall", "truncate_request")), counts
    report("upload_under_faults", files=len(expected), bytes=sum(map(len, expected.values())),
           missing=len(missing), corrupt=len(corrupt), seconds=round(seconds, 1), proxy=counts,
           injected=sum(counts[f] for f in FAULTS), summary=proc.stdout.strip().splitlines())


# =========================================================================
# 2. DataLoader reads under faults: every sample byte-correct, retries counted
# =========================================================================
def make_image_dataset(root: Path, n: int) -> Dict[str, bytes]:
    """``root/raw/<shard>/<i>.jpg + .txt`` and ``root/data.json``; returns key -> bytes."""
    files: Dict[str, bytes] = {}
    entries = []
    for i in range(n):
        shard = f"d{i % 4}"
        w, h = 80 + (i * 7) % 90, 80 + (i * 13) % 90
        files[f"raw/{shard}/{i:05d}.jpg"] = jpeg(w, h, i)
        files[f"raw/{shard}/{i:05d}.txt"] = f"  sample {i}: a picture, ünïcode {i * 31 % 97}\n".encode()
        entries.append({"image": f"{shard}/{i:05d}.jpg", "annotation": f"{shard}/{i:05d}.txt"})
    files["data.json"] = json.dumps(entries).encode()
    return write_tree(root, files)


class WithWorkerStats(Dataset):
    """Each sample plus which worker read it and that worker's cumulative counters."""

    def __init__(self, inner: BLIP3oDataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict:
        sample = self.inner[index]
        info = get_worker_info()
        return {"index": index, "image_file": sample["image_file"], "pixel_values": sample["pixel_values"],
                "input_ids": sample["input_ids"], "worker": info.id if info else -1, "pid": os.getpid(),
                "stats": self.inner.stats(), "bad": dict(self.inner.bad_sample_counts),
                "reads": dict(self.inner.read_counts)}


def dataset_kwargs(**extra: object) -> dict:
    kwargs = dict(tokenizer=dict(type="ByteTokenizer"), image_size=SIZE, min_image_size=64, unconditional=0.0,
                  prompt_template={"INSTRUCTION": "<|user|>\n{input}<|end|>\n"})
    kwargs.update(extra)
    return kwargs


@pytest.mark.parametrize("num_workers", [3])
def test_dataloader_under_faults_every_sample_exact_and_retries_counted(tmp_path, moto_endpoint, num_workers):
    n = 240
    files = make_image_dataset(tmp_path, n)
    direct, bucket_uri = new_bucket(moto_endpoint)
    put_all(direct, {f"{bucket_uri}/blip3o/{k}": v for k, v in files.items()})
    local = BLIP3oDataset(data_path=str(tmp_path / "data.json"), image_folder=str(tmp_path / "raw"),
                          cap_folder=str(tmp_path / "raw"), **dataset_kwargs())

    rates = FaultRates(reset=0.04, slowdown=0.04, stall=0.04, truncate=0.05, stall_seconds=0.1)
    with FaultProxy(moto_endpoint.endpoint_url, rates, seed=99) as proxy:
        config = moto_endpoint.ceph_config(endpoint_url=proxy.endpoint_url, max_attempts=6)
        remote = BLIP3oDataset(data_path=f"{bucket_uri}/blip3o/data.json", ceph_folder=f"{bucket_uri}/blip3o/raw",
                               ceph_config=config, local_fallback=False, max_retries=0, **dataset_kwargs())
        before = proxy.snapshot()  # data.json was read (under faults) by a throwaway Storage
        started = time.monotonic()
        loader = DataLoader(WithWorkerStats(remote), batch_size=None, shuffle=True, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(0))
        samples = list(loader)
        seconds = time.monotonic() - started
        after = proxy.snapshot()

    assert sorted(s["index"] for s in samples) == list(range(n))
    for s in samples:
        want = local[s["index"]]
        assert s["image_file"] == want["image_file"]
        assert torch.equal(s["pixel_values"], want["pixel_values"]), s["image_file"]
        assert torch.equal(s["input_ids"], want["input_ids"]), s["image_file"]
    final: Dict[int, dict] = {}  # per worker: its last (cumulative) counters
    for s in samples:
        if s["worker"] not in final or s["stats"]["reads"]["remote"] > final[s["worker"]]["stats"]["reads"]["remote"]:
            final[s["worker"]] = s
    assert sorted(final) == list(range(num_workers))
    assert all(not w["bad"] for w in final.values()), [w["bad"] for w in final.values()]
    assert sum(w["reads"]["remote"] for w in final.values()) == 2 * n
    ours = sum(w["stats"]["storage_retries"]["default"]["retries"] for w in final.values())
    botocore = sum(w["stats"]["storage_retries"]["default"]["botocore_retries"] for w in final.values())
    reasons: Dict[str, int] = {}
    for w in final.values():
        for reason, k in w["stats"]["storage_retries"]["default"]["by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + k
    injected = {f: after[f] - before[f] for f in FAULTS}
    assert all(injected[f] > 0 for f in ("reset", "slowdown", "stall", "truncate")), injected
    # Every reset, 503 and truncated body costs exactly one retry; a stall (< read_timeout) none.
    assert ours + botocore == sum(injected[f] for f in READ_FAULTS), (ours, botocore, injected, reasons)
    assert reasons.get("truncated-body", 0) + reasons.get("http-protocol", 0) >= injected["truncate"]
    report("dataloader_under_faults", samples=n, objects_read=2 * n, workers=num_workers,
           seconds=round(seconds, 1), injected=injected, requests=after["requests"] - before["requests"],
           retries_ours=ours, retries_botocore=botocore, by_reason=reasons, bad_samples=0)


# =========================================================================
# 3. bad inputs: clear errors naming the input, no secrets
# =========================================================================
MALFORMED_CONFIGS: Dict[str, Tuple[Union[str, bytes], str]] = {
    "not_ini": ("this is not an ini file\nsecret_key = " + SECRET, "not a valid INI"),
    "duplicate_section": (f"[c]\nhost_base = http://h\nsecret_key = {SECRET}\n[c]\nhost_base = http://h\n",
                          "not a valid INI"),
    "no_cluster": ("[DEFAULT]\ndefault_cluster = c\n", "no [cluster] section"),
    "default_missing": ("[DEFAULT]\ndefault_cluster = gone\n[c]\nhost_base = http://h\n", "has no [gone] section"),
    "two_without_default": ("[a]\nhost_base = http://h\n[b]\nhost_base = http://h\n", "no 'default_cluster'"),
    "secret_without_key": (f"[c]\nsecret_key = {SECRET}\nhost_base = http://h\n", "together"),
    "bad_scheme": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = ftp://h\n", "not an http"),
    "empty_host": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base =\n", "empty host_base"),
    "bad_int": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = http://h\nmax_attempts = lots\n",
                "max_attempts"),
    "zero_pool": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = http://h\nmax_pool_connections = 0\n",
                  "max_pool_connections"),
    "unknown_option": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = http://h\nsecrte_key = x\n",
                       "secrte_key"),
    "bad_addressing": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = http://h\naddressing_style = dns\n",
                       "addressing_style"),
    "missing_ca_bundle": (f"[c]\naccess_key = a\nsecret_key = {SECRET}\nhost_base = https://h\n"
                          f"ca_bundle = /nonexistent/ca.pem\n", "/nonexistent/ca.pem"),
    "not_utf8": (b"[c]\nhost_base = http://h\naccess_key = \xff\xfe\n", "not a valid INI"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_CONFIGS))
def test_malformed_ceph_config_names_file_and_problem(tmp_path, kind):
    text, expected = MALFORMED_CONFIGS[kind]
    path = tmp_path / f"{kind}.conf"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for load in (lambda: load_petreloss_conf(path), lambda: Storage(str(path)).get("s3://bucket/key"),
                 lambda: BLIP3oDataset(data_path="s3://bucket/data.json", ceph_folder="s3://bucket/raw",
                                       ceph_config=str(path), **dataset_kwargs())):
        with pytest.raises(ConfigError) as info:
            load()
        assert isinstance(info.value, ValueError) and isinstance(info.value, StorageError)
        assert_names_and_no_secret(info.value, str(path), expected)


def test_missing_ceph_config_file_and_wrong_type(tmp_path):
    path = tmp_path / "nope" / "petreloss.conf"
    with pytest.raises(ConfigError) as info:
        Storage(str(path)).get("s3://bucket/key")
    assert_names_and_no_secret(info.value, str(path), "does not exist")
    with pytest.raises(ConfigError, match="not int"):
        load_config(42)  # type: ignore[arg-type]  # deliberately the wrong type: the test checks it is refused


def test_unknown_cluster_names_cluster_file_and_known_ones(tmp_path):
    path = write_conf(tmp_path / "petreloss.conf", "http://127.0.0.1:9", "AKIA", SECRET, cluster="main")
    for uri in ("nope:s3://bucket/key", "other-cluster:s3://bucket/dir/x.jpg"):
        with pytest.raises(ConfigError) as info:
            Storage(str(path)).get(uri)
        assert isinstance(info.value, ValueError)
        assert_names_and_no_secret(info.value, repr(uri.split(":")[0]), str(path), "main")
    with pytest.raises(ConfigError) as info:  # through the dataset: at the first sample, not silently
        BLIP3oDataset(data_path="nope:s3://bucket/data.json", ceph_folder="nope:s3://bucket/raw",
                      ceph_config=str(path), **dataset_kwargs())
    assert_names_and_no_secret(info.value, "'nope'", str(path))


@pytest.fixture
def auth_bucket(moto_auth_endpoint):
    storage, bucket_uri = new_bucket(moto_auth_endpoint)
    storage.put(f"{bucket_uri}/data/data.json", b'[{"image": "a.jpg", "annotation": "a.txt"}]')
    storage.put(f"{bucket_uri}/data/raw/a.jpg", jpeg(96, 96, 1))
    storage.put(f"{bucket_uri}/data/raw/a.txt", b"a caption")
    return storage, bucket_uri


@pytest.mark.parametrize("wrong", ["secret", "access_key"])
def test_wrong_credentials_are_access_denied_naming_the_uri(tmp_path, moto_auth_endpoint, auth_bucket, wrong):
    good, bucket_uri = auth_bucket
    assert good.get(f"{bucket_uri}/data/raw/a.txt") == b"a caption"  # the right keys work
    bad_secret = "WrongSecret-" + SECRET
    access_key = moto_auth_endpoint.access_key if wrong == "secret" else "AKIANOSUCHKEY0000000"
    secret_key = bad_secret if wrong == "secret" else moto_auth_endpoint.secret_key
    path = write_conf(tmp_path / "petreloss.conf", moto_auth_endpoint.endpoint_url, access_key, secret_key,
                      max_attempts=2)
    storage = Storage(str(path))
    secrets = (bad_secret, moto_auth_endpoint.secret_key)
    for _action, call in [("get", lambda uri: storage.get(uri)), ("put", lambda uri: storage.put(uri, b"x")),
                         ("stat", lambda uri: storage.stat(uri)), ("list", lambda uri: list(storage.list(uri)))]:
        uri = f"{bucket_uri}/data/raw/a.txt"
        with pytest.raises(AccessDeniedError) as info:
            call(uri)
        assert isinstance(info.value, PermissionError)
        assert_names_and_no_secret(info.value, uri, "access denied", secrets=secrets)
    with pytest.raises(AccessDeniedError) as info:  # the dataset's first read: data.json
        BLIP3oDataset(data_path=f"{bucket_uri}/data/data.json", ceph_folder=f"{bucket_uri}/data/raw",
                      ceph_config=str(path), **dataset_kwargs())
    assert_names_and_no_secret(info.value, f"{bucket_uri}/data/data.json", secrets=secrets)
    # per sample (data.json readable locally): counted as access_denied and named, then a clear final error
    local_json = tmp_path / "data.json"
    local_json.write_bytes(good.get(f"{bucket_uri}/data/data.json"))
    ds = BLIP3oDataset(data_path=str(local_json), ceph_folder=f"{bucket_uri}/data/raw", ceph_config=str(path),
                       max_retries=0, **dataset_kwargs())
    with pytest.raises(SampleRetriesExhaustedError) as exhausted:
        ds[0]
    assert ds.bad_sample_counts == {"access_denied": 1}
    assert ds.bad_samples_log[-1].uri == f"{bucket_uri}/data/raw/a.jpg"
    assert_names_and_no_secret(exhausted.value, f"{bucket_uri}/data/raw/a.jpg", "access_denied", secrets=secrets)


def test_missing_bucket_is_bucket_not_found_naming_it(tmp_path, moto_endpoint):
    storage = Storage(moto_endpoint.ceph_config())
    uri = "s3://rel-no-such-bucket-4711/raw/a.jpg"
    for call in (storage.get, lambda u: list(storage.list(u)), lambda u: storage.put(u, b"x")):
        with pytest.raises(BucketNotFoundError) as info:
            call(uri)
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ObjectNotFoundError)
        assert_names_and_no_secret(info.value, uri, "bucket does not exist", secrets=(moto_endpoint.secret_key,))
    # HEAD answers have no body, so no NoSuchBucket code: stat can only say "not found" (still named)
    with pytest.raises(ObjectNotFoundError) as not_found:
        storage.stat(uri)
    assert isinstance(not_found.value, FileNotFoundError)
    assert_names_and_no_secret(not_found.value, uri, secrets=(moto_endpoint.secret_key,))
    assert storage.exists(uri) is False
    with pytest.raises(ObjectNotFoundError) as not_found:
        BLIP3oDataset(data_path="s3://rel-no-such-bucket-4711/data.json", ceph_folder="s3://rel-no-such-bucket-4711/raw",
                      ceph_config=moto_endpoint.ceph_config(), **dataset_kwargs())
    assert isinstance(not_found.value, FileNotFoundError)
    assert_names_and_no_secret(not_found.value, "s3://rel-no-such-bucket-4711/data.json",
                               secrets=(moto_endpoint.secret_key,))
    # the uploader: exit 2 and the bucket named
    src = tmp_path / "src"
    make_upload_tree(src, 1)
    conf = write_conf(tmp_path / "p.conf", moto_endpoint.endpoint_url, moto_endpoint.access_key,
                      moto_endpoint.secret_key)
    proc = subprocess.run([sys.executable, UPLOAD, "--config", str(conf), "--bucket", "rel-no-such-bucket-4711",
                           str(src)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "rel-no-such-bucket-4711" in proc.stderr
    assert moto_endpoint.secret_key not in proc.stdout + proc.stderr


MALFORMED_DATA_JSON = [
    (b'[{"image": "a.jpg", ', CorruptDataError, ["malformed JSON", "line 1"]),
    (b'{"image": "a.jpg", "annotation": "a.txt"}', CorruptDataError, ["expected a JSON list", "dict"]),
    (b'[{"image": "a.jpg", "annotation": "a.txt"}, 7]', CorruptDataError, ["entry 1 is a int"]),
    (b'[{"image": "a.jpg", "annotation": "a.txt"}, {"image": "b.jpg"}]', CorruptDataError,
     ["entry 1 has no 'annotation'"]),
    (b'[{"annotation": "a.txt"}]', CorruptDataError, ["entry 0 has no 'image'"]),
    (b'[{"image": "../../secret/x.jpg", "annotation": "a.txt"}]', InvalidPathError,
     ["entry 0 'image'", "escapes", "../../secret/x.jpg"]),
    (b'[{"image": "a.jpg", "annotation": "d/../../a.txt"}]', InvalidPathError, ["entry 0 'annotation'", "escapes"]),
    (b'[{"image": "/etc/passwd", "annotation": "a.txt"}]', InvalidPathError, ["entry 0 'image'", "absolute"]),
    (b'[{"image": "s3://other/x.jpg", "annotation": "a.txt"}]', InvalidPathError, ["absolute", "s3://other/x.jpg"]),
    (b'[{"image": "..\\\\x.jpg", "annotation": "a.txt"}]', InvalidPathError, ["backslash"]),
    (b'[{"image": "", "annotation": "a.txt"}]', InvalidPathError, ["entry 0 'image'", "empty"]),
    (b'[{"image": 5, "annotation": "a.txt"}]', InvalidPathError, ["entry 0 'image'", "non-string"]),
    (b'\xff\xfe[]', CorruptDataError, ["not UTF-8"]),
]


@pytest.fixture(scope="module")
def plain_bucket(moto_server):
    endpoint = S3Endpoint("moto_server", moto_server.endpoint_url, moto_server.access_key, moto_server.secret_key)
    storage, bucket_uri = new_bucket(endpoint)
    return endpoint, storage, bucket_uri


@pytest.mark.parametrize("case", range(len(MALFORMED_DATA_JSON)))
def test_malformed_data_json_on_s3_is_a_clear_error(plain_bucket, case):
    endpoint, storage, bucket_uri = plain_bucket
    content, error, names = MALFORMED_DATA_JSON[case]
    uri = f"{bucket_uri}/bad{case}/data.json"
    storage.put(uri, content)
    with pytest.raises(error) as info:
        BLIP3oDataset(data_path=uri, ceph_folder=f"{bucket_uri}/bad{case}/raw", ceph_config=endpoint.ceph_config(),
                      **dataset_kwargs())
    assert isinstance(info.value, StorageError)
    if error is InvalidPathError:
        assert isinstance(info.value, ValueError)
    assert_names_and_no_secret(info.value, uri, *names, secrets=(endpoint.secret_key,))
    with pytest.raises(error):  # a folder of data files: the bad one is named too
        BLIP3oDataset(data_path=f"{bucket_uri}/bad{case}/", ceph_folder=f"{bucket_uri}/bad{case}/raw",
                      ceph_config=endpoint.ceph_config(), **dataset_kwargs())


def test_corrupt_images_are_counted_and_named(plain_bucket):
    endpoint, storage, bucket_uri = plain_bucket
    good = {f"g{i}": jpeg(96 + i, 96, i) for i in range(8)}
    corrupt = {"truncated": jpeg(120, 120, 50)[:400], "garbage": os.urandom(3000), "empty": b"",
               "text": b"<html>404 not found</html>", "png_header_only": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}
    entries = []
    for name, data in {**good, **corrupt}.items():
        storage.put(f"{bucket_uri}/imgs/raw/{name}.jpg", data)
        storage.put(f"{bucket_uri}/imgs/raw/{name}.txt", f"caption of {name}".encode())
        entries.append({"image": f"{name}.jpg", "annotation": f"{name}.txt"})
    storage.put(f"{bucket_uri}/imgs/data.json", json.dumps(entries).encode())
    ds = BLIP3oDataset(data_path=f"{bucket_uri}/imgs/data.json", ceph_folder=f"{bucket_uri}/imgs/raw",
                       ceph_config=endpoint.ceph_config(), max_retries=20, **dataset_kwargs())
    for i, _entry in enumerate(entries):
        sample = ds[i]
        assert sample["image_file"] in {f"{g}.jpg" for g in good}  # a corrupt one is replaced by a good one
    logged = [bad for bad in ds.bad_samples_log]
    assert {bad.image for bad in logged} == {f"{c}.jpg" for c in corrupt}
    assert {bad.reason for bad in logged} == {"corrupt"}
    assert ds.bad_sample_counts == {"corrupt": len(logged)} and len(logged) >= len(corrupt)
    for bad in logged:
        assert bad.uri == f"{bucket_uri}/imgs/raw/{bad.image}" and bad.uri in bad.message
        assert "cannot decode image" in bad.message
    # with no retries left, the error itself names the file
    strict = BLIP3oDataset(data_path=f"{bucket_uri}/imgs/data.json", ceph_folder=f"{bucket_uri}/imgs/raw",
                           ceph_config=endpoint.ceph_config(), max_retries=0, **dataset_kwargs())
    idx = [e["image"] for e in entries].index("truncated.jpg")
    with pytest.raises(SampleRetriesExhaustedError) as info:
        strict[idx]
    assert_names_and_no_secret(info.value, f"{bucket_uri}/imgs/raw/truncated.jpg", "corrupt",
                               secrets=(endpoint.secret_key,))


# =========================================================================
# 4. property tests: petreloss.conf parsing
# =========================================================================
_NAME = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=16).filter(
    lambda s: s != "DEFAULT")
_TOKEN = st.text(string.ascii_letters + string.digits + "+/=_-.%#;:[]", min_size=1, max_size=30)
_HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
_BOOLS = {"true": True, "True": True, "yes": True, "on": True, "1": True,
          "false": False, "FALSE": False, "no": False, "off": False, "0": False}


@st.composite
def cluster_settings(draw) -> dict:
    """INI values for one cluster (as written) and the S3Settings fields they must give."""
    ini: Dict[str, str] = {}
    want: Dict[str, object] = {}
    if draw(st.booleans()):
        ini["access_key"] = "AK" + draw(_TOKEN)
        ini["secret_key"] = "SK-" + SECRET + draw(_TOKEN)
        want.update(access_key=ini["access_key"], secret_key=ini["secret_key"])
    scheme = draw(st.sampled_from(["http://", "https://", ""]))
    host = draw(_HOST)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    endpoint = f"{scheme}{host}{f':{port}' if port else ''}"
    ini[draw(st.sampled_from(["host_base", "endpoint_url", "endpoint"]))] = endpoint + draw(st.sampled_from(["", "/"]))
    want["endpoint_url"] = (scheme or "http://") + endpoint[len(scheme):]
    if draw(st.booleans()):
        ini["region"] = want["region"] = draw(st.sampled_from(["us-east-1", "eu-west-3", "default", "ceph"]))
    if draw(st.booleans()):
        ini["addressing_style"] = want["addressing_style"] = draw(st.sampled_from(["path", "virtual", "auto"]))
    if draw(st.booleans()):
        word = draw(st.sampled_from(sorted(_BOOLS)))
        ini["verify_ssl"], want["verify_ssl"] = word, _BOOLS[word]
    for key in ("max_pool_connections", "max_attempts"):
        if draw(st.booleans()):
            value = draw(st.integers(1, 10_000))
            ini[key], want[key] = str(value), value
    for key in ("connect_timeout", "read_timeout"):
        if draw(st.booleans()):
            value = draw(st.floats(0.001, 1e4, allow_nan=False))
            ini[key], want[key] = repr(value), value
    if draw(st.booleans()):
        ini["retry_mode"] = want["retry_mode"] = draw(st.sampled_from(["legacy", "standard", "adaptive"]))
    for key in draw(st.sets(st.sampled_from(["enable_mc", "boto", "debug", "count_disp"]), max_size=2)):
        ini[key] = draw(st.sampled_from(["True", "False", "1"]))  # petrel_client keys: ignored
    return {"ini": ini, "want": want}


@given(clusters=st.dictionaries(_NAME, cluster_settings(), min_size=1, max_size=4), data=st.data())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_petreloss_conf_round_trips(tmp_path, clusters, data):
    names = sorted(clusters)
    default = data.draw(st.sampled_from(names))
    defaults: Dict[str, str] = {}
    default_values: Dict[str, object] = {}
    if data.draw(st.booleans()):  # [DEFAULT] values apply to every cluster that does not set them
        attempts = data.draw(st.integers(1, 50))
        defaults["max_attempts"], default_values["max_attempts"] = str(attempts), attempts
    lines = ["[DEFAULT]"]
    if len(names) > 1 or data.draw(st.booleans()):
        lines.append(f"default_cluster = {default}")
    lines += [f"{k} = {v}" for k, v in defaults.items()]
    for name in names:
        lines += ["", f"[{name}]"] + [f"{k} = {v}" for k, v in clusters[name]["ini"].items()]
    path = tmp_path / "petreloss.conf"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    config = load_petreloss_conf(path)
    assert config.default_cluster == default
    assert sorted(config.clusters) == names
    for name in names:
        settings_ = config.settings_for(name)
        want = {**default_values, **clusters[name]["want"]}
        got = {key: getattr(settings_, key) for key in want}
        assert got == want, name
        for secret in (settings_.secret_key, settings_.access_key, settings_.session_token):
            if secret:
                assert secret not in repr(settings_) and secret not in settings_.describe()
                assert secret not in repr(config)
        assert Storage(str(path)).s3_backend(f"{name}:s3://bucket/key").settings == settings_
    assert Storage(str(path)).s3_backend("s3://bucket/key").settings == config.settings_for(default)


_CONF_KEYS = sorted({"host_base", "endpoint_url", "access_key", "secret_key", "max_attempts", "max_pool_connections",
                     "connect_timeout", "verify_ssl", "ca_bundle", "addressing_style", "retry_mode",
                     "default_cluster", "region", "bogus"})
_URLISH = st.builds(lambda a, b: a + b, st.sampled_from(["http://", "https://", ""]),
                    st.text("[]:@/%.#?\uff03ab1", max_size=10))
_INI_LINE = st.one_of(
    st.text(max_size=40),
    st.builds(lambda n: f"[{n}]", st.text(max_size=12)),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(_CONF_KEYS), st.one_of(st.text(max_size=24), _URLISH)),
)


def _load_garbage(path: Path) -> None:
    try:
        load_petreloss_conf(path)
    except ConfigError as exc:
        assert str(path) in str(exc)


@given(lines=st.lists(_INI_LINE, max_size=12), header=st.booleans())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_garbage_config_text_raises_only_config_error(tmp_path, lines, header):
    path = tmp_path / "garbage.conf"
    path.write_text("\n".join((["[c]"] if header else []) + lines), encoding="utf-8", errors="surrogatepass")
    _load_garbage(path)


@given(endpoint=st.one_of(_URLISH, st.text(max_size=24)),
       values=st.dictionaries(st.sampled_from(_CONF_KEYS), st.one_of(st.text(max_size=24), _URLISH), max_size=4))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_garbage_values_in_a_valid_section_raise_only_config_error(tmp_path, endpoint, values):
    path = tmp_path / "garbage.conf"
    values = {"host_base": endpoint, **values}
    body = "".join(f"{k} = {v}\n" for k, v in values.items() if "\n" not in v and "\r" not in v)
    path.write_text("[c]\n" + body, encoding="utf-8", errors="surrogatepass")
    _load_garbage(path)


@given(raw=st.binary(max_size=300))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_property_garbage_config_bytes_raise_only_config_error(tmp_path, raw):
    path = tmp_path / "garbage.conf"
    path.write_bytes(raw)
    _load_garbage(path)


@pytest.mark.parametrize("endpoint", ["http://[", "http://[]", "http://[::1", "http://\uff03x"])
def test_unparseable_endpoint_is_a_config_error(tmp_path, endpoint):
    """Found by the garbage property test: urlparse's ValueError used to escape
    as a plain ValueError without naming the file."""
    path = write_conf(tmp_path / "p.conf", endpoint, "a", SECRET)
    with pytest.raises(ConfigError) as info:
        load_petreloss_conf(path)
    assert_names_and_no_secret(info.value, str(path))


# =========================================================================
# 5. concurrency: DataLoader workers x threads on one client pool
# =========================================================================
POOL_FULL: List[str] = []  # per process: "Connection pool is full" records (urllib3's, or storage/http1's)


class _PoolFullHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Connection pool is full" in message:
            POOL_FULL.append(message)


def count_pool_warnings(_worker_id: int = -1) -> None:
    """worker_init_fn: count the pool warnings in this worker (boto3's urllib3 pools and the
    signed-HTTP path's storage/http1 pool)."""
    POOL_FULL.clear()
    for name in ("urllib3.connectionpool", "blip3o_storage.storage.http1"):
        log = logging.getLogger(name)
        if not any(isinstance(h, _PoolFullHandler) for h in log.handlers):
            log.addHandler(_PoolFullHandler(level=logging.WARNING))
        if log.getEffectiveLevel() > logging.WARNING:
            log.setLevel(logging.WARNING)


class ThreadedReads(Dataset):
    """Item i = read a chunk of objects with ``threads`` threads on this worker's one Storage/client."""

    def __init__(self, config: dict, uris: List[str], chunk: int, threads: int) -> None:
        self.config, self.uris, self.chunk, self.threads = config, uris, chunk, threads
        self._storage: Optional[Storage] = None

    def __len__(self) -> int:
        return (len(self.uris) + self.chunk - 1) // self.chunk

    def __getitem__(self, index: int) -> dict:
        if self._storage is None:
            self._storage = Storage(self.config)
        uris = self.uris[index * self.chunk:(index + 1) * self.chunk]
        with ThreadPoolExecutor(self.threads) as pool:
            datas = list(pool.map(self._storage.get, uris))
        backend = self._storage.s3_backend(uris[0])
        return {"uris": uris, "md5": [hashlib.md5(d).hexdigest() for d in datas], "pid": os.getpid(),
                "client": id(backend.client), "pool_full": len(POOL_FULL)}


def threaded_read_run(endpoint: S3Endpoint, uris: List[str], *, max_pool: int, workers: int, threads: int,
                      chunk: int) -> List[dict]:
    ds = ThreadedReads(endpoint.ceph_config(max_pool_connections=max_pool), uris, chunk, threads)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, worker_init_fn=count_pool_warnings)
    return list(loader)


@pytest.fixture(scope="module")
def many_objects(plain_bucket) -> tuple:
    endpoint, storage, bucket_uri = plain_bucket
    rng = np.random.default_rng(5)
    objects = {f"{bucket_uri}/many/{i:04d}.bin": rng.bytes(1000 + int(rng.integers(0, 7000))) for i in range(480)}
    put_all(storage, objects)
    return endpoint, {uri: hashlib.md5(data).hexdigest() for uri, data in objects.items()}


def test_workers_times_threads_share_one_pool_without_warnings_or_wrong_data(many_objects):
    endpoint, expected = many_objects
    uris = sorted(expected)
    started = time.monotonic()
    items = threaded_read_run(endpoint, uris, max_pool=64, workers=3, threads=16, chunk=48)
    seconds = time.monotonic() - started
    got = {uri: md5 for item in items for uri, md5 in zip(item["uris"], item["md5"])}
    assert got == expected  # every object, every byte
    pids = {item["pid"] for item in items}
    assert len(pids) == 3 and os.getpid() not in pids
    clients = {(item["pid"], item["client"]) for item in items}
    assert len(clients) == 3  # one client (one pool) per worker, shared by its 16 threads
    warnings_per_worker = {pid: max(i["pool_full"] for i in items if i["pid"] == pid) for pid in pids}
    assert sum(warnings_per_worker.values()) == 0, warnings_per_worker
    report("concurrency", objects=len(uris), workers=3, threads_per_worker=16, max_pool_connections=64,
           pool_full_warnings=0, seconds=round(seconds, 1))


def test_negative_control_small_pool_does_warn(many_objects):
    """The check above can fail: 16 threads on a pool of 2 discard connections and the pool says so.
    Through a keep-alive proxy: moto answers ``Connection: close``, so the signed-HTTP pool
    (storage/http1) never keeps a connection from it and has none to discard."""
    endpoint, expected = many_objects
    uris = sorted(expected)[:160]
    with FaultProxy(endpoint.endpoint_url) as proxy:
        keep_alive = S3Endpoint(endpoint.name, proxy.endpoint_url, endpoint.access_key, endpoint.secret_key)
        items = threaded_read_run(keep_alive, uris, max_pool=2, workers=2, threads=16, chunk=40)
    got = {uri: md5 for item in items for uri, md5 in zip(item["uris"], item["md5"])}
    assert got == {uri: expected[uri] for uri in uris}  # still correct, just wasteful
    pids = {item["pid"] for item in items}
    warnings_total = sum(max(i["pool_full"] for i in items if i["pid"] == pid) for pid in pids)
    assert warnings_total > 0
    report("concurrency_negative_control", objects=len(uris), workers=2, threads_per_worker=16,
           max_pool_connections=2, pool_full_warnings=warnings_total)
