"""Greedy box NMS with a static output against the textbook algorithm (suppress when IoU > threshold)."""

import numpy as np
import pytest

from hvpose.ops.nms import nms


def textbook_nms(boxes, scores, threshold):
    def overlap(p, q):
        width = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
        height = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
        inter = width * height
        union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
        return inter / union if union > 0 else 0.0

    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(overlap(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_keeps_what_the_textbook_algorithm_keeps(rng, threshold):
    for _ in range(5):
        corner = rng.uniform(0, 40, (30, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(5, 25, (30, 2))], axis=1).astype(np.float32)
        scores = rng.uniform(0, 1, 30).astype(np.float32)
        expected = textbook_nms(boxes, scores, threshold)
        indices, valid = (np.asarray(a) for a in nms(boxes, scores, threshold, max_output=30))
        assert list(indices[valid]) == expected and not valid[len(expected):].any()
        few, few_valid = (np.asarray(a) for a in nms(boxes, scores, threshold, max_output=3))
        assert list(few[few_valid]) == expected[:3]


def test_suppression_is_strictly_above_the_threshold_and_padding_is_never_kept():
    # IoU of these two is exactly 1/3: kept at threshold 1/3, the second dropped just below it.
    boxes = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, -np.inf], np.float32)
    indices, valid = (np.asarray(a) for a in nms(boxes, scores, 1 / 3, max_output=3))
    assert list(indices[valid]) == [0, 1]
    indices, valid = (np.asarray(a) for a in nms(boxes, scores, 0.33, max_output=3))
    assert list(indices[valid]) == [0]
    assert list(valid) == [True, False, False] and list(indices) == [0, 0, 0]
