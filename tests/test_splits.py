"""Which data a config uses: the files it names, or the synthetic people only when it names none."""

import pytest

from hvpose.configs import demo
from hvpose.data.splits import prepare_split, split_paths, uses_synthetic_data
from hvpose.errors import ConfigError


def test_the_demo_config_uses_a_users_files(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    config = demo.get_config()
    for split in ("train", "val"):
        config.data[split].annotations = str(sample / "test_coco.json")
        config.data[split].images = str(sample / "images")
    assert not uses_synthetic_data(config.data)
    assert split_paths(config.data, "val", str(tmp_path), 0) == (str(sample / "test_coco.json"),
                                                                  str(sample / "images"))
    prepared = prepare_split(config.data, "train", str(tmp_path), 0)
    assert sorted(prepared.image_ids) == [785, 40083, 196141, 197388]
    assert not (tmp_path / "demo_data").exists()


def test_files_for_one_split_only_are_refused_not_completed(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    config = demo.get_config()
    config.data.train.annotations = str(sample / "test_coco.json")
    config.data.train.images = str(sample / "images")
    with pytest.raises(ConfigError, match=r"config.data.val.annotations and config.data.val.images must name .* "
                                          r"\(config.data.train given, so the built-in synthetic data is not used\)"):
        split_paths(config.data, "val", str(tmp_path), 0)
    assert not (tmp_path / "demo_data").exists()


def test_without_files_the_demo_makes_its_synthetic_people(tmp_path):
    config = demo.get_config()
    config.data.synthetic.num_train, config.data.synthetic.num_val = 3, 2
    assert uses_synthetic_data(config.data)
    annotations, images = split_paths(config.data, "val", str(tmp_path), 0)
    assert annotations == str(tmp_path / "demo_data" / "val.json") and images == str(tmp_path / "demo_data" / "images")


def test_the_paper_config_needs_files(tmp_path):
    from hvpose.configs import coco

    with pytest.raises(ConfigError, match="config.data.train.annotations"):
        split_paths(coco.get_config().data, "train", str(tmp_path), 0)
