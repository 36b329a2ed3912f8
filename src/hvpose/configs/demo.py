"""The demo: a small keypoint network trained and evaluated on the built-in synthetic people, on a CPU.

    python -m hvpose.main --config=configs/demo.py --workdir=/tmp/hvpose-demo

Generates the synthetic dataset (seeded) under the workdir, trains a quarter-width ResNet-18 (conv5_x at half of
that) at output stride 16 on 161x113 crops, evaluates on the held-out images with COCOeval and draws predictions
into WORKDIR/eval/. Sized with the demo detector (configs/detector_demo.py) to finish `make demo` in the README's
measured time on 2 CPU cores; everything else is the paper's method scaled to the crop. `make demo` starts the
backbone from the demo detector's (`--config.init.backbone=workdir/demo/detector`): the only pretrained ResNet
there is without downloads, as the paper starts from ImageNet's; from scratch the same steps score less (README,
"The demo").

Given data paths (`--config.data.train.annotations=... --config.data.train.images=...` and the same for `val`),
it trains and evaluates on exactly those files instead of the synthetic people.
"""

import ml_collections

from hvpose.configs import coco


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = coco.get_config()
    config.model.depth = 18  # small and fast on a CPU
    config.model.output_stride = 16  # 11x8 feature grid: about 4x cheaper than 8 at this size
    config.model.stride_on = "3x3"  # no ImageNet weights needed here
    config.model.conv_bias = False
    config.model.base_width = 16  # quarter width, as the demo detector's (its backbone fits); the budget buys
    # more as crop pixels than as width here (README, "The demo")
    config.model.width_multipliers = (1, 2, 4, 4)  # conv5_x at half the standard 8: at output stride 16 it runs on
    # conv4_x's 11x8 grid, the costliest stage; as the demo detector's. Keypoint AP on the detector's boxes within one
    # seed's noise, 0.02 less on ground-truth boxes (README)
    config.model.aux_head = False
    config.model.dtype = "float32"  # bfloat16 is slow on CPUs
    config.model.preprocess = "unit"  # x / 127.5 - 1

    config.crop.height = 161  # 16 * 10 + 1; smaller crops cost keypoint AP more than they save (README)
    config.crop.width = 113  # 16 * 7 + 1
    config.loss.radius = 11.0  # 25 px scaled to the crop (353 -> 161); 8 and 18 measured worse (README)
    config.loss.offset_scale = 11.0
    config.loss.map_stride = 2  # loss on every 2nd crop pixel (speed against every pixel: benchmarks/train_step.py)

    config.data.cache_dir = ""  # "" = WORKDIR/tfds
    config.data.worker_count = 0  # decode in the training process while the jitted step runs (dispatch is
    # asynchronous): a worker process takes 3-6 s to start (it imports grain, JAX and TFDS) for each of the demo's
    # six loaders; 0.94x the demo's time with one worker (README, "The demo")
    config.data.read_threads = 0  # each record read when it is needed: grain's 16 reading threads take CPU time
    # from the train step in this one process (0.94x the demo's time; README, "The demo")
    config.data.read_buffer = 0  # nothing read ahead (grain's 500 records need the threads)
    config.data.synthetic.enabled = True  # the built-in people, unless data paths are given
    config.data.synthetic.num_train = 1500
    config.data.synthetic.num_val = 150
    config.data.augment.rotation = 20.0  # more variety per image for a small dataset
    config.data.augment.shift_jitter = 0.1  # off-centre crops, as around the demo detector's boxes (the demo is
    # evaluated on those): better keypoint AP on detected boxes, slightly worse on ground-truth ones
    # (benchmarks/demo.md)

    config.train.batch_size = 16
    config.train.steps = 1200  # sized with the detector's steps to the demo's budget; at 900, keypoint AP on detected
    # boxes came within one seed's noise of 0.5 (README, "The demo")
    config.train.learning_rate = 1.6e-2  # per batch 64; 4e-3 at batch 16: a short run takes a high rate (4x and 2x
    # an earlier demo's both beat it; twice this one is within one seed's noise; benchmarks/demo.md)
    config.train.warmup_steps = 100
    config.train.decay_boundaries = (0.75, 0.92)  # 10x decays at 75% and 92% of the steps
    config.train.log_every = 100
    config.train.checkpoint_every = 600
    config.eval.batch_size = 32
    config.eval.num_pictures = 4
    if variant:
        raise ValueError(f"unknown variant {variant!r} of configs/demo.py")
    return config
