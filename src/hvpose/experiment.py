"""What a config builds, shared by training, evaluation and prediction: model, preprocessing, mesh, data splits."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hvpose.data.augment import Augmentation
from hvpose.data.coco import DataError
from hvpose.data.demo_data import ensure_demo_dataset
from hvpose.data.tfds_coco import PreparedDataset, prepare
from hvpose.models.pose_net import PoseNet
from hvpose.pretrained.keras_resnet import KERAS_IMAGENET_BGR_MEAN
from hvpose.pretrained.torch_resnet import TORCH_IMAGENET_MEAN, TORCH_IMAGENET_STD

DATA_AXIS = "data"


class ConfigError(ValueError):
    """A config value that cannot work; the message is one line naming the field."""


def resolve_workdir(workdir: str) -> str:
    """Absolute local paths (orbax requires them); URLs such as gs://... unchanged."""
    return workdir if "://" in workdir else os.path.abspath(os.path.expanduser(workdir))


def crop_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
    height, width = int(config.crop.height), int(config.crop.width)
    stride = int(config.model.output_stride)
    if (height - 1) % stride or (width - 1) % stride:
        raise ConfigError(f"config.crop: {height}x{width} must be of the form {stride}n+1 for output stride "
                          f"{stride} (feature cells on crop pixels; exact flip test)")
    return height, width


def build_model(config: ml_collections.ConfigDict, num_keypoints: int, map_stride: int = 1) -> PoseNet:
    """The keypoint network of `config`; `map_stride` > 1 samples its maps more coarsely (training loss only)."""
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.model.compute_dtype not in dtypes:
        raise ConfigError(f"config.model.compute_dtype: {config.model.compute_dtype!r} is not one of {list(dtypes)}")
    return PoseNet(num_keypoints=num_keypoints, depth=config.model.depth, output_stride=config.model.output_stride,
                   stride_on=config.model.stride_on, conv_bias=config.model.conv_bias,
                   bn_frozen=config.model.bn_frozen, bn_momentum=config.model.bn_momentum,
                   bn_epsilon=config.model.get("bn_epsilon", 1.001e-5),
                   base_width=config.model.base_width, aux_head=config.model.aux_head, map_stride=map_stride,
                   dtype=dtypes[config.model.compute_dtype])


def preprocess(images: jax.Array, mode: str) -> jax.Array:
    """uint8 RGB crops -> network input (inside jit, so hosts ship 4x fewer bytes than float32)."""
    images = images.astype(jnp.float32)
    if mode == "caffe":  # Keras ImageNet ResNets: BGR minus the ImageNet mean
        return images[..., ::-1] - jnp.asarray(KERAS_IMAGENET_BGR_MEAN, jnp.float32)
    if mode == "unit":
        return images / 127.5 - 1.0
    if mode == "torchvision":  # torchvision/timm ImageNet ResNets: RGB in [0, 1], standardised per channel
        return (images / 255.0 - jnp.asarray(TORCH_IMAGENET_MEAN)) / jnp.asarray(TORCH_IMAGENET_STD)
    raise ConfigError(f"config.model.preprocess: {mode!r} is not 'caffe', 'unit' or 'torchvision'")


def make_mesh() -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over every device of every process."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def augmentation(config: ml_collections.ConfigDict) -> Augmentation:
    a = config.data.augment
    try:
        return Augmentation(flip=a.flip, enlarge=(a.enlarge_min, a.enlarge_max), rotation=a.rotation,
                            scale_jitter=a.scale_jitter, color_jitter=a.color_jitter)
    except ValueError as error:
        raise ConfigError(f"config.data.augment: {error}") from None


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    return resolve_workdir(config.data.cache_dir or os.path.join(workdir, "tfds"))


def split_paths(config: ml_collections.ConfigDict, split: str, workdir: str) -> tuple[str, str]:
    """(annotations, images) of `split` ("train" or "val"), generating the synthetic data when enabled."""
    if config.data.synthetic.enabled:
        paths = ensure_demo_dataset(os.path.join(workdir, "demo_data"), config.data.synthetic.num_train,
                                    config.data.synthetic.num_val, seed=config.seed)
        return paths[split], paths["images"]
    entry = config.data[split]
    if not entry.annotations or not entry.images:
        raise ConfigError(f"config.data.{split}.annotations and config.data.{split}.images must name a COCO-format "
                          "keypoint json and its image folder")
    return entry.annotations, entry.images


def prepare_split(config: ml_collections.ConfigDict, split: str, workdir: str) -> PreparedDataset:
    annotations, images = split_paths(config, split, workdir)
    flip_pairs = None if config.data.flip_pairs is None else [tuple(p) for p in config.data.flip_pairs]
    sigmas = None if config.data.sigmas is None else list(config.data.sigmas)
    try:
        return prepare(annotations, images, cache_dir(config, workdir), flip_pairs=flip_pairs, sigmas=sigmas,
                       strict=config.data.strict, max_pixels=config.data.max_pixels)
    except DataError:
        raise
    except ValueError as error:  # e.g. an inconsistent keypoint set from the config
        raise ConfigError(f"config.data: {error}") from None


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def to_numpy_tree(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)
