"""The G-RMI keypoint network: an atrous ResNet backbone and a 1x1 convolution to heatmaps and offsets.

Output layout (per crop, before upsampling): 3K channels, K heatmap logits, then K x offsets, then K y offsets,
all in crop pixels. `split_head` turns them into `heatmap_logits` (B, H, W, K) and `offsets` (B, H, W, K, 2) with
`[..., 0]` the x (column) and `[..., 1]` the y (row) displacement, the layout `hvpose.ops.voting` takes.

Upsampling to the crop size is bilinear with aligned corners: for crop sizes s*n+1 (353 = 8*44+1), feature cell
(i, j) sits at crop pixel (s*i, s*j), which is how the ResNet's grid lines up with its input (and PoseNet's too).
It is written as two small matrix products with constant interpolation matrices, which XLA maps onto the MXU on
TPU instead of gathers.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hvpose.keypoints import NUM_KEYPOINTS
from hvpose.models.resnet import ResNet


def interpolation_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix of 1-D linear interpolation with aligned corners.

    Output sample o sits at input coordinate o * (in_size - 1) / (out_size - 1); its two neighbours share the weight.
    """
    if in_size == 1 or out_size == 1:
        matrix = np.zeros((out_size, in_size), np.float32)
        matrix[:, 0] = 1.0
        return matrix
    position = np.arange(out_size, dtype=np.float64) * (in_size - 1) / (out_size - 1)
    lower = np.clip(np.floor(position).astype(np.int64), 0, in_size - 2)
    fraction = position - lower
    matrix = np.zeros((out_size, in_size), np.float64)
    matrix[np.arange(out_size), lower] = 1.0 - fraction
    matrix[np.arange(out_size), lower + 1] += fraction
    return matrix.astype(np.float32)


def resize_aligned_corners(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, h, w, C) maps to (B, H, W, C) with aligned corners (exact, separable)."""
    rows = jnp.asarray(interpolation_matrix(maps.shape[1], size[0]), maps.dtype)
    cols = jnp.asarray(interpolation_matrix(maps.shape[2], size[1]), maps.dtype)
    # HIGHEST: the default matmul precision on TPU/GPU would round float32 maps to bf16/tf32.
    maps = jnp.einsum("Hh,bhwc->bHwc", rows, maps, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("Ww,bHwc->bHWc", cols, maps, precision=jax.lax.Precision.HIGHEST)


def split_head(maps: jax.Array, num_keypoints: int) -> dict[str, jax.Array]:
    """(B, H, W, 3K) head output -> {"heatmap_logits": (B, H, W, K), "offsets": (B, H, W, K, 2) as (x, y)}."""
    k = num_keypoints
    offsets = jnp.stack([maps[..., k:2 * k], maps[..., 2 * k:3 * k]], axis=-1)
    return {"heatmap_logits": maps[..., :k], "offsets": offsets}


class PoseNet(nn.Module):
    """Backbone + heatmap/offset head(s), upsampled to the input crop size.

    `apply(variables, crops, train=False)` returns a dict with `heatmap_logits` (B, H, W, K) and `offsets`
    (B, H, W, K, 2) at crop resolution, in float32 whatever the compute dtype, and with `aux_heatmap_logits` and
    `aux_offsets` from block3 when `aux_head` is set (training-time deep supervision).

    Attributes:
      num_keypoints: K.
      depth, output_stride, stride_on, conv_bias, bn_frozen, bn_momentum, bn_epsilon, base_width: backbone
        (see ResNet).
      aux_head: add a second 1x1 head on block3.
      map_stride: the maps are sampled at every `map_stride`-th crop pixel: 1 is full crop resolution (the paper;
        what voting uses), `output_stride` is the feature grid itself (no upsampling). Any divisor of
        `output_stride` keeps the samples on crop pixels (pixel (m*i, m*j)); training can compute its loss on
        such a grid for speed (`keypoint_loss(..., pixel_stride=m)`). Offsets are always in crop pixels.
      heatmap_prior: initial heatmap probability (bias log(p / (1 - p))): disks cover ~2% of a crop, so starting
        near that instead of 0.5 avoids a large, uninformative first phase of the logistic loss.
      dtype: compute dtype (jnp.bfloat16 on TPU/GPU); parameters are float32.
    """

    num_keypoints: int = NUM_KEYPOINTS
    depth: int = 101
    output_stride: int = 8
    stride_on: Literal["1x1", "3x3"] = "1x1"
    conv_bias: bool = True
    bn_frozen: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1.001e-5
    base_width: int = 64
    aux_head: bool = False
    map_stride: int = 1
    heatmap_prior: float = 0.01
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, crops: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        features = ResNet(
            depth=self.depth, output_stride=self.output_stride, stride_on=self.stride_on, conv_bias=self.conv_bias,
            bn_frozen=self.bn_frozen, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
            base_width=self.base_width, dtype=self.dtype, name="backbone")(crops, train=train)
        heads = {"": features["block4"]}
        if self.aux_head:
            heads["aux_"] = features["block3"]
        k = self.num_keypoints
        prior_logit = float(np.log(self.heatmap_prior / (1.0 - self.heatmap_prior)))

        def head_bias(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
            return jnp.zeros(shape, dtype).at[:k].set(prior_logit)

        outputs = {}
        for prefix, feature in heads.items():
            # A small kernel and zero offset bias keep early offset predictions near 0 (votes stay local).
            # The head runs in float32 even under bf16 compute: bf16 offsets would be quantised to 1/8 px at
            # 16-32 px and 1/4 px beyond, and this 1x1 convolution is a negligible part of the cost.
            maps = nn.Conv(3 * k, (1, 1), dtype=jnp.float32, kernel_init=nn.initializers.normal(0.01),
                           bias_init=head_bias, name=f"{prefix}head")(feature.astype(jnp.float32))
            if self.output_stride % self.map_stride:
                raise ValueError(f"map_stride {self.map_stride} must divide output_stride {self.output_stride}")
            if self.map_stride < self.output_stride:
                size = tuple((n - 1) // self.map_stride + 1 for n in crops.shape[1:3])
                maps = resize_aligned_corners(maps, size)
            outputs.update({prefix + key: value for key, value in split_head(maps, k).items()})
        return outputs
