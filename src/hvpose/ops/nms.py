"""Non-maximum suppression: greedy box NMS with a static output size (jnp, for the detector), and Object Keypoint
Similarity (COCO's definition) with OKS-based NMS (numpy; per image, for people)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hvpose.ops.boxes import iou


@functools.partial(jax.jit, static_argnames="max_output")
def nms(boxes: jax.Array, scores: jax.Array, iou_threshold: float | jax.Array, max_output: int
        ) -> tuple[jax.Array, jax.Array]:
    """Greedy NMS: repeatedly keep the highest-scoring box left and drop every other box whose IoU with it exceeds
    `iou_threshold` (strictly, as torchvision). Static shapes: at most `max_output` boxes are kept.

    Args:
      boxes: (N, 4) as (x1, y1, x2, y2); scores: (N,); entries with a non-finite score (padding) are never kept.

    Returns:
      `indices` (max_output,) int32 into the input, in descending score order (ties: the lower index first), and
      `valid` (max_output,) bool; entries past the kept boxes are index 0 and not valid.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    count = boxes.shape[0]
    positions = jnp.arange(count)

    def keep_next(i: int, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        remaining, indices, valid = carry
        best = jnp.argmax(remaining)
        found = remaining[best] > -jnp.inf
        dropped = (iou(boxes[best][None], boxes)[0] > iou_threshold) | (positions == best)
        remaining = jnp.where(found & dropped, -jnp.inf, remaining)
        return remaining, indices.at[i].set(jnp.where(found, best, 0)), valid.at[i].set(found)

    indices, valid = jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool)
    if count == 0:
        return indices, valid
    remaining = jnp.where(jnp.isfinite(scores), scores, -jnp.inf)
    _, indices, valid = jax.lax.fori_loop(0, max_output, keep_next, (remaining, indices, valid))
    return indices, valid


def oks(reference: np.ndarray, others: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """OKS of `others` (N, K, 2+) against `reference` (K, 2+) at object scale `area` (pixels^2).

    COCO: mean over keypoints of exp(-d^2 / (2 s^2 k^2)) with s^2 = area and k = 2 * sigma. Predictions have
    no visibility, so every keypoint counts.
    """
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    d2 = ((np.asarray(others)[..., :2] - np.asarray(reference)[None, :, :2]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * variances * max(float(area), np.finfo(np.float64).eps))).mean(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
            threshold: float) -> np.ndarray:
    """Indices kept by greedy OKS-NMS: highest score first, dropping others whose OKS with it exceeds `threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        if rest.size:
            similarity = oks(keypoints[best], keypoints[rest], areas[best], sigmas)
            rest = rest[similarity <= threshold]
        order = rest
    return np.asarray(keep, np.int64)
