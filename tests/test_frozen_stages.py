"""`config.model.frozen_stages` (Detectron2's FREEZE_AT): the stem and the first stages of a loaded backbone stay
exactly as loaded (no gradient, no optimizer update, no weight decay, stored BatchNorm statistics), the rest trains,
inference is unchanged, and freezing a random backbone is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hvpose.errors import ConfigError
from hvpose.models.keypoint_net import KeypointNet
from hvpose.models.resnet import ResNet, frozen_parameters
from hvpose.train import init_state, make_optimizer, train
from test_train import tiny_config

IMAGES = jax.random.uniform(jax.random.key(1), (2, 33, 25, 3), maxval=255.0)


def frozen_names(tree, frozen_stages):
    labels = frozen_parameters(tree, frozen_stages, backbone="backbone")
    return {jax.tree_util.keystr(path)
            for path, frozen in jax.tree_util.tree_leaves_with_path(labels) if frozen}


def test_the_labels_cover_the_stem_and_the_first_stages_of_the_backbone_only():
    model = KeypointNet(num_keypoints=3, depth=18, output_stride=8, stride_on="3x3", conv_bias=False,
                        base_width=8, frozen_stages=2, preprocess="unit")
    params = model.init(jax.random.key(0), IMAGES)["params"]
    frozen = frozen_names(params, 2)
    assert frozen and all(("'stem_" in name or "'block1_" in name) and "['backbone']" in name for name in frozen)
    every = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert {name for name in every if "'stem_" in name or "'block1_" in name} == frozen
    assert frozen_names(params, 0) == set()
    assert len(frozen_names(params, 5)) == len([n for n in every if "['backbone']" in n])


@pytest.mark.parametrize("frozen_stages", [1, 2, 3])
def test_frozen_parts_get_no_gradient_and_keep_their_statistics(frozen_stages):
    model = ResNet(depth=18, output_stride=16, stride_on="3x3", conv_bias=False, base_width=8,
                   frozen_stages=frozen_stages)
    variables = model.init(jax.random.key(0), IMAGES)

    def loss(params):
        features, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, IMAGES,
                                        train=True, mutable=["batch_stats"])
        return jnp.mean(features["block4"] ** 2), updates["batch_stats"]

    grads, statistics = jax.grad(loss, has_aux=True)(variables["params"])
    frozen = frozen_parameters({"backbone": grads}, frozen_stages)["backbone"]
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for (path, grad), is_frozen in zip(leaves, jax.tree.leaves(frozen), strict=True):
        if is_frozen:
            assert not np.any(np.asarray(grad)), jax.tree_util.keystr(path)
        else:
            assert np.any(np.asarray(grad)), jax.tree_util.keystr(path)
    kept = frozen_parameters({"backbone": statistics}, frozen_stages)["backbone"]
    leaves = jax.tree_util.tree_leaves_with_path(statistics)
    for (path, new), old, is_frozen in zip(leaves, jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(kept),
                                           strict=True):
        assert np.array_equal(new, old) == is_frozen, jax.tree_util.keystr(path)


def test_inference_is_the_same_network():
    base = dict(depth=18, output_stride=16, stride_on="3x3", conv_bias=False, base_width=8)
    variables = ResNet(**base).init(jax.random.key(0), IMAGES)
    plain = ResNet(**base).apply(variables, IMAGES)
    frozen = ResNet(**base, frozen_stages=3).apply(variables, IMAGES)
    jax.tree.map(np.testing.assert_array_equal, plain, frozen)


def test_the_optimizer_leaves_frozen_parameters_exactly_alone():
    """Even with weight decay and a (made-up) gradient on them, frozen parameters do not move."""
    config = tiny_config()
    config.train.weight_decay = 0.1
    model = KeypointNet(num_keypoints=17, **{**config.model, "frozen_stages": 2})
    optimizer = make_optimizer(config.train, frozen_stages=2)
    state = init_state(model, optimizer, (33, 25), 0)
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    moved = jax.tree.map(lambda p, u: not np.array_equal(p, optax.apply_updates(p, u)), state.params, updates)
    frozen = frozen_parameters(state.params, 2)
    assert jax.tree.leaves(moved) == [not f for f in jax.tree.leaves(frozen)]
    assert any(jax.tree.leaves(frozen))


def test_freezing_a_random_backbone_is_refused_before_anything_is_written(tmp_path):
    config = tiny_config()
    config.model.frozen_stages = 2
    with pytest.raises(ConfigError, match="frozen_stages=2 would freeze randomly initialised layers"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_resnet_refuses_more_frozen_parts_than_it_has():
    with pytest.raises(ValueError, match="frozen_stages must be 0 to 4"):
        ResNet(depth=18, base_width=8, stages=3, frozen_stages=5).init(jax.random.key(0), IMAGES)
