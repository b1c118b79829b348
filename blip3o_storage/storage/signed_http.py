"""A lean signed-HTTP path for the two hot requests: GetObject and PutObject.

Why: a boto3 ``get_object`` costs ~1.5 ms of client CPU (event hooks,
parameter validation, serialisation, response parsing, user-agent building)
against ~0.6 ms for the same request signed with botocore's own SigV4 signer
and sent through urllib3, and less again through the lean keep-alive transport
of :mod:`~blip3o_storage.storage.http1` used here (measured on Ceph RGW, 70 KB
objects; ``benchmarks/get_cpu.py``). A DataLoader worker decoding images on the same cores, or an
upload of 60k small files, feels that difference directly. Most of that gain
is the transport; signing is :mod:`~blip3o_storage.storage.sigv4` (~8 µs a
request against ~115 µs for botocore's :class:`~botocore.auth.S3SigV4Auth`,
to which a differential test pins it header for header).

What goes on the wire is what boto3 would send:

* the path exactly as signed: keys with ``.``/``..`` segments (``a/./b``) are
  not normalised (the request target goes on the wire as signed), so they
  reach the same object as through boto3;
* a PUT over plain http signs the body's SHA-256 (and every header, Content-MD5
  included), so a body altered in transit or replayed with another body is
  rejected; over https, like boto3's PutObject, the payload is
  ``UNSIGNED-PAYLOAD`` (TLS protects the body, Content-MD5 its integrity).
  Hashing costs ~0.04 ms per 70 KB;
* bodies are returned as stored (never decoded): an object stored
  with ``Content-Encoding: gzip`` comes back gzipped, as from boto3;
* a ranged GET must come back 206 with the ``Content-Range`` asked for
  (:func:`range_problem`); anything else raises :class:`UnexpectedResponse`.

Only the requests whose semantics are simple go this way (and the LIST and
HEAD-bucket of a command-line upload, which then needs no boto3 client at all:
~0.4 s of a 1.3 s no-op re-run was importing and building it; and HEAD object,
which shard mode sends once per tar in every DataLoader worker: importing
boto3 and building a client there cost each worker ~0.5 s of CPU, 0.9 ms a
sample of a 1,100-sample pass); everything else (multipart, bucket creation,
DELETE) stays on boto3. Errors are raised as
botocore ``ClientError`` with the server's code and status (and
:class:`~blip3o_storage.storage.http1.TransportError` for network failures,
named for the retry layer as botocore's are), so retries and error mapping are the same
as for boto3 calls. Used for path-style endpoints (Ceph RGW, MinIO), where
the URL is ``endpoint/bucket/key``.
"""
from __future__ import annotations

import os
import re
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import quote, urlsplit

from botocore.exceptions import ClientError, NoCredentialsError

from blip3o_storage.storage.config import S3Settings
from blip3o_storage.storage.http1 import ConnectionPool, Response
from blip3o_storage.storage.list_xml import ListPage, ListResponseError, parse_list_page
from blip3o_storage.storage.retry import note_request
from blip3o_storage.storage.sigv4 import S3Signer, canonical_query

_CODE_RE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]*)</Message>")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_GET_OK = {200, 206}
#: The operation each object request counts as (listeners, request accounting), as boto3 names it.
_OPERATIONS = {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject"}


class ObjectHead(NamedTuple):
    """What a HEAD object answers: size in bytes, ETag without quotes, Last-Modified in epoch seconds."""

    size: int
    etag: Optional[str]
    mtime: Optional[float]

#: Characters ``quote(key, safe="/~")`` leaves as they are (ASCII letters, digits, ``_.-~/``).
_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.\-~/]*")


class UnexpectedResponse(Exception):
    """The server answered, but not what was asked for (a ranged GET without its
    range). Final: the caller maps it to CorruptDataError naming the URI."""


def range_problem(status: int, content_range: Optional[str], start: int, end: int,
                  received: Optional[int] = None) -> Optional[str]:
    """Why an answer to ``Range: bytes=start-end`` is not those bytes, or None.

    It must be a 206 whose Content-Range starts at ``start`` and ends at ``end``,
    or earlier only where the object ends (``bytes 1000-1023/1024`` for a range
    past the end), with a body of that length. A 200 (a server or proxy that
    ignored the Range header: the whole object) or another range is an error.
    """
    asked = f"asked for bytes {start}-{end}"
    if status != 206:
        return f"{asked}, got status {status} without a range (the whole object?)"
    match = _CONTENT_RANGE_RE.fullmatch((content_range or "").strip())
    if not match:
        return f"{asked}, got Content-Range {content_range!r}"
    first, last, total = int(match.group(1)), int(match.group(2)), match.group(3)
    ends_early_at_eof = total != "*" and last < end and last == int(total) - 1
    if first != start or not (last == end or ends_early_at_eof):
        return f"{asked}, got Content-Range {content_range!r}"
    if received is not None and received != last - first + 1:
        return f"{asked}, got {received} bytes for Content-Range {content_range!r}"
    return None


def client_error(status: int, body: bytes, operation: str, retries: int = 0) -> ClientError:
    """A botocore ClientError from an S3 XML error body (or just the status)."""
    code_match = _CODE_RE.search(body or b"")
    message_match = _MESSAGE_RE.search(body or b"")
    code = code_match.group(1).decode("utf-8", "replace") if code_match else str(status)
    message = message_match.group(1).decode("utf-8", "replace") if message_match else ""
    response: Any = {"Error": {"Code": code, "Message": message},  # the fields botocore's error parser fills
                     "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries}}
    return ClientError(response, operation)


class SignedHTTP:
    """Per-process keep-alive connections (:mod:`~blip3o_storage.storage.http1`) + a SigV4
    signer (:mod:`~blip3o_storage.storage.sigv4`) for one cluster's settings.

    ``credentials`` is a callable returning botocore credentials (a boto3
    session's, so refreshable credentials keep working); it is called per
    request and is cheap for static keys. ``on_resend`` is called for each request
    sent again after a stale keep-alive connection (the backend counts it as a retry).
    """

    def __init__(self, settings: S3Settings, credentials: Any,
                 on_resend: Optional[Callable[[], None]] = None) -> None:
        if not settings.endpoint_url:
            raise ValueError("SignedHTTP needs an endpoint_url (path-style access)")
        self.settings = settings
        parts = urlsplit(settings.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"SignedHTTP needs an http(s)://host[:port] endpoint, got {endpoint_label(parts)}")
        #: The endpoint's path (if any) prefixes every request target.
        self._base_path = parts.path.rstrip("/")
        # The Host header, sent as signed.
        self._host = _host_header(settings.endpoint_url)
        self._credentials = credentials
        self._region = settings.region or "us-east-1"
        # As boto3's PutObject: over https a PUT with Content-MD5 is UNSIGNED-PAYLOAD; over http the
        # body's SHA-256 is signed.
        self._signer = S3Signer(self._region, https=parts.scheme == "https")
        verify = settings.verify
        ca_bundle = None
        if parts.scheme == "https" and verify is True:
            ca_bundle = _default_ca_bundle()
        self._pool = ConnectionPool(
            parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            max_size=settings.max_pool_connections, verify=verify, ca_bundle=ca_bundle, on_resend=self._resent)
        self._on_resend = on_resend
        #: "/bucket/" per bucket, quoted once (the per-request work is the key's quoting only).
        self._bucket_paths: Dict[str, str] = {}
        #: Called with the operation name ("GetObject", "PutObject") before each request,
        #: like botocore's ``before-call`` event (request accounting in tests and benchmarks).
        self.listeners: List[Callable[[str], None]] = []

    def close(self) -> None:
        """Close this process's idle connections."""
        self._pool.close()

    def _resent(self) -> None:
        """A request went again on a fresh connection (its idle one had been closed by the server)."""
        note_request()
        if self._on_resend is not None:
            self._on_resend()

    def _path(self, bucket: str, key: str) -> str:
        prefix = self._bucket_paths.get(bucket)
        if prefix is None:
            prefix = self._bucket_paths.setdefault(bucket, f"{self._base_path}/{quote(bucket, safe='')}/")
        # A key of only unreserved characters and '/' is its own quoting (~0.3 µs to check, ~3 µs to quote).
        return prefix + (key if _PLAIN_KEY_RE.fullmatch(key) else quote(key, safe="/~"))

    def _send(self, method: str, bucket: str, key: str, headers: Dict[str, str], body: Optional[bytes]) -> Response:
        """Sign and send on one of this process's connections.

        The request target goes on the wire exactly as signed (``.``/``..`` segments
        kept, so ``a/./b`` reaches the object boto3 would).
        """
        return self._exchange(_OPERATIONS[method], method, self._path(bucket, key), headers, body)

    def _exchange(self, operation: str, method: str, path: str, headers: Dict[str, str], body: Optional[bytes],
                  query: str = "") -> Response:
        """Count ``operation`` (listeners, the operation's request count), sign, send ``path[?query]``."""
        if self.listeners:
            for listener in self.listeners:
                listener(operation)
        note_request()
        signed = self._sign(method, path, headers, body, query)
        return self._pool.request(method, f"{path}?{query}" if query else path, signed, body)

    def _sign(self, method: str, path: str, headers: Dict[str, str], body: Optional[bytes],
              query: str = "") -> Dict[str, str]:
        """``headers`` plus Host, X-Amz-Date, X-Amz-Content-SHA256 and Authorization (SigV4,
        :mod:`~blip3o_storage.storage.sigv4`, pinned to botocore's S3 signer by a differential
        test), with this session's credentials fetched per request (refreshable ones refresh)."""
        credentials = self._credentials()
        if credentials is None:
            raise NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        return self._signer.sign(method, path, headers, body, host=self._host, access_key=frozen.access_key,
                                 secret_key=frozen.secret_key, token=frozen.token, query=query)

    def head_object(self, bucket: str, key: str) -> ObjectHead:
        """``HEAD /bucket/key``: the object's size, ETag (without quotes) and Last-Modified (epoch
        seconds), the fields boto3's HeadObject gives :meth:`S3Backend.stat`; else the server's answer
        as a ClientError (a missing object or bucket is a bare 404: a HEAD answer has no body)."""
        response = self._send("HEAD", bucket, key, {}, None)
        response.read()
        if response.status != 200:
            raise client_error(response.status, b"", "HeadObject")
        length = response.header("content-length")
        if length is None or not length.isdigit():
            raise UnexpectedResponse(f"HEAD answer without a Content-Length (got {length!r})")
        modified = response.header("last-modified")
        try:
            mtime = parsedate_to_datetime(modified).timestamp() if modified else None
        except (TypeError, ValueError):
            raise UnexpectedResponse(f"HEAD answer with an unreadable Last-Modified {modified!r}") from None
        return ObjectHead(int(length), (response.header("etag") or "").strip('"') or None, mtime)

    def get_object(self, bucket: str, key: str, byte_range: Optional[Tuple[int, int]] = None, *,
                   if_match: Optional[str] = None) -> bytes:
        """The object's bytes as stored (or ``byte_range`` = (start, end inclusive),
        checked by :func:`range_problem`); a body shorter than its Content-Length is
        an error (:class:`~blip3o_storage.storage.http1.TruncatedBody`). ``if_match`` (an
        ETag) makes a replaced object a 412 PreconditionFailed instead of other bytes."""
        data = self.get_object_below(bucket, key, None, byte_range, if_match=if_match)
        assert isinstance(data, bytes)
        return data

    def get_object_below(self, bucket: str, key: str, limit: Optional[int],
                         byte_range: Optional[Tuple[int, int]] = None, *,
                         if_match: Optional[str] = None) -> Union[bytes, Tuple[int, str]]:
        """:meth:`get_object`, except that a whole object over ``limit`` bytes is not read:
        its (size, ETag) come back instead, from the response headers, and the connection
        is dropped (the caller fetches it in parallel ranges; one wasted round trip)."""
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        response = self._send("GET", bucket, key, headers, None)
        status = response.status
        if (limit is not None and byte_range is None and status == 200 and response.length is not None
                and response.length > limit):
            response.close()  # unread body: this connection is not reused
            return response.length, (response.header("etag") or "").strip('"')
        data = response.read()
        if status not in _GET_OK:
            raise client_error(status, data, "GetObject")
        if byte_range is not None:
            problem = range_problem(status, response.header("content-range"),
                                    byte_range[0], byte_range[1], len(data))
            if problem:
                raise UnexpectedResponse(problem)
        return data

    def get_range_into(self, bucket: str, key: str, start: int, view: memoryview, *,
                       if_match: Optional[str] = None) -> None:
        """Bytes ``start .. start+len(view)`` of the object read straight from the socket into
        ``view`` (parallel downloads fill their destination buffer directly, no part-sized temp).
        The answer must be a 206 with that exact Content-Range and that many bytes."""
        end = start + len(view) - 1
        headers = {"Range": f"bytes={start}-{end}"}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        response = self._send("GET", bucket, key, headers, None)
        if response.status != 206:
            if response.status in _GET_OK:  # the whole object, not the range: do not read it
                response.close()
                raise UnexpectedResponse(range_problem(response.status, None, start, end) or "no range")
            raise client_error(response.status, response.read(), "GetObject")
        problem = range_problem(206, response.header("content-range"), start, end)
        if problem or response.length != len(view):
            response.close()
            raise UnexpectedResponse(problem or f"asked for bytes {start}-{end}, got Content-Length "
                                     f"{response.header('content-length')}")
        response.read_into(view)

    def put_object(self, bucket: str, key: str, body: bytes, content_md5: str,
                   content_type: Optional[str] = None) -> Dict[str, str]:
        """PUT ``body`` with Content-MD5 (the server rejects a corrupted body);
        returns ``ETag`` (without quotes) and the server-side-encryption headers,
        named as in boto3's PutObject response. The body is in memory, so a PUT sent on
        a connection the server had closed is sent again (:mod:`~blip3o_storage.storage.http1`)."""
        headers = {"Content-MD5": content_md5, "Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        response = self._send("PUT", bucket, key, headers, body)
        data = response.read()
        if response.status != 200:
            raise client_error(response.status, data, "PutObject")
        # Three lookups in the head, not a dict of every header (~25 µs a PUT on RGW's answer).
        result = {"ETag": (response.header("etag") or "").strip('"')}
        for header, name in (("x-amz-server-side-encryption", "ServerSideEncryption"),
                             ("x-amz-server-side-encryption-customer-algorithm", "SSECustomerAlgorithm")):
            value = response.header(header)
            if value:
                result[name] = value
        return result


    # -- bucket-level requests: LIST and HEAD bucket ------------------------------------------
    def _send_to_bucket(self, method: str, bucket: str, params: Mapping[str, str], operation: str) -> Response:
        """Sign and send ``method /bucket?params`` (no body) on one of this process's connections."""
        return self._exchange(operation, method, f"{self._base_path}/{quote(bucket, safe='')}", {}, None,
                              canonical_query(params))

    def list_objects_v2(self, bucket: str, prefix: str = "", *, delimiter: Optional[str] = None,
                        token: Optional[str] = None, max_keys: Optional[int] = None) -> ListPage:
        """One page of ``ListObjectsV2`` (keys asked for URL-encoded and decoded, as boto3 does:
        :mod:`~blip3o_storage.storage.list_xml`). An answer that is not a listing raises
        :class:`UnexpectedResponse`."""
        params = {"list-type": "2", "encoding-type": "url", "prefix": prefix}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        if max_keys is not None:
            params["max-keys"] = str(max_keys)
        response = self._send_to_bucket("GET", bucket, params, "ListObjectsV2")
        data = response.read()
        if response.status != 200:
            raise client_error(response.status, data, "ListObjectsV2")
        try:
            return parse_list_page(data)
        except ListResponseError as exc:
            raise UnexpectedResponse(str(exc)) from None

    def head_bucket(self, bucket: str) -> None:
        """``HEAD /bucket``: returns if it exists and these credentials may see it; else the
        server's answer as a ClientError (a 404 names no code: the body of a HEAD is empty)."""
        response = self._send_to_bucket("HEAD", bucket, {}, "HeadBucket")
        response.read()
        if response.status != 200:
            raise client_error(response.status, b"", "HeadBucket")


def endpoint_label(parts: Any) -> str:
    """scheme://host:port of a split URL, without any user:password@."""
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _host_header(url: str) -> str:
    """The Host header for ``url``, as http.client and botocore write it (no default port)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    default = 443 if parts.scheme == "https" else 80
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def _default_ca_bundle() -> Optional[str]:
    """The CA bundle botocore would use (AWS_CA_BUNDLE, else certifi's)."""
    env = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE")
    if env:
        return env
    from botocore.httpsession import get_cert_path
    return get_cert_path(True)
