"""Object Keypoint Similarity (COCO's definition) and OKS-based non-maximum suppression (numpy; per image)."""

from __future__ import annotations

import numpy as np


def oks(reference: np.ndarray, others: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """OKS of `others` (N, K, 2+) against `reference` (K, 2+) at object scale `area` (pixels^2).

    COCO: mean over keypoints of exp(-d^2 / (2 s^2 k^2)) with s^2 = area and k = 2 * sigma. Predictions have
    no visibility, so every keypoint counts.
    """
    variances = (2.0 * np.asarray(sigmas, np.float64)) ** 2
    d2 = ((np.asarray(others)[..., :2] - np.asarray(reference)[None, :, :2]) ** 2).sum(-1)
    return np.exp(-d2 / (2.0 * variances * max(float(area), np.finfo(np.float64).eps))).mean(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
            threshold: float) -> np.ndarray:
    """Indices kept by greedy OKS-NMS: highest score first, dropping others whose OKS with it exceeds `threshold`."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        if rest.size:
            similarity = oks(keypoints[best], keypoints[rest], areas[best], sigmas)
            rest = rest[similarity <= threshold]
        order = rest
    return np.asarray(keep, np.int64)
