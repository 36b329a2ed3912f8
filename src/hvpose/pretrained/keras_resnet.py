"""ImageNet ResNet weights from Keras Applications' legacy HDF5 files into `hvpose.models.resnet.ResNet`.

Users download files such as `resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5`. Their layout: one HDF5 group
per Keras layer (`conv1_conv`, `conv4_block23_2_bn`, ...) whose datasets are named `<layer>/kernel:0` (Keras 2) or
`<layer>/kernel` (Keras 3's legacy writer); full-model files put these groups under `model_weights`. Conv kernels
are HWIO in both Keras and Flax, so no transposition is needed. Keras's ImageNet ResNets expect caffe-style input
(BGR, mean-subtracted, unscaled): see `KERAS_IMAGENET_BGR_MEAN`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hvpose.errors import WeightFileError
from hvpose.models.resnet import BOTTLENECK_STAGES, ResNet

# hvpose submodule name -> Keras layer-name suffix, inside one bottleneck unit.
_UNIT_LAYERS = {
    "conv1": "1_conv", "bn1": "1_bn", "conv2": "2_conv", "bn2": "2_bn", "conv3": "3_conv", "bn3": "3_bn",
    "shortcut_conv": "0_conv", "shortcut_bn": "0_bn",
}


def _keras_layer_names(depth: int) -> dict[str, str]:
    """hvpose module path ("block3_unit2/conv1") -> Keras layer name ("conv4_block2_1_conv")."""
    names = {"stem_conv": "conv1_conv", "stem_bn": "conv1_bn"}
    for stage, blocks in enumerate(BOTTLENECK_STAGES[depth]):
        for block in range(blocks):
            for ours, theirs in _UNIT_LAYERS.items():
                if ours.startswith("shortcut") and block > 0:
                    continue
                names[f"block{stage + 1}_unit{block + 1}/{ours}"] = f"conv{stage + 2}_block{block + 1}_{theirs}"
    return names


def _read_layer(group: Any) -> dict[str, np.ndarray]:
    """All datasets under one Keras layer group, keyed by their base name without ':0' ("kernel", "gamma", ...)."""
    import h5py

    arrays: dict[str, np.ndarray] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            arrays[name.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(obj[()])

    group.visititems(visit)
    return arrays


def read_keras_resnet_weights(path: str | os.PathLike[str], depth: int = 101) -> dict[str, dict[str, Any]]:
    """Reads a Keras Applications ResNet v1 h5 into hvpose's `{"params": ..., "batch_stats": ...}` trees.

    Raises:
      WeightFileError: the file is missing or unreadable, or lacks a layer or weight that ResNet-`depth` needs.
    """
    import h5py

    if depth not in BOTTLENECK_STAGES:
        raise WeightFileError(f"Keras Applications has no ResNet-{depth}; depths are {sorted(BOTTLENECK_STAGES)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"{path}: no such weight file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise WeightFileError(f"{path}: not a readable HDF5 file ({error})") from None
    params: dict[str, Any] = {}
    batch_stats: dict[str, Any] = {}
    with handle:
        root = handle["model_weights"] if "model_weights" in handle else handle
        # Deeper ResNets contain every layer name of shallower ones, so also refuse a file with extra blocks.
        for stage, blocks in enumerate(BOTTLENECK_STAGES[depth]):
            if f"conv{stage + 2}_block{blocks + 1}_1_conv" in root:
                raise WeightFileError(f"{path}: has more than {blocks} blocks in stage conv{stage + 2}; "
                                      f"it is not a ResNet-{depth} weight file")
        for module_path, layer in _keras_layer_names(depth).items():
            if layer not in root:
                raise WeightFileError(f"{path}: no layer '{layer}' (is this a ResNet-{depth} weight file?)")
            arrays = _read_layer(root[layer])
            *parents, leaf = module_path.split("/")
            p_node, s_node = params, batch_stats
            for parent in parents:
                p_node, s_node = p_node.setdefault(parent, {}), s_node.setdefault(parent, {})
            wanted = ("kernel", "bias") if "conv" in leaf else ("gamma", "beta", "moving_mean",
                                                                        "moving_variance")
            missing = [name for name in wanted if name not in arrays]
            if missing:
                raise WeightFileError(f"{path}: layer '{layer}' lacks {missing} (has {sorted(arrays)})")
            if "conv" in leaf:
                p_node[leaf] = {"kernel": arrays["kernel"], "bias": arrays["bias"]}
            else:
                p_node[leaf] = {"scale": arrays["gamma"], "bias": arrays["beta"]}
                s_node[leaf] = {"mean": arrays["moving_mean"], "var": arrays["moving_variance"]}
    return {"params": params, "batch_stats": batch_stats}


def check_matches(loaded: Any, expected: Any, source: str) -> None:
    """Raises WeightFileError unless `loaded` has exactly `expected`'s tree structure and leaf shapes."""
    loaded_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
    expected_flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    if set(loaded_flat) != set(expected_flat):
        extra = sorted(set(loaded_flat) - set(expected_flat))[:3]
        absent = sorted(set(expected_flat) - set(loaded_flat))[:3]
        raise WeightFileError(f"{source}: weights do not match the model (unexpected {extra}, missing {absent})")
    for key, value in loaded_flat.items():
        if tuple(value.shape) != tuple(expected_flat[key].shape):
            raise WeightFileError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model needs {tuple(expected_flat[key].shape)}")


def load_keras_resnet(path: str | os.PathLike[str], depth: int = 101, output_stride: int = 32,
                      dtype: Any = jnp.float32, **resnet_kwargs: Any) -> tuple[ResNet, dict[str, Any]]:
    """Builds the Keras-compatible atrous ResNet and loads ImageNet weights from a Keras Applications h5.

    Args:
      path: the legacy Keras h5 (e.g. `resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5`).
      depth: 50, 101 or 152.
      output_stride: 8, 16 or 32 (weights are the same; 8 and 16 dilate the later stages).
      dtype: compute dtype of the returned model.
      resnet_kwargs: further `ResNet` fields (e.g. `bn_frozen=True`).

    Returns:
      `(model, variables)`; `model.apply(variables, images)` gives the feature dict. Images must be preprocessed
      the Keras way (BGR, minus `KERAS_IMAGENET_BGR_MEAN`).
    """
    model = ResNet(depth=depth, output_stride=output_stride, stride_on="1x1", conv_bias=True, bn_epsilon=1.001e-5,
                   dtype=dtype, **resnet_kwargs)
    loaded = read_keras_resnet_weights(path, depth)
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 33, 33, 3), jnp.float32))
    check_matches(loaded, expected, os.fspath(path))
    variables = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), loaded)
    return model, variables
