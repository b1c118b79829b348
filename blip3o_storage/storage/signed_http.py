"""A lean signed-HTTP path for the two hot requests: GetObject and PutObject.

Why: a boto3 ``get_object`` costs ~1.5 ms of client CPU (event hooks,
parameter validation, serialisation, response parsing, user-agent building)
against ~0.6 ms for the same request signed with botocore's own SigV4 signer
and sent through urllib3 (measured on Ceph RGW, 70 KB objects; see
``benchmarks/``). A DataLoader worker decoding images on the same cores, or an
upload of 60k small files, feels that difference directly. Most of that gain
is the transport; signing is botocore's :class:`~botocore.auth.S3SigV4Auth`
(security-critical code we do not keep a copy of), ~0.05 ms a request.

What goes on the wire is what boto3 would send:

* the path exactly as signed: keys with ``.``/``..`` segments (``a/./b``) are
  not normalised by urllib3 (a request target given to the connection pool is
  only percent-encoded), so they reach the same object as through boto3;
* a PUT over plain http signs the body's SHA-256 (and every header, Content-MD5
  included), so a body altered in transit or replayed with another body is
  rejected; over https, like boto3's PutObject, the payload is
  ``UNSIGNED-PAYLOAD`` (TLS protects the body, Content-MD5 its integrity).
  Hashing costs ~0.04 ms per 70 KB;
* bodies are returned as stored (``decode_content=False``): an object stored
  with ``Content-Encoding: gzip`` comes back gzipped, as from boto3;
* a ranged GET must come back 206 with the ``Content-Range`` asked for
  (:func:`range_problem`); anything else raises :class:`UnexpectedResponse`.

Only the requests whose semantics are simple go this way; everything else
(LIST, HEAD, multipart, bucket calls) stays on boto3. Errors are raised as
botocore ``ClientError`` with the server's code and status (and urllib3's own
exceptions for network failures), so retries and error mapping are the same
as for boto3 calls. Used for path-style endpoints (Ceph RGW, MinIO), where
the URL is ``endpoint/bucket/key``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError, IncompleteReadError, NoCredentialsError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from blip3o_storage.storage.config import S3Settings
from blip3o_storage.storage.retry import note_request

_CODE_RE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]*)</Message>")
_CONTENT_RANGE_RE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_GET_OK = {200, 206}
#: Ranged reads into a buffer copy through pieces of this size (1 MiB: the copy stays in cache,
#: and a part in flight costs its buffer plus 1 MiB, not twice its size).
_READ_CHUNK = 1 << 20


class UnexpectedResponse(Exception):
    """The server answered, but not what was asked for (a ranged GET without its
    range). Final: the caller maps it to CorruptDataError naming the URI."""


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """Path-style URL, the key encoded the way botocore encodes S3 keys."""
    return f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"


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
    """Per-process urllib3 pool + botocore's SigV4 signer for one cluster's settings.

    ``credentials`` is a callable returning botocore credentials (a boto3
    session's, so refreshable credentials keep working); it is called per
    request and is cheap for static keys.
    """

    def __init__(self, settings: S3Settings, credentials: Any) -> None:
        if not settings.endpoint_url:
            raise ValueError("SignedHTTP needs an endpoint_url (path-style access)")
        self.settings = settings
        self._endpoint = settings.endpoint_url
        # The Host header, sent as signed; given to the signer it saves botocore parsing it from
        # the URL twice per request (~30% of its signing time).
        self._host = _host_header(settings.endpoint_url)
        self._credentials = credentials
        self._region = settings.region or "us-east-1"
        verify = settings.verify
        tls: Dict[str, Any] = {}
        if settings.endpoint_url.startswith("https"):
            if verify is False:
                tls = {"cert_reqs": "CERT_NONE"}
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
            else:
                tls = {"cert_reqs": "CERT_REQUIRED",
                       "ca_certs": verify if isinstance(verify, str) else _default_ca_bundle()}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=settings.max_pool_connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout), **tls)
        #: Called with the operation name ("GetObject", "PutObject") before each request,
        #: like botocore's ``before-call`` event (request accounting in tests and benchmarks).
        self.listeners: List[Callable[[str], None]] = []

    def _send(self, method: str, bucket: str, key: str, headers: Dict[str, str], body: Optional[bytes],
              preload_content: bool) -> Any:
        """Sign with botocore's S3 signer and send through this process's pool.

        The request target goes to the connection pool as a path, which urllib3
        only percent-encodes: through ``PoolManager.request`` it would remove
        ``.``/``..`` segments after signing (403 SignatureDoesNotMatch on RGW).
        """
        operation = "GetObject" if method == "GET" else "PutObject"
        for listener in self.listeners:
            listener(operation)
        note_request()
        url = object_url(self._endpoint, bucket, key)
        pool = self._pool.connection_from_url(url)
        return pool.urlopen(method, urlsplit(url).path, body=body, headers=self._sign(method, url, headers, body),
                            redirect=False, retries=False, assert_same_host=False,
                            preload_content=preload_content, decode_content=False)

    def _sign(self, method: str, url: str, headers: Dict[str, str], body: Optional[bytes]) -> Dict[str, str]:
        """``headers`` plus Host, X-Amz-Date, X-Amz-Content-SHA256 and Authorization,
        from botocore's S3 signer and this session's (maybe refreshed) credentials."""
        credentials = self._credentials()
        if credentials is None:
            raise NoCredentialsError()
        request = AWSRequest(method=method, url=url, headers=headers, data=body)
        request.headers["host"] = self._host
        # As for boto3's PutObject: over https with Content-MD5 the payload is UNSIGNED-PAYLOAD;
        # over http botocore always signs the body's SHA-256.
        request.context["has_streaming_input"] = True
        S3SigV4Auth(credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        return dict(request.headers.items())

    def get_object(self, bucket: str, key: str, byte_range: Optional[Tuple[int, int]] = None, *,
                   if_match: Optional[str] = None) -> bytes:
        """The object's bytes as stored (or ``byte_range`` = (start, end inclusive),
        checked by :func:`range_problem`); the length is checked against
        Content-Length by urllib3. ``if_match`` (an ETag) makes a replaced object a
        412 PreconditionFailed instead of other bytes."""
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
        response = self._send("GET", bucket, key, headers, None, preload_content=False)
        try:
            length = response.headers.get("Content-Length")
            if (limit is not None and byte_range is None and response.status == 200 and length is not None
                    and int(length) > limit):
                response.close()  # unread body: this connection is not reused
                return int(length), (response.headers.get("ETag") or "").strip('"')
            try:
                data = response.read(decode_content=False)
            except (ProtocolError, OSError) as exc:
                # Headers came, the body broke off (reset, truncation): botocore names this so too.
                raise ResponseStreamingError(error=exc) from exc
        finally:
            response.release_conn()
        if response.status not in _GET_OK:
            raise client_error(response.status, data, "GetObject")
        if byte_range is not None:
            problem = range_problem(response.status, response.headers.get("Content-Range"),
                                    byte_range[0], byte_range[1], len(data))
            if problem:
                raise UnexpectedResponse(problem)
        return data

    def get_range_into(self, bucket: str, key: str, start: int, view: memoryview, *,
                       if_match: Optional[str] = None) -> None:
        """Bytes ``start .. start+len(view)`` of the object read into ``view`` in 1 MiB pieces
        (parallel downloads fill their destination buffer directly, no part-sized temp).
        The answer must be a 206 with that exact Content-Range and that many bytes."""
        end = start + len(view) - 1
        headers = {"Range": f"bytes={start}-{end}"}
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        response = self._send("GET", bucket, key, headers, None, preload_content=False)
        try:
            if response.status != 206:
                if response.status in _GET_OK:  # the whole object, not the range: do not read it
                    response.close()
                    raise UnexpectedResponse(range_problem(response.status, None, start, end) or "no range")
                raise client_error(response.status, response.read(decode_content=False), "GetObject")
            problem = range_problem(206, response.headers.get("Content-Range"), start, end)
            if problem or response.headers.get("Content-Length") not in (None, str(len(view))):
                response.close()
                raise UnexpectedResponse(problem or f"asked for bytes {start}-{end}, got Content-Length "
                                         f"{response.headers.get('Content-Length')}")
            got = 0
            try:
                while got < len(view):  # urllib3's readinto reads the whole length into a temp: chunk it
                    chunk = response.read(min(_READ_CHUNK, len(view) - got), decode_content=False)
                    if not chunk:
                        break
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)
            except (ProtocolError, OSError) as exc:
                raise ResponseStreamingError(error=exc) from exc
            if got != len(view):
                response.close()
                raise IncompleteReadError(actual_bytes=got, expected_bytes=len(view))
        finally:
            response.release_conn()

    def put_object(self, bucket: str, key: str, body: bytes, content_md5: str,
                   content_type: Optional[str] = None) -> Dict[str, str]:
        """PUT ``body`` with Content-MD5 (the server rejects a corrupted body);
        returns ``ETag`` (without quotes) and the server-side-encryption headers,
        named as in boto3's PutObject response."""
        headers = {"Content-MD5": content_md5, "Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        response = self._send("PUT", bucket, key, headers, body, preload_content=True)
        if response.status != 200:
            raise client_error(response.status, response.data, "PutObject")
        result = {"ETag": (response.headers.get("ETag") or "").strip('"')}
        for header, name in (("x-amz-server-side-encryption", "ServerSideEncryption"),
                             ("x-amz-server-side-encryption-customer-algorithm", "SSECustomerAlgorithm")):
            if response.headers.get(header):
                result[name] = response.headers[header]
        return result


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
