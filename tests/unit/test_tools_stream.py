"""tools/make_data_json.py and tools/upload_shards.py stream (issue #14): the same bytes as the
list-based build, in the same order, with memory that does not grow with the number of files
(measured with tracemalloc in a fresh interpreter, as tests/integration/test_scale_tools.py does)."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from blip3o_storage.cli import make_data_json
from blip3o_storage.cli.upload_shards import write_metadata
from blip3o_storage.transfer.safe_tar import ShardOrder, data_json_text
from blip3o_storage.transfer.shard_indexing import build_index, data_json_from_index, write_index_files

# Folder names whose name order is not the order of their paths ("a" < "a-1" but "a-1/x" < "a/x")
TRICKY = ["a", "a-1", "a-1-x", "a.b", "a0", "a b", "a!", "1", "10", "100", "2", "_x", "A", "b"]


def test_shard_order_is_the_global_sort() -> None:
    rng = random.Random(14)
    for _ in range(500):
        names = sorted({"".join(rng.choice("a-.0 !_") for _ in range(rng.randint(1, 4))) for _ in range(12)})
        order = ShardOrder()
        out = []
        expected = []
        for name in names:
            entries = [{"image": f"{name}/{rng.choice('xyz.-')}{i}.jpg", "annotation": "t"} for i in range(3)]
            expected += entries
            out += list(order.push(name, list(entries)))
        out += list(order.finish())
        assert out == sorted(expected, key=lambda e: (e["image"], e["annotation"]))


def test_plain_shard_names_are_never_held() -> None:
    order = ShardOrder()
    for i in range(100):
        name = f"{i:05d}"
        out = list(order.push(name, [{"image": f"{name}/a.jpg", "annotation": f"{name}/a.txt"}]))
        assert len(order._pending) == 1  # only the shard just pushed waits for the next name
        assert [e["image"] for e in out] == ([f"{i - 1:05d}/a.jpg"] if i else [])


def _pair_tree(raw: Path, shards: list[str], per_shard: int) -> list[dict[str, str]]:
    pairs = []
    for shard in shards:
        (raw / shard / "sub").mkdir(parents=True)
        for i in range(per_shard):
            sub = "sub/" if i % 3 == 0 else ""
            (raw / shard / f"{sub}{i:05d}.jpg").write_bytes(b"i")
            (raw / shard / f"{sub}{i:05d}.txt").write_bytes(b"c")
            pairs.append({"image": f"{shard}/{sub}{i:05d}.jpg", "annotation": f"{shard}/{sub}{i:05d}.txt"})
    return pairs


def test_make_data_json_writes_the_sorted_bytes(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    pairs = _pair_tree(raw, TRICKY, 4)
    (raw / "b" / "orphan.jpg").write_bytes(b"i")
    out = tmp_path / "data.json"
    assert make_data_json.main(["--raw", str(raw), "--out", str(out)]) == 0
    assert out.read_text() == data_json_text(sorted(pairs, key=lambda e: (e["image"], e["annotation"])))
    assert make_data_json.main(["--raw", str(raw), "--out", str(tmp_path / "s.json"), "--strict"]) == 1
    assert not (tmp_path / "s.json").exists() and not list(tmp_path.glob(".s.json*"))  # no temp left


def test_make_data_json_writes_nothing_when_the_walk_fails(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    _pair_tree(raw, ["a", "b"], 3)
    os.symlink(raw / "missing", raw / "b" / "dangling.jpg")
    out = tmp_path / "data.json"
    assert make_data_json.main(["--raw", str(raw), "--out", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == [raw]


def _tar(path: Path, members: list[str]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name in members:
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, __import__("io").BytesIO(b"x"))
    return path


@pytest.mark.parametrize("with_data_json", [True, False])
def test_index_files_are_the_bytes_of_the_in_memory_index(tmp_path: Path, with_data_json: bool) -> None:
    tars = []
    for k, name in enumerate(["a", "a-1", "a.b", "a0", "1", "10", "2", "Z_x", "A"]):
        members = [f"{i}.jpg" for i in range(4)] + [f"{i}.txt" for i in range(1, 5)] + ["sub/q.jpg", "sub/q.txt"]
        if k == 2:
            members += ["0.jpg", ".hidden.txt"]  # a repeated name, a hidden file
        tars.append(_tar(tmp_path / f"{name}.tar", members))
    ref, got = tmp_path / "ref", tmp_path / "got"
    ref.mkdir()
    got.mkdir()
    entries, report = data_json_from_index(build_index(tars))
    write_metadata(build_index(tars), entries if with_data_json else None, ref)
    summary = write_index_files(list(reversed(tars)), got / "index.json",
                                got / "data.json" if with_data_json else None)
    names = ["index.json", "data.json"] if with_data_json else ["index.json"]
    assert sorted(p.name for p in got.iterdir()) == sorted(names)
    for name in names:
        assert (got / name).read_bytes() == (ref / name).read_bytes(), name
    shards = build_index(tars)["shards"].values()
    assert summary.shards == 9 and summary.members == sum(len(s["members"]) for s in shards)
    assert summary.repeated == {"a.b": ["0.jpg"]}
    if with_data_json:
        assert summary.entries == len(entries) == report.pairs == summary.report.pairs
        for field in ("orphan_images", "orphan_captions", "hidden", "shards", "other_files"):
            assert getattr(summary.report, field) == getattr(report, field), field


_MAKE_PEAK = """
import sys, tracemalloc
from blip3o_storage.cli import make_data_json
tracemalloc.start()
status = make_data_json.main(["--raw", sys.argv[1], "--out", sys.argv[2], "--log-level", "WARNING"])
print(status, tracemalloc.get_traced_memory()[1])
"""

_INDEX_PEAK = """
import sys, tracemalloc
from pathlib import Path
from blip3o_storage.transfer.shard_indexing import write_index_files
tars = sorted(Path(sys.argv[1]).glob("*.tar"))
tracemalloc.start()
summary = write_index_files(tars, Path(sys.argv[2]) / "index.json", Path(sys.argv[2]) / "data.json")
print(summary.entries, tracemalloc.get_traced_memory()[1])
"""


def _fresh(code: str, *args: str) -> tuple[int, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                         env=env, timeout=600).stdout.split()
    return int(out[-2]), int(out[-1])


def test_make_data_json_memory_does_not_grow_with_the_tree(tmp_path: Path) -> None:
    """Shards of 500 files: 2 shards, then 16 (8,000 files). The list-based build kept every entry
    and every walked path: 560 bytes a file more (measured), so the bound fails on it; streaming keeps
    one shard: 12 bytes a file (the report's list of shards, log records)."""
    peaks = {}
    for shards in (2, 16):
        raw = tmp_path / f"raw{shards}"
        _pair_tree(raw, [f"{s:05d}" for s in range(shards)], 250)
        status, peaks[shards] = _fresh(_MAKE_PEAK, str(raw), str(tmp_path / f"d{shards}.json"))
        assert status == 0 and len(json.loads((tmp_path / f"d{shards}.json").read_text())) == 250 * shards
    per_file = (peaks[16] - peaks[2]) / (14 * 500)
    assert per_file < 60, f"make_data_json grew by {per_file:.0f} bytes a file ({peaks})"


def test_upload_shards_index_memory_does_not_grow_with_the_shards(tmp_path: Path) -> None:
    """Tars of 1,000 members: 2, then 12. The in-memory index held every member with its data.json
    entry: 485 bytes a member more (measured), so the bound fails on it; streaming holds one shard's:
    6 bytes a member."""
    peaks = {}
    for shards in (2, 12):
        folder = tmp_path / f"tars{shards}"
        folder.mkdir()
        for s in range(shards):
            _tar(folder / f"{s:05d}.tar", [f"{i:05d}.{ext}" for i in range(500) for ext in ("jpg", "txt")])
        out = tmp_path / f"out{shards}"
        out.mkdir()
        entries, peaks[shards] = _fresh(_INDEX_PEAK, str(folder), str(out))
        assert entries == 500 * shards
    per_member = (peaks[12] - peaks[2]) / (10 * 1000)
    assert per_member < 30, f"the index grew by {per_member:.0f} bytes a member ({peaks})"
