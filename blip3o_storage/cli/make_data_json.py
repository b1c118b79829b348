"""Build ``data/BLIP3o-60k/data.json`` from the extracted shards.

Usage::

    python tools/make_data_json.py --raw data/BLIP3o-60k/raw \
        --out data/BLIP3o-60k/data.json [--strict]

Pairs ``{key}.jpg`` with ``{key}.txt`` (see
``blip3o_storage.transfer.safe_tar.build_data_json``), logs how many pairs, orphan
images and orphan captions there are, and writes the file atomically (temp
file + ``os.replace``) so a reader never sees half a file. Entries are written
as each shard folder is paired: memory is one shard's, however large the tree. ``--strict`` exits
non-zero, without writing, when anything could not be paired.

The folder is walked by the rule ``tools/upload.py`` uses
(``blip3o_storage.transfer.tree_walk``): dot-files and dot-folders are skipped (and
counted), symlinked files and folders are followed; a folder that cannot be
listed, a dangling symlink or a symlink loop is an error (exit 2, nothing
written), never a silently smaller data.json.

Exit status (see ``blip3o_storage.cli.common``): 0 written; 1 no pairs,
--strict with unpaired files, or a caption that cannot be inlined; 2 the raw
folder is missing or cannot be walked; 130 interrupted (Ctrl-C; nothing is
written).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from blip3o_storage.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, interruptible, parser_from_doc
from blip3o_storage.errors import StorageError
from blip3o_storage.transfer.safe_tar import DataJsonReport, fsync_dir, iter_data_json, log_unpaired

log = logging.getLogger("make_data_json")


def write_json_atomic(entries: Iterable[dict[str, str]], out: Path,
                      check: Callable[[int], None] | None = None) -> int:
    """Write one entry per line (diff-friendly, still plain JSON; the bytes of
    :func:`~blip3o_storage.transfer.safe_tar.data_json_text`) via temp + rename, entry by entry as
    ``entries`` yields them (no text of the whole file in memory); returns the number written.
    ``check(count)`` runs before the rename: if it raises, nothing is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for entry in entries:
                f.write(("[\n" if count == 0 else ",\n") + json.dumps(entry))
                count += 1
            f.write("\n]\n" if count else "[\n]\n")
            if check is not None:
                check(count)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)  # persist the rename (best effort)
    return count


class CaptionError(Exception):
    """A caption file that cannot be read as UTF-8 text (for --inline-captions)."""


class Refused(Exception):
    """Nothing to write (no pairs), or --strict and unpaired files: the temp file is dropped."""


def inline_captions(entries: Iterable[dict[str, str]], raw: Path) -> Iterator[dict[str, str]]:
    """Each entry with ``caption`` (the stripped UTF-8 text of ``annotation``), read as the entry
    is written: the captions are never all in memory at once."""
    for entry in entries:
        path = raw / entry["annotation"]
        try:
            caption = path.read_bytes().decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            raise CaptionError(str(UnicodeDecodeError(exc.encoding, exc.object, exc.start, exc.end,
                                                      f"{path} is not UTF-8 text"))) from None
        except OSError as exc:
            raise CaptionError(str(exc)) from None
        yield {**entry, "caption": caption}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    ap = parser_from_doc(__doc__ or "")
    ap.add_argument("--raw", required=True, type=Path, help="e.g. data/BLIP3o-60k/raw")
    ap.add_argument("--out", required=True, type=Path, help="e.g. data/BLIP3o-60k/data.json")
    ap.add_argument("--strict", action="store_true",
                    help="fail (and write nothing) if any image or caption is unpaired")
    ap.add_argument("--inline-captions", action="store_true",
                    help="also store each caption's text in its entry ('caption'): the dataset then needs no "
                         "caption GET per sample (one request per sample instead of two on an object store)")
    ap.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return interruptible(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """Everything after argument parsing. The entries are written as the walk pairs them, one
    shard folder in memory at a time (:func:`~blip3o_storage.transfer.safe_tar.iter_data_json`), into
    a temp file that becomes ``--out`` only once the walk is complete and the checks pass."""
    report = DataJsonReport()

    def check(count: int) -> None:
        _log_report(report)
        if not count:
            raise Refused(f"no image/caption pairs under {args.raw}; run tools/extract.py first")
        if args.strict and report.has_orphans:
            raise Refused(f"--strict: unpaired files found, {args.out} not written")

    entries = iter_data_json(args.raw, report)
    try:
        written = write_json_atomic(inline_captions(entries, args.raw) if args.inline_captions else entries,
                                    args.out, check)
    except StorageError as e:
        log.error("%s", e)
        return EXIT_USAGE
    except Refused as e:
        log.error("%s", e)
        return EXIT_FAILED
    except CaptionError as exc:
        log.error("cannot inline captions: %s; fix or remove that file, or run without --inline-captions", exc)
        return EXIT_FAILED
    log.info("wrote %d entries to %s", written, args.out)
    return EXIT_OK


def _log_report(report: DataJsonReport) -> None:
    log.info("shards: %s", ", ".join(report.shards) or "(none)")
    if report.unmarked_shards:
        log.warning("shard folders without a done-marker (not made by tools/extract.py, "
                    "or incomplete): %s", ", ".join(report.unmarked_shards))
    if report.other_files:
        log.info("%d other file(s) ignored (neither image nor caption), e.g. %s",
                 len(report.other_files), ", ".join(report.other_files[:5]))
    if report.hidden:
        log.info("%d hidden entr%s (dot-files/folders) skipped, as tools/upload.py skips them: %s%s",
                 len(report.hidden), "y" if len(report.hidden) == 1 else "ies", ", ".join(report.hidden[:5]),
                 f" (+{len(report.hidden) - 5} more)" if len(report.hidden) > 5 else "")
    log_unpaired(log, report)  # the same lines as tools/upload_shards.py


if __name__ == "__main__":
    raise SystemExit(main())
