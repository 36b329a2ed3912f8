import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.models.detector import FasterRCNN
from hvpose.models.keypoint_net import KeypointNet
from hvpose.models.resnet import ResNet, canonical_multipliers, stage_strides_and_dilations, stage_width


def randomize_batch_stats(variables, seed=1):
    """Non-trivial BatchNorm statistics (means near 0, variances 0.5-2) so eval-mode BN is not the identity."""
    def randomize(path, x):
        key = jax.random.fold_in(jax.random.key(seed), hash(jax.tree_util.keystr(path)) % 2**31)
        if path[-1].key == "mean":
            return 0.1 * jax.random.normal(key, x.shape)
        return jax.random.uniform(key, x.shape, minval=0.5, maxval=2.0)
    return {**variables, "batch_stats": jax.tree_util.tree_map_with_path(randomize, variables["batch_stats"])}


@pytest.mark.parametrize("output_stride, block4_hw", [(8, (45, 33)), (16, (23, 17)), (32, (12, 9))])
def test_resnet101_feature_shapes_at_crop_size(output_stride, block4_hw):
    model = ResNet(depth=101, output_stride=output_stride)
    features = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 353, 257, 3)))[0])
    assert features["block4"].shape == (2, *block4_hw, 2048)
    assert features["block1"].shape == (2, 89, 65, 256)
    assert features["block3"].shape[-1] == 1024


def test_stage_plan():
    assert stage_strides_and_dilations(32) == [(1, 1), (2, 1), (2, 1), (2, 1)]
    assert stage_strides_and_dilations(16) == [(1, 1), (2, 1), (2, 1), (1, 2)]
    assert stage_strides_and_dilations(8) == [(1, 1), (2, 1), (1, 2), (1, 4)]
    with pytest.raises(ValueError, match="output_stride"):
        stage_strides_and_dilations(4)


@pytest.mark.parametrize("depth, stride_on", [(50, "1x1"), (50, "3x3"), (18, "3x3")])
def test_atrous_features_equal_strided_features_subsampled(depth, stride_on):
    """Algorithme a trous: with the same weights, output stride 8 evaluated densely, read every 4th cell, equals
    output stride 32; likewise stride 16 every 2nd cell. Holds exactly for input sizes 32n+1 (grids line up)."""
    images = jax.random.normal(jax.random.key(0), (1, 65, 97, 3))
    models = {s: ResNet(depth=depth, output_stride=s, stride_on=stride_on, conv_bias=stride_on == "1x1")
              for s in (8, 16, 32)}
    variables = randomize_batch_stats(models[32].init(jax.random.key(1), images))
    block4 = {s: np.asarray(m.apply(variables, images)["block4"]) for s, m in models.items()}
    assert block4[32].shape[1:3] == (3, 4)
    assert np.mean(block4[32] > 0) > 0.2  # features are alive, so the comparisons below mean something
    scale = np.abs(block4[32]).max()
    np.testing.assert_allclose(block4[8][:, ::4, ::4], block4[32], atol=1e-5 * scale)
    np.testing.assert_allclose(block4[16][:, ::2, ::2], block4[32], atol=1e-5 * scale)
    # Dilation matters: the dense map is not just the strided one repeated.
    assert np.abs(block4[8][:, 1::4, ::4] - block4[32][:, :-1]).max() > 1e-3 * scale


def test_batchnorm_train_updates_statistics_and_frozen_does_not():
    images = jax.random.normal(jax.random.key(0), (2, 33, 33, 3))
    model = ResNet(depth=18, output_stride=32)
    variables = model.init(jax.random.key(1), images)
    _, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updated["batch_stats"])
    assert all(jax.tree.leaves(changed))

    frozen = ResNet(depth=18, output_stride=32, bn_frozen=True)
    train_out, kept = frozen.apply(variables, images, train=True, mutable=["batch_stats"])
    jax.tree.map(np.testing.assert_array_equal, variables["batch_stats"], kept["batch_stats"])
    eval_out = frozen.apply(variables, images, train=False)
    np.testing.assert_array_equal(train_out["block4"], eval_out["block4"])


def test_bfloat16_compute_keeps_float32_params():
    images = jax.random.normal(jax.random.key(0), (1, 33, 33, 3))
    model = ResNet(depth=18, output_stride=16, dtype=jnp.bfloat16)
    variables = model.init(jax.random.key(1), images)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert model.apply(variables, images)["block4"].dtype == jnp.bfloat16


def test_unknown_depth_is_a_clear_error():
    with pytest.raises(ValueError, match="depth must be one of"):
        ResNet(depth=42).init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))


@pytest.mark.parametrize(("depth", "expansion"), [(18, 1), (50, 4)])
def test_width_multipliers_set_each_stages_width_and_default_to_the_standard(depth, expansion):
    images = jnp.zeros((1, 65, 49, 3))
    standard = ResNet(depth=depth, output_stride=16, base_width=8)
    narrow_block4 = ResNet(depth=depth, output_stride=16, base_width=8, width_multipliers=(1, 2, 4, 4))
    for model, widths in ((standard, (8, 16, 32, 64)), (narrow_block4, (8, 16, 32, 32))):
        features, variables = model.init_with_output(jax.random.key(0), images)
        assert [features[f"block{s + 1}"].shape[-1] for s in range(4)] == [w * expansion for w in widths]
        assert variables["params"]["block4_unit1"]["conv1"]["kernel"].shape[-1] == widths[3]
    assert [stage_width(s, 8) for s in range(4)] == [8, 16, 32, 64]
    assert [stage_width(s, 8, (2, 3, 5, 7)) for s in range(4)] == [16, 24, 40, 56]  # conv2_x wider than the stem


@pytest.mark.parametrize("widths", [(1, 2, 4), (1, 2, 0, 4), (1, 2, 4, 4.5)])
def test_bad_width_multipliers_are_a_clear_error(widths):
    with pytest.raises(ValueError, match="width_multipliers must be"):
        ResNet(depth=18, width_multipliers=widths).init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)))


def test_a_basic_conv2_x_wider_than_the_stem_projects_its_shortcut():
    # Standard basic blocks keep the stem's channels through conv2_x (an identity shortcut); a wider conv2_x needs the
    # projection that every other stage's first unit has.
    images = jnp.zeros((1, 33, 33, 3))
    standard = ResNet(depth=18, output_stride=32, base_width=8).init(jax.random.key(0), images)["params"]
    wider_resnet = ResNet(depth=18, output_stride=32, base_width=8, width_multipliers=(2, 2, 4, 8))
    wider, variables = wider_resnet.init_with_output(jax.random.key(0), images)
    assert "shortcut_conv" not in standard["block1_unit1"]
    assert variables["params"]["block1_unit1"]["shortcut_conv"]["kernel"].shape == (1, 1, 8, 16)
    assert wider["block1"].shape[-1] == 16


def test_the_standard_widths_have_one_spelling():
    assert canonical_multipliers(()) == canonical_multipliers([1, 2, 4, 8]) == ()
    assert canonical_multipliers([1, 2, 4, 4]) == (1, 2, 4, 4)  # a list, as read from json
    assert KeypointNet(width_multipliers=[1, 2, 4, 8]).width_multipliers == ()
    assert FasterRCNN(width_multipliers=[1, 2, 4, 4]).width_multipliers == (1, 2, 4, 4)
    hash(KeypointNet(width_multipliers=[1, 2, 4, 4]))  # modules hash (jit's static arguments)
