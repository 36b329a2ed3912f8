"""Which pretrained backbone needs which model settings: the one place that knows it.

Keras Applications' ResNets (`.h5`) put the stride on the first 1x1 convolution, have convolution biases and
expect Caffe-style input (BGR minus the ImageNet mean); torchvision/timm ResNets (`.safetensors`) put the stride
on the 3x3 convolution, have no convolution biases and expect torchvision's standardised RGB. An hvpose training
workdir (a keypoint network's or a person detector's) gives the ResNet it trained; it needs the settings it was
trained with, read from the config saved beside its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from etils import epath

from hvpose.errors import ConfigError
from hvpose.models.resnet import canonical_multipliers


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
    """A family of ImageNet ResNet weight files and the model settings they need."""

    name: str
    stride_on: str  # `KeypointNet.stride_on`
    conv_bias: bool  # `KeypointNet.conv_bias`
    preprocess: str  # `KeypointNet.preprocess`
    read: Callable[[str, int], dict[str, Any]]  # (path, depth) -> {"params": ..., "batch_stats": ...}
    depth: int | None = None  # `KeypointNet.depth` (None: not known before reading; shapes are checked then)
    base_width: int | None = None  # `KeypointNet.base_width` (None: as `depth`)
    width_multipliers: tuple[int, ...] | None = ()  # `KeypointNet.width_multipliers` (published ResNets: ())


def _read_keras(path: str, depth: int) -> dict[str, Any]:
    from hvpose.pretrained.keras_resnet import read_keras_resnet_weights

    return read_keras_resnet_weights(path, depth)


def _read_torch(path: str, depth: int) -> dict[str, Any]:
    from hvpose.pretrained.torch_resnet import read_torch_resnet_weights

    return read_torch_resnet_weights(path, depth)


KERAS = BackboneFamily("Keras Applications", stride_on="1x1", conv_bias=True, preprocess="caffe", read=_read_keras)
TORCH = BackboneFamily("torchvision/timm", stride_on="3x3", conv_bias=False, preprocess="torchvision",
                       read=_read_torch)


def _read_workdir(path: str, depth: int) -> dict[str, Any]:
    from hvpose.checkpoints import restore_backbone

    try:
        return restore_backbone(path)[0]
    except FileNotFoundError as error:  # a run stopped before its first checkpoint
        raise ConfigError(f"{path}: no checkpoint to take the backbone from ({error})") from None


def _workdir_family(path: str) -> BackboneFamily:
    """The settings of the ResNet trained in an hvpose workdir, from the config saved beside its checkpoints."""
    from hvpose.checkpoints import read_config

    model = read_config(str(epath.Path(path) / "checkpoints"))[0].model
    width_multipliers = canonical_multipliers(model.get("width_multipliers", ()))  # older configs: the standard
    widths = f", width multipliers {width_multipliers}" if width_multipliers else ""
    return BackboneFamily(f"hvpose checkpoint ({model.depth}-layer, base width {model.base_width}{widths})",
                          stride_on=model.stride_on, conv_bias=model.conv_bias, preprocess=model.preprocess,
                          read=_read_workdir, depth=model.depth, base_width=model.base_width,
                          width_multipliers=width_multipliers)


def backbone_family(path: str | os.PathLike[str]) -> BackboneFamily:
    """The family of pretrained backbone weights, by what `path` is: an hvpose training workdir (a folder with
    `checkpoints/config.json`), a torchvision/timm `.safetensors` file, else a Keras h5."""
    path = os.fspath(path)
    folder = epath.Path(path)
    if folder.is_dir():
        if not (folder / "checkpoints" / "config.json").exists():
            raise ConfigError(f"{path}: a folder, but not an hvpose training workdir (no checkpoints/config.json); "
                              "pretrained backbones are Keras .h5 or torchvision/timm .safetensors files, or the "
                              "workdir of a trained keypoint network or detector")
        return _workdir_family(path)
    return TORCH if path.endswith(".safetensors") else KERAS


# The `config.model` fields a backbone's weights fix.
FIELDS = ("depth", "base_width", "width_multipliers", "stride_on", "conv_bias", "preprocess")


def check_backbone_matches(path: str | os.PathLike[str], model_config: Mapping[str, Any]) -> BackboneFamily:
    """The family of `path`; raises ConfigError naming every `config.model` field the weights cannot work with."""
    family = backbone_family(path)
    def given(name: str) -> Any:  # () and (1, 2, 4, 8) are the same widths; a config read from json holds a list
        return canonical_multipliers(model_config[name]) if name == "width_multipliers" else model_config[name]

    wrong = [f"config.model.{name}={getattr(family, name)!r}" for name in FIELDS
             if getattr(family, name) is not None and name in model_config and given(name) != getattr(family, name)]
    if wrong:
        raise ConfigError(f"{os.fspath(path)}: {family.name} ResNet weights need {', '.join(wrong)}")
    return family


__all__ = ["FIELDS", "KERAS", "TORCH", "BackboneFamily", "backbone_family", "check_backbone_matches"]
