"""The detector's training targets and losses (pure functions of the network outputs and the padded boxes).

Region proposal network, per image: anchors matched to the ground truth by IoU (>= 0.7 person, < 0.3 background,
and each person's best anchors forced positive), 256 anchors sampled with at most half people; sigmoid
cross-entropy over the sampled anchors / #sampled, smooth L1 (beta 1/9) of the deltas on the sampled people /
max(#people, 1). Second stage (RoIs sampled inside the network, `hvpose.models.detector.sample_rois`): softmax
cross-entropy over the sampled RoIs / #sampled, smooth L1 (beta 1) of the deltas (weights 10, 10, 5, 5) on the
people among them / max(#people, 1).

An image without people has no valid ground-truth column: every anchor and every RoI is background, the box terms
are sums over nothing divided by 1, and nothing is NaN. Padding is masked with `where`, never by multiplying.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from hvpose.models.detector import HEAD_BOX_WEIGHTS, RPN_BOX_WEIGHTS
from hvpose.ops import boxes as box_ops
from hvpose.ops.matching import match, sample_mask


def smooth_l1(x: jax.Array, beta: float) -> jax.Array:
    """Elementwise smooth L1 (Huber divided by its threshold): 0.5 x^2 / beta below beta, |x| - beta / 2 above."""
    absolute = jnp.abs(x)
    return jnp.where(absolute < beta, 0.5 * x * x / beta, absolute - 0.5 * beta)


def rpn_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array, key: jax.Array, *,
                positive_iou: float = 0.7, negative_iou: float = 0.3, num_samples: int = 256,
                positive_fraction: float = 0.5) -> dict[str, jax.Array]:
    """One image's anchor targets: `labels` (N,) 1/0/-1, `sampled` (N,) mask, `deltas` (N, 4) to the matched box."""
    matched, labels = match(box_ops.iou(anchors, gt_boxes), gt_valid, positive_iou, negative_iou, force_best=True)
    sampled = sample_mask(labels, key, num_samples, positive_fraction)
    deltas = box_ops.encode(gt_boxes[matched], anchors, RPN_BOX_WEIGHTS)
    return {"labels": labels, "sampled": sampled, "deltas": deltas}


def _image_losses(rpn_logits: jax.Array, rpn_deltas: jax.Array, targets: dict[str, jax.Array],
                  class_logits: jax.Array, box_deltas: jax.Array, rois: jax.Array, roi_labels: jax.Array,
                  roi_targets: jax.Array, rpn_beta: float, head_beta: float) -> dict[str, jax.Array]:
    sampled, positive = targets["sampled"], targets["sampled"] & (targets["labels"] == 1)
    objectness = optax.sigmoid_binary_cross_entropy(rpn_logits, (targets["labels"] == 1).astype(jnp.float32))
    rpn_class = jnp.where(sampled, objectness, 0.0).sum() / jnp.maximum(sampled.sum(), 1)
    rpn_box = jnp.where(positive[:, None], smooth_l1(rpn_deltas - targets["deltas"], rpn_beta), 0.0).sum() \
        / jnp.maximum(positive.sum(), 1)

    roi_sampled, roi_positive = roi_labels >= 0, roi_labels == 1
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(class_logits, jnp.maximum(roi_labels, 0))
    head_class = jnp.where(roi_sampled, cross_entropy, 0.0).sum() / jnp.maximum(roi_sampled.sum(), 1)
    head_targets = box_ops.encode(roi_targets, rois, HEAD_BOX_WEIGHTS)
    head_box = jnp.where(roi_positive[:, None], smooth_l1(box_deltas - head_targets, head_beta), 0.0).sum() \
        / jnp.maximum(roi_positive.sum(), 1)
    return {"rpn_class_loss": rpn_class, "rpn_box_loss": rpn_box, "head_class_loss": head_class,
            "head_box_loss": head_box, "rpn_positives": positive.sum(), "roi_positives": roi_positive.sum()}


def detector_loss(outputs: dict[str, jax.Array], gt_boxes: jax.Array, gt_valid: jax.Array, key: jax.Array, *,
                  rpn_positive_iou: float = 0.7, rpn_negative_iou: float = 0.3, rpn_num_samples: int = 256,
                  rpn_positive_fraction: float = 0.5, rpn_beta: float = 1.0 / 9.0, head_beta: float = 1.0,
                  rpn_class_weight: float = 1.0, rpn_box_weight: float = 1.0, head_class_weight: float = 1.0,
                  head_box_weight: float = 1.0) -> dict[str, jax.Array]:
    """Loss terms averaged over the batch and their weighted sum `loss`; `outputs` from `FasterRCNN(train=True)`.

    The keywords are `config.loss` of a detector config.
    """
    targets = jax.vmap(lambda boxes, valid, k: rpn_targets(
        outputs["anchors"], boxes.astype(jnp.float32), valid, k, positive_iou=rpn_positive_iou,
        negative_iou=rpn_negative_iou, num_samples=rpn_num_samples, positive_fraction=rpn_positive_fraction))(
        gt_boxes, gt_valid, jax.random.split(key, gt_boxes.shape[0]))
    terms = jax.vmap(lambda *args: _image_losses(*args, rpn_beta, head_beta))(
        outputs["rpn_logits"], outputs["rpn_deltas"], targets, outputs["class_logits"], outputs["box_deltas"],
        outputs["rois"], outputs["roi_labels"], outputs["roi_targets"])
    terms = {name: value.mean() if name.endswith("loss") else value.sum() for name, value in terms.items()}
    terms["loss"] = (rpn_class_weight * terms["rpn_class_loss"] + rpn_box_weight * terms["rpn_box_loss"]
                     + head_class_weight * terms["head_class_loss"] + head_box_weight * terms["head_box_loss"])
    return terms


def check_loss_settings(**settings: Any) -> None:
    """Fails early, naming the field, on settings `detector_loss` would reject or misuse (`config.loss`)."""
    inspect.signature(detector_loss).bind(None, None, None, None, **settings)  # TypeError for an unknown field
    if not 0 <= settings.get("rpn_negative_iou", 0.3) <= settings.get("rpn_positive_iou", 0.7) <= 1:
        raise ValueError("need 0 <= rpn_negative_iou <= rpn_positive_iou <= 1")


__all__ = ["check_loss_settings", "detector_loss", "rpn_targets", "smooth_l1"]
