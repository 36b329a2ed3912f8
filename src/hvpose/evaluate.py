"""Evaluation over a dataset: boxes from a box source, the inference pipeline (`hvpose.inference`), COCOeval.

Writes WORKDIR/eval/metrics.json (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl, step),
WORKDIR/eval/results.json (COCO keypoint results) and WORKDIR/eval/predictions.png (a few images, drawn).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from etils import epath

from hvpose import checkpoints, visualize
from hvpose.data.coco import Detection, load_detections
from hvpose.data.crops import check_crop_size
from hvpose.data.images import decode_image
from hvpose.data.pipeline import close_loader, data_read_options, eval_loader, gt_boxes
from hvpose.data.splits import prepare_split
from hvpose.data.tfds_coco import PreparedDataset
from hvpose.errors import ConfigError, DataError, configured
from hvpose.inference import BoxSource, InferenceSettings, Pipeline, PredictedPerson, as_boxes
from hvpose.keypoints import KeypointSet
from hvpose.metrics import dump
from hvpose.models.keypoint_net import KeypointNet
from hvpose.paths import resolve_workdir

log = logging.getLogger(__name__)
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def to_coco_results(people: Sequence[PredictedPerson], category_id: int) -> list[dict[str, Any]]:
    """COCO keypoint results: {image_id, category_id, keypoints [x, y, 1] * K, score} per person."""
    return [{"image_id": int(p.image_id), "category_id": category_id,
             "keypoints": [round(float(v), 3) for v in np.column_stack([p.keypoints[:, :2],
                                                                        np.ones(len(p.keypoints))]).reshape(-1)],
             "score": float(p.score)} for p in people]


def coco_evaluate(ground_truth: dict[str, Any], results: list[dict[str, Any]], sigmas: Sequence[float],
                  image_ids: Sequence[int] | None = None, verbose: bool = True) -> dict[str, float]:
    """pycocotools COCOeval keypoint AP/AR of `results` against a COCO-format dict, with the set's sigmas.

    `results` is left as it is (pycocotools' `loadRes` adds `area`, `id` and `bbox` to what it is given, so it
    gets a copy).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval(gt, dt, "keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, np.float64)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.summarize()
    if verbose and jax.process_index() == 0:
        print(summary.getvalue(), end="")
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}


def dataset_boxes(source: str | BoxSource, prepared: PreparedDataset, min_score: float = 0.0,
                  detector_workdir: str = "", worker_count: int = 0, posenet_tfjs: str = "",
                  max_pixels: int | None = None, read_options: grain.ReadOptions | None = None) -> list[Detection]:
    """The boxes to evaluate: "gt" (ground-truth persons with keypoints, score 1), "detector" (the person detector
    trained in `detector_workdir`, run over the split), "posenet" (the people PoseNet's own multi-person decoding
    finds with the weights of `posenet_tfjs`), a COCO detection-results json, or a box source called on every
    image of the split (image -> (N, 5) boxes as x, y, width, height, score). `worker_count`, `max_pixels` and
    `read_options` configure the detector's pass over the split (`config.data`'s)."""
    if callable(source):
        detections = []
        for record, image_id in enumerate(prepared.image_ids):
            for box in as_boxes(source(decode_image(prepared.source[record]["image"]))):
                if box[4] >= min_score:
                    detections.append(Detection(image_id, tuple(map(float, box[:4])), float(box[4])))
        return detections
    if source == "gt":
        return gt_boxes(prepared)
    if source == "detector":
        from hvpose.detector import Detector

        if not detector_workdir:
            raise ConfigError("config.data.val.boxes is 'detector' but config.data.val.detector_workdir is empty "
                              "(the workdir of a trained detector, e.g. one trained with configs/detector_demo.py)")
        detector = Detector.from_workdir(detector_workdir)
        return [d for d in detector.dataset_detections(prepared, worker_count, max_pixels, read_options)
                if d.score >= min_score]
    if source == "posenet":
        from hvpose.posenet_people import PoseNetPeople, posenet_box_source

        if not posenet_tfjs:
            raise ConfigError("config.data.val.boxes is 'posenet' but config.init.posenet_tfjs is empty (PoseNet's "
                              "TF.js model.json, whose own multi-person decoding finds the people)")
        return dataset_boxes(posenet_box_source(PoseNetPeople.from_tfjs(posenet_tfjs)), prepared, min_score)
    return load_detections(source, prepared.dataset, min_score=min_score)


def draw_predictions(prepared: PreparedDataset, people: list[PredictedPerson], keypoint_set: KeypointSet,
                     count: int, threshold: float, min_score: float = 0.0) -> np.ndarray | None:
    """The first `count` images with predictions, in a grid, each with its people scoring at least `min_score`
    drawn (keypoints scoring above `threshold`, each person labelled with its score)."""
    image_ids = list(dict.fromkeys(p.image_id for p in people))[:count]
    if not image_ids:
        return None
    records = prepared.record_index()
    pictures = []
    for image_id in image_ids:
        image = decode_image(prepared.source[records[image_id]]["image"])
        shown = [p for p in people if p.image_id == image_id and p.score >= min_score]
        pictures.append(visualize.draw_people(image, [p.keypoints for p in shown], [p.box for p in shown],
                                              keypoint_set, threshold, [f"{p.score:.2f}" for p in shown]))
    return visualize.grid(pictures)


def _detector_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`config.data.val.detector_workdir`, or WORKDIR/detector when empty (where `make demo` trains it)."""
    return config.data.val.get("detector_workdir", "") or os.path.join(workdir, "detector")


def _evaluate_boxes(config: ml_collections.ConfigDict, pipeline: Pipeline, prepared: PreparedDataset,
                    boxes: list[Detection], crop: tuple[int, int], source_name: str, verbose: bool = True
                    ) -> tuple[list[PredictedPerson], list[dict[str, Any]], dict[str, float]]:
    """People, COCO results and COCOeval stats of the keypoint network on `boxes` (the first
    `config.eval.max_boxes` of them when set, already cut by the caller)."""
    if not boxes:
        raise DataError(f"{source_name}: no boxes to evaluate")
    loader, _ = eval_loader(prepared, boxes, config.eval.batch_size, crop_size=crop,
                            worker_count=config.data.worker_count, max_pixels=config.data.max_pixels,
                            read_options=data_read_options(config.data))
    batches = iter(loader)
    try:
        people = pipeline.run(batches)
    finally:
        close_loader(batches)
    results = to_coco_results(people, prepared.dataset.category_id)
    image_ids = sorted({b.image_id for b in boxes}) if config.eval.max_boxes else None
    stats = coco_evaluate(prepared.dataset.raw, results, pipeline.keypoint_set.sigmas, image_ids, verbose=verbose)
    return people, results, stats


def evaluate(config: ml_collections.ConfigDict, workdir: str, variables: Any, step: int,
             prepared: PreparedDataset | None = None, model: Any = None, radius: float | None = None,
             box_source: str | BoxSource | None = None) -> dict[str, float]:
    """Runs the whole evaluation and writes WORKDIR/eval/{metrics.json, results.json, predictions.png}.

    `model` defaults to the config's network (`KeypointNet(**config.model)`); imported networks (PoseNet) pass
    theirs, and their `radius`. `box_source` defaults to `config.data.val.boxes`; a callable (image -> boxes) is
    the slot for a person detector.
    """
    workdir = resolve_workdir(workdir)
    prepared = prepared or prepare_split(config.data, "val", workdir, config.seed)
    keypoint_set = prepared.dataset.keypoint_set
    if model is None:
        model = configured(KeypointNet, config.model, "model", num_keypoints=keypoint_set.num_keypoints)
    crop = configured(check_crop_size, config.crop, "crop", output_stride=model.output_stride)
    settings = configured(InferenceSettings, config.inference, "inference")
    source = config.data.val.boxes if box_source is None else box_source
    boxes = dataset_boxes(source, prepared, config.data.val.min_box_score,
                          _detector_workdir(config, workdir) if source == "detector" else "", config.data.worker_count,
                          config.init.posenet_tfjs, config.data.max_pixels, data_read_options(config.data))
    if config.eval.batch_size % jax.device_count():
        raise ConfigError(f"config.eval.batch_size {config.eval.batch_size} is not divisible by the "
                          f"{jax.device_count()} devices")
    pipeline = Pipeline(model, variables, keypoint_set, crop, config.loss.radius if radius is None else radius,
                        settings, batch_size=config.eval.batch_size)
    if config.eval.max_boxes:
        boxes = boxes[:config.eval.max_boxes]
    people, results, stats = _evaluate_boxes(config, pipeline, prepared, boxes, crop,
                                             source if isinstance(source, str) else "the box source")
    if source in ("detector", "posenet") or callable(source):  # the same network on ground-truth boxes too, for
        # comparison: what the detected boxes cost
        ground_truth = gt_boxes(prepared)[:config.eval.max_boxes or None]
        _, _, gt_stats = _evaluate_boxes(config, pipeline, prepared, ground_truth, crop, "gt", verbose=False)
        stats.update({f"{name}_gt_boxes": value for name, value in gt_stats.items()})
    stats["step"] = int(step)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "eval")
        epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
        dump(os.path.join(out_dir, "metrics.json"), stats)
        dump(os.path.join(out_dir, "results.json"), results)
        picture = draw_predictions(prepared, people, keypoint_set, config.eval.num_pictures,
                                   config.eval.draw_threshold, config.eval.draw_min_score)
        if picture is not None:
            visualize.save_png(os.path.join(out_dir, "predictions.png"), picture)
        compared = f" (with ground-truth boxes: AP {stats['AP_gt_boxes']:.4f})" if "AP_gt_boxes" in stats else ""
        log.warning("hvpose: step %d: keypoint AP %.4f (AP50 %.4f, AR %.4f) on %d boxes%s; wrote %s", step,
                    stats["AP"], stats["AP50"], stats["AR"], len(boxes), compared, out_dir)
    return stats


def evaluate_posenet(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval` with `config.init.posenet_tfjs`: evaluates PoseNet's released weights (no checkpoint)."""
    from hvpose.pretrained.posenet import load_posenet_tfjs

    model, variables = load_posenet_tfjs(config.init.posenet_tfjs)
    if model.output_stride != config.model.output_stride:
        raise ConfigError(f"config.model.output_stride is {config.model.output_stride} but "
                          f"{config.init.posenet_tfjs} has output stride {model.output_stride}")
    workdir = resolve_workdir(workdir)
    prepared = prepare_split(config.data, "val", workdir, config.seed)
    if prepared.dataset.keypoint_set.num_keypoints != model.num_keypoints:
        raise ConfigError(f"{config.init.posenet_tfjs} predicts {model.num_keypoints} keypoints, the dataset has "
                          f"{prepared.dataset.keypoint_set.num_keypoints}")
    return evaluate(config, workdir, variables, 0, prepared, model=model)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: evaluates the newest checkpoint under WORKDIR/checkpoints (or PoseNet's weights when
    `config.init.posenet_tfjs` is set)."""
    if config.init.posenet_tfjs:
        return evaluate_posenet(config, workdir)
    workdir = resolve_workdir(workdir)
    prepared = prepare_split(config.data, "val", workdir, config.seed)
    model = configured(KeypointNet, config.model, "model", num_keypoints=prepared.dataset.keypoint_set.num_keypoints)
    crop = configured(check_crop_size, config.crop, "crop", output_stride=model.output_stride)
    directory = os.path.join(workdir, "checkpoints")
    try:
        variables, step = checkpoints.restore_model_variables(directory, model, crop)
    except FileNotFoundError:
        raise DataError(f"{directory}: no checkpoint to evaluate (train first, or use --mode=train_and_eval)") \
            from None
    return evaluate(config, workdir, variables, step, prepared, model=model)


__all__ = ["STAT_NAMES", "coco_evaluate", "dataset_boxes", "evaluate", "evaluate_checkpoint", "evaluate_posenet",
           "to_coco_results"]
