"""S3 backend over boto3, for Ceph RGW, MinIO and AWS S3.

The boto3 client is created lazily and once per process id: DataLoader
workers fork, and a client (with its urllib3 pool) shared across fork has been
seen to hand one worker another worker's response. Pickling drops the client.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import threading
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError, NoCredentialsError

from blip3o_storage.storage.process_state import DropsLocksOnPickle
from blip3o_storage.storage.backend import ObjectInfo, decode_text
from blip3o_storage.storage.config import S3Settings
from blip3o_storage.errors import (AccessDeniedError, BucketNotFoundError, CorruptDataError, InvalidPathError, ObjectNotFoundError,
                     StorageError, TransientStorageError)
from blip3o_storage.storage.signed_http import SignedHTTP, UnexpectedResponse, range_problem
from blip3o_storage.storage.retry import (DeadlineExceeded, OperationClock, RetryStats, call_with_retries, install_deadline_hooks,
                    retry_reason, tls_verify_failure)
from blip3o_storage.storage.uri import StorageURI, parse_uri

logger = logging.getLogger(__name__)
T = TypeVar("T")

_NOT_FOUND = {"NoSuchKey", "NotFound", "404", "NoSuchBucket", "NoSuchUpload"}
_DENIED = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden",
           "AllAccessDisabled", "InvalidToken", "ExpiredToken"}


def botocore_config(settings: S3Settings) -> Config:
    """The botocore Config for ``settings``.

    Off AWS, checksums are only computed when an operation requires them:
    boto3 >= 1.36 otherwise sends streaming-trailer checksums that Ceph RGW
    (over https) rejects with 411 MissingContentLength.
    """
    extra: dict = {}
    if not settings.is_aws:
        extra = {"request_checksum_calculation": "when_required",
                 "response_checksum_validation": "when_required"}
    return Config(
        region_name=settings.region or ("us-east-1" if not settings.is_aws else None),
        signature_version="s3v4",
        s3={"addressing_style": settings.effective_addressing_style},
        retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
        max_pool_connections=settings.max_pool_connections,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        tcp_keepalive=True,
        **extra,
    )


def parse_timestamp(value: Any) -> datetime.datetime:
    """botocore's timestamp parser, with a fast path for ISO 8601.

    LIST responses carry one ``LastModified`` per key; botocore parses each
    with dateutil (~0.1 ms), which dominates the parsing of a 1000-key page.
    ``datetime.fromisoformat`` does the same for the ISO form; anything else
    (RFC 1123 headers, epochs) goes to botocore's own parser.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    return botocore.utils.parse_timestamp(value)


def make_session(settings: S3Settings) -> Any:
    """A boto3 Session of its own (sessions are not thread-safe, nor fork-safe)."""
    core = botocore.session.get_session()
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse_timestamp)
    return boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        aws_session_token=settings.session_token,
        profile_name=settings.profile,
    )


def make_client(settings: S3Settings, session: Any = None) -> Any:
    """A new boto3 S3 client (from ``session``, or a Session of its own)."""
    session = session or make_session(settings)
    client = session.client("s3", endpoint_url=settings.endpoint_url, verify=settings.verify,
                            config=botocore_config(settings))
    install_deadline_hooks(client)  # its own retries stop at the calling operation's deadline
    return client


def endpoint_label(settings: S3Settings) -> str:
    """The endpoint for messages: scheme, host and port (any user:password@ dropped)."""
    if not settings.endpoint_url:
        return "AWS S3"
    parts = urlsplit(settings.endpoint_url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def check_put_etag(uri: str, response: Mapping[str, Any], md5_hex: str) -> str:
    """The ETag of a single PUT, which must be the MD5 of the bytes sent.

    Content-MD5 lets the server reject a body damaged on the way; this catches
    a server or middlebox that stored something else and said so in the ETag.
    Objects encrypted with SSE-KMS or SSE-C have an ETag that is not an MD5 (AWS
    documents this), so theirs is not compared.
    """
    etag = str(response.get("ETag", "")).strip('"')
    if response.get("SSECustomerAlgorithm") or str(response.get("ServerSideEncryption", "")).startswith("aws:kms"):
        return etag
    if etag.lower() != md5_hex:
        raise CorruptDataError(
            f"{uri}: the store answered the PUT with ETag {etag!r}, not the MD5 of the data sent ({md5_hex}); "
            f"the object may hold other bytes than were sent: upload it again, and check any proxy on the way")
    return etag


def map_error(exc: BaseException, uri: str, action: str, where: str = "") -> StorageError:
    """Translate a boto error into the package hierarchy, naming the URI (and, for
    failures that outlasted the retries, ``where``: the endpoint, requests, time)."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, UnexpectedResponse):
        return CorruptDataError(f"{uri}: {action}: {exc}")
    where = f"; {where}" if where else ""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return BucketNotFoundError(f"{uri}: bucket does not exist ({action}); create it or fix the URI")
        if code in _NOT_FOUND or status == 404:
            return ObjectNotFoundError(f"{uri}: no such object ({action})")
        if code == "SignatureDoesNotMatch":
            return AccessDeniedError(
                f"{uri}: access denied (SignatureDoesNotMatch) during {action}: the request's signature did not "
                f"verify; check secret_key in the ceph_config, and that no proxy on the way alters requests")
        if code in _DENIED or status == 403:
            return AccessDeniedError(
                f"{uri}: access denied ({code or status}) during {action}; check access_key/secret_key "
                f"in the ceph_config and the bucket policy")
        if code == "InvalidRange":
            return InvalidPathError(f"{uri}: requested range not satisfiable ({action})")
        if retry_reason(exc):
            return TransientStorageError(f"{uri}: {action} failed after retries ({code or status}){where}")
        return StorageError(f"{uri}: {action} failed ({code or status}: {error.get('Message', '')})")
    if isinstance(exc, NoCredentialsError):
        return AccessDeniedError(f"{uri}: no credentials found for {action}; set access_key/secret_key "
                                 f"in the ceph_config or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    tls = tls_verify_failure(exc)
    if tls:
        return StorageError(f"{uri}: SSL/TLS certificate verification failed during {action} ({tls}); set "
                            f"ca_bundle to the CA certificate that signed the endpoint's certificate "
                            f"(or verify_ssl = false, only for a throw-away test endpoint)")
    reason = retry_reason(exc)
    if reason:
        cause = exc.__cause__ if isinstance(exc, DeadlineExceeded) and exc.__cause__ is not None else exc
        return TransientStorageError(f"{uri}: {action} failed after retries ({reason}: {type(cause).__name__}){where}")
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{uri}: {action} failed ({type(exc).__name__})")
    return StorageError(f"{uri}: {action} failed ({type(exc).__name__}: {exc})")


class S3Backend(DropsLocksOnPickle):
    """Byte-level S3 access for one cluster's settings; safe across fork and pickle."""

    # each process makes its own client and signed-HTTP pool
    _pickle_resets = {"_client": None, "_http": None, "_client_pid": None}

    def __init__(self, settings: S3Settings, *, cluster: Optional[str] = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.stats = RetryStats()
        self._client: Any = None
        self._http: Optional[SignedHTTP] = None
        self._client_pid: Optional[int] = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Backend({self.settings.describe()}, cluster={self.cluster!r})"

    @property
    def client(self) -> Any:
        """The boto3 client of *this* process, created on first use."""
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            if self._client_pid not in (None, pid):
                # Forked: the parent's lock may be held by a thread that no longer exists here.
                self._lock = threading.Lock()
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    session = make_session(self.settings)
                    self._client = make_client(self.settings, session)
                    self._http = (SignedHTTP(self.settings, session.get_credentials)
                                  if self.settings.use_fast_path else None)
                    self._client_pid = pid
                    logger.debug("created S3 client in pid %d (%s)", pid, self.settings.describe())
        return self._client

    @property
    def http(self) -> Optional[SignedHTTP]:
        """This process's signed-HTTP path for object GET/PUT, or None (boto3 for everything)."""
        self.client  # noqa: B018 - creates both per process
        return self._http

    # -- helpers ---------------------------------------------------------
    def _parse(self, uri: str, *, need_key: bool = True) -> StorageURI:
        parsed = parse_uri(uri)
        if not parsed.is_s3:
            raise InvalidPathError(f"{uri!r} is not an S3 URI (s3://bucket/key)")
        if need_key and not parsed.key:
            raise InvalidPathError(f"{uri!r} names a bucket, not an object; add a key")
        return parsed

    def _run(self, uri: str, action: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` with our retries, within ``settings.deadline``; map any final error."""
        def counted() -> T:
            try:
                result = fn()
            except ClientError as exc:
                self.stats.add(botocore_retries=exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
                raise
            except DeadlineExceeded as exc:
                self.stats.add(botocore_retries=exc.attempts - 1)
                raise
            return result
        self.stats.add(calls=1)
        clock = OperationClock(self.settings.deadline)
        try:
            return call_with_retries(counted, what=uri, attempts=self.settings.max_attempts, stats=self.stats,
                                     clock=clock)
        except Exception as exc:  # noqa: BLE001 - mapped and re-raised
            where = (f"endpoint {endpoint_label(self.settings)}: {clock.requests} request(s) in "
                     f"{clock.elapsed():.1f}s (deadline {self.settings.deadline:g}s, "
                     f"read_timeout {self.settings.read_timeout:g}s)")
            raise map_error(exc, uri, action, where) from exc

    def _note_retries(self, response: dict) -> None:
        attempts = response.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if attempts:
            self.stats.add(botocore_retries=attempts)

    def _read_body(self, response: dict, uri: str) -> bytes:
        self._note_retries(response)
        body = response["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        expected = response.get("ContentLength")
        if expected is not None and len(data) != expected:
            raise IncompleteReadError(actual_bytes=len(data), expected_bytes=expected)
        return data

    # -- protocol --------------------------------------------------------
    def get(self, uri: str) -> bytes:
        p = self._parse(uri)

        def op() -> bytes:
            http = self.http
            if http is not None:
                return http.get_object(p.bucket, p.key)
            return self._read_body(self.client.get_object(Bucket=p.bucket, Key=p.key), uri)
        return self._run(uri, "get", op)

    def get_text(self, uri: str, encoding: str = "utf-8") -> str:
        return decode_text(self.get(uri), uri, encoding)

    def get_range(self, uri: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidPathError(f"{uri}: invalid range start={start} length={length}")
        if length == 0:
            return b""
        p = self._parse(uri)

        def op() -> bytes:
            http = self.http
            if http is not None:
                return http.get_object(p.bucket, p.key, (start, start + length - 1))
            end = start + length - 1
            response = self.client.get_object(Bucket=p.bucket, Key=p.key, Range=f"bytes={start}-{end}")
            problem = range_problem(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0),
                                    response.get("ContentRange"), start, end)
            if problem:
                response["Body"].close()
                raise UnexpectedResponse(problem)
            data = self._read_body(response, uri)
            problem = range_problem(206, response.get("ContentRange"), start, end, len(data))
            if problem:
                raise UnexpectedResponse(problem)
            return data
        return self._run(uri, f"ranged get {start}+{length}", op)

    def stat(self, uri: str) -> ObjectInfo:
        p = self._parse(uri)

        def op() -> ObjectInfo:
            r = self.client.head_object(Bucket=p.bucket, Key=p.key)
            self._note_retries(r)
            return ObjectInfo(key=p.key, size=int(r["ContentLength"]), etag=r.get("ETag", "").strip('"') or None,
                              mtime=r["LastModified"].timestamp() if r.get("LastModified") else None)
        return self._run(uri, "stat", op)

    def exists(self, uri: str) -> bool:
        """True if the object exists; a prefix with objects under it counts too."""
        p = self._parse(uri, need_key=False)
        if p.key and not p.key.endswith("/"):
            try:
                self.stat(uri)
                return True
            except BucketNotFoundError:
                return False
            except ObjectNotFoundError:
                pass
        return self.isdir(uri)

    def isdir(self, uri: str) -> bool:
        p = self._parse(uri, need_key=False)
        prefix = p.key if (not p.key or p.key.endswith("/")) else p.key + "/"

        def op() -> bool:
            r = self.client.list_objects_v2(Bucket=p.bucket, Prefix=prefix, MaxKeys=1)
            return r.get("KeyCount", 0) > 0
        try:
            return self._run(uri, "isdir", op)
        except ObjectNotFoundError:
            return False

    def put(self, uri: str, data: bytes, content_type: Optional[str] = None, *,
            md5_digest: Optional[bytes] = None) -> str:
        """Upload ``data`` in one PUT with an explicit Content-MD5 so the server
        checks integrity; returns the ETag. ``md5_digest`` saves re-hashing."""
        p = self._parse(uri)
        digest = md5_digest or hashlib.md5(data, usedforsecurity=False).digest()
        md5 = base64.b64encode(digest).decode("ascii")
        extra = {"ContentType": content_type} if content_type else {}

        def op() -> str:
            http = self.http
            if http is not None:
                return check_put_etag(uri, http.put_object(p.bucket, p.key, data, md5, content_type), digest.hex())
            r = self.client.put_object(Bucket=p.bucket, Key=p.key, Body=data, ContentMD5=md5, **extra)
            self._note_retries(r)
            return check_put_etag(uri, r, digest.hex())
        return self._run(uri, "put", op)

    def list(self, uri: str, recursive: bool = True) -> Iterator[ObjectInfo]:
        """Objects under the prefix ``uri`` (keys relative to it), paginated.

        ``s3://b/dir`` and ``s3://b/dir/`` both list the folder ``dir/``.
        """
        p = self._parse(uri, need_key=False)
        prefix = p.key if (not p.key or p.key.endswith("/")) else p.key + "/"
        kwargs = {"Bucket": p.bucket, "Prefix": prefix}
        if not recursive:
            kwargs["Delimiter"] = "/"
        token: Optional[str] = None
        while True:
            page_kwargs = dict(kwargs, ContinuationToken=token) if token else kwargs
            page = self._run(uri, "list", lambda: self.client.list_objects_v2(**page_kwargs))
            entries = [ObjectInfo(key=o["Key"][len(prefix):], size=int(o["Size"]),
                                  etag=o.get("ETag", "").strip('"') or None,
                                  mtime=o["LastModified"].timestamp() if o.get("LastModified") else None)
                       for o in page.get("Contents", [])]
            entries += [ObjectInfo(key=cp["Prefix"][len(prefix):], size=0, is_dir=True)
                        for cp in page.get("CommonPrefixes", [])]
            entries.sort(key=lambda info: info.key.encode("utf-8"))
            yield from entries
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageError(f"{uri}: list page truncated without a continuation token")

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` if missing; True if it was created."""
        uri = f"s3://{bucket}"
        try:
            self._run(uri, "head bucket", lambda: self.client.head_bucket(Bucket=bucket))
            return False
        except ObjectNotFoundError:
            pass
        kwargs: dict = {"Bucket": bucket}
        region = self.client.meta.region_name
        if self.settings.is_aws and region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._run(uri, "create bucket", lambda: self.client.create_bucket(**kwargs))
        except StorageError as exc:
            if "BucketAlreadyOwnedByYou" in str(exc.__cause__):
                return False
            raise
        return True

    def delete(self, uri: str) -> None:
        p = self._parse(uri)
        self._run(uri, "delete", lambda: self.client.delete_object(Bucket=p.bucket, Key=p.key))
