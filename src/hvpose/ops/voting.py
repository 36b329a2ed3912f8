"""Hough voting: fuse keypoint heatmaps and short-range offsets into score maps, then decode keypoints.

For keypoint k, every crop pixel x_j votes with weight h_k(x_j) / (pi R^2) at its displaced position
x_j + F_k(x_j); the vote is split over the four pixels around that position by the bilinear kernel G, and parts
that land outside the crop are dropped (Papandreou et al. 2017, eq. 2):

    f_k(x) = sum_j 1 / (pi R^2) * G(x_j + F_k(x_j) - x) * h_k(x_j).

Coordinates follow `hvpose.targets`: pixel (row i, column j) is the point (x=j, y=i); offsets are (B, H, W, K, 2)
with `[..., 0]` the x and `[..., 1]` the y displacement in pixels.

The kernel is one XLA scatter-add. Each vote computes its flat target index once and adds a 4-vector (the four
bilinear weights) into a (B, H+1, W+1, K, 4) accumulator; the four corner planes are then summed with one-pixel
shifts. This does a quarter of the index arithmetic and bounds checks of four separate scalar scatters and keeps
the accumulator's innermost axis (K) in the same order as the source pixels, so consecutive votes touch nearby
memory. On TPU, where scatters are slow, a windowed dense formulation would be preferable; that is future work.

Naming: every public function here is one jitted function (shape checks run at trace time), callable on numpy or
jax arrays and inside a caller's jit alike; `hough_vote_numpy` is the numpy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike


def _check_shapes(heatmaps_shape: tuple[int, ...], offsets_shape: tuple[int, ...]) -> None:
    if len(heatmaps_shape) != 4:
        raise ValueError(f"heatmaps must be (B, H, W, K), got shape {heatmaps_shape}")
    if tuple(offsets_shape) != (*heatmaps_shape, 2):
        raise ValueError(f"offsets must be (B, H, W, K, 2) = {(*heatmaps_shape, 2)}, got shape {offsets_shape}")
    batch, height, width, num_keypoints = heatmaps_shape
    if batch * (height + 1) * (width + 1) * num_keypoints >= 2**31 - 1:
        raise ValueError(f"{heatmaps_shape} is too large for one call (int32 vote indices); vote in smaller batches")


@jax.jit
def hough_vote(heatmaps: ArrayLike, offsets: ArrayLike, radius: ArrayLike) -> jax.Array:
    """Hough-voting score maps f_k (B, H, W, K) from heatmap probabilities and offsets.

    Args:
      heatmaps: (B, H, W, K) probabilities h_k (sigmoid of the network's logits), numpy or jax.
      offsets: (B, H, W, K, 2) displacements F_k in pixels, `[..., 0]` = x (column), `[..., 1]` = y (row).
      radius: the disk radius R in pixels (normalises votes by 1/(pi R^2)); traced, so it does not recompile.

    Returns:
      float32 score maps (B, H, W, K). Jitted (and usable inside a caller's jit): compiles once per input shape.
    """
    _check_shapes(heatmaps.shape, offsets.shape)
    batch, height, width, num_keypoints = heatmaps.shape
    heatmaps = heatmaps.astype(jnp.float32)
    offsets = offsets.astype(jnp.float32)
    radius = jnp.asarray(radius, jnp.float32)
    ys = jnp.arange(height, dtype=jnp.float32)[:, None, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :, None]
    offset_x, offset_y = offsets[..., 0], offsets[..., 1]
    x0 = jnp.floor(xs + offset_x)
    y0 = jnp.floor(ys + offset_y)
    # (x - x0) is an exact integer, so adding the offset last keeps the fraction exact to float32 rounding of
    # its own size (x + offset - x0 would lose ~1e-5 to cancellation for x ~ 256).
    # Where float32 rounding put x + offset on the other side of an integer, that fraction falls a rounding error
    # outside [0, 1]; clipping keeps every weight non-negative at the same accuracy.
    fraction_x = jnp.clip((xs - x0) + offset_x, 0.0, 1.0)
    fraction_y = jnp.clip((ys - y0) + offset_y, 0.0, 1.0)
    weight = heatmaps / (jnp.pi * radius * radius)
    corner_weights = jnp.stack([
        weight * (1 - fraction_y) * (1 - fraction_x),  # to (y0, x0)
        weight * (1 - fraction_y) * fraction_x,        # to (y0, x0 + 1)
        weight * fraction_y * (1 - fraction_x),        # to (y0 + 1, x0)
        weight * fraction_y * fraction_x,              # to (y0 + 1, x0 + 1)
    ], axis=-1)
    # The accumulator has one extra row and column in front: a vote whose floor corner is at row -1 or column -1
    # still lands its lower/right corners inside. Votes outside the padded grid go to an out-of-range index and
    # are dropped by the scatter.
    padded_h, padded_w = height + 1, width + 1
    row = y0.astype(jnp.int32) + 1
    col = x0.astype(jnp.int32) + 1
    # Non-finite offsets cast to arbitrary integers; their votes are dropped like those outside the crop.
    inside = ((row >= 0) & (row < padded_h) & (col >= 0) & (col < padded_w)
              & jnp.isfinite(offset_x) & jnp.isfinite(offset_y))
    size = batch * padded_h * padded_w * num_keypoints
    index = (((jnp.arange(batch, dtype=jnp.int32)[:, None, None, None] * padded_h + row) * padded_w + col)
             * num_keypoints + jnp.arange(num_keypoints, dtype=jnp.int32))
    index = jnp.where(inside, index, size)
    accumulator = jnp.zeros((size, 4), jnp.float32).at[index.reshape(-1)].add(
        corner_weights.reshape(-1, 4), mode="drop")
    acc = accumulator.reshape(batch, padded_h, padded_w, num_keypoints, 4)
    # Output pixel (y, x) collects corner 0 of votes floored at (y, x), corner 1 of (y, x-1), corner 2 of (y-1, x)
    # and corner 3 of (y-1, x-1); padded index = pixel index + 1.
    return (acc[:, 1:, 1:, :, 0] + acc[:, 1:, :-1, :, 1] + acc[:, :-1, 1:, :, 2] + acc[:, :-1, :-1, :, 3])


def hough_vote_numpy(heatmaps: ArrayLike, offsets: ArrayLike, radius: float,
                     dtype: type[np.floating] = np.float64) -> np.ndarray:
    """The same formula in numpy with `np.bincount` per corner: the test reference and the benchmark baseline.

    `dtype` is the arithmetic precision of positions and weights (float64 for a reference, float32 for a fair
    speed comparison); bincount always accumulates in float64.
    """
    heatmaps = np.asarray(heatmaps, dtype)
    offsets = np.asarray(offsets, dtype)
    _check_shapes(heatmaps.shape, offsets.shape)
    batch, height, width, num_keypoints = heatmaps.shape
    vote_x = np.arange(width, dtype=dtype)[None, None, :, None] + offsets[..., 0]
    vote_y = np.arange(height, dtype=dtype)[None, :, None, None] + offsets[..., 1]
    x0, y0 = np.floor(vote_x), np.floor(vote_y)
    fraction_x, fraction_y = vote_x - x0, vote_y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    weight = heatmaps * dtype(1 / (np.pi * radius * radius))
    channel = np.arange(batch)[:, None, None, None] * num_keypoints + np.arange(num_keypoints)
    scores = np.zeros(batch * num_keypoints * height * width)
    for dy, dx, corner in ((0, 0, (1 - fraction_y) * (1 - fraction_x)), (0, 1, (1 - fraction_y) * fraction_x),
                           (1, 0, fraction_y * (1 - fraction_x)), (1, 1, fraction_y * fraction_x)):
        row, col = y0 + dy, x0 + dx
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        index = ((channel * height + row) * width + col)[inside]
        scores += np.bincount(index, weights=(weight * corner)[inside], minlength=scores.size)
    return scores.reshape(batch, num_keypoints, height, width).transpose(0, 2, 3, 1)


@jax.jit
def decode(score_maps: ArrayLike) -> jax.Array:
    """Keypoints (B, K, 3) as (x, y, value) at the argmax of each (B, H, W, K) map (first on ties)."""
    if len(score_maps.shape) != 4:
        raise ValueError(f"score maps must be (B, H, W, K), got shape {score_maps.shape}")
    batch, height, width, num_keypoints = score_maps.shape
    flat = score_maps.reshape(batch, height * width, num_keypoints)
    best = jnp.argmax(flat, axis=1)  # (B, K)
    score = jnp.take_along_axis(flat, best[:, None, :], axis=1)[:, 0, :]
    x = (best % width).astype(jnp.float32)
    y = (best // width).astype(jnp.float32)
    return jnp.stack([x, y, score.astype(jnp.float32)], axis=-1)


@jax.jit
def decode_hough(heatmaps: ArrayLike, offsets: ArrayLike, radius: ArrayLike) -> jax.Array:
    """The paper's decoding: each keypoint at the argmax of its Hough score map f_k; (B, K, 3) as (x, y, score).

    The score is the heatmap probability h_k at that pixel, a number in [0, 1] that says how sure the network is
    that the keypoint is within R of there. The vote peak itself only localises: its height also falls as the
    offsets spread, so it is not comparable between keypoints or people.
    """
    votes = hough_vote(heatmaps, offsets, radius)
    located = decode(votes)
    batch, height, width, num_keypoints = votes.shape
    index = located[..., 1].astype(jnp.int32) * width + located[..., 0].astype(jnp.int32)  # (B, K)
    flat = jnp.asarray(heatmaps, jnp.float32).reshape(batch, height * width, num_keypoints)
    probability = jnp.take_along_axis(flat, index[:, None, :], axis=1)[:, 0, :]
    return located.at[..., 2].set(probability)


@functools.partial(jax.jit, static_argnames="stride")
def decode_argmax_offset(heatmaps: ArrayLike, offsets: ArrayLike, stride: int = 1) -> jax.Array:
    """The no-voting baseline: (x, y) = heatmap argmax + its offset, score = the heatmap probability there. (B, K, 3).

    `stride`: pixels per map cell, for maps on a coarser grid than the crop (PoseNet decodes its stride-16
    feature grid directly: cell (i, j) is pixel (16 i, 16 j)); offsets are in pixels either way.
    """
    _check_shapes(heatmaps.shape, offsets.shape)
    batch, height, width, num_keypoints = heatmaps.shape
    flat = heatmaps.reshape(batch, height * width, num_keypoints)
    best = jnp.argmax(flat, axis=1)
    score = jnp.take_along_axis(flat, best[:, None, :], axis=1)[:, 0, :]
    offset = jnp.take_along_axis(offsets.reshape(batch, height * width, num_keypoints, 2),
                                 best[:, None, :, None], axis=1)[:, 0]
    x = (best % width).astype(jnp.float32) * stride + offset[..., 0]
    y = (best // width).astype(jnp.float32) * stride + offset[..., 1]
    return jnp.stack([x, y, score.astype(jnp.float32)], axis=-1)


__all__ = ["decode", "decode_argmax_offset", "decode_hough", "hough_vote", "hough_vote_numpy"]
