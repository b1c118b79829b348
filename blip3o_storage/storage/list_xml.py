"""One ListObjectsV2 answer (S3's XML) read into a :class:`ListPage`, for the signed-HTTP LIST.

Why not boto3's parser: a no-op re-upload is mostly LIST, and boto3 costs a client
(85-140 ms of CPU to build, plus ~0.35 s of imports for a command-line tool) and parses
each 1,000-key page through its generic XML shape walker. The stdlib's C ElementTree
reads the same page in a few ms. What the answer means is boto3's: keys are asked for
with ``encoding-type=url`` and decoded (``unquote_plus``, as botocore's
``decode_list_object_v2``) only when the answer says it is encoded, so keys with
control characters or ``+`` come back as stored; ETags lose their quotes; LastModified
becomes epoch seconds. ElementTree resolves no external entities, and the expat it
uses (>= 2.4.1) refuses entity-expansion bombs.
"""
from __future__ import annotations

import datetime
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import List, Optional, Tuple
from urllib.parse import unquote_plus

#: (key, size, ETag without quotes or None, LastModified as epoch seconds or None)
Listed = Tuple[str, int, Optional[str], Optional[float]]


class ListResponseError(ValueError):
    """The body of a 200 answer to a LIST is not a ListObjectsV2 result we can read."""


@dataclass
class ListPage:
    """One page of a listing, keys as stored (decoded)."""

    objects: List[Listed] = field(default_factory=list)
    prefixes: List[str] = field(default_factory=list)
    truncated: bool = False
    next_token: Optional[str] = None


def _timestamp(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        from botocore.utils import parse_timestamp  # any other form botocore accepts (rare: imported then)
        return float(parse_timestamp(text).timestamp())


def parse_list_page(body: bytes) -> ListPage:
    """The :class:`ListPage` of a ListObjectsV2 result; ListResponseError if it is not one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ListResponseError(f"the LIST answer is not XML ({exc})") from None
    tag = root.tag
    ns = tag[:tag.index("}") + 1] if tag.startswith("{") else ""
    if tag[len(ns):] != "ListBucketResult":
        raise ListResponseError(f"the LIST answer is a <{tag[len(ns):]}>, not a <ListBucketResult>")
    key_tag, size_tag, etag_tag, modified_tag, prefix_tag = (ns + name for name in (
        "Key", "Size", "ETag", "LastModified", "Prefix"))
    decode = (root.findtext(ns + "EncodingType") or "").lower() == "url"
    page = ListPage()
    contents, common = ns + "Contents", ns + "CommonPrefixes"
    for child in root:
        if child.tag == contents:
            key = child.findtext(key_tag)
            size = child.findtext(size_tag)
            if key is None or size is None:
                raise ListResponseError("the LIST answer has an entry without Key or Size")
            try:
                length = int(size)
            except ValueError:
                raise ListResponseError(f"the LIST answer gives Size {size!r} for {key!r}") from None
            etag = (child.findtext(etag_tag) or "").strip('"') or None
            page.objects.append((unquote_plus(key) if decode else key, length, etag,
                                 _timestamp(child.findtext(modified_tag))))
        elif child.tag == common:
            prefix = child.findtext(prefix_tag)
            if prefix is not None:
                page.prefixes.append(unquote_plus(prefix) if decode else prefix)
    page.truncated = (root.findtext(ns + "IsTruncated") or "").strip().lower() == "true"
    page.next_token = root.findtext(ns + "NextContinuationToken") or None
    return page
