"""Hough voting against a brute-force per-pixel loop, and decoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.ops import voting
from hvpose.ops.voting import decode, decode_argmax_offset, decode_hough, hough_vote, hough_vote_numpy
from hvpose.targets import make_targets


def brute_force_vote(heatmaps, offsets, radius):
    """f_k(x) = sum_j 1/(pi R^2) G(x_j + F_k(x_j) - x) h_k(x_j) literally; G(d) = max(0, 1-|dx|) max(0, 1-|dy|)."""
    batch, height, width, num_keypoints = heatmaps.shape
    scores = np.zeros((batch, height, width, num_keypoints))
    for b in range(batch):
        for k in range(num_keypoints):
            for i in range(height):
                for j in range(width):
                    vx = j + float(offsets[b, i, j, k, 0])
                    vy = i + float(offsets[b, i, j, k, 1])
                    weight = float(heatmaps[b, i, j, k]) / (math.pi * radius**2)
                    for y in range(math.floor(vy), math.floor(vy) + 2):
                        for x in range(math.floor(vx), math.floor(vx) + 2):
                            g = max(0.0, 1 - abs(vx - x)) * max(0.0, 1 - abs(vy - y))
                            if 0 <= y < height and 0 <= x < width:
                                scores[b, y, x, k] += weight * g
    return scores


def random_inputs(rng, shape, spread):
    heatmaps = rng.random(shape, dtype=np.float32)
    offsets = (rng.standard_normal((*shape, 2)) * spread).astype(np.float32)
    return heatmaps, offsets


@pytest.mark.parametrize("shape, spread", [((2, 9, 7, 3), 3.0), ((1, 6, 11, 2), 8.0), ((1, 5, 5, 1), 0.0)])
def test_matches_brute_force_including_votes_that_leave_the_map(rng, shape, spread):
    heatmaps, offsets = random_inputs(rng, shape, spread)
    if spread == 0.0:  # integer votes: exact corners, one of them shifted off the map
        offsets[..., 0] = np.round(offsets[..., 0]) + 1
    want = brute_force_vote(heatmaps, offsets, 2.5)
    got = np.asarray(hough_vote(heatmaps, offsets, 2.5))
    tolerance = 1e-4 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=tolerance)
    np.testing.assert_allclose(hough_vote_numpy(heatmaps, offsets, 2.5), want, rtol=1e-10, atol=1e-12)
    # Votes landing outside the crop are dropped, so mass is lost exactly when some vote leaves.
    assert got.sum() <= heatmaps.sum() / (math.pi * 2.5**2) * (1 + 1e-5)


def test_full_size_crops_match_reference_within_1e4_relative(rng):
    heatmaps, offsets = random_inputs(rng, (2, 353, 257, 17), 10.0)
    want = hough_vote_numpy(heatmaps, offsets, 25.0)  # float64, itself checked against the brute force above
    got = np.asarray(hough_vote(jnp.asarray(heatmaps), jnp.asarray(offsets), 25.0))
    assert got.min() >= 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_perfect_predictions_vote_to_the_keypoint_and_decode_it():
    height, width, radius = 353, 257, 25.0
    keypoints = np.array([[[100.0, 200.0, 2], [3.0, 340.0, 2], [128.25, 64.75, 1]]], np.float32)
    targets = make_targets(keypoints, (height, width), radius)
    scores = hough_vote(targets["heatmaps"], targets["offsets"], radius)
    decoded = np.asarray(decode(scores))
    np.testing.assert_array_equal(decoded[0, :2, :2], keypoints[0, :2, :2])  # integer keypoints exactly
    np.testing.assert_allclose(decoded[0, 2, :2], np.round(keypoints[0, 2, :2]), atol=0)  # nearest pixel
    # Every disk pixel's vote lands on the keypoint: the score is the disk's area over pi R^2, about 1.
    area = np.asarray(targets["heatmaps"]).sum(axis=(1, 2))[0, 0]
    np.testing.assert_allclose(decoded[0, 0, 2], area / (np.pi * radius**2), rtol=1e-4)  # float32 sum of ~2000 votes
    np.testing.assert_allclose(decoded[0, 0, 2], 1.0, atol=0.01)


def test_decode_reads_x_as_column_and_y_as_row():
    scores = np.zeros((2, 7, 5, 2), np.float32)
    scores[0, 6, 1, 0] = 0.9  # row 6, column 1
    scores[0, 2, 4, 1] = 0.5
    scores[1, 0, 0, 0] = scores[1, 3, 3, 0] = 0.7  # tie: first in raster order
    decoded = np.asarray(decode(scores))
    np.testing.assert_allclose(decoded[0], [[1, 6, 0.9], [4, 2, 0.5]])
    np.testing.assert_allclose(decoded[1, 0], [0, 0, 0.7])


def test_decode_argmax_offset_adds_the_offset_at_the_peak():
    heatmaps = np.zeros((1, 7, 5, 1), np.float32)
    heatmaps[0, 4, 2, 0] = 0.8
    offsets = np.zeros((1, 7, 5, 1, 2), np.float32)
    offsets[0, 4, 2, 0] = (0.25, -1.5)
    np.testing.assert_allclose(decode_argmax_offset(heatmaps, offsets)[0, 0], [2.25, 2.5, 0.8])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"offsets must be \(B, H, W, K, 2\)"):
        hough_vote(np.zeros((1, 4, 4, 2)), np.zeros((1, 4, 4, 2)), 1.0)
    with pytest.raises(ValueError, match=r"heatmaps must be \(B, H, W, K\)"):
        hough_vote(np.zeros((4, 4, 2)), np.zeros((4, 4, 2, 2)), 1.0)


def test_compiles_once_per_shape_not_per_radius(rng):
    heatmaps, offsets = (jnp.asarray(a) for a in random_inputs(rng, (1, 8, 6, 2), 2.0))
    before = voting.hough_vote._cache_size()
    first = hough_vote(heatmaps, offsets, 2.0)
    hough_vote(heatmaps, offsets, 3.0)
    assert voting.hough_vote._cache_size() == before + 1
    np.testing.assert_allclose(hough_vote(heatmaps, offsets, 2.0), first)
    jax.block_until_ready(first)


def test_non_finite_offsets_drop_their_votes(rng):
    heatmaps, offsets = random_inputs(rng, (1, 6, 5, 2), 1.0)
    offsets[0, 2, 3, 1, 0] = np.nan
    offsets[0, 4, 1, 0, 1] = np.inf
    got = np.asarray(hough_vote(heatmaps, offsets, 2.0))
    assert np.all(np.isfinite(got))
    clean_heatmaps = heatmaps.copy()
    clean_heatmaps[0, 2, 3, 1] = clean_heatmaps[0, 4, 1, 0] = 0.0
    clean_offsets = np.nan_to_num(offsets, nan=0.0, posinf=0.0)
    np.testing.assert_allclose(got, hough_vote_numpy(clean_heatmaps, clean_offsets, 2.0), rtol=1e-5, atol=1e-7)


def test_decode_hough_locates_at_the_vote_peak_and_scores_with_the_heatmap_probability(rng):
    """The keypoint sits at the argmax of the vote map; its score is h_k there (in [0, 1]), not the vote peak."""
    heatmaps = rng.uniform(0, 1, (2, 9, 7, 3)).astype(np.float32)
    offsets = rng.normal(0, 2, (2, 9, 7, 3, 2)).astype(np.float32)
    got = np.asarray(decode_hough(heatmaps, offsets, 4.0))
    peaks = np.asarray(decode(hough_vote(heatmaps, offsets, 4.0)))
    np.testing.assert_array_equal(got[..., :2], peaks[..., :2])
    for b in range(2):
        for k in range(3):
            x, y = int(got[b, k, 0]), int(got[b, k, 1])
            assert got[b, k, 2] == heatmaps[b, y, x, k]
    assert not np.allclose(got[..., 2], peaks[..., 2])  # the vote peak is another number
