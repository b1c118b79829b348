"""Command-line plumbing shared by the tools (``blip3o_storage.cli.*``, run as console scripts
``blip3o-*`` or as ``python tools/<name>.py``).

Every tool returns one exit-status scheme: :data:`EXIT_OK` (0) all good,
:data:`EXIT_FAILED` (1) some work failed, :data:`EXIT_USAGE` (2) bad usage or
config (argparse's own errors are 2 as well), :data:`EXIT_INTERRUPTED` (130)
Ctrl-C, said in one line, without a traceback (:func:`interruptible`).

For ``tools/upload.py`` and ``tools/upload_shards.py`` this module also holds
the option groups both tools take, logging set-up, failure and verify
reports, ``--create-bucket`` (:func:`create_bucket`), the after-upload verify
step and :func:`run_cli`, which maps what escapes a tool's ``run`` to the exit
status, the same for both tools:

* 0 all good;
* 1 any file failed, missing or mismatched, or the server kept failing
  (transient errors that outlasted every retry), or could not be reached (the
  run stops once a round of files in a row got no answer, and says so once,
  naming the endpoint): re-running may help, and sends only what is missing;
* 2 bad usage, config, credentials, bucket or key names -- an invalid bucket
  name (named, with the rule), a bucket that does not exist, or that
  ``--create-bucket`` cannot create (invalid name, taken, access denied), a
  source folder that cannot be walked: nothing was sent, fix the command, the
  config or the folder first;
* 130 interrupted (Ctrl-C).

Every message goes to the calling tool's logger, so log lines keep its name.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from blip3o_storage.errors import (
    AccessDeniedError,
    BucketNotFoundError,
    ConfigError,
    InvalidPathError,
    StorageError,
    TransientStorageError,
)
from blip3o_storage.storage.config import load_config
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.transfer.upload import (
    DEFAULT_MULTIPART_THRESHOLD,
    DEFAULT_PART_SIZE,
    MIN_PART_SIZE,
    MiB,
    Signature,
    UploadItem,
    VerifyReport,
    is_unreachable,
    list_existing,
    unreachable_message,
    verify,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SHOW = 50  # failures listed by name before "... and N more"
NOISY_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")  # their debug logs show request headers
#: What botocore itself accepts as a bucket name (anything else fails before a request is sent).
CLIENT_BUCKET_RE = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")
#: S3's rule for new buckets (CreateBucket): 3-63 characters, lower-case letters, digits, '.' and '-',
#: starting and ending with a letter or digit, no '..', not an IP address.
S3_BUCKET_RULE = ("S3 bucket names are 3-63 characters of lower-case letters, digits, '.' and '-', "
                  "starting and ending with a letter or digit")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
#: Errors that mean bad usage, config, credentials or key names: nothing was (or could be) sent.
USAGE_ERRORS: tuple[type[StorageError], ...] = (ConfigError, InvalidPathError, AccessDeniedError)


INTERRUPTED_MESSAGE = "interrupted; re-run the same command to finish"


class _Uncounted:
    """What :func:`progress_bar` gives where tqdm would show nothing: ``update`` and ``close`` do nothing."""

    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextlib.contextmanager
def progress_bar(**options: Any) -> Iterator[Any]:
    """A tqdm bar (``options`` as tqdm's) with log lines printed above it; on a stderr that is
    not a terminal, where tqdm's ``disable=None`` shows nothing, a bar that does nothing, without
    importing tqdm (~60 ms: 7% of a no-op ``tools/upload.py`` run of 6,600 files)."""
    if options.get("disable", False) is None and not sys.stderr.isatty():
        yield _Uncounted()
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm
    with logging_redirect_tqdm(), tqdm(**options) as bar:
        yield bar


# -- exit statuses -----------------------------------------------------------
def interruptible(body: Callable[[], int], message: str = INTERRUPTED_MESSAGE) -> int:
    """``body()``'s exit status; Ctrl-C (KeyboardInterrupt) anywhere in it prints ``message``
    and gives :data:`EXIT_INTERRUPTED` instead of a traceback. Every tool's ``main`` runs its work
    through this, so all of them stop the same way."""
    try:
        return body()
    except KeyboardInterrupt:
        print(message, flush=True)
        return EXIT_INTERRUPTED


def ignore_sigint() -> None:
    """Initializer for worker processes: Ctrl-C goes to the whole process group, and the parent
    alone decides what an interrupt does (workers would otherwise each print a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# -- options -----------------------------------------------------------------
def parser_from_doc(doc: str) -> argparse.ArgumentParser:
    """A tool's parser described by its module docstring: the first paragraph as the
    description, the paragraph starting "Exit status" as the ``--help`` epilog."""
    paragraphs = doc.split("\n\n")
    return argparse.ArgumentParser(description=paragraphs[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=next(p for p in paragraphs if p.startswith("Exit status")))


def add_connection_options(ap: argparse.ArgumentParser, *, config_help: str, endpoint_help: str) -> None:
    """``--bucket --prefix --config --endpoint-url``."""
    ap.add_argument("--bucket", required=True, help="target bucket name")
    ap.add_argument("--prefix", default="", help="key prefix (folder) inside the bucket; default: bucket root")
    ap.add_argument("--config", default=None, help=config_help)
    ap.add_argument("--endpoint-url", default=None, help=endpoint_help)


def add_transfer_options(ap: argparse.ArgumentParser, *, workers: int, workers_help: str, dry_run_help: str,
                         verify_only_help: str) -> None:
    """``--workers``, part sizes, ``--dry-run --verify-only --no-verify --create-bucket -v``."""
    ap.add_argument("--workers", type=int, default=workers, help=workers_help)
    ap.add_argument("--multipart-threshold-mb", type=float, default=DEFAULT_MULTIPART_THRESHOLD / MiB,
                    help="files larger than this go multipart (MiB, default %(default)g)")
    ap.add_argument("--part-size-mb", type=float, default=DEFAULT_PART_SIZE / MiB,
                    help="multipart part size (MiB, >= 5, default %(default)g)")
    ap.add_argument("--dry-run", action="store_true", help=dry_run_help)
    ap.add_argument("--verify-only", action="store_true", help=verify_only_help)
    ap.add_argument("--no-verify", action="store_true", help="skip the verification LIST after uploading")
    ap.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (never shows secrets)")


def common_usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of :func:`add_connection_options` / :func:`add_transfer_options`."""
    if args.workers < 1:
        return "--workers must be >= 1"
    if args.part_size_mb * MiB < MIN_PART_SIZE:
        return "--part-size-mb must be >= 5 (the S3 minimum part size)"
    if args.multipart_threshold_mb <= 0:
        return "--multipart-threshold-mb must be > 0"
    if args.dry_run and args.verify_only:
        return "--dry-run and --verify-only cannot be combined"
    if not args.bucket or "/" in args.bucket or args.bucket.startswith("s3:"):
        return f"--bucket {args.bucket!r} must be a bare bucket name (put folders in --prefix)"
    if not CLIENT_BUCKET_RE.match(args.bucket):
        return f"--bucket {args.bucket!r} is not a valid bucket name: {S3_BUCKET_RULE}"
    return None


def bucket_name_problem(name: str) -> str | None:
    """Why S3 would refuse to create a bucket called ``name``, or None. Existing buckets on
    relaxed servers (old RGW, legacy AWS) may break the rule, so this only explains, never refuses."""
    if not _S3_BUCKET_RE.match(name) or ".." in name or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return f"{name!r} is not a valid name for a new bucket ({S3_BUCKET_RULE}, no '..', not an IP address)"
    return None


# -- logging and reports -----------------------------------------------------
def configure_logging(verbose: bool) -> None:
    """Timestamped logs to stderr; boto's own debug logs stay off (they show request headers)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_failures(log: logging.Logger, what: str, failures: Sequence[tuple[str, str]]) -> None:
    """``<what> <key>: <reason>`` for the first :data:`SHOW`, then ``... and N more <what>``."""
    for key, reason in failures[:SHOW]:
        log.error("%s %s: %s", what, key, reason)
    if len(failures) > SHOW:
        log.error("... and %d more %s", len(failures) - SHOW, what)


def report_verify(log: logging.Logger, check: VerifyReport, when: str = "") -> None:
    """Log what :func:`verify` found wrong: missing, mismatched and unreadable keys.

    ``when`` (e.g. ``"after upload"``) goes after the kind: ``missing after upload: <key>``.
    """
    missing, what = (f"missing {when}:", f"missing {when}") if when else ("missing", "missing")
    for key in check.missing[:SHOW]:
        log.error("%s %s", missing, key)
    if len(check.missing) > SHOW:
        log.error("... and %d more %s", len(check.missing) - SHOW, what)
    suffix = f" {when}" if when else ""
    log_failures(log, "mismatched" + suffix, check.mismatched)
    log_failures(log, "unreadable" + suffix, check.failed)


# -- the target --------------------------------------------------------------
def connect(args: argparse.Namespace, prefix: str) -> S3Backend:
    """The backend of ``s3://<--bucket>/<prefix>`` with a connection pool for ``--workers``."""
    config = load_config(args.config, endpoint_url=args.endpoint_url)
    pool = max(args.workers, 10)
    overrides = {"max_pool_connections": pool} if any(
        s.max_pool_connections < pool for s in config.clusters.values()) else {}
    return Storage(config, **overrides).s3_backend(f"s3://{args.bucket}/{prefix}")


def create_bucket(log: logging.Logger, backend: S3Backend, args: argparse.Namespace) -> None:
    """``--create-bucket``: create ``args.bucket`` if it does not exist (not with ``--dry-run``
    or ``--verify-only``, which write nothing).

    A bucket that cannot be created is a bucket problem (exit 2 in :func:`run_cli`):
    denied credentials, config and path errors escape as they are, any other refusal
    (invalid or taken name, ...) as a :class:`ConfigError`. A transient server failure
    that outlasted the retries escapes as it is (exit 1: re-running may help).
    """
    if not args.create_bucket or args.dry_run or args.verify_only:
        return
    try:
        if backend.ensure_bucket(args.bucket):
            log.info("created bucket %s", args.bucket)
    except TransientStorageError:
        raise
    except USAGE_ERRORS:
        raise
    except StorageError as exc:
        raise ConfigError(f"cannot create bucket {args.bucket!r}: {exc}") from None


def list_target(backend: S3Backend, args: argparse.Namespace, prefix: str) -> dict[str, tuple[int, str | None]]:
    """:func:`list_existing` of the target; a missing bucket is empty for ``--dry-run --create-bucket``.
    A store that does not answer raises TransientStorageError naming its endpoint."""
    try:
        return list_existing(backend, args.bucket, prefix)
    except BucketNotFoundError:
        if not (args.dry_run and args.create_bucket):
            raise
        return {}
    except TransientStorageError as exc:
        if is_unreachable(exc):
            raise TransientStorageError(unreachable_message(backend, exc, "listing the target failed")) from exc
        raise


def verify_after_upload(log: logging.Logger, items: Iterable[UploadItem], backend: S3Backend,
                        args: argparse.Namespace, prefix: str, *, part_size: int,
                        known_etags: dict[str, str] | None = None, known_stats: dict[str, Signature] | None = None,
                        open_listing: Callable[[], Any] | None = None, **options: Any) -> bool:
    """One more LIST: every item present with its size and ETag. Logs problems, prints the
    summary; True if all passed. ``open_listing`` makes verify's streamed listing (opened inside
    the same store-unreachable handling); ``options`` go to :func:`verify` as they are."""
    try:
        if open_listing is not None:
            options["remote"] = open_listing()
        check = verify(items, backend, args.bucket, prefix, part_size=part_size, workers=args.workers,
                       known_etags=known_etags, known_stats=known_stats, **options)
    except TransientStorageError as exc:
        if is_unreachable(exc):
            raise TransientStorageError(unreachable_message(backend, exc, "the verification failed")) from exc
        raise
    report_verify(log, check, "after upload")
    print(check.summary(), flush=True)
    return check.passed


# -- main --------------------------------------------------------------------
def run_cli(parser: argparse.ArgumentParser, argv: Sequence[str] | None, log: logging.Logger,
            run: Callable[[argparse.Namespace], int],
            usage_error: Callable[[argparse.Namespace], str | None], *,
            extra_errors: Mapping[type[StorageError], int] | None = None) -> int:
    """Parse ``argv``, check usage (:func:`common_usage_error`, then the tool's ``usage_error``),
    call ``run(args)`` and map what escapes it to an exit status.

    ``extra_errors`` (error class -> exit status) are checked, in order, before the
    defaults: a missing bucket or :data:`USAGE_ERRORS` (including a bucket that
    :func:`create_bucket` cannot create) -> 2, any other StorageError -> 1, Ctrl-C -> 130.
    """
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    problem = common_usage_error(args) or usage_error(args)
    if problem:
        parser.print_usage(sys.stderr)
        log.error("%s", problem)
        return EXIT_USAGE
    try:
        return interruptible(lambda: run(args))
    except BucketNotFoundError:
        why = bucket_name_problem(args.bucket)
        log.error("bucket %r does not exist at %s; %s", args.bucket, args.endpoint_url or "the configured endpoint",
                  f"{why}, so --create-bucket cannot create it either: fix --bucket" if why
                  else "create it or pass --create-bucket")
        return EXIT_USAGE
    except StorageError as exc:
        log.error("%s", exc)
        for cls, status in (extra_errors or {}).items():
            if isinstance(exc, cls):
                return status
        return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED
