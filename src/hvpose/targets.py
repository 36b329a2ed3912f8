"""Heatmap and offset targets and the G-RMI keypoint loss (pure functions, static shapes, jit-friendly).

Coordinates: crop pixel (row i, column j) is the point (x=j, y=i); keypoints are (x, y, visibility) in the same
frame, so a keypoint at x=12.0 sits on the centre of column 12. This matches the aligned-corners upsampling of
`hvpose.models.pose_net` and the voting of `hvpose.ops.voting`.

Choices the paper (Papandreou et al. 2017, Sec. 3.2) leaves open, made here and exposed as arguments:
  * Disk membership is `||x_i - l_k|| <= R` (closed disk), R in crop pixels (25 at 353x257).
  * Keypoints with visibility 0 give no positives. `unlabelled="negative"` trains their heatmap as all-negative
    (the paper's reading: the annotators left them out because they are not in the image); `"ignore"` leaves
    them out of L_h entirely. Which trains better is measured (README); the config chooses.
  * L_h is the sigmoid cross-entropy averaged over every pixel of every counted keypoint heatmap of the batch
    (a mean, so it does not grow with crop size or batch).
  * Offsets are predicted in crop pixels (what voting consumes and what PoseNet outputs). L_o measures the
    Euclidean error in units of `offset_scale` pixels (default R), so its size does not depend on the crop
    resolution, and applies a Huber function with threshold `huber_delta` pixels, divided by the threshold (the
    "smooth L1" form: slope 1 per `offset_scale` for large errors, quadratic below `huber_delta`). It is summed over
    disk pixels of all keypoints and crops and divided by the number of those pixels (at least 1).
  * L = heatmap_weight * L_h + offset_weight * L_o with the paper's 4 and 1. An auxiliary head (block3), when
    present, adds `aux_weight` times its own L.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNLABELLED_CHOICES = ("negative", "ignore")


def pixel_grid(height: int, width: int, stride: int = 1) -> tuple[jax.Array, jax.Array]:
    """Row (y) and column (x) coordinates of every `stride`-th crop pixel ((H, 1) and (1, W), for broadcasting)."""
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] * stride
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] * stride
    return ys, xs


def _disk_and_displacement(keypoints: jax.Array, size: tuple[int, int], radius: float, stride: int = 1
                           ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Disk mask (B, H, W, K), displacement l_k - x_i along x and along y (B, H, W, K each) and the labelled mask
    (B, 1, 1, K) on a stride-`stride` grid. x and y stay apart: at crop resolution, arrays with a trailing (x, y)
    axis of 2 made the loss over twice as slow on CPUs (`benchmarks/train_step.py`, `head_and_loss`)."""
    ys, xs = pixel_grid(*size, stride)
    keypoints = keypoints.astype(jnp.float32)
    dx = keypoints[:, None, None, :, 0] - xs[None, :, :, None]
    dy = keypoints[:, None, None, :, 1] - ys[None, :, :, None]
    labelled = keypoints[:, None, None, :, 2] > 0
    disk = labelled & (dx * dx + dy * dy <= radius * radius)
    return disk, dx, dy, labelled


def make_targets(keypoints: jax.Array, size: tuple[int, int], radius: float) -> dict[str, jax.Array]:
    """Disk heatmap targets and offset targets for one keypoint set per crop.

    Args:
      keypoints: (B, K, 3) float (x, y, visibility) in crop pixels; visibility 0 means unlabelled (or padding).
      size: static crop size (H, W).
      radius: disk radius R in crop pixels.

    Returns:
      `heatmaps` (B, H, W, K) float32 in {0, 1}; `offsets` (B, H, W, K, 2) float32 = l_k - x_i as (x, y) inside
      the disk and 0 outside; `offset_mask` (B, H, W, K) bool, the disk.
    """
    disk, dx, dy, _ = _disk_and_displacement(keypoints, size, radius)
    displacement = jnp.stack(jnp.broadcast_arrays(dx, dy), axis=-1)
    return {
        "heatmaps": disk.astype(jnp.float32),
        "offsets": jnp.where(disk[..., None], displacement, 0.0),
        "offset_mask": disk,
    }


def huber(error_norm_squared: jax.Array, delta: float) -> jax.Array:
    """Huber function of a Euclidean error given its square, divided by `delta` (smooth-L1 form).

    0.5 * e^2 / delta for e <= delta, e - 0.5 * delta beyond; safe to differentiate at e = 0.
    """
    norm = jnp.sqrt(jnp.maximum(error_norm_squared, 1e-12))
    return jnp.where(norm <= delta, 0.5 * error_norm_squared / delta, norm - 0.5 * delta)


def check_loss_settings(radius: float, heatmap_weight: float = 4.0, offset_weight: float = 1.0,
                        huber_delta: float = 1.0, offset_scale: float | None = None, map_stride: int = 1,
                        unlabelled: str = "negative", aux_weight: float = 1.0) -> None:
    """Raises ValueError for settings `total_loss` cannot use (before anything is traced); takes its keywords."""
    if radius <= 0 or huber_delta <= 0 or (offset_scale is not None and offset_scale <= 0):
        raise ValueError("radius, huber_delta and offset_scale must be positive")
    if min(heatmap_weight, offset_weight, aux_weight) < 0:
        raise ValueError("loss weights must be >= 0")
    if map_stride < 1:
        raise ValueError(f"map_stride must be >= 1, got {map_stride}")
    if unlabelled not in UNLABELLED_CHOICES:
        raise ValueError(f"unlabelled must be one of {UNLABELLED_CHOICES}, got {unlabelled!r}")


def keypoint_loss(heatmap_logits: jax.Array, offsets: jax.Array, keypoints: jax.Array, radius: float,
                  heatmap_weight: float = 4.0, offset_weight: float = 1.0, huber_delta: float = 1.0,
                  offset_scale: float | None = None, map_stride: int = 1,
                  unlabelled: str = "negative") -> dict[str, jax.Array]:
    """The G-RMI loss L = heatmap_weight * L_h + offset_weight * L_o for one head (see the module docstring).

    Args:
      heatmap_logits: (B, H, W, K) logits at crop resolution.
      offsets: (B, H, W, K, 2) predicted displacements in crop pixels, (x, y).
      keypoints: (B, K, 3) ground truth (x, y, visibility) in crop pixels.
      radius: disk radius R in crop pixels.
      heatmap_weight, offset_weight: lambda_h and lambda_o.
      huber_delta: Huber threshold in crop pixels.
      offset_scale: pixels per unit of offset error in L_o (default: `radius`).
      map_stride: the maps hold every `map_stride`-th crop pixel (the network's `map_stride`); 1 = all pixels,
        as in the paper. Larger strides estimate the same averages from fewer pixels, for speed.
      unlabelled: "negative" (heatmaps of keypoints with visibility 0 are trained towards 0) or "ignore" (they
        are left out of L_h).

    Returns:
      float32 scalars `loss`, `heatmap_loss` (L_h) and `offset_loss` (L_o).
    """
    if huber_delta <= 0:
        raise ValueError(f"huber_delta must be positive, got {huber_delta}")
    if unlabelled not in UNLABELLED_CHOICES:
        raise ValueError(f"unlabelled must be one of {UNLABELLED_CHOICES}, got {unlabelled!r}")
    size = heatmap_logits.shape[1:3]
    scale = float(radius if offset_scale is None else offset_scale)
    disk, dx, dy, labelled = _disk_and_displacement(keypoints, size, radius, map_stride)
    logits = heatmap_logits.astype(jnp.float32)
    # Sigmoid cross-entropy with 0/1 targets, softplus(z) - t * z: two transcendentals per pixel, not optax's four.
    cross_entropy = jax.nn.softplus(logits) - jnp.where(disk, logits, 0.0)
    if unlabelled == "negative":
        heatmap_loss = jnp.mean(cross_entropy)
    else:  # mean over the heatmaps of labelled keypoints only (every pixel of each)
        counted = jnp.sum(labelled) * size[0] * size[1]
        heatmap_loss = jnp.sum(jnp.where(labelled, cross_entropy, 0.0)) / jnp.maximum(counted, 1)
    offsets = offsets.astype(jnp.float32)
    error_x, error_y = (offsets[..., 0] - dx) / scale, (offsets[..., 1] - dy) / scale
    per_pixel = huber(error_x * error_x + error_y * error_y, huber_delta / scale)
    offset_loss = jnp.sum(jnp.where(disk, per_pixel, 0.0)) / jnp.maximum(jnp.sum(disk), 1)
    return {
        "loss": heatmap_weight * heatmap_loss + offset_weight * offset_loss,
        "heatmap_loss": heatmap_loss,
        "offset_loss": offset_loss,
    }


def total_loss(outputs: dict[str, jax.Array], keypoints: jax.Array, radius: float, aux_weight: float = 1.0,
               **loss_kwargs: float) -> dict[str, jax.Array]:
    """Loss of `PoseNet` outputs: the main head, plus `aux_weight` times the auxiliary head's loss if present.

    Returns `loss` (the total), the main head's `heatmap_loss` and `offset_loss`, and `aux_loss` when present.
    """
    terms = keypoint_loss(outputs["heatmap_logits"], outputs["offsets"], keypoints, radius, **loss_kwargs)
    if "aux_heatmap_logits" in outputs:
        aux = keypoint_loss(outputs["aux_heatmap_logits"], outputs["aux_offsets"], keypoints, radius, **loss_kwargs)
        terms = {**terms, "loss": terms["loss"] + aux_weight * aux["loss"], "aux_loss": aux["loss"]}
    return terms
