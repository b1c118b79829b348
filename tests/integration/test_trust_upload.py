"""Issue #12 "Trust": tools/upload.py and tools/make_data_json.py under hostile inputs and failing stores.

Real servers over HTTP (moto always, Ceph RGW with ``--ceph`` where parametrised); the
"store is down" tests put tests/fault_proxy.py between the tool and moto and stop it
mid-upload (the tool then sees connection refused, exactly as when the server dies), or
point the tool at a listener that accepts connections and never answers.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blip3o_storage import Storage
from blip3o_storage.testing.data import local_files, make_dataset
from blip3o_storage.testing.endpoints import S3Endpoint
from blip3o_storage.testing.fault_proxy import FaultProxy, FaultRates
from blip3o_storage.testing.paths import REPO_ROOT
from blip3o_storage.testing.tools import MAKE_DATA_JSON, UPLOAD, remote, run_cli, summary
from blip3o_storage.transfer.safe_tar import build_data_json
from blip3o_storage.transfer.tree_walk import walk_tree
from blip3o_storage.transfer.upload import (
    multipart_etag,
    multipart_etags,
    part_size_guesses,
    plan_upload,
    upload_all,
    verify,
)

MiB = 1 << 20


def make_json(raw: Path, out: Path) -> subprocess.CompletedProcess:
    return run_cli("--raw", str(raw), "--out", str(out), tool=MAKE_DATA_JSON)


def unshare_works() -> bool:
    """``unshare -U`` (a user namespace with no uid mapped) makes file permissions apply to root too."""
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode == 0


# -- one tree-walking rule for upload and data.json ----------------------------
def test_dot_entries_are_skipped_by_make_data_json_as_by_upload(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=2, shards=("s1",))
    raw = src / "raw"
    for hidden in ("s1/.cache/k", "s1/.k2", ".trash/s9/k"):
        (raw / hidden).parent.mkdir(parents=True, exist_ok=True)
        (raw / f"{hidden}.jpg").write_bytes(b"jpeg")
        (raw / f"{hidden}.txt").write_text("caption")
    made = make_json(raw, src / "data.json")
    assert made.returncode == 0, made.stderr
    listed = {e["image"] for e in json.loads((src / "data.json").read_text())}
    assert listed == {"s1/00000.jpg", "s1/00001.jpg"}  # nothing from a dot-file or dot-folder
    assert "hidden" in made.stderr  # counted, not silently dropped
    _, report = build_data_json(raw)
    assert report.hidden == [".trash", "s1/.cache", "s1/.k2.jpg", "s1/.k2.txt"]  # not the done-marker

    proc = run_cli(*base, str(src))
    assert proc.returncode == 0, proc.stderr
    assert set(remote(storage, bucket_uri)) == set(local_files(src))
    assert {f"raw/{i}" for i in listed} <= set(remote(storage, bucket_uri))


def test_upload_fails_when_data_json_names_a_file_it_does_not_upload(tmp_path, target):
    """A hand-made (or old) data.json naming a dot-folder file: the upload leaves that file out,
    so it must not say ``verified ... ok`` and exit 0."""
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=1, shards=("s1",))
    (src / "raw" / "s1" / ".cache").mkdir()
    (src / "raw" / "s1" / ".cache" / "h.jpg").write_bytes(b"hidden")
    entries = json.loads((src / "data.json").read_text())
    entries.append({"image": "s1/.cache/h.jpg", "annotation": "s1/00000.txt"})
    entries.append({"image": "s1/gone.jpg", "annotation": "s1/00000.txt"})
    (src / "data.json").write_text(json.dumps(entries))

    proc = run_cli(*base, str(src))
    assert proc.returncode == 1, proc.stderr
    assert "raw/s1/.cache/h.jpg" in proc.stderr and "hidden" in proc.stderr
    assert "raw/s1/gone.jpg" in proc.stderr and "missing locally" in proc.stderr
    assert summary(proc)["failed"] == 2
    assert "raw/s1/.cache/h.jpg" not in remote(storage, bucket_uri)
    check = run_cli(*base, "--verify-only", str(src))
    assert check.returncode == 1 and "raw/s1/.cache/h.jpg" in check.stderr


def test_symlinked_raw_and_shard_folders_are_followed(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path / "a", n=2, shards=("s1", "s2"))
    other_disk = tmp_path / "other-disk"
    other_disk.mkdir()
    shutil.move(src / "raw", other_disk / "raw")
    (src / "raw").symlink_to(other_disk / "raw")  # SRC/raw -> another disk
    shutil.move(other_disk / "raw" / "s2", other_disk / "s2")
    (other_disk / "raw" / "s2").symlink_to(other_disk / "s2")  # raw/s2 -> elsewhere too

    made = make_json(src / "raw", tmp_path / "data.json")
    assert made.returncode == 0, made.stderr
    made_entries = json.loads((tmp_path / "data.json").read_text())
    assert {e["image"] for e in made_entries} == {f"s{s}/{i:05d}.jpg" for s in (1, 2) for i in range(2)}

    proc = run_cli(*base, str(src))
    assert proc.returncode == 0, proc.stderr
    keys = set(remote(storage, bucket_uri))
    assert {"raw/s1/00000.jpg", "raw/s2/00001.txt", "data.json"} <= keys
    assert summary(proc)["uploaded"] == 1 + 2 * 2 * 2


def test_symlink_loop_fails_both_tools_naming_the_link(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=1, shards=("s1",))
    (src / "raw" / "s1" / "up").symlink_to("..")  # raw/s1/up -> raw: endless
    made = make_json(src / "raw", tmp_path / "data.json")
    proc = run_cli(*base, str(src))
    for p in (made, proc):
        assert p.returncode == 2, p.stderr
        assert "raw/s1/up" in p.stderr and "loop" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "data.json").exists()
    assert remote(storage, bucket_uri) == {}


def test_dangling_symlink_is_a_problem_not_a_skip(tmp_path):
    root = tmp_path / "raw"
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "a.jpg").symlink_to(tmp_path / "nowhere.jpg")
    walk = walk_tree(root)
    assert walk.files == [] and [p for p, _ in walk.problems] == [str(root / "s1" / "a.jpg")]
    with pytest.raises(Exception, match="dangling symlink"):
        walk.raise_problems()


@pytest.mark.skipif(not unshare_works(), reason="needs unshare -U (user namespaces)")
def test_unlistable_folder_fails_both_tools(tmp_path, target):
    """Run the tools in a user namespace where root's files are not ours: chmod 000 then stops
    os.scandir for real (plain root ignores it)."""
    storage, bucket_uri, _, base = target
    src = make_dataset(tmp_path, n=1, shards=("s1", "s2"))
    locked = src / "raw" / "s2"
    locked.chmod(0)
    try:
        def tool(*args: str, script: str = UPLOAD) -> subprocess.CompletedProcess:
            return subprocess.run(["unshare", "-U", sys.executable, script, *args], cwd=REPO_ROOT,
                                  capture_output=True, text=True, timeout=120,
                                  env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        made = tool("--raw", str(src / "raw"), "--out", str(tmp_path / "data.json"), script=MAKE_DATA_JSON)
        proc = tool(*base, str(src))
    finally:
        locked.chmod(0o755)
    for p in (made, proc):
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert str(locked) in p.stderr and "Permission denied" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "data.json").exists()
    assert remote(storage, bucket_uri) == {}


# -- a file rewritten during its upload --------------------------------------------
def _rewrite_after_part(backend, path: Path, part: int, times: int) -> list:
    """Once UploadPart number ``part`` of ``path``'s upload has answered (i.e. just before part
    ``part + 1`` is built), overwrite the file with new bytes of the same size, in ``times``
    uploads in a row. A botocore event on the real client: the deterministic stand-in for another
    process writing the file mid-upload."""
    rewrites: list = []

    def hook(params, **_):
        if params.get("PartNumber") == part + 1 and len(rewrites) < times:
            data = os.urandom(path.stat().st_size)
            path.write_bytes(data)
            rewrites.append(data)
    backend.client.meta.events.register("before-parameter-build.s3.UploadPart", hook)
    return rewrites


@pytest.mark.parametrize("times", [1, 9])
def test_file_rewritten_mid_multipart_is_reuploaded_or_fails(tmp_path, s3_bucket, times):
    storage, bucket_uri = s3_bucket
    bucket = bucket_uri[len("s3://"):]
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.tar").write_bytes(os.urandom(11 * MiB))
    backend = storage.backend_for(bucket_uri + "/x")
    plan = plan_upload(src)
    rewrites = _rewrite_after_part(backend, src / "big.tar", part=1, times=times)
    report = upload_all(plan.items, backend, bucket, workers=1, multipart_threshold=5 * MiB, part_size=5 * MiB)
    assert rewrites
    on_disk = (src / "big.tar").read_bytes()
    check = verify(plan.items, backend, bucket, part_size=5 * MiB, known_etags=report.etags,
                   known_stats=report.stats)
    if times == 1:  # changed once: sent again, and the object is the file as it is now
        assert report.ok, report.failed
        assert storage.get(f"{bucket_uri}/big.tar") == on_disk
        assert check.passed
    else:  # still changing: a failure naming the file, and no object whose bytes never existed
        assert [k for k, _ in report.failed] == ["big.tar"]
        assert "changed while" in report.failed[0][1]
        assert not check.passed
        assert "big.tar" not in remote(storage, bucket_uri)


# -- bucket names -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["bad name", "a:b", "x" * 300])
def test_invalid_bucket_name_exits_2_naming_the_rule(tmp_path, s3_endpoint, s3_conf, name):
    src = make_dataset(tmp_path, n=1, shards=("s1",))
    proc = run_cli("--config", str(s3_conf), "--bucket", name, str(src))
    assert proc.returncode == 2, proc.stderr
    assert repr(name) in proc.stderr and "bucket name" in proc.stderr and "letters" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_bucket_with_a_name_s3_cannot_create_says_why(tmp_path, s3_endpoint, s3_conf):
    src = make_dataset(tmp_path, n=1, shards=("s1",))
    proc = run_cli("--config", str(s3_conf), "--bucket", "ab", str(src))
    assert proc.returncode == 2
    assert "'ab'" in proc.stderr and "3-63" in proc.stderr


# -- --verify-only without the upload's --part-size-mb ----------------------------
def test_verify_only_derives_the_part_size(tmp_path, target):
    storage, bucket_uri, _, base = target
    src = tmp_path / "big"
    src.mkdir()
    (src / "shard.tar").write_bytes(os.urandom(12 * MiB))
    up = run_cli(*base, "--multipart-threshold-mb", "5", "--part-size-mb", "7", str(src))
    assert up.returncode == 0, up.stderr
    assert remote(storage, bucket_uri)["shard.tar"].etag == multipart_etag(src / "shard.tar", 7 * MiB)  # 2 parts
    for part_args in ([], ["--part-size-mb", "8"], ["--part-size-mb", "5"]):  # 1 part, 2 parts of 8, 3 parts
        proc = run_cli(*base, "--verify-only", *part_args, str(src))
        assert proc.returncode == 0, (part_args, proc.stderr)
        assert "verified 1 ok, 0 missing, 0 mismatched" in proc.stdout
    # RGW 16.2 ignores HEAD ?partNumber=1, so the part size is found among the whole-MiB ones
    # giving that part count, hashed in one read; the same ETags as one read per part size.
    sizes = part_size_guesses(12 * MiB, 2)
    assert sizes == [m * MiB for m in range(6, 12)]
    assert multipart_etags(src / "shard.tar", sizes) == {p: multipart_etag(src / "shard.tar", p) for p in sizes}
    (src / "shard.tar").write_bytes(os.urandom(12 * MiB))  # a real difference is still found
    proc = run_cli(*base, "--verify-only", str(src))
    assert proc.returncode == 1 and "mismatched shard.tar" in proc.stderr


# -- a store that goes down ----------------------------------------------------------
def _conf(tmp_path: Path, endpoint: S3Endpoint, url: str, name: str, **extra: object) -> Path:
    path = tmp_path / name
    lines = [f"[DEFAULT]\ndefault_cluster = c\n\n[c]\naccess_key = {endpoint.access_key}",
             f"secret_key = {endpoint.secret_key}", f"host_base = {url}"]
    lines += [f"{k} = {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_store_dying_mid_upload_stops_early_once_and_rerun_resumes(tmp_path, moto_endpoint):
    storage = Storage(moto_endpoint.ceph_config())
    bucket = f"down-{os.urandom(4).hex()}"
    storage.s3_backend(f"s3://{bucket}/x").ensure_bucket(bucket)
    src = make_dataset(tmp_path, n=200, size=20_000, shards=("s1",))  # 400 files + data.json
    total = len(local_files(src))
    proxy = FaultProxy(moto_endpoint.endpoint_url).start()
    url = proxy.endpoint_url
    conf = _conf(tmp_path, moto_endpoint, url, "proxy.conf", connect_timeout=2, read_timeout=5)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, UPLOAD, "--config", str(conf), "--bucket", bucket, "--workers", "4",
                             str(src)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(remote(storage, f"s3://{bucket}")) < 20:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "upload never started"
            time.sleep(0.05)
        proxy.stop()  # the server "dies": connection refused from now on
        died = time.monotonic()
        out, err = proc.communicate(timeout=120)
    finally:
        proxy.stop()
        if proc.poll() is None:
            proc.kill()
    gave_up = time.monotonic() - died
    assert proc.returncode == 1, err
    assert err.count("unreachable") == 1, err  # said once
    assert url in err and moto_endpoint.secret_key not in err + out
    assert len(re.findall(r"ERROR upload: failed ", err)) <= 16  # not one line per remaining file
    assert gave_up < 60, f"took {gave_up:.1f} s to give up"
    assert "verified" not in out
    done = len(remote(storage, f"s3://{bucket}"))
    assert 20 <= done < total
    print(f"gave up {gave_up:.1f} s after the store died ({time.monotonic() - started:.1f} s in all)")

    rerun = run_cli("--config", str(moto_endpoint.write_petreloss_conf(tmp_path / "direct.conf")),
                    "--bucket", bucket, "--workers", "4", str(src))
    assert rerun.returncode == 0, rerun.stderr
    s = summary(rerun)
    assert s["skipped"] == done and s["uploaded"] == total - done
    assert f"verified {total} ok" in rerun.stdout


@pytest.fixture
def silent_listener():
    """A TCP listener that accepts connections and never answers (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    server.close()


def test_store_that_never_answers_fails_in_bounded_time_naming_the_endpoint(tmp_path, moto_endpoint,
                                                                           silent_listener):
    src = make_dataset(tmp_path, n=2, shards=("s1",))
    conf = _conf(tmp_path, moto_endpoint, silent_listener, "hung.conf", connect_timeout=1, read_timeout=1,
                 max_attempts=2)
    started = time.monotonic()
    proc = run_cli("--config", str(conf), "--bucket", "hung", str(src), timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert silent_listener in proc.stderr and "unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr and moto_endpoint.secret_key not in proc.stderr
    assert took < 30, took
    print(f"gave up after {took:.1f} s (read_timeout=1, max_attempts=2)")


def test_timeouts_count_as_store_down_like_refused_connections(tmp_path, moto_endpoint):
    """A store that stops answering mid-run (every response held back): each file fails by read
    timeout, and after a round of them the run stops instead of trying every remaining file."""
    storage = Storage(moto_endpoint.ceph_config())
    bucket = f"stall-{os.urandom(4).hex()}"
    storage.s3_backend(f"s3://{bucket}/x").ensure_bucket(bucket)
    src = make_dataset(tmp_path, n=30, size=1000, shards=("s1",))
    plan = plan_upload(src)
    with FaultProxy(moto_endpoint.endpoint_url, rates=FaultRates(stall=1.0, stall_seconds=5)) as proxy:
        url = proxy.endpoint_url
        slow = Storage(S3Endpoint("stalled", url, moto_endpoint.access_key,
                                  moto_endpoint.secret_key).ceph_config(read_timeout=0.5, connect_timeout=0.5,
                                                                        max_attempts=1))
        backend = slow.s3_backend(f"s3://{bucket}/x")
        started = time.monotonic()
        report = upload_all(plan.items, backend, bucket, workers=2, existing={})
        took = time.monotonic() - started
    assert report.store_down and "unreachable" in report.store_down and url in report.store_down
    assert 8 <= len(report.unreachable) == len(report.failed) <= 8 + 2  # one round, plus what was in flight
    assert report.not_attempted == len(plan.items) - len(report.failed) - report.uploaded > 0
    assert not report.ok
    assert took < 20, took
