"""Which ImageNet weight family needs which keypoint-network settings: the one place that knows it.

Keras Applications' ResNets (`.h5`) put the stride on the first 1x1 convolution, have convolution biases and
expect Caffe-style input (BGR minus the ImageNet mean); torchvision/timm ResNets (`.safetensors`) put the stride
on the 3x3 convolution, have no convolution biases and expect torchvision's standardised RGB.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from hvpose.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
    """A family of ImageNet ResNet weight files and the model settings they need."""

    name: str
    stride_on: str  # `KeypointNet.stride_on`
    conv_bias: bool  # `KeypointNet.conv_bias`
    preprocess: str  # `KeypointNet.preprocess`
    read: Callable[[str, int], dict[str, Any]]  # (path, depth) -> {"params": ..., "batch_stats": ...}


def _read_keras(path: str, depth: int) -> dict[str, Any]:
    from hvpose.pretrained.keras_resnet import read_keras_resnet_weights

    return read_keras_resnet_weights(path, depth)


def _read_torch(path: str, depth: int) -> dict[str, Any]:
    from hvpose.pretrained.torch_resnet import read_torch_resnet_weights

    return read_torch_resnet_weights(path, depth)


KERAS = BackboneFamily("Keras Applications", stride_on="1x1", conv_bias=True, preprocess="caffe", read=_read_keras)
TORCH = BackboneFamily("torchvision/timm", stride_on="3x3", conv_bias=False, preprocess="torchvision",
                       read=_read_torch)


def backbone_family(path: str | os.PathLike[str]) -> BackboneFamily:
    """The family of an ImageNet weight file, by its type: `.safetensors` torchvision/timm, else Keras h5."""
    return TORCH if os.fspath(path).endswith(".safetensors") else KERAS


def check_backbone_matches(path: str | os.PathLike[str], model_config: Mapping[str, Any]) -> BackboneFamily:
    """The family of `path`; raises ConfigError naming every `config.model` field the weights cannot work with."""
    family = backbone_family(path)
    wrong = [f"config.model.{name}={getattr(family, name)!r}" for name in ("stride_on", "conv_bias", "preprocess")
             if model_config[name] != getattr(family, name)]
    if wrong:
        raise ConfigError(f"{os.fspath(path)}: {family.name} ResNet weights need {', '.join(wrong)}")
    return family


__all__ = ["KERAS", "TORCH", "BackboneFamily", "backbone_family", "check_backbone_matches"]
