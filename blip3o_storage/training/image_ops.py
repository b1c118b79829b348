"""Image bytes -> checked RGB image -> square ``[-1, 1]`` CHW tensor.

Decoding happens here, not in the dataset, so every way an image can be bad
(undecodable, truncated, too small, extreme aspect) becomes one of two
package errors that name the key and say why; the dataset counts them by
``reason`` and retries another sample.
"""
from __future__ import annotations

import io
import random
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from blip3o_storage.errors import CorruptDataError, StorageError

#: Pillow >= 9.1 names its filters in ``Image.Resampling``; 9.0 only at module level.
_BICUBIC = getattr(Image, "Resampling", Image).BICUBIC

class ImageRejectedError(StorageError):
    """A decodable image that fails the size/aspect rules; ``reason`` is
    ``'too_small'`` or ``'bad_aspect'``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Grey modes with more than 8 bits per sample: ``convert('RGB')`` clips them
#: (every value >= 255 turns white), so they are scaled by their value range.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _sample_bits(image: Image.Image) -> int:
    """Bits per sample of a wide grey image, from the file where it says so.

    Mode ``I;16*`` is 16-bit by definition. Mode ``I`` (32-bit signed in
    Pillow) is what Pillow < 10 gave 16-bit PNGs and still gives 16-bit
    PGM/PPM (scaled to 0..65535), so it is 16-bit unless a TIFF declares
    another BitsPerSample (e.g. 32). Never guessed from the pixel values: a
    dark 16-bit image must not be read as a bright 8-bit one.
    """
    if image.mode != "I":
        return 16
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return int(bits) if isinstance(bits, int) and 8 <= bits <= 32 else 16


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any decoded image; wide grey scaled by its range (16-bit: ``>> 8``)."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY_MODES:
        bits = min(_sample_bits(image), 31)  # mode I is signed 32-bit: 0..2**31 - 1 at most
        values = np.clip(np.asarray(image).astype(np.int64), 0, (1 << bits) - 1) >> (bits - 8)
        return Image.fromarray(np.minimum(values, 255).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")  # 16-bit RGB(A) PNGs already load as 8-bit RGB(A) in Pillow


def decode_image(data: bytes, key: str) -> Image.Image:
    """Fully decode ``data`` into an RGB image.

    ``Image.open`` is lazy, so truncated files would only fail later inside a
    collate; ``load()`` here makes every decoding problem a CorruptDataError.
    Decompression-bomb warnings are errors too: a training sample that big is
    not one to decode in a DataLoader worker.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
            return _to_rgb(image)  # RGB as is (convert() would copy it); 16-bit grey scaled, not clipped
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise CorruptDataError(f"{key}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def check_image(image: Image.Image, key: str, min_image_size: int = 80, max_aspect_ratio: float = 10.0) -> None:
    """OpenUni's rules: both sides > ``min_image_size`` and
    ``1/max_aspect_ratio < width/height < max_aspect_ratio``."""
    width, height = image.size
    if width <= min_image_size or height <= min_image_size:
        raise ImageRejectedError(f"{key}: image {width}x{height} is too small (both sides must be > "
                                 f"{min_image_size})", reason="too_small")
    aspect = width / height
    if not (1.0 / max_aspect_ratio < aspect < max_aspect_ratio):
        raise ImageRejectedError(f"{key}: image {width}x{height} has aspect ratio {aspect:.3g} outside "
                                 f"({1 / max_aspect_ratio:.3g}, {max_aspect_ratio:.3g})", reason="bad_aspect")


def crop_to_square(image: Image.Image, mode: str = "center", rng: random.Random | None = None) -> Image.Image:
    """Crop the longer side down to the shorter one.

    ``center`` is deterministic (same tensor from S3 and local copy);
    ``random`` picks the offset like OpenUni's ``crop2square`` does.
    """
    width, height = image.size
    side = min(width, height)
    if mode == "center":
        x0, y0 = (width - side) // 2, (height - side) // 2
    elif mode == "random":
        randint = rng.randint if rng is not None else random.randint
        x0, y0 = randint(0, width - side), randint(0, height - side)
    else:
        raise ValueError(f"crop mode must be 'center' or 'random', not {mode!r}")
    return image.crop((x0, y0, x0 + side, y0 + side))


def to_pixel_values(image: Image.Image, image_size: int, crop: str = "center",
                    rng: random.Random | None = None) -> torch.Tensor:
    """Square crop, BICUBIC resize to ``image_size``, float CHW in ``[-1, 1]``."""
    square = crop_to_square(_to_rgb(image), crop, rng)
    resized = square.resize((image_size, image_size), resample=_BICUBIC)
    array = np.asarray(resized, dtype=np.uint8)
    pixels = torch.from_numpy(array.copy()).float().div_(255.0).mul_(2.0).sub_(1.0)
    return pixels.permute(2, 0, 1).contiguous()


def load_pixel_values(data: bytes, key: str, *, image_size: int, min_image_size: int = 80,
                      max_aspect_ratio: float = 10.0, crop: str = "center",
                      rng: random.Random | None = None) -> torch.Tensor:
    """Bytes of an image file -> checked ``(3, image_size, image_size)`` tensor."""
    image = decode_image(data, key)
    check_image(image, key, min_image_size, max_aspect_ratio)
    return to_pixel_values(image, image_size, crop, rng)
