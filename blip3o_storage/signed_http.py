"""A lean signed-HTTP path for the two hot requests: GetObject and PutObject.

Why: a boto3 ``get_object`` costs ~1.5 ms of client CPU (event hooks,
parameter validation, serialisation, response parsing, user-agent building)
against ~0.6 ms for the same request signed with botocore's own SigV4 signer
and sent through urllib3 (measured on Ceph RGW, 70 KB objects; see
``benchmarks/``). A DataLoader worker decoding images on the same cores, or an
upload of 60k small files, feels that difference directly.

Only the requests whose semantics are simple go this way; everything else
(LIST, HEAD, multipart, bucket calls) stays on boto3. Errors are raised as
botocore ``ClientError`` with the server's code and status (and urllib3's own
exceptions for network failures), so retries and error mapping are the same
as for boto3 calls. Used for path-style endpoints (Ceph RGW, MinIO), where
the URL is ``endpoint/bucket/key``.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote, urlsplit

import urllib3
from botocore.exceptions import ClientError, NoCredentialsError, ResponseStreamingError
from urllib3.exceptions import ProtocolError

from .config import S3Settings

_CODE_RE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE_RE = re.compile(rb"<Message>([^<]*)</Message>")
_GET_OK = {200, 206}
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def object_url(endpoint: str, bucket: str, key: str) -> str:
    """Path-style URL, the key encoded the way botocore encodes S3 keys."""
    return f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"


def client_error(status: int, body: bytes, operation: str, retries: int = 0) -> ClientError:
    """A botocore ClientError from an S3 XML error body (or just the status)."""
    code_match = _CODE_RE.search(body or b"")
    message_match = _MESSAGE_RE.search(body or b"")
    code = code_match.group(1).decode("utf-8", "replace") if code_match else str(status)
    message = message_match.group(1).decode("utf-8", "replace") if message_match else ""
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries}}, operation)


class SignedHTTP:
    """Per-process urllib3 pool + SigV4 signer for one cluster's settings.

    ``credentials`` is a callable returning botocore credentials (a boto3
    session's, so refreshable credentials keep working); it is called per
    request and is cheap for static keys.
    """

    def __init__(self, settings: S3Settings, credentials: Any) -> None:
        if not settings.endpoint_url:
            raise ValueError("SignedHTTP needs an endpoint_url (path-style access)")
        self.settings = settings
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
        self._key_cache: Optional[Tuple[Tuple[str, str], bytes]] = None

    def _signed_headers(self, method: str, url: str, headers: Dict[str, str], body: Optional[bytes]) -> Dict[str, str]:
        """``headers`` plus SigV4 ``Authorization`` for a path-style S3 request.

        Signs host, x-amz-date and x-amz-content-sha256 (and the session token
        when there is one). A PUT's payload is ``UNSIGNED-PAYLOAD``: its
        integrity is the Content-MD5 the server checks. The signing key is
        derived once per day and secret, not per request.
        """
        operation = "GetObject" if method == "GET" else "PutObject"
        for listener in self.listeners:
            listener(operation)
        credentials = self._credentials()
        if credentials is None:
            raise NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        parts = urlsplit(url)
        host = parts.netloc
        if (parts.scheme, parts.port) in (("http", 80), ("https", 443)):
            host = host.rsplit(":", 1)[0]  # the Host header carries no default port
        payload = _EMPTY_SHA256 if body is None else "UNSIGNED-PAYLOAD"
        signed = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        if frozen.token:
            signed["x-amz-security-token"] = frozen.token
        names = ";".join(sorted(signed))
        canonical_headers = "".join(f"{k}:{signed[k]}\n" for k in sorted(signed))
        canonical = "\n".join([method, parts.path or "/", parts.query, canonical_headers, names, payload])
        scope = f"{day}/{self._region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(frozen.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        out = dict(headers)
        out.update({"Host" if k == "host" else k: v for k, v in signed.items()})  # sent exactly as signed
        out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={frozen.access_key}/{scope}, "
                                f"SignedHeaders={names}, Signature={signature}")
        return out

    def _signing_key(self, secret: str, day: str) -> bytes:
        cached = self._key_cache
        if cached is not None and cached[0] == (secret, day):
            return cached[1]
        key = ("AWS4" + secret).encode()
        for part in (day, self._region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key_cache = ((secret, day), key)
        return key

    def get_object(self, bucket: str, key: str, byte_range: Optional[Tuple[int, int]] = None) -> bytes:
        """The object's bytes (or ``byte_range`` = (start, end inclusive)); the
        length is checked against Content-Length by urllib3."""
        url = object_url(self.settings.endpoint_url or "", bucket, key)
        headers = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        response = self._pool.request("GET", url, headers=self._signed_headers("GET", url, headers, None),
                                      preload_content=False, enforce_content_length=True, redirect=False)
        try:
            try:
                data = response.read()
            except (ProtocolError, OSError) as exc:
                # Headers came, the body broke off (reset, truncation): botocore names this so too.
                raise ResponseStreamingError(error=exc) from exc
        finally:
            response.release_conn()
        if response.status not in _GET_OK:
            raise client_error(response.status, data, "GetObject")
        return data

    def put_object(self, bucket: str, key: str, body: bytes, content_md5: str,
                   content_type: Optional[str] = None) -> str:
        """PUT ``body`` with Content-MD5 (the server rejects a corrupted body);
        returns the ETag without quotes."""
        url = object_url(self.settings.endpoint_url or "", bucket, key)
        headers = {"Content-MD5": content_md5, "Content-Length": str(len(body))}
        if content_type:
            headers["Content-Type"] = content_type
        response = self._pool.request("PUT", url, body=body,
                                      headers=self._signed_headers("PUT", url, headers, body),
                                      preload_content=True, redirect=False)
        if response.status != 200:
            raise client_error(response.status, response.data, "PutObject")
        return (response.headers.get("ETag") or "").strip('"')


def _default_ca_bundle() -> Optional[str]:
    """The CA bundle botocore would use (AWS_CA_BUNDLE, else certifi's)."""
    env = os.environ.get("AWS_CA_BUNDLE") or os.environ.get("REQUESTS_CA_BUNDLE")
    if env:
        return env
    from botocore.httpsession import get_cert_path
    return get_cert_path(True)
