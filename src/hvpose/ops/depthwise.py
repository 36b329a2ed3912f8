"""Depthwise convolution as a sum of shifted, scaled copies of the input: the fast formulation on XLA:CPU.

XLA:CPU can be slow on a grouped convolution with one channel per group (`feature_group_count = C`, what `nn.Conv`
does for a depthwise layer); `benchmarks/posenet_cpu.py` times the two formulations side by side (README).
A kh x kw depthwise kernel is kh * kw multiply-adds of strided slices of the padded input, which XLA fuses into
one elementwise loop. Padding follows `lax.conv_general_dilated` exactly ("SAME": TensorFlow's split, the extra
pixel after), so the two formulations agree to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

IMPLEMENTATIONS = ("shifted", "grouped", "auto")


def resolve(implementation: str) -> str:
    """"auto": shifted on CPU (measured), grouped elsewhere (cuDNN and TPU have native depthwise kernels)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"depthwise implementation {implementation!r} is not one of {list(IMPLEMENTATIONS)}")
    if implementation == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "grouped"
    return implementation


def depthwise_conv(x: jax.Array, kernel: jax.Array, strides: Sequence[int] = (1, 1),
                   dilation: Sequence[int] = (1, 1), padding: str = "SAME", implementation: str = "shifted"
                   ) -> jax.Array:
    """Depthwise convolution of NHWC `x` (B, H, W, C) with `kernel` (kh, kw, 1, C * m) (HWIO, m the multiplier),
    equal to `lax.conv_general_dilated(..., feature_group_count=C)`."""
    channels, out_channels = x.shape[-1], kernel.shape[-1]
    if kernel.shape[2] != 1 or out_channels % channels:
        raise ValueError(f"a depthwise kernel is (kh, kw, 1, C*m) for C = {channels}; got {kernel.shape}")
    if resolve(implementation) == "grouped":
        return lax.conv_general_dilated(x, kernel, tuple(strides), padding, rhs_dilation=tuple(dilation),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
    if out_channels != channels:  # multiplier m: output channel c*m + j reads input channel c
        x = jnp.repeat(x, out_channels // channels, axis=-1)
    kh, kw = kernel.shape[:2]
    (sh, sw), (dh, dw) = tuple(strides), tuple(dilation)
    effective = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    pads = lax.padtype_to_pads(x.shape[1:3], effective, (sh, sw), padding)
    padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    height = (padded.shape[1] - effective[0]) // sh + 1
    width = (padded.shape[2] - effective[1]) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(padded, (0, i * dh, j * dw, 0),
                               (padded.shape[0], i * dh + (height - 1) * sh + 1, j * dw + (width - 1) * sw + 1,
                                padded.shape[3]), (1, sh, sw, 1))
            term = window * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


__all__ = ["IMPLEMENTATIONS", "depthwise_conv", "resolve"]
