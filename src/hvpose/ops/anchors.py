"""Anchor boxes of the region proposal network: one set of sizes x aspect ratios at every cell of a feature map.

Anchors are constants of the network's shapes, so they are made with numpy at trace time (no device work, no
tracing) and enter jitted code as constants. One feature level is enough for the detector (the atrous backbone at
stride 8 or 16; no FPN).

Boxes are (x1, y1, x2, y2) in input pixels, continuous coordinates (pixel i spans [i, i + 1)), as in
`hvpose.ops.boxes`. The anchors of feature cell (i, j) are centred at (j * stride + c, i * stride + c), with
c = stride / 2 by default (the centre of the cell's stride x stride patch, as TF Model Garden; detectron2's
default offset is 0).

For size s and aspect ratio r (= height / width, detectron2's convention) an anchor has area s^2:
width s / sqrt(r), height s * sqrt(r).

Layout, (h * w * A, 4) with A = len(sizes) * len(aspect_ratios): cells row-major (i, then j), then the A anchors
of the cell, sizes outer and ratios inner (anchor a of a cell has size sizes[a // len(aspect_ratios)] and ratio
aspect_ratios[a % len(aspect_ratios)], as detectron2's `DefaultAnchorGenerator`). So a convolution output
(h, w, A * 4) reshaped to (h * w * A, 4) lines up anchor by anchor, and likewise (h, w, A) scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> np.ndarray:
    """(A, 4) float64 anchors centred at the origin, sizes outer and aspect ratios inner."""
    if not sizes or not aspect_ratios:
        raise ValueError(f"need at least one size and one aspect ratio, got {sizes} and {aspect_ratios}")
    rows = []
    for size in sizes:
        for ratio in aspect_ratios:
            if not (size > 0 and ratio > 0):
                raise ValueError(f"anchor sizes and aspect ratios must be positive, got {size} and {ratio}")
            half_width, half_height = 0.5 * size / math.sqrt(ratio), 0.5 * size * math.sqrt(ratio)
            rows.append([-half_width, -half_height, half_width, half_height])
    return np.asarray(rows, np.float64)


def grid_anchors(feature_shape: tuple[int, int], stride: int, sizes: Sequence[float],
                 aspect_ratios: Sequence[float], center_offset: float | None = None) -> np.ndarray:
    """(h * w * A, 4) float32 anchors (x1, y1, x2, y2) in input pixels for a feature map of `feature_shape` (h, w).

    Args:
      feature_shape: (h, w) of the feature map the proposal head runs on.
      stride: input pixels per feature cell.
      sizes: anchor sizes in input pixels (square root of the area).
      aspect_ratios: height / width of the anchors.
      center_offset: pixels from a cell's top-left corner (j * stride, i * stride) to its anchors' centre;
        stride / 2 when None.

    Returns:
      Anchors, cells row-major then the A = len(sizes) * len(aspect_ratios) anchors of each cell (sizes outer,
      ratios inner); see the module docstring.
    """
    height, width = (int(n) for n in feature_shape)
    offset = 0.5 * stride if center_offset is None else float(center_offset)
    base = cell_anchors(sizes, aspect_ratios)  # (A, 4)
    ys = np.arange(height, dtype=np.float64) * stride + offset
    xs = np.arange(width, dtype=np.float64) * stride + offset
    cy, cx = np.meshgrid(ys, xs, indexing="ij")  # (h, w), row-major cells
    centres = np.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4)  # (h * w, 1, 4)
    return (centres + base[None]).reshape(-1, 4).astype(np.float32)


__all__ = ["cell_anchors", "grid_anchors"]
