"""Bilinear upsampling with aligned corners, written as two matrix products (exact, separable).

For map sizes of the form s*n+1, feature cell (i, j) sits at pixel (s*i, s*j): the convention of both keypoint
networks (`hvpose.models.keypoint_net`, `hvpose.models.mobilenet`). Constant interpolation matrices map onto the
MXU on TPU instead of gathers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of 1-D linear interpolation with aligned corners.

    Output sample o sits at input coordinate o * (in_size - 1) / (out_size - 1); its two neighbours share the weight.
    """
    if in_size == 1 or out_size == 1:
        matrix = np.zeros((out_size, in_size), np.float32)
        matrix[:, 0] = 1.0
        return matrix
    position = np.arange(out_size, dtype=np.float64) * (in_size - 1) / (out_size - 1)
    lower = np.clip(np.floor(position).astype(np.int64), 0, in_size - 2)
    fraction = position - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    matrix[np.arange(out_size), lower] = 1.0 - fraction
    matrix[np.arange(out_size), lower + 1] += fraction
    return matrix.astype(np.float32)


def resize_aligned_corners(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, h, w, C) maps to (B, H, W, C) with aligned corners."""
    rows = jnp.asarray(interpolation_matrix(maps.shape[1], size[0]), maps.dtype)
    cols = jnp.asarray(interpolation_matrix(maps.shape[2], size[1]), maps.dtype)
    # HIGHEST: the default matmul precision on TPU/GPU would round float32 maps to bf16/tf32.
    maps = jnp.einsum("Hh,bhwc->bHwc", rows, maps, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("Ww,bHwc->bHWc", cols, maps, precision=jax.lax.Precision.HIGHEST)


def upsample_to_map_stride(maps: jax.Array, input_size: tuple[int, int], output_stride: int,
                           map_stride: int) -> jax.Array:
    """Feature-grid maps (B, h, w, C) -> maps on every `map_stride`-th input pixel (aligned corners).

    `map_stride` must divide `output_stride`; equal strides return the grid unchanged, 1 gives every input pixel.
    """
    if map_stride < 1 or output_stride % map_stride:
        raise ValueError(f"map_stride {map_stride} must divide output_stride {output_stride}")
    if map_stride == output_stride:
        return maps
    size = tuple((n - 1) // map_stride + 1 for n in input_size)
    return resize_aligned_corners(maps, size)


__all__ = ["interpolation_matrix", "resize_aligned_corners", "upsample_to_map_stride"]
