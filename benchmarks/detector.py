"""Benchmark: the Faster R-CNN person detector (`hvpose.models.detector`): its train step beside its bare backbone,
where the rest of the step goes, inference stage by stage, RoIAlign's two forms, and NMS; ratios in the same run.

    python benchmarks/detector.py [--config configs/detector_demo.py] [--batch 16] [--repeats 5] [--canvas H W]
        [--quick] [--out benchmarks/results/detector-<machine>.json]

Inputs are random uint8 canvases of the config's `data.canvas_size` (or `--canvas`) with `data.max_boxes` padded
ground-truth boxes per image, 3 of them valid (static shapes); the network has its random initialisation. Times
are the median of `--repeats` calls after a warm-up call (compilation excluded), results awaited.

Sections (each with every `roi_align_method`, "gather", "einsum", "fused" and "dense", where it matters; section 3
leaves "dense" out (None) where its per-image bin matrix would exceed `DENSE_LIMIT_BYTES`, as on detector_coco.py's
maps; sections 1 and 2 run the config's own shapes, small for detector_demo.py):
  1. train step: the whole jitted step (`jit_train_step` with `detector_objective`: forward, losses, backward,
     optimizer) against the bare backbone's forward+backward (the detector's own ResNet, its `stages`, from the
     same images, BatchNorm in training mode) timed beside it; `outside_backbone` is the share of the step's time
     not explained by the backbone; FLOPs per image from XLA's cost analysis of the step, and MFU against the
     device's peak (`machine.peak_flops`: the spec sheet on known accelerators, a matmul timed in the same run on a
     CPU). Then the pieces of the objective outside the backbone, each jitted on its own
     (RPN head, `propose`, `sample_rois`, RoIAlign, box head, `rpn_targets`, the losses, the optimizer update),
     as a share of the step: they overlap (e.g. the losses include `rpn_targets`) and miss fusion across their
     borders, so they do not add up exactly; they say where the time goes.
  2. inference stages, each jitted on its own on the same inputs: backbone; RPN head + `propose`; RoIAlign + box
     head; `detect`; and the whole `Detector` call path (`model.apply` + vmapped `detect`), whose outputs the
     stages reproduce (checked: `stage_max_abs_diff` of the head's logits).
  3. RoIAlign alone, each form against gather, forward (the inference RoI count) and forward and forward+backward
     (gradient with respect to the features; the training RoI count): at the config's feature shape and batch, and
     (without `--quick`) at detector_coco.py's on one image (641x1025 at stride 8 -> 81x129x1024, 300 RoIs at
     14x14 for inference, 64 for training), float32 (bfloat16 is slow on CPUs).
  4. NMS: `hvpose.ops.nms.nms` (a static `fori_loop` of `max_output` steps over every box) against a plain numpy
     greedy NMS (which stops when the boxes run out) on clustered random boxes: detector_coco.py's RPN setting
     (6000 -> 300) and the config's (e.g. 500 -> 50), also vmapped over the batch as `propose` runs it.

Most of a run is compilation: with detector_demo.py, `--repeats 3` takes about 4 minutes on 2 CPU cores, a minute
less with `--quick`. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from hvpose import sharding
from hvpose.allocator import reuse_freed_memory
from hvpose.detector import DetectionSettings, Detector, build_model, detector_objective
from hvpose.detector_targets import detector_loss, rpn_targets
from hvpose.models.detector import FasterRCNN, detect, propose, sample_rois
from hvpose.models.keypoint_net import DTYPES
from hvpose.models.preprocess import preprocess
from hvpose.models.resnet import ResNet, stage_units, stage_width
from hvpose.ops.nms import nms
from hvpose.ops.roi_align import METHODS, roi_align
from hvpose.train import init_state, jit_train_step, learning_rate_schedule, make_optimizer
from machine import compile_with_flops, machine_info, peak_flops, write_results

REPO = pathlib.Path(__file__).resolve().parents[1]
COCO_CONFIG = REPO / "configs" / "detector_coco.py"
PEOPLE_PER_IMAGE = 3
# Rows left out of the sum of the pieces: the step itself and pieces contained in others.
OVERLAPPING_PIECES = ("whole train step", "roi_align fwd", "rpn_targets (match, sample anchors)")


def load_config(path: pathlib.Path) -> Any:
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def median_seconds(fn: Callable[..., Any], *args: Any, repeats: int) -> float:
    """Median wall time of `repeats` calls `fn(*args)` (results awaited) after one warm-up call (compilation)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def random_boxes(rng: np.random.Generator, shape: tuple[int, ...], canvas: tuple[int, int], min_size: float,
                 max_size: float) -> np.ndarray:
    """(*shape, 4) float32 boxes inside the canvas, sides log-uniform in [min_size, max_size]."""
    height, width = canvas
    sides = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (*shape, 2)))
    sides = np.minimum(sides, [width, height])
    corner = rng.uniform(0, 1, (*shape, 2)) * ([width, height] - sides)
    return np.concatenate([corner, corner + sides], -1).astype(np.float32)


def random_batch(rng: np.random.Generator, batch: int, canvas: tuple[int, int], max_boxes: int
                 ) -> dict[str, np.ndarray]:
    """Random canvases, each with `PEOPLE_PER_IMAGE` person-shaped boxes among `max_boxes` padded slots."""
    height, width = canvas
    box_height = rng.uniform(0.2, 0.9, (batch, max_boxes)) * height
    box_width = np.minimum(box_height / rng.uniform(1.0, 3.0, (batch, max_boxes)), width)
    x1 = rng.uniform(0, 1, (batch, max_boxes)) * (width - box_width)
    y1 = rng.uniform(0, 1, (batch, max_boxes)) * (height - box_height)
    valid = np.broadcast_to(np.arange(max_boxes) < min(PEOPLE_PER_IMAGE, max_boxes), (batch, max_boxes)).copy()
    boxes = np.stack([x1, y1, x1 + box_width, y1 + box_height], -1).astype(np.float32)
    return {"image": rng.integers(0, 256, (batch, height, width, 3), np.uint8),
            "image_size": np.tile(np.asarray(canvas, np.int32), (batch, 1)),
            "boxes": np.where(valid[..., None], boxes, 0.0).astype(np.float32), "box_valid": valid}


# --- The detector's stages as separate modules, with the parameter names of `FasterRCNN`, so they run on its
# variables (and reproduce its outputs; checked in section 2).

class RPNHead(nn.Module):
    """FasterRCNN's region proposal head: 3x3 conv, then per-anchor objectness logits and box deltas."""

    channels: int
    per_cell: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch = features.shape[0]
        hidden = nn.relu(nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                                 name="rpn_conv")(features)).astype(jnp.float32)
        logits = nn.Conv(self.per_cell, (1, 1), name="rpn_logits")(hidden).reshape(batch, -1)
        deltas = nn.Conv(4 * self.per_cell, (1, 1), name="rpn_deltas")(hidden).reshape(batch, -1, 4)
        return logits, deltas


class BoxHead(nn.Module):
    """FasterRCNN's second stage on pooled RoIs (B, R, s, s, C): block4 (conv5_x) or two fully connected layers."""

    head: str
    depth: int
    stride_on: str
    conv_bias: bool
    width: int  # conv5_x's (`stage_width(3, ...)`)
    fc_dim: int
    bn_frozen: bool
    bn_momentum: float
    bn_epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        batch, num_rois = pooled.shape[:2]
        x = pooled.reshape(batch * num_rois, *pooled.shape[2:]).astype(self.dtype)
        if self.head == "block4":
            norm = lambda name: nn.BatchNorm(  # noqa: E731
                use_running_average=not train or self.bn_frozen, momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                dtype=self.dtype, name=name)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            x = stage_units(x, 3, self.depth, 1, 1, 1, self.stride_on, self.conv_bias, norm, self.width,
                            self.dtype)
            x = x.astype(jnp.float32).mean(axis=(1, 2))
        else:
            x = x.reshape(batch * num_rois, -1)
            for index in range(2):
                x = nn.relu(nn.Dense(self.fc_dim, dtype=self.dtype, name=f"fc{index + 1}")(x))
            x = x.astype(jnp.float32)
        class_logits = nn.Dense(2, name="class_logits")(x)
        box_deltas = nn.Dense(4, name="box_deltas")(x)
        return class_logits.reshape(batch, num_rois, 2), box_deltas.reshape(batch, num_rois, 4)


class Stages:
    """A FasterRCNN cut into its stages, each a pure function of (its variables, inputs)."""

    def __init__(self, model: FasterRCNN, params: Any, batch_stats: Any):
        self.model = model
        dtype = DTYPES[model.dtype]
        self.backbone = ResNet(depth=model.depth, output_stride=model.output_stride, stride_on=model.stride_on,
                               conv_bias=model.conv_bias, bn_frozen=model.bn_frozen, bn_momentum=model.bn_momentum,
                               bn_epsilon=model.bn_epsilon, base_width=model.base_width,
                               width_multipliers=tuple(model.width_multipliers), dtype=dtype,
                               stages=3 if model.head == "block4" else 4)
        self.feature_name = "block3" if model.head == "block4" else "block4"
        self.rpn = RPNHead(model.rpn_channels, model.num_anchors_per_cell, dtype)
        self.head = BoxHead(model.head, model.depth, model.stride_on, model.conv_bias,
                            stage_width(3, model.base_width, model.width_multipliers), model.fc_dim,
                            model.bn_frozen,
                            model.bn_momentum, model.bn_epsilon, dtype)
        rpn_names = ("rpn_conv", "rpn_logits", "rpn_deltas")
        head_names = [name for name in params if name.startswith("block4_unit")
                      or name in ("fc1", "fc2", "class_logits", "box_deltas")]
        self.backbone_variables = {"params": params["backbone"], "batch_stats": batch_stats["backbone"]}
        self.rpn_variables = {"params": {name: params[name] for name in rpn_names}}
        self.head_variables = {"params": {name: params[name] for name in head_names}}
        head_stats = {name: batch_stats[name] for name in head_names if name in batch_stats}
        if head_stats:
            self.head_variables["batch_stats"] = head_stats

    def features(self, variables: Any, images: jax.Array, train: bool = False) -> tuple[jax.Array, Any]:
        x = preprocess(images, self.model.preprocess)
        if train:
            out, updates = self.backbone.apply(variables, x, train=True, mutable=["batch_stats"])
            return out[self.feature_name], updates
        return self.backbone.apply(variables, x)[self.feature_name], {}

    def backbone_grad(self, variables: Any, images: jax.Array) -> tuple[Any, Any]:
        """The backbone's forward+backward in training mode: parameter gradients (of a stand-in loss), and the
        updated BatchNorm statistics."""
        def loss(params: Any) -> tuple[jax.Array, Any]:
            features, updates = self.features({**variables, "params": params}, images, train=True)
            return square_mean(features), updates

        return jax.grad(loss, has_aux=True)(variables["params"])

    def anchors(self, features: jax.Array) -> jax.Array:
        return jnp.asarray(self.model.anchors(features.shape[1:3]))

    def propose(self, rpn_logits: jax.Array, rpn_deltas: jax.Array, image_size: jax.Array, anchors: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
        m = self.model
        return jax.vmap(functools.partial(propose, anchors=anchors, pre_nms_top_k=m.rpn_pre_nms_top_k,
                                          post_nms_top_k=m.rpn_post_nms_top_k, nms_threshold=m.rpn_nms_threshold))(
            rpn_logits, rpn_deltas, image_size)

    def sample(self, proposals: jax.Array, proposal_valid: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
               key: jax.Array) -> dict[str, jax.Array]:
        m = self.model
        return jax.vmap(functools.partial(sample_rois, num_rois=m.num_rois, positive_fraction=m.roi_positive_fraction,
                                          positive_iou=m.roi_positive_iou))(
            proposals, proposal_valid, gt_boxes, gt_valid, jax.random.split(key, proposals.shape[0]))

    def pool(self, features: jax.Array, rois: jax.Array, method: str) -> jax.Array:
        return pool_rois(self.model, features, rois, method)


def pool_rois(model: FasterRCNN, features: jax.Array, rois: jax.Array, method: str) -> jax.Array:
    """RoIAlign as FasterRCNN runs it: vmapped over images, boxes shifted onto its feature grid."""
    stride = model.feature_stride
    shift = (stride - 1) / 2
    return jax.vmap(lambda f, b: roi_align(f, b + shift, (model.roi_size, model.roi_size), 1.0 / stride,
                                           model.roi_sampling_ratio, method))(features, rois)


def square_mean(*arrays: jax.Array) -> jax.Array:
    """A scalar that depends on every element (a stand-in loss whose gradient is dense)."""
    return sum(jnp.mean(jnp.square(a.astype(jnp.float32))) for a in arrays)


# --- Sections.

def advance(step: Callable[..., Any], holder: dict[str, Any], batch: dict[str, jax.Array]) -> Any:
    """One train step on the state in `holder` (donated, so the new state replaces it)."""
    holder["state"], metrics = step(holder["state"], batch)
    return holder["state"], metrics


def train_sections(config: Any, batch_np: dict[str, np.ndarray], repeats: int
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Any]:
    """Section 1: the train step and the bare backbone per RoIAlign method; then the objective's pieces.
    Also returns the freshly initialised variables (for section 2)."""
    canvas = batch_np["image"].shape[1:3]
    batch_size = batch_np["image"].shape[0]
    optimizer = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)
    objective = functools.partial(detector_objective, loss_settings=config.loss.to_dict(), seed=0)
    base = build_model(config)  # the parameters do not depend on the RoIAlign method
    mesh = sharding.make_mesh()
    step_rows, piece_rows = [], []
    pieces: dict[str, dict[str, float]] = {}
    with jax.set_mesh(mesh):
        batch = jax.device_put(batch_np, sharding.batch_sharded(mesh))
        fresh = jax.device_put(jax.jit(lambda: init_state(base, optimizer, canvas, 0))(), sharding.replicated(mesh))
        stages = Stages(base, fresh.params, fresh.batch_stats)
        backbone_grad = jax.jit(stages.backbone_grad)
        peak, peak_source = peak_flops(config.model.dtype, repeats)
        for method in METHODS:
            model = base.clone(roi_align_method=method)
            state = jax.tree.map(jnp.copy, fresh)  # the step donates its state
            step, flops = compile_with_flops(jit_train_step(model, optimizer, schedule, objective, mesh, state),
                                             state, batch)
            step_seconds = median_seconds(advance, step, {"state": state}, batch, repeats=repeats)
            backbone_seconds = median_seconds(backbone_grad, stages.backbone_variables, batch["image"],
                                              repeats=repeats)
            step_rows.append({"section": "train_step", "roi_align_method": method, "batch": batch_size,
                              "step_ms": 1e3 * step_seconds, "images_per_second": batch_size / step_seconds,
                              "backbone_fwd_bwd_ms": 1e3 * backbone_seconds,
                              "backbone_images_per_second": batch_size / backbone_seconds,
                              "outside_backbone": 1.0 - backbone_seconds / step_seconds,
                              # FLOPs per device from XLA's cost analysis; MFU against `peak_source`.
                              "gflops_per_image": flops * jax.device_count() / batch_size / 1e9 if flops else None,
                              "achieved_gflops_per_second": flops / step_seconds / 1e9 if flops else None,
                              "mfu": flops / step_seconds / peak if flops and peak else None,
                              "peak_source": peak_source})
            pieces[method] = {"whole train step": step_seconds, "backbone fwd+bwd": backbone_seconds}
        shared = train_pieces(stages, dict(objective.keywords["loss_settings"]), optimizer, fresh, batch, pieces,
                              repeats)
    for method in METHODS:
        pieces[method] |= shared
        pieces[method]["sum of the pieces (fwd+bwd ones, once each)"] = sum(
            seconds for name, seconds in pieces[method].items() if name not in OVERLAPPING_PIECES)
    for name in pieces[METHODS[0]]:
        row: dict[str, Any] = {"section": "train_pieces", "piece": name, "batch": batch_size}
        for method in METHODS:
            row[f"{method}_ms"] = 1e3 * pieces[method][name]
            row[f"{method}_share_of_step"] = pieces[method][name] / pieces[method]["whole train step"]
        piece_rows.append(row)
    return step_rows, piece_rows, {"params": fresh.params, "batch_stats": fresh.batch_stats}


def train_pieces(stages: Stages, loss_settings: dict[str, Any], optimizer: optax.GradientTransformation,
                 state: Any, batch: dict[str, jax.Array], pieces: dict[str, dict[str, float]], repeats: int
                 ) -> dict[str, float]:
    """Seconds of each piece of the objective outside the backbone, jitted alone, on the inputs the forward pass
    gives it (chained here from the pieces themselves). RoIAlign's go into `pieces[method]`; the rest, which do
    not depend on the method, are returned."""
    key = jax.random.key(0)
    times: dict[str, float] = {}
    features, _ = jax.jit(functools.partial(stages.features, train=True))(stages.backbone_variables, batch["image"])
    anchors = stages.anchors(features)
    rpn_logits, rpn_deltas = jax.jit(stages.rpn.apply)(stages.rpn_variables, features)
    rpn_grad = jax.jit(jax.grad(lambda v, f: square_mean(*stages.rpn.apply(v, f)), argnums=(0, 1)))
    times["rpn head fwd+bwd"] = median_seconds(rpn_grad, stages.rpn_variables, features, repeats=repeats)
    propose_fn = jax.jit(stages.propose)
    times["propose (top-k, decode, NMS)"] = median_seconds(
        propose_fn, rpn_logits, rpn_deltas, batch["image_size"], anchors, repeats=repeats)
    proposals, _, proposal_valid = propose_fn(rpn_logits, rpn_deltas, batch["image_size"], anchors)
    sample_fn = jax.jit(stages.sample)
    times["sample_rois"] = median_seconds(sample_fn, proposals, proposal_valid, batch["boxes"], batch["box_valid"],
                                          key, repeats=repeats)
    sampled = sample_fn(proposals, proposal_valid, batch["boxes"], batch["box_valid"], key)
    rois = jax.lax.stop_gradient(sampled["rois"])
    for method in METHODS:
        roi_align_grad = jax.jit(jax.grad(lambda f, r, m=method: square_mean(stages.pool(f, r, m))))
        pieces[method]["roi_align fwd+bwd"] = median_seconds(roi_align_grad, features, rois, repeats=repeats)
        roi_align_forward = jax.jit(functools.partial(stages.pool, method=method))
        pieces[method]["roi_align fwd"] = median_seconds(roi_align_forward, features, rois, repeats=repeats)
    pooled = roi_align_forward(features, rois)
    mutable = ["batch_stats"] if "batch_stats" in stages.head_variables else False

    def head(params: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = stages.head.apply({**stages.head_variables, "params": params}, x, train=True, mutable=mutable)
        return out[0] if mutable else out

    head_grad = jax.jit(jax.grad(lambda p, x: square_mean(*head(p, x)), argnums=(0, 1)))
    times["box head fwd+bwd"] = median_seconds(head_grad, stages.head_variables["params"], pooled, repeats=repeats)
    class_logits, box_deltas = jax.jit(head)(stages.head_variables["params"], pooled)
    target_settings = {"positive_iou": loss_settings.get("rpn_positive_iou", 0.7),
                       "negative_iou": loss_settings.get("rpn_negative_iou", 0.3),
                       "num_samples": loss_settings.get("rpn_num_samples", 256),
                       "positive_fraction": loss_settings.get("rpn_positive_fraction", 0.5)}
    targets_fn = jax.jit(lambda boxes, valid, k: jax.vmap(lambda b, v, kk: rpn_targets(
        anchors, b, v, kk, **target_settings))(boxes, valid, jax.random.split(k, boxes.shape[0])))
    times["rpn_targets (match, sample anchors)"] = median_seconds(
        targets_fn, batch["boxes"], batch["box_valid"], key, repeats=repeats)
    fixed = {"anchors": anchors, "rois": rois, "roi_labels": sampled["labels"], "roi_targets": sampled["targets"]}

    def losses(arrays: dict[str, jax.Array], boxes: jax.Array, valid: jax.Array) -> jax.Array:
        return detector_loss({**fixed, **arrays}, boxes, valid, key, **loss_settings)["loss"]

    arrays = {"rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "class_logits": class_logits,
              "box_deltas": box_deltas}
    times["losses fwd+bwd (incl. rpn_targets)"] = median_seconds(
        jax.jit(jax.grad(losses)), arrays, batch["boxes"], batch["box_valid"], repeats=repeats)
    grads = jax.tree.map(jnp.ones_like, state.params)
    update = jax.jit(lambda g, o, p: optax.apply_updates(p, optimizer.update(g, o, p)[0]))
    times["optimizer update"] = median_seconds(update, grads, state.opt_state, state.params, repeats=repeats)
    return times


def inference_section(config: Any, variables: Any, batch_np: dict[str, np.ndarray], repeats: int
                      ) -> list[dict[str, Any]]:
    """Section 2: each inference stage jitted alone, then the whole Detector call path, per RoIAlign method."""
    canvas = tuple(batch_np["image"].shape[1:3])
    batch_size = batch_np["image"].shape[0]
    settings = DetectionSettings(**config.inference)
    base = build_model(config)
    stages = Stages(base, variables["params"], variables["batch_stats"])
    images, image_size = jnp.asarray(batch_np["image"]), jnp.asarray(batch_np["image_size"])
    rows = []

    def add(stage: str, method: str, seconds: float, **extra: Any) -> None:
        rows.append({"section": "inference", "stage": stage, "roi_align_method": method, "batch": batch_size,
                     "ms": 1e3 * seconds, "images_per_second": batch_size / seconds, **extra})

    backbone = jax.jit(lambda v, x: stages.features(v, x)[0])
    add("backbone", "-", median_seconds(backbone, stages.backbone_variables, images, repeats=repeats))
    features = backbone(stages.backbone_variables, images)
    anchors = stages.anchors(features)

    @jax.jit
    def rpn(v: Any, f: jax.Array, size: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        logits, deltas = stages.rpn.apply(v, f)
        return stages.propose(logits, deltas, size, anchors)

    add("rpn head + propose", "-", median_seconds(rpn, stages.rpn_variables, features, image_size, repeats=repeats))
    proposals, _, proposal_valid = rpn(stages.rpn_variables, features, image_size)
    decode = jax.jit(jax.vmap(functools.partial(detect, score_threshold=settings.score_threshold,
                                                nms_threshold=settings.nms_threshold,
                                                max_detections=settings.max_detections)))
    for method in METHODS:
        head = jax.jit(lambda v, f, r, m=method: stages.head.apply(v, stages.pool(f, r, m)))
        seconds = median_seconds(head, stages.head_variables, features, proposals, repeats=repeats)
        class_logits, box_deltas = head(stages.head_variables, features, proposals)
        extra = {}
        if method == base.roi_align_method:  # the stages reproduce the model (the other method: same to rounding)
            reference = jax.jit(functools.partial(base.apply, train=False))(variables, images, image_size)
            extra["stage_max_abs_diff"] = float(jnp.max(jnp.abs(class_logits - reference["class_logits"])))
        add("roi_align + box head", method, seconds, **extra)
        if method == METHODS[0]:
            add("detect (decode, NMS)", "-", median_seconds(
                decode, class_logits, box_deltas, proposals, proposal_valid, image_size, repeats=repeats))
    for method in METHODS:
        detector = Detector(base.clone(roi_align_method=method), variables, canvas, settings, batch_size=batch_size)
        fields = sharding.global_batch({"image": batch_np["image"], "image_size": batch_np["image_size"]},
                                       detector.mesh)
        add("Detector (model.apply + detect)", method,
            median_seconds(detector._step, detector.variables, fields, repeats=repeats))
    return rows


DENSE_LIMIT_BYTES = 512 * 2**20  # the "dense" RoIAlign's (RoIs * bins, H * W) float32 matrix, per image


def roi_align_section(label: str, model: FasterRCNN, images: int, canvas: tuple[int, int], repeats: int,
                      rng: np.random.Generator) -> list[dict[str, Any]]:
    """Section 3: each RoIAlign form against gather at one model's feature shape, RoI counts and settings."""
    backbone = ResNet(depth=model.depth, output_stride=model.output_stride, stride_on=model.stride_on,
                      conv_bias=model.conv_bias, base_width=model.base_width,
                      width_multipliers=tuple(model.width_multipliers), stages=3 if model.head == "block4" else 4)
    shape = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x)[0],
                           jax.ShapeDtypeStruct((1, *canvas, 3), jnp.float32))
    shape = shape["block3" if model.head == "block4" else "block4"].shape[1:]
    features = jnp.asarray(rng.standard_normal((images, *shape), np.float32))
    rows = []
    for use, count, passes in (("inference", model.rpn_post_nms_top_k, ("fwd",)),
                               ("training", model.num_rois, ("fwd", "fwd+bwd"))):
        rois = jnp.asarray(random_boxes(rng, (images, count), canvas, 16.0, min(canvas)))
        dense_bytes = 4 * count * model.roi_size ** 2 * shape[0] * shape[1]
        for kind in passes:
            seconds = {}
            for method in METHODS:
                if method == "dense" and dense_bytes > DENSE_LIMIT_BYTES:
                    seconds[method] = None
                    continue
                if kind == "fwd":
                    fn = jax.jit(lambda f, r, m=method: pool_rois(model, f, r, m))
                else:
                    fn = jax.jit(jax.grad(lambda f, r, m=method: square_mean(pool_rois(model, f, r, m))))
                seconds[method] = median_seconds(fn, features, rois, repeats=repeats)
            rows.append({"section": "roi_align", "shape": label, "use": use, "pass": kind, "images": images,
                         "rois_per_image": count, "feature_shape": "x".join(map(str, shape)),
                         "output": f"{model.roi_size}x{model.roi_size}",
                         **{f"{method}_ms": 1e3 * seconds[method] if seconds[method] else None
                            for method in METHODS},
                         **{f"{method}_vs_gather": seconds[method] / seconds["gather"] if seconds[method] else None
                            for method in METHODS if method != "gather"}})
    return rows


def clustered_boxes(rng: np.random.Generator, count: int, canvas: tuple[int, int], objects: int = 20
                    ) -> np.ndarray:
    """Proposal-like boxes: 70% jittered copies of a few object boxes, the rest anywhere."""
    centres = random_boxes(rng, (objects,), canvas, 24.0, min(canvas) * 0.8)
    near = centres[rng.integers(0, objects, int(count * 0.7))]
    sides = np.concatenate([near[:, 2:] - near[:, :2]] * 2, -1)
    near = near + rng.normal(0, 0.1, near.shape) * sides
    boxes = np.concatenate([near, random_boxes(rng, (count - len(near),), canvas, 16.0, min(canvas))])
    height, width = canvas
    return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def numpy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_output: int) -> np.ndarray:
    """Plain greedy NMS: the best box left is kept, boxes overlapping it by IoU > threshold dropped."""
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep = []
    while order.size and len(keep) < max_output:
        best, rest = order[0], order[1:]
        keep.append(best)
        size = np.maximum(np.minimum(boxes[best, 2:], boxes[rest, 2:]) - np.maximum(boxes[best, :2], boxes[rest, :2]),
                          0)
        intersection = size[:, 0] * size[:, 1]
        union = areas[best] + areas[rest] - intersection
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), 0)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


def numpy_nms_batch(boxes: np.ndarray, scores: np.ndarray, threshold: float, max_output: int) -> list[np.ndarray]:
    return [numpy_nms(b, s, threshold, max_output) for b, s in zip(boxes, scores, strict=True)]


def nms_section(settings: list[tuple[str, int, int, float, tuple[int, int], int]], repeats: int,
                rng: np.random.Generator) -> list[dict[str, Any]]:
    """Section 4: hvpose's NMS against numpy's on the same boxes, single images and vmapped over a batch."""
    rows = []
    for label, count, max_output, threshold, canvas, images in settings:
        boxes = np.stack([clustered_boxes(rng, count, canvas) for _ in range(images)])
        scores = rng.uniform(0, 1, (images, count)).astype(np.float32)
        fn = jax.jit(jax.vmap(lambda b, s, t=threshold, k=max_output: nms(b, s, t, k)))
        device_boxes, device_scores = jnp.asarray(boxes), jnp.asarray(scores)
        hvpose_seconds = median_seconds(fn, device_boxes, device_scores, repeats=repeats)
        numpy_seconds = median_seconds(numpy_nms_batch, boxes, scores, threshold, max_output, repeats=repeats)
        indices, valid = jax.device_get(fn(device_boxes, device_scores))
        expected = numpy_nms_batch(boxes, scores, threshold, max_output)
        same = all(np.array_equal(indices[i][valid[i]], expected[i]) for i in range(images))
        rows.append({"section": "nms", "setting": label, "images": images, "boxes": count, "max_output": max_output,
                     "iou_threshold": threshold, "kept_per_image": float(valid.sum(-1).mean()),
                     "hvpose_ms": 1e3 * hvpose_seconds, "numpy_ms": 1e3 * numpy_seconds,
                     "hvpose_vs_numpy": hvpose_seconds / numpy_seconds, "same_boxes_kept": same})
    return rows


def print_table(title: str, rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> None:
    """`columns`: (key, header, width); floats with 3 significant decimals, ratios as given."""
    print(f"\n{title}")
    print(" ".join(f"{header:>{width}}" if i else f"{header:<{width}}"
                   for i, (_, header, width) in enumerate(columns)))
    for row in rows:
        cells = []
        for i, (key, _, width) in enumerate(columns):
            value = row.get(key, "")
            if isinstance(value, float):
                value = f"{value:.1%}" if "share" in key or key in ("outside_backbone", "mfu") else (
                    f"{value:.2f}x" if "_vs_" in key else f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}")
            cells.append(f"{value!s:<{width}}" if i == 0 else f"{value!s:>{width}}")
        print(" ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=pathlib.Path, default=REPO / "configs" / "detector_demo.py")
    parser.add_argument("--batch", type=int, default=16, help="global batch of canvases")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--canvas", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="canvas size instead of config.data.canvas_size")
    parser.add_argument("--quick", action="store_true", help="skip RoIAlign at detector_coco.py's size")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/detector-<machine>.json)")
    args = parser.parse_args()
    malloc_reused = reuse_freed_memory()  # before JAX runs, as python -m hvpose.main does
    started = time.perf_counter()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"detector-{machine['name']}.json"
    config = load_config(args.config)
    if args.canvas:
        config.data.canvas_size = tuple(args.canvas)
    canvas = tuple(config.data.canvas_size)
    rng = np.random.default_rng(0)
    batch = random_batch(rng, args.batch, canvas, config.data.max_boxes)

    progress = lambda what: print(f"[{time.perf_counter() - started:4.0f} s] {what}", file=sys.stderr)  # noqa: E731
    step_rows, piece_rows, variables = train_sections(config, batch, args.repeats)
    progress("1. train step")
    inference_rows = inference_section(config, variables, batch, args.repeats)
    progress("2. inference")
    roi_rows = roi_align_section(f"{args.config.name} ({args.batch} images)", build_model(config), args.batch,
                                 canvas, args.repeats, rng)
    coco = load_config(COCO_CONFIG)
    coco_model = build_model(coco)
    if not args.quick:
        roi_rows += roi_align_section("detector_coco.py (1 image)", coco_model.clone(dtype="float32"), 1,
                                      tuple(coco.data.canvas_size), args.repeats, rng)
    progress("3. RoIAlign")
    model = build_model(config)
    nms_rows = nms_section([
        ("detector_coco.py rpn", coco_model.rpn_pre_nms_top_k, coco_model.rpn_post_nms_top_k,
         coco_model.rpn_nms_threshold, tuple(coco.data.canvas_size), 1),
        (f"{args.config.name} rpn", model.rpn_pre_nms_top_k, model.rpn_post_nms_top_k, model.rpn_nms_threshold,
         canvas, 1),
        (f"{args.config.name} rpn", model.rpn_pre_nms_top_k, model.rpn_post_nms_top_k, model.rpn_nms_threshold,
         canvas, args.batch)], args.repeats, rng)
    seconds = time.perf_counter() - started

    print(f"Detector {args.config.name}, batch {args.batch} x {canvas[0]}x{canvas[1]} ({machine['cpu']}, "
          f"{machine['cores']} cores, {machine['device_count']} {machine['jax_backend']} device(s), jax "
          f"{jax.__version__}), median of {args.repeats}, {seconds:.0f} s in all")
    print_table("1. Train step against the bare backbone (forward+backward) in the same run", step_rows, [
        ("roi_align_method", "roi_align", 10), ("batch", "batch", 5), ("step_ms", "step ms", 9),
        ("images_per_second", "images/s", 9), ("backbone_fwd_bwd_ms", "backbone ms", 11),
        ("backbone_images_per_second", "bb images/s", 11), ("outside_backbone", "outside bb", 10),
        ("gflops_per_image", "GFLOP/img", 9), ("achieved_gflops_per_second", "GFLOP/s", 8), ("mfu", "MFU", 6)])
    print_table("1b. Pieces of the train step, each jitted alone (overlapping; share of that method's step)",
                piece_rows, [("piece", "piece", 42)] + [column for method in METHODS for column in (
                    (f"{method}_ms", f"{method} ms", 10), (f"{method}_share_of_step", "of step", 8))])
    print_table("2. Inference stages, each jitted alone", inference_rows, [
        ("stage", "stage", 32), ("roi_align_method", "roi_align", 10), ("ms", "ms", 9),
        ("images_per_second", "images/s", 9), ("stage_max_abs_diff", "vs model", 9)])
    print_table("3. RoIAlign alone (each form's time / gather's)", roi_rows, [
        ("shape", "shape", 30), ("use", "use", 9), ("pass", "pass", 7), ("rois_per_image", "rois", 5),
        ("feature_shape", "features", 12)] + [(f"{method}_ms", f"{method} ms", 10) for method in METHODS]
        + [(f"{method}_vs_gather", f"{method}/gather", 13) for method in METHODS if method != "gather"])
    print_table("4. NMS, hvpose (jit) against numpy greedy", nms_rows, [
        ("setting", "setting", 24), ("images", "images", 6), ("boxes", "boxes", 6), ("max_output", "keep", 5),
        ("kept_per_image", "kept", 6), ("hvpose_ms", "hvpose ms", 10), ("numpy_ms", "numpy ms", 9),
        ("hvpose_vs_numpy", "hvpose/numpy", 12), ("same_boxes_kept", "same", 5)])
    write_results(out, "detector", vars(args) | {"malloc_reused": malloc_reused,
                                                  "canvas": "x".join(map(str, canvas)), "seconds": round(seconds)},
                  machine, step_rows + piece_rows + inference_rows + roi_rows + nms_rows)


if __name__ == "__main__":
    main()
