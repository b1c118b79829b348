"""Generate a small BLIP3o-60k-shaped dataset: 11 WebDataset shard tars.

Usage::

    python tools/make_demo_data.py --out demo-work/tars \
        [--samples-per-shard 40] [--seed 0] [--image-size 1024] [--workers N]

Each shard is named like the real ones (``dalle3.tar``, ``geneval_train.tar``,
..., ``text_2.tar``) and holds ``{key}.jpg`` (a real baseline JPEG, sizes
varying from about 512x384 to 1024x1024 for ``--image-size 1024``, roughly
30-120 KB each) followed by ``{key}.txt`` (a UTF-8 caption). The output is a
pure function of ``--samples-per-shard``, ``--seed`` and ``--image-size``: the
same arguments give byte-identical tars on any machine and any ``--workers``.
Re-running with the same arguments skips the work (``--force`` regenerates).
Tars are written to a temp name and renamed, so a crash leaves no half shard.

Exit status (see ``blip3o_storage.cli.common``): 0 generated or already there;
2 bad usage; 130 interrupted (Ctrl-C; finished shards stay, no half shard).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Generator, Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from blip3o_storage.cli.common import EXIT_OK, ignore_sigint, interruptible, parser_from_doc

log = logging.getLogger("make_demo_data")

#: The 11 shards of BLIP3o-60k, in the order of the real dataset.
SHARDS = (
    "dalle3", "geneval_train", "human_gestures", "journeyDB", "mscoco_human",
    "object_1", "object_2", "occupation_1", "occupation_2", "text_1", "text_2",
)
#: (width, height) at --image-size 1024; scaled linearly for other sizes.
BASE_SIZES = ((512, 512), (640, 480), (768, 768), (1024, 768), (768, 1024), (1024, 1024), (1024, 576))
MANIFEST = ".make_demo_data.json"
TAR_MTIME = 1_700_000_000  # fixed so the tars are byte-identical run to run
JPEG_QUALITY = 85

_SUBJECTS = ("a red cube", "two dogs", "a woman in a yellow coat", "an old lighthouse", "a bowl of ramen",
             "a violin", "three glass bottles", "a robot barista", "a mountain lake", "a chef",
             "a vintage bicycle", "a snowy street", "a hand making a peace sign", "a firefighter",
             "a neon sign that reads \u201cOPEN\u201d", "a stack of books", "a café terrace",
             "a koi pond", "a teacher at a blackboard", "a green parrot")
_PLACES = ("on a wooden table", "in a sunlit room", "at dusk", "under heavy rain", "on a city rooftop",
           "in a forest clearing", "against a plain white background", "in a busy market",
           "next to a window", "on the beach")
_STYLES = ("photorealistic", "watercolor", "studio lighting", "35mm film photo", "digital art",
           "isometric 3D render", "oil painting", "high detail", "soft focus", "wide angle")


def sample_key(shard: str, index: int) -> str:
    return f"{shard}_{index:06d}"


def _rng(seed: int, shard: str, index: int) -> np.random.Generator:
    """Per-sample RNG: independent of worker count and generation order."""
    digest = hashlib.sha256(f"{seed}:{shard}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def image_dims(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    w, h = BASE_SIZES[int(rng.integers(len(BASE_SIZES)))]
    scale = image_size / 1024
    return max(16, int(round(w * scale))), max(16, int(round(h * scale)))


def make_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A photo-ish JPEG: gradient, flat shapes, low-frequency texture."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    gx = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    mix = gx * 0.6 + gy * 0.4
    img = Image.fromarray((c0 * (1 - mix) + c1 * mix).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1 = x0 + int(rng.integers(8, max(9, width // 2)))
        y1 = y0 + int(rng.integers(8, max(9, height // 2)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.integers(2) else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    cell = 10
    tex = rng.normal(128, 16, (max(1, height // cell), max(1, width // cell), 3))
    tex_img = Image.fromarray(np.clip(tex, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)  # type: ignore[attr-defined]
    out = np.asarray(img, dtype=np.int16) + np.asarray(tex_img, dtype=np.int16) - 128
    buf = io.BytesIO()
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def make_caption(rng: np.random.Generator) -> str:
    subject = _SUBJECTS[int(rng.integers(len(_SUBJECTS)))]
    place = _PLACES[int(rng.integers(len(_PLACES)))]
    styles = ", ".join(_STYLES[int(i)] for i in rng.choice(len(_STYLES), int(rng.integers(1, 4)), replace=False))
    text = f"{subject[0].upper()}{subject[1:]} {place}, {styles}."
    if rng.integers(3) == 0:  # some long, multi-sentence captions as in the real data
        text += (f" The scene is framed with {int(rng.integers(2, 9))} distinct elements and a "
                 f"{'warm' if rng.integers(2) else 'cool'} colour palette.")
    return text + "\n"


def make_sample(task: tuple[int, str, int, int]) -> tuple[str, int, bytes, bytes]:
    """(seed, shard, index, image_size) -> (key, index, jpeg, caption utf-8)."""
    seed, shard, index, image_size = task
    rng = _rng(seed, shard, index)
    width, height = image_dims(rng, image_size)
    jpeg = make_jpeg(rng, width, height)
    caption = make_caption(rng).encode("utf-8")
    return sample_key(shard, index), index, jpeg, caption


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _params(samples_per_shard: int, seed: int, image_size: int, shards: Sequence[str]) -> dict:
    return {"samples_per_shard": samples_per_shard, "seed": seed, "image_size": image_size,
            "shards": list(shards), "jpeg_quality": JPEG_QUALITY, "version": 1}


def already_generated(out: Path, params: dict) -> bool:
    """True when ``out`` holds exactly these shards from these parameters."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    sizes = manifest.get("sizes", {})
    return all((out / f"{s}.tar").is_file() and (out / f"{s}.tar").stat().st_size == sizes.get(s)
               for s in params["shards"])


def _results(tasks: list[tuple[int, str, int, int]],
             workers: int) -> Generator[tuple[str, int, bytes, bytes], None, None]:
    if workers <= 1:
        yield from map(make_sample, tasks)
        return
    # fork is cheap and the workers only need numpy/PIL; results come back in order.
    with get_context("fork").Pool(workers, initializer=ignore_sigint) as pool:  # Ctrl-C: the parent stops them
        yield from pool.imap(make_sample, tasks, chunksize=4)


def generate(out: Path, samples_per_shard: int = 40, seed: int = 0, image_size: int = 1024,
             shards: Sequence[str] = SHARDS, workers: int | None = None, force: bool = False,
             progress: bool | None = None) -> dict:
    """Write the shard tars into ``out``; returns the manifest (sizes per shard)."""
    out.mkdir(parents=True, exist_ok=True)
    params = _params(samples_per_shard, seed, image_size, shards)
    if not force and already_generated(out, params):
        manifest = json.loads((out / MANIFEST).read_text())
        log.info("%d shard(s) already generated in %s with the same parameters, skipped (--force redoes them)",
                 len(shards), out)
        manifest["skipped"] = True
        return manifest
    (out / MANIFEST).unlink(missing_ok=True)
    workers = workers or min(len(shards), os.cpu_count() or 1)
    tasks = [(seed, shard, i, image_size) for shard in shards for i in range(samples_per_shard)]
    t0 = time.monotonic()
    sizes, image_bytes = {}, 0
    results = _results(tasks, workers)
    disable = None if progress is None else not progress
    with tqdm(total=len(tasks), unit="sample", desc="generate", disable=disable) as bar:
        for shard in shards:
            final = out / f"{shard}.tar"
            tmp = out / f".{shard}.tar.tmp-{os.getpid()}"
            try:
                with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tar:
                    for _ in range(samples_per_shard):
                        key, _index, jpeg, caption = next(results)
                        _add(tar, f"{key}.jpg", jpeg)
                        _add(tar, f"{key}.txt", caption)
                        image_bytes += len(jpeg)
                        bar.update(1)
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            sizes[shard] = final.stat().st_size
            bar.set_postfix_str(shard)
    results.close()
    elapsed = time.monotonic() - t0
    manifest = {"params": params, "sizes": sizes, "samples": len(tasks), "files": 2 * len(tasks),
                "tar_bytes": sum(sizes.values()), "image_bytes": image_bytes, "seconds": round(elapsed, 2)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info("generated %d shard(s), %d samples (%d files), %.1f MB of tars in %.1f s into %s "
             "(mean JPEG %.0f KB)", len(shards), len(tasks), 2 * len(tasks), manifest["tar_bytes"] / 1e6,
             elapsed, out, image_bytes / max(1, len(tasks)) / 1e3)
    manifest["skipped"] = False
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    ap = parser_from_doc(__doc__ or "")
    ap.add_argument("--out", type=Path, default=Path("demo-work/tars"), help="folder for the *.tar shards "
                    "(default %(default)s)")
    ap.add_argument("--samples-per-shard", type=int, default=40, help="image+caption pairs per shard "
                    "(default %(default)s -> 440 samples)")
    ap.add_argument("--seed", type=int, default=0, help="content seed (default %(default)s)")
    ap.add_argument("--image-size", type=int, default=1024,
                    help="longest edge of the largest images; sizes vary from half of it up (default %(default)s)")
    ap.add_argument("--workers", type=int, default=None, help="generator processes (default: #CPUs)")
    ap.add_argument("--force", action="store_true", help="regenerate even if the same tars are there")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.samples_per_shard < 1:
        ap.error("--samples-per-shard must be >= 1")
    if args.image_size < 32:
        ap.error("--image-size must be >= 32")
    if args.workers is not None and args.workers < 1:
        ap.error("--workers must be >= 1")

    def run() -> int:
        generate(args.out, args.samples_per_shard, args.seed, args.image_size, workers=args.workers,
                 force=args.force)
        return EXIT_OK

    return interruptible(run, "interrupted; finished shards stay, re-run the same command to finish")


if __name__ == "__main__":
    raise SystemExit(main())
