"""initial_variables: the eager `model.init`'s values (to a few units in the last place), as one compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.models.detector import FasterRCNN
from hvpose.models.initialize import initial_variables
from hvpose.models.keypoint_net import KeypointNet

MODELS = {
    # Every initialiser the package uses: truncated-normal convolutions, normal(0.01) RPN and box layers, uniform
    # dense layers, the heads' constant prior bias, BatchNorm's ones and zeros.
    "keypoint_net": (KeypointNet(num_keypoints=17, depth=18, output_stride=16, stride_on="3x3", conv_bias=False,
                                 base_width=8, dtype="float32"), (1, 33, 33, 3)),
    "detector": (FasterRCNN(depth=18, output_stride=16, stride_on="3x3", conv_bias=False, base_width=8,
                            preprocess="unit", head="fc", fc_dim=32, roi_size=5, anchor_sizes=(16.0, 32.0),
                            anchor_ratios=(1.0, 2.0), rpn_channels=16, rpn_pre_nms_top_k=100,
                            rpn_post_nms_top_k=20, num_rois=8), (1, 65, 65, 3)),
}


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between float32 arrays: their distance on the ordered integer line of floats."""
    def ordered(x):
        bits = x.astype(np.float32).view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return np.abs(ordered(a) - ordered(b))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_values_are_the_eager_inits_to_a_few_ulps(name):
    model, shape = MODELS[name]
    key, example = jax.random.key(3), jnp.zeros(shape, jnp.uint8)
    eager = model.init(key, example)
    fast = initial_variables(model, key, example)
    assert jax.tree.structure(fast) == jax.tree.structure(eager)
    identical = total = 0
    for (path, expected), actual in zip(jax.tree_util.tree_leaves_with_path(eager), jax.tree.leaves(fast),
                                        strict=True):
        expected, actual = np.asarray(expected), np.asarray(actual)
        assert actual.shape == expected.shape and actual.dtype == expected.dtype, jax.tree_util.keystr(path)
        assert np.max(ulp_distance(actual, expected), initial=0) <= 4, jax.tree_util.keystr(path)
        identical += int(np.sum(actual == expected))
        total += expected.size
    assert identical / total > 0.99  # a last-bit rounding here and there, not another random stream


def test_another_key_gives_other_values():
    model, shape = MODELS["keypoint_net"]
    example = jnp.zeros(shape, jnp.uint8)
    first, second = (initial_variables(model, jax.random.key(seed), example)["params"]["backbone"]["block1_unit1"]
                     ["conv1"]["kernel"] for seed in (0, 1))
    assert not np.allclose(first, second)


def test_under_a_trace_it_is_model_init():
    model, shape = MODELS["detector"]
    abstract = jax.eval_shape(lambda: initial_variables(model, jax.random.key(0), jnp.zeros(shape, jnp.uint8)))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, jnp.uint8)))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(lambda a: (a.shape, a.dtype),
                                                                                  expected)
