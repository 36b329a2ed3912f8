"""COCO-17 person keypoint conventions (names, left/right flip pairs, skeleton, OKS sigmas).

These are the defaults; datasets with another keypoint set carry their own definition (see the data issue).
"""

from __future__ import annotations

import numpy as np

NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_KEYPOINTS: int = len(NAMES)

# 0-based (left, right) index pairs swapped by a horizontal flip.
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16),
)

# 0-based limbs, as in the COCO person category's `skeleton` (which is 1-based there).
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

# Per-keypoint standard deviations used by COCO's Object Keypoint Similarity (pycocotools' values).
OKS_SIGMAS: np.ndarray = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89],
    dtype=np.float64,
) / 10.0

# Visibility flags of the COCO format.
UNLABELLED, OCCLUDED, VISIBLE = 0, 1, 2


def flip_permutation(num_keypoints: int = NUM_KEYPOINTS,
                     flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS) -> np.ndarray:
    """Index array `p` such that `flipped[..., k] = original[..., p[k]]` after a horizontal flip."""
    perm = np.arange(num_keypoints)
    for left, right in flip_pairs:
        perm[left], perm[right] = right, left
    return perm
