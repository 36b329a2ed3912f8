"""PoseNet's own multi-person decoding, and PoseNet on whole images as hvpose's person-box source.

PoseNet (PersonLab's production form) is bottom-up: one pass over the whole image gives keypoint heatmaps, short
offsets and mid-range displacement fields along a 16-edge skeleton tree; a greedy decoder groups them into people.
hvpose is top-down and needs person boxes; a real person detector is a separate network, while PoseNet, already
imported (`hvpose.pretrained.posenet`), finds the people itself. So this module:

  * `decode_multiple_poses`: tensorflow/tfjs-models' posenet `decodeMultiplePoses`, line for line in numpy
    (sequential, CPU work, as upstream): local heatmap maxima above `score_threshold` in a (2r+1)^2 window become
    root candidates in decreasing score; a root within `nms_radius` of the same keypoint of a pose already decoded
    is skipped; a kept root sits at grid * stride + short offset, and the other keypoints are reached along the tree
    (backward displacements towards the nose first, then forward ones towards the limbs), each hop refined by
    `refine_steps` short offsets read at the nearest grid cell; a pose scores the mean over all keypoints of the
    scores of those not within `nms_radius` of the same keypoint of an earlier pose (`getInstanceScore`).
  * `PoseNetPeople`: hvpose's imported PoseNet on a whole image (resized so its longest side is `input_size`,
    padded to s*n+1) decoded as above, keypoints mapped back to image pixels.
  * `pose_boxes` / `posenet_box_source`: each pose's person box, an hvpose `BoxSource` for the top-down stage.

Channel layouts are PoseNet's own: short offsets (h, w, 2K) are K y channels then K x channels, displacement fields
(h, w, 2E) are E y channels then E x channels, edge e of both fields being `POSE_CHAIN[e]` (forward: parent ->
child, backward: child -> parent). Coral's uint8 TFLite PoseNet concatenates them as `float_mid_offsets`
(h, w, 4E): forward then backward (its graph concatenates `displacement_fwd_2`, then `displacement_bwd_2`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from hvpose.inference import BoxSource
from hvpose.keypoints import COCO17

# tfjs-models posenet's POSE_CHAIN (keypoints.ts): the skeleton tree rooted at the nose, as (parent, child) ids;
# edge e of the displacement fields belongs to POSE_CHAIN[e].
_NAMES = {name: index for index, name in enumerate(COCO17.names)}
POSE_CHAIN: tuple[tuple[int, int], ...] = tuple((_NAMES[a], _NAMES[b]) for a, b in (
    ("nose", "left_eye"), ("left_eye", "left_ear"), ("nose", "right_eye"), ("right_eye", "right_ear"),
    ("nose", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("left_shoulder", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("nose", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("right_shoulder", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle")))
NUM_KEYPOINTS = len(COCO17.names)


@dataclasses.dataclass(frozen=True)
class Pose:
    """One person found bottom-up: keypoints (K, 3) as x, y, heatmap probability, and the pose score in [0, 1]."""

    keypoints: np.ndarray
    score: float


def _local_maxima(scores: np.ndarray, threshold: float, radius: int) -> np.ndarray:
    """(N, 3) (y, x, k) of cells scoring >= threshold that no cell in their (2r+1)^2 window (clipped to the map)
    beats, as tfjs's `buildPartWithScoreQueue` (ties with a neighbour keep both)."""
    height, width, _ = scores.shape
    padded = np.pad(scores, ((radius, radius), (radius, radius), (0, 0)), constant_values=-np.inf)
    window_max = np.full_like(scores, -np.inf)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window_max = np.maximum(window_max, padded[dy:dy + height, dx:dx + width])
    return np.argwhere((scores >= threshold) & (scores >= window_max))


class _Decoder:
    """The maps of one image and tfjs's per-pose steps (`decodePose`, `traverseToTargetKeypoint`)."""

    def __init__(self, scores: np.ndarray, offsets: np.ndarray, fwd: np.ndarray, bwd: np.ndarray, stride: int,
                 refine_steps: int):
        self.scores, self.stride, self.refine_steps = scores, float(stride), refine_steps
        self.height, self.width, k = scores.shape
        self.offsets = np.stack([offsets[..., :k], offsets[..., k:]], axis=-1)  # (h, w, K, 2) as (y, x)
        e = fwd.shape[-1] // 2
        self.fwd = np.stack([fwd[..., :e], fwd[..., e:]], axis=-1)  # (h, w, E, 2) as (y, x)
        self.bwd = np.stack([bwd[..., :e], bwd[..., e:]], axis=-1)

    def nearest_cell(self, point: np.ndarray) -> tuple[int, int]:
        """The grid cell nearest to an input-pixel point (y, x), clamped to the map (`getStridedIndexNearPoint`).
        Rounds half up, as JavaScript's Math.round."""
        y = min(max(int(np.floor(point[0] / self.stride + 0.5)), 0), self.height - 1)
        x = min(max(int(np.floor(point[1] / self.stride + 0.5)), 0), self.width - 1)
        return y, x

    def traverse(self, edge: int, source: np.ndarray, target: int, field: np.ndarray) -> tuple[np.ndarray, float]:
        """Follows displacement `edge` from `source` (y, x), then `refine_steps` short offsets of keypoint `target`,
        each read at the nearest cell; the target's score is the heatmap at the cell nearest to where it lands."""
        point = source + field[(*self.nearest_cell(source), edge)]
        for _ in range(self.refine_steps):
            cell = self.nearest_cell(point)
            point = np.asarray(cell, np.float64) * self.stride + self.offsets[(*cell, target)]
        return point, float(self.scores[(*self.nearest_cell(point), target)])

    def decode_pose(self, y: int, x: int, root: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, 2) positions (y, x) and (K,) scores of the pose grown from root keypoint `root` at cell (y, x)."""
        k = self.scores.shape[-1]
        points, scores = np.zeros((k, 2)), np.zeros(k)
        known = np.zeros(k, bool)
        points[root] = np.array([y, x], np.float64) * self.stride + self.offsets[y, x, root]
        scores[root], known[root] = self.scores[y, x, root], True
        # Towards the root of the tree along the backward displacements, from the last edge to the first ...
        for edge in range(len(POSE_CHAIN) - 1, -1, -1):
            parent, child = POSE_CHAIN[edge]
            if known[child] and not known[parent]:
                points[parent], scores[parent] = self.traverse(edge, points[child], parent, self.bwd)
                known[parent] = True
        # ... then out to the leaves along the forward ones, so every keypoint is reached exactly once.
        for edge, (parent, child) in enumerate(POSE_CHAIN):
            if known[parent] and not known[child]:
                points[child], scores[child] = self.traverse(edge, points[parent], child, self.fwd)
                known[child] = True
        return points, scores


def _within_radius(poses: Sequence[np.ndarray], points: np.ndarray, squared_radius: float) -> np.ndarray:
    """(K,) whether each of `points` (K, 2) lies within the radius of the same keypoint of any of `poses`."""
    if not poses:
        return np.zeros(len(points), bool)
    squared = ((np.stack(poses) - points[None]) ** 2).sum(axis=-1)  # (P, K)
    return (squared <= squared_radius).any(axis=0)


def decode_multiple_poses(heatmap_scores: np.ndarray, short_offsets: np.ndarray, displacements_fwd: np.ndarray,
                          displacements_bwd: np.ndarray, output_stride: int, max_poses: int = 10,
                          score_threshold: float = 0.5, nms_radius: float = 20.0, local_maximum_radius: int = 1,
                          refine_steps: int = 2) -> list[Pose]:
    """PoseNet's multi-person decoder (tfjs-models posenet `decodeMultiplePoses`); see the module docstring.

    Args:
      heatmap_scores: (h, w, K) keypoint probabilities (sigmoid of PoseNet's heatmap logits).
      short_offsets: (h, w, 2K), K y then K x, in input pixels.
      displacements_fwd, displacements_bwd: (h, w, 2E), E y then E x, in input pixels, edges as `POSE_CHAIN`.
      output_stride: input pixels per grid cell; cell (i, j) sits on input pixel (stride * i, stride * j).
      max_poses: at most this many poses.
      score_threshold: root candidates are local heatmap maxima scoring at least this.
      nms_radius: input pixels; a root this close to the same keypoint of an earlier pose is skipped, and keypoints
        this close to an earlier pose's count for nothing in the pose score.
      local_maximum_radius: r of the (2r+1)^2 local-maximum window (tfjs: 1).
      refine_steps: short-offset refinements after each displacement hop (tfjs: 2).

    Returns poses in decoding order (decreasing root score), keypoints (K, 3) as x, y, score in input pixels.
    """
    scores = np.asarray(heatmap_scores, np.float64)
    height, width, k = scores.shape
    for name, field, channels in (("short_offsets", short_offsets, 2 * k),
                                  ("displacements_fwd", displacements_fwd, 2 * len(POSE_CHAIN)),
                                  ("displacements_bwd", displacements_bwd, 2 * len(POSE_CHAIN))):
        if np.shape(field) != (height, width, channels):
            raise ValueError(f"{name} must be ({height}, {width}, {channels}), got {np.shape(field)}")
    if k != NUM_KEYPOINTS:
        raise ValueError(f"PoseNet's skeleton has {NUM_KEYPOINTS} keypoints, the heatmaps have {k}")
    decoder = _Decoder(scores, np.asarray(short_offsets, np.float64), np.asarray(displacements_fwd, np.float64),
                       np.asarray(displacements_bwd, np.float64), output_stride, refine_steps)
    candidates = _local_maxima(scores, score_threshold, local_maximum_radius)
    # Decreasing score; equal scores in raster order (tfjs's heap leaves their order unspecified).
    candidates = candidates[np.argsort(-scores[tuple(candidates.T)], kind="stable")]
    squared_radius = float(nms_radius) ** 2
    points_so_far: list[np.ndarray] = []
    poses: list[Pose] = []
    for y, x, root in candidates:
        if len(poses) >= max_poses:
            break
        root_point = np.array([y, x], np.float64) * decoder.stride + decoder.offsets[y, x, root]
        if points_so_far and _within_radius([p[root:root + 1] for p in points_so_far], root_point[None],
                                            squared_radius)[0]:
            continue
        points, keypoint_scores = decoder.decode_pose(int(y), int(x), int(root))
        claimed = _within_radius(points_so_far, points, squared_radius)
        score = float(np.where(claimed, 0.0, keypoint_scores).sum() / k)
        points_so_far.append(points)
        poses.append(Pose(np.column_stack([points[:, 1], points[:, 0], keypoint_scores]), score))
    return poses


class PoseNetPeople:
    """hvpose's imported PoseNet run on whole images and decoded bottom-up: `people(image) -> list[Pose]`.

    The image is resized (area-averaged when shrinking, bilinear when enlarging) so that its longer side is
    `input_size`, then zero-padded at the bottom and right to the next s*n+1 size (s the output stride), so grid cell
    (i, j) sits on input pixel (s*i, s*j) and the aspect ratio is kept. Keypoints come back in image pixels (pixel
    centres on integers, as everywhere in hvpose). The network is jitted once per padded input shape.

    Args:
      model, variables: a `MobileNetPoseNet` with displacement heads (`load_posenet_tfjs`) and its variables.
      input_size: the longer side of the network input, of the form s*n+1 (513 = 16 * 32 + 1).
      max_poses, score_threshold, nms_radius, local_maximum_radius, refine_steps: `decode_multiple_poses`'s;
        `nms_radius` is in network-input pixels, as in tfjs.
    """

    def __init__(self, model: Any, variables: Any, input_size: int = 513, max_poses: int = 10,
                 score_threshold: float = 0.5, nms_radius: float = 20.0, local_maximum_radius: int = 1,
                 refine_steps: int = 2):
        import jax

        stride = model.output_stride
        if input_size < stride + 1 or (input_size - 1) % stride:
            raise ValueError(f"input_size {input_size} must be of the form {stride}n+1 for output stride {stride}")
        if not model.num_edges:
            raise ValueError("PoseNet's multi-person decoding needs the displacement heads; this model has none")
        self.model = model.clone(map_stride=stride)  # maps on the feature grid, as PoseNet decodes them
        self.variables, self.input_size = jax.device_put(variables), int(input_size)  # moved to the device once
        self.decode_options = dict(max_poses=max_poses, score_threshold=score_threshold, nms_radius=nms_radius,
                                   local_maximum_radius=local_maximum_radius, refine_steps=refine_steps)
        self._apply = jax.jit(lambda v, images: self.model.apply(v, images, train=False))

    @classmethod
    def from_tfjs(cls, model_json: str | os.PathLike[str], **options: Any) -> PoseNetPeople:
        """Google's PoseNet weights from a TF.js graph model's model.json; `options` as the constructor's."""
        from hvpose.pretrained.posenet import load_posenet_tfjs

        model, variables = load_posenet_tfjs(model_json)
        return cls(model, variables, **options)

    def network_input(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """The padded uint8 network input for an RGB (H, W, 3) image, and the (x, y) scales input/image."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        scale = self.input_size / max(height, width)
        size = (max(1, min(self.input_size, round(width * scale))), max(1, min(self.input_size, round(height * scale))))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, size, interpolation=interpolation) if size != (width, height) else image
        stride = self.model.output_stride
        padded_shape = (-(-(size[1] - 1) // stride) * stride + 1, -(-(size[0] - 1) // stride) * stride + 1)
        padded = np.zeros((*padded_shape, 3), np.uint8)
        padded[:size[1], :size[0]] = resized
        return padded, (size[0] / width, size[1] / height)

    def maps(self, network_input: np.ndarray) -> dict[str, np.ndarray]:
        """PoseNet's maps of one network input in PoseNet's own layout (`decode_multiple_poses`'s arguments):
        heatmap_scores (h, w, K) probabilities, short_offsets (h, w, 2K), displacements_fwd/bwd (h, w, 2E)."""
        import jax

        out = jax.device_get(self._apply(self.variables, network_input[None]))

        def yx(field: np.ndarray) -> np.ndarray:  # hvpose's (x, y) pairs -> PoseNet's y block, then x block
            return np.concatenate([field[0, ..., 1], field[0, ..., 0]], axis=-1)

        return {"heatmap_scores": 1.0 / (1.0 + np.exp(-np.asarray(out["heatmap_logits"][0], np.float64))),
                "short_offsets": yx(out["offsets"]), "displacements_fwd": yx(out["displacement_fwd"]),
                "displacements_bwd": yx(out["displacement_bwd"])}

    def __call__(self, image: np.ndarray) -> list[Pose]:
        """The people in an RGB uint8 (H, W, 3) image, in decoding order, keypoints in image pixels."""
        network_input, (scale_x, scale_y) = self.network_input(image)
        poses = decode_multiple_poses(**self.maps(network_input), output_stride=self.model.output_stride,
                                      **self.decode_options)
        # Pixel centres: input pixel x covers image pixels around (x + 0.5) / scale - 0.5 (cv2.resize's mapping).
        back = np.array([1 / scale_x, 1 / scale_y])
        return [Pose(np.column_stack([(p.keypoints[:, :2] + 0.5) * back - 0.5, p.keypoints[:, 2]]), p.score)
                for p in poses]


def pose_boxes(poses: Sequence[Pose], image_size: tuple[int, int] | None = None, keypoint_threshold: float = 0.3,
               margin: float = 0.1, min_keypoints: int = 2, min_score: float = 0.0) -> np.ndarray:
    """Person boxes (N, 5) as x, y, width, height, score (hvpose's box layout) from bottom-up poses.

    A box is the extent of the pose's keypoints scoring above `keypoint_threshold`, enlarged on every side by
    `margin` times the extent's longer side, and clipped to the image (`image_size` = (height, width)). Why: a
    person's box reaches past their joints (the top of the head above the eyes and ears, hands past the wrists,
    feet past the ankles, the flesh around the limbs); on the ground truth of the COCO sample and of the
    cocoeval_regression image (19 people with 8+ labelled keypoints) the box extends past the labelled keypoints by a
    median 0.07 (left, right), 0.14 (top) and 0.10 (bottom) of their extent's longer side, hence 0.1. The longer side
    sets the scale so a thin extent (a standing person seen side on) still gets a body-wide margin. The top-down
    stage then extends each box to its crop's aspect ratio and enlarges it by 1.25 (`hvpose.data.crops`).

    The score is the pose score. Poses with fewer than `min_keypoints` keypoints above the threshold (no extent to
    speak of) or scoring below `min_score` give no box.
    """
    boxes = []
    for pose in poses:
        confident = pose.keypoints[pose.keypoints[:, 2] > keypoint_threshold, :2]
        if len(confident) < max(min_keypoints, 1) or pose.score < min_score:
            continue
        low, high = confident.min(axis=0), confident.max(axis=0)
        pad = margin * float((high - low).max())
        low, high = low - pad, high + pad
        if image_size is not None:
            limit = np.array([image_size[1] - 1, image_size[0] - 1], np.float64)
            low, high = np.clip(low, 0, limit), np.clip(high, 0, limit)
        boxes.append([low[0], low[1], high[0] - low[0], high[1] - low[1], min(max(pose.score, 0.0), 1.0)])
    return np.asarray(boxes, np.float64).reshape(-1, 5)


def posenet_box_source(people: PoseNetPeople, keypoint_threshold: float = 0.3, margin: float = 0.1,
                       min_keypoints: int = 2, min_score: float = 0.0) -> BoxSource:
    """An hvpose `BoxSource` (image (H, W, 3) uint8 -> (N, 5) x, y, width, height, score): PoseNet's people as
    person boxes (`pose_boxes`), for `hvpose.evaluate.evaluate(..., box_source=...)` or `Predictor(box_source=...)`."""

    def boxes(image: np.ndarray) -> np.ndarray:
        return pose_boxes(people(image), np.shape(image)[:2], keypoint_threshold, margin, min_keypoints, min_score)

    return boxes


__all__ = ["NUM_KEYPOINTS", "POSE_CHAIN", "Pose", "PoseNetPeople", "decode_multiple_poses", "pose_boxes",
           "posenet_box_source"]
