"""Retries that botocore does not do for us, and one deadline for both.

botocore's retry handler covers the request/response-header phase (5xx,
throttling, connection errors). It does not cover errors while *reading the
body* of a GetObject (reset mid-body, truncated body, read timeouts), and it
gives up after its own attempts. :func:`call_with_retries` wraps a whole
operation, body read included, and retries those with jittered backoff.

Attempts multiply (botocore's 5 inside each of our 5), so counting them does
not bound time: a store that accepts connections and never answers cost 300 s
per read and ~25 min per upload at 60 s a timeout. An :class:`OperationClock`
bounds the operation instead: no attempt, ours or botocore's (via the
``needs-retry`` hook of :func:`install_deadline_hooks`), starts after its
``deadline``; the attempt running then ends at its socket timeouts. So a stalled
operation fails within ``deadline + connect_timeout + read_timeout`` (50 s at
most by default; 31 s measured for get, stat and put), while a transfer that keeps receiving bytes is
never cut: ``read_timeout`` is per socket wait, and the deadline only stops
*retrying*. A failure after the deadline is final (not retried) even if the
attempt had been progressing; our objects and upload parts are small enough
(<= a multipart part) that one attempt fits many times over in the deadline.
"""
from __future__ import annotations

import logging
import random
import ssl
import sys
import threading
import time
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Set, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import SSLError as BotoSSLError

from blip3o_storage.storage.http1 import TransportError
from blip3o_storage.storage.stats import Counters

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = {500, 502, 503, 504}
RETRYABLE_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                   "RequestTimeTooSkewed", "Throttling", "ThrottlingException", "503", "500"}
# botocore's own retry handler also retries 429 Too Many Requests: its hook must recognise it.
BOTOCORE_RETRYABLE_STATUS = RETRYABLE_STATUS | {429}


class RetryStats(Counters):
    """Counters a user can read: how often reads had to be retried, per process.

    ``calls`` are operations started; ``botocore_retries`` are retries botocore
    did inside one call; ``retries`` are the extra attempts made here on top of
    that (tallied ``by_reason``; ``stale-connection``: a request sent again at once because
    the idle keep-alive connection it went on had been closed by the server, see
    :mod:`~blip3o_storage.storage.http1`); ``failures`` are retryable failures that
    outlasted every attempt. A forked or unpickled copy starts at zero
    (:class:`~blip3o_storage.storage.stats.Counters`).
    """

    def __init__(self) -> None:
        super().__init__(("calls", "retries", "botocore_retries", "failures"), tallies=("by_reason",))

    def record_retry(self, reason: str) -> None:
        self.add(retries=1)
        self.tally("by_reason", reason)


def _urllib3_errors() -> Optional[ModuleType]:
    """urllib3's exception module if urllib3 is loaded, else None: then no urllib3 exception can
    exist, and a command-line upload (which never loads it: its requests go through
    :mod:`~blip3o_storage.storage.http1`) does not pay ~0.1 s to import it for these checks."""
    return sys.modules.get("urllib3.exceptions")


def tls_verify_failure(exc: BaseException) -> Optional[str]:
    """Why the server's TLS certificate was rejected (e.g. 'certificate verify failed:
    self-signed certificate'), or None if ``exc`` is not such a failure. It is final:
    every retry gets the same certificate."""
    if isinstance(exc, BotoSSLError):
        text = str(exc.kwargs.get("error", exc))
    elif isinstance(exc, ssl.SSLError) or _is_urllib3(exc, "SSLError"):  # http1 raises the stdlib's
        text = str(exc)
    else:
        return None
    if "CERTIFICATE_VERIFY_FAILED" not in text:
        return None
    return text.split("] ", 1)[-1].split(" (_ssl.c", 1)[0].strip()


def retry_reason(exc: BaseException) -> Optional[str]:
    """Why ``exc`` is worth retrying, or None when it is final (404, 403, bad TLS certificate, ...)."""
    if tls_verify_failure(exc):
        return None
    if isinstance(exc, DeadlineExceeded):
        return exc.reason
    if isinstance(exc, TransportError):  # the signed-HTTP path (storage/http1.py)
        return exc.reason
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return _error_reason(str(error.get("Code", "")), status, RETRYABLE_STATUS)
    if isinstance(exc, (IncompleteReadError, ResponseStreamingError)):
        return "truncated-body"
    if isinstance(exc, ReadTimeoutError):
        return "read-timeout"
    if isinstance(exc, (ConnectionClosedError, BotoConnectionError)):
        return "connection"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, TimeoutError)):
        return "connection-reset"
    urllib3_errors = _urllib3_errors()
    if urllib3_errors is not None and isinstance(exc, urllib3_errors.HTTPError):
        return _urllib3_reason(exc, urllib3_errors)
    if isinstance(exc, BotoCoreError) and "Connection" in type(exc).__name__:
        return "connection"
    return None


def _error_reason(code: str, status: Any, statuses: Set[int]) -> Optional[str]:
    """The retry reason for an S3 error answer (its code, else its status), or None when final."""
    if code in RETRYABLE_CODES or status in statuses:
        return code or str(status)
    return None


def _is_urllib3(exc: BaseException, name: str) -> bool:
    errors = _urllib3_errors()
    return errors is not None and isinstance(exc, getattr(errors, name))


def _urllib3_reason(exc: BaseException, errors: ModuleType) -> str:
    """Name a urllib3 failure (raised through botocore's transport) as botocore's would be named."""
    import http.client  # loaded with urllib3 already
    if isinstance(exc, errors.ReadTimeoutError):
        return "read-timeout"
    if isinstance(exc, (errors.NewConnectionError, errors.ConnectTimeoutError)):
        return "connection"
    causes = [exc, *exc.args] if isinstance(exc, errors.ProtocolError) else [exc]
    if any(isinstance(c, (errors.IncompleteRead, http.client.IncompleteRead)) for c in causes):
        return "truncated-body"
    if any(isinstance(c, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)) for c in causes):
        return "connection-reset"
    return "http-protocol"


# Failures botocore has already retried itself (its own attempts, or until its
# retry quota ran out): one more round here is enough; more would multiply.
REQUEST_PHASE_REASONS_EXTRA_ROUNDS = 1


def _request_phase(exc: BaseException) -> bool:
    """True when botocore has already retried ``exc`` itself: a ClientError
    that says so, or a botocore connection error. Errors from the signed-HTTP
    path (RetryAttempts 0, urllib3 exceptions) get our full attempts."""
    if isinstance(exc, ClientError):
        return exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0) > 0
    return isinstance(exc, BotoConnectionError)


class OperationClock:
    """One operation's time budget and request count, shared by our attempts and
    botocore's: :meth:`active` makes it the calling thread's current operation,
    which the botocore hooks and the signed-HTTP path read."""

    def __init__(self, deadline: Optional[float], *, started: Optional[float] = None, requests: int = 0) -> None:
        self.deadline = deadline
        #: ``time.monotonic()`` when the operation started (given when its first attempt ran before the clock).
        self.started = time.monotonic() if started is None else started
        #: HTTP requests sent for this operation (botocore's retries included).
        self.requests = requests

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - self.elapsed()

    def expired(self) -> bool:
        return self.remaining() <= 0

    @contextmanager
    def active(self) -> Iterator[OperationClock]:
        previous = getattr(_CURRENT, "clock", None)
        _CURRENT.clock = self
        try:
            yield self
        finally:
            _CURRENT.clock = previous


_CURRENT = threading.local()


def current_operation() -> Optional[OperationClock]:
    """The operation this thread is running under :func:`call_with_retries`, if any."""
    return getattr(_CURRENT, "clock", None)


def note_request() -> None:
    """Count one HTTP request against the current operation (the signed-HTTP path calls this)."""
    clock = current_operation()
    if clock is not None:
        clock.requests += 1


class DeadlineExceeded(Exception):
    """botocore was about to retry ``reason`` after the operation's deadline; raised
    from its ``needs-retry`` event instead, after ``attempts`` attempts."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(f"deadline passed after {attempts} attempt(s), last: {reason}")
        self.reason = reason
        self.attempts = attempts


def _response_reason(response: Any) -> Optional[str]:
    """Why botocore would retry this (http_response, parsed) answer, or None."""
    try:
        http_response, parsed = response
        status = http_response.status_code
        code = str((parsed or {}).get("Error", {}).get("Code", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return _error_reason(code, status, BOTOCORE_RETRYABLE_STATUS)


def _count_botocore_request(**_: Any) -> None:
    note_request()


def _stop_botocore_retries_at_deadline(attempts: int = 1, response: Any = None,
                                       caught_exception: Optional[BaseException] = None, **_: Any) -> None:
    """``needs-retry`` hook: past the current operation's deadline, a failure botocore
    would retry ends the call instead (before botocore's backoff sleep)."""
    clock = current_operation()
    if clock is None or not clock.expired():
        return None
    reason = retry_reason(caught_exception) if caught_exception is not None else _response_reason(response)
    if reason is not None:
        raise DeadlineExceeded(reason, attempts) from caught_exception
    return None


def install_deadline_hooks(client: Any) -> None:
    """Make a boto3 S3 client's own retries respect the calling operation's deadline
    and count its requests. Calls made outside :func:`call_with_retries` are untouched."""
    events = client.meta.events
    events.register_first("needs-retry.s3", _stop_botocore_retries_at_deadline)
    events.register("before-send.s3", _count_botocore_request)


def call_with_retries(fn: Callable[[], T], *, what: str, attempts: int, stats: RetryStats,
                      base_delay: float = 0.05, max_delay: float = 2.0,
                      clock: Optional[OperationClock] = None, failed: Optional[Exception] = None) -> T:
    """Run ``fn`` up to ``attempts`` times, retrying only retryable failures.

    Body-read failures (truncation, resets and timeouts mid-body) get the full
    ``attempts``; request-phase failures that botocore already retried get
    :data:`REQUEST_PHASE_REASONS_EXTRA_ROUNDS` more. With a ``clock``, no
    attempt starts after its deadline: it gives up once the next backoff would
    reach it (see the module docstring). The last
    exception is re-raised for the caller to map; ``what`` (a URI, never a
    secret) is logged.

    ``failed``: the first attempt already ran, outside this machinery, and raised this (the
    success fast path of :meth:`S3Backend._run <blip3o_storage.storage.s3_backend.S3Backend._run>`:
    nearly every request succeeds at once, and the clock, its thread-local and this loop cost
    ~8% of a GET's CPU); it is handled exactly as attempt 1's failure would be.
    """
    clock = clock or OperationClock(None)
    request_rounds = 0
    with clock.active():
        for attempt in range(1, attempts + 1):
            if attempt == 1 and failed is not None:
                exc: Exception = failed
            else:
                try:
                    return fn()
                except Exception as caught:  # noqa: BLE001 - classified below, re-raised when final
                    exc = caught
            reason = retry_reason(exc)
            if reason is not None and _request_phase(exc):
                request_rounds += 1
            exhausted = attempt == attempts or request_rounds > REQUEST_PHASE_REASONS_EXTRA_ROUNDS
            delay = min(max_delay, base_delay * (2 ** (attempt - 1))) * (0.5 + random.random())
            out_of_time = isinstance(exc, DeadlineExceeded) or clock.remaining() <= delay
            if reason is None or exhausted or out_of_time:
                if reason is not None:
                    stats.add(failures=1)
                    if out_of_time:
                        logger.debug("giving up on %s after %s: deadline %.3gs reached (%.1fs, %d requests)",
                                     what, reason, clock.deadline, clock.elapsed(), clock.requests)
                raise exc
            stats.record_retry(reason)
            logger.debug("retrying %s after %s (attempt %d/%d, sleeping %.2fs)", what, reason,
                         attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
