"""Greedy and soft box NMS with a static output against the textbook algorithms (greedy: suppress when IoU >
threshold; soft: Bodla et al. 2017's Algorithm 1 with the Gaussian penalty), and box voting against its definition."""

import numpy as np
import pytest

from hvpose.ops.nms import nms, soft_nms, vote


def overlap(p, q):
    width = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    height = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = width * height
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def textbook_nms(boxes, scores, threshold):
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


def textbook_soft_nms(boxes, scores, sigma, min_score):
    """Bodla et al. 2017, Algorithm 1 (Gaussian): B and S shrink as boxes are picked; D collects them."""
    remaining = {i: float(s) for i, s in enumerate(scores)}
    picked = []
    while remaining:
        best = max(remaining, key=lambda i: (remaining[i], -i))
        if remaining[best] <= min_score:
            break
        picked.append((best, remaining.pop(best)))
        for i in remaining:
            remaining[i] *= np.exp(-overlap(boxes[best], boxes[i]) ** 2 / sigma)
    return picked


def random_boxes(rng, count):
    corner = rng.uniform(0, 40, (count, 2))
    return np.concatenate([corner, corner + rng.uniform(5, 25, (count, 2))], axis=1).astype(np.float32)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 2.0])
def test_soft_nms_keeps_and_rescores_as_the_textbook_algorithm(rng, sigma):
    for _ in range(5):
        boxes, scores = random_boxes(rng, 30), rng.uniform(0, 1, 30).astype(np.float32)
        expected = textbook_soft_nms(boxes, scores, sigma, 0.3)
        indices, kept_scores, valid = (np.asarray(a) for a in soft_nms(boxes, scores, sigma, 30, 0.3))
        count = int(valid.sum())
        assert 0 < count < 30 and valid[:count].all()
        assert list(indices[:count]) == [i for i, _ in expected]
        np.testing.assert_allclose(kept_scores[:count], [s for _, s in expected], rtol=1e-5)
        assert (np.diff(kept_scores[:count]) <= 0).all() and (kept_scores[count:] == 0).all()


def test_soft_nms_lowers_an_overlapping_box_instead_of_dropping_it():
    # IoU 1/3: greedy NMS at 0.3 drops the second box; soft-NMS keeps it at 0.8 * exp(-(1/3)^2 / 0.5).
    boxes = np.array([[0.0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 1, 1]], np.float32)
    scores = np.array([0.9, 0.8, -np.inf], np.float32)
    indices, kept_scores, valid = (np.asarray(a) for a in soft_nms(boxes, scores, 0.5, 3))
    assert list(indices[valid]) == [0, 1] and list(valid) == [True, True, False]
    np.testing.assert_allclose(kept_scores[:2], [0.9, 0.8 * np.exp(-(1 / 9) / 0.5)], rtol=1e-6)


def test_box_voting_averages_the_overlapping_candidates_by_weight(rng):
    candidates, weights = random_boxes(rng, 40), rng.uniform(0, 1, 40).astype(np.float32)
    weights[rng.random(40) < 0.2] = 0.0  # padding
    kept = np.concatenate([candidates[:5], [[100.0, 100, 110, 110]]]).astype(np.float32)  # the last overlaps none
    voted = np.asarray(vote(kept, candidates, weights, 0.5))
    voters = []
    for row, box in enumerate(kept):
        near = [j for j in range(40) if overlap(box, candidates[j]) >= 0.5 and weights[j] > 0]
        expected = (np.average(candidates[near], axis=0, weights=weights[near]) if near else box)
        np.testing.assert_allclose(voted[row], expected, rtol=1e-5, atol=1e-4)
        voters.append(near)
    # The data exercise the cases that matter, so the check above is not only boxes left in place: a box averaged
    # with others, a box whose own weight is 0 (padding) moved onto another, and the box overlapping nobody.
    # (Whether a box voted only by itself comes back bit-exact depends on XLA's arithmetic: jax 0.12.1 does.)
    assert max(map(len, voters)) >= 3 and any(near and row not in near for row, near in enumerate(voters[:5]))
    assert (np.abs(voted[:5] - candidates[:5]).max(axis=1) > 0.5).sum() >= 2  # moved by pixels, not by rounding
    np.testing.assert_array_equal(voted[5], kept[5])
