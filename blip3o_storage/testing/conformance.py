"""The backend conformance suite: one set of tests every storage backend must pass.

Subclass :class:`BackendConformance` once per backend (its name starting with ``Test`` so pytest
collects it) and provide two fixtures:

* ``backend``: the object under test; anything with the public storage methods (``get``, ``get_text``,
  ``get_range``, ``exists``, ``isdir``, ``stat``, ``put``, ``list``, ``delete``, ``put_file``,
  ``get_file``, ``copy``, and ``open_read``/``open_write`` or the facade's ``open``) taking full URIs:
  a backend (``LocalBackend``, ``S3Backend``) or the :class:`~blip3o_storage.Storage` facade.
* ``root_uri``: a folder URI on that backend that starts empty.

For example::

    class TestLocalBackend(BackendConformance):
        @pytest.fixture
        def backend(self):
            return LocalBackend()

        @pytest.fixture
        def root_uri(self, tmp_path):
            return str(tmp_path / "root")
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from blip3o_storage.errors import InvalidPathError, ObjectNotFoundError, StorageError
from blip3o_storage.storage.uri import join_uri

NAMES = ["plain.txt", "with space.jpg", "plus+sign.txt", "percent%41.txt", "hash#tag.txt",
         "unicodé-日本.txt", "a=b&c.txt", "deep/er/path/file.bin"]


def open_read(storage: Any, uri: str) -> Any:
    """``open_read`` of a backend, or the facade's ``open(uri, "rb")`` (a BinaryIO that also has ``readinto``)."""
    return storage.open_read(uri) if hasattr(storage, "open_read") else storage.open(uri, "rb")


def open_write(storage: Any, uri: str) -> Any:
    """``open_write`` of a backend, or the facade's ``open(uri, "wb")``."""
    return storage.open_write(uri) if hasattr(storage, "open_write") else storage.open(uri, "wb")


class BackendConformance:
    """The tests; a subclass provides the ``backend`` and ``root_uri`` fixtures."""

    @pytest.fixture
    def backend(self) -> Any:
        raise NotImplementedError("a BackendConformance subclass provides the 'backend' fixture")

    @pytest.fixture
    def root_uri(self) -> str:
        raise NotImplementedError("a BackendConformance subclass provides the 'root_uri' fixture")

    @pytest.fixture
    def root(self, backend: Any, root_uri: str) -> tuple[Any, str]:
        """(backend, folder URI): the folder starts empty."""
        return backend, root_uri

    def test_put_get_roundtrip_binary(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        payload = bytes(range(256)) * 40
        uri = join_uri(folder, "data/blob.bin")
        storage.put(uri, payload)
        assert storage.get(uri) == payload
        assert storage.stat(uri).size == len(payload)

    @pytest.mark.parametrize("name", NAMES)
    def test_awkward_names_roundtrip(self, root: tuple[Any, str], name: str) -> None:
        storage, folder = root
        uri = join_uri(folder, name)
        storage.put(uri, name.encode())
        assert storage.get(uri) == name.encode()
        assert storage.exists(uri)
        keys = [info.key for info in storage.list(folder)]
        assert keys == [name]

    def test_get_text_and_invalid_utf8(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        storage.put(join_uri(folder, "cap.txt"), "a caption – with ünïcode\n".encode())
        assert storage.get_text(join_uri(folder, "cap.txt")) == "a caption – with ünïcode\n"
        storage.put(join_uri(folder, "bad.txt"), b"\xff\xfe\xfa")
        with pytest.raises(StorageError, match="bad.txt"):
            storage.get_text(join_uri(folder, "bad.txt"))

    def test_ranged_get(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "range.bin")
        payload = bytes(i % 251 for i in range(10_000))
        storage.put(uri, payload)
        assert storage.get_range(uri, 0, 10) == payload[:10]
        assert storage.get_range(uri, 1234, 4321) == payload[1234:1234 + 4321]
        assert storage.get_range(uri, 9990, 10) == payload[9990:]
        assert storage.get_range(uri, 5, 0) == b""
        with pytest.raises(InvalidPathError):
            storage.get_range(uri, -1, 5)

    def test_missing_object_is_file_not_found_naming_uri(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "nope/missing.jpg")
        with pytest.raises(FileNotFoundError) as info:
            storage.get(uri)
        assert isinstance(info.value, ObjectNotFoundError)
        assert "missing.jpg" in str(info.value)
        with pytest.raises(FileNotFoundError):
            storage.stat(uri)
        with pytest.raises(FileNotFoundError):
            storage.get_range(uri, 0, 4)
        assert not storage.exists(uri)

    def test_exists_and_isdir(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        storage.put(join_uri(folder, "d/sub/f.txt"), b"x")
        assert storage.exists(join_uri(folder, "d/sub/f.txt"))
        assert storage.isdir(join_uri(folder, "d"))
        assert storage.isdir(join_uri(folder, "d/sub"))
        assert not storage.isdir(join_uri(folder, "d/sub/f.txt"))
        assert not storage.isdir(join_uri(folder, "other"))

    def test_list_recursive_and_shallow(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        for name in ["a.txt", "b/c.txt", "b/d/e.txt", "z.txt"]:
            storage.put(join_uri(folder, name), name.encode())
        recursive = [(i.key, i.size) for i in storage.list(folder)]
        assert recursive == [("a.txt", 5), ("b/c.txt", 7), ("b/d/e.txt", 9), ("z.txt", 5)]
        shallow = sorted((i.key, i.is_dir) for i in storage.list(folder, recursive=False))
        assert shallow == [("a.txt", False), ("b/", True), ("z.txt", False)]
        assert [i.key for i in storage.list(join_uri(folder, "b"))] == ["c.txt", "d/e.txt"]
        assert list(storage.list(join_uri(folder, "empty"))) == []

    def test_list_paginates_past_one_page(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        names = [f"many/{i:05d}.txt" for i in range(1105)]  # > 1000 keys: two LIST pages on S3
        for name in names:
            storage.put(join_uri(folder, name), b"")
        listed = [info.key for info in storage.list(join_uri(folder, "many"))]
        assert listed == [n.split("/", 1)[1] for n in names]

    def test_put_overwrites_and_delete(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "over.txt")
        storage.put(uri, b"one")
        storage.put(uri, b"second")
        assert storage.get(uri) == b"second"
        storage.delete(uri)
        assert not storage.exists(uri)
        storage.delete(uri)  # deleting a missing object is not an error (S3 semantics)

    def test_storage_pickles_and_still_works(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "p.txt")
        storage.put(uri, b"pickled")
        clone = pickle.loads(pickle.dumps(storage))
        assert clone.get(uri) == b"pickled"

    def test_join_rejects_escaping_relpaths(self, root: tuple[Any, str]) -> None:
        _, folder = root
        for bad in ["../etc/passwd", "a/../../b", "/abs/path.jpg", ""]:
            with pytest.raises(InvalidPathError):
                join_uri(folder, bad)

    # -- large-object methods (small objects here; the multipart paths: tests/integration/test_large_objects.py)
    def test_open_write_visible_only_after_close(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "w/streamed.bin")
        writer = open_write(storage, uri)
        for piece in (b"ab", bytearray(b"cd"), memoryview(b"ef")):
            assert writer.write(piece) == 2
        assert writer.tell() == 6
        writer.flush()
        assert not storage.exists(uri)
        writer.close()
        assert storage.get(uri) == b"abcdef"
        writer.close()  # a second close is a no-op

    def test_open_write_exception_or_abort_leaves_nothing(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "w/aborted.bin")
        with pytest.raises(RuntimeError), open_write(storage, uri) as writer:
            writer.write(b"half a checkpoint")
            raise RuntimeError("training crashed")
        assert not storage.exists(uri)
        writer = open_write(storage, uri)
        writer.write(b"x")
        writer.abort()
        assert writer.closed and not storage.exists(uri)
        assert [info.key for info in storage.list(folder)] == []
        storage.put(uri, b"old")  # an aborted overwrite keeps the old object
        with pytest.raises(RuntimeError), open_write(storage, uri) as writer:
            writer.write(b"new")
            raise RuntimeError("crashed")
        assert storage.get(uri) == b"old"

    def test_open_read_seek_tell_readinto(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "r/blob.bin")
        payload = bytes(i % 253 for i in range(50_000))
        storage.put(uri, payload)
        with open_read(storage, uri) as reader:
            assert reader.readable() and reader.seekable()
            assert reader.read(10) == payload[:10] and reader.tell() == 10
            reader.seek(-5, io.SEEK_END)
            assert reader.read() == payload[-5:]
            assert reader.read(3) == b""
            reader.seek(1000)
            buffer = bytearray(2000)
            assert reader.readinto(buffer) == 2000 and bytes(buffer) == payload[1000:3000]
            reader.seek(10, io.SEEK_CUR)
            assert reader.tell() == 3010 and reader.read(5) == payload[3010:3015]
            reader.seek(0)
            assert reader.read() == payload
        assert reader.closed

    def test_open_read_missing_names_uri(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        uri = join_uri(folder, "r/missing.pth")
        with pytest.raises(ObjectNotFoundError, match="missing.pth"):
            open_read(storage, uri)

    def test_put_file_get_file_roundtrip(self, root: tuple[Any, str], tmp_path: Path) -> None:
        storage, folder = root
        source = tmp_path / "src.bin"
        payload = os.urandom(70_000)
        source.write_bytes(payload)
        uri = join_uri(folder, "f/file.bin")
        storage.put_file(uri, source)
        assert storage.get(uri) == payload
        target = tmp_path / "deep" / "er" / "dst.bin"
        storage.get_file(uri, target)
        assert target.read_bytes() == payload
        assert sorted(p.name for p in target.parent.iterdir()) == ["dst.bin"]  # no temp file left

    def test_put_file_and_get_file_missing(self, root: tuple[Any, str], tmp_path: Path) -> None:
        storage, folder = root
        with pytest.raises(ObjectNotFoundError, match="nope.bin"):
            storage.put_file(join_uri(folder, "f/x.bin"), tmp_path / "nope.bin")
        with pytest.raises(ObjectNotFoundError, match="absent.bin"):
            storage.get_file(join_uri(folder, "f/absent.bin"), tmp_path / "out" / "absent.bin")
        out = tmp_path / "out"
        assert (list(out.iterdir()) if out.exists() else []) == []  # no file, no temp file

    def test_copy(self, root: tuple[Any, str]) -> None:
        storage, folder = root
        src, dst = join_uri(folder, "c/src.bin"), join_uri(folder, "c/sub/dst.bin")
        storage.put(src, b"copied bytes")
        storage.copy(src, dst)
        assert storage.get(dst) == b"copied bytes" and storage.get(src) == b"copied bytes"
        storage.put(src, b"changed")
        storage.copy(src, dst)  # overwrites
        assert storage.get(dst) == b"changed"
        with pytest.raises(ObjectNotFoundError, match="missing.bin"):
            storage.copy(join_uri(folder, "c/missing.bin"), dst)
