"""Evaluates Google's released PoseNet weights (MobileNetV1, heatmaps + offsets) through hvpose's top-down pipeline.

    python -m hvpose.main --config=configs/posenet.py --mode=eval --workdir=/tmp/hvpose-posenet \
        --config.init.posenet_tfjs=PATH/model-stride16.json \
        --config.data.val.annotations=PATH/person_keypoints_val2017.json --config.data.val.images=PATH/val2017 \
        [--config.data.val.boxes=DETECTIONS.json] [--config.inference.decoder=argmax_offset]

Crops every box (ground truth, or a detection-results json) at 353x257 and 1.25x, runs PoseNet on it, decodes,
maps back, rescores, applies OKS-NMS and runs COCOeval, exactly as for a trained hvpose checkpoint. The TF.js
graph model is read as its nodes say (see `hvpose.pretrained.posenet`); its weights come from
tensorflow/tfjs-models (PoseNet, "quant2/075" MobileNetV1 at output stride 16). The README compares the decoders
on the real COCO sample.
"""

import ml_collections

from hvpose.configs import coco


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = coco.get_config()
    config.init.posenet_tfjs = ""  # model.json of a PoseNet TF.js graph model (required)
    config.model.output_stride = 16  # PoseNet MobileNet's; 353 = 16 * 22 + 1 and 257 = 16 * 16 + 1
    config.model.preprocess = "unit"  # PoseNet expects RGB as x / 127.5 - 1
    config.model.dtype = "float32"  # the imported network runs in float32
    config.loss.radius = 32.0  # PoseNet (PersonLab) trains with disks of radius 32 px; voting normalises by it
    config.inference.decoder = "hough"  # the paper's pipeline; "argmax_offset" is PoseNet's own decoding
    config.eval.batch_size = 16  # crops per inference batch
    config.data.worker_count = 0  # decode in the main process: evaluation sets here are small
    if variant:
        raise ValueError(f"unknown variant {variant!r} of configs/posenet.py")
    return config
