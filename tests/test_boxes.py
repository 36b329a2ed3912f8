"""Box geometry against its definitions: IoU by brute force, the Faster R-CNN coding on hand-worked boxes."""

import math

import jax
import numpy as np
import pytest

from hvpose.ops.boxes import LOG_SIZE_CLAMP, area, clip, decode, encode, iou


def random_boxes(rng, count):
    corner = rng.uniform(0, 50, (count, 2))
    size = rng.uniform(0, 30, (count, 2))
    size[::7] = 0.0  # some empty boxes
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


def test_iou_matches_the_definition_box_by_box(rng):
    a, b = random_boxes(rng, 13), random_boxes(rng, 9)
    got = np.asarray(iou(a, b))
    assert got.shape == (13, 9)
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            width = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            height = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = width * height
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            assert got[i, j] == pytest.approx(inter / union if union > 0 else 0.0, abs=1e-6)
    assert np.isfinite(got).all() and float(area(a[:1])[0]) == pytest.approx((a[0, 2] - a[0, 0]) * (a[0, 3] - a[0, 1]))


def test_encoding_of_a_hand_worked_box():
    """Anchor (0, 0, 10, 10): centre (5, 5), size 10x10. Box (2, 2, 14, 8): centre (8, 5), size 12x6."""
    anchor, box = np.array([0.0, 0, 10, 10]), np.array([2.0, 2, 14, 8])
    np.testing.assert_allclose(encode(box, anchor), [0.3, 0.0, math.log(1.2), math.log(0.6)], rtol=1e-6)
    np.testing.assert_allclose(encode(box, anchor, (10, 10, 5, 5)), [3.0, 0.0, 5 * math.log(1.2), 5 * math.log(0.6)],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(decode([3.0, 0.0, 5 * math.log(1.2), 5 * math.log(0.6)], anchor, (10, 10, 5, 5)), box,
                               rtol=1e-6)


def test_decoding_clamps_sizes_and_zero_size_boxes_stay_finite():
    anchor = np.array([0.0, 0, 16, 16])
    huge = np.asarray(decode([0.0, 0.0, 50.0, 50.0], anchor))
    np.testing.assert_allclose(huge[2] - huge[0], 16 * math.exp(LOG_SIZE_CLAMP), rtol=1e-5)  # 1000 px, not inf
    deltas = np.asarray(encode(np.array([[5.0, 5, 5, 5], [0, 0, 0, 10]]), anchor))
    assert np.isfinite(deltas).all()
    gradient = jax.grad(lambda b: encode(b, anchor).sum())(np.array([5.0, 5, 5, 5]))
    assert np.isfinite(gradient).all()


def test_clipping_to_the_true_image_size():
    boxes = np.array([[-5.0, -3, 700, 20], [10, 10, 20, 500]])
    np.testing.assert_array_equal(clip(boxes, 480, 640), [[0, 0, 640, 20], [10, 10, 20, 480]])
