"""Matching against a numpy transcription of detectron2's `Matcher`, and balanced sampling against its definition
(counts, allowed labels, distinct rows, determinism, and uniformity over many keys)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.ops.matching import balanced_sample, match, sample_mask


def detectron2_match(iou, gt_valid, positive_threshold, negative_threshold, force_best=True):
    """detectron2's `Matcher(thresholds=[neg, pos], labels=[0, -1, 1], allow_low_quality_matches=force_best)`, in
    numpy, with this project's two additions: padded columns are set to -1 first, and a forced match happens only
    for a valid column whose best IoU is > 0 and moves the row to that column (the column of highest IoU if the row
    is best for several)."""
    iou = np.where(np.asarray(gt_valid)[None, :], np.asarray(iou, np.float32), np.float32(-1.0))
    count, num_gt = iou.shape
    if num_gt == 0:
        return np.zeros(count, np.int64), np.zeros(count, np.int64)
    matched_vals, matches = iou.max(axis=1), iou.argmax(axis=1)
    labels = np.ones(count, np.int64)
    thresholds = [-np.inf, negative_threshold, positive_threshold, np.inf]
    for label, low, high in zip([0, -1, 1], thresholds[:-1], thresholds[1:], strict=True):
        labels[(matched_vals >= low) & (matched_vals < high)] = label
    if force_best:
        forced_iou = np.full(count, -np.inf)
        for g in range(num_gt):
            highest = iou[:, g].max()
            if not gt_valid[g] or highest <= 0:
                continue
            for n in range(count):
                if iou[n, g] == highest:  # ties included
                    labels[n] = 1
                    if iou[n, g] > forced_iou[n]:
                        forced_iou[n], matches[n] = iou[n, g], g
    return matches, labels


@pytest.mark.parametrize("thresholds", [(0.7, 0.3), (0.5, 0.5), (0.5, 0.4)])
@pytest.mark.parametrize("force_best", [True, False])
def test_match_agrees_with_detectron2s_matcher_on_random_padded_matrices(rng, thresholds, force_best):
    for trial in range(6):
        count, num_gt = 40, 6
        # IoUs on a 0.1 grid: many ties and values exactly at the thresholds; some all-zero columns.
        iou = (rng.integers(0, 11, (count, num_gt)) / 10).astype(np.float32)
        iou[:, rng.integers(0, num_gt)] = 0.0
        iou[rng.random((count, num_gt)) < 0.5] = 0.0
        gt_valid = rng.random(num_gt) < 0.7
        gt_valid[trial % num_gt] = True
        expected_matched, expected_labels = detectron2_match(iou, gt_valid, *thresholds, force_best)
        matched, labels = (np.asarray(a) for a in match(iou, gt_valid, *thresholds, force_best=force_best))
        assert matched.dtype == np.int32 and labels.dtype == np.int32
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(matched, expected_matched)
        assert gt_valid[matched].all()


def test_an_image_without_people_is_all_background():
    iou = np.array([[0.9, 0.2], [0.0, 0.8], [0.5, 0.5]], np.float32)
    matched, labels = match(iou, np.array([False, False]), 0.7, 0.3)
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(matched, [0, 0, 0])
    matched, labels = match(np.zeros((3, 0), np.float32), np.zeros(0, bool), 0.7, 0.3)
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(matched, [0, 0, 0])


def test_forced_matches_take_ties_and_move_rows_to_their_ground_truth():
    # Column 0's best IoU 0.4 is reached by rows 1 and 3 (a tie): both positive and matched to 0, although row 3's
    # argmax is column 1 (0.6). Column 1 is best at row 0 (0.8). Column 2 never overlaps: no forced match, and the
    # rows' IoU 0 with it forces nothing. Column 3 is padding with IoU 1.0 at row 2: ignored entirely.
    iou = np.array([
        [0.1, 0.8, 0.0, 0.0],
        [0.4, 0.0, 0.0, 0.0],
        [0.2, 0.35, 0.0, 1.0],
        [0.4, 0.6, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ], np.float32)
    valid = np.array([True, True, True, False])
    matched, labels = match(iou, valid, 0.7, 0.3)
    np.testing.assert_array_equal(labels, [1, 1, -1, 1, 0])
    np.testing.assert_array_equal(matched[labels == 1], [1, 0, 0])
    assert matched[2] == 1  # the best valid column (0.35), not the padded one
    matched, labels = match(iou, valid, 0.7, 0.3, force_best=False)
    np.testing.assert_array_equal(labels, [1, -1, -1, -1, 0])


def random_labels(rng, count, positives, negatives):
    labels = np.full(count, -1, np.int32)
    rows = rng.permutation(count)
    labels[rows[:positives]] = 1
    labels[rows[positives:positives + negatives]] = 0
    return labels


def check_sample(labels, key, num_samples, fraction):
    indices, valid = (np.asarray(a) for a in balanced_sample(labels, key, num_samples, fraction))
    assert indices.shape == valid.shape == (num_samples,) and indices.dtype == np.int32
    positives, negatives = (labels == 1).sum(), (labels == 0).sum()
    taken_positive = min(positives, int(num_samples * fraction))
    total = min(taken_positive + negatives, num_samples)
    chosen = indices[valid]
    assert valid.sum() == total and not valid[total:].any()  # valid slots first
    assert (labels[chosen] == 1).sum() == taken_positive
    assert (labels[chosen] == 0).sum() == total - taken_positive
    assert len(set(chosen.tolist())) == total
    assert (indices[~valid] == 0).all()
    assert (np.diff(labels[chosen]) <= 0).all()  # positives first
    return chosen


def test_balanced_sample_counts_labels_and_distinct_rows(rng):
    # (num_samples, fraction): a small positive quota, more slots than candidates, more slots than rows (padding),
    # and no positives allowed.
    for num_samples, fraction in [(16, 0.25), (64, 0.5), (100, 1.0), (10, 0.0)]:
        for trial, (positives, negatives) in enumerate([(0, 30), (3, 30), (30, 3), (25, 25), (0, 0), (40, 10)]):
            check_sample(random_labels(rng, 50, positives, negatives), jax.random.key(trial), num_samples, fraction)


def test_sample_mask_is_the_chosen_set(rng):
    for trial, (positives, negatives) in enumerate([(3, 30), (25, 25), (0, 2)]):
        labels = random_labels(rng, 50, positives, negatives)
        chosen = check_sample(labels, jax.random.key(trial), 16, 0.25)
        mask = np.asarray(sample_mask(labels, jax.random.key(trial), 16, 0.25))
        np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(chosen))


def test_invalid_slots_mark_nothing_and_fewer_rows_than_slots():
    labels = np.array([-1, 0, 1, -1], np.int32)  # row 0 ignored: invalid slots (index 0) must not mark it
    indices, valid = balanced_sample(labels, jax.random.key(0), 8, 0.5)
    assert valid.sum() == 2 and sorted(np.asarray(indices)[np.asarray(valid)].tolist()) == [1, 2]
    np.testing.assert_array_equal(sample_mask(labels, jax.random.key(0), 8, 0.5), [False, True, True, False])


def test_the_same_key_gives_the_same_sample_and_other_keys_others(rng):
    labels = random_labels(rng, 50, 20, 25)
    first = balanced_sample(labels, jax.random.key(7), 16, 0.25)
    again = balanced_sample(labels, jax.random.key(7), 16, 0.25)
    other = balanced_sample(labels, jax.random.key(8), 16, 0.25)
    np.testing.assert_array_equal(first[0], again[0])
    assert set(np.asarray(first[0]).tolist()) != set(np.asarray(other[0]).tolist())


def test_rows_are_sampled_uniformly_within_each_class(rng):
    labels = random_labels(rng, 50, 20, 25)
    trials = 4000
    keys = jax.random.split(jax.random.key(123), trials)
    masks = np.asarray(jax.jit(jax.vmap(lambda k: sample_mask(labels, k, 16, 0.25)))(keys))
    counts = masks.sum(axis=0)
    # 4 of 20 positives per draw: p = 0.2, mean 800, sd ~25; 12 of 25 negatives: p = 0.48, mean 1920, sd ~32.
    np.testing.assert_allclose(counts[labels == 1], 0.2 * trials, atol=150)
    np.testing.assert_allclose(counts[labels == 0], 0.48 * trials, atol=190)
    assert (counts[labels == -1] == 0).all()
    assert (masks.sum(axis=1) == 16).all()


def test_match_and_sample_batch_with_vmap():
    iou = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (2, 30, 4)), jnp.float32)
    valid = jnp.array([[True, True, False, False], [False, False, False, False]])
    matched, labels = jax.vmap(lambda i, v: match(i, v, 0.7, 0.3))(iou, valid)
    assert matched.shape == labels.shape == (2, 30) and (np.asarray(labels[1]) == 0).all()
    keys = jax.random.split(jax.random.key(0), 2)
    indices, ok = jax.vmap(lambda lab, k: balanced_sample(lab, k, 8, 0.5))(labels, keys)
    assert indices.shape == ok.shape == (2, 8) and bool(ok[1].all())
