"""Stage 1 of the paper: a Faster R-CNN person detector on COCO 2017, trained on its own.

    python -m hvpose.main --config=configs/detector_coco.py --workdir=gs://BUCKET/grmi-detector \
        --config.data.train.annotations=/data/coco/annotations/person_keypoints_train2017.json \
        --config.data.train.images=/data/coco/train2017 \
        --config.data.val.annotations=/data/coco/annotations/person_keypoints_val2017.json \
        --config.data.val.images=/data/coco/val2017 \
        --config.init.backbone=/data/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5

Then stage 2 reads its boxes: `--config.data.val.boxes=detector --config.data.val.detector_workdir=gs://BUCKET/
grmi-detector` on configs/coco.py (or its eval/detections.json as a detection-results file).

The paper (Papandreou et al. 2017, section 3.1) uses the Faster R-CNN of Huang et al. 2017 (the TF Object Detection
API) with a ResNet-101 made atrous, person class only, trained on COCO people. Where the paper is silent, the values
are those of the TF Object Detection API's `faster_rcnn_resnet101_coco.config` (marked TFOD) or detectron2's
defaults (marked D2). The person annotation files of the keypoint task hold every person box (with or without
keypoints), which is what a person detector trains on; crowd regions are dropped from the targets.
"""

import ml_collections

from hvpose.configs import coco

COCO_TRAIN_IMAGES = 118_287  # train2017 images (those without people are negatives and stay in)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    base = coco.get_config()
    config = ml_collections.ConfigDict()
    config.task = "detection"  # hvpose.main trains and evaluates a person detector (hvpose.detector)
    config.seed = 0  # seeds initialisation, data order, flips and anchor/RoI sampling

    config.model = ml_collections.ConfigDict()  # FasterRCNN(**config.model)
    config.model.depth = 101  # ResNet-101 (paper)
    config.model.output_stride = 8  # atrous backbone (paper): the RPN reads block3 at stride 8 (block4 head)
    config.model.stride_on = "1x1"  # Keras/Caffe layout, so Keras ImageNet weights load
    config.model.conv_bias = True  # Keras Applications' ResNets have conv biases
    config.model.bn_frozen = True  # ImageNet BatchNorm statistics kept (TFOD: batch norm not trained)
    config.model.bn_momentum = 0.9  # running statistics decay (unused while frozen)
    config.model.bn_epsilon = 1.001e-5  # Keras Applications'
    config.model.base_width = 64  # standard width
    config.model.width_multipliers = ()  # conv2_x..conv5_x widths over base_width; () = (1, 2, 4, 8), the standard
    config.model.preprocess = "caffe"  # Keras ImageNet ResNets: BGR minus the mean
    config.model.dtype = "bfloat16"  # compute dtype on TPU/GPU; parameters stay float32
    config.model.head = "block4"  # conv5_x on 14x14 RoIs max-pooled to 7x7 (TFOD Faster R-CNN ResNet-101)
    config.model.fc_dim = 1024  # width of the "fc" head (unused with "block4")
    config.model.anchor_sizes = (64.0, 128.0, 256.0, 512.0)  # TFOD: scales 0.25-2 of 256 px
    config.model.anchor_ratios = (0.5, 1.0, 2.0)  # TFOD (height / width)
    config.model.rpn_channels = 512  # TFOD first_stage_box_predictor depth
    config.model.rpn_pre_nms_top_k = 6000  # D2 test setting (TFOD runs NMS on all anchors)
    config.model.rpn_post_nms_top_k = 300  # TFOD first_stage_max_proposals
    config.model.rpn_nms_threshold = 0.7  # TFOD first_stage_nms_iou_threshold
    config.model.num_rois = 64  # TFOD second_stage_batch_size
    config.model.roi_positive_fraction = 0.25  # TFOD second_stage_balance_fraction
    config.model.roi_positive_iou = 0.5  # person if IoU >= 0.5 with a person box (TFOD, D2)
    config.model.roi_size = 14  # TFOD initial_crop_size, max-pooled 2x2 to 7x7
    config.model.roi_sampling_ratio = 2  # samples per bin side (a fixed ratio; D2 uses 0 = adaptive)
    config.model.roi_align_method = "einsum"  # matmuls both ways, for TPUs (unmeasured there; "fused" on CPUs)

    config.loss = ml_collections.ConfigDict()  # detector_loss(**config.loss)
    config.loss.rpn_positive_iou = 0.7  # anchor is a person at IoU >= 0.7 (TFOD, D2)
    config.loss.rpn_negative_iou = 0.3  # background below 0.3 (TFOD, D2)
    config.loss.rpn_num_samples = 256  # anchors sampled per image (TFOD first_stage_minibatch_size)
    config.loss.rpn_positive_fraction = 0.5  # at most half people (TFOD, D2)
    config.loss.rpn_beta = 1.0 / 9.0  # smooth L1 threshold of the RPN deltas (D2 / original Faster R-CNN)
    config.loss.head_beta = 1.0  # smooth L1 threshold of the head deltas (TFOD Huber delta 1)
    config.loss.rpn_class_weight = 1.0  # TFOD first_stage_objectness_loss_weight
    config.loss.rpn_box_weight = 2.0  # TFOD first_stage_localization_loss_weight
    config.loss.head_class_weight = 1.0  # TFOD second_stage_classification_loss_weight
    config.loss.head_box_weight = 2.0  # TFOD second_stage_localization_loss_weight

    config.data = ml_collections.ConfigDict()
    config.data.cache_dir = base.data.cache_dir  # ArrayRecord cache, shared with the keypoint configs
    config.data.worker_count = 8  # grain worker processes per host
    config.data.max_pixels = base.data.max_pixels  # decompression-bomb bound per image
    config.data.read_threads = base.data.read_threads  # threads reading records ahead, per worker
    config.data.read_buffer = base.data.read_buffer  # records they keep ready, per worker
    config.data.strict = False  # True: a missing/corrupt image is an error instead of skipped and counted
    config.data.flip_pairs = base.data.flip_pairs  # read with the annotations (keypoint layout)
    config.data.sigmas = base.data.sigmas  # read with the annotations (keypoint layout)
    config.data.train = ml_collections.ConfigDict({"annotations": "", "images": ""})  # person_keypoints_train2017
    config.data.val = ml_collections.ConfigDict({"annotations": "", "images": ""})  # person_keypoints_val2017
    config.data.synthetic = base.data.synthetic  # built-in people: off here (detector_demo.py turns them on)
    config.data.canvas_size = (641, 1025)  # TFOD keep-aspect resizer 600-1024, as a fixed 8n+1 canvas
    config.data.max_boxes = 32  # person boxes per image at most (more: the largest are kept; README)
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.flip = True  # horizontal flip (TFOD random_horizontal_flip)
    config.data.augment.zoom = (1.0, 1.0)  # scale jitter range (z times the fitting scale); TFOD COCO: none

    config.train = base.train  # same fields as the keypoint training
    config.train.batch_size = 64  # global batch of images (TPU pod; TFOD used 1 image per GPU)
    config.train.steps = 60_000  # ~32 epochs of train2017 at batch 64
    config.train.optimizer = "momentum"  # TFOD momentum 0.9
    config.train.learning_rate = 0.08  # peak for batch 64 (D2: 0.02 at batch 16, scaled linearly)
    config.train.warmup_steps = 1000  # linear warm-up (D2)
    config.train.schedule = "step"  # 10x decays (TFOD, D2)
    config.train.decay_boundaries = (2 / 3, 8 / 9)  # D2 3x-schedule shape
    config.train.weight_decay = 1e-4  # D2
    config.train.grad_clip_norm = 10.0  # global-norm clip (TFOD gradient_clipping_by_norm 10)
    config.train.log_every = 100  # steps between metrics lines
    config.train.checkpoint_every = 2000  # steps between (asynchronous) checkpoints
    config.train.keep_checkpoints = 3  # most recent checkpoints kept
    config.train.eval_every = 0  # steps between evaluations (0: at the end only)

    config.inference = ml_collections.ConfigDict()  # DetectionSettings(**config.inference)
    config.inference.score_threshold = 0.05  # keep low scores: AP needs them (D2 0.05)
    config.inference.nms_threshold = 0.6  # TFOD second-stage NMS
    config.inference.max_detections = 100  # per image (COCO AR@100)
    config.inference.nms_method = "greedy"  # "greedy" (TFOD, D2) or "soft" (Gaussian soft-NMS, Bodla et al. 2017)
    config.inference.soft_nms_sigma = 0.5  # soft-NMS: scores times exp(-IoU^2 / sigma) (Bodla et al.'s 0.5)
    config.inference.vote_iou = 0.0  # box voting over this IoU (Gidaris & Komodakis 2015); 0: off (TFOD, D2)

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 16  # global evaluation batch of images
    config.eval.num_pictures = 4  # images drawn with their boxes into eval/
    config.eval.draw_threshold = 0.5  # boxes scoring above are drawn

    config.init = ml_collections.ConfigDict()
    config.init.backbone = ""  # ImageNet ResNet-101 (Keras h5, torchvision/timm .safetensors) or an hvpose
    # training workdir (its newest checkpoint's ResNet); "" = random
    config.init.posenet_tfjs = ""  # unused by the detector (kept so every config has the field)
    if variant:
        raise ValueError(f"unknown variant {variant!r} of configs/detector_coco.py")
    return config
