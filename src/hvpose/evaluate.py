"""Evaluation: crops from boxes, batched jitted inference (optionally with the flip test), Hough voting,
mapping back to the image, instance rescoring, OKS-NMS and COCOeval.

Writes WORKDIR/eval/metrics.json (AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl, step),
WORKDIR/eval/results.json (COCO keypoint results) and WORKDIR/eval/predictions.png (a few images, drawn).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath
import numpy as np

from hvpose import experiment, visualize
from hvpose.data.coco import DataError, Detection, load_detections
from hvpose.data.images import decode_image
from hvpose.data.pipeline import eval_loader, global_batch, gt_boxes
from hvpose.data.tfds_coco import PreparedDataset
from hvpose.keypoints import KeypointSet
from hvpose.metrics import dump
from hvpose.ops.flip import flip_back
from hvpose.ops.nms import oks_nms
from hvpose.ops.voting import argmax_keypoints, decode_argmax_offset_jnp, vote_maps

log = logging.getLogger(__name__)
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


DECODERS = ("hough", "argmax_offset")


def model_for_decoder(model: Any, decoder: str) -> Any:
    """`model` with maps on its own feature grid when `decoder` is argmax + offset: the argmax of bilinearly
    upsampled maps falls on a grid cell anyway, with that cell's offset, so upsampling would be wasted work."""
    return model.clone(map_stride=model.output_stride) if decoder == "argmax_offset" else model


def make_inference(model: Any, preprocess_mode: str, flip_permutation: np.ndarray | None,
                   radius: float, decoder: str = "hough") -> Any:
    """A pure function (variables, uint8 crops) -> (B, K, 3) keypoints (x, y, score) in crop pixels.

    `model` is a `PoseNet` or a `MobileNetPoseNet` (same outputs); `decoder` is "hough" (the paper's voting)
    or "argmax_offset" (the heatmap's argmax plus its offset, the no-voting baseline).
    """
    if decoder not in DECODERS:
        raise experiment.ConfigError(f"config.eval.decoder: {decoder!r} is not one of {list(DECODERS)}")
    # Maps on a coarser grid than the crop (map_stride > 1) suit argmax + offset only: voting needs every pixel.
    stride = getattr(model, "map_stride", 1)
    if stride != 1 and decoder == "hough":
        raise experiment.ConfigError(f"Hough voting needs full-resolution maps; the model has map_stride {stride}")
    permutation = None if flip_permutation is None else jnp.asarray(flip_permutation)

    def infer(variables: Any, images: jax.Array) -> jax.Array:
        crops = experiment.preprocess(images, preprocess_mode)
        outputs = model.apply(variables, crops, train=False)
        heatmaps, offsets = jax.nn.sigmoid(outputs["heatmap_logits"]), outputs["offsets"]
        if permutation is not None:
            flipped = model.apply(variables, crops[:, :, ::-1], train=False)
            heatmaps_f, offsets_f = flip_back(jax.nn.sigmoid(flipped["heatmap_logits"]), flipped["offsets"],
                                              permutation)
            heatmaps, offsets = (heatmaps + heatmaps_f) / 2, (offsets + offsets_f) / 2
        if decoder == "argmax_offset":
            return decode_argmax_offset_jnp(heatmaps, offsets, stride)
        return argmax_keypoints(vote_maps(heatmaps, offsets, jnp.float32(radius)))

    return infer


def to_image(keypoints: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """(B, K, 3) crop keypoints -> image keypoints through each crop's (2, 3) matrix; scores kept."""
    points = np.einsum("bij,bkj->bki", crop_to_image[:, :, :2].astype(np.float64), keypoints[..., :2]) \
        + crop_to_image[:, None, :, 2]
    return np.concatenate([points, keypoints[..., 2:]], axis=-1)


def instance_score(keypoint_scores: np.ndarray, box_score: float, threshold: float, use_box_score: bool) -> float:
    """Mean of the keypoint scores above `threshold` (0 if none), times the box score when enabled."""
    confident = keypoint_scores[keypoint_scores > threshold]
    score = float(confident.mean()) if confident.size else 0.0
    return score * box_score if use_box_score else score


def to_coco_results(people: Sequence[dict[str, Any]], category_id: int) -> list[dict[str, Any]]:
    return [{"image_id": int(p["image_id"]), "category_id": category_id,
             "keypoints": [round(float(v), 3) for v in np.column_stack([p["keypoints"][:, :2],
                                                                        np.ones(len(p["keypoints"]))]).reshape(-1)],
             "score": float(p["score"])} for p in people]


def coco_evaluate(ground_truth: dict[str, Any], results: list[dict[str, Any]], sigmas: Sequence[float],
                  image_ids: Sequence[int] | None = None, verbose: bool = True) -> dict[str, float]:
    """pycocotools COCOeval keypoint AP/AR of `results` against a COCO-format dict, with the set's sigmas."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(STAT_NAMES, 0.0)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes(results)
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
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def eval_boxes(config: ml_collections.ConfigDict, prepared: PreparedDataset) -> list[Detection]:
    boxes = config.data.val.boxes
    if boxes == "gt":
        selected = gt_boxes(prepared)
    elif boxes == "detector":
        raise experiment.ConfigError("config.data.val.boxes: 'detector' needs the stage-1 detector, not built yet")
    else:
        selected = load_detections(boxes, prepared.dataset, min_score=config.data.val.min_box_score)
    if config.eval.max_boxes:
        selected = selected[:config.eval.max_boxes]
    if not selected:
        raise DataError(f"{boxes}: no boxes to evaluate")
    return selected


def predict_split(config: ml_collections.ConfigDict, model: Any, variables: Any, prepared: PreparedDataset,
                  boxes: Sequence[Detection]) -> list[dict[str, Any]]:
    """People (image_id, keypoints (K, 3) in image pixels with scores, box, score) for every box, before NMS."""
    keypoint_set = prepared.dataset.keypoint_set
    crop = experiment.crop_size(config)
    mesh = experiment.make_mesh()
    infer = make_inference(model, config.model.preprocess,
                           keypoint_set.flip_permutation() if config.eval.flip_test else None,
                           config.eval.voting_radius, config.eval.decoder)
    if config.eval.batch_size % jax.device_count():
        raise experiment.ConfigError(f"config.eval.batch_size {config.eval.batch_size} is not divisible by the "
                                     f"{jax.device_count()} devices")
    with jax.set_mesh(mesh):
        replicated = experiment.replicated(mesh)
        variables = jax.device_put(variables, replicated)
        # Crops stay on their devices; keypoints and the small per-box fields are gathered to every host.
        step = jax.jit(lambda v, b: {**{k: x for k, x in b.items() if k != "image"},
                                     "keypoints": infer(v, b["image"])},
                       in_shardings=(replicated, experiment.batch_sharded(mesh)), out_shardings=replicated)
        loader, _ = eval_loader(prepared, boxes, config.eval.batch_size, crop_size=crop,
                                worker_count=config.data.worker_count, max_pixels=config.data.max_pixels)
        people = []
        for batch in loader:
            out = jax.device_get(step(variables, global_batch(batch, mesh)))
            image_keypoints = to_image(np.asarray(out["keypoints"], np.float64), out["crop_to_image"])
            for i in np.nonzero(out["valid"])[0]:
                people.append({"image_id": int(out["image_id"][i]), "keypoints": image_keypoints[i],
                               "box": out["bbox"][i].astype(np.float64), "box_score": float(out["score"][i])})
    for person in people:
        person["score"] = instance_score(person["keypoints"][:, 2], person["box_score"],
                                         config.eval.keypoint_threshold, config.eval.use_box_score)
    return people


def suppress(people: list[dict[str, Any]], sigmas: Sequence[float], threshold: float) -> list[dict[str, Any]]:
    """OKS-NMS within each image (box area as the object scale)."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for person in people:
        by_image.setdefault(person["image_id"], []).append(person)
    kept = []
    for group in by_image.values():
        keypoints = np.stack([p["keypoints"] for p in group])
        areas = np.array([max(p["box"][2] * p["box"][3], 1.0) for p in group])
        keep = oks_nms(keypoints, np.array([p["score"] for p in group]), areas, np.asarray(sigmas), threshold)
        kept.extend(group[i] for i in keep)
    return kept


def draw_predictions(prepared: PreparedDataset, people: list[dict[str, Any]], keypoint_set: KeypointSet,
                     count: int, threshold: float) -> np.ndarray | None:
    image_ids = list(dict.fromkeys(p["image_id"] for p in people))[:count]
    if not image_ids:
        return None
    records = prepared.record_index()
    pictures = []
    for image_id in image_ids:
        image = decode_image(prepared.source[records[image_id]]["image"])
        shown = [p for p in people if p["image_id"] == image_id]
        pictures.append(visualize.draw_people(image, [p["keypoints"] for p in shown], [p["box"] for p in shown],
                                              keypoint_set, threshold, [f"{p['score']:.2f}" for p in shown]))
    return visualize.grid(pictures)


def evaluate(config: ml_collections.ConfigDict, workdir: str, variables: Any, step: int,
             prepared: PreparedDataset | None = None, model: Any = None) -> dict[str, float]:
    """Runs the whole evaluation and writes WORKDIR/eval/{metrics.json, results.json, predictions.png}.

    `model` defaults to the config's network (`experiment.build_model`); imported networks (PoseNet) pass theirs.
    """
    workdir = experiment.resolve_workdir(workdir)
    prepared = prepared or experiment.prepare_split(config, "val", workdir)
    keypoint_set = prepared.dataset.keypoint_set
    if model is None:
        model = experiment.build_model(config, keypoint_set.num_keypoints)  # full-resolution maps for voting
    boxes = eval_boxes(config, prepared)
    people = predict_split(config, model, variables, prepared, boxes)
    people = suppress(people, keypoint_set.sigmas, config.eval.oks_nms_threshold)
    results = to_coco_results(people, prepared.dataset.category_id)
    image_ids = sorted({b.image_id for b in boxes}) if config.eval.max_boxes else None
    stats = coco_evaluate(prepared.dataset.raw, results, keypoint_set.sigmas, image_ids)
    stats["step"] = int(step)
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "eval")
        epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
        dump(os.path.join(out_dir, "metrics.json"), stats)
        dump(os.path.join(out_dir, "results.json"), results)
        picture = draw_predictions(prepared, people, keypoint_set, config.eval.num_pictures,
                                   config.eval.draw_threshold)
        if picture is not None:
            visualize.save_png(os.path.join(out_dir, "predictions.png"), picture)
        log.warning("hvpose: step %d: keypoint AP %.4f (AP50 %.4f, AR %.4f) on %d boxes; wrote %s", step,
                    stats["AP"], stats["AP50"], stats["AR"], len(boxes), out_dir)
    return stats


def evaluate_posenet(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval` with `config.init.posenet_tfjs`: evaluates PoseNet's released weights (no checkpoint)."""
    from hvpose.pretrained.posenet import load_posenet_tfjs

    model, variables = load_posenet_tfjs(config.init.posenet_tfjs)
    model = model_for_decoder(model, config.eval.decoder)
    if model.output_stride != config.model.output_stride:
        raise experiment.ConfigError(f"config.model.output_stride is {config.model.output_stride} but "
                                     f"{config.init.posenet_tfjs} has output stride {model.output_stride}")
    workdir = experiment.resolve_workdir(workdir)
    prepared = experiment.prepare_split(config, "val", workdir)
    if prepared.dataset.keypoint_set.num_keypoints != model.num_keypoints:
        raise experiment.ConfigError(f"{config.init.posenet_tfjs} predicts {model.num_keypoints} keypoints, the "
                                     f"dataset has {prepared.dataset.keypoint_set.num_keypoints}")
    return evaluate(config, workdir, variables, 0, prepared, model=model)


def restore_checkpoint_variables(config: ml_collections.ConfigDict, model: Any, directory: str,
                                 step: int | None = None) -> tuple[dict[str, Any], int]:
    """The model variables (`params`, `batch_stats`) of a checkpoint in `directory` (newest by default)."""
    from hvpose import checkpoints
    from hvpose.train import init_state, make_optimizer

    optimizer = make_optimizer(config)
    abstract = jax.eval_shape(lambda: init_state(model, optimizer, experiment.crop_size(config), config.seed))
    state, step = checkpoints.restore_variables(directory, abstract, step)
    return {"params": state.params, "batch_stats": state.batch_stats}, step


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """`--mode=eval`: evaluates the newest checkpoint under WORKDIR/checkpoints (or PoseNet's weights when
    `config.init.posenet_tfjs` is set)."""
    if config.init.posenet_tfjs:
        return evaluate_posenet(config, workdir)
    workdir = experiment.resolve_workdir(workdir)
    prepared = experiment.prepare_split(config, "val", workdir)
    model = experiment.build_model(config, prepared.dataset.keypoint_set.num_keypoints)
    directory = os.path.join(workdir, "checkpoints")
    try:
        variables, step = restore_checkpoint_variables(config, model, directory)
    except FileNotFoundError:
        raise DataError(f"{directory}: no checkpoint to evaluate (train first, or use --mode=train_and_eval)") \
            from None
    return evaluate(config, workdir, variables, step, prepared)
