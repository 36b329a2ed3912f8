"""PoseNet's released weights through the whole top-down pipeline from the command line (`configs/posenet.py`):
real COCO people, ground-truth boxes and real detector boxes, Hough voting and the argmax + offset baseline."""

import json

import pytest

from conftest import REPO
from test_main import run_main

TFJS = "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


def evaluate_posenet(tmp_path, shared_data, *overrides):
    sample = shared_data / "coco_sample"
    result = run_main(f"--config={REPO / 'configs' / 'posenet.py'}", f"--workdir={tmp_path}", "--mode=eval",
                      f"--config.init.posenet_tfjs={shared_data / TFJS}",
                      f"--config.data.val.annotations={sample / 'test_coco.json'}",
                      f"--config.data.val.images={sample / 'images'}", *overrides, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp_path / "eval" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["hough", "argmax_offset"])
def test_posenet_on_real_coco_with_ground_truth_boxes(tmp_path, shared_data, decoder):
    metrics = evaluate_posenet(tmp_path, shared_data, f"--config.inference.decoder={decoder}")
    assert metrics["AP"] >= 0.35, metrics
    assert (tmp_path / "eval" / "predictions.png").stat().st_size > 1000


@pytest.mark.slow
def test_posenet_on_real_coco_with_detector_boxes(tmp_path, shared_data):
    boxes = shared_data / "coco_sample" / "test_coco_det_AP_H_56.json"
    metrics = evaluate_posenet(tmp_path, shared_data, f"--config.data.val.boxes={boxes}")
    assert metrics["AP"] >= 0.25, metrics


def test_posenet_needs_a_readable_model(tmp_path, shared_data):
    sample = shared_data / "coco_sample"
    result = run_main(f"--config={REPO / 'configs' / 'posenet.py'}", f"--workdir={tmp_path}", "--mode=eval",
                      f"--config.init.posenet_tfjs={tmp_path / 'absent.json'}",
                      f"--config.data.val.annotations={sample / 'test_coco.json'}",
                      f"--config.data.val.images={sample / 'images'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (f"hvpose: error: {tmp_path / 'absent.json'}: no such file "
                                                     "(a TF.js graph model's model.json)")
