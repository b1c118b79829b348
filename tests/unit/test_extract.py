"""Tests for safe shard extraction, tools/extract.py and tools/make_data_json.py.

Every tar is built in tmp_path with ``tarfile`` so hostile cases are exact;
nothing of our own code is mocked.
"""
from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Optional

import pytest

from blip3o_storage.errors import CorruptDataError, InvalidPathError, StorageError
from blip3o_storage.transfer.safe_tar import (
    MARKER_NAME,
    build_data_json,
    check_member,
    extract_shard,
)

REPO = Path(__file__).resolve().parents[2]

MTIME = 1_700_000_000
DEAD_PID = 99_999_999  # above any Linux pid_max, so never alive


# ---------------------------------------------------------------- helpers

def reg(name: str, data: bytes = b"x", mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = MTIME
    ti.mode = mode
    return ti, data


def special(name: str, type_: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = type_
    ti.linkname = linkname
    ti.mtime = MTIME
    if type_ in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = 1, 3  # /dev/null
    return ti, None


def dir_(name: str) -> tuple[tarfile.TarInfo, None]:
    return special(name, tarfile.DIRTYPE)


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, Optional[bytes]]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


GOOD_MEMBERS = [
    reg("00001.jpg", b"\xff\xd8jpeg-1"),
    reg("00001.txt", b"a cat"),
    dir_("sub"),
    reg("sub/00002.jpg", b"\xff\xd8jpeg-2"),
    reg("sub/00002.txt", b"a dog"),
]


def make_good(src: Path, name: str = "good") -> Path:
    return make_tar(src / f"{name}.tar", list(GOOD_MEMBERS))


def snapshot(root: Path) -> list[str]:
    """Every path under root (symlinks not followed), for 'nothing written' checks."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, n), root))
    return sorted(out)


def run_tool(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool as a user would, from the repo root, importing this checkout's package
    (not a copy installed from another checkout, e.g. a git worktree's main)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, f"tools/{script}", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


# ---------------------------------------------------------------- check_member

@pytest.mark.parametrize("member", [reg("a.jpg")[0], reg("sub/deep/a.txt")[0], dir_("sub")[0],
                                    reg("./a.jpg")[0], reg("a..b.txt")[0]])
def test_check_member_accepts_plain_files_and_dirs(member: tarfile.TarInfo) -> None:
    check_member(member, "dalle3")  # must not raise


@pytest.mark.parametrize(
    "member, why",
    [
        (reg("")[0], "empty"),
        (reg("a\x00b.txt")[0], "NUL"),
        (reg("sub\\evil.txt")[0], "backslash"),
        (reg("C:/evil.txt")[0], "drive letter"),
        (reg("c:evil.txt")[0], "drive letter"),
        (reg("/tmp/evil")[0], "absolute"),
        (reg("../evil.txt")[0], "'..'"),
        (reg("sub/../../evil.txt")[0], "'..'"),
        (dir_("sub/..")[0], "'..'"),
        (special("link", tarfile.SYMTYPE, "/etc/passwd")[0], "symlink"),
        (special("link", tarfile.LNKTYPE, "00001.jpg")[0], "hardlink"),
        (special("dev", tarfile.CHRTYPE)[0], "character device"),
        (special("dev", tarfile.BLKTYPE)[0], "block device"),
        (special("pipe", tarfile.FIFOTYPE)[0], "fifo"),
    ],
)
def test_check_member_rejects(member: tarfile.TarInfo, why: str) -> None:
    with pytest.raises(InvalidPathError) as ei:
        check_member(member, "dalle3")
    msg = str(ei.value)
    assert "'dalle3'" in msg and repr(member.name) in msg
    assert why in msg
    assert "re-download" in msg  # says what to do
    assert isinstance(ei.value, StorageError) and isinstance(ei.value, ValueError)


# ---------------------------------------------------------------- extract_shard

def test_extract_good_shard(tmp_path: Path) -> None:
    tar = make_good(tmp_path / "src")
    dest = tmp_path / "raw"
    seen: list[int] = []
    res = extract_shard(tar, dest, progress=seen.append)

    assert res.shard == "good" and not res.skipped_already_done
    assert res.files == 4
    expected_bytes = sum(ti.size for ti, _ in GOOD_MEMBERS if ti.isreg())
    assert res.bytes == expected_bytes and sum(seen) == expected_bytes
    for ti, data in GOOD_MEMBERS:
        p = dest / "good" / ti.name
        assert p.is_dir() if ti.isdir() else p.read_bytes() == data
    assert (dest / "good" / MARKER_NAME).is_file()
    assert json.loads((dest / "good" / MARKER_NAME).read_text())["files"] == 4
    assert sorted(os.listdir(dest)) == ["good"]  # no temp dir left behind


def test_data_filter_is_applied(tmp_path: Path) -> None:
    """setuid/setgid/world-write bits are only stripped by filter='data'."""
    tar = make_tar(tmp_path / "src" / "modes.tar", [reg("a.jpg", b"1", mode=0o6777)])
    extract_shard(tar, tmp_path / "raw")
    mode = stat.S_IMODE((tmp_path / "raw" / "modes" / "a.jpg").stat().st_mode)
    assert mode == 0o755


HOSTILE: dict[str, Callable[[Path], list[tuple[tarfile.TarInfo, Optional[bytes]]]]] = {
    "traversal": lambda t: [reg("../evil.txt", b"pwned")],
    "nested_traversal": lambda t: [reg("sub/../../evil.txt", b"pwned")],
    "absolute": lambda t: [reg(str(t / "abs_evil.txt"), b"pwned")],
    "symlink_outside": lambda t: [special("link", tarfile.SYMTYPE, str(t / "outside")),
                                  reg("link/evil.txt", b"pwned")],
    "symlink_inside": lambda t: [special("sub_link", tarfile.SYMTYPE, "00001.jpg")],
    "hardlink_escape": lambda t: [special("hard", tarfile.LNKTYPE, "../../outside.txt")],
    "char_device": lambda t: [special("null", tarfile.CHRTYPE)],
    "fifo": lambda t: [special("pipe", tarfile.FIFOTYPE)],
}
HOSTILE_NAME = {"traversal": "../evil.txt", "nested_traversal": "sub/../../evil.txt",
                "symlink_outside": "link", "symlink_inside": "sub_link",
                "hardlink_escape": "hard", "char_device": "null", "fifo": "pipe"}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_tar_writes_nothing(tmp_path: Path, kind: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside.txt").write_text("secret")
    # Good members first: validation must see the bad one before writing these.
    tar = make_tar(tmp_path / "src" / "bad.tar", list(GOOD_MEMBERS) + HOSTILE[kind](tmp_path))
    before = snapshot(tmp_path)
    dest = tmp_path / "raw"

    with pytest.raises(InvalidPathError) as ei:
        extract_shard(tar, dest)

    bad_name = HOSTILE_NAME.get(kind, str(tmp_path / "abs_evil.txt"))
    assert repr(bad_name) in str(ei.value) and "'bad'" in str(ei.value)
    assert snapshot(tmp_path) == before  # nothing anywhere, not even dest itself
    assert not (dest / "bad").exists()
    assert (tmp_path / "outside.txt").read_text() == "secret"


def test_idempotent_second_run_skips(tmp_path: Path) -> None:
    tar = make_good(tmp_path / "src")
    dest = tmp_path / "raw"
    extract_shard(tar, dest)
    f = dest / "good" / "00001.txt"
    # Make a re-extraction detectable: tar would restore content and MTIME.
    f.write_text("edited")
    os.utime(f, ns=(123_000_000_000, 123_000_000_000))
    ino = f.stat().st_ino

    res = extract_shard(tar, dest)

    assert res.skipped_already_done and res.files == 4 and res.bytes > 0
    st = f.stat()
    assert f.read_text() == "edited" and st.st_mtime_ns == 123_000_000_000 and st.st_ino == ino


def test_stale_temp_dirs_removed_others_kept(tmp_path: Path) -> None:
    tar = make_good(tmp_path / "src")
    dest = tmp_path / "raw"
    for name in (f".tmp-good-{DEAD_PID}", f".tmp-good-{os.getpid()}", f".tmp-good_2-{DEAD_PID}",
                 f".tmp-good-2-{DEAD_PID}"):
        (dest / name / "half").mkdir(parents=True)
        (dest / name / "half" / "00001.jpg").write_bytes(b"partial")

    res = extract_shard(tar, dest)

    assert not res.skipped_already_done
    left = sorted(os.listdir(dest))
    # other shards' temp dirs ('good_2', 'good-2') are not ours to remove
    assert left == sorted(["good", f".tmp-good_2-{DEAD_PID}", f".tmp-good-2-{DEAD_PID}"])
    assert (dest / "good" / "00001.jpg").read_bytes() == b"\xff\xd8jpeg-1"


def test_stale_temp_of_live_process_is_left_alone(tmp_path: Path) -> None:
    tar = make_good(tmp_path / "src")
    dest = tmp_path / "raw"
    live = dest / f".tmp-good-{os.getppid()}"  # parent process: alive, not us
    live.mkdir(parents=True)
    extract_shard(tar, dest)
    assert live.is_dir() and (dest / "good" / MARKER_NAME).is_file()


def test_dir_without_marker_errors_then_overwrite_replaces(tmp_path: Path) -> None:
    tar = make_good(tmp_path / "src")
    dest = tmp_path / "raw"
    (dest / "good").mkdir(parents=True)
    (dest / "good" / "junk.jpg").write_bytes(b"half")

    with pytest.raises(StorageError) as ei:
        extract_shard(tar, dest)
    msg = str(ei.value)
    assert "overwrite" in msg and "remove" in msg and str(dest / "good") in msg
    assert os.listdir(dest / "good") == ["junk.jpg"]  # untouched

    res = extract_shard(tar, dest, overwrite=True)
    assert not res.skipped_already_done
    assert sorted(os.listdir(dest / "good")) == sorted([MARKER_NAME, "00001.jpg", "00001.txt", "sub"])
    assert sorted(os.listdir(dest)) == ["good"]


def test_overwrite_with_hostile_tar_keeps_previous_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    dest = tmp_path / "raw"
    extract_shard(make_good(src), dest)
    before = snapshot(dest)
    make_tar(src / "good.tar", [reg("00001.jpg", b"new"), reg("../evil.txt", b"pwned")])
    with pytest.raises(InvalidPathError):
        extract_shard(src / "good.tar", dest, overwrite=True)
    assert snapshot(dest) == before
    assert (dest / "good" / "00001.jpg").read_bytes() == b"\xff\xd8jpeg-1"


def test_truncated_tar_leaves_no_shard_and_no_temp(tmp_path: Path) -> None:
    big = os.urandom(200_000)
    tar = make_tar(tmp_path / "src" / "trunc.tar", [reg("00001.txt", b"ok"), reg("00001.jpg", big)])
    raw = tar.read_bytes()
    tar.write_bytes(raw[: raw.index(big[:64]) + 1000])  # cut inside the last file's data
    dest = tmp_path / "raw"

    with pytest.raises(CorruptDataError) as ei:
        extract_shard(tar, dest)
    assert "'trunc'" in str(ei.value) and "re-download" in str(ei.value)
    assert not (dest / "trunc").exists()
    assert not dest.exists() or os.listdir(dest) == []


def test_failure_during_extraction_cleans_temp(tmp_path: Path) -> None:
    """Members that pass validation but clash on disk ('a' file, then 'a/b')."""
    tar = make_tar(tmp_path / "src" / "clash.tar",
                   [reg("0.txt", b"first"), reg("a", b"file"), reg("a/b.txt", b"under a file")])
    dest = tmp_path / "raw"
    with pytest.raises(StorageError) as ei:
        extract_shard(tar, dest)
    assert "'clash'" in str(ei.value)
    assert os.listdir(dest) == []  # temp dir with '0.txt' and 'a' removed, no shard dir


def test_not_a_tar_is_corrupt_data(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "junk.tar"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not a tar archive at all" * 100)
    with pytest.raises(CorruptDataError, match="junk"):
        extract_shard(bad, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# ---------------------------------------------------------------- build_data_json

def write(p: Path, data: bytes = b"x") -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def test_build_data_json_pairs_and_reports_orphans(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write(raw / "b_shard" / MARKER_NAME, b"{}")
    write(raw / "b_shard" / "2.jpg")
    write(raw / "b_shard" / "2.txt")
    write(raw / "b_shard" / "sub" / "deep" / "1.PNG")
    write(raw / "b_shard" / "sub" / "deep" / "1.txt")
    write(raw / "b_shard" / "sub" / "lonely.jpg")         # orphan image
    write(raw / "b_shard" / "sub" / "1.txt")              # orphan caption (other folder)
    write(raw / "a_shard" / MARKER_NAME, b"{}")
    write(raw / "a_shard" / "k.jpg")
    write(raw / "a_shard" / "k.webp")                     # second image for key k
    write(raw / "a_shard" / "k.txt")
    write(raw / "a_shard" / "k.json")                     # other file
    write(raw / "c_manual" / "x.jpeg")                    # shard without marker
    write(raw / "c_manual" / "x.txt")
    write(raw / ".tmp-d-123" / "y.jpg")                   # in-flight extraction: skipped
    write(raw / ".tmp-d-123" / "y.txt")

    entries, rep = build_data_json(raw)

    assert entries == [
        {"image": "a_shard/k.jpg", "annotation": "a_shard/k.txt"},
        {"image": "b_shard/2.jpg", "annotation": "b_shard/2.txt"},
        {"image": "b_shard/sub/deep/1.PNG", "annotation": "b_shard/sub/deep/1.txt"},
        {"image": "c_manual/x.jpeg", "annotation": "c_manual/x.txt"},
    ]
    assert rep.pairs == 4
    assert rep.orphan_images == ["b_shard/sub/lonely.jpg"]
    assert rep.orphan_captions == ["b_shard/sub/1.txt"]
    assert rep.duplicate_images == ["a_shard/k.webp"]
    assert rep.other_files == ["a_shard/k.json"]
    assert rep.shards == ["a_shard", "b_shard", "c_manual"]
    assert rep.unmarked_shards == ["c_manual"]
    assert rep.has_orphans
    for e in entries:  # relpaths resolve under raw/ and use '/'
        assert "\\" not in e["image"] and (raw / e["image"]).is_file()
        assert (raw / e["annotation"]).is_file()


def test_build_data_json_is_deterministic(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    for i in (5, 3, 10, 1):
        write(raw / "s" / f"{i:05d}.jpg")
        write(raw / "s" / f"{i:05d}.txt")
    a, _ = build_data_json(raw)
    b, _ = build_data_json(raw)
    assert a == b and [e["image"] for e in a] == sorted(e["image"] for e in a)
    assert not _.has_orphans


def test_build_data_json_missing_raw(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="extract"):
        build_data_json(tmp_path / "nope")


def test_extract_then_build_end_to_end(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    for name in ("dalle3", "text_1"):
        extract_shard(make_good(src, name), dest)
    entries, rep = build_data_json(dest)
    assert rep.pairs == 4 and not rep.has_orphans and rep.unmarked_shards == []
    assert {"image": "text_1/sub/00002.jpg", "annotation": "text_1/sub/00002.txt"} in entries


# ---------------------------------------------------------------- CLI: extract.py

def test_cli_extract_good_shards_then_skips(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    make_good(src, "dalle3")
    make_good(src, "journeyDB")

    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "summary: 2 shard(s) extracted, 0 skipped as done, 0 failed; 8 files" in r.stderr
    for s in ("dalle3", "journeyDB"):
        assert (dest / s / "sub" / "00002.txt").read_text() == "a dog"
        assert (dest / s / MARKER_NAME).is_file()

    r2 = run_tool("extract.py", "--src", str(src), "--dest", str(dest))
    assert r2.returncode == 0, r2.stderr
    assert "0 shard(s) extracted, 2 skipped as done" in r2.stderr


def test_cli_extract_one_hostile_among_good(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    make_good(src, "object_1")
    make_good(src, "object_2")
    make_tar(src / "text_1.tar", [reg("a.jpg"), reg("../evil.txt", b"pwned")])

    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest), "--workers", "3")

    assert r.returncode != 0
    assert "text_1" in r.stderr and "'../evil.txt'" in r.stderr and "FAILED" in r.stderr
    assert "2 shard(s) extracted" in r.stderr and "1 failed" in r.stderr
    assert (dest / "object_1" / MARKER_NAME).is_file()
    assert (dest / "object_2" / MARKER_NAME).is_file()
    assert not (dest / "text_1").exists() and not (tmp_path / "evil.txt").exists()
    assert not (dest / "evil.txt").exists()


def test_cli_extract_named_shards_only(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    make_good(src, "dalle3")
    make_good(src, "text_2")
    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest), "text_2")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(dest)) == ["text_2"]

    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest), "missing_shard")
    assert r.returncode == 2 and "missing_shard" in r.stderr


def test_cli_extract_overwrite_flag(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "raw"
    make_good(src, "dalle3")
    write(dest / "dalle3" / "leftover.jpg")
    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest))
    assert r.returncode == 1 and "--overwrite" in r.stderr
    r = run_tool("extract.py", "--src", str(src), "--dest", str(dest), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert not (dest / "dalle3" / "leftover.jpg").exists()
    assert (dest / "dalle3" / MARKER_NAME).is_file()


# ---------------------------------------------------------------- CLI: make_data_json.py

def _raw_with_orphans(raw: Path) -> None:
    write(raw / "s1" / "a.jpg")
    write(raw / "s1" / "a.txt", b"cap a")
    write(raw / "s1" / "sub" / "b.jpg")
    write(raw / "s1" / "sub" / "b.txt", b"cap b")
    write(raw / "s2" / "c.jpg")             # orphan image
    write(raw / "s2" / "d.txt")             # orphan caption


def test_cli_make_data_json_writes_pairs_and_logs_counts(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out" / "data.json"
    _raw_with_orphans(raw)

    r = run_tool("make_data_json.py", "--raw", str(raw), "--out", str(out))

    assert r.returncode == 0, r.stderr
    assert "pairs: 2, orphan images: 1, orphan captions: 1" in r.stderr
    assert "s2/c.jpg" in r.stderr and "s2/d.txt" in r.stderr
    data = json.loads(out.read_text())
    assert data == [{"image": "s1/a.jpg", "annotation": "s1/a.txt"},
                    {"image": "s1/sub/b.jpg", "annotation": "s1/sub/b.txt"}]
    assert os.listdir(out.parent) == ["data.json"]  # no temp file left


def test_cli_make_data_json_strict(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "data.json"
    _raw_with_orphans(raw)
    out.write_text("[]\n")  # a previous good file must survive a strict failure

    r = run_tool("make_data_json.py", "--raw", str(raw), "--out", str(out), "--strict")
    assert r.returncode != 0
    assert "--strict" in r.stderr
    assert out.read_text() == "[]\n"

    (raw / "s2" / "c.jpg").unlink()
    (raw / "s2" / "d.txt").unlink()
    r = run_tool("make_data_json.py", "--raw", str(raw), "--out", str(out), "--strict")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(out.read_text())) == 2


def test_cli_make_data_json_no_pairs_fails(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "data.json"
    raw.mkdir()
    r = run_tool("make_data_json.py", "--raw", str(raw), "--out", str(out))
    assert r.returncode == 1 and not out.exists()
    r = run_tool("make_data_json.py", "--raw", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 2 and "extract" in r.stderr
