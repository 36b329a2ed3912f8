"""hvpose.ops.pooling.max_pool against flax.linen.max_pool (lax.reduce_window): values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.ops.pooling import max_pool

CASES = [  # (input shape, window, strides, padding)
    ((2, 81, 57, 16), (3, 3), (2, 2), ((1, 1), (1, 1))),  # the ResNet stem's, on the demo's 161x113 crops
    ((1, 80, 56, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),  # even sizes
    ((3, 14, 14, 5), (2, 2), (2, 2), ((0, 0), (0, 0))),  # the detector's block4 head on 14x14 RoIs
    ((1, 9, 7, 2), (3, 2), (1, 3), ((2, 0), (0, 1))),  # uneven window, strides and padding
    ((2, 10, 11, 3), (1, 2), (3, 2), ((0, 2), (1, 0))),  # a window shorter than its stride: phases no output reads
    ((2, 17, 19, 4), (5, 4), (3, 2), ((2, 2), (1, 2))),  # up to two window positions per phase and axis
]


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), CASES)
def test_values_equal_flax_max_pool(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    expected = nn.max_pool(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(max_pool(x, window, strides, padding), expected)


@pytest.mark.parametrize(("shape", "window", "strides", "padding"), CASES)
def test_gradient_equals_flax_max_pool_without_ties(shape, window, strides, padding):
    x = jax.random.normal(jax.random.key(1), shape)  # continuous values: every window's maximum is unique
    out_shape = nn.max_pool(x, window, strides=strides, padding=padding).shape
    cotangent = jax.random.normal(jax.random.key(2), out_shape)
    expected = jax.grad(lambda v: jnp.sum(nn.max_pool(v, window, strides=strides, padding=padding) * cotangent))(x)
    ours = jax.grad(lambda v: jnp.sum(max_pool(v, window, strides, padding) * cotangent))(x)
    # Overlapping windows add their gradients in another order: equal to float32 rounding.
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(ours) == np.count_nonzero(expected)


@pytest.mark.parametrize("values", ["constant", "rounded", "relu"])
def test_gradient_equals_flax_max_pool_with_ties(values):
    # Ties everywhere (a constant crop border), at a few values, or between the zeros after a ReLU: the gradient goes
    # to the first maximum of each window in row-major order, as reduce-window max's does; never split.
    x = jax.random.normal(jax.random.key(3), (2, 33, 25, 8))
    x = {"constant": jnp.ones_like(x), "rounded": jnp.round(2 * x) / 2, "relu": nn.relu(x)}[values]
    cotangent = jax.random.normal(jax.random.key(4), (2, 17, 13, 8))
    padding = ((1, 1), (1, 1))
    expected = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (3, 3), strides=(2, 2), padding=padding) * cotangent))(x)
    ours = jax.grad(lambda v: jnp.sum(max_pool(v, (3, 3), (2, 2), padding) * cotangent))(x)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ours != 0, expected != 0)  # the same inputs receive gradient


def test_jit_and_errors():
    x = jnp.arange(2 * 5 * 5 * 1, dtype=jnp.float32).reshape(2, 5, 5, 1)
    np.testing.assert_array_equal(jax.jit(lambda v: max_pool(v, (2, 2), (2, 2)))(x)[0, :, :, 0], [[6, 8], [16, 18]])
    with pytest.raises(ValueError, match="must be positive"):
        max_pool(x, (0, 2), (1, 1))
    with pytest.raises(ValueError, match="larger than the padded input"):
        max_pool(x, (7, 7), (1, 1))
