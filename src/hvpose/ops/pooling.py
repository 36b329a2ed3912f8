"""Max pooling written as the maximum of shifted strided slices: the same values as `flax.linen.max_pool`, with a
gradient made of elementwise selects.

JAX differentiates `lax.reduce_window` max through a variadic reduce-window that carries index arrays (built from
iotas the size of the padded input) and a scatter; on CPUs that costs more than the pooling itself, every train
step. Here the forward pass is `window` strided slices of the padded input and their elementwise maximum, which
XLA fuses into one loop, and the backward pass is selects and pads. The values are identical. Gradients are
identical wherever a window's maximum is unique; at exact ties `jnp.maximum` splits the gradient between the tied
inputs, where reduce-window gives it to one of them. After a ReLU the only common tie is between zeros, whose
gradient the ReLU stops either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
    """Max pooling of NHWC `x` over `window` (height, width) with `strides` and explicit `padding`
    ((top, bottom), (left, right)), padded with -inf: `flax.linen.max_pool(x, window, strides, padding)`."""
    (window_h, window_w), (stride_h, stride_w) = window, strides
    (top, bottom), (left, right) = padding
    if min(window_h, window_w, stride_h, stride_w) < 1:
        raise ValueError(f"window {tuple(window)} and strides {tuple(strides)} must be positive")
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=-jnp.inf)
    batch, height, width, channels = padded.shape
    out_h, out_w = (height - window_h) // stride_h + 1, (width - window_w) // stride_w + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"window {tuple(window)} is larger than the padded input {height}x{width}")
    result = None
    for i in range(window_h):
        for j in range(window_w):
            shifted = jax.lax.slice(padded, (0, i, j, 0),
                                    (batch, i + (out_h - 1) * stride_h + 1, j + (out_w - 1) * stride_w + 1, channels),
                                    (1, stride_h, stride_w, 1))
            result = shifted if result is None else jnp.maximum(result, shifted)
    return result
