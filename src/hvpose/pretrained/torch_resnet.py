"""ImageNet ResNet weights from torchvision or timm checkpoints in safetensors layout, read without PyTorch.

torchvision's `resnet{18,34,50,101,152}` and timm's `resnet*` models share one state-dict layout: `conv1`, `bn1`,
`layer{1..4}.{block}.conv{1,2,3}` / `bn{1,2,3}` / `downsample.{0,1}` and `fc`. Convolutions are OIHW without
biases (Flax wants HWIO); BatchNorm has `weight`, `bias`, `running_mean`, `running_var` (eps 1e-5); the stride sits
on the 3x3 convolution ("ResNet v1.5"), so these weights go into `ResNet(stride_on="3x3", conv_bias=False)`.
Preprocessing is torchvision's: RGB in [0, 1], minus `TORCH_IMAGENET_MEAN`, divided by `TORCH_IMAGENET_STD`.
A `.safetensors` file is what timm and the Hugging Face hub ship (convert a `.pth` with
`safetensors.torch.save_file(torch.load(path), "resnet50.safetensors")` where PyTorch is installed).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hvpose.errors import WeightFileError
from hvpose.models.resnet import BASIC_STAGES, BOTTLENECK_STAGES, ResNet
from hvpose.pretrained.keras_resnet import check_matches


def _torch_layer_names(depth: int) -> dict[str, str]:
    """hvpose module path ("block3_unit2/conv1") -> torch module name ("layer3.1.conv1")."""
    bottleneck = depth in BOTTLENECK_STAGES
    stages = BOTTLENECK_STAGES[depth] if bottleneck else BASIC_STAGES[depth]
    layers = ("conv1", "bn1", "conv2", "bn2") + (("conv3", "bn3") if bottleneck else ())
    names = {"stem_conv": "conv1", "stem_bn": "bn1"}
    for stage, blocks in enumerate(stages):
        for block in range(blocks):
            prefix = f"block{stage + 1}_unit{block + 1}"
            for layer in layers:
                names[f"{prefix}/{layer}"] = f"layer{stage + 1}.{block}.{layer}"
            if block == 0 and (bottleneck or stage > 0):
                names[f"{prefix}/shortcut_conv"] = f"layer{stage + 1}.0.downsample.0"
                names[f"{prefix}/shortcut_bn"] = f"layer{stage + 1}.0.downsample.1"
    return names


def read_torch_resnet_weights(path: str | os.PathLike[str], depth: int = 50) -> dict[str, dict[str, Any]]:
    """Reads a torchvision/timm ResNet safetensors file into hvpose's `{"params": ..., "batch_stats": ...}`.

    Keys may carry a common prefix (`model.`, `module.`, `backbone.`), which is removed.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if depth not in BOTTLENECK_STAGES and depth not in BASIC_STAGES:
        raise WeightFileError(f"no ResNet-{depth}; depths are {sorted({**BASIC_STAGES, **BOTTLENECK_STAGES})}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such weight file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise WeightFileError(f"{path}: not a readable safetensors file ({error})") from None
    for prefix in ("model.", "module.", "backbone."):
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix):]: value for key, value in tensors.items()}
    stages = BOTTLENECK_STAGES.get(depth) or BASIC_STAGES[depth]
    for stage, blocks in enumerate(stages):  # deeper ResNets contain every name of shallower ones
        if f"layer{stage + 1}.{blocks}.conv1.weight" in tensors:
            raise WeightFileError(f"{path}: layer{stage + 1} has more than {blocks} blocks; not a ResNet-{depth}")
    params: dict[str, Any] = {}
    batch_stats: dict[str, Any] = {}
    for module_path, name in _torch_layer_names(depth).items():
        *parents, leaf = module_path.split("/")
        p_node, s_node = params, batch_stats
        for parent in parents:
            p_node, s_node = p_node.setdefault(parent, {}), s_node.setdefault(parent, {})
        wanted = ("weight",) if "conv" in leaf else ("weight", "bias", "running_mean", "running_var")
        missing = [f"{name}.{w}" for w in wanted if f"{name}.{w}" not in tensors]
        if missing:
            raise WeightFileError(f"{path}: no {missing[0]} (is this a torchvision/timm ResNet-{depth}?)")
        if "conv" in leaf:
            weight = tensors[f"{name}.weight"]
            if weight.ndim != 4:
                raise WeightFileError(f"{path}: {name}.weight has shape {weight.shape}, expected OIHW")
            p_node[leaf] = {"kernel": np.ascontiguousarray(weight.transpose(2, 3, 1, 0))}  # OIHW -> HWIO
        else:
            p_node[leaf] = {"scale": tensors[f"{name}.weight"], "bias": tensors[f"{name}.bias"]}
            s_node[leaf] = {"mean": tensors[f"{name}.running_mean"], "var": tensors[f"{name}.running_var"]}
    return {"params": params, "batch_stats": batch_stats}


def load_torch_resnet(path: str | os.PathLike[str], depth: int = 50, output_stride: int = 32,
                      dtype: Any = jnp.float32, **resnet_kwargs: Any) -> tuple[ResNet, dict[str, Any]]:
    """Builds the torchvision-compatible atrous ResNet and loads a torchvision/timm safetensors checkpoint.

    Returns `(model, variables)`; `model.apply(variables, images)` gives the feature dict for images preprocessed
    the torchvision way (see the module docstring).
    """
    model = ResNet(depth=depth, output_stride=output_stride, stride_on="3x3", conv_bias=False, bn_epsilon=1e-5,
                   dtype=dtype, **resnet_kwargs)
    loaded = read_torch_resnet_weights(path, depth)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3), jnp.float32))
    check_matches(loaded, expected, os.fspath(path))
    return model, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), loaded)


__all__ = ["load_torch_resnet", "read_torch_resnet_weights"]
