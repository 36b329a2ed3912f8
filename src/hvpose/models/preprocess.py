"""Network input normalisations: uint8 RGB crops -> float32 network input, applied inside the model (so inside
jit: hosts ship uint8, 4x fewer bytes than float32). Each mode is the published one of a weight family."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Keras Applications' `resnet.preprocess_input(mode="caffe")`: RGB -> BGR, minus these per-channel means.
KERAS_IMAGENET_BGR_MEAN: tuple[float, float, float] = (103.939, 116.779, 123.68)
# torchvision/timm ImageNet models: RGB in [0, 1], then (x - mean) / std per channel.
TORCH_IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
TORCH_IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PREPROCESS_MODES = ("caffe", "torchvision", "unit", "none")


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """RGB images (uint8 or float, values 0-255) -> float32 network input.

    "caffe": Keras ImageNet ResNets (BGR minus the ImageNet mean); "torchvision": torchvision/timm ImageNet
    ResNets (RGB / 255, standardised per channel); "unit": x / 127.5 - 1 (PoseNet, and models trained from
    scratch); "none": cast only (inputs already normalised by the caller).
    """
    images = images.astype(jnp.float32)
    if mode == "caffe":
        return images[..., ::-1] - jnp.asarray(KERAS_IMAGENET_BGR_MEAN, jnp.float32)
    if mode == "torchvision":
        return (images / 255.0 - jnp.asarray(TORCH_IMAGENET_MEAN, jnp.float32)) / jnp.asarray(TORCH_IMAGENET_STD,
                                                                                              jnp.float32)
    if mode == "unit":
        return images / 127.5 - 1.0
    if mode == "none":
        return images
    raise ValueError(f"preprocess {mode!r} is not one of {PREPROCESS_MODES}")


def check_preprocess(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"preprocess {mode!r} is not one of {PREPROCESS_MODES}")


__all__ = ["KERAS_IMAGENET_BGR_MEAN", "PREPROCESS_MODES", "TORCH_IMAGENET_MEAN", "TORCH_IMAGENET_STD",
           "check_preprocess", "preprocess"]
