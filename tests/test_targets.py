"""Targets and loss against direct per-pixel formulas written with Python loops and numpy float64."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hvpose.targets import huber, keypoint_loss, make_targets, total_loss

H, W, R = 13, 11, 3.0


def keypoints_example():
    # (x, y, v): inside, on a disk edge crossing the border, unlabelled, fractional, outside the crop.
    return np.array([
        [[5.0, 6.0, 2], [0.0, 12.0, 1], [4.0, 4.0, 0], [7.3, 2.6, 2], [-2.5, 5.0, 2]],
        [[10.0, 0.0, 2], [5.5, 6.5, 1], [1.0, 1.0, 2], [3.0, 9.0, 0], [20.0, 20.0, 2]],
    ], np.float32)


def reference_targets(keypoints, stride=1):
    """Targets at crop pixels (stride * i, stride * j)."""
    batch, num_keypoints, _ = keypoints.shape
    rows, cols = range(0, H, stride), range(0, W, stride)
    heat = np.zeros((batch, len(rows), len(cols), num_keypoints))
    offs = np.zeros((batch, len(rows), len(cols), num_keypoints, 2))
    for b in range(batch):
        for k in range(num_keypoints):
            x, y, v = keypoints[b, k]
            for i, row in enumerate(rows):
                for j, col in enumerate(cols):
                    if v > 0 and (x - col) ** 2 + (y - row) ** 2 <= R * R:
                        heat[b, i, j, k] = 1
                        offs[b, i, j, k] = (x - col, y - row)
    return heat, offs


def test_targets_match_per_pixel_definition():
    keypoints = keypoints_example()
    targets = jax.jit(make_targets, static_argnums=(1, 2))(keypoints, (H, W), R)
    heat, offs = reference_targets(keypoints)
    np.testing.assert_array_equal(targets["heatmaps"], heat)
    np.testing.assert_array_equal(targets["offset_mask"], heat > 0)
    np.testing.assert_allclose(targets["offsets"], offs, atol=1e-6)
    assert heat[0, :, :, 2].sum() == 0  # unlabelled keypoint: no positives
    assert heat[0, :, :, 0].sum() == 29  # lattice points in a closed disk of radius 3
    assert heat[1, :, :, 4].sum() == 0  # far outside the crop


def reference_loss(logits, offsets, keypoints, delta, scale, wh=4.0, wo=1.0, stride=1):
    heat, target = reference_targets(keypoints, stride)
    logits = logits.astype(np.float64)
    bce = np.maximum(logits, 0) - logits * heat + np.log1p(np.exp(-np.abs(logits)))
    heatmap_loss = bce.mean()
    total, count = 0.0, 0
    for index in zip(*np.nonzero(heat), strict=True):
        e = np.linalg.norm(offsets[index].astype(np.float64) - target[index]) / scale
        d = delta / scale
        total += 0.5 * e * e / d if e <= d else e - 0.5 * d
        count += 1
    offset_loss = total / max(count, 1)
    return wh * heatmap_loss + wo * offset_loss, heatmap_loss, offset_loss


@pytest.mark.parametrize("delta, scale, stride", [(1.0, None, 1), (0.5, 1.0, 1), (10.0, 2.0, 1), (1.0, None, 2),
                                                  (1.0, None, 3)])
def test_loss_matches_direct_formula(rng, delta, scale, stride):
    keypoints = keypoints_example()
    shape = (2, len(range(0, H, stride)), len(range(0, W, stride)), 5)
    logits = rng.normal(0, 3, shape).astype(np.float32)
    offsets = rng.normal(0, 2, (*shape, 2)).astype(np.float32)
    got = jax.jit(keypoint_loss, static_argnames=("radius", "huber_delta", "offset_scale", "map_stride"))(
        logits, offsets, keypoints, radius=R, huber_delta=delta, offset_scale=scale, map_stride=stride)
    want = reference_loss(logits, offsets, keypoints, delta, R if scale is None else scale, stride=stride)
    np.testing.assert_allclose([got["loss"], got["heatmap_loss"], got["offset_loss"]], want, rtol=1e-5)


def test_gradients_are_the_logistic_and_huber_derivatives(rng):
    """d L_h / d z = (sigmoid(z) - t) / pixels; d L_o / d offset = huber'(|e|) e / |e| / scale / disk pixels."""
    keypoints = keypoints_example()
    logits = rng.normal(0, 3, (2, H, W, 5)).astype(np.float32)
    offsets = rng.normal(0, 2, (2, H, W, 5, 2)).astype(np.float32)
    targets = make_targets(keypoints, (H, W), R)
    grad_logits, grad_offsets = jax.grad(lambda z, o: keypoint_loss(z, o, keypoints, R, heatmap_weight=1.0)["loss"],
                                         argnums=(0, 1))(logits, offsets)
    sigmoid = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    np.testing.assert_allclose(grad_logits, (sigmoid - targets["heatmaps"]) / logits.size, rtol=1e-4, atol=1e-9)
    error = (offsets - np.asarray(targets["offsets"])) / R
    norm = np.linalg.norm(error, axis=-1, keepdims=True)
    slope = np.where(norm <= 1.0 / R, error * R, error / np.maximum(norm, 1e-12))  # d huber / d error
    disk = np.asarray(targets["offset_mask"])[..., None]
    np.testing.assert_allclose(grad_offsets, np.where(disk, slope / R / disk.sum(), 0.0), rtol=1e-4, atol=1e-9)


def test_perfect_offsets_cost_nothing_and_gradients_are_finite():
    keypoints = keypoints_example()
    targets = make_targets(keypoints, (H, W), R)
    logits = np.where(targets["heatmaps"] > 0, 30.0, -30.0).astype(np.float32)
    terms = keypoint_loss(logits, targets["offsets"], keypoints, R)
    assert float(terms["offset_loss"]) == 0.0
    assert float(terms["heatmap_loss"]) < 1e-10
    grads = jax.grad(lambda o: keypoint_loss(logits, o, keypoints, R)["loss"])(targets["offsets"])
    assert np.all(np.isfinite(grads)) and np.abs(grads).max() == 0.0


def test_no_labelled_keypoints_gives_zero_offset_loss():
    keypoints = np.zeros((1, 3, 3), np.float32)
    terms = keypoint_loss(np.zeros((1, H, W, 3)), np.ones((1, H, W, 3, 2)), keypoints, R)
    assert float(terms["offset_loss"]) == 0.0
    np.testing.assert_allclose(terms["heatmap_loss"], np.log(2.0), rtol=1e-5)


def test_huber_is_quadratic_then_linear_with_unit_slope():
    e = np.array([0.0, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(huber(e**2, 1.0), [0.0, 0.125, 0.5, 2.5])
    assert float(jax.grad(lambda s: huber(s, 1.0))(0.0)) == 0.5  # d/d(e^2) of 0.5 e^2


def test_total_loss_adds_weighted_aux_head(rng):
    keypoints = keypoints_example()
    main = {"heatmap_logits": rng.normal(size=(2, H, W, 5)), "offsets": rng.normal(size=(2, H, W, 5, 2))}
    aux = {"aux_heatmap_logits": rng.normal(size=(2, H, W, 5)), "aux_offsets": rng.normal(size=(2, H, W, 5, 2))}
    only_main = total_loss(main, keypoints, R)
    both = total_loss({**main, **aux}, keypoints, R, aux_weight=0.5)
    aux_alone = keypoint_loss(aux["aux_heatmap_logits"], aux["aux_offsets"], keypoints, R)["loss"]
    np.testing.assert_allclose(both["loss"], only_main["loss"] + 0.5 * aux_alone, rtol=1e-6)
    np.testing.assert_allclose(both["aux_loss"], aux_alone, rtol=1e-6)
    assert "aux_loss" not in only_main


def test_unlabelled_keypoints_are_negatives_or_left_out(rng):
    """"negative": every heatmap counts, unlabelled ones towards 0; "ignore": only labelled keypoints' heatmaps."""
    size, radius = (17, 13), 3.0
    logits = jnp.asarray(rng.normal(0, 2, (2, *size, 3)), jnp.float32)
    offsets = jnp.zeros((2, *size, 3, 2))
    keypoints = jnp.array([[[4.0, 5.0, 2], [0.0, 0.0, 0], [8.0, 9.0, 1]],
                           [[6.0, 6.0, 2], [3.0, 12.0, 2], [0.0, 0.0, 0]]])
    targets = np.asarray(make_targets(keypoints, size, radius)["heatmaps"])
    bce = np.asarray(optax.sigmoid_binary_cross_entropy(logits, targets))
    labelled = np.asarray(keypoints[:, :, 2] > 0)
    negative = keypoint_loss(logits, offsets, keypoints, radius, unlabelled="negative")["heatmap_loss"]
    ignore = keypoint_loss(logits, offsets, keypoints, radius, unlabelled="ignore")["heatmap_loss"]
    np.testing.assert_allclose(negative, bce.mean(), rtol=1e-6)
    np.testing.assert_allclose(ignore, bce.transpose(0, 3, 1, 2)[labelled].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="unlabelled"):
        keypoint_loss(logits, offsets, keypoints, radius, unlabelled="skip")
