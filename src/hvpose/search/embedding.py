"""Pose embeddings for search: a person's keypoints as a unit vector plus per-keypoint weights.

Move Mirror's recipe (Google Creative Lab, 2018), for any keypoint set:
  1. translate the keypoints to the person box's top-left corner and divide by the box's larger side, so that
     where the person stands and how large they appear do not matter;
  2. keypoints whose confidence is below `threshold` are dropped: weight 0 and coordinates 0, so they add nothing
     to either distance (Move Mirror keeps them; PoseNet always places every keypoint somewhere, but ground truth
     and occluded keypoints have no place to keep);
  3. L2-normalise the 2K coordinates [x_0, y_0, x_1, y_1, ...] of the kept keypoints (unit vectors: cosine
     similarity is a dot product).
The weights are the kept keypoints' confidences (probabilities from the network, 1 for labelled ground truth).

Mirroring (`mirror_keypoints`) reflects x inside the box and swaps left and right through the keypoint set's
flip pairs, so that a pose matches its mirror image when search asks for it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_THRESHOLD = 0.1  # confidence below which a keypoint is dropped (a probability; 1 for labelled keypoints)


@dataclasses.dataclass(frozen=True)
class PoseEmbeddings:
    """N embedded poses of K keypoints."""

    vectors: np.ndarray  # (N, 2K) float32: unit L2 norm over the kept keypoints' (x, y), 0 for dropped ones
    weights: np.ndarray  # (N, K) float32: the kept keypoints' confidences, 0 for dropped ones

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.weights.ndim != 2 or self.vectors.shape != (len(self.weights),
                                                                                      2 * self.weights.shape[1]):
            raise ValueError(f"vectors (N, 2K) and weights (N, K) disagree: {self.vectors.shape} and "
                             f"{self.weights.shape}")

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def num_keypoints(self) -> int:
        return self.weights.shape[1]

    def take(self, rows: np.ndarray | slice) -> PoseEmbeddings:
        return PoseEmbeddings(self.vectors[rows], self.weights[rows])

    @staticmethod
    def concatenate(parts: list[PoseEmbeddings]) -> PoseEmbeddings:
        return PoseEmbeddings(np.concatenate([p.vectors for p in parts]), np.concatenate([p.weights for p in parts]))


def _as_poses(keypoints: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keypoints = np.asarray(keypoints, np.float64)
    boxes = np.asarray(boxes, np.float64)
    if keypoints.ndim == 2:
        keypoints = keypoints[None]
    if boxes.ndim == 1:
        boxes = boxes[None]
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"keypoints must be (N, K, 3) as (x, y, confidence), got {keypoints.shape}")
    if boxes.shape[1:] != (4,) or len(boxes) != len(keypoints):
        raise ValueError(f"boxes must be (N, 4) as (x, y, width, height), one per pose; got {boxes.shape} for "
                         f"{len(keypoints)} poses")
    return keypoints, boxes


def embed_poses(keypoints: np.ndarray, boxes: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> PoseEmbeddings:
    """Embeds (N, K, 3) keypoints (x, y, confidence, image pixels) of people in (N, 4) boxes (x, y, w, h).

    A pose with no keypoint at or above `threshold` gets a zero vector and zero weights (it matches nothing well).
    """
    keypoints, boxes = _as_poses(keypoints, boxes)
    confidence = keypoints[..., 2]
    kept = confidence >= threshold
    side = np.maximum(np.maximum(boxes[:, 2], boxes[:, 3]), 1e-6)
    xy = (keypoints[..., :2] - boxes[:, None, :2]) / side[:, None, None]
    xy = np.where(kept[..., None], xy, 0.0).reshape(len(keypoints), -1)
    norm = np.linalg.norm(xy, axis=1, keepdims=True)
    vectors = np.where(norm > 0, xy / np.maximum(norm, 1e-12), 0.0)
    weights = np.where(kept, confidence, 0.0)
    return PoseEmbeddings(vectors.astype(np.float32), weights.astype(np.float32))


def mirror_keypoints(keypoints: np.ndarray, boxes: np.ndarray, flip_permutation: np.ndarray) -> np.ndarray:
    """The poses' mirror images: x reflected inside each (x, y, w, h) box, left and right keypoints swapped
    (`KeypointSet.flip_permutation()`)."""
    keypoints, boxes = _as_poses(keypoints, boxes)
    mirrored = keypoints[:, np.asarray(flip_permutation)].copy()
    mirrored[..., 0] = (2 * boxes[:, None, 0] + boxes[:, None, 2]) - mirrored[..., 0]
    return mirrored


__all__ = ["DEFAULT_THRESHOLD", "PoseEmbeddings", "embed_poses", "mirror_keypoints"]
