"""Atrous ResNet v1 (He et al. 2016) in Flax linen, as the G-RMI keypoint network's backbone.

Output stride 8, 16 or 32 comes from atrous (dilated) convolution: the strides of the last one or two stages are
removed and their 3x3 convolutions dilated instead, so the features keep their receptive field at a finer grid.

Two families of ImageNet weights place the stride differently in a stage's first bottleneck:
  * `stride_on="1x1"`: on the first 1x1 convolution (Keras Applications, Caffe, the original paper); convs carry
    biases in Keras's weights (`conv_bias=True`).
  * `stride_on="3x3"`: on the 3x3 convolution (torchvision, "ResNet v1.5"); convs have no bias.
    (TF-slim's resnet_v1 differs again: it strides in the last unit of a stage with subsampling shortcuts;
    its checkpoints need a layout of their own.)
All padding is explicit and symmetric (pad = dilation * (kernel - 1) / 2), which reproduces both families exactly:
Keras pads its 7x7 stem by 3 and its max-pool by 1, and a strided 1x1 convolution needs no padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from hvpose.ops.pooling import max_pool

# Bottleneck blocks per stage (conv2_x .. conv5_x) for each depth.
BOTTLENECK_STAGES: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# Basic (two 3x3) blocks per stage for the shallow depths.
BASIC_STAGES: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}
# Each stage's width as a multiple of the stem's (64 in every published ResNet: 64, 128, 256, 512).
STANDARD_MULTIPLIERS: tuple[int, int, int, int] = (1, 2, 4, 8)
DEPTHS: tuple[int, ...] = tuple(sorted({**BOTTLENECK_STAGES, **BASIC_STAGES}))


def stage_strides_and_dilations(output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of stages conv2..conv5 for an output stride of 8, 16 or 32.

    The stem (7x7 stride-2 conv and stride-2 max-pool) gives stride 4; conv3..conv5 would each halve again. Once the
    target stride is reached, a stage keeps stride 1 and doubles its dilation instead.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    current, dilation, plan = 4, 1, [(1, 1)]
    for _ in range(3):
        if current < output_stride:
            current *= 2
            plan.append((2, dilation))
        else:
            dilation *= 2
            plan.append((1, dilation))
    return plan


def _pad(kernel: int, dilation: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    p = dilation * (kernel - 1) // 2
    return ((p, p), (p, p))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (dilated) -> 1x1 residual block with expansion 4."""

    width: int
    stride: int = 1
    dilation: int = 1  # of the 3x3 convolution
    project_shortcut: bool = False
    stride_on: Literal["1x1", "3x3"] = "1x1"
    conv_bias: bool = True
    norm: Any = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda *a, **k: nn.Conv(*a, use_bias=self.conv_bias, dtype=self.dtype, **k)  # noqa: E731
        stride_1x1 = self.stride if self.stride_on == "1x1" else 1
        stride_3x3 = self.stride if self.stride_on == "3x3" else 1
        shortcut = x
        if self.project_shortcut:
            shortcut = conv(4 * self.width, (1, 1), strides=self.stride, padding="VALID", name="shortcut_conv")(x)
            shortcut = self.norm(name="shortcut_bn")(shortcut)
        y = conv(self.width, (1, 1), strides=stride_1x1, padding="VALID", name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv(self.width, (3, 3), strides=stride_3x3, kernel_dilation=self.dilation,
                 padding=_pad(3, self.dilation), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = conv(4 * self.width, (1, 1), padding="VALID", name="conv3")(y)
        y = self.norm(name="bn3")(y)
        return nn.relu(shortcut + y)


class Basic(nn.Module):
    """Two 3x3 convolutions, for ResNet-18/34 (stride always on the first 3x3)."""

    width: int
    stride: int = 1
    dilation: int = 1  # of the second 3x3
    first_dilation: int = 1  # of the first 3x3
    project_shortcut: bool = False
    stride_on: Literal["1x1", "3x3"] = "3x3"  # unused: a basic block strides on its first 3x3
    conv_bias: bool = False
    norm: Any = nn.BatchNorm
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda *a, **k: nn.Conv(*a, use_bias=self.conv_bias, dtype=self.dtype, **k)  # noqa: E731
        shortcut = x
        if self.project_shortcut:
            shortcut = conv(self.width, (1, 1), strides=self.stride, padding="VALID", name="shortcut_conv")(x)
            shortcut = self.norm(name="shortcut_bn")(shortcut)
        y = conv(self.width, (3, 3), strides=self.stride, kernel_dilation=self.first_dilation,
                 padding=_pad(3, self.first_dilation), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = conv(self.width, (3, 3), kernel_dilation=self.dilation, padding=_pad(3, self.dilation), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        return nn.relu(shortcut + y)


def stage_width(stage: int, base_width: int, width_multipliers: Sequence[int] = ()) -> int:
    """The width of stage `stage`'s units (0 = conv2_x; a bottleneck's inner width, a basic block's output):
    `base_width` x `width_multipliers[stage]`, by default x (1, 2, 4, 8)[stage] as in every published ResNet."""
    check_width_multipliers(width_multipliers)
    return base_width * int((width_multipliers or STANDARD_MULTIPLIERS)[stage])


def canonical_multipliers(width_multipliers: Sequence[int]) -> tuple[int, ...]:
    """`width_multipliers` in one spelling, for comparisons and hashing: () for the standard widths however given
    (`()`, `(1, 2, 4, 8)`, a list read from json), else a tuple of ints."""
    check_width_multipliers(width_multipliers)
    multipliers = tuple(int(m) for m in width_multipliers)
    return () if multipliers == STANDARD_MULTIPLIERS else multipliers


def check_width_multipliers(width_multipliers: Sequence[int]) -> None:
    """Raises ValueError unless `width_multipliers` is empty (the standard (1, 2, 4, 8)) or four positive
    integers."""
    if width_multipliers and (len(width_multipliers) != len(STANDARD_MULTIPLIERS) or min(width_multipliers) < 1
                              or any(int(m) != m for m in width_multipliers)):
        raise ValueError(f"width_multipliers must be () or four positive integers (conv2_x..conv5_x), got "
                         f"{tuple(width_multipliers)}")


def stage_units(x: jax.Array, stage: int, depth: int, stride: int, dilation: int, first_dilation: int,
                stride_on: str, conv_bias: bool, norm: Any, width: int, dtype: Any) -> jax.Array:
    """The residual units of stage `stage` (0 = conv2_x .. 3 = conv5_x) of `width` (`stage_width`), named
    `block{stage+1}_unit{k}`; call it inside a compact module (the ResNet, or a detector head running conv5_x on
    RoIs with the same parameter names).
    """
    bottleneck = depth in BOTTLENECK_STAGES
    blocks = (BOTTLENECK_STAGES[depth] if bottleneck else BASIC_STAGES[depth])[stage]
    block_cls = Bottleneck if bottleneck else Basic
    for block in range(blocks):
        dilations = ({"dilation": first_dilation if block == 0 else dilation} if bottleneck else
                     {"dilation": dilation, "first_dilation": first_dilation if block == 0 else dilation})
        x = block_cls(
            width=width,
            stride=stride if block == 0 else 1,
            **dilations,
            project_shortcut=block == 0 and (bottleneck or stage > 0 or x.shape[-1] != width),
            stride_on=stride_on,
            conv_bias=conv_bias,
            norm=norm,
            dtype=dtype,
            name=f"block{stage + 1}_unit{block + 1}",
        )(x)
    return x


def frozen_part(module_name: str) -> int | None:
    """Which part of a ResNet a parameter collection belongs to, by its module name: 0 for the stem, s + 1 for
    stage s (`block{s+1}_unit{k}`), None for anything else."""
    if module_name.startswith("stem_"):
        return 0
    if module_name.startswith("block") and "_unit" in module_name:
        return int(module_name[len("block"):module_name.index("_unit")])
    return None


def frozen_parameters(params: Any, frozen_stages: int, backbone: str = "backbone") -> Any:
    """A tree of bools over `params`: True for the parameters that `ResNet(frozen_stages=...)` freezes, i.e. those
    under the module named `backbone` in its stem and first `frozen_stages - 1` stages."""

    def frozen(path: tuple, _: Any) -> bool:
        names = [getattr(key, "key", None) for key in path]
        if backbone not in names or names.index(backbone) + 1 >= len(names):
            return False
        part = frozen_part(str(names[names.index(backbone) + 1]))
        return part is not None and part < frozen_stages

    return jax.tree_util.tree_map_with_path(frozen, params)


class ResNet(nn.Module):
    """ResNet v1 backbone returning `{"stem", "block1", ..., "block4"}` feature maps (NHWC).

    `block1`..`block4` are the outputs of stages conv2_x..conv5_x. At a 353x257 input and output stride 8, block4
    is 45x33x2048 (ResNet-50/101/152).

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      output_stride: 8, 16 or 32: ratio of input size to block4 size (for inputs of size s*n+1 the ratio is exact
        in the sense that block4 has n+1 cells, cell i at input pixel s*i).
      stride_on: "1x1" (Keras/Caffe weights) or "3x3" (torchvision weights); bottleneck depths only.
      conv_bias: whether convolutions have biases (True for Keras Applications weights, False for torchvision).
      bn_frozen: use the stored BatchNorm statistics even when training (fine-tuning with small per-device batches).
      bn_momentum: decay of the running BatchNorm statistics.
      bn_epsilon: BatchNorm epsilon (Keras Applications ResNet uses 1.001e-5, torchvision 1e-5).
      base_width: channels of the stem, and the unit of the stages' widths (64 in every published ResNet; smaller
        values give proportionally narrower, ~quadratically cheaper networks for tests and CPU demos).
      width_multipliers: the widths of conv2_x..conv5_x's units as multiples of base_width; () is the standard
        (1, 2, 4, 8). At output strides 8 and 16 conv5_x runs on conv4_x's grid with twice its channels, so at
        four times its cost: a narrower conv5_x, (1, 2, 4, 4) say, is the cheaper network there.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
      stages: how many of conv2_x..conv5_x to run (3: up to block3, for a detector that runs conv5_x per RoI).
      frozen_stages: Detectron2's FREEZE_AT: 0 trains everything, 1 freezes the stem, 2 the stem and conv2_x, and
        so on. Frozen parts use their stored BatchNorm statistics and pass no gradient back, so their backward
        pass is never computed; `frozen_parameters` names their parameters for the optimizer.
    """

    depth: int = 101
    output_stride: int = 8
    stride_on: Literal["1x1", "3x3"] = "1x1"
    conv_bias: bool = True
    bn_frozen: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1.001e-5
    base_width: int = 64
    width_multipliers: tuple[int, ...] = ()
    dtype: Any = jnp.float32
    stages: int = 4
    frozen_stages: int = 0

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if self.depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}, got {self.depth}")
        if self.stride_on not in ("1x1", "3x3"):
            raise ValueError(f"stride_on must be '1x1' or '3x3', got {self.stride_on!r}")
        if not 1 <= self.stages <= 4:
            raise ValueError(f"stages must be 1 to 4, got {self.stages}")
        check_width_multipliers(self.width_multipliers)
        if not 0 <= self.frozen_stages <= self.stages + 1:
            raise ValueError(f"frozen_stages must be 0 to {self.stages + 1} (stem and stages), "
                             f"got {self.frozen_stages}")

        def norm_of(part: int) -> Any:  # part 0 is the stem, part s + 1 stage s
            frozen = not train or self.bn_frozen or part < self.frozen_stages
            return lambda name: nn.BatchNorm(use_running_average=frozen, momentum=self.bn_momentum,
                                             epsilon=self.bn_epsilon, dtype=self.dtype, name=name)

        def gradient_stop(x: jax.Array, part: int) -> jax.Array:
            # The last frozen part's output carries no gradient: XLA then drops the backward pass below it.
            return jax.lax.stop_gradient(x) if part == self.frozen_stages - 1 else x

        x = images.astype(self.dtype)
        x = nn.Conv(self.base_width, (7, 7), strides=2, padding=_pad(7), use_bias=self.conv_bias, dtype=self.dtype,
                    name="stem_conv")(x)
        x = gradient_stop(nn.relu(norm_of(0)("stem_bn")(x)), 0)
        features = {"stem": x}
        # Max-pool padding with -inf equals Keras's zero padding here because the input is post-ReLU (>= 0).
        x = max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))  # nn.max_pool's values, a cheaper gradient

        previous_dilation = 1
        plan = stage_strides_and_dilations(self.output_stride)
        for stage in range(self.stages):
            stride, dilation = plan[stage]
            # When a stride is replaced by dilation, the block that would have strided sees the undecimated grid
            # before its 3x3 if the stride sat on that 3x3 (torchvision), so it keeps the previous dilation; with
            # the stride on the 1x1 (Keras) the 3x3 already works on the decimated grid and takes the new one.
            first_dilation = previous_dilation if (self.stride_on == "3x3" or self.depth in BASIC_STAGES) \
                else dilation
            x = stage_units(x, stage, self.depth, stride, dilation, first_dilation, self.stride_on, self.conv_bias,
                            norm_of(stage + 1), stage_width(stage, self.base_width, self.width_multipliers), self.dtype)
            x = gradient_stop(x, stage + 1)
            previous_dilation = dilation
            features[f"block{stage + 1}"] = x
        return features
