"""Saved configs of older checkpoints load in today's layout (one translation at the loading edge); a checkpoint
restored into a model of other settings is refused in one line naming them; relative paths restore too."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from hvpose.checkpoints import CONFIG_FILE, read_config, restore_model_variables, upgrade_config
from hvpose.configs import demo, detector_demo
from hvpose.data.augment import Augmentation
from hvpose.detector import build_model
from hvpose.errors import ConfigError
from hvpose.inference import InferenceSettings
from hvpose.keypoints import COCO17
from hvpose.models.keypoint_net import KeypointNet

# config.json written beside the checkpoints of `make demo` by hvpose at commit bb98b4e (the layout before
# `config.inference`, `model.dtype` and `data.augment.enlarge`).
OLD = pathlib.Path(__file__).parent / "data" / "demo_config_bb98b4e.json"


def leaf_paths(tree, prefix=""):
    paths = set()
    for key, value in tree.items():
        paths |= leaf_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return paths


def test_an_old_demo_config_upgrades_to_todays_layout(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(OLD.read_text())
    config, keypoint_set = read_config(str(tmp_path))
    today = demo.get_config()
    assert leaf_paths(config.to_dict()) == leaf_paths(today.to_dict())
    assert config.model.dtype == "float32" and config.inference.decoder == "hough"
    assert tuple(config.data.augment.enlarge) == (1.0, 1.5) and config.loss.unlabelled == "negative"
    assert config.model.width_multipliers == []  # the standard widths it was trained with, not today's demo's
    assert (config.data.read_threads, config.data.read_buffer) == (16, 500)  # grain's defaults, not the demo's 0
    # Every section still goes straight to what it configures.
    assert KeypointNet(num_keypoints=keypoint_set.num_keypoints, **config.model).depth == 18
    assert InferenceSettings(**config.inference).flip_test
    Augmentation(**config.data.augment)


def test_todays_config_is_left_as_it_is():
    today = json.loads(json.dumps(demo.get_config().to_dict()))
    assert upgrade_config(today) == today


def test_a_detector_config_from_before_zoom_and_soft_nms_gets_neither():
    today = json.loads(json.dumps(detector_demo.get_config().to_dict()))
    assert upgrade_config(today) == today
    older = json.loads(json.dumps(today))
    del older["data"]["augment"]["zoom"]
    del older["model"]["width_multipliers"]
    del older["data"]["read_threads"], older["data"]["read_buffer"]
    for field in ("nms_method", "soft_nms_sigma", "vote_iou"):
        del older["inference"][field]
    upgraded = upgrade_config(older)
    assert upgraded["data"]["augment"] == {**today["data"]["augment"], "zoom": [1.0, 1.0]}
    assert upgraded["model"] == {**today["model"], "width_multipliers": []}  # the standard widths
    assert (upgraded["data"]["read_threads"], upgraded["data"]["read_buffer"]) == (16, 500)  # grain's defaults
    assert upgraded["inference"] == {**today["inference"], "nms_method": "greedy", "soft_nms_sigma": 0.5,
                                     "vote_iou": 0.0}


def test_a_checkpoint_restored_into_a_model_of_other_settings_is_refused_naming_them(tmp_path, monkeypatch):
    config = detector_demo.get_config()
    config.model.base_width, config.model.fc_dim, config.data.canvas_size = 8, 16, (65, 65)
    canvas = tuple(config.data.canvas_size)
    model = build_model(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *canvas, 3), jnp.uint8))
    rng = np.random.default_rng(0)  # any values do: only their round trip is checked (and init compiles slowly)
    variables = jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype), shapes)
    directory = tmp_path / "checkpoints"
    with ocp.CheckpointManager(directory, item_names=("state",)) as manager:
        manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(dict(variables))))
    (directory / CONFIG_FILE).write_text(json.dumps({"config": json.loads(config.to_json_best_effort()),
                                                     "keypoint_set": dataclasses.asdict(COCO17)}))
    monkeypatch.chdir(tmp_path)  # a relative path, as `python -m hvpose.predict --weights=workdir/demo` gives
    restored, step = restore_model_variables("checkpoints", model, canvas)
    assert step == 7
    np.testing.assert_array_equal(restored["params"]["fc1"]["kernel"], variables["params"]["fc1"]["kernel"])

    config.model.fc_dim = 32
    with pytest.raises(ConfigError, match=r"trained with config.model.fc_dim=16 \(given 32\)$"):
        restore_model_variables(str(directory), build_model(config), canvas)
