"""The G-RMI keypoint network: an atrous ResNet backbone and a 1x1 convolution to heatmaps and offsets.

Output layout (per crop, before upsampling): 3K channels, K heatmap logits, then K x offsets, then K y offsets,
all in crop pixels. `split_head` turns them into `heatmap_logits` (B, H, W, K) and `offsets` (B, H, W, K, 2) with
`[..., 0]` the x (column) and `[..., 1]` the y (row) displacement, the layout `hvpose.ops.voting` takes.

Upsampling to the crop size is bilinear with aligned corners (`hvpose.ops.upsample`): for crop sizes s*n+1
(353 = 8*44+1), feature cell (i, j) sits at crop pixel (s*i, s*j), which is how the ResNet's grid lines up with
its input (and PoseNet's too).

The network takes uint8 RGB crops and normalises them itself (`preprocess`, the weight family's input
convention), so every caller feeds the same thing and hosts ship uint8.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hvpose.keypoints import COCO17
from hvpose.models.preprocess import check_preprocess, preprocess
from hvpose.models.resnet import ResNet, canonical_multipliers
from hvpose.ops.upsample import upsample_to_map_stride

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def split_head(maps: jax.Array, num_keypoints: int) -> dict[str, jax.Array]:
    """(B, H, W, 3K) head output -> {"heatmap_logits": (B, H, W, K), "offsets": (B, H, W, K, 2) as (x, y)}."""
    k = num_keypoints
    offsets = jnp.stack([maps[..., k:2 * k], maps[..., 2 * k:3 * k]], axis=-1)
    return {"heatmap_logits": maps[..., :k], "offsets": offsets}


def upsample_outputs(heatmap_logits: jax.Array, offsets: jax.Array, input_size: tuple[int, int],
                     output_stride: int, map_stride: int) -> dict[str, jax.Array]:
    """Feature-grid heatmap logits (B, h, w, K) and offsets (B, h, w, K, 2) -> the same on every
    `map_stride`-th input pixel (`upsample_to_map_stride`).

    The values are those of upsampling the head's 3K maps and then splitting them, but the split and the (x, y)
    interleave happen on the small grid: at crop resolution a split or stack is a strided copy each way, which
    cost the demo's train step about as much as the heatmap and offset loss themselves
    (`benchmarks/train_step.py`, `head_and_loss`).
    """
    batch, height, width, k, _ = offsets.shape
    up = lambda maps: upsample_to_map_stride(maps, input_size, output_stride, map_stride)  # noqa: E731
    heatmap_logits = up(heatmap_logits)
    offsets = up(offsets.reshape(batch, height, width, 2 * k)).reshape(*heatmap_logits.shape, 2)
    return {"heatmap_logits": heatmap_logits, "offsets": offsets}


class KeypointNet(nn.Module):
    """Backbone + heatmap/offset head(s), upsampled to the input crop size.

    `apply(variables, crops, train=False)` takes uint8 (or 0-255 float) RGB crops (B, H, W, 3) and returns a dict
    with `heatmap_logits` (B, H, W, K) and `offsets` (B, H, W, K, 2) at crop resolution, in float32 whatever the
    compute dtype, and with `aux_heatmap_logits` and `aux_offsets` from block3 when `aux_head` is set
    (training-time deep supervision).

    `KeypointNet(num_keypoints=K, **config.model)` builds the network of a config: every field of
    `config.model` is an attribute here.

    Attributes:
      num_keypoints: K.
      depth, output_stride, stride_on, conv_bias, bn_frozen, bn_momentum, bn_epsilon, base_width, width_multipliers,
        frozen_stages: backbone (see ResNet).
      aux_head: add a second 1x1 head on block3.
      preprocess: input normalisation, "caffe", "torchvision", "unit" or "none" (`hvpose.models.preprocess`).
      map_stride: the maps are sampled at every `map_stride`-th crop pixel: 1 is full crop resolution (the paper;
        what voting uses), `output_stride` is the feature grid itself (no upsampling). Any divisor of
        `output_stride` keeps the samples on crop pixels (pixel (m*i, m*j)); training can compute its loss on
        such a grid for speed (`keypoint_loss(..., map_stride=m)`). Offsets are always in crop pixels.
      heatmap_prior: initial heatmap probability (bias log(p / (1 - p))): disks cover ~2% of a crop, so starting
        near that instead of 0.5 avoids a large, uninformative first phase of the logistic loss.
      dtype: compute dtype, "float32" or "bfloat16" (TPU/GPU); parameters are float32.
    """

    num_keypoints: int = COCO17.num_keypoints
    depth: int = 101
    output_stride: int = 8
    stride_on: Literal["1x1", "3x3"] = "1x1"
    conv_bias: bool = True
    bn_frozen: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1.001e-5
    base_width: int = 64
    width_multipliers: tuple[int, ...] = ()
    frozen_stages: int = 0
    aux_head: bool = False
    preprocess: str = "caffe"
    map_stride: int = 1
    heatmap_prior: float = 0.01
    dtype: str = "float32"

    def __post_init__(self) -> None:
        # Bad settings fail when the network is built, not at its first call deep inside jit.
        # One spelling of the standard widths, and a tuple (hashable) where a config read from json holds a list.
        object.__setattr__(self, "width_multipliers", canonical_multipliers(self.width_multipliers))
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {list(DTYPES)}")
        check_preprocess(self.preprocess)
        if self.map_stride < 1 or self.output_stride % self.map_stride:
            raise ValueError(f"map_stride {self.map_stride} must divide output_stride {self.output_stride}")
        super().__post_init__()

    @nn.compact
    def __call__(self, crops: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        features = ResNet(
            depth=self.depth, output_stride=self.output_stride, stride_on=self.stride_on, conv_bias=self.conv_bias,
            bn_frozen=self.bn_frozen, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
            base_width=self.base_width, width_multipliers=self.width_multipliers, frozen_stages=self.frozen_stages,
            dtype=DTYPES[self.dtype], name="backbone",
        )(preprocess(crops, self.preprocess), train=train)
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
            grid = split_head(maps, k)
            maps = upsample_outputs(grid["heatmap_logits"], grid["offsets"], crops.shape[1:3], self.output_stride,
                                    self.map_stride)
            outputs.update({prefix + key: value for key, value in maps.items()})
        return outputs


__all__ = ["DTYPES", "KeypointNet", "split_head", "upsample_outputs"]
