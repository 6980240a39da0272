"""Images for E10's vision tower (CLIP ViT-L/14): decoded by Pillow within byte, pixel and
shape limits, and prepared exactly as transformers' CLIP image processor prepares them.

Decoding: PNG, JPEG, WebP, GIF (its first frame) and BMP; the size is read from the header
and checked before any pixel is decoded (a decompression bomb is refused unread); EXIF
orientation is applied; 16-bit greyscale is scaled to 8 bits (Pillow's own conversion would
clip it to white); anything else becomes RGB as the processor converts it (transparency
composited on white). Preparation: the shortest side resized to 224 (bicubic), a centred
224 x 224 crop, scaled to [0, 1], normalised with CLIP's mean and std.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from ensemble.validation import InvalidInput
from export.registry import IMAGE, LIMITS, Limits

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SIZE = 224  # shortest side after resizing, and the centred crop
MEAN = np.array((0.48145466, 0.4578275, 0.40821073), dtype=np.float32)  # OpenAI CLIP's
STD = np.array((0.26862954, 0.26130258, 0.27577711), dtype=np.float32)
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")


class ImageError(InvalidInput):
    """An image the service refuses; the message names the field and the limit."""


def decode(data: bytes, field: str = f"{IMAGE}[0]", limits: Limits = LIMITS):
    """The first frame of an encoded image as an RGB ``PIL.Image``, upright."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageError(f"{field}: empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise ImageError(f"{field}: {len(data)} bytes exceed the limit of "
                         f"{limits.max_image_bytes} bytes")
    with warnings.catch_warnings():
        # The pixel limit below is stricter than Pillow's bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as err:
            raise ImageError(f"{field}: more than {limits.max_image_pixels} pixels") from err
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
            raise ImageError(f"{field}: not an image in an accepted format "
                             f"({', '.join(FORMATS)})") from err
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageError(f"{field}: {width} x {height} pixels has no area")
        if width * height > limits.max_image_pixels:
            raise ImageError(f"{field}: {width} x {height} = {width * height} pixels exceed the "
                             f"limit of {limits.max_image_pixels}")
        ratio = max(width, height) / min(width, height)
        if ratio > limits.max_image_aspect:
            raise ImageError(f"{field}: {width} x {height} is more elongated than "
                             f"{limits.max_image_aspect}:1")
        try:
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _rgb(image)
        except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError,
                ZeroDivisionError) as err:
            raise ImageError(f"{field}: a {image.format} image that cannot be decoded "
                             f"({err})") from err


def _rgb(image):
    from PIL import Image

    if image.mode in SIXTEEN_BIT:
        wide = np.asarray(image, dtype=np.int64)
        image = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), "L")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def pixels(image) -> np.ndarray:
    """An RGB ``PIL.Image`` -> CLIP's input [3, 224, 224] float32."""
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    resized_long = int(SIZE * long / short)
    size = (SIZE, resized_long) if width <= height else (resized_long, SIZE)
    resized = image.resize(size, Image.Resampling.BICUBIC)
    top, left = (size[1] - SIZE) // 2, (size[0] - SIZE) // 2
    crop = resized.crop((left, top, left + SIZE, top + SIZE))
    scaled = (np.asarray(crop, dtype=np.float64) * (1 / 255)).astype(np.float32)
    return ((scaled - MEAN) / STD).transpose(2, 0, 1).copy()


def prepare(data: bytes, field: str = f"{IMAGE}[0]", limits: Limits = LIMITS) -> np.ndarray:
    """Encoded image -> CLIP's input [3, 224, 224] (ImageError naming ``field`` if refused)."""
    return pixels(decode(data, field, limits))
