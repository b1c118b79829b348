"""The facade: one object that routes any path or URI to the right backend.

``Storage(ceph_config).get("cluster:s3://bucket/key")`` and
``Storage().get("/local/file")`` look the same to the caller; S3 backends are
made per cluster on first use, each with its own lazily-created client.
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, BinaryIO, Dict, Iterator, Mapping, Optional, Union, cast

from blip3o_storage.errors import InvalidPathError
from blip3o_storage.storage.backend import LocalPath, ObjectInfo, StorageBackend
from blip3o_storage.storage.config import S3Settings, StorageConfig, load_config
from blip3o_storage.storage.local_backend import LocalBackend
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.storage.uri import PathLike, join_uri, parse_uri

ConfigLike = Union[None, str, os.PathLike, Mapping[str, Any], StorageConfig, S3Settings]


class Storage(ProcessLocal):
    """Route reads and writes for local paths and ``[cluster:]s3://`` URIs.

    The config is loaded lazily too, so a Storage for local-only work never
    needs credentials. The per-process clients live in the backends (each a
    :class:`~blip3o_storage.storage.process_state.ProcessLocal`), so pickling
    (DataLoader workers) carries no client; the facade's own per-process state
    is the lock that guards adding a backend.
    """

    _process_state = ("_lock",)

    def __init__(self, ceph_config: ConfigLike = None, **overrides: Any) -> None:
        self._config_source = ceph_config
        self._overrides = overrides
        self._config: Optional[StorageConfig] = None
        self._s3: Dict[str, S3Backend] = {}
        self._local = LocalBackend()
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage(clusters={sorted(self._s3)})"

    @property
    def config(self) -> StorageConfig:
        if self._config is None:
            self._config = load_config(self._config_source, **self._overrides)
        return self._config

    def backend_for(self, uri: PathLike) -> StorageBackend:
        """The backend that serves ``uri``."""
        parsed = parse_uri(uri)
        if not parsed.is_s3:
            return self._local
        return self._s3_backend(parsed.cluster)

    def s3_backend(self, uri: PathLike) -> S3Backend:
        """The S3 backend that serves the ``[cluster:]s3://`` URI ``uri``
        (for S3-only work: uploads, multipart, bucket calls, presigned URLs);
        InvalidPathError for a local path."""
        parsed = parse_uri(uri)
        if not parsed.is_s3:
            raise InvalidPathError(f"{os.fspath(uri)!r} is not an S3 URI ([cluster:]s3://bucket/key)")
        return self._s3_backend(parsed.cluster)

    def _s3_backend(self, cluster: Optional[str]) -> S3Backend:
        name = cluster or self.config.default_cluster
        backend = self._s3.get(name)
        if backend is None:
            settings = self.config.settings_for(name)
            self._check_process()
            with self._lock:
                backend = self._s3.setdefault(name, S3Backend(settings, cluster=name))
        return backend

    def retry_stats(self) -> Dict[str, Dict[str, object]]:
        """Retry counters per cluster, in this process."""
        return {name: backend.stats.snapshot() for name, backend in self._s3.items()}

    @staticmethod
    def join(folder: PathLike, relpath: str) -> str:
        return join_uri(folder, relpath)

    # -- protocol, delegated --------------------------------------------
    def get(self, uri: PathLike) -> bytes:
        parsed = parse_uri(uri)  # once: the S3 backend takes it as is
        if parsed.is_s3:
            return self._s3_backend(parsed.cluster).get(os.fspath(uri), parsed=parsed)
        return self._local.get(os.fspath(uri))

    def get_text(self, uri: PathLike, encoding: str = "utf-8") -> str:
        return self.backend_for(uri).get_text(os.fspath(uri), encoding)

    def get_range(self, uri: PathLike, start: int, length: int) -> bytes:
        return self.backend_for(uri).get_range(os.fspath(uri), start, length)

    def exists(self, uri: PathLike) -> bool:
        return self.backend_for(uri).exists(os.fspath(uri))

    def isdir(self, uri: PathLike) -> bool:
        return self.backend_for(uri).isdir(os.fspath(uri))

    def isfile(self, uri: PathLike) -> bool:
        return self.backend_for(uri).isfile(os.fspath(uri))

    def stat(self, uri: PathLike) -> ObjectInfo:
        return self.backend_for(uri).stat(os.fspath(uri))

    def put(self, uri: PathLike, data: bytes, content_type: Optional[str] = None) -> None:
        parsed = parse_uri(uri)
        if parsed.is_s3:
            self._s3_backend(parsed.cluster).put(os.fspath(uri), data, content_type, parsed=parsed)
        else:
            self._local.put(os.fspath(uri), data, content_type)

    def list(self, uri: PathLike, recursive: bool = True) -> Iterator[ObjectInfo]:
        return self.backend_for(uri).list(os.fspath(uri), recursive)

    def delete(self, uri: PathLike) -> None:
        self.backend_for(uri).delete(os.fspath(uri))

    # -- large objects ---------------------------------------------------
    def open(self, uri: PathLike, mode: str = "rb", content_type: Optional[str] = None) -> BinaryIO:
        """A binary file object on ``uri``: ``"rb"`` a seekable reader (parallel ranged GETs on S3),
        ``"wb"`` a writer whose bytes become the object only when it is closed without error
        (a multipart upload on S3 above ``multipart_threshold``; ``abort()`` drops it). Both
        work as the file of ``torch.save`` / ``torch.load``."""
        backend = self.backend_for(uri)
        if mode in ("rb", "br"):
            return backend.open_read(os.fspath(uri))
        if mode in ("wb", "bw"):
            return cast(BinaryIO, backend.open_write(os.fspath(uri), content_type))
        raise InvalidPathError(f"{os.fspath(uri)}: open mode {mode!r} is not supported; use 'rb' or 'wb'")

    def put_file(self, uri: PathLike, local_path: LocalPath, content_type: Optional[str] = None) -> Optional[str]:
        """Upload the local file ``local_path`` to ``uri`` (streamed; parallel parts on S3); the ETag if any."""
        return self.backend_for(uri).put_file(os.fspath(uri), local_path, content_type)

    def get_file(self, uri: PathLike, local_path: LocalPath) -> None:
        """Download ``uri`` to the local file ``local_path`` (temp file + rename; nothing partial on failure)."""
        self.backend_for(uri).get_file(os.fspath(uri), local_path)

    def copy(self, src: PathLike, dst: PathLike) -> None:
        """Copy one object/file to another URI: server-side within one backend, an upload for local
        to S3, a download for S3 to local, and streamed through memory (part-sized pieces) between
        two S3 clusters."""
        source, target = self.backend_for(src), self.backend_for(dst)
        src_uri, dst_uri = os.fspath(src), os.fspath(dst)
        if source is target:
            source.copy(src_uri, dst_uri)
        elif source is self._local:
            target.put_file(dst_uri, src_uri)
        elif target is self._local:
            source.get_file(src_uri, dst_uri)
        else:
            self._stream_copy(source, target, src_uri, dst_uri)

    @staticmethod
    def _stream_copy(source: StorageBackend, target: StorageBackend, src_uri: str, dst_uri: str) -> None:
        """Read ``src_uri`` and write ``dst_uri`` in 16 MiB pieces (memory: the two streams' buffers)."""
        with source.open_read(src_uri) as reader, target.open_write(dst_uri) as writer:
            shutil.copyfileobj(reader, writer, 16 << 20)
