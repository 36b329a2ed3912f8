"""Non-maximum suppression: greedy and soft box NMS with a static output size and box voting (jnp, for the
detector), and Object Keypoint Similarity (COCO's definition) with OKS-based NMS (numpy; per image, for people)."""

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


@functools.partial(jax.jit, static_argnames="max_output")
def soft_nms(boxes: jax.Array, scores: jax.Array, sigma: float | jax.Array, max_output: int,
             min_score: float | jax.Array = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gaussian soft-NMS (Bodla et al. 2017): repeatedly keep the box with the highest current score and multiply
    every other box's score by exp(-IoU^2 / sigma) with it, instead of dropping the overlapping ones. People who
    overlap a better-scoring person keep a lower score rather than vanishing, which is what crowded scenes need.

    Args:
      boxes: (N, 4) as (x1, y1, x2, y2); scores: (N,); entries with a non-finite score (padding) are never kept.
      sigma: the Gaussian's width (Bodla et al.: 0.5); smaller suppresses harder.
      max_output: boxes kept at most (static).
      min_score: boxes are kept only while their decayed score stays above it.

    Returns:
      `indices` (max_output,) int32 into the input, `scores` (max_output,) the decayed scores they are kept with
      (descending: decay only lowers the scores left), and `valid` (max_output,) bool; entries past the kept boxes
      are index 0, score 0 and not valid.
    """
    boxes = jnp.asarray(boxes, jnp.float32)
    scores = jnp.asarray(scores, jnp.float32)
    count = boxes.shape[0]
    positions = jnp.arange(count)

    def keep_next(i: int, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        remaining, indices, kept_scores, valid = carry
        best = jnp.argmax(remaining)
        found = remaining[best] > min_score
        decay = jnp.exp(-jnp.square(iou(boxes[best][None], boxes)[0]) / sigma)
        updated = jnp.where(positions == best, -jnp.inf, remaining * decay)
        return (jnp.where(found, updated, remaining), indices.at[i].set(jnp.where(found, best, 0)),
                kept_scores.at[i].set(jnp.where(found, remaining[best], 0.0)), valid.at[i].set(found))

    indices, kept_scores, valid = jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output), jnp.zeros(max_output, bool)
    if count == 0:
        return indices, kept_scores, valid
    remaining = jnp.where(jnp.isfinite(scores), scores, -jnp.inf)
    _, indices, kept_scores, valid = jax.lax.fori_loop(0, max_output, keep_next,
                                                       (remaining, indices, kept_scores, valid))
    return indices, kept_scores, valid


def vote(kept: jax.Array, candidates: jax.Array, weights: jax.Array, iou_threshold: float | jax.Array
         ) -> jax.Array:
    """Box voting (Gidaris and Komodakis 2015): each kept box (K, 4) becomes the `weights`-weighted mean of the
    `candidates` (N, 4) that overlap it with IoU >= `iou_threshold`, itself among them when it is a candidate.
    A kept box that no candidate with a positive weight overlaps stays as it is. Weights are >= 0 (0: padding)."""
    overlapping = iou(kept, candidates) >= iou_threshold
    votes = jnp.where(overlapping, jnp.asarray(weights, jnp.float32)[None], 0.0)
    total = votes.sum(-1, keepdims=True)
    # HIGHEST: TPUs would otherwise multiply in bfloat16 and move the boxes by a pixel or more.
    mean = jnp.matmul(votes, jnp.asarray(candidates, jnp.float32), precision=jax.lax.Precision.HIGHEST)
    mean = mean / jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, mean, kept)


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
