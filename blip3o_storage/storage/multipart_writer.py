"""Multipart uploads whose parts go out in background threads, and the streaming writer on top.

:class:`MultipartUpload` is one upload: parts are sent on the backend's pool,
at most ``max_concurrency`` in flight, each with its Content-MD5 (the server
rejects a damaged part); :meth:`MultipartUpload.complete` checks the ETag the
server gives the object against the one computed from the parts' MD5s, and any
failure aborts the upload (no object, no parts kept).

:class:`MultipartWriter` is ``open_write`` for S3: it buffers up to the
multipart threshold and then sends one PUT (with Content-MD5) on close; past
the threshold it starts a multipart upload and sends each part as it fills.
Memory is at most part size x (max_concurrency + 1) (one part filling, the
rest in flight; 144 MiB at 16 MiB x 8), plus the threshold's worth before the
upload starts (64 MiB by default, sent at once as 4 parts), whatever the
object size: ``torch.save`` of a 10 GB state dict into it never holds a copy.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple, Union

from blip3o_storage.errors import CorruptDataError, StorageError
from blip3o_storage.storage.object_writer import ObjectWriter
from blip3o_storage.storage.parallel import InFlight
from blip3o_storage.storage.part_sizing import MAX_PARTS, etag_of_parts

if TYPE_CHECKING:
    from blip3o_storage.storage.s3_backend import S3Backend

logger = logging.getLogger(__name__)

#: Sends one part: its (ETag, MD5 digest or None for a server-side copy).
PartSender = Callable[[], Tuple[str, Optional[bytes]]]


class MultipartUpload:
    """One multipart upload of ``uri``, parts sent in the background."""

    def __init__(self, backend: S3Backend, uri: str, content_type: Optional[str] = None) -> None:
        self.backend = backend
        self.uri = uri
        self.upload_id = backend.create_multipart_upload(uri, content_type)
        self._parts: Dict[int, Tuple[str, Optional[bytes]]] = {}
        self._in_flight = InFlight(backend.transfer_pool, backend.settings.transfer_concurrency)
        self._closed = False

    def send(self, number: int, data: Callable[[], Union[bytes, bytearray]],
             release: Optional[Callable[[], None]] = None) -> None:
        """Queue part ``number`` (1-based); ``data()`` runs in the worker (a file read, a slice copy);
        ``release()`` runs once the part is sent or has failed (the writer recycles its buffer)."""
        def sender() -> Tuple[str, Optional[bytes]]:
            try:
                body = data()
                digest = hashlib.md5(body, usedforsecurity=False).digest()
                return self.backend.upload_part(self.uri, self.upload_id, number, body, md5_digest=digest), digest
            finally:
                if release is not None:
                    release()
        self.send_with(number, sender)

    def send_with(self, number: int, sender: PartSender) -> None:
        """Queue part ``number`` sent by ``sender`` (e.g. a server-side UploadPartCopy)."""
        if number > MAX_PARTS:
            raise StorageError(f"{self.uri}: more than {MAX_PARTS} parts (S3's limit); raise multipart_chunksize")

        def task() -> None:
            self._parts[number] = sender()
        self._in_flight.submit(task)

    def complete(self, check_etag: bool = True) -> str:
        """Wait for every part, join them into the object; its ETag. Aborts on any failure."""
        try:
            self._in_flight.finish()
            numbers = sorted(self._parts)
            if numbers != list(range(1, len(numbers) + 1)):
                raise StorageError(f"{self.uri}: parts {numbers[:5]}... are not 1..N; upload aborted")
            etag = self.backend.complete_multipart_upload(
                self.uri, self.upload_id, [(n, self._parts[n][0]) for n in numbers])
            digests = [self._parts[n][1] for n in numbers]
            if check_etag and all(d is not None for d in digests):
                expected = etag_of_parts(d for d in digests if d is not None)
                if etag != expected:
                    raise CorruptDataError(
                        f"{self.uri}: the store gave the multipart object ETag {etag!r}, not {expected!r} computed "
                        f"from the parts sent; the object may hold other bytes: upload it again")
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return etag

    def abort(self) -> None:
        """Stop sending and abort the upload (its parts are dropped by the store); best effort, once."""
        if self._closed:
            return
        self._closed = True
        self._in_flight.cancel()
        try:
            self.backend.abort_multipart_upload(self.uri, self.upload_id)
        except Exception as exc:  # noqa: BLE001 - best effort; the original error matters
            logger.warning("%s: could not abort multipart upload %s (%s); abort_incomplete_uploads() or a "
                           "lifecycle rule removes its parts", self.uri, self.upload_id, type(exc).__name__)


class MultipartWriter(ObjectWriter):
    """``open_write`` on S3: one PUT up to the threshold, a streamed multipart upload above it."""

    def __init__(self, backend: S3Backend, uri: str, content_type: Optional[str] = None) -> None:
        super().__init__(uri)
        backend._parse(uri)  # a bad URI fails here, not at close
        self.backend = backend
        self.content_type = content_type
        self._threshold = backend.settings.multipart_threshold
        self._part_size = backend.settings.multipart_chunksize
        self._buffers: List[bytearray] = []  # full parts not yet sent, then the one filling
        #: Part buffers back from sent parts, reused: a fixed set of allocations instead of one
        #: 16 MiB bytearray per part (glibc keeps freed ones in its heap; seen as +65 MiB of RSS on 1 GiB).
        self._free: List[bytearray] = []
        self._free_lock = threading.Lock()
        self._fill = 0  # bytes in the last buffer
        self._buffered = 0
        self._upload: Optional[MultipartUpload] = None
        self._number = 0
        self.etag: Optional[str] = None

    def _write(self, view: memoryview) -> None:
        while view.nbytes:
            if not self._buffers or self._fill == self._part_size:
                self._buffers.append(self._new_buffer())
                self._fill = 0
            take = min(self._part_size - self._fill, view.nbytes)
            self._buffers[-1][self._fill:self._fill + take] = view[:take]
            self._fill += take
            self._buffered += take
            view = view[take:]
            if self._upload is None and self._buffered > self._threshold:
                self._upload = MultipartUpload(self.backend, self.uri, self.content_type)
            if self._upload is not None:
                self._send_full_parts()

    def _new_buffer(self) -> bytearray:
        with self._free_lock:
            if self._free:
                return self._free.pop()
        return bytearray(self._part_size)

    def _send_full_parts(self) -> None:
        assert self._upload is not None
        while self._buffers and (len(self._buffers) > 1 or self._fill == self._part_size):
            self._send(self._buffers.pop(0))

    def _send(self, buffer: bytearray) -> None:
        assert self._upload is not None
        self._number += 1
        self._buffered -= len(buffer)
        def body() -> bytearray:
            return buffer

        def release() -> None:
            if len(buffer) == self._part_size:  # the short tail is not reused
                with self._free_lock:
                    self._free.append(buffer)
        self._upload.send(self._number, body, release)

    def _commit(self) -> None:
        if self._buffers and self._fill < self._part_size:
            del self._buffers[-1][self._fill:]  # the tail
        if self._upload is None:
            data = b"".join(self._buffers)  # at most the threshold (64 MiB), once
            self._buffers = []
            self.etag = self.backend.put_single(self.uri, data, self.content_type)
            return
        while self._buffers:
            self._send(self._buffers.pop(0))
        self.etag = self._upload.complete()
        self._free = []

    def _abort(self) -> None:
        self._buffers = []
        self._free = []
        if self._upload is not None:
            self._upload.abort()
