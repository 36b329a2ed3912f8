"""A tiny detector learns the 4 real COCO images by heart: the whole stage-1 path (data, anchors, matching,
sampling, RoIAlign, losses, the optimizer, detection and COCOeval) can fit real people."""

import json

import pytest

from test_main import run_main

OVERFIT = ["--config.data.canvas_size=(257, 385)",  # the 640-pixel-wide photos at 0.6: people from 10 px tall
           "--config.model.anchor_sizes=(16.0, 32.0, 64.0, 128.0, 256.0)",
           "--config.model.anchor_ratios=(0.5, 1.0, 2.0, 3.0)",
           "--config.train.batch_size=4", "--config.train.warmup_steps=30", "--config.train.learning_rate=0.032",
           "--config.data.worker_count=0", "--config.eval.batch_size=4", "--config.train.log_every=50",
           "--config.train.checkpoint_every=1000"]


@pytest.mark.slow
def test_tiny_detector_overfits_the_real_coco_sample(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    files = [f"--config.data.{split}.{kind}={sample / name}" for split in ("train", "val")
             for kind, name in (("annotations", "test_coco.json"), ("images", "images"))]
    result = run_main("--config=configs/detector_demo.py", f"--workdir={tmp_path}", *files, *OVERFIT,
                      "--config.train.steps=300", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["AP"] >= 0.9, metrics  # all 14 people of the 4 photos, crowd-free
