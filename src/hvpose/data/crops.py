"""Person crops: box -> 353x257 affine warp, keypoints through it, and predictions back through its inverse.

Pixel convention everywhere (images, crops, keypoints): pixel centres sit at integer coordinates, pixel (row i,
column j) is the point (x=j, y=i), as in OpenCV's warpAffine and `hvpose.targets`.

A box (x, y, w, h) is extended in width or height to the crop's aspect ratio H:W, enlarged about its centre by a
factor (training: uniform 1.0-1.5; test time: `TEST_ENLARGE`), optionally rotated and flipped, and mapped so that
its centre lands on the crop centre ((W-1)/2, (H-1)/2) with W crop pixels across the extended box width. One 2x3
matrix maps image points to crop points; its inverse maps crop predictions back to the image.

This module is the one place that decides crop geometry: the test-time enlargement, the crop-size rule and how a
box becomes a crop (`crop_box`, used by evaluation and the Predictor alike).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import cv2
import numpy as np

from hvpose.data.images import reduction_for_scale

CROP_SIZE: tuple[int, int] = (353, 257)  # (height, width) of the paper's crops
TEST_ENLARGE: float = 1.25  # the paper's test-time box enlargement


def check_crop_size(height: int, width: int, output_stride: int) -> tuple[int, int]:
    """(height, width) if both are of the form s*n+1 for output stride s, else ValueError.

    With such sizes feature cell (i, j) sits on crop pixel (s*i, s*j), upsampling uses aligned corners, and the
    flip test is exact (the grid mirrors onto itself).
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1 or (height - 1) % output_stride or (width - 1) % output_stride:
        raise ValueError(f"crop size {height}x{width} must be of the form {output_stride}n+1 for output stride "
                         f"{output_stride} (feature cells on crop pixels; exact flip test)")
    return height, width


@dataclasses.dataclass(frozen=True)
class CropGeometry:
    """Where a crop comes from: centre and extended size in image pixels, rotation, flip."""

    center: tuple[float, float]  # (x, y) in image pixels
    size: tuple[float, float]  # (width, height) of the extended, enlarged box in image pixels
    rotation: float = 0.0  # degrees, counter-clockwise in the image as displayed (y down)
    flip: bool = False  # mirror the crop horizontally


def extend_box(box: tuple[float, float, float, float], crop_size: tuple[int, int] = CROP_SIZE,
               enlarge: float = 1.25) -> tuple[tuple[float, float], tuple[float, float]]:
    """Centre (x, y) and (width, height) of `box` (x, y, w, h) extended to the crop's aspect ratio and enlarged.

    Degenerate boxes (zero width or height) become a square-ish box of the other side; an empty box becomes 1 px.
    """
    x, y, w, h = (float(v) for v in box)
    aspect = crop_size[0] / crop_size[1]  # height / width
    w, h = max(w, 0.0), max(h, 0.0)
    if h > w * aspect:
        w = h / aspect
    else:
        h = w * aspect
    if h <= 0:
        w, h = 1.0 / aspect, 1.0
    return (x + float(box[2]) / 2, y + float(box[3]) / 2), (w * enlarge, h * enlarge)


def crop_transform(geometry: CropGeometry, crop_size: tuple[int, int] = CROP_SIZE) -> np.ndarray:
    """The 2x3 float64 affine matrix mapping image points (x, y, 1) to crop points."""
    height, width = crop_size
    scale = width / geometry.size[0]
    angle = np.deg2rad(geometry.rotation)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    # Rotation by +angle counter-clockwise as displayed (y axis down) is [[cos, sin], [-sin, cos]].
    linear = np.array([[cos, sin], [-sin, cos]])
    if geometry.flip:
        linear[0] *= -1
    center = np.asarray(geometry.center, np.float64)
    offset = np.array([(width - 1) / 2, (height - 1) / 2]) - linear @ center
    return np.concatenate([linear, offset[:, None]], axis=1)


def invert_transform(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (crop -> image when given image -> crop)."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps (..., 2) points (x, y) through a 2x3 affine matrix."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def transform_keypoints(matrix: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Maps (K, 3) keypoints (x, y, v) through a 2x3 matrix; unlabelled ones (v = 0) stay at (0, 0, 0)."""
    out = np.zeros_like(keypoints, dtype=np.float32)
    labelled = keypoints[:, 2] > 0
    out[labelled, :2] = apply_transform(matrix, keypoints[labelled, :2])
    out[:, 2] = keypoints[:, 2]
    return out


def scale_for_reduction(matrix: np.ndarray, reduction: int) -> np.ndarray:
    """Composes an image->crop matrix with the map from a 1/r-size decode to full-resolution pixels.

    Reduced pixel i covers full pixels [r*i, r*i + r): its centre is at r*i + (r - 1) / 2.
    """
    if reduction == 1:
        return matrix
    linear = matrix[:, :2]
    shift = np.full(2, (reduction - 1) / 2)
    return np.concatenate([linear * reduction, (linear @ shift + matrix[:, 2])[:, None]], axis=1)


def render_crop(decode: Callable[[int], np.ndarray], geometry: CropGeometry,
                crop_size: tuple[int, int] = CROP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The crop of `geometry`, read from the smallest decode of the image that still has the crop's resolution.

    `decode(reduction)` returns the image decoded at 1/`reduction` of its size (1, 2, 4 or 8; see
    `hvpose.data.images.decode_image`): JPEG reduces in the DCT, which is fast and anti-aliases large boxes.
    Returns the uint8 crop and the float64 image -> crop matrix (full-resolution image coordinates).
    """
    matrix = crop_transform(geometry, crop_size)
    reduction = reduction_for_scale(crop_size[1] / geometry.size[0])
    return warp(decode(reduction), scale_for_reduction(matrix, reduction), crop_size), matrix


def crop_box(decode: Callable[[int], np.ndarray], box: tuple[float, float, float, float],
             crop_size: tuple[int, int] = CROP_SIZE, enlarge: float = TEST_ENLARGE) -> tuple[np.ndarray, np.ndarray]:
    """The test-time crop of `box` (x, y, w, h): extended to the crop's aspect ratio, enlarged about its centre.

    Returns the uint8 crop and the float32 crop -> image matrix. Evaluation and the Predictor both crop here.
    """
    center, size = extend_box(box, crop_size, enlarge)
    crop, matrix = render_crop(decode, CropGeometry(center, size), crop_size)
    return crop, invert_transform(matrix).astype(np.float32)


def warp(image: np.ndarray, matrix: np.ndarray, crop_size: tuple[int, int] = CROP_SIZE,
         fill: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """The crop: `image` (h, w, 3) uint8 resampled bilinearly through `matrix` (image -> crop) to `crop_size`."""
    return cv2.warpAffine(image, np.asarray(matrix, np.float64), (crop_size[1], crop_size[0]),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
