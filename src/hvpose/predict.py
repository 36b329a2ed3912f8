"""`hvpose.Predictor`: image -> people, for notebooks and scripts; and the `python -m hvpose.predict` command.

    predictor = Predictor.from_checkpoint("gs://bucket/grmi-coco")       # a training workdir (or its checkpoints/)
    predictor = Predictor.from_posenet_tfjs("posenet/model-stride16.json")
    people = predictor(image, boxes=[(x, y, w, h), ...])                   # or boxes=None: the whole image
    picture = predictor.draw(image, people)

    python -m hvpose.predict --weights=WORKDIR_OR_MODEL_JSON --image=PHOTO.jpg --out=PEOPLE.png [--boxes=BOXES.json]

Each box is cropped exactly as in evaluation (extended to the crop's aspect ratio, enlarged 1.25x), the crops go
through the network in fixed-size batches (padded, so the jitted function compiles once per batch size), then
the flip test, Hough voting and decoding, mapping back to the image, instance scoring and OKS-NMS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hvpose import evaluate, visualize
from hvpose.data.crops import CropGeometry, crop_transform, extend_box, invert_transform, warp
from hvpose.data.images import decode_image, read_image_file
from hvpose.keypoints import COCO17, KeypointSet
from hvpose.ops.nms import oks_nms


@dataclasses.dataclass(frozen=True)
class Person:
    """One predicted person in image pixels."""

    box: tuple[float, float, float, float]  # the input box (x, y, width, height)
    score: float  # instance score (keypoint scores, times the box score when enabled)
    keypoints: np.ndarray  # (K, 3): x, y, score


class Predictor:
    """A keypoint network with its pre- and post-processing, applied to whole images.

    Args:
      model, variables: a `PoseNet` or `MobileNetPoseNet` and its variables (`{"params": ..., "batch_stats": ...}`).
      keypoint_set: names, skeleton, flip pairs and OKS sigmas of the model's keypoints.
      crop_size: (height, width) of the crops the model takes (s*n+1 for output stride s).
      preprocess: "caffe", "unit" or "torchvision" (see `hvpose.experiment.preprocess`).
      flip_test: average with the mirrored crop.
      voting_radius: R of the 1/(pi R^2) vote normalisation (crop pixels).
      decoder: "hough" or "argmax_offset".
      keypoint_threshold, use_box_score: instance scoring (`hvpose.evaluate.instance_score`).
      oks_nms_threshold: OKS above which a lower-scoring duplicate is dropped.
      batch_size: crops per network call; fewer boxes are padded up to it.
      enlarge: box enlargement before cropping (evaluation uses 1.25).
      draw_threshold: keypoints scoring above are drawn by `draw`.
    """

    def __init__(self, model: Any, variables: Any, keypoint_set: KeypointSet = COCO17,
                 crop_size: tuple[int, int] = (353, 257), preprocess: str = "caffe", flip_test: bool = True,
                 voting_radius: float = 25.0, decoder: str = "hough", keypoint_threshold: float = 0.2,
                 use_box_score: bool = True, oks_nms_threshold: float = 0.9, batch_size: int = 8,
                 enlarge: float = 1.25, draw_threshold: float = 0.05):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        stride = model.output_stride
        if (crop_size[0] - 1) % stride or (crop_size[1] - 1) % stride:
            raise ValueError(f"crop_size {tuple(crop_size)} must be of the form {stride}n+1 for the model's output "
                             "stride (feature cells on crop pixels; exact flip test)")
        self.model, self.keypoint_set = model, keypoint_set
        self.crop_size = tuple(int(n) for n in crop_size)
        self.keypoint_threshold, self.use_box_score = keypoint_threshold, use_box_score
        self.oks_nms_threshold, self.batch_size, self.enlarge = oks_nms_threshold, batch_size, enlarge
        self.draw_threshold, self.decoder = draw_threshold, decoder
        self.variables = jax.device_put(variables)
        infer = evaluate.make_inference(model, preprocess, keypoint_set.flip_permutation() if flip_test else None,
                                        voting_radius, decoder)
        self._infer = jax.jit(infer)

    @classmethod
    def from_checkpoint(cls, path: str, step: int | None = None, **options: Any) -> "Predictor":
        """A trained hvpose model: `path` is a training workdir or its `checkpoints/` folder (local or gs://).

        Reads the config and keypoint set saved beside the checkpoints; `options` override the config's
        evaluation settings (see the class arguments).
        """
        from etils import epath

        from hvpose import checkpoints, experiment

        directory = epath.Path(path)
        if not (directory / checkpoints.CONFIG_FILE).exists() and (directory / "checkpoints").exists():
            directory = directory / "checkpoints"
        if not (directory / checkpoints.CONFIG_FILE).exists():
            raise FileNotFoundError(f"{path}: no hvpose checkpoint folder ({checkpoints.CONFIG_FILE} not found)")
        config, keypoint_set = checkpoints.read_config(os.fspath(directory))
        model = experiment.build_model(config, keypoint_set.num_keypoints)
        variables, _ = evaluate.restore_checkpoint_variables(config, model, os.fspath(directory), step)
        settings = dict(keypoint_set=keypoint_set, crop_size=experiment.crop_size(config),
                        preprocess=config.model.preprocess, flip_test=config.eval.flip_test,
                        voting_radius=config.eval.voting_radius, decoder=config.eval.get("decoder", "hough"),
                        keypoint_threshold=config.eval.keypoint_threshold, use_box_score=config.eval.use_box_score,
                        oks_nms_threshold=config.eval.oks_nms_threshold, draw_threshold=config.eval.draw_threshold)
        return cls(model, variables, **{**settings, **options})

    @classmethod
    def from_posenet_tfjs(cls, model_json: str, **options: Any) -> "Predictor":
        """Google's PoseNet weights (a TF.js graph model's model.json).

        Decodes with argmax + offset by default, which PoseNet's offsets were trained for and which measured
        better than Hough voting with these weights and the flip test (keypoint AP 0.45 against 0.40 on the 12
        people of the real COCO sample with ground-truth boxes, 0.41 against 0.39 with detector boxes; see the
        README); its keypoint scores are then heatmap probabilities.
        """
        from hvpose.pretrained.posenet import load_posenet_tfjs

        settings = dict(crop_size=(353, 257), preprocess="unit", voting_radius=32.0, keypoint_threshold=0.0,
                        decoder="argmax_offset", draw_threshold=0.3)
        settings.update(options)
        model, variables = load_posenet_tfjs(model_json)
        return cls(evaluate.model_for_decoder(model, settings["decoder"]), variables, **settings)

    def __call__(self, image: np.ndarray | str | os.PathLike[str],
                 boxes: Sequence[Sequence[float]] | np.ndarray | None = None) -> list[Person]:
        """People in `image` (RGB uint8 (H, W, 3), or a file path), best first.

        `boxes`: (N, 4) person boxes (x, y, width, height), or (N, 5) with a detection score last; None uses the
        whole image (there is no person detector yet).
        """
        image = load_image(image)
        height, width = image.shape[:2]
        if boxes is None:
            boxes = np.array([[0.0, 0.0, width, height, 1.0]])
        boxes = np.asarray(boxes, np.float64).reshape(len(boxes), -1) if len(boxes) else np.zeros((0, 5))
        if boxes.shape[1] == 4:
            boxes = np.concatenate([boxes, np.ones((len(boxes), 1))], axis=1)
        if boxes.shape[1] != 5:
            raise ValueError(f"boxes must be (N, 4) or (N, 5), got shape {boxes.shape}")
        if not len(boxes):
            return []
        crops, crop_to_image = [], []
        for box in boxes:
            center, size = extend_box(box[:4], self.crop_size, self.enlarge)
            matrix = crop_transform(CropGeometry(center=center, size=size), self.crop_size)
            crops.append(warp(image, matrix, self.crop_size))
            crop_to_image.append(invert_transform(matrix))
        crops = np.stack(crops)
        keypoints = []
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *chunk.shape[1:]), np.uint8)
            padded[:len(chunk)] = chunk
            keypoints.append(np.asarray(self._infer(self.variables, jnp.asarray(padded)))[:len(chunk)])
        keypoints = evaluate.to_image(np.concatenate(keypoints).astype(np.float64), np.stack(crop_to_image))
        scores = np.array([evaluate.instance_score(k[:, 2], float(b[4]), self.keypoint_threshold,
                                                   self.use_box_score) for k, b in zip(keypoints, boxes)])
        areas = np.maximum(boxes[:, 2] * boxes[:, 3], 1.0)
        keep = oks_nms(keypoints, scores, areas, np.asarray(self.keypoint_set.sigmas), self.oks_nms_threshold)
        return [Person(box=tuple(float(v) for v in boxes[i, :4]), score=float(scores[i]), keypoints=keypoints[i])
                for i in keep]

    def draw(self, image: np.ndarray | str | os.PathLike[str], people: Sequence[Person],
             threshold: float | None = None) -> np.ndarray:
        """`image` with the people's skeletons and boxes drawn (left limbs warm, right limbs cool), keypoints
        scoring above `threshold` (default: the predictor's `draw_threshold`)."""
        threshold = self.draw_threshold if threshold is None else threshold
        return visualize.draw_people(load_image(image), [p.keypoints for p in people], [p.box for p in people],
                                     self.keypoint_set, threshold, [f"{p.score:.2f}" for p in people])


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
    boxes = [list(map(float, entry)) + [1.0] * (5 - len(entry)) for entry in entries]
    if any(len(box) != 5 for box in boxes):
        raise ValueError(f"{path}: each box must be [x, y, w, h] or [x, y, w, h, score]")
    return np.asarray(boxes, np.float64).reshape(-1, 5)


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
    args = parser.parse_args(argv)
    from hvpose.pretrained.keras_resnet import WeightFileError

    try:
        if args.weights.endswith(".json"):
            predictor = Predictor.from_posenet_tfjs(args.weights)
        else:
            predictor = Predictor.from_checkpoint(args.weights)
        boxes = None
        if args.boxes:
            boxes = read_boxes(args.boxes, args.image_id)
            boxes = boxes[boxes[:, 4] >= args.min_box_score]
        image = load_image(args.image)
        people = predictor(image, boxes)
        visualize.save_png(args.out, predictor.draw(image, people))
    except (OSError, ValueError, WeightFileError) as error:
        print(f"hvpose: error: {error}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as error:  # a boxes file of the wrong shape
        print(f"hvpose: error: {args.boxes}: not a list of boxes or detections ({error!r})", file=sys.stderr)
        return 1
    for person in people:
        print(json.dumps({"box": [round(v, 1) for v in person.box], "score": round(person.score, 4),
                          "keypoints": np.round(person.keypoints, 2).tolist()}))
    print(f"hvpose: {len(people)} people; wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
