"""The paper's stage-2 setting on COCO 2017 keypoints (Papandreou et al., CVPR 2017).

    python -m hvpose.main --config=configs/coco.py --workdir=gs://BUCKET/grmi-coco \
        --config.data.train.annotations=/data/coco/annotations/person_keypoints_train2017.json \
        --config.data.train.images=/data/coco/train2017 \
        --config.data.val.annotations=/data/coco/annotations/person_keypoints_val2017.json \
        --config.data.val.images=/data/coco/val2017 \
        --config.init.backbone=/data/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5

Every section goes straight to what it configures: `KeypointNet(num_keypoints=K, **config.model)`,
`total_loss(..., **config.loss)`, `Augmentation(**config.data.augment)`, `InferenceSettings(**config.inference)`.
Other configs import this one (`from hvpose.configs import coco`); `configs/coco.py` beside the repository is the
same file for the command line.

Variants (`--config=configs/coco.py:VARIANT`): `gt_boxes` evaluates on ground-truth boxes (the default uses
`config.data.val.boxes`, a detection-results json, when one is given).

The architecture, crop, disk radius and loss weights are the paper's. Its optimisation (asynchronous SGD on many
GPUs) does not carry over to synchronous data-parallel TPU training, so the schedule here is the well-tested
top-down recipe of SimpleBaseline / mmpose (Adam 5e-4 at batch 64, 210 epochs, 10x decays at epochs 170 and
200) scaled linearly with the global batch.
"""

import ml_collections

COCO_TRAIN_PERSONS = 149_813  # non-crowd persons with labelled keypoints in person_keypoints_train2017.json


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "keypoints"  # what hvpose.main trains: the keypoint network ("detection": configs/detector_*.py)
    config.seed = 0  # seeds initialisation, data order and augmentation

    config.model = ml_collections.ConfigDict()
    config.model.depth = 101  # ResNet-101, as in the paper
    config.model.output_stride = 8  # atrous: block3 dilation 2, block4 dilation 4
    config.model.stride_on = "1x1"  # Keras/Caffe layout, so Keras ImageNet weights load
    config.model.conv_bias = True  # Keras Applications' ResNets have conv biases
    config.model.base_width = 64  # standard ResNet width
    config.model.width_multipliers = ()  # conv2_x..conv5_x widths over base_width; () = (1, 2, 4, 8), the standard
    config.model.aux_head = True  # deep supervision on block3 (the paper's intermediate loss)
    config.model.bn_frozen = False  # BatchNorm statistics over the global batch
    config.model.bn_momentum = 0.9  # running statistics decay
    config.model.bn_epsilon = 1.001e-5  # Keras Applications' (torchvision/timm weights: 1e-5)
    config.model.frozen_stages = 0  # backbone parts left as loaded (0: none, 1: the stem, 2: also conv2_x, ...),
    # which skips their backward pass; the paper trains them all, Detectron2 freezes 2 of an ImageNet ResNet
    config.model.dtype = "bfloat16"  # compute dtype, MXU-native on TPU; parameters stay float32
    config.model.preprocess = "caffe"  # Keras ImageNet ResNets: BGR minus the mean ("torchvision", "unit")

    config.crop = ml_collections.ConfigDict()
    config.crop.height = 353  # 8 * 44 + 1: feature cell i sits on crop pixel 8i
    config.crop.width = 257  # 8 * 32 + 1

    config.loss = ml_collections.ConfigDict()
    config.loss.radius = 25.0  # disk radius R in crop pixels (paper); voting normalises by the same R
    config.loss.heatmap_weight = 4.0  # lambda_h (paper)
    config.loss.offset_weight = 1.0  # lambda_o (paper)
    config.loss.huber_delta = 1.0  # Huber threshold in crop pixels (not given in the paper)
    config.loss.offset_scale = 25.0  # offset errors are measured in units of R (not given in the paper)
    config.loss.aux_weight = 1.0  # weight of the block3 head's loss
    config.loss.map_stride = 1  # loss on every crop pixel (paper); 2 or 4: every 2nd/4th, cheaper
    config.loss.unlabelled = "ignore"  # heatmaps of unlabelled keypoints (v = 0): "ignore" or "negative" (README)

    config.data = ml_collections.ConfigDict()
    config.data.cache_dir = "~/.cache/hvpose/tfds"  # ArrayRecord cache (local or gs://)
    config.data.worker_count = 8  # grain worker processes per host (decode + warp)
    config.data.max_pixels = 64_000_000  # decompression-bomb bound per image
    config.data.read_threads = 16  # threads reading records ahead, per worker (grain's default: hides a gs://
    # cache's latency; 0 reads each record when it is needed, in the worker's own thread)
    config.data.read_buffer = 500  # records they keep ready, per worker (grain's default; 0 only with 0 threads)
    config.data.strict = False  # True: a missing/corrupt image is an error instead of skipped and counted
    config.data.flip_pairs = ml_collections.config_dict.placeholder(tuple)  # None: inferred from keypoint names
    config.data.sigmas = ml_collections.config_dict.placeholder(tuple)  # None: COCO's (or 0.05 for other sets)
    config.data.train = ml_collections.ConfigDict()
    config.data.train.annotations = ""  # person_keypoints_train2017.json
    config.data.train.images = ""  # train2017/
    config.data.val = ml_collections.ConfigDict()
    config.data.val.annotations = ""  # person_keypoints_val2017.json
    config.data.val.images = ""  # val2017/
    config.data.val.boxes = "gt"  # "gt", "detector" (stage 1, below) or a COCO detection-results json
    config.data.val.detector_workdir = ""  # with boxes="detector": a trained detector's workdir ("" = WORKDIR/detector)
    config.data.val.min_box_score = 0.0  # detections scoring below are not evaluated
    config.data.synthetic = ml_collections.ConfigDict()  # built-in demo people, used only when no files are given
    config.data.synthetic.enabled = False  # True: with no data paths given, generate and use the synthetic people
    config.data.synthetic.num_train = 0  # synthetic training images
    config.data.synthetic.num_val = 0  # synthetic held-out images
    config.data.synthetic.root = ""  # where they are written ("" = WORKDIR/demo_data); the demo's stages share one
    config.data.augment = ml_collections.ConfigDict()
    config.data.augment.flip = True  # horizontal flip, left/right swapped (paper)
    config.data.augment.enlarge = (1.0, 1.5)  # box enlargement range, uniform (paper)
    config.data.augment.rotation = 0.0  # max degrees; 0 = off (paper)
    config.data.augment.scale_jitter = 0.0  # extra zoom +-; 0 = off (paper)
    config.data.augment.shift_jitter = 0.0  # crop centre shift, a fraction of the box +-; 0 = off (paper)
    config.data.augment.color_jitter = 0.0  # brightness/contrast/saturation strength; 0 = off (paper)

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # global batch (all devices of all hosts)
    config.train.steps = 210 * COCO_TRAIN_PERSONS // 64  # 210 epochs of person crops (~491k steps)
    config.train.optimizer = "adamw"  # "adamw" or "momentum" (SGD with Nesterov momentum 0.9)
    config.train.learning_rate = 5e-4  # peak, for batch 64; scaled linearly with batch_size / 64
    config.train.warmup_steps = 500  # linear warm-up from 0.1% of the peak
    config.train.schedule = "step"  # after warm-up: "step" (10x decays at decay_boundaries) or "cosine" (to 0)
    config.train.decay_boundaries = (170 / 210, 200 / 210)  # fractions of `steps` with a 10x decay ("step")
    config.train.weight_decay = 1e-4  # decoupled, not on biases or BatchNorm parameters
    config.train.grad_clip_norm = 10.0  # global gradient-norm clip (0 = off)
    config.train.log_every = 100  # steps between metrics lines
    config.train.checkpoint_every = 2000  # steps between (asynchronous) checkpoints
    config.train.keep_checkpoints = 3  # most recent checkpoints kept
    config.train.eval_every = 0  # steps between evaluations in train_and_eval (0: at the end only)

    config.inference = ml_collections.ConfigDict()  # boxes -> people, shared by evaluation and the Predictor
    config.inference.flip_test = True  # average with the flipped crop (exactly aligned: crop sizes are 8n+1)
    config.inference.decoder = "hough"  # "hough" (the paper's voting) or "argmax_offset" (no voting, the baseline)
    config.inference.keypoint_threshold = 0.0  # keypoint probabilities above count in the instance score
    config.inference.keypoint_average = "weighted"  # of those: "mean" or "weighted" (sum p^2 / sum p; README)
    config.inference.use_box_score = True  # multiply the instance score by the box score
    config.inference.oks_nms_threshold = 0.9  # OKS above which the lower-scoring duplicate is dropped

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 64  # global evaluation batch
    config.eval.num_pictures = 4  # images drawn with predictions into eval/
    config.eval.draw_threshold = 0.3  # keypoints with probability above are drawn
    config.eval.draw_min_score = 0.1  # people scoring below are left out of the picture (not of the results)
    config.eval.max_boxes = 0  # evaluate only the first N boxes (0 = all; for quick checks)

    config.init = ml_collections.ConfigDict()
    config.init.backbone = ""  # ImageNet ResNet (Keras h5, torchvision/timm .safetensors) or an hvpose training
    # workdir (its newest checkpoint's ResNet); "" = random init
    config.init.posenet_tfjs = ""  # PoseNet TF.js model JSON (configs/posenet.py)

    if variant == "gt_boxes":
        config.data.val.boxes = "gt"
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of configs/coco.py (known: gt_boxes)")
    return config
