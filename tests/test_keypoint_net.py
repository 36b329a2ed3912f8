"""The keypoint network: head layout, aligned-corners upsampling, dtypes, and a jitted step that does not retrace."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from hvpose.models.keypoint_net import KeypointNet, split_head, upsample_outputs
from hvpose.ops.upsample import interpolation_matrix, resize_aligned_corners, upsample_to_map_stride
from hvpose.targets import total_loss


def test_full_model_output_shapes_at_crop_size():
    model = KeypointNet(depth=101, output_stride=8, aux_head=True)
    outputs = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 353, 257, 3)))[0])
    assert outputs["heatmap_logits"].shape == (2, 353, 257, 17)
    assert outputs["offsets"].shape == (2, 353, 257, 17, 2)
    assert outputs["aux_offsets"].shape == (2, 353, 257, 17, 2)
    grid = jax.eval_shape(lambda: KeypointNet(map_stride=8).init_with_output(
        jax.random.key(0), jnp.zeros((1, 353, 257, 3)))[0])
    assert grid["heatmap_logits"].shape == (1, 45, 33, 17)


def test_upsampling_puts_cell_i_on_pixel_s_times_i_and_matches_scipy(rng):
    maps = rng.normal(size=(1, 6, 5, 2)).astype(np.float32)
    up = np.asarray(resize_aligned_corners(jnp.asarray(maps), (41, 33)))  # s = 8: 8*5+1, 8*4+1
    np.testing.assert_allclose(up[:, ::8, ::8], maps, atol=1e-6)
    rows, cols = np.meshgrid(np.arange(41) / 8.0, np.arange(33) / 8.0, indexing="ij")
    for c in range(2):
        want = ndimage.map_coordinates(maps[0, :, :, c].astype(np.float64), [rows, cols], order=1)
        np.testing.assert_allclose(up[0, :, :, c], want, atol=1e-5)
    np.testing.assert_allclose(interpolation_matrix(6, 41).sum(axis=1), 1.0, atol=1e-6)


def test_head_channel_layout_is_heatmaps_then_x_then_y():
    k = 3
    maps = jnp.arange(9.0).reshape(1, 1, 1, 9)
    out = split_head(maps, k)
    np.testing.assert_array_equal(out["heatmap_logits"][0, 0, 0], [0, 1, 2])
    np.testing.assert_array_equal(out["offsets"][0, 0, 0], [[3, 6], [4, 7], [5, 8]])


def test_bfloat16_compute_float32_params_and_outputs():
    crops = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
    f32 = KeypointNet(num_keypoints=4, depth=18, output_stride=16)
    bf16 = KeypointNet(num_keypoints=4, depth=18, output_stride=16, dtype="bfloat16")
    variables = f32.init(jax.random.key(1), crops)
    assert {x.dtype for x in jax.tree.leaves(bf16.init(jax.random.key(1), crops))} == {jnp.dtype(jnp.float32)}
    a, b = f32.apply(variables, crops), bf16.apply(variables, crops)
    for key in ("heatmap_logits", "offsets"):
        assert b[key].dtype == jnp.float32
        error, scale = np.abs(np.asarray(b[key]) - np.asarray(a[key])), float(jnp.abs(a[key]).max())
        # Measured: max error 1.2% of the largest output, mean 0.17% (logits and offsets alike). The smallest real
        # defect it must catch, one of the 8 residual branches lost under bf16, is off by 24% at most and 2.7% on
        # average; the bounds (2%, 0.3%) sit between.
        assert error.max() < 0.02 * scale and error.mean() < 0.003 * scale, (error.max() / scale, error.mean() / scale)
        # The head runs in float32: at the feature cells (every 16th pixel, where upsampling is exact) the outputs
        # are not bf16 values. A bf16 head cast to float32 afterwards would make every one of them a bf16 value.
        cells = np.asarray(b[key])[:, ::16, ::16]
        assert np.mean(cells.astype(jnp.bfloat16).astype(np.float32) == cells) < 0.2


def test_jitted_train_step_compiles_once_and_learns():
    """A full loss + gradient + update step on a tiny KeypointNet: no retrace on later calls, loss goes down."""
    size, radius = (41, 33), 4.0
    model = KeypointNet(num_keypoints=2, depth=18, output_stride=8, aux_head=True)
    crops = jax.random.normal(jax.random.key(0), (2, *size, 3))
    keypoints = jnp.array([[[10.0, 20.0, 2], [25.0, 5.0, 1]], [[16.0, 16.0, 2], [0.0, 0.0, 0]]])
    variables = model.init(jax.random.key(1), crops)
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(variables["params"])
    traces = []

    @jax.jit
    def step(params, batch_stats, opt_state, crops, keypoints):
        traces.append(1)

        def loss_fn(params):
            outputs, updates = model.apply({"params": params, "batch_stats": batch_stats}, crops, train=True,
                                           mutable=["batch_stats"])
            terms = total_loss(outputs, keypoints, radius)
            return terms["loss"], (terms, updates["batch_stats"])

        (_, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, terms

    params, batch_stats = variables["params"], variables["batch_stats"]
    losses = []
    for _ in range(8):
        params, batch_stats, opt_state, terms = step(params, batch_stats, opt_state, crops, keypoints)
        losses.append(float(terms["loss"]))
    assert len(traces) == 1
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert set(terms) == {"loss", "heatmap_loss", "offset_loss", "aux_loss"}


@pytest.mark.parametrize("bad", [{"depth": 42}, {"output_stride": 4}])
def test_bad_backbone_settings_are_clear_errors(bad):
    with pytest.raises(ValueError, match="must be"):
        KeypointNet(**bad).init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))


def test_heatmaps_start_at_the_prior_and_offsets_near_zero():
    model = KeypointNet(num_keypoints=3, depth=18, output_stride=32, heatmap_prior=0.02, preprocess="none")
    crops = jnp.zeros((1, 65, 65, 3))
    outputs = model.apply(model.init(jax.random.key(0), crops), crops)
    np.testing.assert_allclose(jax.nn.sigmoid(outputs["heatmap_logits"]).mean(), 0.02, rtol=0.1)
    assert float(jnp.abs(outputs["offsets"]).max()) < 1.0


def test_network_upsamples_with_aligned_corners():
    """The full-resolution output read every 8th pixel is the feature-grid output (cell i at pixel 8i)."""
    crops = jax.random.normal(jax.random.key(0), (1, 41, 33, 3))
    model = KeypointNet(num_keypoints=3, depth=18, output_stride=8)
    variables = model.init(jax.random.key(1), crops)
    full = model.apply(variables, crops)
    grid = KeypointNet(num_keypoints=3, depth=18, output_stride=8, map_stride=8).apply(variables, crops)
    half = KeypointNet(num_keypoints=3, depth=18, output_stride=8, map_stride=2).apply(variables, crops)
    assert grid["offsets"].shape[1:3] == (6, 5) and half["offsets"].shape[1:3] == (21, 17)
    for key in ("heatmap_logits", "offsets"):
        np.testing.assert_allclose(full[key][:, ::8, ::8], grid[key], atol=1e-6)
        np.testing.assert_allclose(full[key][:, ::2, ::2], half[key], atol=1e-6)
        assert float(jnp.abs(full[key][:, 4::8, 4::8] - grid[key][:, :-1, :-1]).max()) > 1e-6


@pytest.mark.parametrize("map_stride", [1, 2, 8])
def test_upsampling_the_split_outputs_equals_splitting_the_upsampled_maps(rng, map_stride):
    """`upsample_outputs` splits on the feature grid (for speed); the values are those of the 3K maps upsampled."""
    maps = jnp.asarray(rng.normal(size=(2, 6, 5, 3 * 4)), jnp.float32)
    grid = split_head(maps, 4)
    ours = upsample_outputs(grid["heatmap_logits"], grid["offsets"], (41, 33), 8, map_stride)
    reference = split_head(upsample_to_map_stride(maps, (41, 33), 8, map_stride), 4)
    for key in ("heatmap_logits", "offsets"):
        assert ours[key].shape == reference[key].shape
        np.testing.assert_allclose(ours[key], reference[key], rtol=1e-6, atol=1e-6)


def test_network_normalises_its_uint8_input_itself(rng):
    """`preprocess` runs inside the model: uint8 crops through "unit" equal pre-normalised crops through "none"."""
    crops = rng.integers(0, 256, (1, 33, 25, 3), np.uint8)
    inside = KeypointNet(num_keypoints=2, depth=18, output_stride=8, base_width=8, preprocess="unit")
    outside = inside.clone(preprocess="none")
    variables = inside.init(jax.random.key(0), crops)
    np.testing.assert_allclose(inside.apply(variables, crops)["heatmap_logits"],
                               outside.apply(variables, crops / 127.5 - 1.0)["heatmap_logits"], atol=1e-5)
    caffe = inside.clone(preprocess="caffe").apply(variables, crops)["heatmap_logits"]
    assert float(jnp.abs(caffe - inside.apply(variables, crops)["heatmap_logits"]).max()) > 1e-3


@pytest.mark.parametrize("mode", ["caffe", "torchvision"])
def test_network_applies_its_preprocess_mode(rng, mode):
    """uint8 RGB crops through each ImageNet mode equal crops normalised outside by the published formula (written
    out here, not taken from `hvpose.models.preprocess`) through "none"."""
    crops = rng.integers(0, 256, (1, 33, 25, 3), np.uint8)
    rgb = crops.astype(np.float64)
    if mode == "caffe":  # Keras: RGB -> BGR, minus the ImageNet BGR means
        expected = rgb[..., ::-1] - np.array([103.939, 116.779, 123.68])
    else:  # torchvision: ToTensor (/ 255), Normalize(mean, std) per RGB channel
        expected = (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    model = KeypointNet(num_keypoints=2, depth=18, output_stride=8, base_width=8, preprocess=mode)
    variables = model.init(jax.random.key(0), crops)
    inside = model.apply(variables, crops)["heatmap_logits"]
    outside = model.clone(preprocess="none").apply(variables, expected.astype(np.float32))["heatmap_logits"]
    # float32 through an 8-wide ResNet-18: measured max difference 6e-6 (caffe, logits up to 11) and 1e-6
    # (torchvision, up to 4.7); the bound is 1e-4 of the largest logit. The smallest defect to catch, the channel
    # order reversed, moves the logits by up to 3.9 (caffe) and 0.07 (torchvision).
    np.testing.assert_allclose(inside, outside, atol=1e-4 * max(1.0, float(jnp.abs(outside).max())))


@pytest.mark.parametrize("bad, match", [({"dtype": "float16"}, "dtype"), ({"preprocess": "imagenet"}, "preprocess"),
                                        ({"map_stride": 3}, "map_stride")])
def test_bad_settings_fail_when_the_network_is_built(bad, match):
    with pytest.raises(ValueError, match=match):
        KeypointNet(**bad)
