"""Crop geometry: aspect extension, the affine warp's pixel convention (also with reduced decoding), flips."""

import functools

import cv2
import numpy as np
import pytest

from hvpose.data.crops import (
    CROP_SIZE,
    CropGeometry,
    apply_transform,
    crop_transform,
    extend_box,
    invert_transform,
    render_crop,
    transform_keypoints,
    warp,
)
from hvpose.data.images import decode_image, reduction_for_scale


def test_extend_box_keeps_centre_and_reaches_crop_aspect():
    for box in ((10, 20, 30, 200), (10, 20, 300, 50), (5, 5, 0, 0)):
        center, (w, h) = extend_box(box, CROP_SIZE, enlarge=1.25)
        assert center == pytest.approx((box[0] + box[2] / 2, box[1] + box[3] / 2))
        assert h / w == pytest.approx(353 / 257)
        assert w >= 1.25 * box[2] - 1e-9 and h >= 1.25 * box[3] - 1e-9


def test_box_centre_maps_to_crop_centre_and_inverse_round_trips(rng):
    geometry = CropGeometry(center=(100.0, 80.0), size=(128.5, 176.5), rotation=17.0, flip=True)
    matrix = crop_transform(geometry)
    np.testing.assert_allclose(apply_transform(matrix, [100.0, 80.0]), [128.0, 176.0])
    points = rng.uniform(0, 200, (50, 2))
    np.testing.assert_allclose(apply_transform(invert_transform(matrix), apply_transform(matrix, points)), points,
                               atol=1e-9)


def blob_image(points, size=(480, 640), sigma=2.0):
    yy, xx = np.mgrid[:size[0], :size[1]]
    image = np.zeros(size, np.float64)
    for x, y in points:
        image += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat((255 * np.clip(image, 0, 1)).astype(np.uint8)[..., None], 3, axis=2)


def centroid(crop, near, radius=6):
    x0, y0 = int(round(near[0])), int(round(near[1]))
    window = crop[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1, 0].astype(np.float64)
    window = np.where(window > 0.2 * window.max(), window, 0)
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(xs * window).sum(), (ys * window).sum()]) / window.sum()


@pytest.mark.parametrize("box_height, rotation, flip", [(250, 0.0, False), (600, 25.0, True), (1200, 0.0, False)])
def test_crop_pixels_sit_where_the_transform_puts_the_keypoints(box_height, rotation, flip):
    """Content at image point p appears at crop point M p, also when the image is decoded at 1/2 or 1/4 size."""
    points = np.array([[300.3, 200.6], [340.0, 260.25], [280.5, 150.0]])
    sigma = max(2.0, box_height / 160)  # blobs at least ~1.5 crop pixels wide
    encoded = cv2.imencode(".png", blob_image(points, sigma=sigma))[1].tobytes()
    center, size = extend_box((250, 130, box_height * 0.5, box_height), CROP_SIZE, 1.25)
    geometry = CropGeometry(center, size, rotation, flip)
    crop, matrix = render_crop(functools.partial(decode_image, encoded), geometry)
    reduction = reduction_for_scale(257 / size[0])
    assert reduction == {250: 1, 600: 2, 1200: 4}[box_height]
    for point in apply_transform(matrix, points):
        # ~0.05 px when right; a half-pixel slip in the reduced-decode mapping shows as ~0.3 px.
        np.testing.assert_allclose(centroid(crop, point), point, atol=0.15)


def test_flipped_crop_is_the_mirror_image():
    image = np.random.default_rng(0).integers(0, 255, (120, 100, 3), np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 2)
    base = CropGeometry((50.0, 60.0), (60.0, 60.0 * 353 / 257))
    plain = warp(image, crop_transform(base))
    mirrored = warp(image, crop_transform(CropGeometry(base.center, base.size, flip=True)))
    assert np.abs(plain[:, ::-1].astype(int) - mirrored.astype(int)).max() <= 1


def test_unlabelled_keypoints_stay_unlabelled():
    keypoints = np.array([[10.0, 20.0, 2], [5.0, 5.0, 0], [7.0, 8.0, 1]], np.float32)
    out = transform_keypoints(crop_transform(CropGeometry((10.0, 10.0), (20.0, 27.5))), keypoints)
    np.testing.assert_array_equal(out[1], [0, 0, 0])
    np.testing.assert_array_equal(out[:, 2], [2, 0, 1])


def test_reduced_decoding_pixel_centres():
    image = blob_image([[101.5, 61.5]], size=(160, 240), sigma=3.0)
    encoded = cv2.imencode(".png", image)[1].tobytes()
    assert decode_image(encoded).shape == (160, 240, 3)
    half = decode_image(encoded, reduction=2)
    assert half.shape == (80, 120, 3)
    # full-resolution 101.5 -> reduced (101.5 - 0.5) / 2 = 50.5
    np.testing.assert_allclose(centroid(half, (50.5, 30.5), radius=4), [50.5, 30.5], atol=0.3)
