"""Upload BLIP3o tar shards as they are, plus index.json (and data.json), for shard mode.

Usage::

    python tools/upload_shards.py --bucket B [--prefix P] [--config petreloss.conf] \
        [--endpoint-url URL] [--workers N] [--no-data-json] [--strict] [--dry-run] TAR_OR_DIR ...

    python tools/upload_shards.py --bucket B --prefix P --verify-only TAR_OR_DIR ...

Writes ``P/<shard>.tar`` (multipart above the threshold), then ``P/index.json``
(member -> offset, size; see ``blip3o_storage.reading.shard_index``) and
``P/data.json`` (the same entries ``tools/make_data_json.py`` makes from the
extracted tree, built from the index). The index and data.json go last, so a
reader never finds an index whose tars are not all there. Every tar is
validated (the same member checks as extraction) before anything is sent: a
damaged or truncated tar fails naming the byte offset, rather than indexing
the members before the damage. A member name repeated in a tar keeps its last
copy, the one extraction writes, and is counted.
Resume, skip and verify work as in ``tools/upload.py``: one LIST, objects
with matching size + ETag are skipped, and every key is verified after.

Train with ``BLIP3oDataset(data_path='s3://B/P/data.json', ceph_folder='s3://B/P',
shard_index='s3://B/P/index.json', ...)``.

Exit status (the same as ``tools/upload.py``, see
``blip3o_storage.cli.common``): 0 all good; 1 any file failed, missing or
mismatched, the server kept failing after retries (or --strict and unpaired
files); 2 bad usage, config, credentials, bucket or key names (including a
bucket that does not exist or that --create-bucket cannot create) or a
hostile, damaged or truncated tar (nothing is sent); 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from blip3o_storage.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    add_connection_options,
    add_transfer_options,
    connect,
    create_bucket,
    list_target,
    log_failures,
    parser_from_doc,
    report_verify,
    run_cli,
    verify_after_upload,
)
from blip3o_storage.errors import ConfigError, CorruptDataError, StorageError
from blip3o_storage.transfer.safe_tar import log_unpaired
from blip3o_storage.transfer.shard_indexing import write_index_files
from blip3o_storage.transfer.upload import (
    MiB,
    UploadInterrupted,
    UploadItem,
    UploadReport,
    content_type_for,
    normalise_prefix,
    upload_all,
    validate_keys,
    verify,
)

log = logging.getLogger("upload_shards")
INDEX_NAME, DATA_JSON_NAME = "index.json", "data.json"


class Unpaired(StorageError):
    """The shards hold no pairs, or unpaired files under --strict: nothing to upload."""


def build_parser() -> argparse.ArgumentParser:
    ap = parser_from_doc(__doc__)
    ap.add_argument("sources", metavar="TAR_OR_DIR", nargs="+", type=Path,
                    help="shard .tar files, or folders whose *.tar files are all shards")
    add_connection_options(ap, config_help="petreloss.conf-style file (default: boto3 chain or $BLIP3O_CEPH_CONFIG)",
                           endpoint_help="S3 endpoint (overrides the config)")
    ap.add_argument("--no-data-json", action="store_true", help="upload only the tars and index.json")
    ap.add_argument("--strict", action="store_true",
                    help="fail (upload nothing) if any image or caption in the shards is unpaired")
    add_transfer_options(ap, workers=8, workers_help="parallel uploads (default 8; tars are big)",
                         dry_run_help="index, list and compare, but write nothing",
                         verify_only_help="upload nothing; report missing/different keys")
    return ap


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with this tool's own arguments (run_cli checks the shared ones first)."""
    for src in args.sources:
        if not src.exists():
            return f"{src} does not exist"
    return None


def find_tars(sources: list[Path]) -> list[Path]:
    """The .tar files named, or found (not recursively) in the folders named."""
    tars: list[Path] = []
    for src in sources:
        found = sorted(p for p in src.iterdir() if p.name.endswith(".tar") and p.is_file()) if src.is_dir() else [src]
        if src.is_dir() and not found:
            raise ConfigError(f"no *.tar files in {src}")
        tars += [p for p in found if p not in tars]
    names = [p.name for p in tars]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two shard files share a name ({', '.join(dup)}); keys would collide")
    return tars


def write_metadata(index: dict, entries: list | None, folder: Path) -> list[Path]:
    """index.json (and data.json, as :func:`~blip3o_storage.transfer.safe_tar.data_json_text`) in ``folder``
    from an index and entries in memory; deterministic bytes, so a re-run finds them unchanged and
    skips them. The tool itself streams the same bytes (:func:`_index`); this is the reference."""
    out = [folder / INDEX_NAME]
    with open(out[0], "w", encoding="utf-8") as f:  # json.dump writes in pieces: no text of the whole index
        json.dump(index, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    if entries is not None:
        path = folder / DATA_JSON_NAME
        with open(path, "w", encoding="utf-8") as f:  # data_json_text's bytes, one entry at a time
            for i, entry in enumerate(entries):
                f.write(("[\n" if i == 0 else ",\n") + json.dumps(entry))
            f.write("\n]\n" if entries else "[\n]\n")
        out.append(path)
    return out


def _items(paths: list[Path], prefix: str) -> list[UploadItem]:
    items = [UploadItem(local_path=p, key=prefix + p.name, size=p.stat().st_size, content_type=content_type_for(p))
             for p in paths]
    validate_keys(item.key for item in items)
    return items


def _index(args: argparse.Namespace, folder: Path) -> tuple[list[Path], list[Path], bool]:
    """Validate and index every tar, writing index.json (and data.json) into ``folder`` one shard
    at a time (:func:`~blip3o_storage.transfer.shard_indexing.write_index_files`: the bytes
    :func:`write_metadata` writes, without the whole index in memory). Nothing is sent yet."""
    tars = find_tars(args.sources)
    paths = [folder / INDEX_NAME] + ([] if args.no_data_json else [folder / DATA_JSON_NAME])
    summary = write_index_files(tars, paths[0], None if args.no_data_json else paths[1])
    log.info("indexed %d shard(s), %d members, %.1f MB", len(tars), summary.members,
             sum(p.stat().st_size for p in tars) / 1e6)
    repeated = summary.repeated
    if repeated:
        log.warning("%d repeated member name(s) in %d shard(s) (%s); the last copy of each is indexed, as "
                    "extraction keeps it", sum(len(d) for d in repeated.values()), len(repeated),
                    ", ".join(sorted(repeated)))
    if not args.no_data_json:
        log_unpaired(log, summary.report)  # the same lines as tools/make_data_json.py
        if not summary.entries:
            raise Unpaired("no image/caption pairs in the shards; nothing to train on")
        if args.strict and summary.report.has_orphans:
            raise Unpaired("--strict: unpaired files in the shards; nothing uploaded")
    return tars, paths, not args.no_data_json


def run(args: argparse.Namespace) -> int:
    """Everything after argument parsing; StorageErrors escape to :func:`main`."""
    with tempfile.TemporaryDirectory(prefix="upload-shards-") as tmp:
        tars, meta_paths, with_data_json = _index(args, Path(tmp))
        prefix = normalise_prefix(args.prefix)
        backend = connect(args, prefix)
        part_size = int(args.part_size_mb * MiB)
        threshold = int(args.multipart_threshold_mb * MiB)
        create_bucket(log, backend, args)
        tar_items = _items(tars, prefix)
        meta_items = _items(meta_paths, prefix)
        all_items = tar_items + meta_items
        existing = list_target(backend, args, prefix)
        if args.verify_only:
            check = verify(all_items, backend, args.bucket, prefix, part_size=part_size, workers=args.workers,
                           remote=existing)
            report_verify(log, check)
            print(check.summary(), flush=True)
            return EXIT_OK if check.passed else EXIT_FAILED

        total = UploadReport(files=len(all_items), dry_run=args.dry_run)
        try:
            for items in (tar_items, meta_items):  # tars first: an index never points at missing tars
                report = upload_all(items, backend, args.bucket, prefix=prefix, workers=args.workers,
                                    multipart_threshold=threshold, part_size=part_size, dry_run=args.dry_run,
                                    existing=existing)
                _merge(total, report)
                if report.failed:
                    break  # do not publish an index for tars that are not all there
        except UploadInterrupted as exc:
            _merge(total, exc.report)
            print(f"interrupted: {total.summary()}; re-run the same command to upload the rest", flush=True)
            return EXIT_INTERRUPTED
        log_failures(log, "failed", total.failed)
        print(total.summary(), flush=True)
        status = EXIT_OK if total.ok and total.uploaded + total.skipped == len(all_items) else EXIT_FAILED
        if args.dry_run or args.no_verify or total.failed:
            return status
        passed = verify_after_upload(log, all_items, backend, args, prefix, part_size=part_size,
                                     known_etags=total.etags)
        base = f"s3://{args.bucket}/{prefix}"
        print(f"shard mode: ceph_folder='{base.rstrip('/')}', shard_index='{base}{INDEX_NAME}'"
              + (f", data_path='{base}{DATA_JSON_NAME}'" if with_data_json else ""), flush=True)
        return status if passed else EXIT_FAILED


def _merge(total: UploadReport, part: UploadReport) -> None:
    total.bytes += part.bytes
    total.skipped += part.skipped
    total.skipped_bytes += part.skipped_bytes
    total.uploaded += part.uploaded
    total.failed += part.failed
    total.seconds += part.seconds
    total.interrupted = total.interrupted or part.interrupted
    total.etags.update(part.etags)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    return run_cli(build_parser(), argv, log, run, _usage_error,
                   extra_errors={Unpaired: EXIT_FAILED, CorruptDataError: EXIT_USAGE})


if __name__ == "__main__":
    raise SystemExit(main())
