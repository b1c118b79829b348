"""tools/upload.py's local upload manifest (issue #16) and its streamed LIST (issue #14), on moto and,
with ``--ceph``, the real RGW: a re-run trusts the manifest only for files whose size, mtime, ctime
and inode are unchanged, ``--checksum`` ignores it, a damaged one is ignored with a warning, and
the store is still listed (an object deleted there is sent again whatever the manifest says)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from blip3o_storage.testing.data import local_files, make_dataset, many_small_files
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.testing.tools import remote, run_cli, summary
from blip3o_storage.transfer.manifest import ENV_DIR, UploadManifest
from blip3o_storage.transfer.upload import plan_upload, upload_all


@pytest.fixture(autouse=True)
def manifest_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Manifests in the test's folder (the CLI subprocess inherits the variable), not in ~/.cache."""
    folder = tmp_path / "manifests"
    monkeypatch.setenv(ENV_DIR, str(folder))
    return folder


def _manifest_file(folder: Path) -> Path:
    files = [p for p in folder.iterdir() if p.suffix == ".tsv"]
    assert len(files) == 1, files
    return files[0]


def test_same_size_rewrite_with_restored_mtime_is_uploaded_again(tmp_path, target, manifest_dir):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=3)
    first = run_cli(*base, "--prefix", "m", str(src))
    assert first.returncode == 0, first.stderr
    manifest = _manifest_file(manifest_dir).read_text(encoding="utf-8")
    assert "raw/s1/00000.jpg\t3000\t" in manifest  # relpath, size, ... recorded
    assert "secret" not in manifest.lower() and "access" not in manifest.lower()

    # Same size, same mtime (restored as rsync -t would): only ctime (and here the bytes) differ.
    path = src / "raw" / "s1" / "00000.jpg"
    st = path.stat()
    time.sleep(0.05)  # ctime moves on
    path.write_bytes(os.urandom(st.st_size))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    again = run_cli(*base, "--prefix", "m", str(src))
    assert again.returncode == 0, again.stderr
    total = len(local_files(src))
    assert summary(again) == {"uploaded": 1, "mb": pytest.approx(0.0, abs=0.06), "skipped": total - 1,
                              "failed": 0}
    assert storage.get(f"{bucket_uri}/m/raw/s1/00000.jpg") == path.read_bytes()
    assert f"verified {total} ok, 0 missing, 0 mismatched" in again.stdout


def test_manifest_is_trusted_for_unchanged_files_and_checksum_ignores_it(tmp_path, target, manifest_dir):
    """A manifest that says an unchanged file has another MD5 makes the re-run send it (the file is
    not read: the manifest decides); ``--checksum`` reads every file and sends nothing."""
    _, _, _, base = target
    src = make_dataset(tmp_path, n=2)
    assert run_cli(*base, "--prefix", "c", str(src)).returncode == 0
    path = _manifest_file(manifest_dir)
    header, *rest = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines = rest[:-1]  # the footer is rewritten by the writer below
    manifest = UploadManifest(path, json.loads(header.split("\t", 1)[1]))
    writer = manifest.writer()
    lied = 0
    for line in lines:
        rel, size, mtime, ctime, ino, etag = line.rstrip("\n").split("\t")
        if rel.endswith(".jpg"):
            etag, lied = "0" * 32, lied + 1
        writer.add(rel, (int(size), int(mtime), int(ctime), int(ino)), etag)
    writer.commit()

    total = len(local_files(src))
    checked = run_cli(*base, "--prefix", "c", "--verify-only", str(src))  # the manifest decides here too
    assert checked.returncode == 1 and f"verified {total - lied} ok, 0 missing, {lied} mismatched" in checked.stdout
    hashed = run_cli(*base, "--prefix", "c", "--verify-only", "--checksum", str(src))
    assert hashed.returncode == 0 and f"verified {total} ok, 0 missing, 0 mismatched" in hashed.stdout

    trusted = run_cli(*base, "--prefix", "c", str(src))
    assert trusted.returncode == 0, trusted.stderr
    assert summary(trusted)["uploaded"] == lied and "damaged" not in trusted.stderr

    assert run_cli(*base, "--prefix", "c", str(src)).stdout.count("uploaded 0 files") == 1  # manifest fixed
    rehashed = run_cli(*base, "--prefix", "c", "--checksum", str(src))
    assert rehashed.returncode == 0, rehashed.stderr
    assert summary(rehashed) == {"uploaded": 0, "mb": 0.0, "skipped": len(local_files(src)), "failed": 0}


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "empty"])
def test_damaged_manifest_is_ignored_with_a_warning(tmp_path, target, manifest_dir, damage):
    _, _, _, base = target
    src = make_dataset(tmp_path, n=2)
    assert run_cli(*base, "--prefix", "d", str(src)).returncode == 0
    path = _manifest_file(manifest_dir)
    data = bytearray(path.read_bytes())
    if damage == "flip a byte":
        at = data.index(b"\t3000\t") + 2  # a size digit: the entry would still parse
        data[at] = ord("9") if data[at] != ord("9") else ord("8")
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    again = run_cli(*base, "--prefix", "d", str(src))
    assert again.returncode == 0, again.stderr
    assert summary(again) == {"uploaded": 0, "mb": 0.0, "skipped": len(local_files(src)), "failed": 0}
    assert "upload manifest" in again.stderr and "damaged" in again.stderr
    assert "1 damaged upload manifest ignored" in again.stderr
    fixed = UploadManifest(path, json.loads(path.read_text(encoding="utf-8").split("\n", 1)[0].split("\t", 1)[1]))
    assert len(list(fixed.entries())) == len(local_files(src)) and fixed.corrupt == 0  # rewritten whole


def test_object_deleted_on_the_store_is_uploaded_again(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=2)
    assert run_cli(*base, "--prefix", "x", str(src)).returncode == 0
    gone = "raw/s2/00001.txt"
    storage.delete(f"{bucket_uri}/x/{gone}")
    assert gone not in remote(storage, bucket_uri, "x")

    again = run_cli(*base, "--prefix", "x", str(src))
    assert again.returncode == 0, again.stderr
    assert summary(again)["uploaded"] == 1
    assert storage.get(f"{bucket_uri}/x/{gone}") == (src / gone).read_bytes()
    total = len(local_files(src))
    assert f"verified {total} ok, 0 missing, 0 mismatched" in again.stdout


def test_verify_only_streams_and_reports_missing(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=2)
    assert run_cli(*base, "--prefix", "v", str(src)).returncode == 0
    storage.delete(f"{bucket_uri}/v/raw/s1/00000.jpg")
    check = run_cli(*base, "--prefix", "v", "--verify-only", str(src))
    assert check.returncode == 1
    assert f"verified {len(local_files(src)) - 1} ok, 1 missing, 0 mismatched" in check.stdout


# -- memory ---------------------------------------------------------------------------------------
N_SMALL, N_LARGE = 2_000, 20_000

#: A no-op re-run (every key listed, every file in the manifest) measured in a fresh interpreter
#: (threads of other tests allocate under tracemalloc in the suite's process). The listing is handed
#: in as a stream (what open_listing yields), so no server has to hold 20,000 objects; the plan is
#: made before tracing starts: what is measured is what the upload and verification add.
_NOOP_PEAK = """
import hashlib, json, sys, tracemalloc
from pathlib import Path
from blip3o_storage import Storage
from blip3o_storage.transfer.manifest import UploadManifest
from blip3o_storage.transfer.upload import plan_upload, upload_all, verify
src, manifests, endpoint = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
plan = plan_upload(src, "pre")
listed = [(i.key, i.size, hashlib.md5(i.local_path.read_bytes()).hexdigest()) for i in plan.items]
backend = Storage({"endpoint_url": endpoint, "access_key": "k", "secret_key": "s"}).s3_backend("s3://b/x")
manifest = UploadManifest.for_target(endpoint, "b", "pre/", src, manifests)
first = upload_all(plan.items, backend, "b", prefix="pre", workers=4, existing=iter(listed), manifest=manifest,
                   keep_etags=False)
tracemalloc.start()
again = upload_all(plan.items, backend, "b", prefix="pre", workers=4, existing=iter(listed), manifest=manifest,
                   keep_etags=False)
check = verify(plan.items, backend, "b", "pre", workers=4, remote=iter(listed), manifest=manifest)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps([first.skipped, again.skipped, first.manifest_entries, check.ok, peak]))
"""


def test_noop_rerun_memory_does_not_grow_with_the_file_count(tmp_path, moto_endpoint: S3Endpoint) -> None:
    peaks = {}
    for n in (N_SMALL, N_LARGE):
        src = many_small_files(tmp_path / f"src{n}", n)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        out = subprocess.run([sys.executable, "-c", _NOOP_PEAK, str(src), str(tmp_path / f"m{n}"),
                              moto_endpoint.endpoint_url], check=True, capture_output=True, text=True, env=env,
                             timeout=600).stdout.split("\n")
        first, again, recorded, ok, peak = json.loads([line for line in out if line][-1])
        assert (first, again, recorded, ok) == (n, n, n, n)
        peaks[n] = peak
    # Bounded by the windows (futures, read-ahead pages, results waiting for the manifest), not by
    # the file count: a dict of the listing alone is ~250 B a key (5 MB at 20,000), the former
    # report.etags + report.stats ~200 B a file.
    grow = (peaks[N_LARGE] - peaks[N_SMALL]) / (N_LARGE - N_SMALL)
    assert grow < 20, f"no-op re-run peak grew {grow:.0f} B a file: {peaks}"
    assert peaks[N_LARGE] < 3 << 20, peaks


def test_plan_is_in_key_order_and_listing_is_merged(tmp_path, s3_bucket) -> None:
    """The walk yields keys in LIST order (a folder ``d`` sorts as ``d/``: after ``d!`` and ``d.txt``,
    before ``d0``), so the merge-join finds every key the store has."""
    storage, bucket_uri = s3_bucket
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for name in ("d!", "d.txt", "d0", "d/x", "d/y!", "é", "z"):
        (src / name).write_bytes(name.encode())
    plan = plan_upload(src, "k")
    keys = [item.key for item in plan.items]
    assert keys == sorted(keys) == ["k/d!", "k/d.txt", "k/d/x", "k/d/y!", "k/d0", "k/z", "k/é"]
    for item in plan.items:
        storage.put(f"{bucket_uri}/{item.key}", item.local_path.read_bytes())
    backend = storage.s3_backend(bucket_uri + "/x")
    report = upload_all(plan.items, backend, bucket_uri[5:], prefix="k", workers=2)
    assert (report.uploaded, report.skipped) == (0, len(keys))


def test_parallel_list_by_folder_finds_every_key(tmp_path, s3_bucket, monkeypatch) -> None:
    """Above one LIST page, a plan spanning several folders is listed per folder (here 4 LISTs:
    the prefix's own files, raw/'s own files, raw/a/ and raw/b/), and the re-run finds every key."""
    storage, bucket_uri = s3_bucket
    src = tmp_path / "src"
    for folder, n in (("raw/a", 700), ("raw/b", 400)):
        (src / folder).mkdir(parents=True)
        for i in range(n):
            (src / folder / f"{i:05d}.txt").write_bytes(b"%s %d" % (folder.encode(), i))
    (src / "raw" / "top.txt").write_bytes(b"top")
    (src / "data.json").write_bytes(b"[]")
    plan = plan_upload(src, "par")
    bucket = bucket_uri[len("s3://"):]
    backend = storage.s3_backend(bucket_uri + "/x")
    assert upload_all(plan.items, backend, bucket, prefix="par", workers=8).uploaded == 1102
    lists: list = []
    http = backend.http
    assert http is not None  # LIST goes over the signed-HTTP path: record its calls (a spy, calling through)
    real_list = http.list_objects_v2

    def recorded(bucket: str, prefix: str = "", **options: Any) -> Any:
        lists.append((prefix, options.get("delimiter")))
        return real_list(bucket, prefix, **options)
    monkeypatch.setattr(http, "list_objects_v2", recorded)
    again = upload_all(plan.items, backend, bucket, prefix="par", workers=8)
    assert (again.uploaded, again.skipped, again.failed) == (0, 1102, [])
    assert sorted(lists) == [("par/", "/"), ("par/raw/", "/"), ("par/raw/a/", None), ("par/raw/b/", None)]
    storage.delete(f"{bucket_uri}/par/raw/b/00399.txt")  # the last key of a folder
    storage.delete(f"{bucket_uri}/par/raw/top.txt")
    third = upload_all(plan.items, backend, bucket, prefix="par", workers=8)
    assert (third.uploaded, third.skipped) == (2, 1100)
