"""Anchor (or proposal) to ground-truth matching and balanced sampling for the detector (pure jnp, static shapes).

`match` labels every row of an IoU matrix (anchors x ground truth) positive, negative or ignored, with detectron2's
`Matcher` thresholds (positive when the best IoU >= positive_threshold, negative when < negative_threshold) and its
`allow_low_quality_matches` (each ground truth's best anchors, ties included, become positive). Ground truth is
padded to a fixed count M with a validity mask; padded columns are set to IoU -1 before anything, so they never
match. An image with no people has every row negative (label 0): background still teaches the classifier.

`balanced_sample` picks a fixed number of rows for the loss, at most a fraction of them positive, uniformly at
random within each class, without boolean indexing: a random permutation, cumulative sums under the quotas, and
`top_k` of the chosen mask (as TF Model Garden's `BalancedPositiveNegativeSampler`).

Everything is per image; callers batch with `vmap` (with one key per image).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1


@functools.partial(jax.jit, static_argnames="force_best")
def match(iou: jax.Array, gt_valid: jax.Array, positive_threshold: float, negative_threshold: float,
          force_best: bool = True) -> tuple[jax.Array, jax.Array]:
    """Matches the N rows (anchors, proposals) of `iou` to its M columns (ground truth).

    Args:
      iou: (N, M) IoU of every anchor with every ground-truth box.
      gt_valid: (M,) bool, False for padded ground-truth columns.
      positive_threshold: a row whose best IoU is >= this is positive (detectron2's semantics).
      negative_threshold: a row whose best IoU is < this is negative; in between it is ignored.
      force_best: (static) also make every valid ground truth's best rows positive (all rows whose IoU equals that
        column's maximum, ties included, as detectron2's `allow_low_quality_matches`), provided that maximum is > 0.

    Returns:
      `matched` (N,) int32, the column each row is matched to: the valid column of highest IoU (the first among
      equals), except that a row forced positive is matched to the ground truth it is a best row of (the one of
      highest IoU if it is a best row of several; so unlike detectron2, which keeps the argmax, every valid
      ground truth with IoU > 0 owns at least one positive row). 0 when no column is valid; only meaningful where
      `labels` is 1.
      `labels` (N,) int32: 1 positive, 0 negative, -1 ignored.
    """
    iou = jnp.asarray(iou, jnp.float32)
    count, num_gt = iou.shape
    if num_gt == 0:  # static: no ground-truth slots at all
        return jnp.zeros(count, jnp.int32), jnp.full(count, NEGATIVE, jnp.int32)
    gt_valid = jnp.asarray(gt_valid, bool)
    iou = jnp.where(gt_valid[None, :], iou, -1.0)
    best = jnp.max(iou, axis=1)
    matched = jnp.argmax(iou, axis=1).astype(jnp.int32)
    labels = jnp.where(best >= positive_threshold, POSITIVE, jnp.where(best < negative_threshold, NEGATIVE, IGNORED))
    if force_best:
        gt_best = jnp.max(iou, axis=0)  # (M,): -1 for padded columns
        is_best = (iou == gt_best[None, :]) & (gt_valid & (gt_best > 0))[None, :]  # (N, M)
        forced = jnp.any(is_best, axis=1)
        forced_gt = jnp.argmax(jnp.where(is_best, iou, -jnp.inf), axis=1).astype(jnp.int32)
        matched = jnp.where(forced, forced_gt, matched)
        labels = jnp.where(forced, POSITIVE, labels)
    return matched, labels.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("num_samples", "positive_fraction"))
def balanced_sample(labels: jax.Array, key: jax.Array, num_samples: int, positive_fraction: float
                    ) -> tuple[jax.Array, jax.Array]:
    """Up to `num_samples` distinct rows: positives first, then negatives; ignored rows (-1) are never chosen.

    At most floor(num_samples * positive_fraction) positives (label 1) are chosen uniformly at random; the rest of
    the quota is filled with negatives (label 0) chosen uniformly at random. Static shapes throughout.

    Args:
      labels: (N,) int, 1 positive, 0 negative, -1 ignored.
      key: a PRNG key; the same key gives the same sample.
      num_samples: the number of slots (static).
      positive_fraction: the largest fraction of positives (static).

    Returns:
      `indices` (num_samples,) int32 rows, the chosen positives first, then the chosen negatives, and `valid`
      (num_samples,) bool. When fewer than num_samples rows are chosen the remaining slots are not valid and
      have index 0. The indices of valid slots are distinct.
    """
    labels = jnp.asarray(labels)
    count = labels.shape[0]
    positive_quota = int(num_samples * positive_fraction)
    order = jax.random.permutation(key, count)  # row order[k] is visited k-th
    positive, negative = labels[order] == POSITIVE, labels[order] == NEGATIVE
    take_positive = positive & (jnp.cumsum(positive) <= positive_quota)
    negative_quota = num_samples - jnp.sum(take_positive)
    take_negative = negative & (jnp.cumsum(negative) <= negative_quota)
    rank = 2 * take_positive.astype(jnp.int32) + take_negative.astype(jnp.int32)  # 2 positive, 1 negative, 0 not
    if count < num_samples:  # static: pad with never-chosen slots so top_k has enough entries
        rank = jnp.pad(rank, (0, num_samples - count))
        order = jnp.pad(order, (0, num_samples - count))
    top, slots = jax.lax.top_k(rank, num_samples)  # ties keep the permuted (random) order
    valid = top > 0
    return jnp.where(valid, order[slots], 0).astype(jnp.int32), valid


@functools.partial(jax.jit, static_argnames=("num_samples", "positive_fraction"))
def sample_mask(labels: jax.Array, key: jax.Array, num_samples: int, positive_fraction: float) -> jax.Array:
    """(N,) bool: the rows `balanced_sample` chooses with the same arguments, as a mask."""
    labels = jnp.asarray(labels)
    indices, valid = balanced_sample(labels, key, num_samples, positive_fraction)
    count = labels.shape[0]
    # Invalid slots (index 0) are sent out of bounds and dropped, so they never mark row 0.
    return jnp.zeros(count, bool).at[jnp.where(valid, indices, count)].set(True, mode="drop")


__all__ = ["IGNORED", "NEGATIVE", "POSITIVE", "balanced_sample", "match", "sample_mask"]
