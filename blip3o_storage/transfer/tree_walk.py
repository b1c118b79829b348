"""One rule for which local files make up a dataset folder.

``tools/upload.py`` (:func:`blip3o_storage.transfer.upload.plan_upload`) and
``tools/make_data_json.py`` (:func:`blip3o_storage.transfer.safe_tar.build_data_json`)
both walk a folder with :func:`walk_tree`, so a data.json never names a file
that the upload leaves out, and neither drops a folder silently:

* dot-files and dot-folders are skipped and listed (``hidden``): they are the
  temp dirs and done-markers of ``tools/extract.py`` and editors' files;
* symlinks are followed, to files and to folders (a ``raw/`` on another
  disk), except a link back to one of its own ancestors, which would repeat
  the tree forever: that is a problem;
* a folder that cannot be listed, an entry that cannot be stat'ed and a
  dangling symlink are problems, never skipped: :meth:`TreeWalk.raise_problems`
  names every one (``os.walk`` ignores them unless given ``onerror``);
* anything else that is not a regular file (fifo, socket, device) is listed
  in ``special`` and not used (reading a fifo would block forever).

Entries are visited in sorted name order (files of a folder, then its
subfolders), so the result is deterministic; :func:`iter_tree_stat` with
``key_order`` visits them in the order of an S3 LIST of their keys instead.
"""
from __future__ import annotations

import errno
import os
import stat as stat_mode
from dataclasses import dataclass, field
from pathlib import Path
from typing import FrozenSet, Iterator, List, Tuple, Union

from blip3o_storage.errors import StorageError

__all__ = ["TreeWalk", "is_hidden", "iter_tree", "iter_tree_stat", "walk_tree"]

PathLike = Union[str, "os.PathLike[str]"]
#: An entry still to visit: (sort key, relpath, path, stat, (dev, inode) of the folders above it).
_Pending = Tuple[Tuple[bool, str], str, str, os.stat_result, FrozenSet[Tuple[int, int]]]
SHOW = 20  # problems named in an error before "... and N more"


def is_hidden(relpath: str) -> bool:
    """Whether a '/'-separated relative path has a dot-file or dot-folder component."""
    return any(part.startswith(".") for part in relpath.split("/") if part not in ("", ".", ".."))


@dataclass
class TreeWalk:
    """What :func:`walk_tree` found; every relpath is '/'-separated and relative to ``root``."""

    root: Path
    files: List[Tuple[str, Path]] = field(default_factory=list)  # (relpath, path under root)
    dirs: List[str] = field(default_factory=list)  # folders walked (root excluded)
    hidden: List[str] = field(default_factory=list)  # dot-entries skipped (not descended into)
    special: List[str] = field(default_factory=list)  # neither file nor folder (fifo, socket, device)
    problems: List[Tuple[str, str]] = field(default_factory=list)  # (path, why it could not be walked)

    def raise_problems(self) -> None:
        """Raise StorageError naming every folder or entry that could not be walked."""
        if not self.problems:
            return
        lines = "\n".join(f"  {path}: {why}" for path, why in self.problems[:SHOW])
        more = f"\n  ... and {len(self.problems) - SHOW} more" if len(self.problems) > SHOW else ""
        raise StorageError(
            f"{len(self.problems)} path(s) under {self.root} cannot be walked (unreadable, dangling or looping), "
            f"so their files would be left out; fix the permissions or links (or move them out of the folder) "
            f"and run again:\n{lines}{more}")


def walk_tree(root: PathLike) -> TreeWalk:
    """Walk ``root`` by the rule above; problems are collected, not raised (see :meth:`TreeWalk.raise_problems`)."""
    walk = TreeWalk(root=Path(root))
    walk.files.extend(iter_tree(walk))
    return walk


def iter_tree(walk: TreeWalk) -> Iterator[Tuple[str, Path]]:
    """Walk ``walk.root``, yielding ``(relpath, path)`` per regular file as it is found (nothing kept
    per file: a 1,000,000-file tree costs the memory of one folder listing); folders, hidden and special
    entries and problems are recorded in ``walk`` as :func:`walk_tree` does. ``walk.files`` is not touched.
    Order: the files of a folder, then its subfolders, each by name."""
    for rel, path, _ in iter_tree_stat(walk):
        yield rel, Path(path)


def iter_tree_stat(walk: TreeWalk, *, key_order: bool = False) -> Iterator[Tuple[str, str, os.stat_result]]:
    """:func:`iter_tree` yielding ``(relpath, path, stat)``: the one stat the walk makes per entry
    (symlinks followed) is handed on, so a caller needs none of its own.

    With ``key_order`` the files come in the order of their relpaths as strings (code point
    order, which is UTF-8 byte order: the order of keys in an S3 LIST), so the walk can be merged
    with a listing in one pass: a folder ``d`` sorts as ``d/`` among its siblings and is walked
    where it sorts."""
    top = walk.root
    try:
        st = top.stat()
    except OSError as exc:
        walk.problems.append((str(top), f"cannot stat ({exc.strerror or exc})"))
        return
    # Depth-first with an explicit stack of folder listings still to visit, each reversed (pop() takes the next).
    def listing(folder: str, prefix: str, ancestors: FrozenSet[Tuple[int, int]]) -> List[_Pending]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            walk.problems.append((folder, f"cannot list folder ({exc.strerror or exc})"))
            return []
        out: List[_Pending] = []
        for entry in entries:
            rel = prefix + entry.name
            if entry.name.startswith("."):
                walk.hidden.append(rel)
                continue
            path = entry.path
            try:
                st = os.stat(path)  # follows symlinks
            except FileNotFoundError:
                if entry.is_symlink():
                    walk.problems.append((path, f"dangling symlink -> {os.readlink(path)!r}"))
                # else: deleted since the listing; nothing to upload
                continue
            except OSError as exc:
                why = "symlink loop" if exc.errno == errno.ELOOP else f"cannot stat ({exc.strerror or exc})"
                walk.problems.append((path, why))
                continue
            if stat_mode.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    walk.problems.append((path, f"symlink -> {os.readlink(path)!r} points back at a folder "
                                                "that contains it (an endless loop)")
                                         if entry.is_symlink() else (path, "folder loop (bind mount?)"))
                    continue
                walk.dirs.append(rel)
                key = (False, rel + "/") if key_order else (True, rel)
                out.append((key, rel, path, st, ancestors | {ident}))
            elif stat_mode.S_ISREG(st.st_mode):
                out.append(((False, rel), rel, path, st, ancestors))
            else:
                walk.special.append(rel)
        out.sort(key=lambda p: p[0], reverse=True)
        return out

    stack = [listing(str(top), "", frozenset({(st.st_dev, st.st_ino)}))]
    while stack:
        pending = stack[-1]
        if not pending:
            stack.pop()
            continue
        _, rel, path, st, ancestors = pending.pop()
        if stat_mode.S_ISDIR(st.st_mode):
            stack.append(listing(path, rel + "/", ancestors))
        else:
            yield rel, path, st
