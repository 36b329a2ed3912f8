"""ResNet-101 loaded from a Keras Applications legacy h5 reproduces Keras's own features.

Keras (JAX backend, test-only dependency) builds `keras.applications.ResNet101(weights=None)`; its BatchNorm
statistics get random values; the weights are saved in the legacy h5 layout users download, both as Keras 3's
legacy writer produces it (`conv1_conv/kernel`) and as Keras 2 did (`conv1_conv/kernel:0`).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"  # the reference runs on JAX; TensorFlow is not a dependency

import h5py
import numpy as np
import pytest

from hvpose.pretrained import WeightFileError, load_keras_resnet

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_resnet101():
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    assert keras.backend.backend() == "jax"
    model = keras.applications.ResNet101(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    return model, legacy_h5_format


def write_keras2_layout(source, target):
    """Rewrites a legacy h5 the way Keras 2 named weights: `<layer>/<layer>/<weight>:0`."""
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        dst.attrs["layer_names"] = src.attrs["layer_names"]
        for layer_name in src:
            group = dst.create_group(layer_name)
            names = []
            for name in src[layer_name].attrs.get("weight_names", []):
                name = name.decode() if isinstance(name, bytes) else name
                new_name = f"{layer_name}/{name.rsplit('/', 1)[-1]}:0"
                group.create_dataset(new_name, data=src[layer_name][name][()])
                names.append(new_name.encode())
            group.attrs["weight_names"] = names


@pytest.mark.parametrize("layout", ["keras3", "keras2"])
def test_block4_matches_keras_on_odd_sized_input(keras_resnet101, tmp_path, layout):
    model, legacy_h5_format = keras_resnet101
    path = tmp_path / "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    if layout == "keras2":
        write_keras2_layout(path, tmp_path / "keras2.h5")
        path = tmp_path / "keras2.h5"
        with h5py.File(path) as f:
            assert "conv1_conv/kernel:0" in f["conv1_conv"]

    images = np.random.default_rng(1).normal(0, 50, (2, 75, 61, 3)).astype(np.float32)  # odd, not 32n+1
    expected = np.asarray(model(images))
    ours_model, variables = load_keras_resnet(path, depth=101, output_stride=32)
    ours = np.asarray(ours_model.apply(variables, images)["block4"])
    assert ours.shape == expected.shape == (2, 3, 2, 2048)
    assert np.mean(expected > 0) > 0.1
    relative = np.abs(ours - expected).max() / np.abs(expected).max()
    assert relative <= 1e-4, relative


def test_wrong_or_missing_file_is_one_clear_error(keras_resnet101, tmp_path):
    with pytest.raises(WeightFileError, match="no such weight file"):
        load_keras_resnet(tmp_path / "absent.h5")
    not_h5 = tmp_path / "not.h5"
    not_h5.write_text("hello")
    with pytest.raises(WeightFileError, match="not a readable HDF5 file"):
        load_keras_resnet(not_h5)
    model, legacy_h5_format = keras_resnet101
    path = tmp_path / "r101.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    with pytest.raises(WeightFileError, match="ResNet-152"):
        load_keras_resnet(path, depth=152)
    with pytest.raises(WeightFileError, match="more than 6 blocks in stage conv4; it is not a ResNet-50"):
        load_keras_resnet(path, depth=50)
