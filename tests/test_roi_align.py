"""RoIAlign against a numpy transcription of torchvision's CPU kernel (`aligned=True`, fixed sampling ratio),
hand-worked values, the einsum and fused forms against the gather form (values and gradients), and, where torchvision
happens to be installed, torchvision itself (with its NMS)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.ops.nms import nms
from hvpose.ops.roi_align import METHODS, roi_align


def bilinear_interpolate(features, y, x):
    """torchvision's `bilinear_interpolate` (roi_align_kernel.cpp), on an (H, W, C) map."""
    height, width = features.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(features.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * features[y_low, x_low] + hy * lx * features[y_low, x_high]
            + ly * hx * features[y_high, x_low] + ly * lx * features[y_high, x_high])


def torchvision_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio):
    """torchvision's `roi_align_forward_kernel_impl` with aligned=True and sampling_ratio > 0, loop by loop."""
    features = np.asarray(features, np.float64)
    out_h, out_w = output_size
    out = np.zeros((len(boxes), out_h, out_w, features.shape[2]))
    for n, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64)):
        start_w, start_h = x1 * spatial_scale - 0.5, y1 * spatial_scale - 0.5
        end_w, end_h = x2 * spatial_scale - 0.5, y2 * spatial_scale - 0.5
        bin_h, bin_w = (end_h - start_h) / out_h, (end_w - start_w) / out_w
        count = max(sampling_ratio * sampling_ratio, 1)
        for ph in range(out_h):
            for pw in range(out_w):
                total = np.zeros(features.shape[2])
                for iy in range(sampling_ratio):
                    y = start_h + ph * bin_h + (iy + 0.5) * bin_h / sampling_ratio
                    for ix in range(sampling_ratio):
                        x = start_w + pw * bin_w + (ix + 0.5) * bin_w / sampling_ratio
                        total += bilinear_interpolate(features, y, x)
                out[n, ph, pw] = total / count
    return out


def random_boxes(rng, count, image_height, image_width):
    """Boxes in input pixels: inside, partly and wholly outside, tiny, zero-size and one inverted."""
    corner = rng.uniform([-0.3 * image_width, -0.3 * image_height], [1.1 * image_width, 1.1 * image_height],
                         (count, 2))
    size = rng.uniform(0, 0.7, (count, 2)) * [image_width, image_height]
    size[1] = 0.0  # zero-size
    size[2] = [0.3, 0.2]  # tiny
    size[3] = [-5.0, 3.0]  # inverted in x (torchvision's aligned mode imposes no minimum size)
    corner[4] = [-3.0 * image_width, 0.0]  # wholly outside
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


CASES = [  # (feature H, W, C), stride, output_size, sampling_ratio
    ((9, 11, 3), 1, (7, 7), 2),
    ((6, 5, 2), 8, (3, 5), 2),
    ((5, 7, 2), 16, (4, 2), 3),
    ((4, 4, 1), 16, (2, 2), 1),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-stride{c[1]}-out{c[2]}-s{c[3]}".replace(" ", ""))
def test_roi_align_matches_torchvisions_cpu_kernel(rng, method, case):
    shape, stride, output_size, sampling_ratio = case
    features = rng.normal(size=shape).astype(np.float32)
    boxes = random_boxes(rng, 12, shape[0] * stride, shape[1] * stride)
    expected = torchvision_roi_align(features, boxes, output_size, 1.0 / stride, sampling_ratio)
    got = np.asarray(roi_align(features, boxes, output_size, 1.0 / stride, sampling_ratio, method))
    assert got.shape == (12, *output_size, shape[2]) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected[4]).max() == 0 and np.abs(expected).max() > 0  # the outside box, and not all zero


@pytest.mark.parametrize("method", METHODS)
def test_hand_worked_values_and_the_border_rules(method):
    """Channel 0 of the map is the row index y, channel 1 is 1. Inside, a bin's value is its centre's y (in feature
    coordinates: input y minus 0.5). With one sample per bin, at the box centre: y = -1 still counts (clamped to
    row 0), below it contributes 0; y = H still counts (row H - 1), above it 0."""
    height, width = 6, 4
    rows = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
    features = np.stack([rows, np.ones_like(rows)], axis=-1)
    # Box y 1..5 in 2 bins of 2 px: centres at input y 2 and 4, i.e. feature y 1.5 and 3.5; x inside.
    got = roi_align(features, np.array([[0.5, 1.0, 3.5, 5.0]]), (2, 1), 1.0, 2, method)
    np.testing.assert_allclose(got[0, :, 0], [[1.5, 1.0], [3.5, 1.0]], rtol=1e-6)
    centres = np.array([-1.0, -1.01, 6.0, 6.01, 2.25])  # feature y of the single sample
    boxes = np.stack([np.full(5, 1.0), centres + 0.5 - 1.0, np.full(5, 2.0), centres + 0.5 + 1.0], axis=1)
    got = np.asarray(roi_align(features, boxes, (1, 1), 1.0, 1, method))[:, 0, 0]
    np.testing.assert_allclose(got, [[0.0, 1.0], [0.0, 0.0], [5.0, 1.0], [0.0, 0.0], [2.25, 1.0]], atol=1e-6)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gather"])
@pytest.mark.parametrize("output_size", [(5, 3), (3, 5)])  # on 8x10 features: x-axis first, then y-axis first
def test_the_forms_agree_with_gather_in_values_and_gradients(rng, method, output_size):
    features = rng.normal(size=(8, 10, 4)).astype(np.float32)
    boxes = random_boxes(rng, 9, 64, 80)
    cotangent = rng.normal(size=(9, *output_size, 4)).astype(np.float32)

    def loss(method, f, b):
        return jnp.sum(roi_align(f, b, output_size, 1 / 8, 2, method) * cotangent)

    by_gather = jax.jit(jax.grad(functools.partial(loss, "gather"), argnums=(0, 1)))(features, boxes)
    by_einsum = jax.jit(jax.grad(functools.partial(loss, method), argnums=(0, 1)))(features, boxes)
    np.testing.assert_allclose(by_einsum[0], by_gather[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_einsum[1], by_gather[1], rtol=1e-4, atol=1e-4)
    assert np.abs(by_gather[0]).max() > 0 and np.abs(by_gather[1]).max() > 0
    # The feature gradient is the transpose of the (linear) map: <grad, features> = loss.
    np.testing.assert_allclose(np.sum(by_einsum[0] * features), loss("gather", features, boxes), rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_jit_and_vmap_over_images(rng, method):
    features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    boxes = random_boxes(rng, 5, 48, 56).reshape(1, 5, 4).repeat(2, axis=0)
    boxes[1] += 3.0
    batched = jax.jit(jax.vmap(lambda f, b: roi_align(f, b, (3, 2), 1 / 8, 2, method)))
    got = np.asarray(batched(features, boxes))
    for image in range(2):
        np.testing.assert_allclose(got[image], torchvision_roi_align(features[image], boxes[image], (3, 2), 1 / 8, 2),
                                   rtol=1e-5, atol=1e-5)
    assert roi_align(features[0], np.zeros((0, 4), np.float32), (3, 2), 1 / 8, 2, method).shape == (0, 3, 2, 3)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        roi_align(np.zeros((4, 4, 1)), np.zeros((1, 4)), (2, 2), sampling_ratio=0)
    with pytest.raises(ValueError):
        roi_align(np.zeros((4, 4, 1)), np.zeros((1, 4)), (2, 2), method="scatter")


def test_against_torchvision_when_installed(rng):
    # A plain importorskip, not conftest's import_or_skip: PyTorch is not a dependency and CI must not need it.
    torchvision = pytest.importorskip("torchvision")
    import torch

    features = rng.normal(size=(12, 10, 3)).astype(np.float32)
    boxes = random_boxes(rng, 20, 192, 160)
    rois = torch.cat([torch.zeros(20, 1), torch.from_numpy(boxes)], dim=1)
    for scale, output_size, sampling_ratio in [(1 / 16, (7, 7), 2), (1 / 8, (3, 5), 1)]:
        expected = torchvision.ops.roi_align(torch.from_numpy(features).permute(2, 0, 1)[None], rois, output_size,
                                             scale, sampling_ratio, aligned=True).permute(0, 2, 3, 1).numpy()
        for method in METHODS:
            got = roi_align(features, boxes, output_size, scale, sampling_ratio, method)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    corner = rng.uniform(0, 40, (40, 2))
    nms_boxes = np.concatenate([corner, corner + rng.uniform(5, 25, (40, 2))], axis=1).astype(np.float32)
    scores = rng.permutation(40).astype(np.float32) / 40  # distinct: the order of ties is not specified
    for threshold in (0.3, 0.5, 0.7):
        expected = torchvision.ops.nms(torch.from_numpy(nms_boxes), torch.from_numpy(scores), threshold).numpy()
        indices, valid = (np.asarray(a) for a in nms(nms_boxes, scores, threshold, max_output=40))
        np.testing.assert_array_equal(indices[valid], expected)
