"""MobileNetV1 with PoseNet's heads: the production descendant of the heatmap + offset design.

The backbone is a plain chain of convolutions (`ConvSpec`: a full or depthwise convolution, bias, activation),
described layer by layer so that an importer can build exactly what a weight file's graph says (strides,
dilations, padding) instead of assuming a layout. Batch norm is folded into the biases, as in PoseNet's released
weights. Four 1x1 heads read the last features: heatmap logits (K), short-range offsets (2K, PoseNet's order: K y
then K x, in input pixels) and the mid-range displacement fields (forward and backward along the skeleton's
edges, E y then E x each), kept for bottom-up grouping.

`apply(variables, crops)` takes uint8 RGB crops (normalised inside, PoseNet's way: `preprocess="unit"`) and
returns what `hvpose.models.keypoint_net.KeypointNet` returns (`heatmap_logits` (B, H, W, K)
and `offsets` (B, H, W, K, 2) as (x, y) in crop pixels, upsampled with aligned corners), so evaluation, voting
and decoding take either network; the displacements come at feature resolution as (B, h, w, E, 2), (x, y).
With input sizes of the form s*n+1 (353x257 at output stride 16) SAME padding keeps feature cell (i, j) on input
pixel (s*i, s*j), the convention of the ResNet model too.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvpose.models.keypoint_net import upsample_outputs
from hvpose.models.preprocess import check_preprocess, preprocess
from hvpose.ops.depthwise import depthwise_conv, resolve


class ConvSpec(NamedTuple):
    """One backbone layer: convolution, bias, activation."""

    kind: Literal["conv", "depthwise"]
    features: int  # output channels (for depthwise: input channels x multiplier)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: Literal["SAME", "VALID"]
    activation: Literal["relu6", "relu", "none"]


_ACTIVATIONS = {"relu6": jax.nn.relu6, "relu": jax.nn.relu, "none": lambda x: x}


class DepthwiseConv(nn.Module):
    """A depthwise convolution with bias; parameters named and shaped as `nn.Conv(feature_group_count=C)`'s
    (`kernel` (kh, kw, 1, features), `bias`), computed by `hvpose.ops.depthwise` (`implementation`)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    padding: str
    implementation: str
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (*self.kernel_size, 1, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = depthwise_conv(x, kernel.astype(self.dtype), self.strides, self.dilation, self.padding,
                           self.implementation)
        return x + bias.astype(self.dtype)


class MobileNetPoseNet(nn.Module):
    """A MobileNet-style convolution chain with PoseNet heads (see the module docstring).

    Attributes:
      layers: the backbone, layer by layer.
      num_keypoints: K.
      num_edges: E, edges of the displacement fields (16 for COCO's PoseNet tree); 0 drops those heads.
      preprocess: input normalisation (`hvpose.models.preprocess`); PoseNet's weights expect "unit".
      map_stride: as `KeypointNet.map_stride`: 1 upsamples to every crop pixel; the output stride keeps the grid.
      dtype: compute dtype; parameters are float32 and the heads run in float32.
      depthwise: how depthwise layers compute (`hvpose.ops.depthwise`): "auto" (shifted slices on CPU, where
        XLA's grouped convolution is slow; grouped elsewhere), "shifted" or "grouped".
    """

    layers: tuple[ConvSpec, ...]
    num_keypoints: int = 17
    num_edges: int = 16
    preprocess: str = "unit"
    map_stride: int = 1
    dtype: jnp.dtype = jnp.float32
    depthwise: str = "auto"

    def __post_init__(self) -> None:
        check_preprocess(self.preprocess)
        resolve(self.depthwise)
        super().__post_init__()

    @property
    def output_stride(self) -> int:
        stride = 1
        for spec in self.layers:
            stride *= spec.stride[0]
        return stride

    @nn.compact
    def __call__(self, crops: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        del train  # no batch norm or dropout: PoseNet's batch norm is folded into the biases
        x = preprocess(crops, self.preprocess).astype(self.dtype)
        for index, spec in enumerate(self.layers):
            name = f"conv{index}_{spec.kind}"
            if spec.kind == "depthwise":
                x = DepthwiseConv(spec.features, spec.kernel, spec.stride, spec.dilation, spec.padding,
                                  self.depthwise, self.dtype, name=name)(x)
            else:
                x = nn.Conv(spec.features, spec.kernel, strides=spec.stride, padding=spec.padding,
                            kernel_dilation=spec.dilation, dtype=self.dtype, name=name)(x)
            x = _ACTIVATIONS[spec.activation](x)
        x = x.astype(jnp.float32)
        k = self.num_keypoints
        head = lambda features, name: nn.Conv(features, (1, 1), dtype=jnp.float32, name=name)(x)  # noqa: E731
        heatmaps, offsets = head(k, "heatmap"), head(2 * k, "offset")
        offsets = jnp.stack([offsets[..., k:], offsets[..., :k]], axis=-1)  # (y, x) -> (x, y)
        outputs = upsample_outputs(heatmaps, offsets, crops.shape[1:3], self.output_stride, self.map_stride)
        if self.num_edges:
            e = self.num_edges
            for name in ("displacement_fwd", "displacement_bwd"):
                field = head(2 * e, name)
                outputs[name] = jnp.stack([field[..., e:], field[..., :e]], axis=-1)
        return outputs


__all__ = ["ConvSpec", "MobileNetPoseNet"]
