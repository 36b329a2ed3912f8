"""Hough voting: fuse keypoint heatmaps and short-range offsets into score maps, then decode keypoints.

For keypoint k, every crop pixel x_j votes with weight h_k(x_j) / (pi R^2) at its displaced position
x_j + F_k(x_j); the vote is split over the four pixels around that position by the bilinear kernel G, and parts
that land outside the crop are dropped (Papandreou et al. 2017, eq. 2):

    f_k(x) = sum_j 1 / (pi R^2) * G(x_j + F_k(x_j) - x) * h_k(x_j).

Coordinates follow `hvpose.targets`: pixel (row i, column j) is the point (x=j, y=i); offsets are (B, H, W, K, 2)
with `[..., 0]` the x and `[..., 1]` the y displacement in pixels.

Implementations (`hough_vote(..., method=...)`), all exact to float32 rounding; `benchmarks/voting.py` times them:
  * "scatter": one XLA scatter-add. Each vote computes its flat target index once and adds a 4-vector (the four
    bilinear weights) into a (B, H+1, W+1, K, 4) accumulator; the four corner planes are then summed with one-pixel
    shifts. This does a quarter of the index arithmetic and bounds checks of four scalar scatters.
  * "segment_sum": the same votes through `jax.ops.segment_sum` (XLA lowers it to a scatter too).
  * "native": a C++ kernel called as an XLA FFI target on CPU (`hvpose/ops/native/hough_vote_cpu.cc`): vectorised
    vote arithmetic, four adds per vote into a padded accumulator, crops as tasks on XLA's CPU thread pool.
    XLA:CPU's scatter is a generic single-threaded loop; this is several times faster (the benchmark says how much on
    your machine).
  * "auto" (default): "native" on CPU where it compiles, "scatter" on other backends (chosen per lowering
    platform, so one jitted function serves both; the accelerator choice is not yet measured against the others).
Every method is differentiable (the native one through the scatter's derivative). XLA cannot split the native call
over devices by itself: with maps batch-sharded over several CPU devices, vote inside a `jax.shard_map` (as
`hvpose.inference.network_fn` does), or XLA gathers every crop onto each device.

`hough_vote_sparse` is approximate: only the N most probable pixels of each map vote.

Naming: every public function here is one jitted function (shape checks run at trace time), callable on numpy or
jax arrays and inside a caller's jit alike; `hough_vote_numpy` is the numpy reference.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from hvpose.ops import native

METHODS = ("auto", "scatter", "segment_sum", "native")
NATIVE_TARGET = "hvpose_hough_vote_cpu"


def _check_shapes(heatmaps_shape: tuple[int, ...], offsets_shape: tuple[int, ...]) -> None:
    if len(heatmaps_shape) != 4:
        raise ValueError(f"heatmaps must be (B, H, W, K), got shape {heatmaps_shape}")
    if tuple(offsets_shape) != (*heatmaps_shape, 2):
        raise ValueError(f"offsets must be (B, H, W, K, 2) = {(*heatmaps_shape, 2)}, got shape {offsets_shape}")
    batch, height, width, num_keypoints = heatmaps_shape
    # The scatter indexes the whole padded batch, the native kernel one crop padded on every side.
    if max(batch * (height + 1) * (width + 1), (height + 2) * (width + 2)) * num_keypoints >= 2**31 - 1:
        raise ValueError(f"{heatmaps_shape} is too large for one call (int32 vote indices); vote in smaller batches")


@functools.partial(jax.jit, static_argnames="method")
def hough_vote(heatmaps: ArrayLike, offsets: ArrayLike, radius: ArrayLike, method: str = "auto") -> jax.Array:
    """Hough-voting score maps f_k (B, H, W, K) from heatmap probabilities and offsets.

    Args:
      heatmaps: (B, H, W, K) probabilities h_k (sigmoid of the network's logits), numpy or jax.
      offsets: (B, H, W, K, 2) displacements F_k in pixels, `[..., 0]` = x (column), `[..., 1]` = y (row).
      radius: the disk radius R in pixels (normalises votes by 1/(pi R^2)); traced, so it does not recompile.
      method: "auto", "scatter", "segment_sum" or "native" (see the module docstring); "native" raises where the
        kernel is unavailable (no C++ compiler, `HVPOSE_NATIVE=0`) or off the CPU.

    Returns:
      float32 score maps (B, H, W, K). Jitted (and usable inside a caller's jit): compiles once per input shape
      and method.
    """
    _check_shapes(heatmaps.shape, offsets.shape)
    if method not in METHODS:
        raise ValueError(f"voting method {method!r} is not one of {list(METHODS)}")
    heatmaps = jnp.asarray(heatmaps, jnp.float32)
    offsets = jnp.asarray(offsets, jnp.float32)
    radius = jnp.asarray(radius, jnp.float32)
    if radius.ndim:
        raise ValueError(f"radius must be a scalar (vmap over calls for one radius per crop), got shape "
                         f"{radius.shape}")
    if method == "scatter":
        return _hough_vote_scatter(heatmaps, offsets, radius)
    if method == "segment_sum":
        return _hough_vote_segment_sum(heatmaps, offsets, radius)
    available = native.ffi_target(NATIVE_TARGET) is not None
    if method == "native":
        if not available:
            raise RuntimeError("the native voting kernel is unavailable here (no C++ compiler, or HVPOSE_NATIVE=0; "
                               "see the log); use method='scatter'")
        return _hough_vote_native(heatmaps, offsets, radius)
    if not available:
        return _hough_vote_scatter(heatmaps, offsets, radius)
    return jax.lax.platform_dependent(heatmaps, offsets, radius, cpu=_hough_vote_native,
                                      default=_hough_vote_scatter)


def _bilinear_votes(weight: jax.Array, xs: jax.Array, ys: jax.Array, offsets: jax.Array, height: int, width: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Votes of weight `weight` from source pixels (xs, ys) displaced by `offsets` (..., 2), all broadcast together:
    their four bilinear corner weights (..., 4), the row and column of the top-left corner in the grid padded by
    one in front ((H+1, W+1), int32), and whether any corner lands on the (H, W) map."""
    offset_x, offset_y = offsets[..., 0], offsets[..., 1]
    x0 = jnp.floor(xs + offset_x)
    y0 = jnp.floor(ys + offset_y)
    # (x - x0) is an exact integer, so adding the offset last keeps the fraction exact to float32 rounding of
    # its own size (x + offset - x0 would lose ~1e-5 to cancellation for x ~ 256).
    # Where float32 rounding put x + offset on the other side of an integer, that fraction falls a rounding error
    # outside [0, 1]; clipping keeps every weight non-negative at the same accuracy.
    fraction_x = jnp.clip((xs - x0) + offset_x, 0.0, 1.0)
    fraction_y = jnp.clip((ys - y0) + offset_y, 0.0, 1.0)
    corner_weights = jnp.stack([
        weight * (1 - fraction_y) * (1 - fraction_x),  # to (y0, x0)
        weight * (1 - fraction_y) * fraction_x,        # to (y0, x0 + 1)
        weight * fraction_y * (1 - fraction_x),        # to (y0 + 1, x0)
        weight * fraction_y * fraction_x,              # to (y0 + 1, x0 + 1)
    ], axis=-1)
    # The padded grid has one extra row and column in front: a vote whose floor corner is at row -1 or column -1
    # still lands its lower/right corners inside.
    row = y0.astype(jnp.int32) + 1
    col = x0.astype(jnp.int32) + 1
    # Non-finite offsets cast to arbitrary integers; their votes are dropped like those outside the crop.
    inside = ((row >= 0) & (row <= height) & (col >= 0) & (col <= width)
              & jnp.isfinite(offset_x) & jnp.isfinite(offset_y))
    return corner_weights, row, col, inside


def _corner_votes(heatmaps: jax.Array, offsets: jax.Array, radius: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """Each vote's four bilinear weights (N, 4) and the flat index (N,) of its top-left corner in the padded
    (B, H+1, W+1, K) grid; votes that miss it carry index `size` (dropped by the scatter)."""
    batch, height, width, num_keypoints = heatmaps.shape
    ys = jnp.arange(height, dtype=jnp.float32)[:, None, None]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :, None]
    weight = heatmaps / (jnp.pi * radius * radius)
    corner_weights, row, col, inside = _bilinear_votes(weight, xs, ys, offsets, height, width)
    padded_h, padded_w = height + 1, width + 1
    size = batch * padded_h * padded_w * num_keypoints
    index = (((jnp.arange(batch, dtype=jnp.int32)[:, None, None, None] * padded_h + row) * padded_w + col)
             * num_keypoints + jnp.arange(num_keypoints, dtype=jnp.int32))
    return corner_weights.reshape(-1, 4), jnp.where(inside, index, size).reshape(-1), size


def _sum_corners(accumulator: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    batch, height, width, num_keypoints = shape
    acc = accumulator.reshape(batch, height + 1, width + 1, num_keypoints, 4)
    # Output pixel (y, x) collects corner 0 of votes floored at (y, x), corner 1 of (y, x-1), corner 2 of (y-1, x)
    # and corner 3 of (y-1, x-1); padded index = pixel index + 1.
    return (acc[:, 1:, 1:, :, 0] + acc[:, 1:, :-1, :, 1] + acc[:, :-1, 1:, :, 2] + acc[:, :-1, :-1, :, 3])


def _hough_vote_scatter(heatmaps: jax.Array, offsets: jax.Array, radius: jax.Array) -> jax.Array:
    weights, index, size = _corner_votes(heatmaps, offsets, radius)
    accumulator = jnp.zeros((size, 4), jnp.float32).at[index].add(weights, mode="drop")
    return _sum_corners(accumulator, heatmaps.shape)


def _hough_vote_segment_sum(heatmaps: jax.Array, offsets: jax.Array, radius: jax.Array) -> jax.Array:
    weights, index, size = _corner_votes(heatmaps, offsets, radius)
    # Index `size` is outside [0, size) and dropped, as in the scatter.
    return _sum_corners(jax.ops.segment_sum(weights, index, num_segments=size), heatmaps.shape)


@jax.custom_jvp
def _hough_vote_native(heatmaps: jax.Array, offsets: jax.Array, radius: jax.Array) -> jax.Array:
    # R per crop: every operand then has the batch in front, and vmap stacks calls along it.
    per_crop = jnp.broadcast_to(radius, heatmaps.shape[:1])
    call = jax.ffi.ffi_call(NATIVE_TARGET, jax.ShapeDtypeStruct(heatmaps.shape, jnp.float32),
                            vmap_method="broadcast_all")
    return call(heatmaps, offsets, per_crop, threads=np.int64(native.cpu_threads()))


@_hough_vote_native.defjvp
def _hough_vote_native_jvp(primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
                           ) -> tuple[jax.Array, jax.Array]:
    # Same function, so the same derivative: the scatter form's, which JAX differentiates.
    return _hough_vote_native(*primals), jax.jvp(_hough_vote_scatter, primals, tangents)[1]


@functools.partial(jax.jit, static_argnames="top_n")
def hough_vote_sparse(heatmaps: ArrayLike, offsets: ArrayLike, radius: ArrayLike, top_n: int) -> jax.Array:
    """Approximate voting: only the `top_n` pixels of highest heatmap probability per crop and keypoint vote.

    Votes far from a keypoint carry tiny weights h, so their maps' peaks rarely move; `benchmarks/voting.py`
    measures how often and how far on real PoseNet predictions. A scatter of B*K*top_n votes instead of B*H*W*K
    (top_n = 2048 is 44x fewer at 353x257), after a top-k over each map. Same (B, H, W, K) output as `hough_vote`.
    """
    _check_shapes(heatmaps.shape, offsets.shape)
    batch, height, width, num_keypoints = heatmaps.shape
    if not 1 <= top_n <= height * width:
        raise ValueError(f"top_n {top_n} must be in [1, {height * width}] (pixels per map)")
    maps = jnp.asarray(heatmaps, jnp.float32).reshape(batch, height * width, num_keypoints).transpose(0, 2, 1)
    probability, pixel = jax.lax.top_k(maps, top_n)  # (B, K, N)
    offset = jnp.asarray(offsets, jnp.float32).reshape(batch, height * width, num_keypoints, 2).transpose(0, 2, 1, 3)
    offset = jnp.take_along_axis(offset, pixel[..., None], axis=2)  # (B, K, N, 2)
    xs, ys = (pixel % width).astype(jnp.float32), (pixel // width).astype(jnp.float32)
    radius = jnp.asarray(radius, jnp.float32)
    weight = probability / (jnp.pi * radius * radius)
    corner_weights, row, col, inside = _bilinear_votes(weight, xs, ys, offset, height, width)
    # Accumulated per (crop, keypoint) map, keypoint-major: (B, K, H+1, W+1, 4).
    padded_h, padded_w = height + 1, width + 1
    size = batch * num_keypoints * padded_h * padded_w
    maps_index = jnp.arange(batch * num_keypoints, dtype=jnp.int32).reshape(batch, num_keypoints, 1)
    index = jnp.where(inside, (maps_index * padded_h + row) * padded_w + col, size)
    accumulator = jnp.zeros((size, 4), jnp.float32).at[index.reshape(-1)].add(corner_weights.reshape(-1, 4),
                                                                               mode="drop")
    votes = _sum_corners(accumulator, (batch * num_keypoints, height, width, 1))
    return votes.reshape(batch, num_keypoints, height, width).transpose(0, 2, 3, 1)


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
    finite = np.isfinite(vote_x) & np.isfinite(vote_y)  # votes with non-finite offsets are dropped
    vote_x, vote_y = np.where(finite, vote_x, 0), np.where(finite, vote_y, 0)
    x0, y0 = np.floor(vote_x), np.floor(vote_y)
    fraction_x, fraction_y = vote_x - x0, vote_y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    weight = heatmaps * dtype(1 / (np.pi * radius * radius))
    channel = np.arange(batch)[:, None, None, None] * num_keypoints + np.arange(num_keypoints)
    scores = np.zeros(batch * num_keypoints * height * width)
    for dy, dx, corner in ((0, 0, (1 - fraction_y) * (1 - fraction_x)), (0, 1, (1 - fraction_y) * fraction_x),
                           (1, 0, fraction_y * (1 - fraction_x)), (1, 1, fraction_y * fraction_x)):
        row, col = y0 + dy, x0 + dx
        inside = finite & (row >= 0) & (row < height) & (col >= 0) & (col < width)
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


@functools.partial(jax.jit, static_argnames="method")
def decode_hough(heatmaps: ArrayLike, offsets: ArrayLike, radius: ArrayLike, method: str = "auto") -> jax.Array:
    """The paper's decoding: each keypoint at the argmax of its Hough score map f_k; (B, K, 3) as (x, y, score).

    The score is the heatmap probability h_k at that pixel, a number in [0, 1] that says how sure the network is
    that the keypoint is within R of there. The vote peak itself only localises: its height also falls as the
    offsets spread, so it is not comparable between keypoints or people.
    """
    votes = hough_vote(heatmaps, offsets, radius, method)
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


__all__ = ["METHODS", "decode", "decode_argmax_offset", "decode_hough", "hough_vote", "hough_vote_numpy",
           "hough_vote_sparse"]
