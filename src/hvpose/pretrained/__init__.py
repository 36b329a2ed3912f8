"""Importers for pretrained weights, and what each weight family needs of the keypoint network's config."""

from hvpose.errors import WeightFileError
from hvpose.models.preprocess import KERAS_IMAGENET_BGR_MEAN, TORCH_IMAGENET_MEAN, TORCH_IMAGENET_STD
from hvpose.pretrained.families import backbone_family, check_backbone_matches
from hvpose.pretrained.keras_resnet import load_keras_resnet
from hvpose.pretrained.posenet import load_posenet_tfjs
from hvpose.pretrained.torch_resnet import load_torch_resnet

__all__ = ["KERAS_IMAGENET_BGR_MEAN", "TORCH_IMAGENET_MEAN", "TORCH_IMAGENET_STD", "WeightFileError",
           "backbone_family", "check_backbone_matches", "load_keras_resnet", "load_posenet_tfjs",
           "load_torch_resnet"]
