"""Upload an extracted dataset folder (images, captions, data.json) to S3 / Ceph RGW.

Usage::

    python tools/upload.py --bucket B [--prefix P] [--config petreloss.conf] \
        [--endpoint-url URL] [--only-referenced] [--workers N] [--dry-run] SRC

    python tools/upload.py --bucket B --prefix P --verify-only SRC

    python tools/upload.py --bucket B --prefix P --checksum SRC   # re-hash every file

Resumable: one LIST of the prefix, and every object whose size and ETag
already match the local file is skipped, so re-running after a crash or Ctrl-C
uploads only the rest (and a finished upload sends no PUT at all). After the
upload every key is verified (size + MD5/multipart ETag) with one more LIST (when
nothing was sent, the first LIST already matched every key and is the verification).
A local upload manifest (one per endpoint, bucket, prefix and resolved SRC, in
``$BLIP3O_UPLOAD_MANIFEST_DIR`` or ``~/.cache/blip3o-storage/upload-manifests``,
or ``--manifest-dir``) records each uploaded file's size, mtime, ctime, inode and
MD5/ETag, so a re-run does not read and hash files whose stat is unchanged; the
store is still listed, and a key missing there or with another size or ETag is
uploaded again. ``--checksum`` ignores the manifest and hashes every file (with
``--verify-only`` too). A damaged manifest is ignored with a warning.
Dot-files and dot-folders (extraction temp dirs, done-markers) are not uploaded,
by the same rule ``tools/make_data_json.py`` builds data.json with; symlinked
files and folders are followed; a folder that cannot be listed, a dangling
symlink or a symlink loop stops the run before anything is sent (exit 2). Every
file that SRC/data.json references must be uploaded: one that is hidden or
missing is a failure. A file that changes while it is uploaded is sent again
(up to 3 times, then a failure). When every recent request failed to reach the
store (refused, reset, timed out) the run stops, says so once naming the
endpoint, and exits 1; re-running uploads only what is missing.

Exit status (the same as ``tools/upload_shards.py``, see
``blip3o_storage.cli.common``): 0 all good; 1 any file failed, missing or
mismatched, or the server kept failing after retries; 2 bad usage, config,
credentials, bucket or key names (including a bucket that does not exist or
that --create-bucket cannot create); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from blip3o_storage.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    add_connection_options,
    add_transfer_options,
    connect,
    create_bucket,
    log_failures,
    parser_from_doc,
    progress_bar,
    report_verify,
    run_cli,
    verify_after_upload,
)
from blip3o_storage.errors import (
    BucketNotFoundError,
    ConfigError,
    InvalidPathError,
    StorageError,
    TransientStorageError,
)
from blip3o_storage.storage.s3_backend import S3Backend
from blip3o_storage.transfer.manifest import ENV_DIR, UploadManifest
from blip3o_storage.transfer.upload import (
    Listing,
    MiB,
    UploadInterrupted,
    UploadPlan,
    empty_listing,
    is_unreachable,
    normalise_prefix,
    open_remote,
    plan_upload,
    unreachable_message,
    upload_all,
    verify,
)

log = logging.getLogger("upload")


def build_parser() -> argparse.ArgumentParser:
    ap = parser_from_doc(__doc__)
    ap.add_argument("src", metavar="SRC", type=Path,
                    help="folder to upload, e.g. data/BLIP3o-60k (with raw/ and data.json); keys mirror its layout")
    add_connection_options(ap, config_help="petreloss.conf-style file with access_key/secret_key/host_base; "
                                           "default: boto3 chain (AWS_* env, profiles) or $BLIP3O_CEPH_CONFIG",
                           endpoint_help="S3 endpoint, e.g. http://10.0.0.1:7480 (overrides the config)")
    ap.add_argument("--only-referenced", action="store_true",
                    help="upload only data.json and the files it references (missing ones are failures)")
    ap.add_argument("--data-json", type=Path, default=None,
                    help="data.json for --only-referenced (default: SRC/data.json)")
    ap.add_argument("--ref-root", type=Path, default=None,
                    help="folder data.json paths are relative to (default: SRC/raw if it exists, else SRC)")
    add_transfer_options(ap, workers=16, workers_help="parallel uploads (default 16)",
                         dry_run_help="list and compare, but write nothing",
                         verify_only_help="upload nothing; report keys missing from or different in the bucket")
    ap.add_argument("--checksum", action="store_true",
                    help="hash every local file to compare it with the bucket, ignoring the upload manifest "
                         "(which is then rewritten)")
    ap.add_argument("--manifest-dir", type=Path, default=None,
                    help=f"folder of upload manifests (default: ${ENV_DIR}, else "
                         "~/.cache/blip3o-storage/upload-manifests)")
    return ap


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with this tool's own arguments (run_cli checks the shared ones first)."""
    if not args.src.is_dir():
        return f"SRC {args.src} does not exist or is not a folder"
    if (args.data_json or args.ref_root) and not args.only_referenced:
        return "--data-json/--ref-root only make sense with --only-referenced"
    return None


def _plan(args: argparse.Namespace) -> UploadPlan:
    data_json = None
    if args.only_referenced:
        data_json = args.data_json or (args.src / "data.json")
    plan = plan_upload(args.src, args.prefix, data_json, ref_root=args.ref_root)
    log.info("planned %d files (%.1f MB) from %s%s", len(plan.items), plan.total_bytes / 1e6, args.src,
             f"; {plan.skipped_hidden} hidden entries (dot-files/dirs) not uploaded" if plan.skipped_hidden else "")
    if plan.skipped_special:
        log.warning("%d entries are neither file nor folder (fifo, socket, device) and are not uploaded: %s%s",
                    len(plan.skipped_special), ", ".join(plan.skipped_special[:5]),
                    f" (+{len(plan.skipped_special) - 5} more)" if len(plan.skipped_special) > 5 else "")
    return plan


def _listing(backend: S3Backend, args: argparse.Namespace, prefix: str, plan: UploadPlan) -> Listing:
    """:func:`open_remote` of the target (its first page read here); a missing bucket is empty for
    ``--dry-run --create-bucket``. A store that does not answer raises TransientStorageError naming
    its endpoint."""
    try:
        return open_remote(backend, args.bucket, prefix, plan.items)
    except BucketNotFoundError:
        if not (args.dry_run and args.create_bucket):
            raise
        return empty_listing()
    except TransientStorageError as exc:
        if is_unreachable(exc):
            raise TransientStorageError(unreachable_message(backend, exc, "listing the target failed")) from exc
        raise


def run(args: argparse.Namespace) -> int:
    """Everything after argument parsing; StorageErrors escape to :func:`main`."""
    try:
        plan = _plan(args)
    except InvalidPathError:
        raise
    except StorageError as exc:  # SRC or data.json unreadable: a usage problem, nothing was sent
        raise ConfigError(str(exc)) from None
    prefix = normalise_prefix(args.prefix)
    backend = connect(args, prefix)
    log.debug("target s3://%s/%s via %s", args.bucket, prefix, backend.settings.describe())
    part_size = int(args.part_size_mb * MiB)

    create_bucket(log, backend, args)
    existing = _listing(backend, args, prefix, plan)

    manifest = UploadManifest.for_target(backend.settings.endpoint_url, args.bucket, prefix, args.src,
                                         args.manifest_dir)
    if args.verify_only:
        # Files unchanged since the manifest recorded them are compared by their recorded ETag;
        # --checksum hashes every one.
        check = verify(plan.items, backend, args.bucket, prefix, part_size=part_size, workers=args.workers,
                       remote=existing, manifest=None if args.checksum else manifest)
        report_verify(log, check)
        log_failures(log, "failed", plan.failed)
        unusable = f", {len(plan.failed)} referenced files not uploadable (missing locally, hidden or unsafe)"
        print(check.summary() + (unusable if plan.failed else ""))
        return EXIT_OK if check.passed and not plan.failed else EXIT_FAILED

    # The bar counts every planned byte: sent, or found in the bucket already (the listing is
    # merged with the plan as the upload goes, so what needs sending is not known up front).
    with progress_bar(total=plan.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                      desc="dry run" if args.dry_run else "upload", disable=None) as bar:
        try:
            report = upload_all(plan.items, backend, args.bucket, prefix=prefix, workers=args.workers,
                                multipart_threshold=int(args.multipart_threshold_mb * MiB), part_size=part_size,
                                dry_run=args.dry_run, progress=bar.update, existing=existing, manifest=manifest,
                                checksum=args.checksum, keep_etags=False, count_skipped=True)
        except UploadInterrupted as exc:
            bar.close()
            report = exc.report
            log_failures(log, "failed", report.failed)
            print(f"interrupted: {report.summary()}; re-run the same command to upload the rest", flush=True)
            return EXIT_INTERRUPTED
    if manifest.corrupt:
        log.warning("%d damaged upload manifest ignored (%s): every file was hashed", manifest.corrupt,
                    manifest.path)
    log.debug("upload manifest %s: %d files", manifest.path, report.manifest_entries)
    report.failed[:0] = plan.failed
    if report.store_down is not None:
        # Said once: the files that failed for want of an answer are counted, not listed one by one.
        unreachable = set(report.unreachable)
        log_failures(log, "failed", [f for f in report.failed if f[0] not in unreachable])
        log.error("%s; %d files failed for want of an answer, %d were not attempted", report.store_down,
                  len(unreachable), report.not_attempted)
        print(report.summary(), flush=True)
        return EXIT_FAILED
    log_failures(log, "failed", report.failed)
    print(report.summary(), flush=True)
    status = EXIT_OK if report.ok else EXIT_FAILED
    if args.dry_run or args.no_verify:
        return status
    if report.uploaded == 0 and report.skipped == len(plan.items):
        # Nothing was sent: every key already matched size + ETag in the LIST made before the
        # upload, and a second LIST would compare the same listing again.
        print(f"verified {report.skipped} ok, 0 missing, 0 mismatched (by the listing before the upload; "
              "nothing was sent)", flush=True)
        return status
    failed = {key for key, _ in report.failed}
    uploaded_ok = (i for i in plan.items if i.key not in failed)  # made as verify goes: no list of items
    # The manifest just written holds the ETag of every file sent or found: nothing is hashed again
    # unless it changed since.
    passed = verify_after_upload(log, uploaded_ok, backend, args, prefix, part_size=part_size, manifest=manifest,
                                 in_key_order=plan_in_key_order(plan),
                                 open_listing=lambda: open_remote(backend, args.bucket, prefix, plan.items))
    return status if passed else EXIT_FAILED


def plan_in_key_order(plan: UploadPlan) -> bool:
    """Whether the plan's keys are in LIST order (always for :func:`plan_upload`'s plans)."""
    return bool(getattr(plan.items, "sorted_by_key", False))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    return run_cli(build_parser(), argv, log, run, _usage_error)


if __name__ == "__main__":
    raise SystemExit(main())
