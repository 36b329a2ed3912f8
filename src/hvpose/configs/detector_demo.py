"""A small person detector trained on the built-in synthetic people (or on given COCO-format data), on a CPU.

    python -m hvpose.main --config=configs/detector_demo.py --workdir=/tmp/hvpose-demo/detector

Stage 1 of the demo (`make demo` runs it before the keypoint network, whose evaluation then uses its boxes). The
method is detector_coco.py's scaled to this CPU: a quarter-width ResNet-18 (conv5_x at half of that) at output
stride 16 on a 161x161 canvas
(the scenes are 192-320 px, people 40-290 px tall), a light two-layer head on 7x7 RoIs instead of conv5_x, fewer
proposals and samples. Sized by measurement to fit its share of the demo's ten minutes (README).

`configs/detector_demo.py:long` is the best recipe measured on the same data (its time and box AP are in the
README): 6,000 steps, scale jitter, test NMS 0.7.

Given data paths (`--config.data.train.annotations=... --config.data.train.images=...` and the same for `val`),
it trains and evaluates on exactly those files instead of the synthetic people.
"""

import ml_collections

from hvpose.configs import demo, detector_coco


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = detector_coco.get_config()
    keypoint_demo = demo.get_config()
    config.model.depth = 18  # small and fast on a CPU
    config.model.output_stride = 16  # 11x11 feature grid on the canvas
    config.model.stride_on = "3x3"  # no ImageNet weights needed here
    config.model.conv_bias = False
    config.model.bn_frozen = False  # trained from scratch: BatchNorm statistics are learnt
    config.model.base_width = 16  # quarter width: the synthetic people are easy to tell from their background
    config.model.width_multipliers = (1, 2, 4, 4)  # conv5_x at half the standard 8: the costliest stage at output
    # stride 16; box AP within one seed's noise (README, "The demo")
    config.model.preprocess = "unit"  # x / 127.5 - 1
    config.model.dtype = "float32"  # bfloat16 is slow on CPUs
    config.model.head = "fc"  # two fully connected layers on 7x7 RoIs of block4
    config.model.fc_dim = 128
    config.model.roi_size = 7
    config.model.roi_align_method = "dense"  # the fastest form on CPUs at these small maps, forward and backward
    # (benchmarks/detector.py)
    config.model.anchor_sizes = (32.0, 45.0, 64.0, 90.0, 128.0)  # people are 35-145 px tall on the canvas; sqrt(2)
    # steps give more anchors over IoU 0.7 than octaves (box AP 0.340 against 0.322 after 300 steps)
    config.model.anchor_ratios = (1.0, 2.0, 3.0)  # standing people are 1-3x taller than wide
    config.model.rpn_channels = 128
    config.model.rpn_pre_nms_top_k = 500
    config.model.rpn_post_nms_top_k = 50  # at most 4 people per scene
    config.model.num_rois = 32  # a quarter of them people at most

    config.loss.rpn_num_samples = 128
    config.loss.rpn_box_weight = 1.0  # D2's weights: steadier from scratch than TFOD's 2
    config.loss.head_box_weight = 1.0

    config.data = keypoint_demo.data  # the same synthetic people (same seed and counts) and data fields
    del config.data.val.boxes, config.data.val.min_box_score  # stage-2 fields
    config.data.canvas_size = (161, 161)  # 16 * 10 + 1: scenes (192-320 px) at 0.5-0.84
    config.data.max_boxes = 8  # scenes hold at most 4 people
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.flip = True  # horizontal flip
    config.data.augment.zoom = (1.0, 1.0)  # no scale jitter

    config.train.batch_size = 16
    config.train.steps = 450  # sized with the keypoint network's steps to the demo's budget (README, "The demo")
    config.train.optimizer = "adamw"  # from scratch, Adam converges in far fewer steps than momentum SGD
    config.train.learning_rate = 8e-3  # per batch 64; 2e-3 at batch 16 (slightly better than 1e-3 in 300 steps)
    config.train.warmup_steps = 50
    config.train.decay_boundaries = (0.75, 0.92)
    config.train.grad_clip_norm = 10.0
    config.train.log_every = 50
    config.train.checkpoint_every = 225

    config.inference.nms_threshold = 0.5  # D2's test NMS
    config.eval.batch_size = 16
    config.eval.num_pictures = 4
    if variant == "long":  # the best detector measured on the demo data, not the demo's budget (README)
        config.train.steps = 6000  # held-out box AP levels off after ~1,200 steps without zoom, not with it
        config.train.checkpoint_every = 1000
        config.data.augment.zoom = (0.6, 1.4)  # scale jitter: moves the overfitting plateau up (benchmarks/demo.md)
        config.inference.nms_threshold = 0.7  # chosen on another synthetic split (seed 7): the people overlap
        config.model.width_multipliers = ()  # the standard widths, as its figures were measured (benchmarks/demo.md)
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/detector_demo.py (known: long)")
    return config
