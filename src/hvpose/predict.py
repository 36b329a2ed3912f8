"""`hvpose.Predictor`: image -> people, for notebooks and scripts; and the `python -m hvpose.predict` command.

    predictor = Predictor.from_checkpoint("gs://bucket/grmi-coco")       # a training workdir (or its checkpoints/)
    predictor = Predictor.from_checkpoint("gs://bucket/grmi-coco", detector="gs://bucket/grmi-detector")
    predictor = Predictor.from_posenet_tfjs("posenet/model-stride16.json")  # finds people with PoseNet's decoding
    people = predictor(image, boxes=[(x, y, w, h), ...])                   # or boxes=None: see `__call__`
    picture = predictor.draw(image, people)

    python -m hvpose.predict --weights=WORKDIR_OR_MODEL_JSON --image=PHOTO.jpg --out=PEOPLE.png \
        [--boxes=BOXES.json | --detector=DETECTOR_WORKDIR]

The Predictor is a thin front of `hvpose.inference.Pipeline`, the same code evaluation runs: on the same image
file and boxes both give the same people, keypoints and scores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from hvpose import visualize
from hvpose.data.images import decode_image, read_image_file
from hvpose.errors import ConfigError
from hvpose.inference import BoxSource, InferenceSettings, Pipeline, PredictedPerson, as_boxes
from hvpose.keypoints import COCO17, KeypointSet

# Google's PoseNet was trained with disks of radius 32 px (PersonLab) on 353x257-style inputs.
POSENET_RADIUS = 32.0


class Predictor:
    """A keypoint network with its pre- and post-processing, applied to whole images.

    Args:
      model, variables: a `KeypointNet` or `MobileNetPoseNet` and its variables (`{"params": ..., ...}`).
      keypoint_set: names, skeleton, flip pairs and OKS sigmas of the model's keypoints.
      crop_size: (height, width) of the crops the model takes (s*n+1 for output stride s).
      radius: the disk radius R the model was trained with (crop pixels).
      settings: flip test, decoder, instance scoring, OKS-NMS (`hvpose.inference.InferenceSettings`).
      batch_size: crops per network call; fewer boxes are padded up to it (rounded up to the device count).
      draw_threshold: keypoints scoring above are drawn by `draw`.
      draw_min_score: people whose instance score is below are left out of `draw`'s picture (not of the results):
        a detector's or PoseNet's weak guesses would otherwise cover the photo.
      box_source: finds the people when `__call__` gets no boxes: a callable image (H, W, 3) uint8 -> (N, 5)
        boxes (a person detector). Without one, the whole image is one box.
    """

    def __init__(self, model: Any, variables: Any, keypoint_set: KeypointSet = COCO17,
                 crop_size: tuple[int, int] = (353, 257), radius: float = 25.0,
                 settings: InferenceSettings = InferenceSettings(), batch_size: int = 8, draw_threshold: float = 0.3,
                 draw_min_score: float = 0.1, box_source: BoxSource | None = None):
        import jax

        devices = jax.device_count()
        batch_size = -(-max(int(batch_size), 1) // devices) * devices
        self.pipeline = Pipeline(model, variables, keypoint_set, crop_size, radius, settings, batch_size)
        self.keypoint_set, self.draw_threshold, self.box_source = keypoint_set, draw_threshold, box_source
        self.draw_min_score = float(draw_min_score)

    @classmethod
    def from_checkpoint(cls, path: str, step: int | None = None, detector: str | None = None,
                        **options: Any) -> Predictor:
        """A trained hvpose model: `path` is a training workdir or its `checkpoints/` folder (local or gs://).

        Reads the config and keypoint set saved beside the checkpoints (`config.inference` becomes the settings);
        `detector` is the workdir of a trained person detector (`hvpose.detector.Detector`), which then finds the
        people in photos given without boxes; `options` override the class arguments.
        """
        if detector is not None:
            from hvpose.detector import Detector

            options.setdefault("box_source", Detector.from_workdir(detector))
        from etils import epath

        from hvpose import checkpoints
        from hvpose.data.crops import check_crop_size
        from hvpose.models.keypoint_net import KeypointNet

        directory = epath.Path(path)
        if not (directory / checkpoints.CONFIG_FILE).exists() and (directory / "checkpoints").exists():
            directory = directory / "checkpoints"
        if not (directory / checkpoints.CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path}: no hvpose checkpoint folder ({checkpoints.CONFIG_FILE} not found)")
        config, keypoint_set = checkpoints.read_config(os.fspath(directory))
        if config.get("task", "keypoints") != "keypoints":
            raise ConfigError(f"{path} holds a person detector, not a keypoint network: give it as the detector "
                              "(--detector, or detector=) and a keypoint network's workdir as the weights")
        model = KeypointNet(num_keypoints=keypoint_set.num_keypoints, **config.model)
        crop = check_crop_size(**config.crop, output_stride=model.output_stride)
        variables, _ = checkpoints.restore_model_variables(os.fspath(directory), model, crop, step)
        settings = dict(keypoint_set=keypoint_set, crop_size=crop, radius=config.loss.radius,
                        settings=InferenceSettings(**config.inference), draw_threshold=config.eval.draw_threshold,
                        draw_min_score=config.eval.draw_min_score)
        return cls(model, variables, **{**settings, **options})

    @classmethod
    def from_posenet_tfjs(cls, model_json: str, **options: Any) -> Predictor:
        """Google's PoseNet weights (a TF.js graph model's model.json).

        Decodes with argmax + offset by default, which PoseNet's offsets were trained for (the README compares it
        with Hough voting on real data); scores all keypoints into the instance score. Photos given without boxes
        are searched for people by PoseNet's own multi-person decoding (`hvpose.posenet_people`), whose poses
        become the person boxes of the top-down pass; pass `box_source=None` for one whole-image box instead.
        """
        from hvpose.posenet_people import PoseNetPeople, posenet_box_source
        from hvpose.pretrained.posenet import load_posenet_tfjs

        model, variables = load_posenet_tfjs(model_json)
        settings = dict(crop_size=(353, 257), radius=POSENET_RADIUS,
                        settings=InferenceSettings(decoder="argmax_offset", keypoint_threshold=0.0))
        if "box_source" not in options:
            settings["box_source"] = posenet_box_source(PoseNetPeople(model, variables))
        settings.update(options)
        return cls(model, variables, **settings)

    def __call__(self, image: np.ndarray | str | os.PathLike[str],
                 boxes: Sequence[Sequence[float]] | np.ndarray | None = None) -> list[PredictedPerson]:
        """People in `image` (RGB uint8 (H, W, 3), or an image file), best first.

        `boxes`: (N, 4) person boxes (x, y, width, height), or (N, 5) with a detection score in [0, 1] last.
        None asks the predictor's `box_source` (a person detector); without one the whole image is one box, which
        suits a photo of one person only.

        An image file is decoded at the reduced size each crop needs, exactly as evaluation reads its images; an
        array is cropped at full resolution.
        """
        encoded = read_image_file(image) if isinstance(image, (str, os.PathLike)) else None
        pixels = None if encoded is not None else load_image(image)
        if boxes is None:
            if self.box_source is not None:
                boxes = self.box_source(decode_image(encoded) if pixels is None else pixels)
            else:
                height, width = pixels.shape[:2] if pixels is not None else _image_size(encoded)
                boxes = [[0.0, 0.0, float(width), float(height), 1.0]]
        return self.pipeline.predict_image(encoded if encoded is not None else pixels, as_boxes(boxes))

    def draw(self, image: np.ndarray | str | os.PathLike[str], people: Sequence[PredictedPerson],
             threshold: float | None = None, min_score: float | None = None) -> np.ndarray:
        """`image` with the skeletons and boxes of the people scoring at least `min_score` (default: the
        predictor's `draw_min_score`) drawn (left limbs warm, right limbs cool), keypoints scoring above
        `threshold` (default: the predictor's `draw_threshold`), each person labelled with its instance score."""
        threshold = self.draw_threshold if threshold is None else threshold
        shown = self.drawn(people, min_score)
        return visualize.draw_people(load_image(image), [p.keypoints for p in shown], [p.box for p in shown],
                                     self.keypoint_set, threshold, [f"{p.score:.2f}" for p in shown])

    def drawn(self, people: Sequence[PredictedPerson], min_score: float | None = None) -> list[PredictedPerson]:
        """The people `draw` shows: those scoring at least `min_score` (default: the predictor's
        `draw_min_score`)."""
        min_score = self.draw_min_score if min_score is None else min_score
        return [person for person in people if person.score >= min_score]


def _image_size(encoded: bytes) -> tuple[int, int]:
    from hvpose.data.images import image_size

    width, height = image_size(encoded)
    return height, width


def load_image(image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
    """RGB uint8 (H, W, 3) from an array (passed through) or an image file."""
    if isinstance(image, (str, os.PathLike)):
        return decode_image(read_image_file(image))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


def read_boxes(path: str, image_id: int | None = None) -> np.ndarray:
    """(N, 5) boxes from a JSON list of [x, y, w, h(, score)] or of COCO detection results ({bbox, score, ...})."""
    with open(path) as file:
        entries = json.load(file)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of boxes")
    if entries and isinstance(entries[0], dict):
        ids = {entry.get("image_id") for entry in entries}
        if image_id is not None:
            entries = [entry for entry in entries if entry.get("image_id") == image_id]
        elif len(ids) > 1:
            raise ValueError(f"{path}: boxes of {len(ids)} images; choose one with --image_id")
        entries = [[*entry["bbox"], entry.get("score", 1.0)] for entry in entries]
    if any(not isinstance(entry, list) or len(entry) not in (4, 5) for entry in entries):
        raise ValueError(f"{path}: each box must be [x, y, w, h] or [x, y, w, h, score]")
    boxes = [list(map(float, entry)) + [1.0] * (5 - len(entry)) for entry in entries]
    try:
        return as_boxes(np.asarray(boxes, np.float64).reshape(-1, 5))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def load_predictor(weights: str, detector: str | None = None) -> Predictor:
    """The predictor the commands use: a PoseNet TF.js model.json, or an hvpose training workdir; `detector` (a
    trained person detector's workdir) finds the people in photos given without boxes."""
    if weights.endswith(".json"):
        if detector is None:
            return Predictor.from_posenet_tfjs(weights)
        from hvpose.detector import Detector

        return Predictor.from_posenet_tfjs(weights, box_source=Detector.from_workdir(detector))
    return Predictor.from_checkpoint(weights, detector=detector)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hvpose.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True,
                        help="a training workdir (or its checkpoints/ folder), or a PoseNet TF.js model.json")
    parser.add_argument("--image", required=True, help="an image file")
    parser.add_argument("--out", required=True, help="where to write the picture (PNG)")
    parser.add_argument("--boxes", help="JSON: [[x, y, w, h(, score)], ...] or COCO detection results")
    parser.add_argument("--image_id", type=int, help="with COCO detection results: the image's id")
    parser.add_argument("--min_box_score", type=float, default=0.0, help="drop boxes scoring below")
    parser.add_argument("--detector", help="without --boxes: a trained person detector's workdir finds the people "
                        "(PoseNet weights find them with PoseNet's own decoding)")
    parser.add_argument("--draw_min_score", type=float, default=None,
                        help="people scoring below are left out of the picture, not of the printed results "
                        "(default: the checkpoint's config.eval.draw_min_score; 0.1 for PoseNet)")
    args = parser.parse_args(argv)
    from hvpose.allocator import reuse_freed_memory
    from hvpose.errors import USER_ERRORS

    try:
        reuse_freed_memory()  # before JAX runs: CPU inference reuses pages instead of faulting in new ones
        predictor = load_predictor(args.weights, args.detector)
        boxes = None
        if args.boxes:
            try:
                boxes = read_boxes(args.boxes, args.image_id)
            except (KeyError, TypeError) as error:  # a boxes file of the wrong shape
                raise ValueError(f"{args.boxes}: not a list of boxes or detections ({error!r})") from None
            boxes = boxes[boxes[:, 4] >= args.min_box_score]
        people = predictor(args.image, boxes)
        min_score = predictor.draw_min_score if args.draw_min_score is None else args.draw_min_score
        visualize.save_png(args.out, predictor.draw(args.image, people, min_score=min_score))
    except (OSError, ValueError, *USER_ERRORS) as error:
        print(f"hvpose: error: {error}", file=sys.stderr)
        return 1
    for person in people:
        print(json.dumps({"box": [round(v, 1) for v in person.box], "score": round(person.score, 4),
                          "keypoints": np.round(person.keypoints, 2).tolist()}))
    drawn = len(predictor.drawn(people, min_score))
    print(f"hvpose: {len(people)} people, {drawn} drawn (instance score >= {min_score:g}); wrote {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
