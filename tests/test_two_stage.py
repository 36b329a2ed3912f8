"""Both stages from the command line, as `make demo` runs them: the detector trains and writes box AP and COCO
detections; the keypoint network is evaluated on its boxes beside the ground-truth boxes; the Predictor finds
people with it."""

import json

import numpy as np
import pytest

from hvpose.detector import BOX_STAT_NAMES
from hvpose.errors import ConfigError
from hvpose.evaluate import STAT_NAMES
from test_main import TINY, run_main

TINY_DETECTOR = ["--config.model.base_width=8", "--config.model.fc_dim=16", "--config.model.rpn_channels=16",
                 "--config.data.canvas_size=(65, 97)", "--config.data.synthetic.num_train=6",
                 "--config.data.synthetic.num_val=3", "--config.data.worker_count=0", "--config.train.batch_size=4",
                 "--config.train.log_every=1", "--config.eval.batch_size=4"]


@pytest.mark.slow
def test_detector_then_keypoints_on_its_boxes(tmp_path):
    data = [f"--config.data.synthetic.root={tmp_path / 'data'}", f"--config.data.cache_dir={tmp_path / 'tfds'}"]
    detector = tmp_path / "detector"
    trained = run_main("--config=configs/detector_demo.py", f"--workdir={detector}", "--config.train.steps=2",
                       *TINY_DETECTOR, *data, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = [json.loads(line) for line in (detector / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert {"loss", "rpn_class_loss", "rpn_box_loss", "head_class_loss", "head_box_loss",
            "images_per_second"} <= set(records[0])
    assert "rpn class" in trained.stderr and "images/s" in trained.stderr
    metrics = json.loads((detector / "eval" / "metrics.json").read_text())
    assert set(metrics) == {*BOX_STAT_NAMES, "step"} and metrics["step"] == 2
    detections = json.loads((detector / "eval" / "detections.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} and len(d["bbox"]) == 4 for d in detections)
    assert all(0 <= d["score"] <= 1 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0 for d in detections)
    assert (detector / "eval" / "predictions.png").is_file()

    # Running it again resumes; a keypoint config pointed at the detector's workdir is refused in one line.
    resumed = run_main("--config=configs/detector_demo.py", f"--workdir={detector}", "--config.train.steps=3",
                       "--mode=train", *TINY_DETECTOR, *data, timeout=600)
    assert resumed.returncode == 0 and "resumed from step 2" in resumed.stderr, resumed.stderr[-3000:]
    wrong = run_main("--config=configs/demo.py", f"--workdir={detector}", *TINY, *data, timeout=600)
    assert wrong.returncode == 1 and "holds a detection model" in wrong.stderr.strip().splitlines()[-1]

    # As `make demo`: the keypoint network's backbone starts from the detector's.
    keypoints = tmp_path / "keypoints"
    both = run_main("--config=configs/demo.py", f"--workdir={keypoints}", *TINY, *data,
                    f"--config.init.backbone={detector}",
                    "--config.data.val.boxes=detector", f"--config.data.val.detector_workdir={detector}",
                    "--config.inference.flip_test=False", timeout=600)
    metrics = json.loads((keypoints / "eval" / "metrics.json").read_text()) if both.returncode == 0 else {}
    if both.returncode == 1 and "no boxes to evaluate" in both.stderr:
        pytest.fail("the 3-step detector found nobody; the test needs at least one box above its score threshold")
    assert both.returncode == 0, both.stderr[-3000:]
    assert set(metrics) == {*STAT_NAMES, *(f"{name}_gt_boxes" for name in STAT_NAMES), "step"}
    assert "with ground-truth boxes" in both.stderr
    assert (f"backbone initialised from {detector} (hvpose checkpoint (18-layer, base width 8, width multipliers "
            "(1, 2, 4, 4)))") in both.stderr  # the demo's conv5_x at half width, in both networks

    import hvpose
    from hvpose.data.images import decode_image, read_image_file

    predictor = hvpose.Predictor.from_checkpoint(str(keypoints), detector=str(detector))
    with pytest.raises(ConfigError, match="holds a person detector, not a keypoint network: give it as the detector"):
        hvpose.Predictor.from_checkpoint(str(detector))  # the detector's workdir given as the keypoint weights
    image_file = sorted((tmp_path / "data" / "images").iterdir())[0]
    boxes = predictor.box_source(decode_image(read_image_file(image_file)))
    assert boxes.ndim == 2 and boxes.shape[1] == 5 and (np.diff(boxes[:, 4]) <= 0).all()  # best first
    people = predictor(image_file)
    assert len(people) <= len(boxes)


@pytest.mark.slow
def test_the_read_options_reach_the_detectors_evaluation_loaders(tmp_path, loader_read_options):
    """The detector's own evaluation reads with `config.data`'s read options, and so does a keypoint evaluation on
    the detector's boxes (`config.data.val.boxes="detector"`): its pass of the detector and its crops."""
    import jax
    import jax.numpy as jnp

    from hvpose import detector, evaluate
    from hvpose.configs import detector_demo
    from hvpose.errors import DataError
    from hvpose.models.initialize import initial_variables
    from hvpose.train import train
    from test_train import tiny_config, tiny_model_and_optimizer

    config = detector_demo.get_config()
    config.model.base_width, config.model.fc_dim, config.model.rpn_channels = 8, 16, 16
    config.data.canvas_size = (65, 97)
    config.data.synthetic.num_train, config.data.synthetic.num_val = 6, 3
    config.data.synthetic.root, config.data.cache_dir = str(tmp_path / "data"), str(tmp_path / "tfds")
    config.train.steps, config.train.batch_size, config.eval.batch_size = 1, 4, 4
    workdir = str(tmp_path / "detector")
    train(config, workdir)
    loader_read_options.clear()  # training's loader
    config.data.read_threads, config.data.read_buffer = 2, 8
    detector.evaluate_detector_checkpoint(config, workdir)
    assert loader_read_options and set(loader_read_options) == {(2, 8)}

    keypoints = tiny_config()
    for field in ("synthetic", "cache_dir"):  # the same images, not a rewrite of the folder
        keypoints.data[field] = config.data[field]
    keypoints.data.val.boxes, keypoints.data.val.detector_workdir = "detector", workdir
    keypoints.data.read_threads, keypoints.data.read_buffer = 3, 9
    model, _, _ = tiny_model_and_optimizer(keypoints)
    variables = initial_variables(model, jax.random.key(0), jnp.zeros((1, 33, 25, 3), jnp.uint8))
    loader_read_options.clear()
    try:
        evaluate.evaluate(keypoints, str(tmp_path / "keypoints"), variables, 0)
    except DataError as error:  # a 1-step detector may find nobody to crop; its pass over the split still ran
        assert "no boxes to evaluate" in str(error)
    assert loader_read_options and set(loader_read_options) == {(3, 9)}
