"""Pruning the node-local sample table folder (issue #14): old and over-budget tables go, under
their lock, and a rank that opens or maps one never loses it."""
from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import pickle
import time
from pathlib import Path

import pytest

from blip3o_storage import ConfigError, Storage
from blip3o_storage.reading.table_cache import load_sample_table, prune_tables

DAY = 86400


def _data(tmp_path: Path, name: str, n: int = 300) -> tuple[str, list[dict[str, str]]]:
    entries = [{"image": f"{name}/{i}.jpg", "annotation": f"{name}/{i}.txt"} for i in range(n)]
    path = tmp_path / f"{name}.json"
    path.write_text("[\n" + ",\n".join(json.dumps(e) for e in entries) + "\n]\n")
    return str(path), entries


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def _tables(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("table-"))


def test_old_tables_are_removed_with_their_locks(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    tables = {name: load_sample_table(_data(tmp_path, name)[0], Storage(), cache) for name in "abc"}
    _age(Path(tables["a"].path or ""), 40)
    _age(Path(tables["b"].path or ""), 10)
    removed = prune_tables(cache, max_age_days=30, max_bytes=1 << 40)
    assert removed == [Path(tables["a"].path or "")]
    assert _tables(cache) == sorted(Path(tables[n].path or "").name for n in "bc")
    locks = sorted(p.name for p in cache.iterdir() if p.name.endswith(".lock"))
    assert locks == sorted(f".{Path(tables[n].path or '').name[:-4]}.lock" for n in "bc")


def test_least_recently_used_go_first_beyond_the_budget(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = {}
    for days, name in ((3, "a"), (1, "b"), (2, "c"), (4, "d")):
        paths[name] = Path(load_sample_table(_data(tmp_path, name)[0], Storage(), cache).path or "")
        _age(paths[name], days)
    size = paths["a"].stat().st_size
    removed = prune_tables(cache, max_age_days=30, max_bytes=2 * size, keep=(paths["d"],))
    assert removed == [paths["a"], paths["c"]]  # d is oldest but kept; then a, c; b (newest) and d fit
    assert _tables(cache) == sorted(paths[n].name for n in "bd")


def test_a_mapped_table_outlives_its_removal_and_is_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path, entries = _data(tmp_path, "a", 1000)
    table = load_sample_table(path, Storage(), cache)
    assert prune_tables(cache, max_age_days=0, max_bytes=0) == [Path(table.path or "")]
    assert _tables(cache) == []
    assert list(table) == entries and table[999] == entries[999]  # the mapping still holds it
    assert pickle.loads(pickle.dumps(table)) == entries  # a spawned worker gets the bytes
    again = load_sample_table(path, Storage(), cache)
    assert again == entries and _tables(cache) == [Path(again.path or "").name]
    assert pickle.loads(pickle.dumps(again)).path == again.path  # mapped by name while it exists


def test_a_table_being_opened_is_skipped(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    table = load_sample_table(_data(tmp_path, "a")[0], Storage(), cache)
    name = Path(table.path or "").name
    with open(cache / f".{name[:-4]}.lock", "a") as lock:  # what load_sample_table holds while it opens
        fcntl.flock(lock, fcntl.LOCK_SH)
        assert prune_tables(cache, max_age_days=0, max_bytes=0) == []
        assert _tables(cache) == [name]
    assert prune_tables(cache, max_age_days=0, max_bytes=0) == [cache / name]


def test_loading_counts_as_use_and_building_prunes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    a, b = _data(tmp_path, "a")[0], _data(tmp_path, "b")[0]
    first = Path(load_sample_table(a, Storage(), cache).path or "")
    second = Path(load_sample_table(b, Storage(), cache).path or "")
    _age(first, 40)
    _age(second, 40)
    load_sample_table(a, Storage(), cache)  # mapped again: used now
    assert time.time() - first.stat().st_mtime < 60
    monkeypatch.setenv("BLIP3O_TABLE_MAX_AGE_DAYS", "30")
    load_sample_table(_data(tmp_path, "c")[0], Storage(), cache)  # a build prunes the folder
    assert first.exists() and not second.exists() and len(_tables(cache)) == 2
    monkeypatch.setenv("BLIP3O_TABLE_MAX_AGE_DAYS", "soon")
    with pytest.raises(ConfigError, match="BLIP3O_TABLE_MAX_AGE_DAYS='soon' is not a number"):
        prune_tables(cache)


def _load_many(path: str, cache: str, n: int, rounds: int, out: multiprocessing.Queue[str]) -> None:
    try:
        for _ in range(rounds):
            table = load_sample_table(path, Storage(), cache)
            assert len(table) == n and table[n - 1]["image"] == f"a/{n - 1}.jpg"
        out.put("ok")
    except Exception as exc:  # noqa: BLE001  # reported to the test, whatever it is
        out.put(repr(exc))


def _prune_many(cache: str, rounds: int, out: multiprocessing.Queue[str]) -> None:
    removed = 0
    for _ in range(rounds):
        removed += len(prune_tables(Path(cache), max_age_days=0, max_bytes=0))
    out.put(f"removed {removed}")


def test_loaders_and_a_pruner_at_once(tmp_path: Path) -> None:
    """Three processes load the same data.json over and over while a fourth prunes everything it
    can: every load succeeds with the right entries (the table is rebuilt when it was pruned)."""
    path, entries = _data(tmp_path, "a", 500)
    cache = str(tmp_path / "cache")
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_load_many, args=(path, cache, len(entries), 40, out)) for _ in range(3)]
    procs.append(ctx.Process(target=_prune_many, args=(cache, 200, out)))
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(r for r in results if not r.startswith("removed")) == ["ok"] * 3, results
    assert any(r.startswith("removed") and r != "removed 0" for r in results), results  # it did race
