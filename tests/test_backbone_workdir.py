"""A trained hvpose workdir as a pretrained backbone (`config.init.backbone=WORKDIR`): the ResNet of its newest
checkpoint, exactly, into a keypoint network or a detector; the rest stays random; settings that cannot fit are
refused in one line before anything is read."""

import logging
import shutil

import jax
import numpy as np
import pytest
from test_detector import TINY

from hvpose.checkpoints import restore_backbone, restore_model_variables, variables_misfit
from hvpose.errors import ConfigError
from hvpose.models.detector import FasterRCNN
from hvpose.pretrained import backbone_family, check_backbone_matches
from hvpose.train import init_state, make_optimizer, train
from test_train import tiny_config, tiny_model_and_optimizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A keypoint network's workdir after 2 steps (base width 8, as the tiny detector's)."""
    workdir = tmp_path_factory.mktemp("keypoints")
    config = tiny_config(workdir_steps=2)
    config.data.synthetic.root = str(workdir / "data")
    train(config, str(workdir))
    return config, workdir


def test_the_newest_checkpoints_resnet_fills_the_backbone_and_nothing_else(trained):
    config, workdir = trained
    model, optimizer, _ = tiny_model_and_optimizer(config)
    crop = (config.crop.height, config.crop.width)
    saved, step = restore_model_variables(str(workdir / "checkpoints"), model, crop)
    assert step == 2
    fresh = init_state(model, optimizer, crop, seed=1, backbone=str(workdir))
    random = init_state(model, optimizer, crop, seed=1)
    for kind in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, getattr(fresh, kind)["backbone"], saved[kind]["backbone"])
    jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in fresh.params.items() if k != "backbone"},
                 {k: v for k, v in random.params.items() if k != "backbone"})
    # Trained for 2 steps, so not the random initialisation of either seed.
    assert not np.array_equal(fresh.params["backbone"]["stem_conv"]["kernel"],
                              random.params["backbone"]["stem_conv"]["kernel"])
    assert int(fresh.step) == 0


def test_a_keypoint_resnet_fills_a_detectors_backbone_and_its_conv5_head(trained):
    """A detector whose second stage runs conv5_x per RoI gets block4 beside its backbone, as from ImageNet."""
    config, workdir = trained
    resnet, _ = restore_backbone(str(workdir))
    model = FasterRCNN(**{**TINY, "head": "block4", "roi_size": 6,
                          "width_multipliers": config.model.width_multipliers})
    fresh = init_state(model, make_optimizer(config.train), (65, 65), 0, backbone=str(workdir))
    np.testing.assert_array_equal(fresh.params["block4_unit2"]["conv2"]["kernel"],
                                  resnet["params"]["block4_unit2"]["conv2"]["kernel"])
    np.testing.assert_array_equal(fresh.batch_stats["backbone"]["block3_unit1"]["bn1"]["mean"],
                                  resnet["batch_stats"]["block3_unit1"]["bn1"]["mean"])
    assert "block4_unit1" not in fresh.params["backbone"] and "rpn_conv" in fresh.params


def test_settings_that_cannot_fit_are_refused_in_one_line(trained, tmp_path):
    config, workdir = trained
    family = backbone_family(workdir)
    assert (family.depth, family.base_width, family.stride_on, family.preprocess) == (18, 8, "3x3", "unit")
    wider = {**config.model.to_dict(), "base_width": 16, "preprocess": "torchvision"}
    with pytest.raises(ConfigError, match=r"config.model.base_width=8, config.model.preprocess='unit'$"):
        check_backbone_matches(workdir, wider)
    assert family.width_multipliers == (1, 2, 4, 4)  # the demo's conv5_x at half width
    standard = {**config.model.to_dict(), "width_multipliers": []}  # a list, as read from json
    with pytest.raises(ConfigError, match=r"config.model.width_multipliers=\(1, 2, 4, 4\)$"):
        check_backbone_matches(workdir, standard)
    with pytest.raises(ConfigError, match=r"Keras Applications ResNet weights need .*width_multipliers=\(\)"):
        check_backbone_matches("imagenet.h5", {**config.model.to_dict(), "stride_on": "1x1", "conv_bias": True,
                                               "preprocess": "caffe"})
    with pytest.raises(ConfigError, match="not an hvpose training workdir"):
        backbone_family(tmp_path)
    unsaved = tmp_path / "unsaved" / "checkpoints"  # a run stopped before its first checkpoint
    unsaved.mkdir(parents=True)
    shutil.copy(workdir / "checkpoints" / "config.json", unsaved)
    model, optimizer, _ = tiny_model_and_optimizer(config)
    with pytest.raises(ConfigError, match="no checkpoint to take the backbone from"):
        init_state(model, optimizer, (config.crop.height, config.crop.width), 0, backbone=str(unsaved.parent))
    # train() refuses before it prepares any data.
    refused = tiny_config()
    refused.model.base_width = 16
    refused.init.backbone = str(workdir)
    with pytest.raises(ConfigError, match="base_width=8"):
        train(refused, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_reading_a_workdir_shows_no_orbax_notices(trained, caplog):
    """Reading a checkpoint (for its model, its backbone or its shapes) is a deliberate read-only use that skips the
    grain position: orbax's notices of both are hidden, so the demo's log shows hvpose's own lines."""
    config, workdir = trained
    model, _, _ = tiny_model_and_optimizer(config)
    crop = (config.crop.height, config.crop.width)
    with caplog.at_level(logging.WARNING):
        variables, step = restore_model_variables(str(workdir / "checkpoints"), model, crop)
        restore_backbone(str(workdir))
        assert variables_misfit(str(workdir / "checkpoints"), step, variables) == ""
    assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []
