"""blip3o_storage.transfer.manifest without a server: written atomically, read back whole or not at
all, no credentials in it; and the key-ordered walk the upload merges with a LIST."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from blip3o_storage.transfer.manifest import ENV_DIR, UploadManifest, manifest_dir, public_endpoint, stat_fields
from blip3o_storage.transfer.tree_walk import TreeWalk, iter_tree, iter_tree_stat


def _manifest(tmp_path: Path, endpoint: str = "http://10.0.0.1:7480") -> UploadManifest:
    return UploadManifest.for_target(endpoint, "bucket", "pre/", tmp_path / "src", tmp_path / "m")


def _write(manifest: UploadManifest, n: int) -> None:
    writer = manifest.writer()
    for i in range(n):
        writer.add(f"raw/{i:05d}.jpg", (i, 10 * i, 20 * i, 30 + i), f"{i:032x}")
    writer.commit()


def test_round_trip_in_order_and_no_temp_left(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    _write(manifest, 100)
    entries = list(manifest.entries())
    assert [e.rel for e in entries] == [f"raw/{i:05d}.jpg" for i in range(100)]
    assert entries[7].stat == (7, 70, 140, 37) and entries[7].etag == f"{7:032x}"
    assert manifest.corrupt == 0
    assert os.listdir(manifest.path.parent) == [manifest.path.name]


def test_out_of_order_and_bad_names_are_not_written(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    writer = manifest.writer()
    writer.add("b", (1, 1, 1, 1), "x")
    writer.add("a", (1, 1, 1, 1), "x")  # out of order: left out
    writer.add("c\td", (1, 1, 1, 1), "x")  # a tab would break the line: left out
    writer.commit()
    assert [e.rel for e in manifest.entries()] == ["b"]


def test_discarded_writer_keeps_the_old_manifest(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    _write(manifest, 3)
    writer = manifest.writer()
    writer.add("zzz", (1, 1, 1, 1), "x")
    writer.discard()
    assert len(list(manifest.entries())) == 3 and os.listdir(manifest.path.parent) == [manifest.path.name]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "appended", "empty", "other target", "bad count"])
def test_damaged_manifest_is_ignored_whole_with_a_warning(tmp_path: Path, damage: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    manifest = _manifest(tmp_path)
    _write(manifest, 50)
    data = manifest.path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) - 80]
    elif damage == "flipped":
        at = data.index(b"raw/00020.jpg")
        data = data[:at] + b"raw/00020.jpX" + data[at + 13:]
    elif damage == "appended":
        data += b"raw/99999.jpg\t1\t1\t1\t1\tx\n"
    elif damage == "empty":
        data = b""
    elif damage == "bad count":
        data = data.replace(b"#end\t50\t", b"#end\t51\t")
    manifest.path.write_bytes(data)
    reader = _manifest(tmp_path, "http://10.0.0.2:7480") if damage == "other target" else manifest
    if damage == "other target":
        reader.path = manifest.path  # same file, read for another endpoint
    assert list(reader.entries()) == []
    assert reader.corrupt == 1
    assert "damaged" in caplog.text and str(manifest.path) in caplog.text


def test_no_credentials_in_the_manifest_or_its_name(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, "https://AKIAUSER:SuperSecret@store.example:443")
    _write(manifest, 2)
    text = manifest.path.read_text(encoding="utf-8")
    assert "SuperSecret" not in text and "AKIAUSER" not in text and "store.example:443" in text
    assert public_endpoint("http://u:p@h:1") == "http://h:1" and public_endpoint(None) == "aws"


def test_manifest_dir_override_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert manifest_dir() == tmp_path / "xdg" / "blip3o-storage" / "upload-manifests"
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env"))
    assert manifest_dir() == tmp_path / "env"
    assert manifest_dir(tmp_path / "opt") == tmp_path / "opt"


def test_unwritable_folder_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    manifest = UploadManifest.for_target(None, "b", "", tmp_path, blocker / "sub")
    with pytest.raises(OSError):
        manifest.writer()


def test_stat_fields_change_on_same_size_rewrite_with_restored_mtime(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 10)
    before = os.stat(path)
    import time
    time.sleep(0.02)
    path.write_bytes(b"b" * 10)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert stat_fields(after) != stat_fields(before)  # ctime moved on


def test_key_order_walk_matches_list_order(tmp_path: Path) -> None:
    root = tmp_path / "t"
    for rel in ("d!", "d.txt", "d0", "d/x", "d/y/z", "d/y!", "e", "é", ".hidden/x", "d/.tmp"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    walk = TreeWalk(root=root)
    rels = [rel for rel, _, _ in iter_tree_stat(walk, key_order=True)]
    assert rels == sorted(rels) == ["d!", "d.txt", "d/x", "d/y!", "d/y/z", "d0", "e", "é"]
    assert sorted(walk.hidden) == [".hidden", "d/.tmp"]
    # the default order (files of a folder, then its folders) is unchanged for make_data_json
    assert [rel for rel, _ in iter_tree(TreeWalk(root=root))] == ["d!", "d.txt", "d0", "e", "é", "d/x", "d/y!",
                                                                  "d/y/z"]


def test_content_type_follows_the_key_not_a_resolved_path(tmp_path) -> None:
    """A planned file whose path resolves elsewhere (``--only-referenced`` through a link) is sent
    with its key's content type, as before UploadItem made it lazily."""
    from blip3o_storage.transfer.upload import ItemTable

    table = ItemTable(tmp_path, "p/")
    table.append_file("raw/a.jpg", 3, path=tmp_path / "store" / "blob.bin")
    item = table[0]
    assert item.local_path == tmp_path / "store" / "blob.bin"
    assert item.content_type == "image/jpeg"
