"""Keypoint conventions: COCO-17 (names, left/right flip pairs, skeleton, OKS sigmas) and other keypoint sets.

COCO-17 (`COCO17`) is the default; a dataset with another set (hands, whole body) carries its own names and
skeleton in its person category, and the config adds flip pairs and OKS sigmas (`KeypointSet.from_category`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

# Visibility flags of the COCO format.
UNLABELLED, OCCLUDED, VISIBLE = 0, 1, 2

# Per-keypoint OKS sigma used for keypoint sets that do not give their own (COCO's median sigma is ~0.072;
# 0.05 is stricter than all COCO body joints but the face and is the usual choice for hand/whole-body sets).
DEFAULT_SIGMA: float = 0.05


@dataclasses.dataclass(frozen=True)
class KeypointSet:
    """A keypoint definition: names, limbs, left/right flip pairs and OKS sigmas (all 0-based, length K).

    COCO-17 is `COCO17`. Other sets come from a dataset's person category (names, skeleton) plus the config
    (flip pairs, sigmas): see `from_category`.
    """

    names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]

    def __post_init__(self) -> None:
        k = len(self.names)
        if k == 0:
            raise ValueError("a keypoint set needs at least one keypoint")
        if len(set(self.names)) != k:
            raise ValueError(f"keypoint names repeat: {self.names}")
        if len(self.sigmas) != k:
            raise ValueError(f"{len(self.sigmas)} OKS sigmas for {k} keypoints")
        for a, b in (*self.skeleton, *self.flip_pairs):
            if not (0 <= a < k and 0 <= b < k) or a == b:
                raise ValueError(f"keypoint pair ({a}, {b}) is out of range for {k} keypoints")
        flipped = [i for pair in self.flip_pairs for i in pair]
        if len(set(flipped)) != len(flipped):
            raise ValueError(f"a keypoint appears in two flip pairs: {self.flip_pairs}")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def flip_permutation(self) -> np.ndarray:
        """Index array `p` with `flipped[..., k] = original[..., p[k]]` after a horizontal flip."""
        permutation = np.arange(self.num_keypoints)
        for left, right in self.flip_pairs:
            permutation[left], permutation[right] = right, left
        return permutation

    @classmethod
    def from_category(cls, category: dict, flip_pairs: Sequence[Sequence[int]] | None = None,
                      sigmas: Sequence[float] | None = None) -> KeypointSet:
        """The set of a COCO-format category (`keypoints` names, 1-based `skeleton`).

        Flip pairs default to the names that differ only by a `left`/`right` token (`left_eye`/`right_eye`,
        `l_wrist`/`r_wrist`, `thumb1_left`/`thumb1_right`); sigmas default to COCO's for the COCO-17 names and to
        `DEFAULT_SIGMA` otherwise.
        """
        names = tuple(str(n) for n in category.get("keypoints", ()))
        skeleton = tuple((int(a) - 1, int(b) - 1) for a, b in category.get("skeleton", ()))
        if flip_pairs is None:
            flip_pairs = infer_flip_pairs(names)
        if sigmas is None:
            sigmas = COCO17.sigmas if names == COCO17.names else (DEFAULT_SIGMA,) * len(names)
        return cls(names, skeleton, tuple((int(a), int(b)) for a, b in flip_pairs), tuple(float(s) for s in sigmas))


_SIDE_TOKENS = (("left", "right"), ("l", "r"))


def infer_flip_pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Pairs of names equal up to a whole `left`<->`right` (or `l`<->`r`) token, split on `_`, `-`, `.` or space."""
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for i, name in enumerate(names):
        tokens = re.split(r"([_\-. ])", name)
        for left, right in _SIDE_TOKENS:
            for t, token in enumerate(tokens):
                if token.lower() == left:
                    mirrored = tokens.copy()
                    mirrored[t] = right if token.islower() else right.upper() if token.isupper() else right.title()
                    j = index.get("".join(mirrored))
                    if j is not None and (i, j) not in pairs:
                        pairs.append((i, j))
    return tuple(pairs)


COCO17 = KeypointSet(
    names=("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
           "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
           "left_ankle", "right_ankle"),
    # 0-based limbs, as in the COCO person category's `skeleton` (which is 1-based there).
    skeleton=((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
              (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6)),
    # 0-based (left, right) index pairs swapped by a horizontal flip.
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    # Per-keypoint standard deviations of COCO's Object Keypoint Similarity (pycocotools' values).
    sigmas=tuple(s / 10 for s in (0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07,
                                  0.87, 0.87, 0.89, 0.89)),
)
"""COCO's 17 person keypoints: the one definition of their names, limbs, flip pairs and OKS sigmas."""
