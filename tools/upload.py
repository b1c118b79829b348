#!/usr/bin/env python3
"""Upload an extracted dataset folder (images, captions, data.json) to S3 / Ceph RGW.

Usage::

    python tools/upload.py --bucket B [--prefix P] [--config petreloss.conf] \
        [--endpoint-url URL] [--only-referenced] [--workers N] [--dry-run] SRC

    python tools/upload.py --bucket B --prefix P --verify-only SRC

Resumable: one LIST of the prefix, and every object whose size and ETag
already match the local file is skipped, so re-running after a crash or Ctrl-C
uploads only the rest (and a finished upload sends no PUT at all). After the
upload every key is verified (size + MD5/multipart ETag) with one more LIST.
Dot-files and dot-folders (extraction temp dirs, done-markers) are not uploaded.

Exit status: 0 all good; 1 any file failed, missing or mismatched; 2 bad
usage, config, credentials, bucket or key names; 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional

try:
    import blip3o_storage  # noqa: F401
except ImportError:  # run as `python tools/upload.py` without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from blip3o_storage import Storage
from blip3o_storage.config import load_config
from blip3o_storage.errors import (AccessDeniedError, BucketNotFoundError, ConfigError, InvalidPathError,
                                   StorageError)
from blip3o_storage.upload import (DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MIN_PART_SIZE, MiB,
                                   UploadInterrupted, UploadPlan, list_existing, normalise_prefix, plan_upload,
                                   upload_all, verify)

log = logging.getLogger("upload")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_SHOW = 50  # failures listed by name before "... and N more"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", metavar="SRC", type=Path,
                    help="folder to upload, e.g. data/BLIP3o-60k (with raw/ and data.json); keys mirror its layout")
    ap.add_argument("--bucket", required=True, help="target bucket name")
    ap.add_argument("--prefix", default="", help="key prefix (folder) inside the bucket; default: bucket root")
    ap.add_argument("--config", default=None,
                    help="petreloss.conf-style file with access_key/secret_key/host_base; "
                         "default: boto3 chain (AWS_* env, profiles) or $BLIP3O_CEPH_CONFIG")
    ap.add_argument("--endpoint-url", default=None, help="S3 endpoint, e.g. http://10.0.0.1:7480 (overrides the config)")
    ap.add_argument("--only-referenced", action="store_true",
                    help="upload only data.json and the files it references (missing ones are failures)")
    ap.add_argument("--data-json", type=Path, default=None,
                    help="data.json for --only-referenced (default: SRC/data.json)")
    ap.add_argument("--ref-root", type=Path, default=None,
                    help="folder data.json paths are relative to (default: SRC/raw if it exists, else SRC)")
    ap.add_argument("--workers", type=int, default=16, help="parallel uploads (default 16)")
    ap.add_argument("--multipart-threshold-mb", type=float, default=DEFAULT_MULTIPART_THRESHOLD / MiB,
                    help="files larger than this go multipart (MiB, default %(default)g)")
    ap.add_argument("--part-size-mb", type=float, default=DEFAULT_PART_SIZE / MiB,
                    help="multipart part size (MiB, >= 5, default %(default)g)")
    ap.add_argument("--dry-run", action="store_true", help="list and compare, but write nothing")
    ap.add_argument("--verify-only", action="store_true",
                    help="upload nothing; report keys missing from or different in the bucket")
    ap.add_argument("--no-verify", action="store_true", help="skip the verification LIST after uploading")
    ap.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (never shows secrets)")
    return ap


def _usage_error(args: argparse.Namespace) -> Optional[str]:
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
    if not args.src.is_dir():
        return f"SRC {args.src} does not exist or is not a folder"
    if (args.data_json or args.ref_root) and not args.only_referenced:
        return "--data-json/--ref-root only make sense with --only-referenced"
    return None


def _log_failures(what: str, failures: list) -> None:
    for key, reason in failures[:_SHOW]:
        log.error("%s %s: %s", what, key, reason)
    if len(failures) > _SHOW:
        log.error("... and %d more %s", len(failures) - _SHOW, what)


def _plan(args: argparse.Namespace) -> UploadPlan:
    data_json = None
    if args.only_referenced:
        data_json = args.data_json or (args.src / "data.json")
    plan = plan_upload(args.src, args.prefix, data_json, ref_root=args.ref_root)
    log.info("planned %d files (%.1f MB) from %s%s", len(plan.items), plan.total_bytes / 1e6, args.src,
             f"; {plan.skipped_hidden} hidden entries (dot-files/dirs) not uploaded" if plan.skipped_hidden else "")
    return plan


def run(args: argparse.Namespace) -> int:
    """Everything after argument parsing; StorageErrors escape to :func:`main`."""
    try:
        plan = _plan(args)
    except InvalidPathError:
        raise
    except StorageError as exc:  # SRC or data.json unreadable: a usage problem, nothing was sent
        raise ConfigError(str(exc)) from None
    prefix = normalise_prefix(args.prefix)
    config = load_config(args.config, endpoint_url=args.endpoint_url)
    pool = max(args.workers, 10)
    overrides = {"max_pool_connections": pool} if any(
        s.max_pool_connections < pool for s in config.clusters.values()) else {}
    storage = Storage(config, **overrides)
    backend = storage.backend_for(f"s3://{args.bucket}/{prefix}")
    log.debug("target s3://%s/%s via %s", args.bucket, prefix, backend.settings.describe())
    part_size = int(args.part_size_mb * MiB)

    if args.create_bucket and not args.dry_run and not args.verify_only:
        try:
            if backend.ensure_bucket(args.bucket):
                log.info("created bucket %s", args.bucket)
        except StorageError as exc:
            if isinstance(exc, (AccessDeniedError, ConfigError)):
                raise
            raise ConfigError(f"cannot create bucket {args.bucket!r}: {exc}") from None
    try:
        existing = list_existing(backend, args.bucket, prefix)
    except BucketNotFoundError:
        if args.dry_run and args.create_bucket:
            existing = {}
        else:
            raise
    log.info("%d objects already under s3://%s/%s", len(existing), args.bucket, prefix)

    if args.verify_only:
        report = verify(plan.items, backend, args.bucket, prefix, part_size=part_size, workers=args.workers)
        for key in report.missing[:_SHOW]:
            log.error("missing %s", key)
        if len(report.missing) > _SHOW:
            log.error("... and %d more missing", len(report.missing) - _SHOW)
        _log_failures("mismatched", report.mismatched)
        _log_failures("unreadable", report.failed)
        _log_failures("failed", plan.failed)
        print(report.summary() + (f", {len(plan.failed)} referenced files missing locally" if plan.failed else ""))
        return EXIT_OK if report.passed and not plan.failed else EXIT_FAILED

    # The bar counts bytes that need sending: files whose size already matches are most likely skipped.
    to_send = sum(i.size for i in plan.items if existing.get(i.key, (-1,))[0] != i.size)
    with logging_redirect_tqdm(), tqdm(total=to_send, unit="B", unit_scale=True, unit_divisor=1024,
                                       desc="dry run" if args.dry_run else "upload", disable=None) as bar:
        try:
            report = upload_all(plan.items, backend, args.bucket, prefix=prefix, workers=args.workers,
                                multipart_threshold=int(args.multipart_threshold_mb * MiB), part_size=part_size,
                                dry_run=args.dry_run, progress=bar.update, existing=existing)
        except UploadInterrupted as exc:
            bar.close()
            report = exc.report
            _log_failures("failed", report.failed)
            print(f"interrupted: {report.summary()}; re-run the same command to upload the rest", flush=True)
            return EXIT_INTERRUPTED
    report.failed[:0] = plan.failed
    _log_failures("failed", report.failed)
    print(report.summary(), flush=True)
    status = EXIT_OK if report.ok else EXIT_FAILED
    if args.dry_run or args.no_verify:
        return status
    uploaded_ok = [i for i in plan.items if i.key in report.etags]
    check = verify(uploaded_ok, backend, args.bucket, prefix, part_size=part_size, workers=args.workers,
                   known_etags=report.etags)
    for key in check.missing[:_SHOW]:
        log.error("missing after upload: %s", key)
    _log_failures("mismatched after upload", check.mismatched)
    print(check.summary(), flush=True)
    return status if check.passed else EXIT_FAILED


def main(argv: Optional[list[str]] = None) -> int:
    """CLI entry point; returns the process exit status."""
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):  # their debug logs show request headers
        logging.getLogger(noisy).setLevel(logging.WARNING)
    problem = _usage_error(args)
    if problem:
        ap.print_usage(sys.stderr)
        log.error("%s", problem)
        return EXIT_USAGE
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to finish", flush=True)
        return EXIT_INTERRUPTED
    except BucketNotFoundError:
        log.error("bucket %r does not exist at %s; create it or pass --create-bucket", args.bucket,
                  args.endpoint_url or "the configured endpoint")
        return EXIT_USAGE
    except (ConfigError, InvalidPathError, AccessDeniedError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except StorageError as exc:
        log.error("%s", exc)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
