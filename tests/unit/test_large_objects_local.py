"""The large-object pieces without a server: size parsing, the range reader's read-ahead, the
bounded parallel runner, and the local backend's streams (torch.save/torch.load on a path)."""
from __future__ import annotations

import functools
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from blip3o_storage import Storage
from blip3o_storage.errors import InvalidPathError, ObjectNotFoundError
from blip3o_storage.storage.parallel import run_bounded
from blip3o_storage.storage.part_sizing import MiB, effective_part_size, parse_size, part_ranges
from blip3o_storage.storage.range_reader import RangeReader


@pytest.mark.parametrize(("text", "expected"), [("67108864", 64 * MiB), ("64MB", 64 * MiB), ("16MiB", 16 * MiB),
                                                 ("1 GB", 1 << 30), ("512k", 512 << 10), (5, 5)])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "1.5GB", "-3MB", "12 parsecs"])
def test_parse_size_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


def test_part_ranges_and_sizing() -> None:
    assert part_ranges(0, 5) == []
    assert part_ranges(10, 5) == [(0, 5), (5, 5)]
    assert part_ranges(11, 5) == [(0, 5), (5, 5), (10, 1)]
    # 200 GiB at 16 MiB would be 12,800 parts: doubled to 32 MiB (6,400 parts), s3transfer's rule
    assert effective_part_size(200 << 30, 16 * MiB) == 32 * MiB


class _Counted:
    """A fill over ``data`` that records the (offset, length) it was asked for."""

    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, []  # type: ignore[var-annotated]

    def __call__(self, start: int, view: memoryview) -> None:
        self.calls.append((start, len(view)))
        view[:] = self.data[start:start + len(view)]


def test_range_reader_reads_ahead_sequentially_and_big_reads_go_direct() -> None:
    data = os.urandom(1000)
    fill = _Counted(data)
    reader = RangeReader("mem://x", len(data), fill, block_size=10, max_ahead=40)
    got = b"".join(iter(lambda: reader.read(3), b""))
    assert got == data
    # blocks of 10, 20, 40, 40, ...: far fewer fills than 334 reads of 3 bytes
    assert [n for _, n in fill.calls[:4]] == [10, 20, 40, 40] and len(fill.calls) < 30
    fill.calls.clear()
    reader.seek(100)
    buffer = bytearray(500)
    assert reader.readinto(buffer) == 500 and bytes(buffer) == data[100:600]
    assert fill.calls == [(100, 500)]  # one direct fill into the caller's buffer
    reader.seek(990)
    assert reader.read(50) == data[990:] and reader.read(1) == b""
    with pytest.raises(OSError):
        reader.seek(-1)


def test_run_bounded_limits_concurrency_and_raises_first_error() -> None:
    running, peak, lock = [0], [0], threading.Lock()

    def task() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1

    with ThreadPoolExecutor(8) as pool:
        run_bounded(pool, (task for _ in range(40)), limit=3)
        assert peak[0] <= 3
        started = []

        def failing(i: int) -> None:
            started.append(i)
            if i == 2:
                raise RuntimeError("part 2 failed")
            time.sleep(0.01)

        with pytest.raises(RuntimeError, match="part 2"):
            run_bounded(pool, (functools.partial(failing, i) for i in range(100)), limit=2)
        assert len(started) < 100  # the rest was never started


def test_local_torch_save_and_load_through_open(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    storage = Storage()
    state = {"w": torch.randn(300, 300), "n": torch.tensor(7)}
    path = tmp_path / "ckpt" / "epoch_1.pth"
    with storage.open(path, "wb") as writer:
        torch.save(state, writer)
    with storage.open(path, "rb") as reader:
        loaded = torch.load(reader, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["n"], state["n"])


def test_local_writer_failure_leaves_no_file_nor_temp(tmp_path: Path) -> None:
    storage = Storage()
    target = tmp_path / "out" / "ckpt.pth"
    with pytest.raises(KeyError), storage.open(target, "wb") as writer:
        writer.write(b"partial")
        raise KeyError("boom")
    assert list((tmp_path / "out").iterdir()) == []
    with pytest.raises(InvalidPathError, match="mode"):
        storage.open(target, "ab")
    with pytest.raises(ObjectNotFoundError, match="out"):
        storage.open(tmp_path / "out", "rb")  # a folder is not an object
    with pytest.raises(io.UnsupportedOperation):
        storage.open(target, "wb").seek(10)


def test_local_copy_get_file_put_file(tmp_path: Path) -> None:
    storage = Storage()
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 1000)
    storage.copy(src, tmp_path / "b" / "c.bin")
    storage.put_file(tmp_path / "d" / "e.bin", src)
    storage.get_file(tmp_path / "d" / "e.bin", tmp_path / "f" / "g.bin")
    assert {p.read_bytes() for p in (tmp_path / "b" / "c.bin", tmp_path / "d" / "e.bin",
                                     tmp_path / "f" / "g.bin")} == {b"x" * 1000}


def test_transfer_concurrency_never_exceeds_the_connection_pool() -> None:
    """A config with a small pool (max_pool_connections=2) still loads: the default max_concurrency (8)
    is capped at the pool size instead of being refused (test_reliability's small-pool control uses it)."""
    from blip3o_storage.storage.config import load_config
    settings = load_config({"endpoint_url": "http://127.0.0.1:1", "max_pool_connections": 2}).settings_for(None)
    assert (settings.max_concurrency, settings.transfer_concurrency) == (8, 2)
    assert load_config({"endpoint_url": "http://127.0.0.1:1"}).settings_for(None).transfer_concurrency == 8
