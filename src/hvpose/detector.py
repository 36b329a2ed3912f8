"""Stage 1 end to end: training the person detector, running it, evaluating its boxes with COCOeval.

    python -m hvpose.main --config=configs/detector_demo.py --workdir=DIR   # train, then evaluate (bbox AP)

A detector config says `config.task = "detection"`; `hvpose.main` and `hvpose.train` run it with the same sharded
jitted step, checkpoints, exact resumption, metrics and progress line as the keypoint network (`training_task`).
Evaluation writes DIR/eval/metrics.json (COCOeval `bbox` for the person class: AP, AP50, AP75, APs, APm, APl,
AR1, AR10, AR, ARs, ARm, ARl, step), DIR/eval/detections.json (COCO detection results, which stage 2 reads as
`config.data.val.boxes`) and DIR/eval/predictions.png.

`Detector` is the trained network as a box source: `Detector.from_workdir(DIR)(image)` gives an image's person
boxes (N, 5) as (x, y, width, height, score) in image pixels, which is what `hvpose.inference` takes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import logging
import os
from collections.abc import Iterable
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from etils import epath

from hvpose import checkpoints, sharding, visualize
from hvpose.data.coco import Detection
from hvpose.data.detection import canvas_to_image, detection_eval_loader, detection_train_loader, prepare_image
from hvpose.data.images import decode_image
from hvpose.data.pipeline import close_loader, data_read_options
from hvpose.data.splits import prepare_split
from hvpose.data.tfds_coco import PreparedDataset
from hvpose.detector_targets import check_loss_settings, detector_loss
from hvpose.errors import ConfigError, DataError, configured
from hvpose.metrics import dump
from hvpose.models.detector import NMS_METHODS, FasterRCNN, detect
from hvpose.paths import resolve_workdir

log = logging.getLogger(__name__)
BOX_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR", "ARs", "ARm", "ARl")


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """How the head's outputs become boxes; `DetectionSettings(**config.inference)` of a detector config."""

    score_threshold: float = 0.05  # person probability above which a box is kept (low ones still count for AP)
    nms_threshold: float = 0.5  # IoU above which the lower-scoring box is dropped
    max_detections: int = 100  # boxes per image at most (COCO's AR@100)
    nms_method: str = "greedy"  # "greedy" (drop overlapping boxes) or "soft" (Gaussian soft-NMS: lower their scores)
    soft_nms_sigma: float = 0.5  # soft-NMS: scores times exp(-IoU^2 / sigma) (Bodla et al. 2017's 0.5)
    vote_iou: float = 0.0  # > 0: box voting, each kept box the score-weighted mean of the boxes over this IoU with it

    def __post_init__(self) -> None:
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_threshold <= 1 or self.max_detections < 1:
            raise ValueError("need 0 <= score_threshold < 1, 0 < nms_threshold <= 1 and max_detections >= 1")
        if self.nms_method not in NMS_METHODS:
            raise ValueError(f"nms_method {self.nms_method!r} is not one of {list(NMS_METHODS)}")
        if not self.soft_nms_sigma > 0 or not 0 <= self.vote_iou <= 1:
            raise ValueError("need soft_nms_sigma > 0 and 0 <= vote_iou <= 1 (0: no box voting)")


def build_model(config: ml_collections.ConfigDict) -> FasterRCNN:
    """The detector of a config (`FasterRCNN(**config.model)`), with bad fields reported as one line."""
    return configured(FasterRCNN, config.model, "model")


def detector_objective(model: FasterRCNN, params: Any, batch_stats: Any, batch: dict[str, jax.Array],
                       step: jax.Array, *, loss_settings: dict[str, Any], seed: int
                       ) -> tuple[jax.Array, tuple[dict, Any]]:
    """The detector's loss on a batch of canvases (`detector_loss(**config.loss)`). Anchor and RoI sampling draw
    from a key folded from the seed and the step, so the step stays a pure function and resumption is exact."""
    roi_key, anchor_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), step))
    outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                   batch["image_size"], train=True, gt_boxes=batch["boxes"],
                                   gt_valid=batch["box_valid"], key=roi_key, mutable=["batch_stats"])
    terms = detector_loss(outputs, batch["boxes"], batch["box_valid"], anchor_key, **loss_settings)
    return terms["loss"], (terms, updates.get("batch_stats", {}))


def training_task(config: ml_collections.ConfigDict, prepared: PreparedDataset) -> Any:
    """The detector's training for `hvpose.train.train` (`config.task = "detection"`)."""
    from hvpose.train import Task

    model = build_model(config)
    loss_settings = config.loss.to_dict()
    configured(check_loss_settings, loss_settings, "loss")
    canvas = tuple(config.data.canvas_size)
    loader = configured(detection_train_loader, {}, "data", prepared=prepared,
                        global_batch_size=config.train.batch_size, seed=config.seed, canvas_size=canvas,
                        max_boxes=config.data.max_boxes, flip=config.data.augment.flip,
                        zoom=tuple(config.data.augment.zoom),
                        worker_count=config.data.worker_count, max_pixels=config.data.max_pixels,
                        read_options=data_read_options(config.data))
    objective = functools.partial(detector_objective, loss_settings=loss_settings, seed=config.seed)
    return Task(model, canvas, objective, loader, "images", ("rpn_class_loss", "rpn_box_loss", "head_class_loss",
                                                              "head_box_loss"))


class Detector:
    """A trained detector as a box source: batches of canvases or single images -> person boxes in image pixels.

    Args:
      model, variables: a `FasterRCNN` and its variables.
      canvas_size: (height, width) every image is resized and padded to (`config.data.canvas_size`).
      settings: score threshold, NMS and the number of boxes per image.
      batch_size: images per network call (global, all devices).
      mesh: devices to run on (default: all).
    """

    def __init__(self, model: FasterRCNN, variables: Any, canvas_size: tuple[int, int],
                 settings: DetectionSettings = DetectionSettings(), batch_size: int = 8,
                 mesh: jax.sharding.Mesh | None = None):
        self.model, self.canvas_size, self.settings = model, tuple(canvas_size), settings
        self.mesh = mesh or sharding.make_mesh()
        if batch_size < 1 or batch_size % self.mesh.size:
            raise ValueError(f"batch size {batch_size} is not a positive multiple of the {self.mesh.size} devices")
        self.batch_size = batch_size
        replicated = sharding.replicated(self.mesh)
        self.variables = jax.device_put(variables, replicated)
        decode = functools.partial(detect, **dataclasses.asdict(settings))

        def infer(variables: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
            outputs = model.apply(variables, batch["image"], batch["image_size"], train=False)
            boxes, scores, valid = jax.vmap(decode)(outputs["class_logits"], outputs["box_deltas"], outputs["rois"],
                                                    outputs["roi_valid"], batch["image_size"])
            return {"boxes": boxes, "scores": scores, "valid": valid}

        self._step = jax.jit(infer, in_shardings=(replicated, sharding.batch_sharded(self.mesh)),
                             out_shardings=replicated)

    @classmethod
    def from_workdir(cls, workdir: str, step: int | None = None, **options: Any) -> Detector:
        """The detector trained in `workdir` (its saved config and newest checkpoint, or `step`)."""
        directory = os.path.join(resolve_workdir(workdir), "checkpoints")
        try:
            config, _ = checkpoints.read_config(directory)
        except FileNotFoundError:
            raise DataError(f"{directory}: no detector checkpoint (train one with a detector config, e.g. "
                            f"configs/detector_demo.py --workdir={workdir})") from None
        if config.get("task", "keypoints") != "detection":
            raise ConfigError(f"{workdir} holds a {config.get('task', 'keypoints')} model, not a person detector")
        model = build_model(config)
        canvas = tuple(config.data.canvas_size)
        try:
            variables, _ = checkpoints.restore_model_variables(directory, model, canvas, step)
        except FileNotFoundError:
            raise DataError(f"{directory}: no detector checkpoint") from None
        options.setdefault("settings", configured(DetectionSettings, config.inference, "inference"))
        return cls(model, variables, canvas, **options)

    def boxes_in_batch(self, batch: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """(image_id, boxes (n, 5) as x, y, width, height, score in image pixels) per valid image of a batch of
        canvases (`detection_eval_loader`'s fields: `image`, `image_size`, `scale`, `image_id`, `valid`)."""
        fields = {key: batch[key] for key in ("image", "image_size")}
        out = jax.device_get(self._step(self.variables, sharding.global_batch(fields, self.mesh)))
        results = []
        for row in np.nonzero(np.asarray(batch.get("valid", np.ones(len(batch["image"]), bool))))[0]:
            keep = out["valid"][row]
            corners = canvas_to_image(np.asarray(out["boxes"][row][keep], np.float64), float(batch["scale"][row]))
            xywh = np.column_stack([corners[:, :2], corners[:, 2:] - corners[:, :2], out["scores"][row][keep]])
            results.append((int(batch["image_id"][row]), xywh))
        return results

    def run(self, batches: Iterable[dict[str, np.ndarray]]) -> list[Detection]:
        """Every image's boxes over `batches`, as COCO-style detections (xywh in image pixels)."""
        return [Detection(image_id, tuple(map(float, box[:4])), float(box[4]))
                for batch in batches for image_id, boxes in self.boxes_in_batch(batch) for box in boxes]

    def dataset_detections(self, prepared: PreparedDataset, worker_count: int = 0,
                           max_pixels: int | None = None,
                           read_options: grain.ReadOptions | None = None) -> list[Detection]:
        """The boxes of every image of a prepared split (one pass of the evaluation loader)."""
        options = {} if max_pixels is None else {"max_pixels": max_pixels}
        loader, _ = detection_eval_loader(prepared, self.batch_size, canvas_size=self.canvas_size, max_boxes=1,
                                          worker_count=worker_count, read_options=read_options, **options)
        batches = iter(loader)
        try:
            return self.run(batches)
        finally:
            close_loader(batches)

    def __call__(self, image: bytes | np.ndarray) -> np.ndarray:
        """Person boxes (N, 5) as (x, y, width, height, score) in image pixels, best first: an `hvpose` box
        source. `image` is encoded bytes or an RGB uint8 array."""
        canvas, size, scale = prepare_image(image, self.canvas_size)
        batch = {"image": np.zeros((self.batch_size, *canvas.shape), np.uint8),
                 "image_size": np.zeros((self.batch_size, 2), np.int32),
                 "scale": np.ones(self.batch_size, np.float32), "image_id": np.zeros(self.batch_size, np.int64),
                 "valid": np.zeros(self.batch_size, bool)}
        batch["image"][0], batch["image_size"][0], batch["scale"][0], batch["valid"][0] = canvas, size, scale, True
        (_, boxes), = self.boxes_in_batch(batch)
        return boxes[np.argsort(-boxes[:, 4], kind="stable")]


def to_coco_detections(detections: Iterable[Detection], category_id: int) -> list[dict[str, Any]]:
    """COCO detection results: {image_id, category_id, bbox [x, y, w, h], score} per box."""
    return [{"image_id": int(d.image_id), "category_id": category_id,
             "bbox": [round(float(v), 2) for v in d.bbox], "score": round(float(d.score), 5)} for d in detections]


def coco_box_evaluate(ground_truth: dict[str, Any], results: list[dict[str, Any]], verbose: bool = True
                      ) -> dict[str, float]:
    """pycocotools COCOeval `bbox` of `results` against a COCO-format dict (its person category)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:  # loadRes([]) fails; no boxes is AP 0
        return dict.fromkeys(BOX_STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if verbose and jax.process_index() == 0:
        print(summary.getvalue(), end="")
    return {name: float(value) for name, value in zip(BOX_STAT_NAMES, evaluator.stats, strict=True)}


def draw_detections(prepared: PreparedDataset, detections: list[Detection], count: int, threshold: float
                    ) -> np.ndarray | None:
    """The first `count` images with their boxes scoring above `threshold`, in a grid."""
    image_ids = list(prepared.image_ids)[:count]
    if not image_ids:
        return None
    records = prepared.record_index()
    pictures = []
    for image_id in image_ids:
        image = decode_image(prepared.source[records[image_id]]["image"])
        shown = [d for d in detections if d.image_id == image_id and d.score > threshold]
        pictures.append(visualize.draw_boxes(image, [d.bbox for d in shown], [f"{d.score:.2f}" for d in shown]))
    return visualize.grid(pictures)


def evaluate_detector(config: ml_collections.ConfigDict, workdir: str, variables: Any, step: int,
                      prepared: PreparedDataset | None = None) -> dict[str, float]:
    """Runs the detector over the validation split; writes WORKDIR/eval/{metrics,detections}.json and a picture."""
    workdir = resolve_workdir(workdir)
    prepared = prepared or prepare_split(config.data, "val", workdir, config.seed)
    if config.eval.batch_size % jax.device_count():
        raise ConfigError(f"config.eval.batch_size {config.eval.batch_size} is not divisible by the "
                          f"{jax.device_count()} devices")
    detector = Detector(build_model(config), variables, tuple(config.data.canvas_size),
                        configured(DetectionSettings, config.inference, "inference"), config.eval.batch_size)
    detections = detector.dataset_detections(prepared, config.data.worker_count, config.data.max_pixels,
                                             data_read_options(config.data))
    results = to_coco_detections(detections, prepared.dataset.category_id)
    stats = coco_box_evaluate(prepared.dataset.raw, results)
    stats["step"] = int(step)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "eval")
        epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
        dump(os.path.join(out_dir, "metrics.json"), stats)
        dump(os.path.join(out_dir, "detections.json"), results)
        picture = draw_detections(prepared, detections, config.eval.num_pictures, config.eval.draw_threshold)
        if picture is not None:
            visualize.save_png(os.path.join(out_dir, "predictions.png"), picture)
        log.warning("hvpose: step %d: person box AP %.4f (AP50 %.4f, AR %.4f) on %d images; wrote %s", step,
                    stats["AP"], stats["AP50"], stats["AR"], len(prepared.image_ids), out_dir)
    return stats


def evaluate_detector_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval` of a detector config: the newest checkpoint under WORKDIR/checkpoints."""
    workdir = resolve_workdir(workdir)
    model = build_model(config)
    directory = os.path.join(workdir, "checkpoints")
    try:
        variables, step = checkpoints.restore_model_variables(directory, model, tuple(config.data.canvas_size))
    except FileNotFoundError:
        raise DataError(f"{directory}: no checkpoint to evaluate (train first, or use --mode=train_and_eval)") \
            from None
    return evaluate_detector(config, workdir, variables, step)


__all__ = ["BOX_STAT_NAMES", "DetectionSettings", "Detector", "build_model", "coco_box_evaluate",
           "detector_objective", "draw_detections", "evaluate_detector", "evaluate_detector_checkpoint",
           "to_coco_detections", "training_task"]
