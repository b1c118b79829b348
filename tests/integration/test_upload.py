"""tools/upload.py and blip3o_storage.transfer.upload against real HTTP S3 servers.

Runs on moto_server always and on Ceph RGW with ``--ceph`` (``s3_bucket``).
The CLI is run as a subprocess exactly as a user runs it; the library tests
count requests with botocore event handlers on the real client.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from blip3o_storage import InvalidPathError, Storage
from blip3o_storage.testing.data import local_files, make_dataset, make_shard_tar
from blip3o_storage.testing.endpoints import S3Endpoint, new_bucket
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.testing.tools import MAKE_DATA_JSON, UPLOAD, UPLOAD_SHARDS, remote, run_cli, summary
from blip3o_storage.transfer.manifest import ENV_DIR
from blip3o_storage.transfer.safe_tar import extract_shard
from blip3o_storage.transfer.upload import list_existing, multipart_etag, plan_upload, upload_all, validate_keys, verify

WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


@pytest.fixture(autouse=True)
def _manifests_in_tmp(tmp_path, monkeypatch):
    """The CLI's upload manifests go to the test's folder (the subprocess inherits it), not ~/.cache."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "upload-manifests"))


def count_requests(storage: Storage, bucket_uri: str) -> Counter:
    """Count S3 operations sent by this process (botocore's before-call event, and the same
    accounting hook on the signed-HTTP path for object GET/PUT; not a mock)."""
    counts: Counter = Counter()

    def hook(model, **_):
        counts[model.name] += 1
    backend = storage.s3_backend(bucket_uri + "/x")
    backend.client.meta.events.register("before-call.s3", hook)
    if backend.http is not None:
        backend.http.listeners.append(lambda operation: counts.update([operation]))
    return counts


# -- CLI: full upload, resume, modes ----------------------------------------
def test_full_upload_is_byte_equal_with_content_types_and_rerun_writes_nothing(tmp_path, target):
    storage, bucket_uri, bucket, base = target
    src = make_dataset(tmp_path)
    expected = local_files(src)

    proc = run_cli(*base, "--prefix", "blip3o", "--workers", "4", str(src))
    assert proc.returncode == 0, proc.stderr
    assert summary(proc) == {"uploaded": len(expected), "mb": pytest.approx(sum(map(len, expected.values())) / 1e6,
                                                                            abs=0.06),
                             "skipped": 0, "failed": 0}
    assert f"verified {len(expected)} ok, 0 missing, 0 mismatched" in proc.stdout
    objects = remote(storage, bucket_uri, "blip3o")
    assert set(objects) == set(expected)  # hidden done-markers are not data: not uploaded
    for key, data in expected.items():
        assert storage.get(f"{bucket_uri}/blip3o/{key}") == data, key
    client = storage.backend_for(bucket_uri + "/x").client
    types = {k: client.head_object(Bucket=bucket, Key=f"blip3o/{k}")["ContentType"]
             for k in ("raw/s1/00000.jpg", "raw/s2/00001.txt", "data.json")}
    assert types == {"raw/s1/00000.jpg": "image/jpeg", "raw/s2/00001.txt": "text/plain; charset=utf-8",
                     "data.json": "application/json"}

    time.sleep(1.1)  # LastModified has 1 s resolution on some servers
    again = run_cli(*base, "--prefix", "blip3o/", str(src))  # trailing '/' means the same prefix
    assert again.returncode == 0, again.stderr
    assert summary(again) == {"uploaded": 0, "mb": 0.0, "skipped": len(expected), "failed": 0}
    after = remote(storage, bucket_uri, "blip3o")
    assert {k: (o.mtime, o.etag) for k, o in after.items()} == {k: (o.mtime, o.etag) for k, o in objects.items()}


def test_rerun_sends_no_write_request_library(tmp_path, s3_bucket):
    storage, bucket_uri = s3_bucket
    bucket = bucket_uri[len("s3://"):]
    src = make_dataset(tmp_path, n=4)
    plan = plan_upload(src, "p")
    backend = storage.backend_for(bucket_uri + "/x")
    counts = count_requests(storage, bucket_uri)

    first = upload_all(plan.items, backend, bucket, prefix="p", workers=4)
    assert first.ok and first.uploaded == len(plan.items) == counts["PutObject"]
    assert counts["ListObjectsV2"] == 1  # one paginated LIST, no per-key HEAD

    counts.clear()
    second = upload_all(plan.items, backend, bucket, prefix="p", workers=4)
    assert (second.uploaded, second.skipped, second.failed) == (0, len(plan.items), [])
    assert sum(counts[op] for op in WRITES) == 0 and counts["HeadObject"] == 0
    assert counts["ListObjectsV2"] == 1

    # A changed file with the same size is re-sent (the ETag differs), and only that one.
    changed = plan.items[1]
    changed.local_path.write_bytes(os.urandom(changed.size))
    counts.clear()
    third = upload_all(plan.items, backend, bucket, prefix="p", workers=4)
    assert (third.uploaded, counts["PutObject"]) == (1, 1)
    assert storage.get(f"{bucket_uri}/{changed.key}") == changed.local_path.read_bytes()
    assert verify(plan.items, backend, bucket, "p").passed


def test_only_referenced_uploads_exactly_data_json_and_its_files(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=3)
    (src / "raw" / "s1" / "orphan.jpg").write_bytes(b"not referenced")
    (src / "notes.txt").write_text("not referenced either")
    entries = json.loads((src / "data.json").read_text())
    entries.append({"image": "s2/ghost.jpg", "annotation": "./s2/00000.txt"})  # one missing, one dup via ./
    (src / "data.json").write_text(json.dumps(entries))

    proc = run_cli(*base, "--only-referenced", str(src))
    assert proc.returncode == 1, proc.stderr  # a referenced file is missing: never silently skipped
    assert "raw/s2/ghost.jpg" in proc.stderr and "missing locally" in proc.stderr
    want = {"data.json"} | {f"raw/{e[k].lstrip('./')}" for e in entries[:-1] for k in ("image", "annotation")}
    assert set(remote(storage, bucket_uri)) == want
    assert summary(proc)["failed"] == 1


def test_multipart_above_threshold_etag_and_resume(tmp_path, target):
    storage, bucket_uri, bucket, base = target
    src = tmp_path / "big"
    src.mkdir()
    blob = os.urandom(12 * 1024 * 1024)
    (src / "shard.tar").write_bytes(blob)
    (src / "small.txt").write_text("small")
    args = [*base, "--multipart-threshold-mb", "5", "--part-size-mb", "5", str(src)]

    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    info = remote(storage, bucket_uri)
    assert info["shard.tar"].etag.endswith("-3")  # 5 + 5 + 2 MiB
    assert info["shard.tar"].etag == multipart_etag(src / "shard.tar", 5 * 1024 * 1024)
    assert "-" not in info["small.txt"].etag
    assert storage.get(f"{bucket_uri}/shard.tar") == blob

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    assert summary(again)["uploaded"] == 0 and summary(again)["skipped"] == 2
    assert remote(storage, bucket_uri)["shard.tar"].mtime == info["shard.tar"].mtime

    # A different part size cannot prove equality from the ETag, so the file is re-sent as 2 parts.
    third = run_cli(*base, "--multipart-threshold-mb", "5", "--part-size-mb", "8", str(src))
    assert third.returncode == 0, third.stderr
    assert summary(third)["uploaded"] == 1
    assert remote(storage, bucket_uri)["shard.tar"].etag == multipart_etag(src / "shard.tar", 8 * 1024 * 1024)


def test_ctrl_c_exits_130_and_rerun_uploads_only_the_rest(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=150, size=200_000, shards=("s1",))  # 300 files + data.json
    total = len(local_files(src))
    proc = subprocess.Popen([sys.executable, UPLOAD, *base, "--workers", "2", str(src)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(remote(storage, bucket_uri)) < 20:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "upload never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    done = len(remote(storage, bucket_uri))
    assert 20 <= done < total

    rerun = run_cli(*base, "--workers", "4", str(src))
    assert rerun.returncode == 0, rerun.stderr
    s = summary(rerun)
    assert s["uploaded"] + s["skipped"] == total and s["uploaded"] > 0 and s["failed"] == 0
    assert s["skipped"] == done  # every object present after Ctrl-C was complete
    assert f"verified {total} ok" in rerun.stdout
    assert run_cli(*base, "--verify-only", str(src)).returncode == 0


def test_verify_only_names_missing_and_modified_keys(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=3)
    assert run_cli(*base, "--prefix", "v", str(src)).returncode == 0
    assert run_cli(*base, "--prefix", "v", "--verify-only", str(src)).returncode == 0

    storage.delete(f"{bucket_uri}/v/raw/s1/00001.jpg")
    same_size = os.urandom(len((src / "raw/s2/00002.jpg").read_bytes()))
    storage.put(f"{bucket_uri}/v/raw/s2/00002.jpg", same_size)
    storage.put(f"{bucket_uri}/v/raw/s1/00000.txt", b"shorter")

    proc = run_cli(*base, "--prefix", "v", "--verify-only", str(src))
    assert proc.returncode == 1
    assert "missing v/raw/s1/00001.jpg" in proc.stderr
    assert "mismatched v/raw/s2/00002.jpg: ETag" in proc.stderr
    assert "mismatched v/raw/s1/00000.txt: size" in proc.stderr
    assert "1 missing, 2 mismatched" in proc.stdout

    fixed = run_cli(*base, "--prefix", "v", str(src))
    assert fixed.returncode == 0 and summary(fixed)["uploaded"] == 3
    assert storage.get(f"{bucket_uri}/v/raw/s2/00002.jpg") == (src / "raw/s2/00002.jpg").read_bytes()


def test_dry_run_writes_nothing(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=2)
    proc = run_cli(*base, "--dry-run", str(src))
    assert proc.returncode == 0, proc.stderr
    assert f"would upload {len(local_files(src))} files" in proc.stdout
    assert remote(storage, bucket_uri) == {}


# -- CLI: refusals -----------------------------------------------------------
def test_bad_key_names_rejected_all_listed(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "ok.txt").write_text("ok")
    (src / "bell\x07.jpg").write_bytes(b"x")
    (src / "d" / "new\nline.txt").write_text("x")
    proc = run_cli(*base, str(src))
    assert proc.returncode == 2
    assert "2 key(s)" in proc.stderr
    assert repr("bell\x07.jpg") in proc.stderr and repr("d/new\nline.txt") in proc.stderr
    assert "ok.txt" not in proc.stderr
    assert remote(storage, bucket_uri) == {}

    for prefix in ("a//b", "/lead", "a/../b", "./a"):
        bad = run_cli(*base, "--prefix", prefix, str(tmp_path / "src"))
        assert bad.returncode == 2 and "--prefix" in bad.stderr, (prefix, bad.stderr)
    assert remote(storage, bucket_uri) == {}


def test_validate_keys_lists_every_bad_key():
    bad = ["a/../b", "./x", "a//b", "/lead", "nul\x00", "tab\tx", "d/", "k" * 1025, "é" * 513]
    with pytest.raises(InvalidPathError) as info:
        validate_keys(["fine/key.jpg", *bad, "also fine (1) + ü.txt"])
    message = str(info.value)
    assert f"{len(bad)} key(s)" in message
    for key in bad:
        assert repr(key) in message
    assert "fine/key.jpg" not in message
    validate_keys(["raw/s1/00000.jpg", "data.json", "a b/c+d%20#.txt", "日本/語.jpg"])  # no error


def test_missing_bucket_needs_create_bucket(tmp_path, s3_endpoint, s3_conf):
    src = make_dataset(tmp_path, n=1)
    name = f"absent-{os.urandom(4).hex()}"
    proc = run_cli("--config", str(s3_conf), "--bucket", name, str(src))
    assert proc.returncode == 2
    assert f"bucket {name!r} does not exist" in proc.stderr and "--create-bucket" in proc.stderr
    created = run_cli("--config", str(s3_conf), "--bucket", name, "--create-bucket", str(src))
    assert created.returncode == 0, created.stderr
    assert summary(created)["uploaded"] == len(local_files(src))


@pytest.mark.parametrize("failure", ["invalid name", "access denied"])
def test_failed_create_bucket_exits_2_in_both_tools(tmp_path, s3_endpoint, request, failure):
    """--create-bucket that the server refuses is a bucket problem: exit 2 from tools/upload.py
    and tools/upload_shards.py alike (nothing was sent), and no bucket appears."""
    src = make_dataset(tmp_path, n=1)
    tar = make_shard_tar(tmp_path / "tars" / "s1.tar", {"00000.jpg": b"jpeg", "00000.txt": b"caption\n"})
    if failure == "invalid name":  # too short for S3 (3-63 characters): CreateBucket says InvalidBucketName
        endpoint, bucket = s3_endpoint, "ab"
    else:  # a signature-checking server and a wrong secret: 403 on HeadBucket
        good = request.getfixturevalue("moto_auth_endpoint") if s3_endpoint.name == "moto_server" else s3_endpoint
        endpoint = S3Endpoint("bad", good.endpoint_url, good.access_key, "WrongSecret" + os.urandom(8).hex())
        bucket = f"denied-{os.urandom(4).hex()}"
    conf = endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    base = ["--config", str(conf), "--bucket", bucket, "--create-bucket"]

    plain = run_cli(*base, str(src))
    shards = run_cli(*base, str(tar), tool=UPLOAD_SHARDS)
    assert (plain.returncode, shards.returncode) == (2, 2), (plain.stderr, shards.stderr)
    for proc in (plain, shards):
        assert "Traceback" not in proc.stderr
        assert ("cannot create bucket" if failure == "invalid name" else "access denied") in proc.stderr
        assert "uploaded" not in proc.stdout  # stopped before any upload
    if failure == "invalid name":
        names = {b["Name"] for b in Storage(s3_endpoint.ceph_config()).s3_backend("s3://x/y")
                 .client.list_buckets()["Buckets"]}
        assert bucket not in names


def test_unpaired_files_are_logged_alike_by_make_data_json_and_upload_shards(tmp_path, target):
    """Both tools report orphans and duplicates with one function: the same lines and counts."""
    _, bucket_uri, _, base = target
    members = {f"{i:03d}.jpg": b"jpeg" for i in range(25)}  # 0-2 paired, the rest orphan images
    members.update({f"{i:03d}.txt": b"caption\n" for i in range(3)})
    members.update({"lonely.txt": b"orphan caption\n", "000.png": b"second image of key 000",
                    "notes.md": b"neither"})
    tar = make_shard_tar(tmp_path / "tars" / "s1.tar", members)
    extract_shard(tar, tmp_path / "raw")

    made = run_cli("--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "data.json"), tool=MAKE_DATA_JSON)
    shards = run_cli(*base, "--prefix", "sh", "--dry-run", str(tar), tool=UPLOAD_SHARDS)
    assert made.returncode == 0 and shards.returncode == 0, (made.stderr, shards.stderr)

    def unpaired(proc: subprocess.CompletedProcess, name: str) -> list:
        lines = re.findall(rf"(WARNING|INFO) {name}: (.*)", proc.stderr)
        return [(level, msg) for level, msg in lines if level == "WARNING" or msg.startswith("pairs: ")]
    lines = unpaired(made, "make_data_json")
    assert lines == unpaired(shards, "upload_shards")
    assert lines == [
        ("WARNING", "22 orphan image(s) without caption: "
                    + ", ".join(f"s1/{i:03d}.jpg" for i in range(3, 23)) + " (+2 more)"),
        ("WARNING", "1 orphan caption(s) without image: s1/lonely.txt"),
        ("WARNING", "1 extra image(s) for an already paired key: s1/000.png"),
        ("INFO", "pairs: 3, orphan images: 22, orphan captions: 1"),
    ]


def test_wrong_secret_fails_without_leaking_it(tmp_path, s3_endpoint, request):
    endpoint = request.getfixturevalue("moto_auth_endpoint") if s3_endpoint.name == "moto_server" else s3_endpoint
    storage, bucket_uri = new_bucket(endpoint)
    src = make_dataset(tmp_path, n=1)
    good = endpoint.write_petreloss_conf(tmp_path / "good.conf")
    assert run_cli("--config", str(good), "--bucket", bucket_uri[5:], "--no-verify", str(src)).returncode == 0

    wrong_secret = "WrongSecret" + os.urandom(8).hex()
    bad = S3Endpoint("bad", endpoint.endpoint_url, endpoint.access_key, wrong_secret)
    conf = bad.write_petreloss_conf(tmp_path / "bad.conf")
    proc = run_cli("--config", str(conf), "--bucket", bucket_uri[5:], "-v", str(src))
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert "access denied" in output
    assert wrong_secret not in output and endpoint.secret_key not in output


def test_plan_content_types_and_missing_references(tmp_path):
    src = make_dataset(tmp_path, n=1, shards=("s1",))
    (src / "raw" / "s1" / "x.PNG").write_bytes(b"png")
    (src / "blob.bin").write_bytes(b"\0")
    plan = plan_upload(src)
    types = {item.key: item.content_type for item in plan.items}
    assert types == {"data.json": "application/json", "raw/s1/00000.jpg": "image/jpeg",
                     "raw/s1/00000.txt": "text/plain; charset=utf-8", "raw/s1/x.PNG": "image/png",
                     "blob.bin": "application/octet-stream"}
    (src / "data.json").write_text(json.dumps([{"image": "s1/00000.jpg", "annotation": "s1/none.txt"},
                                               {"image": "../../etc/passwd"}]))
    ref = plan_upload(src, "pre", src / "data.json")
    assert [i.key for i in ref.items] == ["pre/data.json", "pre/raw/s1/00000.jpg"]
    assert [k for k, _ in ref.failed] == ["pre/raw/s1/none.txt", "../../etc/passwd"]


def test_verify_library_and_list_existing(tmp_path, s3_bucket):
    storage, bucket_uri = s3_bucket
    bucket = bucket_uri[len("s3://"):]
    backend = storage.backend_for(bucket_uri + "/x")
    src = make_dataset(tmp_path, n=2, shards=("s1",))
    plan = plan_upload(src, "q")
    assert upload_all(plan.items, backend, bucket, prefix="q", workers=2).ok
    storage.put(f"{bucket_uri}/other/not-ours.txt", b"outside the prefix")
    existing = list_existing(backend, bucket, "q")
    assert set(existing) == {i.key for i in plan.items}
    assert all(existing[i.key] == (i.size, hashlib.md5(i.local_path.read_bytes()).hexdigest()) for i in plan.items)
    storage.delete(f"{bucket_uri}/{plan.items[0].key}")
    report = verify(plan.items, backend, bucket, "q")
    assert report.missing == [plan.items[0].key] and report.ok == len(plan.items) - 1
