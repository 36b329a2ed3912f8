"""Stage 1: a Faster R-CNN person detector (Ren et al. 2015) on the atrous ResNet, static shapes throughout.

    images (B, H, W, 3) uint8 on one canvas, each with its true size
      -> ResNet features (block3 with the "block4" head, else block4), stride `feature_stride`
      -> region proposal network: per anchor an objectness logit and box deltas (coding weights 1, 1, 1, 1)
      -> proposals per image: top-k logits, decode, clip to the true size, NMS, a fixed number kept (+ valid mask)
      -> (training) RoIs = proposals + ground-truth boxes, matched at IoU 0.5 and sampled to a fixed count
      -> RoIAlign (aligned) -> head: ResNet conv5_x on 14x14 RoIs max-pooled to 7x7 (the TF Object Detection API's
         Faster R-CNN ResNet-101) or two fully connected layers -> person/background logits and class-agnostic
         box deltas (weights 10, 10, 5, 5)
      -> `detect`: decode, clip, score threshold, NMS (greedy or soft), optional box voting, at most
         `max_detections` boxes per image

Everything per image is a pure function vmapped over the batch. Proposals and RoIs carry `stop_gradient` (the
approximate joint training of Faster R-CNN). Feature cell (i, j) sits on input pixel (stride*i, stride*j) (the
ResNet's alignment, `hvpose.models.resnet`), so anchors are centred at stride*k + 0.5 in box coordinates and
RoIAlign's `aligned=True` grid is shifted by (stride - 1) / 2 to match.
"""

from __future__ import annotations

import functools
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hvpose.models.keypoint_net import DTYPES
from hvpose.models.preprocess import check_preprocess, preprocess
from hvpose.models.resnet import ResNet, canonical_multipliers, stage_strides_and_dilations, stage_units, stage_width
from hvpose.ops import boxes as box_ops
from hvpose.ops.anchors import grid_anchors
from hvpose.ops.matching import balanced_sample, match
from hvpose.ops.nms import nms, soft_nms, vote
from hvpose.ops.pooling import max_pool
from hvpose.ops.roi_align import METHODS as ROI_ALIGN_METHODS
from hvpose.ops.roi_align import roi_align

HEADS = ("block4", "fc")
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def propose(logits: jax.Array, deltas: jax.Array, image_size: jax.Array, anchors: jax.Array, *, pre_nms_top_k: int,
            post_nms_top_k: int, nms_threshold: float, min_size: float = 1.0
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One image's proposals: (post_nms_top_k, 4) boxes, their objectness probabilities and a valid mask.

    The `pre_nms_top_k` highest logits are decoded and clipped to the true `image_size` (height, width); boxes
    narrower or lower than `min_size` pixels (such as anchors over the canvas padding, clipped to nothing) are
    dropped; greedy NMS keeps at most `post_nms_top_k`. Padding entries have probability 0 and valid False.
    """
    k = min(pre_nms_top_k, logits.shape[0])
    top_logits, top = jax.lax.top_k(logits, k)
    proposals = box_ops.clip(box_ops.decode(deltas[top], anchors[top], RPN_BOX_WEIGHTS), image_size[0],
                             image_size[1])
    sizes = proposals[:, 2:] - proposals[:, :2]
    usable = (sizes >= min_size).all(-1) & jnp.isfinite(top_logits)
    keep, valid = nms(proposals, jnp.where(usable, top_logits, -jnp.inf), nms_threshold, post_nms_top_k)
    scores = jnp.where(valid, jax.nn.sigmoid(top_logits[keep]), 0.0)
    return jnp.where(valid[:, None], proposals[keep], 0.0), scores, valid


def sample_rois(proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                key: jax.Array, *, num_rois: int, positive_fraction: float, positive_iou: float
                ) -> dict[str, jax.Array]:
    """Training RoIs of one image: the proposals and the ground-truth boxes, matched to the ground truth (IoU >=
    `positive_iou`: person, else background) and sampled to `num_rois` with at most `positive_fraction` people.

    Returns `rois` (R, 4), `valid` (R,), `labels` (R,) int32 (1 person, 0 background, -1 padding) and `targets`
    (R, 4): the matched ground-truth box of each RoI.
    """
    candidates = jnp.concatenate([proposals, gt_boxes])
    candidate_valid = jnp.concatenate([proposal_valid, gt_valid])
    matched, labels = match(box_ops.iou(candidates, gt_boxes), gt_valid, positive_iou, positive_iou,
                            force_best=False)
    labels = jnp.where(candidate_valid, labels, -1)
    chosen, valid = balanced_sample(labels, key, num_rois, positive_fraction)
    return {"rois": candidates[chosen], "valid": valid, "labels": jnp.where(valid, labels[chosen], -1),
            "targets": gt_boxes[matched[chosen]]}


NMS_METHODS = ("greedy", "soft")


def detect(class_logits: jax.Array, box_deltas: jax.Array, rois: jax.Array, roi_valid: jax.Array,
           image_size: jax.Array, *, score_threshold: float, nms_threshold: float, max_detections: int,
           nms_method: str = "greedy", soft_nms_sigma: float = 0.5, vote_iou: float = 0.0
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One image's detections from the head: (max_detections, 4) boxes, person probabilities, valid mask.

    The head's boxes scoring above `score_threshold` go through greedy NMS at `nms_threshold` or, with
    `nms_method="soft"`, Gaussian soft-NMS of width `soft_nms_sigma` (whose decayed scores are then the scores,
    and a box is kept while its decayed score stays above the threshold). With `vote_iou > 0` every kept box is
    then replaced by the score-weighted mean of the head's boxes that overlap it at IoU >= `vote_iou` (box voting).
    """
    if nms_method not in NMS_METHODS:
        raise ValueError(f"nms_method {nms_method!r} is not one of {list(NMS_METHODS)}")
    scores = jax.nn.softmax(class_logits.astype(jnp.float32), axis=-1)[:, 1]
    boxes = box_ops.clip(box_ops.decode(box_deltas, rois, HEAD_BOX_WEIGHTS), image_size[0], image_size[1])
    sizes = boxes[:, 2:] - boxes[:, :2]
    usable = roi_valid & (scores > score_threshold) & (sizes > 0).all(-1)
    if nms_method == "soft":
        keep, kept_scores, valid = soft_nms(boxes, jnp.where(usable, scores, -jnp.inf), soft_nms_sigma,
                                            max_detections, score_threshold)
    else:
        keep, valid = nms(boxes, jnp.where(usable, scores, -jnp.inf), nms_threshold, max_detections)
        kept_scores = scores[keep]
    kept = boxes[keep]
    if vote_iou > 0:
        kept = vote(kept, boxes, jnp.where(usable, scores, 0.0), vote_iou)
    return jnp.where(valid[:, None], kept, 0.0), jnp.where(valid, kept_scores, 0.0), valid


class FasterRCNN(nn.Module):
    """Faster R-CNN with one feature level and a person class; `FasterRCNN(**config.model)`.

    `apply(variables, images, image_size, train=False)` returns per image `rpn_logits` (B, N), `rpn_deltas`
    (B, N, 4) over the N anchors (`anchors`, the same for every image), `proposals` (B, P, 4) with
    `proposal_scores` and `proposal_valid`, the RoIs the head saw (`rois`, `roi_valid`) and the head's
    `class_logits` (B, R, 2) (background, person) and `box_deltas` (B, R, 4). With `train=True` it also needs
    `gt_boxes` (B, G, 4), `gt_valid` (B, G) and a PRNG `key` (RoI sampling), and adds `roi_labels` and
    `roi_targets`. Boxes are (x1, y1, x2, y2) in canvas pixels; `image_size` (B, 2) is each image's true
    (height, width) on the canvas (None: the whole canvas).

    Attributes:
      depth, output_stride, stride_on, conv_bias, bn_frozen, bn_momentum, bn_epsilon, base_width, width_multipliers:
        the backbone (`hvpose.models.resnet.ResNet`; the block4 head's conv5_x takes its width too).
      preprocess: input normalisation (`hvpose.models.preprocess`); dtype: "float32" or "bfloat16".
      head: "block4" (conv5_x on 14x14 RoIs max-pooled to 7x7; the RPN then works on block3) or "fc" (two fully
        connected layers of `fc_dim` on `roi_size` x `roi_size` RoIs of block4).
      anchor_sizes, anchor_ratios: anchor side lengths (pixels) and height/width ratios at every feature cell.
      rpn_channels: width of the RPN's 3x3 convolution.
      rpn_pre_nms_top_k, rpn_post_nms_top_k, rpn_nms_threshold: proposals per image before and after NMS.
      num_rois, roi_positive_fraction, roi_positive_iou: second-stage sampling in training.
      roi_size: RoIAlign output side; roi_sampling_ratio: samples per bin side; roi_align_method: "gather",
        "einsum" (matmuls both ways, for TPUs) or "fused" (a matmul and a fused weighted sum, for CPUs); see
        `hvpose.ops.roi_align`.
    """

    depth: int = 101
    output_stride: int = 16
    stride_on: Literal["1x1", "3x3"] = "1x1"
    conv_bias: bool = True
    bn_frozen: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1.001e-5
    base_width: int = 64
    width_multipliers: tuple[int, ...] = ()
    preprocess: str = "caffe"
    dtype: str = "float32"
    head: str = "block4"
    fc_dim: int = 1024
    anchor_sizes: tuple[float, ...] = (64.0, 128.0, 256.0, 512.0)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 512
    rpn_pre_nms_top_k: int = 6000
    rpn_post_nms_top_k: int = 300
    rpn_nms_threshold: float = 0.7
    num_rois: int = 64
    roi_positive_fraction: float = 0.25
    roi_positive_iou: float = 0.5
    roi_size: int = 14
    roi_sampling_ratio: int = 2
    roi_align_method: str = "gather"

    def __post_init__(self) -> None:
        # One spelling of the standard widths, and a tuple (hashable) where a config read from json holds a list.
        object.__setattr__(self, "width_multipliers", canonical_multipliers(self.width_multipliers))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {list(DTYPES)}")
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not one of {list(HEADS)}")
        if self.head == "block4" and self.roi_size % 2:
            raise ValueError(f"roi_size {self.roi_size} must be even for the block4 head (pooled 2x2)")
        if self.roi_align_method not in ROI_ALIGN_METHODS:
            raise ValueError(f"roi_align_method {self.roi_align_method!r} is not one of {list(ROI_ALIGN_METHODS)}")
        check_preprocess(self.preprocess)
        super().__post_init__()

    @property
    def feature_stride(self) -> int:
        """Input pixels per cell of the features the RPN and RoIAlign read."""
        if self.head == "fc":
            return self.output_stride
        plan = stage_strides_and_dilations(self.output_stride)  # (stride, dilation) of conv2_x..conv5_x
        return 4 * plan[1][0] * plan[2][0]  # the stem's 4, then conv3_x and conv4_x (block3)

    @property
    def num_anchors_per_cell(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    def anchors(self, feature_shape: tuple[int, int]) -> np.ndarray:
        """(h * w * A, 4) anchors of a feature grid, centred on the input pixel each cell sits on."""
        return grid_anchors(feature_shape, self.feature_stride, self.anchor_sizes, self.anchor_ratios,
                            center_offset=0.5)

    @nn.compact
    def __call__(self, images: jax.Array, image_size: jax.Array | None = None, train: bool = False,
                 gt_boxes: jax.Array | None = None, gt_valid: jax.Array | None = None,
                 key: jax.Array | None = None) -> dict[str, jax.Array]:
        batch = images.shape[0]
        if image_size is None:
            image_size = jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.int32), (batch, 2))
        dtype = DTYPES[self.dtype]
        norm = lambda name: nn.BatchNorm(  # noqa: E731
            use_running_average=not train or self.bn_frozen, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            dtype=dtype, name=name)
        backbone = ResNet(depth=self.depth, output_stride=self.output_stride, stride_on=self.stride_on,
                          conv_bias=self.conv_bias, bn_frozen=self.bn_frozen, bn_momentum=self.bn_momentum,
                          bn_epsilon=self.bn_epsilon, base_width=self.base_width,
                          width_multipliers=tuple(self.width_multipliers), dtype=dtype,
                          stages=3 if self.head == "block4" else 4, name="backbone")
        features = backbone(preprocess(images, self.preprocess), train=train)
        features = features["block3" if self.head == "block4" else "block4"]
        height, width = features.shape[1:3]
        anchors = jnp.asarray(self.anchors((height, width)))
        per_cell = self.num_anchors_per_cell

        # Region proposal network: shared 3x3 conv, then per-anchor objectness and deltas (float32 outputs).
        hidden = nn.relu(nn.Conv(self.rpn_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                                 kernel_init=nn.initializers.normal(0.01), name="rpn_conv")(features))
        hidden = hidden.astype(jnp.float32)
        rpn_logits = nn.Conv(per_cell, (1, 1), kernel_init=nn.initializers.normal(0.01),
                             name="rpn_logits")(hidden).reshape(batch, -1)
        rpn_deltas = nn.Conv(4 * per_cell, (1, 1), kernel_init=nn.initializers.normal(0.01),
                             name="rpn_deltas")(hidden).reshape(batch, -1, 4)

        proposals, proposal_scores, proposal_valid = jax.vmap(functools.partial(
            propose, anchors=anchors, pre_nms_top_k=self.rpn_pre_nms_top_k, post_nms_top_k=self.rpn_post_nms_top_k,
            nms_threshold=self.rpn_nms_threshold))(jax.lax.stop_gradient(rpn_logits),
                                                   jax.lax.stop_gradient(rpn_deltas), image_size)
        outputs = {"anchors": anchors, "rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "proposals": proposals,
                   "proposal_scores": proposal_scores, "proposal_valid": proposal_valid}
        if train:
            if gt_boxes is None or gt_valid is None or key is None:
                raise ValueError("training needs gt_boxes, gt_valid and a key")
            sampled = jax.vmap(functools.partial(
                sample_rois, num_rois=self.num_rois, positive_fraction=self.roi_positive_fraction,
                positive_iou=self.roi_positive_iou))(proposals, proposal_valid, gt_boxes.astype(jnp.float32),
                                                     gt_valid, jax.random.split(key, batch))
            rois, roi_valid = sampled["rois"], sampled["valid"]
            outputs.update(roi_labels=sampled["labels"], roi_targets=sampled["targets"])
        else:
            rois, roi_valid = proposals, proposal_valid
        rois = jax.lax.stop_gradient(rois)
        outputs.update(rois=rois, roi_valid=roi_valid)

        # RoIAlign on the feature grid: cell j sits on pixel stride*j (centre stride*j + 0.5), while aligned=True
        # puts cell j's centre at (j + 0.5) * stride, so boxes move by (stride - 1) / 2 to land on the same cells.
        stride = self.feature_stride
        shift = (stride - 1) / 2
        pooled = jax.vmap(lambda f, b: roi_align(f, b + shift, (self.roi_size, self.roi_size), 1.0 / stride,
                                                 self.roi_sampling_ratio, self.roi_align_method))(
            features, rois)  # (B, R, s, s, C)
        num_rois = pooled.shape[1]
        pooled = pooled.reshape(batch * num_rois, *pooled.shape[2:]).astype(dtype)
        if self.head == "block4":
            x = max_pool(pooled, (2, 2), (2, 2))
            x = stage_units(x, 3, self.depth, 1, 1, 1, self.stride_on, self.conv_bias, norm,
                            stage_width(3, self.base_width, self.width_multipliers), dtype)
            x = x.astype(jnp.float32).mean(axis=(1, 2))
        else:
            x = pooled.reshape(batch * num_rois, -1)
            for index in range(2):
                x = nn.relu(nn.Dense(self.fc_dim, dtype=dtype, name=f"fc{index + 1}")(x))
            x = x.astype(jnp.float32)
        class_logits = nn.Dense(2, kernel_init=nn.initializers.normal(0.01), name="class_logits")(x)
        box_deltas = nn.Dense(4, kernel_init=nn.initializers.normal(0.001), name="box_deltas")(x)
        outputs.update(class_logits=class_logits.reshape(batch, num_rois, 2),
                       box_deltas=box_deltas.reshape(batch, num_rois, 4))
        return outputs


__all__ = ["HEADS", "HEAD_BOX_WEIGHTS", "NMS_METHODS", "RPN_BOX_WEIGHTS", "FasterRCNN", "detect", "propose",
           "sample_rois"]
