"""Input normalisations against their published definitions, on the pixels of a real COCO photo.

"caffe" is checked against Keras Applications' own `resnet.preprocess_input`, "torchvision" against torchvision's
`ToTensor()` + `Normalize(mean, std)` written out channel by channel, "unit" against x / 127.5 - 1. Each reference
is computed independently of `hvpose.models.preprocess` (its constants are not used here).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # the Keras reference runs on JAX; TensorFlow is not a dependency

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import import_or_skip
from hvpose.models.preprocess import PREPROCESS_MODES, preprocess

PHOTO = "coco_sample/images/000000196141.jpg"


@pytest.fixture(scope="module")
def photo(shared_data):
    """A real COCO photo as RGB uint8 (1, H, W, 3), decoded by OpenCV (which reads BGR) and converted."""
    bgr = cv2.imread(str(shared_data / PHOTO), cv2.IMREAD_COLOR)
    assert bgr is not None and bgr.shape == (429, 640, 3)
    rgb = bgr[..., ::-1]
    # The channels must differ enough that a swapped channel order shows (mean |R - B| is 39 here; another photo
    # of the sample, 40083, is grey and could not tell RGB from BGR).
    assert np.abs(rgb[..., 0].astype(float) - rgb[..., 2]).mean() > 5
    return np.ascontiguousarray(rgb)[None]


def test_caffe_is_keras_resnet_preprocess_input(photo):
    keras = import_or_skip("keras")
    assert keras.backend.backend() == "jax"
    from keras.applications import resnet

    expected = np.asarray(resnet.preprocess_input(photo.astype(np.float32).copy()))  # it works in place
    got = np.asarray(preprocess(jnp.asarray(photo), "caffe"))
    assert got.dtype == np.float32 and got.shape == photo.shape
    # Measured max difference: 0 (the same float32 operations). 1e-3 is far below the smallest defect it must
    # catch: the means in RGB order are 19.7 off in two channels; the channel order not swapped is 26 off on average.
    np.testing.assert_allclose(got, expected, atol=1e-3)
    # The reference itself is discriminating on this photo: with the channel order not swapped it is far off.
    not_swapped = photo.astype(np.float32) - np.asarray([103.939, 116.779, 123.68], np.float32)
    assert np.abs(not_swapped - expected).mean() > 5


def test_torchvision_is_to_tensor_then_normalize(photo):
    # torchvision.transforms: ToTensor() maps uint8 to [0, 1] (/ 255); Normalize(mean, std) then computes
    # (x[c] - mean[c]) / std[c] for each channel c of the RGB image. Written out here, channel by channel.
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tensor = photo.astype(np.float64) / 255.0
    expected = np.stack([(tensor[..., c] - mean[c]) / std[c] for c in range(3)], axis=-1)
    got = np.asarray(preprocess(jnp.asarray(photo), "torchvision"))
    assert got.dtype == np.float32 and got.shape == photo.shape
    # float32 rounding of values within [-2.2, 2.7]: measured max error 7e-7. The smallest defect to catch, the R and
    # G means and stds exchanged, moves values by 0.08 on average (0.18 at most); mean and std swapped by 0.74,
    # BGR input by 0.45.
    np.testing.assert_allclose(got, expected, atol=1e-5)
    bgr_input = np.stack([(tensor[..., 2 - c] - mean[c]) / std[c] for c in range(3)], axis=-1)
    assert np.abs(bgr_input - expected).mean() > 0.1


def test_unit_is_x_over_127_5_minus_1(photo):
    got = np.asarray(preprocess(jnp.asarray(photo), "unit"))
    np.testing.assert_allclose(got, photo.astype(np.float64) / 127.5 - 1.0, atol=1e-6)  # float32 of [-1, 1]
    assert got.min() >= -1.0 and got.max() <= 1.0
    np.testing.assert_array_equal(np.asarray(preprocess(jnp.asarray(photo), "none")), photo.astype(np.float32))


def test_unknown_mode_is_refused():
    assert set(PREPROCESS_MODES) == {"caffe", "torchvision", "unit", "none"}
    with pytest.raises(ValueError, match="imagenet"):
        preprocess(jnp.zeros((1, 2, 2, 3)), "imagenet")
