"""End to end on real data: a small model memorises the 4 real COCO images and scores AP >= 0.9 on them."""

import sys

import pytest

from conftest import REPO
from hvpose import evaluate
from hvpose.train import train

sys.path.insert(0, str(REPO))


@pytest.mark.slow
def test_small_model_overfits_the_real_coco_sample(shared_data, tmp_path):
    from configs import demo

    sample = shared_data / "coco_sample"
    config = demo.get_config()
    config.data.synthetic.enabled = False
    for split in ("train", "val"):
        config.data[split].annotations = str(sample / "test_coco.json")
        config.data[split].images = str(sample / "images")
    # Memorisation: training crops are exactly the evaluation crops.
    config.data.augment.flip = False
    config.data.augment.rotation = 0.0
    config.data.augment.enlarge_min = config.data.augment.enlarge_max = 1.25
    config.data.worker_count = 0
    config.train.batch_size = 12
    config.train.steps = 300
    config.train.learning_rate = 4e-3
    config.train.warmup_steps = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 1000
    config.eval.flip_test = False
    state = train(config, str(tmp_path))
    stats = evaluate.evaluate(config, str(tmp_path), {"params": state.params, "batch_stats": state.batch_stats},
                              int(state.step))
    assert stats["AP"] >= 0.9, stats
