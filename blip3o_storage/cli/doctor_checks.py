"""The connection checks of ``blip3o-doctor``: endpoint, TLS, credentials, clock, bucket, checksums.

Each check returns one :class:`Result` (PASS/WARN/FAIL/SKIP, a one-line detail, and for a
failure the fix). They run on a boto3 client of their own with ``max_attempts=1`` and the
config's timeouts capped at 5 s: a diagnosis that retries a dead endpoint for the default
30 s deadline tells the user nothing more than one refused connection does (measured: a free
local port fails in < 1 ms, a black-holed one at the connect timeout).

The clock is read from the ``Date`` header of the credentials request (RFC 7231, 1 s
resolution), so it needs no request of its own and works even when the signature is
refused: RGW and AWS refuse any request signed more than 15 minutes off the server's clock
with ``RequestTimeTooSkewed``, an error most users read as "bad credentials".
"""
from __future__ import annotations

import contextlib
import datetime
import email.utils
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.httpsession import get_cert_path

from blip3o_storage.storage.config import S3Settings
from blip3o_storage.storage.s3_backend import endpoint_label, make_client

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
#: SigV4's limit: AWS and RGW (``rgw_max_clock_skew``-free builds use the same 15 min) refuse requests
#: signed further than this from their clock.
SIGV4_MAX_SKEW_S = 15 * 60
#: Past this the clock is drifting (NTP keeps hosts within milliseconds): warn before SigV4 breaks.
WARN_SKEW_S = 60.0
#: Seconds any single doctor request waits to connect or for an answer.
PROBE_TIMEOUT_S = 5.0
#: The function botocore's SigV4 signers call for the signing time (botocore >= 1.33).
_SIGNING_CLOCK = "get_current_datetime"
_SIGNATURE_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
                    "InvalidClientTokenId", "AuthorizationHeaderMalformed"}


@dataclass(frozen=True)
class Result:
    """One check's verdict: ``status`` is PASS/WARN/FAIL/SKIP; ``fix`` says what to do on FAIL/WARN."""

    name: str
    status: str
    detail: str
    fix: str = ""


def probe_settings(settings: S3Settings) -> S3Settings:
    """``settings`` for one-shot probes: one attempt, timeouts at most :data:`PROBE_TIMEOUT_S`."""
    return replace(settings, max_attempts=1, connect_timeout=min(settings.connect_timeout, PROBE_TIMEOUT_S),
                   read_timeout=min(settings.read_timeout, PROBE_TIMEOUT_S), deadline=PROBE_TIMEOUT_S)


@contextlib.contextmanager
def signing_clock_offset(seconds: float) -> Iterator[None]:
    """Sign requests as if this machine's clock were ``seconds`` off (``--clock-offset``).

    botocore's SigV4 signer takes the time from ``botocore.auth.get_current_datetime`` at each
    signature; this swaps that one function for the duration and restores it, so what a skewed
    host would send can be reproduced without touching the system clock. The signing code
    itself stays botocore's.
    """
    if not seconds:
        yield
        return
    original = getattr(botocore.auth, _SIGNING_CLOCK)  # not in botocore-stubs

    def shifted(remove_tzinfo: bool = True) -> datetime.datetime:
        now: datetime.datetime = original(remove_tzinfo)
        return now + datetime.timedelta(seconds=seconds)

    setattr(botocore.auth, _SIGNING_CLOCK, shifted)
    try:
        yield
    finally:
        setattr(botocore.auth, _SIGNING_CLOCK, original)


# -- endpoint and TLS ----------------------------------------------------------
def _host_port(settings: S3Settings) -> tuple[str, int, bool]:
    parts = urlsplit(settings.endpoint_url or "https://s3.amazonaws.com")
    https = parts.scheme == "https"
    return parts.hostname or "", parts.port or (443 if https else 80), https


def check_connect(settings: S3Settings) -> Result:
    """DNS resolution and a TCP connection to the endpoint, timed."""
    host, port, _ = _host_port(settings)
    where = endpoint_label(settings)
    start = time.perf_counter()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return Result("endpoint", FAIL, f"{where}: the name {host!r} does not resolve ({exc.strerror or exc})",
                      "check host_base in the config (spelling, DNS, /etc/hosts)")
    resolved = (time.perf_counter() - start) * 1000
    try:
        with socket.create_connection((host, port), timeout=min(settings.connect_timeout, PROBE_TIMEOUT_S)):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        return Result("endpoint", FAIL, f"{where}: cannot connect to {host}:{port} ({why})",
                      "is the store running and listening on that port? check host_base and any firewall")
    total = (time.perf_counter() - start) * 1000
    address = infos[0][4][0]
    return Result("endpoint", PASS, f"{where} -> {address}:{port}, resolved in {resolved:.1f} ms, "
                                    f"connected in {total - resolved:.1f} ms")


def check_tls(settings: S3Settings) -> Result:
    """The certificate chain and host name of an https endpoint, checked by Python's ssl module
    with the CA bundle botocore would use (``ca_bundle`` or certifi's)."""
    host, port, https = _host_port(settings)
    if not https:
        return Result("tls", SKIP, "http endpoint: no TLS (traffic, though not the secret, is readable on the way)")
    if not settings.verify_ssl:
        return Result("tls", WARN, "verify_ssl = false: the certificate is not checked",
                      "set ca_bundle to the CA that signed the endpoint's certificate and drop verify_ssl = false")
    bundle = settings.ca_bundle or get_cert_path(True)
    context = ssl.create_default_context(cafile=bundle)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            version, cert = tls.version(), tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
            return Result("tls", FAIL, f"certificate does not match {host!r} ({reason})",
                          "use the host name the certificate was issued for in host_base")
        return Result("tls", FAIL, f"certificate not trusted with CA bundle {bundle} ({reason})",
                      "set ca_bundle = <file of the CA that signed the endpoint's certificate> in the cluster section")
    except (OSError, ssl.SSLError) as exc:
        return Result("tls", FAIL, f"TLS handshake with {host}:{port} failed ({exc})",
                      "is the port an https listener? (http and https usually differ, e.g. RGW 7480/7443)")
    not_after = cert.get("notAfter", "?")
    return Result("tls", PASS, f"{version}, certificate for {host} verified with {bundle}, valid until {not_after}")


# -- credentials and clock -----------------------------------------------------
@dataclass
class ServerAnswer:
    """What the credentials request brought back: the error code (if any) and the server's clock."""

    code: str | None
    server_time: float | None
    local_time: float


def ask_server(settings: S3Settings, clock_offset: float = 0.0) -> tuple[ServerAnswer, Result | None]:
    """A signed ListBuckets. Returns the answer, or a FAIL Result when no HTTP answer came.

    ``clock_offset`` is the :func:`signing_clock_offset` in force: this host's clock as the signer
    sees it is the wall clock plus it."""
    client = make_client(probe_settings(settings))
    before = time.time()
    code: str | None = None
    try:
        response: Any = client.list_buckets()
    except ClientError as exc:
        response, code = exc.response, str(exc.response.get("Error", {}).get("Code", "") or "?")
    except NoCredentialsError:
        return ServerAnswer(None, None, before), Result(
            "credentials", FAIL, "no credentials found",
            "set access_key/secret_key in the cluster section, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    except BotoCoreError as exc:
        return ServerAnswer(None, None, before), Result("credentials", FAIL, f"no answer ({type(exc).__name__})",
                                                        "see the endpoint and TLS checks above")
    after = time.time()
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    server = email.utils.parsedate_to_datetime(date).timestamp() if date else None
    return ServerAnswer(code, server, (before + after) / 2 + clock_offset), None


def check_credentials(settings: S3Settings, answer: ServerAnswer) -> Result:
    """Verdict on the ListBuckets answer: accepted, signature refused, or not allowed to list."""
    who = "static keys" if settings.access_key else (f"profile {settings.profile}" if settings.profile
                                                     else "the boto3 chain")
    if answer.code is None:
        return Result("credentials", PASS, f"accepted ({who}; ListBuckets answered)")
    if answer.code == "RequestTimeTooSkewed":
        return Result("credentials", SKIP, "not checked: the server refused the request's time "
                                           "(RequestTimeTooSkewed) before looking at the signature; see clock")
    if answer.code in _SIGNATURE_CODES:
        return Result("credentials", FAIL, f"refused ({answer.code}, {who})",
                      "check access_key and secret_key in the cluster section (a secret with a stray space or "
                      "quote fails like this)")
    if answer.code in ("AccessDenied", "Forbidden", "403"):
        return Result("credentials", WARN, f"signature accepted, but ListBuckets is denied ({who})",
                      "fine for a user limited to one bucket; the bucket check below says whether it can list that")
    return Result("credentials", FAIL, f"the server answered ListBuckets with {answer.code}",
                  "check the endpoint is an S3 API (not a web console) and the credentials")


def check_clock(answer: ServerAnswer) -> Result:
    """This host's (signing) clock against the server's ``Date``."""
    if answer.server_time is None:
        return Result("clock", WARN, "the server sent no Date header: skew unknown",
                      "keep the host's clock synchronised (chrony/ntpd)")
    skew = answer.local_time - answer.server_time
    ahead = f"{abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server (Date header, +-1 s)"
    if abs(skew) > SIGV4_MAX_SKEW_S:
        return Result("clock", FAIL, f"this host's clock is {ahead}: past SigV4's 15 min every request is "
                                     f"refused (RequestTimeTooSkewed, often read as bad credentials)",
                      "synchronise the clock (e.g. `chronyc makestep` or `timedatectl set-ntp true`)")
    if abs(skew) > WARN_SKEW_S:
        return Result("clock", WARN, f"this host's clock is {ahead}; requests fail past 15 min",
                      "synchronise the clock (chrony/ntpd)")
    return Result("clock", PASS, f"skew {skew:+.1f} s (limit {SIGV4_MAX_SKEW_S} s)")


# -- bucket and checksums ------------------------------------------------------
def check_bucket(settings: S3Settings, bucket: str, prefix: str) -> Result:
    """One ListObjectsV2 page under the prefix: the bucket exists and this user may list it."""
    client = make_client(probe_settings(settings))
    try:
        page = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "") or "?")
        if code == "NoSuchBucket":
            return Result("bucket", FAIL, f"bucket {bucket!r} does not exist at {endpoint_label(settings)}",
                          f"create it (`aws s3 mb s3://{bucket}`, or `blip3o-upload --create-bucket`) or fix the URI")
        if code in ("AccessDenied", "403"):
            return Result("bucket", FAIL, f"listing s3://{bucket}/{prefix} is denied ({code})",
                          "grant this user s3:ListBucket on the bucket (the dataset lists folders of data.json)")
        return Result("bucket", FAIL, f"listing s3://{bucket}/{prefix} failed ({code})",
                      "see the checks above")
    except BotoCoreError as exc:
        return Result("bucket", FAIL, f"listing s3://{bucket}/{prefix} got no answer ({type(exc).__name__})",
                      "see the endpoint check above")
    count = page.get("KeyCount", len(page.get("Contents", [])))
    more = "+" if page.get("IsTruncated") else ""
    if not count:
        return Result("bucket", WARN, f"s3://{bucket}/{prefix} exists but holds no objects",
                      "upload the data (blip3o-upload) or fix the prefix")
    return Result("bucket", PASS, f"s3://{bucket}/{prefix} listed: {count}{more} objects in the first page")


def check_checksums(settings: S3Settings, client_config: Any = None) -> Result:
    """The flexible-checksum settings of the client the dataset uses.

    boto3/botocore >= 1.36 default to ``when_supported``: a CRC32 on every PUT sent as an
    aws-chunked body with a trailer, and checksum validation of GETs. Ceph RGW 16 answers such
    PUTs ``411 MissingContentLength`` over https (tests/integration/test_ceph_https.py) and older
    MinIO rejects the trailer; ``when_required`` sends plain Content-Length bodies (our PUTs carry
    Content-MD5 instead). ``botocore_config`` sets it off AWS; this shows what a client really got
    (``client_config``: another client's ``meta.config``, default the one blip3o_storage builds).
    """
    import botocore

    config = client_config if client_config is not None else make_client(probe_settings(settings)).meta.config
    request = getattr(config, "request_checksum_calculation", None) or "when_supported"
    response = getattr(config, "response_checksum_validation", None) or "when_supported"
    what = f"request_checksum_calculation={request}, response_checksum_validation={response} " \
           f"(botocore {botocore.__version__})"
    if settings.is_aws or request == "when_required":
        return Result("checksums", PASS, what + ("" if settings.is_aws else "; suits RGW/MinIO"))
    return Result("checksums", WARN, what + ": RGW answers such PUTs over https with 411 MissingContentLength",
                  "use blip3o_storage's clients (botocore_config), or set AWS_REQUEST_CHECKSUM_CALCULATION="
                  "when_required for other boto3 tools")
