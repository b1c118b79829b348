"""Large-object transfers on one S3 backend: parallel ranged GETs, files, copies.

Everything here is made of the backend's single requests (each with its own
retries and deadline through ``S3Backend._run``), run on the backend's
per-process pool with at most ``max_concurrency`` in flight
(:func:`~blip3o_storage.storage.parallel.run_bounded`), so memory is part size
x concurrency (128 MiB at 16 MiB x 8), not the object's size:

* every ranged GET of one object is ``If-Match`` the ETag seen first: an object
  replaced mid-download is an ObjectChangedError, never a mix of two versions;
* downloads go to a temp file in the destination folder, ``os.replace``d into
  place when whole; nothing is left behind on failure;
* uploads read the file part by part in the workers (``os.pread``), check that
  its size did not change, and abort the multipart upload on any failure.

Why 16 MiB parts and 8 in flight (the defaults of ``S3Settings``): torch.save of a
1 GiB state dict through ``open_write`` then torch.load through ``open_read`` on the
dev Ceph RGW (2 shared cores, two interleaved rounds, MB/s save / load):
16 MiB x 8: 112 / 199 and 105 / 243; 8 MiB x 10 (aws s3 cp's own): 85 / 232 and
95 / 232; 8 MiB x 16: 92 / 292 and 104 / 263; 32 MiB x 8: 94 / 226 and 93 / 231.
16 x 8 saves fastest; memory is 144 MiB of part buffers at most.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Union

from blip3o_storage.errors import CorruptDataError, InvalidPathError, ObjectNotFoundError, StorageError
from blip3o_storage.storage.backend import write_atomically
from blip3o_storage.storage.multipart_writer import MultipartUpload
from blip3o_storage.storage.parallel import run_bounded
from blip3o_storage.storage.part_sizing import MAX_SINGLE_PUT, effective_part_size, part_ranges

if TYPE_CHECKING:
    from blip3o_storage.storage.s3_backend import S3Backend

logger = logging.getLogger(__name__)


def _part_size(backend: S3Backend, size: int) -> int:
    return effective_part_size(size, backend.settings.multipart_chunksize)


#: Ranged GETs are not cut smaller than this (each costs a request: ~1 ms of client CPU and a round trip).
MIN_READ_PIECE = 1 << 20


def _read_piece(backend: S3Backend, length: int) -> int:
    """Piece size for reading ``length`` bytes: the part size, but small enough that every one of
    ``max_concurrency`` requests has a piece (a 64 MiB tensor is 8 x 8 MiB, not 4 x 16 MiB), at least 1 MiB.
    Ranged GETs, unlike upload parts, have no 5 MiB minimum."""
    settings = backend.settings
    return max(MIN_READ_PIECE, min(settings.multipart_chunksize, -(-length // settings.transfer_concurrency)))


def fetch_into(backend: S3Backend, uri: str, etag: Optional[str], start: int, view: memoryview) -> None:
    """Fill ``view`` with the object's bytes from ``start``: parallel ranged GETs of one part each,
    each read straight into its slice of ``view``."""
    def part(offset: int, length: int) -> Callable[[], None]:
        def task() -> None:
            backend._get_range_into(uri, start + offset, view[offset:offset + length], if_match=etag)
        return task
    ranges = part_ranges(len(view), _read_piece(backend, len(view)))
    if len(ranges) == 1:
        part(*ranges[0])()
        return
    run_bounded(backend.transfer_pool, (part(o, n) for o, n in ranges), backend.settings.transfer_concurrency)


def get_large(backend: S3Backend, uri: str, size: int, etag: str) -> bytes:
    """The whole object of ``size`` bytes (ETag ``etag``), as parallel ranged GETs into one buffer."""
    buffer = bytearray(size)
    fetch_into(backend, uri, etag or None, 0, memoryview(buffer))
    return bytes(buffer)


def put_large(backend: S3Backend, uri: str, data: bytes, content_type: Optional[str]) -> str:
    """A multipart upload of ``data`` from memoryview slices, parts in parallel."""
    view = memoryview(data).cast("B")
    upload = MultipartUpload(backend, uri, content_type)
    try:
        for number, (offset, length) in enumerate(part_ranges(len(view), _part_size(backend, len(view))), 1):
            upload.send(number, functools.partial(_slice, view, offset, length))
    except BaseException:
        upload.abort()
        raise
    return upload.complete()


def _slice(view: memoryview, offset: int, length: int) -> bytes:
    return bytes(view[offset:offset + length])


def put_file(backend: S3Backend, uri: str, local_path: str, content_type: Optional[str]) -> str:
    """Upload ``local_path``: one PUT up to the threshold, else parts read with ``os.pread`` in the workers."""
    backend._parse(uri)
    try:
        fd = os.open(local_path, os.O_RDONLY)
    except FileNotFoundError:
        raise ObjectNotFoundError(f"{local_path}: no such file (upload to {uri})") from None
    except IsADirectoryError:
        raise InvalidPathError(f"{local_path}: is a directory, not a file (upload to {uri})") from None
    try:
        size = os.fstat(fd).st_size
        if size <= backend.settings.multipart_threshold:
            data = _pread_exact(fd, size, 0, local_path)
            return backend.put_single(uri, data, content_type)
        upload = MultipartUpload(backend, uri, content_type)
        try:
            for number, (offset, length) in enumerate(part_ranges(size, _part_size(backend, size)), 1):
                upload.send(number, functools.partial(_pread_exact, fd, length, offset, local_path))
            if os.fstat(fd).st_size != size:
                raise StorageError(f"{local_path} changed size while it was being uploaded to {uri}; not uploaded")
        except BaseException:
            upload.abort()
            raise
        return upload.complete()
    finally:
        os.close(fd)


def _pread_exact(fd: int, length: int, offset: int, path: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise StorageError(f"{path}: shrank while being uploaded (read {len(data)} of {length} bytes at {offset})")
    return data


def get_file(backend: S3Backend, uri: str, local_path: str) -> None:
    """Download to ``local_path`` through a temp file in its folder; nothing is left on failure."""
    info = backend.stat(uri)
    if os.path.isdir(local_path):
        raise InvalidPathError(f"{local_path}: is a directory; give the file path to download {uri} to")

    def fill(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            if info.size <= backend.settings.multipart_threshold:
                data = backend._get_range(uri, 0, info.size, if_match=info.etag) if info.size else b""
                if len(data) != info.size:
                    raise CorruptDataError(f"{uri}: got {len(data)} bytes, the object has {info.size}")
                _write_all(fd, data, 0)
            else:
                os.ftruncate(fd, info.size)
                run_bounded(backend.transfer_pool, _download_parts(backend, uri, info.etag, info.size, fd),
                            backend.settings.transfer_concurrency)
        finally:
            os.close(fd)
    write_atomically(local_path, fill)


def _download_parts(backend: S3Backend, uri: str, etag: Optional[str], size: int,
                    fd: int) -> Iterator[Callable[[], None]]:
    for offset, length in part_ranges(size, _part_size(backend, size)):
        def task(o: int = offset, n: int = length) -> None:
            buffer = bytearray(n)
            backend._get_range_into(uri, o, memoryview(buffer), if_match=etag)
            _write_all(fd, buffer, o)
        yield task


def _write_all(fd: int, data: Union[bytes, bytearray], offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def copy(backend: S3Backend, src_uri: str, dst_uri: str) -> None:
    """Server-side copy within one cluster: CopyObject (If-Match the source's ETag) up to the
    threshold; above it, parallel UploadPartCopy of part-sized ranges (one CopyObject of a
    multi-GB object can outlast the read timeout, and is refused above 5 GiB)."""
    src, dst = backend._parse(src_uri), backend._parse(dst_uri)
    info = backend.stat(src_uri)
    source = {"Bucket": src.bucket, "Key": src.key}
    match = {"CopySourceIfMatch": f'"{info.etag}"'} if info.etag else {}
    if info.size <= min(backend.settings.multipart_threshold, MAX_SINGLE_PUT):
        backend.call(dst_uri, f"copy from {src_uri}", lambda client: client.copy_object(
            Bucket=dst.bucket, Key=dst.key, CopySource=source, **match))
        return
    upload = MultipartUpload(backend, dst_uri)
    try:
        for number, (offset, length) in enumerate(part_ranges(info.size, _part_size(backend, info.size)), 1):
            def sender(n: int = number, o: int = offset, size: int = length) -> tuple:
                response = backend.call(dst_uri, f"copy part {n} from {src_uri}", lambda c: c.upload_part_copy(
                    Bucket=dst.bucket, Key=dst.key, UploadId=upload.upload_id, PartNumber=n, CopySource=source,
                    CopySourceRange=f"bytes={o}-{o + size - 1}", **match))
                return str(response["CopyPartResult"]["ETag"]), None
            upload.send_with(number, sender)
    except BaseException:
        upload.abort()
        raise
    upload.complete(check_etag=False)
    copied = backend.stat(dst_uri).size
    if copied != info.size:
        raise CorruptDataError(f"{dst_uri}: the copy of {src_uri} has {copied} bytes, not {info.size}")
