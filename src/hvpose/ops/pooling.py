"""Max pooling written as the maximum of shifted strided slices: the same values and gradient as
`flax.linen.max_pool`, computed with elementwise selects.

JAX differentiates `lax.reduce_window` max through a variadic reduce-window that carries index arrays (built from
iotas the size of the padded input) and a scatter; on CPUs that costs more than the pooling itself, every train
step. Here the forward pass is the window's strided slices of the padded input, their running maximum and the
position of the first maximum in each window (row-major); the backward pass (a custom VJP) sends each output's
gradient to that one input, as reduce-window max's gradient does, through selects and pads that XLA fuses. Those
positions are kept as the forward pass computed them (an optimization barrier): otherwise XLA fuses their
computation into the backward pass's loop over input pixels, which then recomputes every window slice for each of
the window's positions (benchmarks/train_step.py, section max_pool, measures the step). The values are
identical. So are the gradients where a window's maximum is unique; at exact ties the first position
takes it all (`jnp.maximum`'s own derivative would split it, which makes training depend on which values round to a
tie: crops padded with a constant colour tie whole regions).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
    """Max pooling of NHWC `x` over `window` (height, width) with `strides` and explicit `padding`
    ((top, bottom), (left, right)), padded with -inf: `flax.linen.max_pool(x, window, strides, padding)`."""
    window, strides = tuple(int(v) for v in window), tuple(int(v) for v in strides)
    padding = tuple((int(low), int(high)) for low, high in padding)
    if min(*window, *strides) < 1:
        raise ValueError(f"window {window} and strides {strides} must be positive")
    height, width = x.shape[1] + sum(padding[0]), x.shape[2] + sum(padding[1])
    if height < window[0] or width < window[1]:
        raise ValueError(f"window {window} is larger than the padded input {height}x{width}")
    return _max_pool(x, window, strides, padding)


def _slices(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
            ) -> list[jax.Array]:
    """The window's strided slices of the -inf-padded input, in row-major window order."""
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    batch, height, width, channels = padded.shape
    out_h, out_w = (height - window[0]) // strides[0] + 1, (width - window[1]) // strides[1] + 1
    slices = [jax.lax.slice(padded, (0, i, j, 0),
                            (batch, i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1, channels),
                            (1, strides[0], strides[1], 1))
              for i in range(window[0]) for j in range(window[1])]
    return slices


def _forward(x: jax.Array, window: tuple[int, int], strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
             ) -> tuple[jax.Array, jax.Array]:
    """The pooled maxima and, per output, the window position (row-major) of the first maximum."""
    slices = _slices(x, window, strides, padding)
    result, first = slices[0], jnp.zeros(slices[0].shape, jnp.int8 if len(slices) < 128 else jnp.int32)
    for position, shifted in enumerate(slices[1:], start=1):
        first = jnp.where(shifted > result, jnp.asarray(position, first.dtype), first)
        result = jnp.maximum(result, shifted)
    return result, first


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int],
              padding: tuple[tuple[int, int], ...]) -> jax.Array:
    return _forward(x, window, strides, padding)[0]


def _max_pool_forward(x, window, strides, padding):
    result, first = _forward(x, window, strides, padding)
    # The barrier keeps the positions as computed here (module docstring).
    return result, (jax.lax.optimization_barrier(first), x.shape)


def _max_pool_backward(window, strides, padding, residuals, gradient):
    first, shape = residuals
    padded_shape = (shape[0], shape[1] + sum(padding[0]), shape[2] + sum(padding[1]), shape[3])
    out_h, out_w = gradient.shape[1:3]
    total = jnp.zeros(padded_shape, gradient.dtype)
    zero = jnp.zeros((), gradient.dtype)
    for position in range(window[0] * window[1]):
        i, j = divmod(position, window[1])
        taken = jnp.where(first == position, gradient, zero)
        # The transpose of the strided slice: each output's gradient back onto the input pixel it read.
        total = total + jax.lax.pad(taken, zero, (
            (0, 0, 0),
            (i, padded_shape[1] - i - (out_h - 1) * strides[0] - 1, strides[0] - 1),
            (j, padded_shape[2] - j - (out_w - 1) * strides[1] - 1, strides[1] - 1),
            (0, 0, 0)))
    (top, _), (left, _) = padding
    return (total[:, top:top + shape[1], left:left + shape[2]],)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)
