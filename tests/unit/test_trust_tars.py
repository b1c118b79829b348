"""Hostile and damaged tar shards (issue #12, "Trust"): extraction and shard mode alike.

Python's ``tarfile`` stops *silently* at a header it cannot read (bad
checksum, cut short, missing) and yields the members it had, so a damaged
shard used to extract or index "fine" with members missing. Every tar here is
built with ``tarfile`` and then damaged byte-exactly; nothing of ours is mocked.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from blip3o_storage.errors import CorruptDataError
from blip3o_storage.reading.shard_index import ShardIndex
from blip3o_storage.testing.tars import ALL_CASES, BLOCK, DUP, GOOD, C, Damaged, make_damaged
from blip3o_storage.testing.tars import headers as _headers
from blip3o_storage.testing.tars import tar_bytes as _tar_bytes
from blip3o_storage.transfer.safe_tar import MARKER_NAME, extract_shard
from blip3o_storage.transfer.shard_indexing import build_shard_index

REPO = Path(__file__).resolve().parents[2]


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


# -- repeated member names ----------------------------------------------------------------

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


# -- the shard index itself as hostile input ----------------------------------------------
def test_shard_index_nested_too_deeply_is_a_clear_error_naming_the_index(tmp_path: Path) -> None:
    from blip3o_storage import Storage

    index = tmp_path / "index.json"
    index.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CorruptDataError, match=r"index\.json.*nested too deeply"):
        ShardIndex.load(Storage(), str(index))


