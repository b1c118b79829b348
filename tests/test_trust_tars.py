"""Hostile and damaged tar shards (issue #12, "Trust"): extraction and shard mode alike.

Python's ``tarfile`` stops *silently* at a header it cannot read (bad
checksum, cut short, missing) and yields the members it had, so a damaged
shard used to extract or index "fine" with members missing. Every tar here is
built with ``tarfile`` and then damaged byte-exactly; nothing of ours is mocked.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

from blip3o_storage.errors import CorruptDataError  # noqa: E402
from blip3o_storage.transfer.safe_tar import MARKER_NAME, extract_shard  # noqa: E402
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.transfer.shard_indexing import build_shard_index, data_json_from_index  # noqa: E402
from blip3o_storage.reading.sources import ShardSource  # noqa: E402

from blip3o_storage.cli import upload_shards  # noqa: E402

BLOCK = 512
A, B, C = os.urandom(3000), os.urandom(5000), b"a caption\n" * 70


def _tar_bytes(members: List[Tuple[str, bytes]], pax: Dict[str, Dict[str, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            info.pax_headers = dict((pax or {}).get(name, {}))
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD = [("a.jpg", A), ("b.jpg", B), ("c.txt", C)]


def _headers(blob: bytes) -> Dict[str, Tuple[int, int]]:
    """member name -> (offset of its first header, offset of its data)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf}


def _overwrite(blob: bytes, at: int, data: bytes) -> bytes:
    out = bytearray(blob)
    out[at:at + len(data)] = data
    return bytes(out)


def _past_eof(blob: bytes) -> bytes:
    """c.txt's header claims 1 MB of data in a 20 kB file."""
    info = tarfile.TarInfo("c.txt")
    info.size, info.mtime = 1_000_000, 1_700_000_000
    return _overwrite(blob, _headers(blob)["c.txt"][0], info.tobuf(tarfile.USTAR_FORMAT))


#: case -> (make the damaged tar bytes from the good ones, the byte offset the error must name)
Damage = Callable[[bytes], bytes]
CASES: Dict[str, Tuple[Damage, Callable[[Dict[str, Tuple[int, int]]], int]]] = {
    # cut inside b.jpg's data: the member runs past the end of the file
    "cut_mid_data": (lambda g: g[:_headers(g)["b.jpg"][1] + 100], lambda h: h["b.jpg"][0]),
    # cut inside the last member's data
    "cut_mid_last_data": (lambda g: g[:_headers(g)["c.txt"][1] + 100], lambda h: h["c.txt"][0]),
    # cut inside b.jpg's (PAX) header
    "cut_mid_header": (lambda g: g[:_headers(g)["b.jpg"][0] + 200], lambda h: h["b.jpg"][0]),
    # cut exactly before c.txt's header: no end-of-archive marker
    "cut_at_member_boundary": (lambda g: g[:_headers(g)["c.txt"][0]], lambda h: h["c.txt"][0]),
    # garbage over b.jpg's header: checksum failure
    "garbage_over_header": (lambda g: _overwrite(g, _headers(g)["b.jpg"][0], os.urandom(BLOCK)),
                            lambda h: h["b.jpg"][0]),
    # b.jpg's header zeroed: looks like the end of the archive, with members after it
    "zeroed_header": (lambda g: _overwrite(g, _headers(g)["b.jpg"][0], bytes(BLOCK)), lambda h: h["b.jpg"][0]),
    # c.txt's size runs past the end of the file
    "size_past_eof": (_past_eof, lambda h: h["c.txt"][0]),
}


@dataclass
class Damaged:
    case: str
    tar: Path
    offset: int  # the byte offset the error must name


def _pax_negative(tmp: Path) -> Damaged:
    blob = _tar_bytes(GOOD, pax={"b.jpg": {"size": "-1"}})
    tar = tmp / "pax_negative_size.tar"
    tar.write_bytes(blob)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:  # tarfile lists b.jpg with size -1, then stops
        offset = next(m.offset for m in tf if m.name == "b.jpg")
    return Damaged("pax_negative_size", tar, offset)


def make_damaged(tmp: Path, case: str) -> Damaged:
    tmp.mkdir(parents=True, exist_ok=True)
    if case == "pax_negative_size":
        return _pax_negative(tmp)
    good = _tar_bytes(GOOD)
    damage, where = CASES[case]
    tar = tmp / f"{case}.tar"
    tar.write_bytes(damage(good))
    return Damaged(case, tar, where(_headers(good)))


ALL_CASES = sorted(CASES) + ["pax_negative_size"]


def _assert_names_tar_and_offset(msg: str, d: Damaged) -> None:
    assert str(d.tar) in msg, msg
    assert f"byte {d.offset}" in msg, msg
    assert "re-download" in msg, msg


# -- damaged tars: extraction ------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_damaged_tar_is_not_extracted(tmp_path: Path, case: str) -> None:
    d = make_damaged(tmp_path / "src", case)
    dest = tmp_path / "raw"
    with pytest.raises(CorruptDataError) as ei:
        extract_shard(d.tar, dest)
    _assert_names_tar_and_offset(str(ei.value), d)
    assert not (dest / d.tar.stem).exists()  # nothing marked done, nothing half-extracted
    assert not dest.exists() or os.listdir(dest) == []


@pytest.mark.parametrize("case", ["garbage_over_header", "cut_at_member_boundary"])
def test_damaged_tar_with_overwrite_keeps_the_previous_copy(tmp_path: Path, case: str) -> None:
    d = make_damaged(tmp_path / "src", case)
    dest = tmp_path / "raw"
    good = tmp_path / "good" / d.tar.name
    good.parent.mkdir()
    good.write_bytes(_tar_bytes(GOOD))
    extract_shard(good, dest)
    with pytest.raises(CorruptDataError):
        extract_shard(d.tar, dest, overwrite=True)
    assert sorted(os.listdir(dest / d.tar.stem)) == sorted([MARKER_NAME, "a.jpg", "b.jpg", "c.txt"])


# -- damaged tars: shard index ---------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_damaged_tar_is_not_indexed(tmp_path: Path, case: str) -> None:
    d = make_damaged(tmp_path / "src", case)
    with pytest.raises(CorruptDataError) as ei:
        build_shard_index(d.tar)
    _assert_names_tar_and_offset(str(ei.value), d)


def test_intact_tars_with_a_lone_zero_block_or_extra_padding_are_accepted(tmp_path: Path) -> None:
    """What real writers produce must still pass: one zero block only, or padding beyond the record."""
    good = _tar_bytes(GOOD)
    end = _headers(good)["c.txt"][1] + 1024  # c.txt's data (700 bytes) padded to 1024
    for name, blob in {"lone.tar": good[:end + BLOCK], "padded.tar": good + bytes(4 * BLOCK),
                       "record.tar": good}.items():
        tar = tmp_path / "src" / name
        tar.parent.mkdir(exist_ok=True)
        tar.write_bytes(blob)
        assert sorted(build_shard_index(tar)["members"]) == ["a.jpg", "b.jpg", "c.txt"]
        res = extract_shard(tar, tmp_path / "raw")
        assert res.files == 3 and (tmp_path / "raw" / tar.stem / "c.txt").read_bytes() == C


# -- damaged tars: the CLIs -------------------------------------------------------------
def _run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """The tool as a user runs it, importing this checkout's package (not an installed copy)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, f"tools/{script}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_extract_fails_on_each_damaged_tar_and_finishes_the_good_one(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    damaged = [make_damaged(src, case) for case in ALL_CASES]
    (src / "good.tar").write_bytes(_tar_bytes(GOOD))

    r = _run_tool("extract.py", "--src", str(src), "--dest", str(dest), "--workers", "2")

    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert f"1 shard(s) extracted, 0 skipped as done, {len(damaged)} failed" in r.stderr
    for d in damaged:
        line = next((ln for ln in r.stderr.splitlines() if "FAILED" in ln and str(d.tar) in ln), "")
        _assert_names_tar_and_offset(line, d)
        assert not (dest / d.tar.stem).exists()
    assert (dest / "good" / MARKER_NAME).is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["good"]  # no temp dirs left


@pytest.mark.parametrize("case", ALL_CASES)
def test_cli_upload_shards_refuses_a_damaged_tar_and_sends_nothing(tmp_path: Path, case: str, s3_bucket,
                                                                   s3_endpoint, caplog: pytest.LogCaptureFixture
                                                                   ) -> None:
    storage, bucket = s3_bucket
    d = make_damaged(tmp_path / "src", case)
    good = tmp_path / "src" / "good.tar"
    good.write_bytes(_tar_bytes(GOOD))
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    with caplog.at_level(logging.ERROR):
        status = upload_shards.main(["--config", str(conf), "--bucket", bucket[len("s3://"):], "--prefix", "p",
                                     str(tmp_path / "src")])
    assert status == 2  # the tool's scheme: a hostile/corrupt tar is a bad input, like a bad option
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(d.tar) in m and f"byte {d.offset}" in m for m in errors), errors
    assert list(storage.list(f"{bucket}/p/")) == []  # no index missing members, and no tars either


# -- repeated member names ----------------------------------------------------------------
DUP = [("k.jpg", b"first copy"), ("k.txt", b"a caption"), ("z.jpg", b"z image"), ("z.txt", b"z caption"),
       ("k.jpg", b"second copy, the one tar -x leaves")]


def test_repeated_member_extracts_the_last_copy_with_a_warning_and_a_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tar = tmp_path / "src" / "dup.tar"
    tar.parent.mkdir()
    tar.write_bytes(_tar_bytes(DUP))
    with caplog.at_level(logging.WARNING):
        res = extract_shard(tar, tmp_path / "raw")
    assert (tmp_path / "raw" / "dup" / "k.jpg").read_bytes() == DUP[-1][1]
    assert res.duplicates == ("k.jpg",)
    assert res.files == 4 and res.bytes == sum(len(d) for _, d in DUP[1:])  # the files on disk
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tar) in m and "'k.jpg'" in m and "last copy" in m for m in warned), warned
    marker = json.loads((tmp_path / "raw" / "dup" / MARKER_NAME).read_text())
    assert marker["duplicates"] == ["k.jpg"]


def test_repeated_member_names_are_compared_normalised(tmp_path: Path) -> None:
    """'./k.jpg' and 'k.jpg' are one file on disk (and one index key), so one is a repeat of the other."""
    tar = tmp_path / "src" / "dot.tar"
    tar.parent.mkdir()
    tar.write_bytes(_tar_bytes([("./k.jpg", b"one"), ("k.jpg", b"two"), ("k.txt", b"t")]))
    res = extract_shard(tar, tmp_path / "raw")
    assert res.duplicates == ("k.jpg",) and res.files == 2
    assert (tmp_path / "raw" / "dot" / "k.jpg").read_bytes() == b"two"
    entry = build_shard_index(tar)
    assert entry["duplicates"] == ["k.jpg"] and sorted(entry["members"]) == ["k.jpg", "k.txt"]


def test_cli_extract_counts_repeated_members(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    src.mkdir()
    (src / "dup.tar").write_bytes(_tar_bytes(DUP))
    r = _run_tool("extract.py", "--src", str(src), "--dest", str(dest))
    assert r.returncode == 0, r.stderr
    assert "1 repeated member name(s)" in r.stderr
    assert (dest / "dup" / "k.jpg").read_bytes() == DUP[-1][1]


def test_repeated_member_shard_mode_reads_the_same_copy_as_extraction(
        tmp_path: Path, s3_bucket, s3_endpoint, caplog: pytest.LogCaptureFixture) -> None:
    storage, bucket = s3_bucket
    tar = tmp_path / "src" / "dup.tar"
    tar.parent.mkdir()
    tar.write_bytes(_tar_bytes(DUP))
    extracted = extract_shard(tar, tmp_path / "raw")

    entry = build_shard_index(tar)
    assert entry["duplicates"] == list(extracted.duplicates) == ["k.jpg"]
    conf = s3_endpoint.write_petreloss_conf(tmp_path / "petreloss.conf")
    with caplog.at_level(logging.WARNING):
        assert upload_shards.main(["--config", str(conf), "--bucket", bucket[len("s3://"):], "--prefix", "p",
                                   str(tar)]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 repeated member name(s)" in m for m in messages), messages
    assert any(str(tar) in m and "'k.jpg'" in m for m in messages), messages

    index = ShardIndex.load(storage, f"{bucket}/p/index.json")
    source = ShardSource(index)
    for rel in ("dup/k.jpg", "dup/k.txt", "dup/z.jpg"):
        got = source.read(storage, source.locate(f"{bucket}/p", rel))
        assert got == (tmp_path / "raw" / rel).read_bytes()
    assert source.read(storage, source.locate(f"{bucket}/p", "dup/k.jpg")) == DUP[-1][1]
    entries, _ = data_json_from_index(json.loads(storage.get(f"{bucket}/p/index.json")))
    assert {"image": "dup/k.jpg", "annotation": "dup/k.txt"} in entries


# -- the shard index itself as hostile input ----------------------------------------------
def test_shard_index_nested_too_deeply_is_a_clear_error_naming_the_index(tmp_path: Path) -> None:
    from blip3o_storage import Storage

    index = tmp_path / "index.json"
    index.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptDataError, match=r"index\.json.*nested too deeply"):
        ShardIndex.load(Storage(), str(index))


def test_shard_index_in_a_missing_bucket_names_the_bucket(s3_endpoint) -> None:
    from blip3o_storage import Storage
    from blip3o_storage.errors import BucketNotFoundError

    storage = Storage(s3_endpoint.ceph_config())
    with pytest.raises(BucketNotFoundError, match=r"bucket 'no-such-bucket-b7e1' does not exist.*shard_index="):
        ShardIndex.load(storage, "s3://no-such-bucket-b7e1/shards/index.json")
