"""Part sizes and byte ranges of multipart transfers, and the size strings of config files.

One place for S3's limits and for how an object is cut into parts, shared by the
streaming uploads and downloads in ``storage/`` and by the dataset uploader in
``transfer/upload.py``: upload and verify must cut a file the same way, or their
multipart ETags (MD5 of the part MD5s, ``-N``) disagree.

Part sizing is s3transfer's own ``ChunksizeAdjuster`` (what boto3's
``upload_file`` and ``aws s3 cp`` use): the configured part size is doubled
until the object fits in 10,000 parts, then kept within 5 MiB..5 GiB.
"""
from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Iterable, List, Tuple, Union

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * GiB  # S3's maximum part size
MAX_PARTS = 10_000  # S3's maximum number of parts
MAX_SINGLE_PUT = 5 * GiB  # S3's (and RGW's default rgw_max_put_size) limit of one PutObject / CopyObject

@functools.cache
def _part_sizer() -> Any:
    """s3transfer's sizer, imported on first use: ``s3transfer.utils`` pulls in botocore
    (~0.18 s), which a command-line upload of small files otherwise never loads."""
    from s3transfer.utils import ChunksizeAdjuster
    return ChunksizeAdjuster(max_size=MAX_PART_SIZE, min_size=MIN_PART_SIZE, max_parts=MAX_PARTS)


def effective_part_size(size: int, part_size: int) -> int:
    """The part size actually used for ``size`` bytes, by s3transfer's ``ChunksizeAdjuster``:
    ``part_size`` doubled until there are at most 10,000 parts, then kept within S3's
    5 MiB..5 GiB. Upload and verify both size parts here, so their ETags agree."""
    return int(_part_sizer().adjust_chunksize(part_size, size))


def part_ranges(size: int, part_size: int) -> List[Tuple[int, int]]:
    """(offset, length) of each ``part_size`` piece of ``size`` bytes, the last one shorter; none for 0."""
    return [(offset, min(part_size, size - offset)) for offset in range(0, size, part_size)]


def etag_of_parts(digests: Iterable[bytes]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' binary MD5s, then ``-<parts>``."""
    listed = list(digests)
    return f"{hashlib.md5(b''.join(listed), usedforsecurity=False).hexdigest()}-{len(listed)}"


_SIZE_RE = re.compile(r"(\d+)\s*([kmgt]?)(i?b)?", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": GiB * KiB}


def parse_size(value: Union[int, str]) -> int:
    """Bytes from an int or a string like ``"67108864"``, ``"64MB"``, ``"16MiB"``, ``"1 GB"``.

    As in the AWS CLI's ``multipart_chunksize`` setting (which users copy from), KB/MB/GB are
    binary (1024-based), the same as KiB/MiB/GiB. ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        return value
    match = _SIZE_RE.fullmatch(str(value).strip())
    if not match:
        raise ValueError(value)
    return int(match.group(1)) * _UNITS[match.group(2).lower()]
