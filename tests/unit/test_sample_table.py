"""The packed sample table (issue #14): the same entries and errors as the list of dicts it replaces,
one file per node however many processes build it at once, no copy-on-read in forked workers."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
from pathlib import Path

import pytest

from blip3o_storage import ConfigError, CorruptDataError, InvalidPathError, Storage
from blip3o_storage.reading.data_json import Entry, entry_dict, parse_data_json, parse_data_json_exact
from blip3o_storage.reading.sample_table import BLOCK, SampleTable
from blip3o_storage.reading.table_cache import load_sample_table
from blip3o_storage.testing.forking import in_forked_child
from blip3o_storage.testing.memory import private_dirty
from blip3o_storage.training.dataset import load_data_list


def _entries(n: int, caption_every: int = 3) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        e = {"image": f"s{i // 100:03d}/{i:06d}.jpg", "annotation": f"s{i // 100:03d}/{i:06d}.txt"}
        if i % caption_every == 0:
            e["caption"] = f"a ünïcode caption {i} \"quoted\"\n"
        out.append(e)
    return out


def _write(path: Path, entries: object) -> str:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("n", [1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 7])
def test_table_holds_every_entry_as_the_list_did(tmp_path: Path, n: int) -> None:
    entries = _entries(n)
    table = load_sample_table(_write(tmp_path / "d.json", entries), Storage(), tmp_path / "cache")
    assert len(table) == n and table.path is not None
    assert [table[i] for i in range(n)] == entries
    assert list(table) == entries and table == entries and table != entries[:-1]
    assert table[-1] == entries[-1] and table[1:4] == entries[1:4]
    with pytest.raises(IndexError, match=f"entry {n} out of range"):
        table[n]
    table[0]["image"] = "edited"  # a copy: the table is read-only
    assert table[0] == entries[0]


def test_folder_of_clean_and_normalised_files(tmp_path: Path) -> None:
    """A clean file is stored as path columns, one whose paths need normalising as entries: one table."""
    folder = tmp_path / "parts"
    folder.mkdir()
    clean = _entries(BLOCK + 5)
    rough = [{"image": f"./x//{i}.jpg", "annotation": f"x/{i}.txt", **({"caption": "c"} if i % 2 else {})}
             for i in range(BLOCK + 3)]
    _write(folder / "a.json", clean)
    _write(folder / "b.json", rough)
    expected = clean + [{**e, "image": e["image"].replace("./", "").replace("//", "/")} for e in rough]
    for cache in (tmp_path / "cache", False):
        table = load_sample_table(str(folder), Storage(), cache)
        assert len(table) == len(expected) and table == expected
        assert [table[i] for i in (0, BLOCK, BLOCK + 4, BLOCK + 5, len(expected) - 1)] == \
            [expected[i] for i in (0, BLOCK, BLOCK + 4, BLOCK + 5, len(expected) - 1)]


def test_escaped_caption_key_is_kept(tmp_path: Path) -> None:
    """JSON may spell a key with escapes: the quick "no captions in this file" test must not drop it."""
    path = tmp_path / "d.json"
    path.write_text('[{"image": "a.jpg", "annotation": "a.txt", "\\u0063aption": "hi"}]', encoding="utf-8")
    assert load_sample_table(str(path), Storage(), tmp_path / "cache")[0]["caption"] == "hi"


def test_in_memory_table_and_pickle(tmp_path: Path) -> None:
    entries = _entries(300)
    path = _write(tmp_path / "d.json", entries)
    mem = load_sample_table(path, Storage(), False)
    assert mem.path is None and mem == entries
    assert pickle.loads(pickle.dumps(mem)) == entries
    mapped = load_sample_table(path, Storage(), tmp_path / "cache")
    again = pickle.loads(pickle.dumps(mapped))
    assert again.path == mapped.path and again == entries


def test_fast_path_equals_exact_path_and_normalises(tmp_path: Path) -> None:
    entries = _entries(50) + [{"image": "./a//b.jpg", "annotation": "a/./b.txt", "extra": 1}]
    data = json.dumps(entries).encode()
    exact = [{k: v for k, v in e.items() if k != "extra"} for e in parse_data_json_exact(data, "x")]
    assert [entry_dict(e) for e in parse_data_json(data, "x")] == exact
    assert exact[-1] == {"image": "a/b.jpg", "annotation": "a/b.txt"}
    # a BOM is dropped on both paths
    assert [entry_dict(e) for e in parse_data_json(b"\xef\xbb\xbf" + json.dumps(_entries(3)).encode(), "x")] \
        == _entries(3)


@pytest.mark.parametrize("content, error, words", [
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"},", CorruptDataError, r"malformed JSON"),
    (b"{\"image\": \"a.jpg\"}", CorruptDataError, r"expected a JSON list"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"}, 7]", CorruptDataError, r"entry 1 is a int"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"}, {\"image\": \"b.jpg\"}]", CorruptDataError,
     r"entry 1 has no 'annotation'"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\", \"caption\": null}]", CorruptDataError,
     r"entry 0 'caption' is a NoneType"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"a.txt\"}, {\"image\": \"/etc/passwd\", \"annotation\": \"b\"}]",
     InvalidPathError, r"entry 1 'image'.*absolute"),
    (b"[{\"image\": \"a.jpg\", \"annotation\": \"../../b.txt\"}]", InvalidPathError, r"entry 0 'annotation'.*\.\."),
    (b"[{\"image\": 5, \"annotation\": \"a.txt\"}]", InvalidPathError, r"entry 0 'image'.*non-string"),
    (b"[{\"image\": \"a\xff.jpg\", \"annotation\": \"a.txt\"}]", CorruptDataError, r"not UTF-8"),
])
def test_errors_name_file_entry_and_field(tmp_path: Path, content: bytes, error: type, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    for cache in (tmp_path / "cache", False):
        with pytest.raises(error, match=words) as info:
            load_sample_table(str(path), Storage(), cache)
        assert str(path) in str(info.value)
    assert not list((tmp_path / "cache").glob("table-*")), "no table is left for a bad file"
    with pytest.raises(error, match=words):
        load_data_list(str(path), Storage())


def test_one_table_per_data_json_version(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = _write(tmp_path / "d.json", _entries(10))
    first = load_sample_table(path, Storage(), cache)
    assert load_sample_table(path, Storage(), cache).path == first.path
    assert len(list(cache.glob("table-*"))) == 1
    os.utime(path, ns=(1, 1))  # an edited data.json (new mtime) gets a new table
    _write(tmp_path / "d.json", _entries(12))
    second = load_sample_table(path, Storage(), cache)
    assert second.path != first.path and len(second) == 12


def _build_in_child(args: tuple[str, str]) -> tuple[str, int]:
    path, cache = args
    table = load_sample_table(path, Storage(), cache)
    return str(table.path), os.stat(str(table.path)).st_ino


def test_concurrent_builders_make_one_table(tmp_path: Path) -> None:
    """Eight processes (the ranks of a node) start at once: one file, one inode, no temp files left."""
    cache = tmp_path / "cache"
    path = _write(tmp_path / "d.json", _entries(20_000))
    with multiprocessing.get_context("fork").Pool(8) as pool:
        results = pool.map(_build_in_child, [(path, str(cache))] * 8)
    assert len(set(results)) == 1
    assert [p.name for p in cache.iterdir() if not p.name.startswith(".table-")] == [Path(results[0][0]).name]
    assert SampleTable.open(results[0][0]) == _entries(20_000)


def test_corrupt_table_file_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.json", _entries(500))
    table = load_sample_table(path, Storage(), tmp_path / "cache")
    assert table.path is not None
    raw = Path(table.path).read_bytes()
    bad = tmp_path / "bad.b3t"
    bad.write_bytes(raw[:-9])
    with pytest.raises(CorruptDataError, match="truncated"):
        SampleTable.open(str(bad))
    bad.write_bytes(raw[:200] + b"\0" * 100 + raw[300:])
    with pytest.raises(CorruptDataError, match="block 0 is corrupt"):
        SampleTable.open(str(bad))[0]


def test_unsafe_cache_dir_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    with pytest.raises(ConfigError, match=r"table_cache_dir.*writable by others"):
        load_sample_table(_write(tmp_path / "d.json", _entries(3)), Storage(), cache)


def test_forked_worker_does_not_copy_the_table(tmp_path: Path) -> None:
    """A forked child reads every entry; its private memory grows by a few MB. The list of dicts it
    replaces grows by tens of MB here (reference counts dirty every page), so this bound fails on it."""
    n = 200_000
    path = _write(tmp_path / "d.json", _entries(n))
    tables = {"table": load_sample_table(path, Storage(), tmp_path / "cache"),
              "list": [entry_dict(Entry(**e)) for e in _entries(n)]}
    growth: dict[str, int] = {}
    for name, table in tables.items():
        r, w = os.pipe()

        def read_all(table: object = table, w: int = w) -> int:
            before = private_dirty()
            for i in range(n):
                table[i]  # type: ignore[index]
            os.write(w, str(private_dirty() - before).encode())
            return 0

        assert in_forked_child(read_all) == 0
        os.close(w)
        growth[name] = int(os.read(r, 64))
        os.close(r)
    assert growth["table"] < 8 << 20, growth
    assert growth["list"] > 3 * growth["table"], growth  # the check can tell the two apart


@pytest.mark.parametrize("chunk", [1, 2, 3, 8])
def test_path_check_in_chunks_matches_one_pass(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """The column check runs in chunks (big columns); a bad pair across a chunk's end is still found."""
    from blip3o_storage.reading import data_json

    rng = random.Random(chunk)
    for _ in range(300):
        paths = ["".join(rng.choice("ab/.") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))]
        entries = [data_json.Entry(image=p, annotation="k.txt") for p in paths]
        monkeypatch.setattr(data_json, "_CHUNK", 1 << 22)
        whole = data_json._clean_column(entries, "image")
        monkeypatch.setattr(data_json, "_CHUNK", chunk)
        chunked = data_json._clean_column(entries, "image")
        assert (whole is None) == (chunked is None), paths
        if whole is not None and chunked is not None:
            assert whole.data == chunked.data and whole.ends.tolist() == chunked.ends.tolist()
