"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A JPEG of smooth gradients + noise: JPEG-realistic, and crops/resizes are position-sensitive.

    The same (size, seed, quality) always gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    rng.integers(0, 256, (height, width))], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
