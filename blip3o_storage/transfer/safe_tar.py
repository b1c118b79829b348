"""Safe, idempotent, crash-safe extraction of BLIP3o-60k WebDataset shards.

Why this exists: the shards come from the internet, and ``tarfile`` will
happily write through ``../``, absolute names, symlinks and hardlinks. We
therefore (1) validate every member ourselves *before* writing anything,
(2) still pass ``filter='data'`` to tarfile as a second line of defence, and
(3) extract into a private temp dir that is renamed into place only after a
done-marker has been written inside it, so ``dest_root/<shard>`` either does
not exist or is complete.

A *damaged* tar is refused too: ``tarfile`` stops silently at a header it
cannot read (bad checksum, cut short, missing) and yields only the members
before it, so :func:`scan_tar` checks that the listing really reached the
end-of-archive marker and that every member's bytes lie inside the file. A
name repeated in one tar keeps its last copy (as ``tar -x`` does), with a
warning and a count; shard mode (:mod:`blip3o_storage.reading.shard_index`) uses the
same listing, so both modes serve the same bytes.

``build_data_json`` turns the extracted tree into the ``data.json`` sample
list, reporting (never silently dropping) images without captions and
captions without images.
"""
from __future__ import annotations

import bisect
import io
import json
import logging
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

from blip3o_storage.errors import CorruptDataError, InvalidPathError, StorageError
from blip3o_storage.transfer.tree_walk import TreeWalk, iter_tree

__all__ = [
    "MARKER_NAME",
    "ExtractResult",
    "TarListing",
    "scan_tar",
    "member_path",
    "DataJsonReport",
    "check_member",
    "extract_shard",
    "shard_name",
    "build_data_json",
    "data_json_text",
    "image_caption_exts",
    "add_candidate",
    "pair_shard",
    "finish_report",
    "fsync_dir",
    "log_unpaired",
]

log = logging.getLogger(__name__)

#: Written inside ``dest_root/<shard>`` once extraction is complete.
MARKER_NAME = ".extracted"
_TMP_PREFIX = ".tmp-"
_OLD_PREFIX = ".old-"
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Only names like these become a directory name under dest_root.
_SHARD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

PathLike = Union[str, "os.PathLike[str]"]
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class ExtractResult:
    """What one :func:`extract_shard` call did (picklable, for worker pools)."""

    shard: str
    files: int
    bytes: int
    skipped_already_done: bool
    #: Member names (normalised) that the tar holds more than once; the last
    #: copy of each was extracted. Empty when skipped as already done.
    duplicates: tuple[str, ...] = ()


@dataclass
class DataJsonReport:
    """Counts and lists behind a ``data.json`` build, so nothing is dropped silently.

    All paths are '/'-separated and relative to ``raw_root``.
    """

    shards: list[str] = field(default_factory=list)
    #: Shard dirs without a done-marker (manually extracted or foreign).
    unmarked_shards: list[str] = field(default_factory=list)
    pairs: int = 0
    orphan_images: list[str] = field(default_factory=list)
    orphan_captions: list[str] = field(default_factory=list)
    #: Second and later images for one key (e.g. ``k.jpg`` and ``k.png``).
    duplicate_images: list[str] = field(default_factory=list)
    #: Second and later captions for one key (e.g. ``k.txt`` and ``k.TXT``).
    duplicate_captions: list[str] = field(default_factory=list)
    #: Files that are neither image nor caption (plus loose files directly in
    #: ``raw_root``, fifos and devices); not used, but listed.
    other_files: list[str] = field(default_factory=list)
    #: Dot-files and dot-folders skipped (not uploaded either), except each shard's done-marker.
    hidden: list[str] = field(default_factory=list)

    @property
    def has_orphans(self) -> bool:
        """True when some image or caption could not be paired."""
        return bool(
            self.orphan_images
            or self.orphan_captions
            or self.duplicate_images
            or self.duplicate_captions
        )


# --------------------------------------------------------------------------
# member validation
# --------------------------------------------------------------------------

def _kind(member: tarfile.TarInfo) -> str:
    """Human name of a member type, for error messages."""
    if member.issym():
        return f"symlink -> {member.linkname!r}"
    if member.islnk():
        return f"hardlink -> {member.linkname!r}"
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "fifo"
    return f"type {member.type!r}"


def check_member(member: tarfile.TarInfo, shard: str) -> None:
    """Raise :class:`InvalidPathError` unless ``member`` is safe to extract.

    Only regular files and directories with plain relative names are allowed:
    a WebDataset shard never needs anything else, so anything else means a
    broken or hostile archive.
    """
    name = member.name

    def bad(why: str) -> InvalidPathError:
        return InvalidPathError(
            f"refusing to extract shard {shard!r}: member {name!r} {why}; "
            "the archive is corrupt or hostile - re-download the shard from a "
            "trusted source (nothing was extracted)"
        )

    if not (member.isreg() or member.isdir()):
        raise bad(f"is a {_kind(member)}, only regular files and directories are allowed")
    if not name:
        raise bad("has an empty name")
    if "\x00" in name:
        raise bad("contains a NUL byte")
    if "\\" in name:
        raise bad("contains a backslash (Windows path separator)")
    if name.startswith("/"):
        raise bad("is an absolute path")
    if _DRIVE_RE.match(name):
        raise bad("starts with a drive letter")
    if ".." in name.split("/"):
        raise bad("contains a '..' component")


def shard_name(tar_path: PathLike) -> str:
    """``.../dalle3.tar`` -> ``dalle3``; rejects names unsafe as a directory."""
    name = Path(tar_path).name
    for suffix in (".tar", ".tar.gz", ".tgz"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    if not _SHARD_RE.match(name):
        raise InvalidPathError(
            f"shard file {str(tar_path)!r} gives shard name {name!r}, which is not a "
            "plain name (letters, digits, '.', '_', '-'); rename the file"
        )
    return name


# --------------------------------------------------------------------------
# listing: damage and repeated names
# --------------------------------------------------------------------------

_BLOCK = tarfile.BLOCKSIZE  # 512: tar headers and the end-of-archive marker are whole blocks
_SHOW = 20  # repeated names named in a warning; the rest are counted
_TRAILER_CHUNK = 1 << 20  # bytes read at a time when checking what follows the end marker


@dataclass(frozen=True)
class TarListing:
    """Every member of a tar, checked to be complete (see :func:`scan_tar`)."""

    #: Every member, in archive order (what :func:`check_member` must vet).
    members: tuple[tarfile.TarInfo, ...]
    #: What extraction writes and shard mode indexes: every member except the
    #: earlier copies of a repeated regular-file name (archive order).
    kept: tuple[tarfile.TarInfo, ...]
    #: Normalised regular-file names that occur more than once, sorted.
    duplicates: tuple[str, ...]
    #: Offset of the end-of-archive marker.
    end: int


def member_path(name: str) -> str:
    """A member name as extraction writes it (and shard mode keys it): ``./a//b`` -> ``a/b``."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _header_problem(block: bytes, tf: tarfile.TarFile) -> str:
    """Why tarfile could not read the header ``block`` ('bad checksum', ...)."""
    try:
        tarfile.TarInfo.frombuf(block, tf.encoding, tf.errors)
    except Exception as exc:  # noqa: BLE001 - HeaderError subclasses, a ValueError from a field: any is the answer
        return str(exc) or type(exc).__name__
    return "not a header tarfile can follow"


def _check_end(tf: tarfile.TarFile, end: int, label: str) -> None:
    """Raise unless ``end`` holds the end-of-archive marker followed by zeros only.

    A listing that stopped anywhere else stopped at damage. Writers put two
    zero blocks there and pad to a 10 kB record with zeros; one zero block is
    accepted (GNU tar only warns about it), a partial one is not (the file was
    cut), and non-zero bytes after it mean a zeroed header or joined archives
    whose members tar -x would also never see.
    """
    f = tf.fileobj
    f.seek(end)
    block = f.read(_BLOCK)
    if len(block) < _BLOCK or block != bytes(_BLOCK):
        if not block:
            why = (f"the file ends at byte {end} without the end-of-archive marker (cut off at a member "
                   "boundary?)")
        elif len(block) < _BLOCK:
            why = f"the file ends at byte {end + len(block)}, inside the block at byte {end} (cut off?)"
        else:
            why = f"the header at byte {end} is unreadable ({_header_problem(block, tf)})"
        raise CorruptDataError(f"{label} is damaged: {why}; the members from there on are missing - "
                               "re-download it")
    pos = end + _BLOCK
    while True:
        chunk = f.read(_TRAILER_CHUNK)
        if not chunk:
            return
        rest = chunk.lstrip(b"\0")
        if rest:
            raise CorruptDataError(
                f"{label} is damaged: data at byte {pos + len(chunk) - len(rest)} after the end-of-archive "
                f"marker at byte {end} (a zeroed header, or two archives joined); the members there would be "
                "missing - re-download it")
        pos += len(chunk)


def scan_tar(tf: tarfile.TarFile, tar_path: PathLike, shard: str, *, file_size: Optional[int] = None
             ) -> TarListing:
    """List every member of an open ``tf`` and prove the listing complete.

    Raises :class:`CorruptDataError` naming the tar and the byte offset when a
    header is unreadable or cut short, the end-of-archive marker is missing,
    a member declares a negative size, or (``file_size`` given: uncompressed
    tars) a member's data runs past the end of the file. Offsets are into the
    uncompressed stream. Reads only headers and what follows the end marker
    (one 10 kB record for a normal tar). Uses ``TarFile.offset``/``fileobj``,
    attributes tarfile has kept since Python 2.
    """
    label = f"shard {shard!r} ({tar_path})"
    members: list[tarfile.TarInfo] = []
    while True:
        at = tf.offset
        try:
            m = tf.next()
        except (tarfile.TarError, EOFError, OSError) as e:  # OSError: gzip.BadGzipFile, read errors
            after = (f" after member {members[-1].name!r} (header at byte {members[-1].offset})"
                     if members else "")
            raise CorruptDataError(f"{label} is damaged or truncated near byte {at}{after}: {e}; "
                                   "re-download it") from e
        if m is None:
            break
        if m.size < 0:
            raise CorruptDataError(f"{label} is damaged: member {m.name!r} (header at byte {m.offset}) declares "
                                   f"a negative size ({m.size}); the archive is corrupt or hostile - re-download it")
        # A sparse member's size is its expanded size, not what the file holds.
        if file_size is not None and not m.issparse() and m.offset_data + m.size > file_size:
            raise CorruptDataError(
                f"{label} is truncated: member {m.name!r} (header at byte {m.offset}) needs bytes up to "
                f"{m.offset_data + m.size} but the file ends at byte {file_size}; re-download it")
        members.append(m)
    try:
        _check_end(tf, tf.offset, label)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CorruptDataError(f"{label} is damaged or truncated after byte {tf.offset}: {e}; "
                               "re-download it") from e

    last: dict[str, int] = {}
    copies: dict[str, int] = {}
    for i, m in enumerate(members):
        if m.isreg():
            path = member_path(m.name)
            last[path] = i
            copies[path] = copies.get(path, 0) + 1
    duplicates = tuple(sorted(p for p, n in copies.items() if n > 1))
    if duplicates:
        shown = ", ".join(f"{p!r} ({copies[p]} copies)" for p in duplicates[:_SHOW])
        more = f" (+{len(duplicates) - _SHOW} more)" if len(duplicates) > _SHOW else ""
        log.warning("%s: %d repeated member name(s); the last copy of each is used, as tar -x does: %s%s",
                    label, len(duplicates), shown, more)
    kept = tuple(m for i, m in enumerate(members) if not m.isreg() or last[member_path(m.name)] == i)
    return TarListing(tuple(members), kept, duplicates, tf.offset)


# --------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may belong to someone else)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _clean_stale_temps(dest_root: Path, shard: str) -> None:
    """Remove ``.tmp-<shard>-<pid>`` / ``.old-<shard>-<pid>`` left by crashed runs.

    Dirs of a *live* other process are left alone: that may be a concurrent
    extraction of the same shard.
    """
    for prefix in (_TMP_PREFIX, _OLD_PREFIX):
        lead = f"{prefix}{shard}-"
        for entry in dest_root.iterdir():
            rest = entry.name[len(lead):]
            if not entry.name.startswith(lead) or not rest.isdigit():
                continue  # also skips e.g. '.tmp-text-2-<pid>' when shard is 'text'
            pid = int(rest)
            if pid != os.getpid() and _pid_alive(pid):
                log.warning("leaving %s: process %d is alive (concurrent run?)", entry, pid)
                continue
            log.info("removing stale temp dir %s from a crashed run", entry)
            _rmtree(entry)


def _rmtree(path: Path) -> None:
    """Remove a dir (or file) tree; a missing path is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path)


def fsync_dir(path: PathLike) -> None:
    """Persist a rename in ``path`` (best effort: not every FS supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_fsync_dir = fsync_dir  # the old private name


def _read_marker(marker: Path) -> tuple[int, int]:
    """(files, bytes) recorded in a done-marker; (0, 0) if unreadable."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        return int(data.get("files", 0)), int(data.get("bytes", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0, 0


def _with_progress(
    members: Sequence[tarfile.TarInfo], progress: Optional[ProgressFn]
) -> Iterator[tarfile.TarInfo]:
    """Yield members to ``extractall``, reporting each previous file's bytes.

    ``extractall`` has no callback; a generator is the documented way to
    observe it. A member's bytes are reported once the next one is requested,
    i.e. after it was written.
    """
    pending = 0
    for m in members:
        if progress is not None and pending:
            progress(pending)
        pending = m.size if m.isreg() else 0
        yield m
    if progress is not None and pending:
        progress(pending)


def extract_shard(
    tar_path: PathLike,
    dest_root: PathLike,
    *,
    progress: Optional[ProgressFn] = None,
    overwrite: bool = False,
) -> ExtractResult:
    """Extract ``tar_path`` into ``dest_root/<shard>`` safely and atomically.

    * Already done (``dest_root/<shard>/.extracted`` exists) -> skipped, unless
      ``overwrite``.
    * Every member is validated before anything is written; a hostile archive
      raises :class:`InvalidPathError`, a damaged or truncated one
      :class:`CorruptDataError` (see :func:`scan_tar`), and nothing is left behind.
    * A name repeated in the tar keeps its last copy, with a warning; the
      names are in ``ExtractResult.duplicates`` and the marker.
    * Extraction goes to ``dest_root/.tmp-<shard>-<pid>``; the marker is
      written there and a single ``os.rename`` commits the shard.
    * ``dest_root/<shard>`` existing without a marker is an error unless
      ``overwrite`` (it could be a half-finished manual extraction).

    ``progress(n)`` is called with the byte count of each extracted file.
    """
    tar_path = Path(tar_path)
    dest_root = Path(dest_root)
    shard = shard_name(tar_path)
    final = dest_root / shard
    marker = final / MARKER_NAME

    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - old Pythons only
        import sys

        raise StorageError(
            f"cannot extract shard {shard!r} safely: this Python "
            f"({sys.version.split()[0]}) lacks tarfile's filter='data'; "
            "use Python 3.11.4 or newer"
        )

    if marker.is_file() and not overwrite:
        files, nbytes = _read_marker(marker)
        log.debug("shard %s already extracted (%s), skipping", shard, marker)
        return ExtractResult(shard, files, nbytes, skipped_already_done=True)
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise StorageError(
            f"{final} exists but has no {MARKER_NAME} marker, so shard {shard!r} may be "
            "only partly extracted; remove that directory or pass overwrite=True "
            "(--overwrite) to replace it"
        )
    if not tar_path.is_file():
        raise StorageError(f"shard file {tar_path} does not exist or is not a file")

    try:
        tf = tarfile.open(tar_path, mode="r:*")  # noqa: SIM115 - closed by the `with tf:` below
    except (tarfile.TarError, EOFError) as e:
        raise CorruptDataError(
            f"shard {shard!r} ({tar_path}) is not a readable tar archive: {e}; re-download it"
        ) from e

    tmp = dest_root / f"{_TMP_PREFIX}{shard}-{os.getpid()}"
    with tf:
        # Phase 1: validate everything before writing a single byte (not even
        # dest_root is created for a hostile or damaged archive).
        plain = isinstance(tf.fileobj, io.BufferedReader)  # not gzip/bz2/xz: offsets are file offsets
        listing = scan_tar(tf, tar_path, shard, file_size=tar_path.stat().st_size if plain else None)
        for m in listing.members:
            check_member(m, shard)
        files = sum(1 for m in listing.kept if m.isreg())
        nbytes = sum(m.size for m in listing.kept if m.isreg())
        current: list[tarfile.TarInfo] = []

        def tracked() -> Iterator[tarfile.TarInfo]:
            """The members to write, remembering which one is being written (for errors)."""
            for m in _with_progress(listing.kept, progress):
                current[:] = [m]
                yield m

        # Phase 2: extract into the private temp dir.
        dest_root.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(dest_root, shard)
        try:
            tmp.mkdir()
            tf.errorlevel = 1  # fatal errors (incl. filter errors) raise
            tf.extractall(tmp, members=tracked(), filter="data")
            with open(tmp / MARKER_NAME, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "shard": shard,
                        "source": tar_path.name,
                        "files": files,
                        "bytes": nbytes,
                        "tar_size": tar_path.stat().st_size,
                        "duplicates": list(listing.duplicates),
                    },
                    f,
                )
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
        except tarfile.FilterError as e:  # our checks should have caught it first
            _rmtree(tmp)
            raise InvalidPathError(
                f"refusing to extract shard {shard!r}: tarfile's data filter rejected "
                f"{e}; the archive is hostile or corrupt - re-download it"
            ) from e
        except (tarfile.TarError, EOFError) as e:
            _rmtree(tmp)
            where = f" in member {current[0].name!r} (header at byte {current[0].offset})" if current else ""
            raise CorruptDataError(
                f"shard {shard!r} ({tar_path}) is truncated or corrupt{where}: {e}; re-download it"
            ) from e
        except OSError as e:
            _rmtree(tmp)
            raise StorageError(
                f"could not extract shard {shard!r} into {tmp}: {e} "
                "(disk full? permissions? a file and a directory with the same name?)"
            ) from e
        except BaseException:
            _rmtree(tmp)
            raise

    # Phase 3: commit with one rename.
    old: Optional[Path] = None
    try:
        if final.exists() or final.is_symlink():  # only reachable with overwrite
            old = dest_root / f"{_OLD_PREFIX}{shard}-{os.getpid()}"
            os.rename(final, old)
        os.rename(tmp, final)
    except OSError as e:
        _rmtree(tmp)
        if old is not None and not final.exists():
            os.rename(old, final)  # put the previous copy back
        if marker.is_file() and not overwrite:  # a concurrent run won the race
            f_, b_ = _read_marker(marker)
            return ExtractResult(shard, f_, b_, skipped_already_done=True)
        raise StorageError(f"could not move {tmp} to {final}: {e}") from e
    fsync_dir(dest_root)
    if old is not None:
        _rmtree(old)
    log.debug("extracted shard %s: %d files, %d bytes", shard, files, nbytes)
    return ExtractResult(shard, files, nbytes, skipped_already_done=False, duplicates=listing.duplicates)


# --------------------------------------------------------------------------
# data.json
# --------------------------------------------------------------------------

def image_caption_exts(image_exts: Iterable[str], caption_ext: str) -> tuple[set[str], str]:
    """Lower-case extensions with a leading dot; ValueError if the caption one is also an image one."""
    img_exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in image_exts}
    cap_ext = caption_ext.lower() if caption_ext.startswith(".") else "." + caption_ext.lower()
    if cap_ext in img_exts:
        raise ValueError(f"caption_ext {caption_ext!r} is also an image extension")
    return img_exts, cap_ext


def key_and_ext(rel: str) -> tuple[str, str]:
    """``a/b.JPG`` -> (``a/b``, ``.jpg``): a normalised relpath without its extension, and the
    extension in lower case. String slicing, not PurePosixPath: pathlib interns every name it
    parses, and the interpreter's table of interned strings then grows with the file count
    (about 190 bytes a file, measured)."""
    name = rel[rel.rfind("/") + 1:]
    ext = os.path.splitext(name)[1]
    return (rel[:len(rel) - len(ext)] if ext else rel), ext.lower()


def add_candidate(
    rel: str,
    key: str,
    ext: str,
    exts: tuple[set[str], str],
    images: dict[str, list[str]],
    captions: dict[str, list[str]],
    report: DataJsonReport,
) -> None:
    """File ``rel`` (lower-case extension ``ext``) goes to ``images`` or ``captions`` under
    ``key`` (its relpath without extension), or to ``report.other_files``."""
    img_exts, cap_ext = exts
    if ext in img_exts:
        images.setdefault(key, []).append(rel)
    elif ext == cap_ext:
        captions.setdefault(key, []).append(rel)
    else:
        report.other_files.append(rel)


def pair_shard(
    images: dict[str, list[str]],
    captions: dict[str, list[str]],
    entries: list[dict[str, str]],
    report: DataJsonReport,
) -> None:
    """Pair one shard's images and captions by key into ``entries``: the alphabetically
    first image/caption of a key wins, the rest are duplicates; unpaired ones are orphans."""
    for caps in captions.values():
        caps.sort()
        report.duplicate_captions.extend(caps[1:])
    for key, imgs in images.items():
        imgs.sort()
        key_caps = captions.pop(key, None)
        if key_caps is None:
            report.orphan_images.extend(imgs)
            continue
        entries.append({"image": imgs[0], "annotation": key_caps[0]})
        report.duplicate_images.extend(imgs[1:])
    for caps in captions.values():
        report.orphan_captions.append(caps[0])


def finish_report(entries: list[dict[str, str]], report: DataJsonReport) -> None:
    """Sort ``entries`` by image path and every list of ``report``; count the pairs."""
    entries.sort(key=lambda e: (e["image"], e["annotation"]))
    report.pairs = len(entries)
    report.orphan_images.sort()
    report.orphan_captions.sort()
    report.duplicate_images.sort()
    report.duplicate_captions.sort()
    report.other_files.sort()


def log_unpaired(logger: logging.Logger, report: DataJsonReport, show: int = 20) -> None:
    """Log what a data.json build could not pair, the same way in every tool: one warning
    per kind (count, then the first ``show`` paths and ``(+N more)``), then
    ``pairs: N, orphan images: N, orphan captions: N`` at INFO. ``logger`` is the
    calling tool's, so the lines keep its name."""
    for what, paths in (("orphan image(s) without caption", report.orphan_images),
                        ("orphan caption(s) without image", report.orphan_captions),
                        ("extra image(s) for an already paired key", report.duplicate_images),
                        ("extra caption(s) for one key", report.duplicate_captions)):
        if paths:
            more = f" (+{len(paths) - show} more)" if len(paths) > show else ""
            logger.warning("%d %s: %s%s", len(paths), what, ", ".join(paths[:show]), more)
    logger.info("pairs: %d, orphan images: %d, orphan captions: %d",
                report.pairs, len(report.orphan_images), len(report.orphan_captions))


def data_json_text(entries: list[dict[str, str]]) -> str:
    """``entries`` as data.json text: one entry per line (diff-friendly, still plain JSON)
    and deterministic, so a re-upload finds the same bytes (ETag) and skips it."""
    return "[\n" + ",\n".join(json.dumps(e) for e in entries) + ("\n]\n" if entries else "]\n")


class ShardOrder:
    """Puts each shard's sorted entries out in the order of one global sort by image path, while
    shards come in name order, holding as few as it can (issue #14: no list of every entry).

    A shard's images all start with ``shard + "/"``, so the global order is the shards ordered by
    ``shard + "/"``, each sorted. That is name order except for a shard whose name extends
    another's with a character below '/' (``a`` and ``a-1``: ``a-1/...`` sorts first). So a
    finished shard waits only until a name at or after ``shard + "/"`` arrives (no later shard
    can then sort before it): with names such as ``00000``, ``00001`` nothing waits at all."""

    def __init__(self) -> None:
        self._pending: list[tuple[str, list[dict[str, str]]]] = []  # sorted by shard + "/"

    def push(self, shard: str, entries: list[dict[str, str]]) -> Iterator[dict[str, str]]:
        """Add the next shard (in name order) with its entries; yield what can go out now."""
        entries.sort(key=lambda e: (e["image"], e["annotation"]))
        bisect.insort(self._pending, (shard + "/", entries), key=lambda p: p[0])
        while self._pending and shard >= self._pending[0][0]:
            yield from self._pending.pop(0)[1]
        # the shard just pushed may itself be first and final (a later name is >= it + "/")

    def finish(self) -> Iterator[dict[str, str]]:
        """Everything still held (no shard comes after)."""
        while self._pending:
            yield from self._pending.pop(0)[1]


def iter_data_json(
    raw_root: PathLike,
    report: DataJsonReport,
    image_exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp"),
    caption_ext: str = ".txt",
) -> Iterator[dict[str, str]]:
    """:func:`build_data_json`'s entries, yielded in the same order as the walk goes, one shard
    folder in memory at a time (a 1,000,000-file tree: the memory of its largest shard, not of a
    list of every entry). ``report`` is complete once the generator is exhausted; a folder that
    cannot be walked raises StorageError then (after the last entry), so a writer that has not
    finished writing (tools/make_data_json.py writes to a temp file) keeps nothing."""
    raw = Path(raw_root)
    if not raw.is_dir():
        raise StorageError(f"raw folder {raw} does not exist; run tools/extract.py first")
    exts = image_caption_exts(image_exts, caption_ext)
    order = ShardOrder()
    walk = TreeWalk(root=raw)
    shard: str | None = None
    images: dict[str, list[str]] = {}
    captions: dict[str, list[str]] = {}

    def done(name: str) -> Iterator[dict[str, str]]:
        entries: list[dict[str, str]] = []
        pair_shard(images, captions, entries, report)
        images.clear()
        captions.clear()
        report.pairs += len(entries)
        yield from order.push(name, entries)

    # The walk tools/upload.py makes too (one rule: dot-entries skipped, symlinks followed,
    # an unreadable folder or a link loop is an error), so data.json names only uploaded files.
    for rel, _ in iter_tree(walk):  # depth-first in name order: one shard's files, then the next's
        name, sep, _rest = rel.partition("/")
        if not sep:  # a loose file directly in raw_root belongs to no shard
            report.other_files.append(rel)
            continue
        if name != shard:
            if shard is not None:
                yield from done(shard)
            shard = name
        add_candidate(rel, *key_and_ext(rel), exts, images, captions, report)
    if shard is not None:
        yield from done(shard)
    yield from order.finish()
    walk.raise_problems()
    report.hidden = [rel for rel in walk.hidden if rel.count("/") != 1 or not rel.endswith("/" + MARKER_NAME)]
    report.other_files.extend(walk.special)  # fifos, sockets, devices: never read
    for name in sorted(rel for rel in walk.dirs if "/" not in rel):
        report.shards.append(name)
        if not (raw / name / MARKER_NAME).is_file():
            report.unmarked_shards.append(name)
    pairs = report.pairs
    finish_report([], report)  # sorts the report's lists
    report.pairs = pairs


def build_data_json(
    raw_root: PathLike,
    image_exts: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp"),
    caption_ext: str = ".txt",
) -> tuple[list[dict[str, str]], DataJsonReport]:
    """Pair ``{key}.<img>`` with ``{key}.txt`` under every shard dir of ``raw_root``.

    Returns entries ``{"image": relpath, "annotation": relpath}`` (relpaths
    '/'-separated, relative to ``raw_root``) sorted by image path, plus a
    report of everything that did not pair. Extensions match
    case-insensitively. The tree is walked by :func:`blip3o_storage.transfer.tree_walk.iter_tree`,
    the rule ``tools/upload.py`` uses: dot-files and dot-dirs (temp dirs of running
    extractions, done-markers) are skipped and listed in ``report.hidden``, symlinked
    files and folders are followed; a folder that cannot be listed, a dangling link or
    a link loop raises StorageError naming each one. The list of :func:`iter_data_json`.
    """
    report = DataJsonReport()
    entries = list(iter_data_json(raw_root, report, image_exts, caption_ext))
    return entries, report
