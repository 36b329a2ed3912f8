"""Importers for pretrained weights."""

from hvpose.pretrained.keras_resnet import KERAS_IMAGENET_BGR_MEAN, WeightFileError, load_keras_resnet
from hvpose.pretrained.posenet import load_posenet_tfjs

__all__ = ["KERAS_IMAGENET_BGR_MEAN", "WeightFileError", "load_keras_resnet", "load_posenet_tfjs"]
