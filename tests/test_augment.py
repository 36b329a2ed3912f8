"""Crop geometry sampling (`hvpose.data.augment.sample_geometry`): the enlargement range, the centre shift and their
independence from each other, checked on many draws against the definitions in the module."""

import numpy as np
import pytest

from hvpose.data.augment import Augmentation, sample_geometry
from hvpose.data.crops import CROP_SIZE

BOX = (100.0, 40.0, 60.0, 200.0)  # x, y, w, h: a standing person, extended in width to the crop's aspect
CENTRE = (130.0, 140.0)


def draws(augment, n=2000, seed=0):
    """One geometry per generator, as the pipeline draws one per element from its own generator."""
    return [sample_geometry(BOX, np.random.default_rng([seed, i]), augment) for i in range(n)]


def test_without_shift_every_crop_is_centred_on_the_box_and_enlarged_within_the_range():
    geometries = draws(Augmentation())
    assert all(g.center == CENTRE for g in geometries)
    heights = np.array([g.size[1] for g in geometries])
    assert heights.min() >= 200.0 * 1.0 - 1e-9 and heights.max() <= 200.0 * 1.5 + 1e-9
    assert heights.min() < 200.0 * 1.05 and heights.max() > 200.0 * 1.45  # the whole range is used
    for g in geometries:
        np.testing.assert_allclose(g.size[1] / g.size[0], CROP_SIZE[0] / CROP_SIZE[1])


def test_shift_moves_the_centre_uniformly_within_the_fraction_of_the_box_and_leaves_the_size_alone():
    shift = 0.15
    geometries = draws(Augmentation(shift_jitter=shift))
    offsets = np.array([np.subtract(g.center, CENTRE) for g in geometries]) / [BOX[2], BOX[3]]
    assert np.abs(offsets).max() <= shift + 1e-12
    # Uniform on [-s, s] in x and y, independently: mean 0, standard deviation s / sqrt(3), both corners reached.
    np.testing.assert_allclose(offsets.mean(0), 0.0, atol=0.01)
    np.testing.assert_allclose(offsets.std(0), shift / np.sqrt(3), rtol=0.05)
    assert abs(np.corrcoef(offsets.T)[0, 1]) < 0.08
    assert (offsets > 0.9 * shift).all(1).any() and (offsets < -0.9 * shift).all(1).any()
    # The shift is in box units: the 60-px-wide box moves at most 9 px sideways, the 200-px-tall one 30 px.
    moved = np.abs(np.array([np.subtract(g.center, CENTRE) for g in geometries])).max(0)
    assert 8.5 < moved[0] <= 9.0 and 28.5 < moved[1] <= 30.0
    # Enlargement is drawn before the shift, from the same stream: the sizes equal the unshifted run's.
    unshifted = draws(Augmentation())
    assert [g.size for g in geometries] == [g.size for g in unshifted]


def test_shift_off_keeps_the_random_stream_of_older_runs():
    """Runs without the shift draw exactly what they drew before it existed (enlargement, rotation, flip)."""
    augment = Augmentation(rotation=30.0)
    rng = np.random.default_rng(5)
    expected = []
    for _ in range(50):  # the draws in their order before the shift existed
        enlarge = rng.uniform(1.0, 1.5)
        rotation = float(rng.uniform(-30.0, 30.0)) if rng.random() < 0.6 else 0.0
        expected.append((enlarge * 200.0, rotation, bool(rng.random() < 0.5)))  # height: the box's, enlarged
    rng = np.random.default_rng(5)
    actual = [(g.size[1], g.rotation, g.flip) for g in (sample_geometry(BOX, rng, augment) for _ in range(50))]
    np.testing.assert_allclose([a[0] for a in actual], [e[0] for e in expected])
    assert [a[1:] for a in actual] == [e[1:] for e in expected]


@pytest.mark.parametrize("shift", [-0.1, 0.6])
def test_a_shift_outside_zero_to_half_the_box_is_refused(shift):
    with pytest.raises(ValueError, match="shift_jitter"):
        Augmentation(shift_jitter=shift)
