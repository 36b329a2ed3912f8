"""The shifted-slices depthwise convolution equals XLA's grouped convolution (strides, dilations, padding,
odd and even sizes, channel multipliers)."""

import jax
import numpy as np
import pytest

from hvpose.ops.depthwise import depthwise_conv, resolve


@pytest.mark.parametrize("size,kernel,stride,dilation,padding,multiplier", [
    ((17, 13), (3, 3), (1, 1), (1, 1), "SAME", 1),
    ((17, 13), (3, 3), (2, 2), (1, 1), "SAME", 1),
    ((16, 12), (3, 3), (2, 2), (1, 1), "SAME", 1),
    ((23, 17), (3, 3), (1, 1), (2, 2), "SAME", 1),
    ((23, 17), (3, 3), (1, 1), (4, 4), "SAME", 2),
    ((20, 15), (5, 3), (2, 1), (1, 1), "VALID", 1),
])
def test_shifted_equals_grouped(rng, size, kernel, stride, dilation, padding, multiplier):
    x = rng.normal(size=(2, *size, 6)).astype(np.float32)
    w = rng.normal(size=(*kernel, 1, 6 * multiplier)).astype(np.float32)
    grouped = depthwise_conv(x, w, stride, dilation, padding, implementation="grouped")
    shifted = jax.jit(lambda x, w: depthwise_conv(x, w, stride, dilation, padding))(x, w)
    assert shifted.shape == grouped.shape
    np.testing.assert_allclose(shifted, grouped, rtol=1e-5, atol=1e-5)
    # Gradients too (the formulation is used in training as well).
    grad = jax.grad(lambda w, impl: depthwise_conv(x, w, stride, dilation, padding, impl).sum() ** 2)
    np.testing.assert_allclose(grad(w, "shifted"), grad(w, "grouped"), rtol=1e-4, atol=1e-3)


def test_choices():
    assert resolve("auto") == ("shifted" if jax.default_backend() == "cpu" else "grouped")
    with pytest.raises(ValueError, match="not one of"):
        resolve("fft")
    with pytest.raises(ValueError, match="depthwise kernel"):
        depthwise_conv(np.zeros((1, 5, 5, 4), np.float32), np.zeros((3, 3, 2, 4), np.float32))
