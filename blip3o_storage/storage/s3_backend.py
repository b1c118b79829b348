"""S3 backend over boto3, for Ceph RGW, MinIO and AWS S3.

The boto3 client is created lazily and once per process: DataLoader workers
fork, and a client (with its urllib3 pool) shared across fork has been seen to
hand one worker another worker's response. The client, the signed-HTTP pool and
their lock are :class:`~blip3o_storage.storage.process_state.ProcessLocal`
state: dropped in a forked child and on pickling, rebuilt on first use.

:meth:`S3Backend.call` is the one gateway to the store (our retries, the
operation deadline, error mapping); the multipart and bucket calls that uploads
need are methods on top of it, so the boto3 client stays inside this module.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError, IncompleteReadError, NoCredentialsError

from blip3o_storage.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    CorruptDataError,
    InvalidPathError,
    ObjectNotFoundError,
    StorageError,
    TransientStorageError,
)
from blip3o_storage.storage import s3_transfers
from blip3o_storage.storage.backend import ObjectInfo, StorageBackend
from blip3o_storage.storage.config import S3Settings
from blip3o_storage.storage.list_xml import ListPage
from blip3o_storage.storage.multipart_writer import MultipartWriter
from blip3o_storage.storage.parallel import new_pool
from blip3o_storage.storage.part_sizing import MAX_SINGLE_PUT
from blip3o_storage.storage.process_state import ProcessLocal
from blip3o_storage.storage.range_reader import ObjectChangedError, RangeReader
from blip3o_storage.storage.retry import (
    DeadlineExceeded,
    OperationClock,
    RetryStats,
    call_with_retries,
    install_deadline_hooks,
    retry_reason,
    tls_verify_failure,
)
from blip3o_storage.storage.signed_http import SignedHTTP, UnexpectedResponse, range_problem
from blip3o_storage.storage.uri import StorageURI, parse_uri

if TYPE_CHECKING:
    from botocore.config import Config

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
    from botocore.config import Config  # boto3 is imported when a client is built, not before
    extra: dict = {}
    if not settings.is_aws:
        extra = {"request_checksum_calculation": "when_required",
                 "response_checksum_validation": "when_required"}
    # Both checked by S3Settings (path|virtual|auto; legacy|standard|adaptive); botocore's stubs want literals.
    s3: Any = {"addressing_style": settings.effective_addressing_style}
    retries: Any = {"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts}
    return Config(
        region_name=settings.region or ("us-east-1" if not settings.is_aws else None),
        signature_version="s3v4",
        s3=s3,
        retries=retries,
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
    import botocore.utils
    return botocore.utils.parse_timestamp(value)


def make_session(settings: S3Settings) -> Any:
    """A boto3 Session of its own (sessions are not thread-safe, nor fork-safe)."""
    import boto3.session
    import botocore.session
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


class FrozenKeys(NamedTuple):
    """The fields of botocore's ``ReadOnlyCredentials`` that a signer reads."""

    access_key: str
    secret_key: str
    token: Optional[str]


class StaticCredentials:
    """Keys given in the config, in the shape of botocore credentials (``get_frozen_credentials``).

    Why not a boto3 Session's: importing boto3 and botocore's session and building one costs
    ~0.35 s, a third of a no-op ``tools/upload.py`` run, and keys given explicitly are what
    such a Session would return anyway (explicit keys win over the whole chain)."""

    def __init__(self, access_key: str, secret_key: str, token: Optional[str]) -> None:
        self._frozen = FrozenKeys(access_key, secret_key, token)

    def get_frozen_credentials(self) -> FrozenKeys:
        return self._frozen

    def __repr__(self) -> str:
        return "StaticCredentials(<hidden>)"


def static_credentials(settings: S3Settings) -> Optional[StaticCredentials]:
    """The config's own keys, or None when credentials come from the boto3 chain (profiles,
    environment, instance roles: those may refresh, so they stay botocore's)."""
    if settings.access_key is None or settings.secret_key is None:
        return None
    return StaticCredentials(settings.access_key, settings.secret_key, settings.session_token)


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


@contextlib.contextmanager
def _changed_object_check(uri: str, if_match: Optional[str]) -> Iterator[None]:
    """A 412 answer to a GET that was If-Match ``if_match`` becomes ObjectChangedError (final, not retried)."""
    try:
        yield
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if if_match and (status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed"):
            raise ObjectChangedError(
                f"{uri}: the object changed while it was being read in parts (its ETag is no longer "
                f"{if_match}); nothing was returned: read it again") from None
        raise


@dataclass(frozen=True)
class PartInfo:
    """One part of a multipart object, from ``HEAD ?partNumber=N``: its size, and the
    object's part count (None where the server ignores ``partNumber``, as RGW 16.2 does,
    and answers for the whole object)."""

    size: int
    parts_count: Optional[int]


class S3Backend(ProcessLocal, StorageBackend):
    """Byte-level S3 access for one cluster's settings; safe across fork and pickle.

    The boto3 client, the signed-HTTP pool and the lock guarding them are per
    process (:class:`~blip3o_storage.storage.process_state.ProcessLocal`): a
    forked or unpickled copy builds its own on first use. Everything that goes
    to the store goes through :meth:`call` (retries, the operation deadline,
    error mapping); multipart uploads and bucket calls are methods here, so no
    caller needs the client itself.
    """

    _process_state = ("_lock", "_session", "_client", "_http", "_client_pid", "_pool")

    def __init__(self, settings: S3Settings, *, cluster: Optional[str] = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.stats = RetryStats()
        super().__init__()

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        self._session: Any = None
        self._client: Any = None
        self._http: Optional[SignedHTTP] = None
        #: The pid that built this process's Session or signed-HTTP path (None until then).
        self._client_pid: Optional[int] = None
        #: Threads for the parts of large transfers; made on first use, per process (never crosses a fork).
        self._pool: Optional[ThreadPoolExecutor] = None

    def __repr__(self) -> str:
        return f"S3Backend({self.settings.describe()}, cluster={self.cluster!r})"

    def _session_locked(self) -> Any:
        """This process's boto3 Session (call with ``_lock`` held), made on first use."""
        if self._session is None:
            self._session = make_session(self.settings)
            self._client_pid = os.getpid()
        return self._session

    @property
    def client(self) -> Any:
        """The boto3 client of *this* process, created on first use (thread-safe).

        For what this class does not wrap (presigned URLs, tests that hook its
        events); operations on the store go through :meth:`call`.
        """
        self._check_process()
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    new_client = make_client(self.settings, self._session_locked())
                    self._client = new_client  # last: a thread that sees it sees the rest
                    logger.debug("created S3 client in pid %d (%s)", self._client_pid, self.settings.describe())
                client = self._client
        return client

    @property
    def http(self) -> Optional[SignedHTTP]:
        """This process's signed-HTTP path for object GET/PUT, or None (boto3 for everything).

        Built without a boto3 client: a client costs 85-140 ms of CPU to build (service model,
        event handlers; measured here), which every forked DataLoader worker paid on its first
        GET, each epoch with non-persistent workers. Keys given in the config are used as they
        are (:class:`StaticCredentials`: boto3 is not even imported); other credentials come
        from the process's boto3 Session (~10 ms). The client is built when a call needs it
        (HEAD object, multipart, bucket creation).
        """
        self._check_process()
        if not self.settings.use_fast_path:
            return None
        http = self._http
        if http is None:
            with self._lock:
                if self._http is None:
                    static = static_credentials(self.settings)
                    credentials = (lambda: static) if static is not None else self._session_locked().get_credentials
                    self._http = SignedHTTP(self.settings, credentials,
                                            on_resend=lambda: self.stats.record_retry("stale-connection"))
                    if self._client_pid is None:
                        self._client_pid = os.getpid()
                http = self._http
        return http

    @property
    def transfer_pool(self) -> ThreadPoolExecutor:
        """This process's threads for the parts of large transfers (``max_concurrency`` of them),
        created on first use; a forked child builds its own."""
        self._check_process()
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = new_pool(self.settings.transfer_concurrency, f"s3-parts-{self.cluster or 'default'}")
                pool = self._pool
        return pool

    def connect(self, *, client: bool = True) -> None:
        """Build this process's signed-HTTP path and boto3 client now (e.g. before a thread pool
        starts using them). ``client=False``: the boto3 client only if the signed-HTTP path is
        off (it is built on first use otherwise, by the first call that needs it)."""
        if self.http is None or client:
            self.client  # noqa: B018

    # -- the gateway -----------------------------------------------------
    def call(self, uri: str, action: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` with this backend's retries, within ``settings.deadline``, counted
        in :attr:`stats`; any final error mapped into the package hierarchy naming ``uri``
        and ``action``. ``fn`` gets this process's boto3 client on every attempt."""
        def op() -> T:
            result = fn(self.client)
            if isinstance(result, dict):
                self._note_retries(result)
            return result
        return self._run(uri, action, op)

    def _request(self, uri: str, action: str, operation: str, **params: Any) -> Any:
        """:meth:`call` of the client method ``operation`` with ``params`` (one page of a listing)."""
        return self.call(uri, action, lambda client: getattr(client, operation)(**params))

    # -- helpers ---------------------------------------------------------
    def _parse(self, uri: str, *, need_key: bool = True, parsed: Optional[StorageURI] = None) -> StorageURI:
        """``uri`` parsed (or ``parsed``, the caller's parse of it: the facade parses each URI once)."""
        if parsed is None:
            parsed = parse_uri(uri)
        if not parsed.is_s3:
            raise InvalidPathError(f"{uri!r} is not an S3 URI (s3://bucket/key)")
        if need_key and not parsed.key:
            raise InvalidPathError(f"{uri!r} names a bucket, not an object; add a key")
        return parsed

    def _run(self, uri: str, action: str, fn: Callable[[], T], *, plain: bool = False) -> T:
        """Call ``fn`` with our retries, within ``settings.deadline``; map any final error.

        ``plain``: ``fn`` makes no botocore call (the signed-HTTP path), so its first attempt
        runs bare, and the retry machinery (the operation clock, its thread-local, the retry loop:
        ~8% of a GET's CPU) starts only after a failure, with the clock started when the
        operation did (the deadline, retry counts and stats are those of a first attempt run
        inside it). botocore calls always run inside it: its ``needs-retry`` hook reads the clock.
        """
        self.stats.add(calls=1)
        failed: Optional[Exception] = None
        if plain:
            started = time.monotonic()
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - handed to call_with_retries, re-raised when final
                failed = exc
            clock = OperationClock(self.settings.deadline, started=started, requests=1)
        else:
            clock = OperationClock(self.settings.deadline)

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
        try:
            return call_with_retries(counted, what=uri, attempts=self.settings.max_attempts, stats=self.stats,
                                     clock=clock, failed=failed)
        except Exception as exc:
            where = (f"endpoint {endpoint_label(self.settings)}: {clock.requests} request(s) in "
                     f"{clock.elapsed():.1f}s (deadline {self.settings.deadline:g}s, "
                     f"read_timeout {self.settings.read_timeout:g}s)")
            raise map_error(exc, uri, action, where) from exc

    def _note_retries(self, response: Mapping[str, Any]) -> None:
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
    def get(self, uri: str, *, parsed: Optional[StorageURI] = None) -> bytes:
        """The whole object. One GET up to ``multipart_threshold``; a larger object is
        fetched as parallel ranged GETs (each If-Match its ETag) into one buffer (the
        first response is dropped after its headers: one round trip, no extra HEAD for
        the small objects that are nearly every read). ``parsed``: ``uri`` already parsed."""
        p = self._parse(uri, parsed=parsed)
        limit = self.settings.multipart_threshold
        # This process's signed-HTTP path once built (the property's checks, ~5 µs of
        # ``settings.use_fast_path`` URL parsing, ran when it was built); the property otherwise.
        self._check_process()
        http = self._http or self.http
        if http is not None:
            result = self._run(uri, "get", lambda: http.get_object_below(p.bucket, p.key, limit), plain=True)
        else:
            result = self._run(uri, "get", lambda: self._boto3_get(uri, p, limit))
        if isinstance(result, bytes):
            return result
        return s3_transfers.get_large(self, uri, *result)

    def _boto3_get(self, uri: str, p: StorageURI, limit: int) -> Union[bytes, Tuple[int, str]]:
        """:meth:`get`'s one attempt through boto3 (the signed-HTTP path off)."""
        response = self.client.get_object(Bucket=p.bucket, Key=p.key)
        size = response.get("ContentLength")
        if size is not None and int(size) > limit:
            response["Body"].close()
            return int(size), str(response.get("ETag", "")).strip('"')
        return self._read_body(response, uri)

    def _get_range(self, uri: str, start: int, length: int, *, if_match: Optional[str] = None) -> bytes:
        """The range; with ``if_match`` (an ETag), ObjectChangedError if the object is no longer that version."""
        p = self._parse(uri)

        def op() -> bytes:
            with _changed_object_check(uri, if_match):
                return fetch()

        def fetch() -> bytes:
            http = self.http
            if http is not None:
                return http.get_object(p.bucket, p.key, (start, start + length - 1), if_match=if_match)
            end = start + length - 1
            extra = {"IfMatch": f'"{if_match}"'} if if_match else {}
            response = self.client.get_object(Bucket=p.bucket, Key=p.key, Range=f"bytes={start}-{end}", **extra)
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
        return self._run(uri, f"ranged get {start}+{length}", op, plain=self.http is not None)

    def _get_range_into(self, uri: str, start: int, view: memoryview, *, if_match: Optional[str] = None) -> None:
        """Fill ``view`` with the bytes from ``start`` (straight from the socket on the signed-HTTP path)."""
        http = self.http
        if http is None:
            data = self._get_range(uri, start, len(view), if_match=if_match)
            if len(data) != len(view):
                raise CorruptDataError(f"{uri}: asked for {len(view)} bytes at {start}, got {len(data)}")
            view[:] = data
            return
        p = self._parse(uri)

        def op() -> None:
            with _changed_object_check(uri, if_match):
                http.get_range_into(p.bucket, p.key, start, view, if_match=if_match)
        self._run(uri, f"ranged get {start}+{len(view)}", op, plain=True)

    def stat(self, uri: str) -> ObjectInfo:
        """Size, ETag and mtime of the object (one HEAD: over the signed-HTTP path when it is on,
        so a DataLoader worker checking its shard tars never imports boto3)."""
        p = self._parse(uri)
        http = self.http
        if http is not None:
            def head() -> ObjectInfo:
                size, etag, mtime = http.head_object(p.bucket, p.key)
                return ObjectInfo(key=p.key, size=size, etag=etag, mtime=mtime)
            return self._run(uri, "stat", head, plain=True)

        def op() -> ObjectInfo:
            r = self.client.head_object(Bucket=p.bucket, Key=p.key)
            self._note_retries(r)
            return ObjectInfo(key=p.key, size=int(r["ContentLength"]), etag=r.get("ETag", "").strip('"') or None,
                              mtime=r["LastModified"].timestamp() if r.get("LastModified") else None)
        return self._run(uri, "stat", op)

    def isfile(self, uri: str) -> bool:
        """True if the object exists; a bucket or a key ending in '/' names a folder, never a file."""
        p = self._parse(uri, need_key=False)
        if not p.key or p.key.endswith("/"):
            return False
        return super().isfile(uri)

    def exists(self, uri: str) -> bool:
        """True if the object exists; a prefix with objects under it counts too.
        (The default's semantics, one request fewer for a missing bucket.)"""
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
        try:
            page = self._list_page(uri, p.bucket, prefix, None, None, max_keys=1, action="isdir")
            return bool(page.objects or page.prefixes)
        except ObjectNotFoundError:
            return False

    def put(self, uri: str, data: bytes, content_type: Optional[str] = None, *,
            md5_digest: Optional[bytes] = None, parsed: Optional[StorageURI] = None) -> str:
        """Upload ``data``; returns the ETag. Up to ``multipart_threshold`` bytes (or whenever
        ``md5_digest`` is given: the caller wants that one PUT's MD5 as the ETag), one PUT with
        Content-MD5 (:meth:`put_single`); above it, a multipart upload of memoryview slices
        of ``data`` in parallel (a part-sized copy per part in flight, never of the whole)."""
        if len(data) > MAX_SINGLE_PUT or (md5_digest is None and len(data) > self.settings.multipart_threshold):
                return s3_transfers.put_large(self, uri, data, content_type)
        return self.put_single(uri, data, content_type, md5_digest=md5_digest, parsed=parsed)

    def put_single(self, uri: str, data: bytes, content_type: Optional[str] = None, *,
                   md5_digest: Optional[bytes] = None, parsed: Optional[StorageURI] = None) -> str:
        """Upload ``data`` in one PUT with an explicit Content-MD5 so the server
        checks integrity; returns the ETag. ``md5_digest`` saves re-hashing; ``parsed``: ``uri`` parsed."""
        p = self._parse(uri, parsed=parsed)
        digest = md5_digest or hashlib.md5(data, usedforsecurity=False).digest()
        md5 = base64.b64encode(digest).decode("ascii")
        extra = {"ContentType": content_type} if content_type else {}

        http = self.http
        if http is not None:
            return self._run(uri, "put", lambda: check_put_etag(
                uri, http.put_object(p.bucket, p.key, data, md5, content_type), digest.hex()), plain=True)

        def op() -> str:
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
        delimiter = None if recursive else "/"
        token: Optional[str] = None
        cut = len(prefix)
        while True:
            page = self._list_page(uri, p.bucket, prefix, delimiter, token)
            entries = [ObjectInfo(key=key[cut:], size=size, etag=etag, mtime=mtime)
                       for key, size, etag, mtime in page.objects]
            entries += [ObjectInfo(key=sub[cut:], size=0, is_dir=True) for sub in page.prefixes]
            entries.sort(key=lambda info: info.key.encode("utf-8"))
            yield from entries
            if not page.truncated:
                return
            token = page.next_token
            if not token:
                raise StorageError(f"{uri}: list page truncated without a continuation token")

    def _list_page(self, uri: str, bucket: str, prefix: str, delimiter: Optional[str],
                   token: Optional[str], *, max_keys: Optional[int] = None, action: str = "list") -> ListPage:
        """One ListObjectsV2 page: over the signed-HTTP path when it is on (no boto3 client),
        else through boto3; the same :class:`ListPage` either way."""
        http = self.http
        if http is not None:
            return self._run(uri, action, lambda: http.list_objects_v2(bucket, prefix, delimiter=delimiter,
                                                                        token=token, max_keys=max_keys), plain=True)
        kwargs: Dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        if token:
            kwargs["ContinuationToken"] = token
        if max_keys is not None:
            kwargs["MaxKeys"] = max_keys
        page = self._request(uri, action, "list_objects_v2", **kwargs)
        return ListPage(
            objects=[(o["Key"], int(o["Size"]), o.get("ETag", "").strip('"') or None,
                      o["LastModified"].timestamp() if o.get("LastModified") else None)
                     for o in page.get("Contents", [])],
            prefixes=[cp["Prefix"] for cp in page.get("CommonPrefixes", [])],
            truncated=bool(page.get("IsTruncated")), next_token=page.get("NextContinuationToken"))

    # -- buckets ---------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        """True if ``bucket`` exists (and these credentials may see it); one HEAD."""
        uri = f"s3://{bucket}"
        http = self.http
        try:
            if http is not None:
                self._run(uri, "head bucket", lambda: http.head_bucket(bucket), plain=True)
            else:
                self.call(uri, "head bucket", lambda client: client.head_bucket(Bucket=bucket))
            return True
        except ObjectNotFoundError:
            return False

    def ensure_bucket(self, bucket: str) -> bool:
        """Create ``bucket`` if missing; True if it was created."""
        uri = f"s3://{bucket}"
        if self.bucket_exists(bucket):
            return False
        kwargs: dict = {"Bucket": bucket}
        region = self.client.meta.region_name
        if self.settings.is_aws and region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.call(uri, "create bucket", lambda client: client.create_bucket(**kwargs))
        except StorageError as exc:
            if "BucketAlreadyOwnedByYou" in str(exc.__cause__):
                return False
            raise
        return True

    def delete(self, uri: str) -> None:
        p = self._parse(uri)
        self._run(uri, "delete", lambda: self.client.delete_object(Bucket=p.bucket, Key=p.key))

    # -- multipart uploads -----------------------------------------------
    def create_multipart_upload(self, uri: str, content_type: Optional[str] = None) -> str:
        """Start a multipart upload of the object ``uri``; its upload id."""
        p = self._parse(uri)
        extra = {"ContentType": content_type} if content_type else {}
        created = self.call(uri, "create multipart upload", lambda client: client.create_multipart_upload(
            Bucket=p.bucket, Key=p.key, **extra))
        return str(created["UploadId"])

    def upload_part(self, uri: str, upload_id: str, number: int, data: Union[bytes, bytearray], *,
                    md5_digest: Optional[bytes] = None) -> str:
        """Send part ``number`` (1-based) with its Content-MD5 (the server rejects a damaged
        body); the part's ETag as the server gave it. ``md5_digest`` saves re-hashing."""
        p = self._parse(uri)
        digest = md5_digest or hashlib.md5(data, usedforsecurity=False).digest()
        md5 = base64.b64encode(digest).decode("ascii")
        response = self.call(uri, f"upload part {number}", lambda client: client.upload_part(
            Bucket=p.bucket, Key=p.key, UploadId=upload_id, PartNumber=number, Body=data, ContentMD5=md5))
        return str(response["ETag"])

    def complete_multipart_upload(self, uri: str, upload_id: str, parts: Sequence[Tuple[int, str]]) -> str:
        """Join ``parts`` ((number, ETag) in order) into the object; its ETag without quotes.

        Ceph RGW (seen on 16.2.15; Red Hat BZ 2266579) answers with an empty
        ``<ETag/>`` while the object's own ETag is right: then it is read back with one HEAD.
        """
        p = self._parse(uri)
        listed: List[Dict[str, Any]] = [{"PartNumber": number, "ETag": etag} for number, etag in parts]
        done = self.call(uri, "complete multipart upload", lambda client: client.complete_multipart_upload(
            Bucket=p.bucket, Key=p.key, UploadId=upload_id, MultipartUpload={"Parts": listed}))
        etag = str(done.get("ETag", "")).strip('"')
        return etag or (self.stat(uri).etag or "")

    def abort_multipart_upload(self, uri: str, upload_id: str) -> None:
        """Drop an unfinished multipart upload and the parts sent so far."""
        p = self._parse(uri)
        self.call(uri, "abort multipart upload", lambda client: client.abort_multipart_upload(
            Bucket=p.bucket, Key=p.key, UploadId=upload_id))

    def list_parts(self, uri: str, upload_id: str) -> List[Tuple[int, int, str]]:
        """(number, size, ETag) of the parts of an unfinished multipart upload, in order."""
        p = self._parse(uri)
        parts: List[Tuple[int, int, str]] = []
        marker = 0
        while True:
            kwargs = {"Bucket": p.bucket, "Key": p.key, "UploadId": upload_id, "PartNumberMarker": marker}
            page = self._request(uri, "list parts", "list_parts", **kwargs)
            parts += [(int(part["PartNumber"]), int(part["Size"]), str(part["ETag"]).strip('"'))
                      for part in page.get("Parts", [])]
            if not page.get("IsTruncated"):
                return parts
            marker = int(page.get("NextPartNumberMarker", 0))
            if not marker:
                raise StorageError(f"{uri}: list parts page truncated without a next marker")

    def stat_part(self, uri: str, number: int) -> PartInfo:
        """``HEAD ?partNumber=number`` of a multipart object (see :class:`PartInfo`)."""
        p = self._parse(uri)
        response = self.call(uri, f"head part {number}", lambda client: client.head_object(
            Bucket=p.bucket, Key=p.key, PartNumber=number))
        count = response.get("PartsCount")
        return PartInfo(size=int(response.get("ContentLength", 0)), parts_count=None if count is None else int(count))

    # -- large objects (streams, files, copies) --------------------------
    def open_read(self, uri: str) -> BinaryIO:
        """A seekable reader of the object as it is now (its ETag is pinned: every ranged GET is
        If-Match it, so a replaced object is an ObjectChangedError, never a mix)."""
        info = self.stat(uri)
        etag = info.etag or None
        part, limit = self.settings.multipart_chunksize, self.settings.transfer_concurrency
        return cast(BinaryIO, RangeReader(
            uri, info.size, lambda start, view: s3_transfers.fetch_into(self, uri, etag, start, view),
            block_size=part, max_ahead=part * limit))

    def open_write(self, uri: str, content_type: Optional[str] = None) -> MultipartWriter:
        """A writer whose bytes become the object on close (see :class:`MultipartWriter`)."""
        return MultipartWriter(self, uri, content_type)

    def put_file(self, uri: str, local_path: Union[str, os.PathLike[str]],
                 content_type: Optional[str] = None) -> Optional[str]:
        """Upload a local file (parallel parts above the threshold, read part by part); its ETag."""
        return s3_transfers.put_file(self, uri, os.fspath(local_path), content_type)

    def get_file(self, uri: str, local_path: Union[str, os.PathLike[str]]) -> None:
        """Download into a temp file next to ``local_path``, renamed into place when whole."""
        s3_transfers.get_file(self, uri, os.fspath(local_path))

    def copy(self, src_uri: str, dst_uri: str) -> None:
        """Server-side copy on this cluster (CopyObject, or parallel UploadPartCopy above the threshold)."""
        s3_transfers.copy(self, src_uri, dst_uri)

    def list_multipart_uploads(self, uri_prefix: str) -> List[MultipartUploadInfo]:
        """Unfinished multipart uploads under ``uri_prefix`` (``s3://bucket/prefix``), oldest first."""
        p = self._parse(uri_prefix, need_key=False)
        found: List[MultipartUploadInfo] = []
        markers: Dict[str, str] = {}
        while True:
            page = self._request(uri_prefix, "list multipart uploads", "list_multipart_uploads",
                                 Bucket=p.bucket, Prefix=p.key, **markers)
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                found.append(MultipartUploadInfo(
                    uri=f"{p.cluster + ':' if p.cluster else ''}s3://{p.bucket}/{upload['Key']}",
                    upload_id=str(upload["UploadId"]),
                    initiated=initiated.timestamp() if hasattr(initiated, "timestamp") else None))
            if not page.get("IsTruncated"):
                break
            markers = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
            if not markers["KeyMarker"]:
                raise StorageError(f"{uri_prefix}: multipart upload listing truncated without a next marker")
        found.sort(key=lambda info: info.initiated or 0.0)
        return found

    def abort_incomplete_uploads(self, uri_prefix: str, older_than_s: float = 24 * 3600.0) -> int:
        """Abort the unfinished multipart uploads under ``uri_prefix`` started more than
        ``older_than_s`` seconds ago; how many were aborted.

        A process killed mid-upload (SIGKILL, OOM, node loss) cannot abort its own: its parts
        stay (invisible, but stored and billed) until this, or a bucket lifecycle rule with
        ``AbortIncompleteMultipartUpload``, removes them. The default of one day leaves uploads
        that may still be running alone; 0 aborts every one (nothing else may be writing).
        """
        now = time.time()
        aborted = 0
        for upload in self.list_multipart_uploads(uri_prefix):
            if upload.initiated is not None and now - upload.initiated < older_than_s:
                continue
            try:
                self.abort_multipart_upload(upload.uri, upload.upload_id)
            except ObjectNotFoundError:
                continue  # finished or aborted meanwhile
            aborted += 1
        if aborted:
            logger.info("%s: aborted %d unfinished multipart upload(s)", uri_prefix, aborted)
        return aborted


@dataclass(frozen=True)
class MultipartUploadInfo:
    """One unfinished multipart upload: the object it would become, its id, when it started (epoch s)."""

    uri: str
    upload_id: str
    initiated: Optional[float]
