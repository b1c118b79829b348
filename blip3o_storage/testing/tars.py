"""Damaged tar shards: the good tar, each kind of damage, and the byte offset an error must name."""
from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512
A, B, C = os.urandom(3000), os.urandom(5000), b"a caption\n" * 70


def tar_bytes(members: list[tuple[str, bytes]], pax: dict[str, dict[str, str]] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000
            info.pax_headers = dict((pax or {}).get(name, {}))
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


GOOD = [("a.jpg", A), ("b.jpg", B), ("c.txt", C)]


def headers(blob: bytes) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its first header, offset of its data)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf}


def overwrite(blob: bytes, at: int, data: bytes) -> bytes:
    out = bytearray(blob)
    out[at:at + len(data)] = data
    return bytes(out)


def past_eof(blob: bytes) -> bytes:
    """c.txt's header claims 1 MB of data in a 20 kB file."""
    info = tarfile.TarInfo("c.txt")
    info.size, info.mtime = 1_000_000, 1_700_000_000
    return overwrite(blob, headers(blob)["c.txt"][0], info.tobuf(tarfile.USTAR_FORMAT))


#: case -> (make the damaged tar bytes from the good ones, the byte offset the error must name)
Damage = Callable[[bytes], bytes]
CASES: dict[str, tuple[Damage, Callable[[dict[str, tuple[int, int]]], int]]] = {
    # cut inside b.jpg's data: the member runs past the end of the file
    "cut_mid_data": (lambda g: g[:headers(g)["b.jpg"][1] + 100], lambda h: h["b.jpg"][0]),
    # cut inside the last member's data
    "cut_mid_last_data": (lambda g: g[:headers(g)["c.txt"][1] + 100], lambda h: h["c.txt"][0]),
    # cut inside b.jpg's (PAX) header
    "cut_mid_header": (lambda g: g[:headers(g)["b.jpg"][0] + 200], lambda h: h["b.jpg"][0]),
    # cut exactly before c.txt's header: no end-of-archive marker
    "cut_at_member_boundary": (lambda g: g[:headers(g)["c.txt"][0]], lambda h: h["c.txt"][0]),
    # garbage over b.jpg's header: checksum failure
    "garbage_over_header": (lambda g: overwrite(g, headers(g)["b.jpg"][0], os.urandom(BLOCK)),
                            lambda h: h["b.jpg"][0]),
    # b.jpg's header zeroed: looks like the end of the archive, with members after it
    "zeroed_header": (lambda g: overwrite(g, headers(g)["b.jpg"][0], bytes(BLOCK)), lambda h: h["b.jpg"][0]),
    # c.txt's size runs past the end of the file
    "size_past_eof": (past_eof, lambda h: h["c.txt"][0]),
}


@dataclass
class Damaged:
    case: str
    tar: Path
    offset: int  # the byte offset the error must name


def pax_negative(tmp: Path) -> Damaged:
    blob = tar_bytes(GOOD, pax={"b.jpg": {"size": "-1"}})
    tar = tmp / "pax_negative_size.tar"
    tar.write_bytes(blob)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:  # tarfile lists b.jpg with size -1, then stops
        offset = next(m.offset for m in tf if m.name == "b.jpg")
    return Damaged("pax_negative_size", tar, offset)


def make_damaged(tmp: Path, case: str) -> Damaged:
    tmp.mkdir(parents=True, exist_ok=True)
    if case == "pax_negative_size":
        return pax_negative(tmp)
    good = tar_bytes(GOOD)
    damage, where = CASES[case]
    tar = tmp / f"{case}.tar"
    tar.write_bytes(damage(good))
    return Damaged(case, tar, where(headers(good)))


ALL_CASES = sorted(CASES) + ["pax_negative_size"]


#: a tar whose member name k.jpg repeats: the last copy is the one extraction writes
DUP = [("k.jpg", b"first copy"), ("k.txt", b"a caption"), ("z.jpg", b"z image"), ("z.txt", b"z caption"),
       ("k.jpg", b"second copy, the one tar -x leaves")]
