"""Image decoding with size limits and DCT-domain reduction (OpenCV; Pillow only reads headers).

OpenCV decodes JPEGs (`benchmarks/input_pipeline.py` compares it with the other decoders on PyPI), and it can decode at
1/2, 1/4 or 1/8 resolution inside the inverse DCT, which costs a fraction of a full decode and averages pixels
(anti-aliasing) when a large person box is shrunk to a 353x257 crop.
"""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
from PIL import Image

from hvpose.errors import ImageError

# Decompression-bomb bound: images whose header claims more pixels are refused before decoding.
DEFAULT_MAX_PIXELS: int = 64_000_000
_REDUCED_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                  8: cv2.IMREAD_REDUCED_COLOR_8}

cv2.setNumThreads(1)  # pipeline workers are processes; OpenCV's own threads would oversubscribe the cores



def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the encoded header alone; raises ImageError if unreadable or over `max_pixels`."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            image_format = image.format
    except Exception as error:  # Pillow raises many types for bad data
        raise ImageError(f"not a readable image ({type(error).__name__}: {error})") from None
    if width * height > max_pixels:
        raise ImageError(f"{width}x{height} {image_format} exceeds the {max_pixels}-pixel limit")
    return width, height


def reduction_for_scale(scale: float) -> int:
    """Largest decode reduction r in {1, 2, 4, 8} that still leaves >= 1 image pixel per output pixel.

    `scale` is output pixels per full-resolution image pixel (e.g. 353 / enlarged box height).
    """
    reduction = 1
    while reduction < 8 and scale * reduction * 2 <= 1.0:
        reduction *= 2
    return reduction


def decode_image(data: bytes, reduction: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decodes encoded image bytes to RGB uint8 (H, W, 3), optionally at 1/`reduction` size (JPEG: in the DCT).

    Reduced pixel i covers full-resolution pixels [r*i, r*i + r): its centre is at r*i + (r - 1) / 2.
    Raises ImageError for corrupt data or an image over `max_pixels`.
    """
    if reduction not in _REDUCED_FLAGS:
        raise ValueError(f"reduction must be 1, 2, 4 or 8, got {reduction}")
    image_size(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[reduction])
    if image is None:
        raise ImageError("corrupt or unsupported image data")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def reduce_image(image: np.ndarray, reduction: int) -> np.ndarray:
    """An RGB array at 1/`reduction` size with `decode_image`'s pixel convention: reduced pixel i is the mean of
    full pixels [r*i, r*i + r) (the border replicated to fill the last block), centred at r*i + (r - 1) / 2."""
    if reduction not in _REDUCED_FLAGS:
        raise ValueError(f"reduction must be 1, 2, 4 or 8, got {reduction}")
    if reduction == 1:
        return image
    height, width = image.shape[:2]
    padded = cv2.copyMakeBorder(image, 0, -height % reduction, 0, -width % reduction, cv2.BORDER_REPLICATE)
    return cv2.resize(padded, (padded.shape[1] // reduction, padded.shape[0] // reduction),
                      interpolation=cv2.INTER_AREA)


def read_image_file(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS,
                    verify: bool = False) -> bytes:
    """The encoded bytes of an image file, checked to be a readable image within the pixel limit.

    `verify` also decodes it at 1/8 size (a fraction of a full decode) to catch corrupt data.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ImageError(f"cannot read {path} ({error.strerror or error})") from None
    if verify:
        decode_image(data, reduction=8, max_pixels=max_pixels)
    else:
        image_size(data, max_pixels)
    return data
