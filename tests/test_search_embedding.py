"""Pose embeddings: invariant to where the person stands and how large, unit norm, low-confidence keypoints
dropped, mirroring swaps left and right, any keypoint set."""

import numpy as np
import pytest

from hvpose.keypoints import COCO17, KeypointSet
from hvpose.search.embedding import embed_poses, mirror_keypoints


def _poses(rng, n=6, k=17):
    xy = rng.uniform(10, 90, (n, k, 2))
    confidence = rng.uniform(0.2, 1.0, (n, k, 1))
    keypoints = np.concatenate([xy, confidence], -1)
    boxes = np.concatenate([xy.min(1) - 5, np.ptp(xy, axis=1) + 10], 1)
    return keypoints, boxes


def test_embedding_is_unit_norm_and_ignores_position_and_size(rng):
    keypoints, boxes = _poses(rng)
    moved = keypoints.copy()
    moved[..., :2] = keypoints[..., :2] * 3.5 + [200.0, -40.0]
    moved_boxes = np.concatenate([boxes[:, :2] * 3.5 + [200.0, -40.0], boxes[:, 2:] * 3.5], 1)
    a, b = embed_poses(keypoints, boxes), embed_poses(moved, moved_boxes)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)
    np.testing.assert_allclose(a.weights, keypoints[..., 2], rtol=1e-6)
    # By hand for one pose: coordinates from the box corner over the larger side, then L2-normalised.
    expected = ((keypoints[0, :, :2] - boxes[0, :2]) / boxes[0, 2:].max()).reshape(-1)
    np.testing.assert_allclose(a.vectors[0], expected / np.linalg.norm(expected), rtol=1e-5)


def test_keypoints_below_the_threshold_carry_nothing(rng):
    keypoints, boxes = _poses(rng, n=2)
    keypoints[0, [3, 9], 2] = 0.05
    moved = keypoints.copy()
    moved[0, [3, 9], :2] += 37.0  # where a dropped keypoint is must not matter
    a, b = embed_poses(keypoints, boxes, threshold=0.1), embed_poses(moved, boxes, threshold=0.1)
    assert np.all(a.weights[0, [3, 9]] == 0) and np.all(a.vectors[0].reshape(-1, 2)[[3, 9]] == 0)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_allclose(np.linalg.norm(a.vectors[0]), 1.0, rtol=1e-6)
    keypoints[1, :, 2] = 0.0  # nothing kept: a zero vector, not NaN
    empty = embed_poses(keypoints, boxes)
    assert np.all(empty.vectors[1] == 0) and np.all(empty.weights[1] == 0)


def test_mirroring_swaps_sides_and_reflects_inside_the_box(rng):
    keypoints, boxes = _poses(rng, n=3)
    permutation = COCO17.flip_permutation()
    mirrored = mirror_keypoints(keypoints, boxes, permutation)
    # The mirrored left wrist is the right wrist reflected about the box's vertical centre line.
    left, right = COCO17.names.index("left_wrist"), COCO17.names.index("right_wrist")
    np.testing.assert_allclose(mirrored[:, left, 0], 2 * boxes[:, 0] + boxes[:, 2] - keypoints[:, right, 0])
    np.testing.assert_allclose(mirrored[:, left, 1:], keypoints[:, right, 1:])
    np.testing.assert_allclose(mirror_keypoints(mirrored, boxes, permutation), keypoints, atol=1e-9)
    # A pose built as the mirror image of another embeds exactly like it once mirrored back.
    np.testing.assert_allclose(embed_poses(mirror_keypoints(mirrored, boxes, permutation), boxes).vectors,
                               embed_poses(keypoints, boxes).vectors, atol=1e-6)


def test_any_keypoint_set():
    hands = KeypointSet(names=("root", "l_tip", "r_tip"), skeleton=((0, 1), (0, 2)), flip_pairs=((1, 2),),
                        sigmas=(0.05,) * 3)
    keypoints = np.array([[[5.0, 5.0, 1.0], [1.0, 9.0, 1.0], [9.0, 8.0, 0.5]]])
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    embedded = embed_poses(keypoints, box)
    assert embedded.vectors.shape == (1, 6) and embedded.weights.shape == (1, 3)
    mirrored = mirror_keypoints(keypoints, box, hands.flip_permutation())
    np.testing.assert_allclose(mirrored[0], [[5.0, 5.0, 1.0], [1.0, 8.0, 0.5], [9.0, 9.0, 1.0]])


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="keypoints must be"):
        embed_poses(np.zeros((2, 17, 2)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="one per pose"):
        embed_poses(np.zeros((2, 17, 3)), np.zeros((3, 4)))
