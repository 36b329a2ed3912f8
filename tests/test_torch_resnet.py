"""torchvision/timm ResNet checkpoints (safetensors) load into hvpose's ResNet and reproduce torchvision's forward.

The test writes its own checkpoints: random weights under torchvision's state-dict names and shapes, saved with
the `safetensors` package. The reference is a direct transcription of torchvision's ResNet forward (NCHW, OIHW
kernels straight from the state dict, stride on the 3x3, max-pool padded with -inf, eval-mode BatchNorm with
eps 1e-5), independent of hvpose's module layout and of the loader's transposes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from hvpose.models.resnet import BASIC_STAGES, BOTTLENECK_STAGES
from hvpose.pretrained import WeightFileError
from hvpose.pretrained.torch_resnet import load_torch_resnet


def torchvision_state_dict(depth: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    bottleneck = depth in BOTTLENECK_STAGES
    stages = BOTTLENECK_STAGES[depth] if bottleneck else BASIC_STAGES[depth]
    state: dict[str, np.ndarray] = {}

    def conv(name, out_channels, in_channels, k):
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / (in_channels * k * k)),
                                             (out_channels, in_channels, k, k)).astype(np.float32)

    def bn(name, channels):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    channels = 64
    for stage, blocks in enumerate(stages):
        width = 64 * 2 ** stage
        out = 4 * width if bottleneck else width
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            if bottleneck:
                conv(f"{prefix}.conv1", width, channels, 1), bn(f"{prefix}.bn1", width)
                conv(f"{prefix}.conv2", width, width, 3), bn(f"{prefix}.bn2", width)
                conv(f"{prefix}.conv3", out, width, 1), bn(f"{prefix}.bn3", out)
            else:
                conv(f"{prefix}.conv1", width, channels, 3), bn(f"{prefix}.bn1", width)
                conv(f"{prefix}.conv2", width, width, 3), bn(f"{prefix}.bn2", width)
            if block == 0 and (channels != out or stage > 0):
                conv(f"{prefix}.downsample.0", out, channels, 1), bn(f"{prefix}.downsample.1", out)
            channels = out
    state["fc.weight"] = rng.normal(0, 0.01, (1000, channels)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


def torchvision_forward(state: dict[str, np.ndarray], depth: int, images_nchw: np.ndarray) -> np.ndarray:
    """torchvision's ResNet.forward up to layer4 (eval mode), transcribed."""
    bottleneck = depth in BOTTLENECK_STAGES
    stages = BOTTLENECK_STAGES[depth] if bottleneck else BASIC_STAGES[depth]
    precision = jax.lax.Precision.HIGHEST

    def conv(x, name, stride=1, padding=0):
        return jax.lax.conv_general_dilated(x, state[f"{name}.weight"], (stride, stride), [(padding, padding)] * 2,
                                            dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=precision)

    def bn(x, name):
        shape = (1, -1, 1, 1)
        scale = state[f"{name}.weight"] / np.sqrt(state[f"{name}.running_var"] + 1e-5)
        return (x - state[f"{name}.running_mean"].reshape(shape)) * scale.reshape(shape) \
            + state[f"{name}.bias"].reshape(shape)

    x = jax.nn.relu(bn(conv(images_nchw, "conv1", 2, 3), "bn1"))
    x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)])
    for stage, blocks in enumerate(stages):
        for block in range(blocks):
            prefix = f"layer{stage + 1}.{block}"
            stride = 2 if (block == 0 and stage > 0) else 1
            if bottleneck:
                y = jax.nn.relu(bn(conv(x, f"{prefix}.conv1"), f"{prefix}.bn1"))
                y = jax.nn.relu(bn(conv(y, f"{prefix}.conv2", stride, 1), f"{prefix}.bn2"))
                y = bn(conv(y, f"{prefix}.conv3"), f"{prefix}.bn3")
            else:
                y = jax.nn.relu(bn(conv(x, f"{prefix}.conv1", stride, 1), f"{prefix}.bn1"))
                y = bn(conv(y, f"{prefix}.conv2", 1, 1), f"{prefix}.bn2")
            if f"{prefix}.downsample.0.weight" in state:
                x = bn(conv(x, f"{prefix}.downsample.0", stride), f"{prefix}.downsample.1")
            x = jax.nn.relu(x + y)
    return np.asarray(x)


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_checkpoint_reproduces_torchvision_features(tmp_path, rng, depth):
    state = torchvision_state_dict(depth, rng)
    path = tmp_path / f"resnet{depth}.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(path))  # timm-style prefixed keys
    model, variables = load_torch_resnet(path, depth=depth, output_stride=32)
    images = rng.normal(0, 1, (2, 3, 67, 45)).astype(np.float32)  # odd sizes exercise the padding
    expected = torchvision_forward(state, depth, images)
    ours = np.asarray(model.apply(variables, jnp.asarray(images.transpose(0, 2, 3, 1)))["block4"])
    np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    # The same weights at output stride 8 (atrous) keep the block4 grid at 1/8 of a 8n+1 input.
    atrous, _ = load_torch_resnet(path, depth=depth, output_stride=8)
    assert atrous.apply(variables, jnp.zeros((1, 65, 49, 3)))["block4"].shape[1:3] == (9, 7)


def test_bad_torch_checkpoints_give_one_line(tmp_path, rng):
    state = torchvision_state_dict(50, rng)
    path = tmp_path / "resnet50.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightFileError, match="shortcut_bn.*has shape .512,., the model needs .128,."):
        load_torch_resnet(path, depth=34)  # same block counts as ResNet-50, basic blocks
    with pytest.raises(WeightFileError, match="no layer3.6.conv1.weight"):
        load_torch_resnet(path, depth=101)
    with pytest.raises(WeightFileError, match="layer1 has more than 2 blocks; not a ResNet-18"):
        load_torch_resnet(path, depth=18)
    del state["layer2.1.bn2.running_var"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(WeightFileError, match=r"broken.safetensors: no layer2.1.bn2.running_var"):
        load_torch_resnet(tmp_path / "broken.safetensors", depth=50)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightFileError, match="not a readable safetensors file"):
        load_torch_resnet(tmp_path / "junk.safetensors", depth=50)


def test_config_backbone_initialises_training_from_a_torchvision_checkpoint(tmp_path, rng):
    from hvpose.configs import coco
    from hvpose.errors import ConfigError
    from hvpose.models.keypoint_net import KeypointNet
    from hvpose.train import init_state, make_optimizer

    state = torchvision_state_dict(18, rng)
    path = str(tmp_path / "resnet18.safetensors")
    save_file(state, path)
    config = coco.get_config()
    config.model.depth, config.model.output_stride, config.model.aux_head = 18, 16, False
    config.model.stride_on, config.model.conv_bias, config.model.preprocess = "3x3", False, "torchvision"
    model = KeypointNet(num_keypoints=17, **config.model)
    fresh = init_state(model, make_optimizer(config.train), (33, 33), 0, backbone=path)
    np.testing.assert_array_equal(fresh.params["backbone"]["block3_unit2"]["conv1"]["kernel"],
                                  state["layer3.1.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(fresh.batch_stats["backbone"]["stem_bn"]["var"], state["bn1.running_var"])
    assert fresh.params["head"]["kernel"].shape == (1, 1, 256 * 2, 51)  # the head stays randomly initialised
    config.model.stride_on = "1x1"
    with pytest.raises(ConfigError, match="need config.model.stride_on='3x3'"):
        init_state(KeypointNet(num_keypoints=17, **config.model), make_optimizer(config.train), (33, 33), 0,
                   backbone=path)
