"""Check that this machine can train from an S3 folder: config, endpoint, TLS, credentials,
clock, bucket, checksums, GET latency, data.json references.

    blip3o-doctor --config petreloss.conf s3://bucket/prefix [--data-json data.json] [--sample N]

One line per check, in that order: PASS, WARN (works, but look), FAIL (with the fix on the
next line) or SKIP (not run: an earlier check it needs failed). Nothing is written to the
store, and no secret is ever printed (the credentials are named by their kind only).

Exit status: 0 every check passed or warned, 1 a check failed, 2 bad usage or a config that
does not load, 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from blip3o_storage.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    configure_logging,
    interruptible,
    parser_from_doc,
)
from blip3o_storage.cli.doctor_checks import (
    FAIL,
    SKIP,
    Result,
    ask_server,
    check_bucket,
    check_checksums,
    check_clock,
    check_connect,
    check_credentials,
    check_tls,
    signing_clock_offset,
)
from blip3o_storage.cli.doctor_data import check_latency, check_references
from blip3o_storage.errors import ConfigError, InvalidPathError
from blip3o_storage.storage.config import load_config
from blip3o_storage.storage.facade import Storage
from blip3o_storage.storage.uri import parse_uri

log = logging.getLogger("blip3o_storage.cli.doctor")
LATER = ("endpoint", "tls", "credentials", "clock", "bucket", "checksums", "latency", "data.json")


def build_parser() -> argparse.ArgumentParser:
    ap = parser_from_doc(__doc__ or "")
    ap.add_argument("folder", help="s3://bucket/prefix (or cluster:s3://...) the training reads, e.g. ceph_folder")
    ap.add_argument("--config", default=None,
                    help="petreloss.conf-style file (default: BLIP3O_CEPH_CONFIG, else the boto3 chain)")
    ap.add_argument("--endpoint-url", default=None, help="override the config's endpoint")
    ap.add_argument("--data-json", default=None, help="data.json (local or s3://) whose references to check")
    ap.add_argument("--sample", type=int, default=None,
                    help="check N references (HEAD each, fixed seed) instead of all (one listing)")
    ap.add_argument("--objects", type=int, default=20, help="objects to GET for the latency check (default 20)")
    ap.add_argument("--clock-offset", type=float, default=0.0,
                    help="sign requests as if this host's clock were S seconds ahead (negative: behind); "
                         "shows what a skewed host gets, without touching the system clock")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging (never shows secrets)")
    return ap


def report(result: Result) -> None:
    print(f"{result.status:<5} {result.name:<12} {result.detail}", flush=True)
    if result.fix and result.status != "PASS":
        print(f"{'':<5} {'':<12} fix: {result.fix}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the checks in order, print each; the exit status."""
    try:
        config = load_config(args.config, endpoint_url=args.endpoint_url)
        uri = parse_uri(args.folder)
        if not uri.is_s3:
            raise InvalidPathError(f"{args.folder!r} is not an s3:// URI; pass the folder the training reads")
        settings = config.settings_for(uri.cluster)
    except (ConfigError, InvalidPathError) as exc:
        report(Result("config", FAIL, str(exc), "fix the config file or the URI, then run again"))
        return EXIT_USAGE
    cluster = uri.cluster or config.default_cluster
    report(Result("config", "PASS", f"{config.source} [{cluster}]: {settings.describe()}"))
    folder = str(uri).rstrip("/")
    results: list[Result] = []

    def emit(result: Result) -> bool:
        report(result)
        results.append(result)
        return result.status != FAIL

    def skip_rest(after: str, why: str) -> None:
        for name in LATER[LATER.index(after) + 1:]:
            if name == "data.json" and not args.data_json:
                continue
            report(Result(name, SKIP, f"needs {why}"))

    with signing_clock_offset(args.clock_offset):
        if not emit(check_connect(settings)):
            skip_rest("endpoint", "the endpoint")
            return EXIT_FAILED
        if not emit(check_tls(settings)):
            skip_rest("tls", "TLS")
            return EXIT_FAILED
        answer, failed = ask_server(settings, args.clock_offset)
        credentials = emit(failed or check_credentials(settings, answer))
        clock = emit(check_clock(answer)) if failed is None else False
        if failed is not None:
            report(Result("clock", SKIP, "needs an answer from the server"))
        if not (credentials and clock):
            skip_rest("clock", "the credentials and the clock")
            return EXIT_FAILED
        bucket = emit(check_bucket(settings, uri.bucket, uri.key.rstrip("/") + "/" if uri.key else ""))
        emit(check_checksums(settings))  # the client's own settings: no request, so always shown
        if bucket:
            storage = Storage(config)
            emit(check_latency(storage, folder, args.objects))
            if args.data_json:
                emit(check_references(storage, folder, args.data_json, args.sample))
        else:
            skip_rest("checksums", "the bucket")
    failed_names = [r.name for r in results if r.status == FAIL]
    print(f"{len(failed_names)} check(s) failed: {', '.join(failed_names)}" if failed_names
          else "all checks passed" + (" (see WARN lines)" if any(r.status == "WARN" for r in results) else ""),
          flush=True)
    return EXIT_FAILED if failed_names else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if args.sample is not None and args.sample < 1 or args.objects < 1:
        parser.print_usage(sys.stderr)
        log.error("--sample and --objects must be >= 1")
        return EXIT_USAGE
    return interruptible(lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
