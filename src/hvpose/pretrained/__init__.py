"""Importers for pretrained weights."""

from hvpose.pretrained.keras_resnet import KERAS_IMAGENET_BGR_MEAN, WeightFileError, load_keras_resnet
from hvpose.pretrained.posenet import load_posenet_tfjs
from hvpose.pretrained.torch_resnet import TORCH_IMAGENET_MEAN, TORCH_IMAGENET_STD, load_torch_resnet

__all__ = ["KERAS_IMAGENET_BGR_MEAN", "TORCH_IMAGENET_MEAN", "TORCH_IMAGENET_STD", "WeightFileError",
           "load_keras_resnet", "load_posenet_tfjs", "load_torch_resnet"]
