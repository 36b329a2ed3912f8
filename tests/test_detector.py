"""The Faster R-CNN detector: proposals and detections against numpy transcriptions of their definitions, RoI
sampling, the block4 head's parameter layout, and training on images with and without people (no NaN)."""

import json
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from hvpose.detector_targets import detector_loss, rpn_targets
from hvpose.models.detector import HEAD_BOX_WEIGHTS, FasterRCNN, detect, propose, sample_rois
from hvpose.models.initialize import initial_variables
from hvpose.ops.nms import soft_nms, vote

TINY = dict(depth=18, output_stride=16, stride_on="3x3", conv_bias=False, base_width=8, preprocess="unit",
            head="fc", fc_dim=32, roi_size=5, anchor_sizes=(16.0, 32.0), anchor_ratios=(1.0, 2.0), rpn_channels=16,
            rpn_pre_nms_top_k=100, rpn_post_nms_top_k=20, num_rois=8)


def decode_np(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Faster R-CNN decoding, written out (detectron2's Box2BoxTransform.apply_deltas with its clamp)."""
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + w / 2, anchors[:, 1] + h / 2
    dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
    dw = np.minimum(deltas[:, 2] / weights[2], np.log(1000 / 16))
    dh = np.minimum(deltas[:, 3] / weights[3], np.log(1000 / 16))
    px, py, pw, ph = cx + dx * w, cy + dy * h, w * np.exp(dw), h * np.exp(dh)
    return np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], 1)


def greedy_nms_np(boxes, scores, threshold, limit):
    order, keep = list(np.argsort(-scores, kind="stable")), []
    while order and len(keep) < limit:
        best = order.pop(0)
        keep.append(best)
        rest = []
        for other in order:
            lt = np.maximum(boxes[best, :2], boxes[other, :2])
            rb = np.minimum(boxes[best, 2:], boxes[other, 2:])
            inter = np.prod(np.maximum(rb - lt, 0))
            union = np.prod(boxes[best, 2:] - boxes[best, :2]) + np.prod(boxes[other, 2:] - boxes[other, :2]) - inter
            if not inter / union > threshold:
                rest.append(other)
        order = rest
    return keep


def random_anchors(rng, n, size=100):
    centre = rng.uniform(0, size, (n, 2))
    half = rng.uniform(2, 30, (n, 2))
    return np.concatenate([centre - half, centre + half], 1).astype(np.float32)


def test_proposals_are_top_k_decoded_clipped_and_suppressed_greedily(rng):
    anchors = random_anchors(rng, 60)
    logits = rng.normal(size=60).astype(np.float32)
    deltas = rng.normal(scale=0.3, size=(60, 4)).astype(np.float32)
    height, width = 70, 90
    boxes, scores, valid = propose(jnp.asarray(logits), jnp.asarray(deltas), jnp.array([height, width]),
                                   jnp.asarray(anchors), pre_nms_top_k=40, post_nms_top_k=15, nms_threshold=0.5)

    top = np.argsort(-logits, kind="stable")[:40]
    decoded = decode_np(deltas[top], anchors[top])
    decoded = np.clip(decoded, 0, [width, height, width, height])
    usable = ((decoded[:, 2:] - decoded[:, :2]) >= 1.0).all(1)
    candidates = np.where(usable)[0]
    kept = [candidates[i] for i in greedy_nms_np(decoded[candidates], logits[top][candidates], 0.5, 15)]
    assert int(valid.sum()) == len(kept) and valid[:len(kept)].all()
    np.testing.assert_allclose(np.asarray(boxes)[:len(kept)], decoded[kept], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores)[:len(kept)], 1 / (1 + np.exp(-logits[top][kept])), rtol=1e-5)
    assert (np.asarray(scores)[len(kept):] == 0).all()


def test_proposals_over_the_canvas_padding_are_dropped(rng):
    # Anchors wholly right of the true width clip to zero width and are never proposed.
    anchors = np.array([[10, 10, 30, 30], [60, 10, 80, 30], [70, 40, 95, 60]], np.float32)
    _, _, valid = propose(jnp.zeros(3), jnp.zeros((3, 4)), jnp.array([50, 50]), jnp.asarray(anchors),
                          pre_nms_top_k=3, post_nms_top_k=3, nms_threshold=0.7)
    assert np.asarray(valid).tolist() == [True, False, False]


def test_detections_decode_with_head_weights_threshold_and_nms(rng):
    rois = random_anchors(rng, 30)
    logits = rng.normal(size=(30, 2)).astype(np.float32)
    deltas = rng.normal(scale=1.0, size=(30, 4)).astype(np.float32)
    roi_valid = rng.random(30) < 0.8
    boxes, scores, valid = detect(jnp.asarray(logits), jnp.asarray(deltas), jnp.asarray(rois),
                                  jnp.asarray(roi_valid), jnp.array([100, 100]), score_threshold=0.3,
                                  nms_threshold=0.5, max_detections=10)
    probability = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    decoded = np.clip(decode_np(deltas, rois, HEAD_BOX_WEIGHTS), 0, 100)
    usable = np.where(roi_valid & (probability > 0.3) & ((decoded[:, 2:] - decoded[:, :2]) > 0).all(1))[0]
    kept = [usable[i] for i in greedy_nms_np(decoded[usable], probability[usable], 0.5, 10)]
    assert int(valid.sum()) == len(kept) > 0
    np.testing.assert_allclose(np.asarray(boxes)[:len(kept)], decoded[kept], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(scores)[:len(kept)], probability[kept], rtol=1e-5)


def test_detections_with_soft_nms_and_box_voting_are_those_ops_on_the_usable_boxes(rng):
    rois = random_anchors(rng, 30)
    logits = rng.normal(size=(30, 2)).astype(np.float32)
    deltas = rng.normal(scale=1.0, size=(30, 4)).astype(np.float32)
    roi_valid = rng.random(30) < 0.8
    boxes, scores, valid = (np.asarray(a) for a in detect(
        jnp.asarray(logits), jnp.asarray(deltas), jnp.asarray(rois), jnp.asarray(roi_valid), jnp.array([100, 100]),
        score_threshold=0.3, nms_threshold=0.5, max_detections=30, nms_method="soft", soft_nms_sigma=0.5,
        vote_iou=0.6))
    probability = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    decoded = np.clip(decode_np(deltas, rois, HEAD_BOX_WEIGHTS), 0, 100).astype(np.float32)
    usable = roi_valid & (probability > 0.3) & ((decoded[:, 2:] - decoded[:, :2]) > 0).all(1)
    keep, kept_scores, kept_valid = (np.asarray(a) for a in soft_nms(decoded, np.where(usable, probability, -np.inf),
                                                                     0.5, 30, 0.3))
    expected = np.asarray(vote(decoded[keep], decoded, np.where(usable, probability, 0.0), 0.6))
    count = int(kept_valid.sum())
    assert 0 < count < usable.sum()  # decay took some boxes under the threshold
    np.testing.assert_array_equal(valid, kept_valid)
    np.testing.assert_allclose(scores[:count], kept_scores[:count], rtol=1e-5)
    np.testing.assert_allclose(boxes[:count], expected[:count], rtol=1e-5, atol=1e-3)
    assert not np.allclose(boxes[:count], decoded[keep[:count]], atol=1e-2)  # voting moved boxes
    assert (boxes[count:] == 0).all() and (scores[count:] == 0).all()


def test_training_rois_include_the_ground_truth_as_people():
    proposals = jnp.array([[0, 0, 10, 10], [50, 50, 90, 90], [0, 0, 0, 0]], jnp.float32)
    gt = jnp.array([[52, 48, 88, 92], [5, 60, 25, 99], [0, 0, 0, 0]], jnp.float32)
    sampled = sample_rois(proposals, jnp.array([True, True, False]), gt, jnp.array([True, True, False]),
                          jax.random.key(0), num_rois=8, positive_fraction=0.5, positive_iou=0.5)
    valid, labels = np.asarray(sampled["valid"]), np.asarray(sampled["labels"])
    rois, targets = np.asarray(sampled["rois"]), np.asarray(sampled["targets"])
    # Candidates: 2 valid proposals + 2 valid gt boxes; the far proposal is background, the rest people.
    assert valid.sum() == 4 and (labels[valid] == 1).sum() == 3 and (labels[~valid] == -1).all()
    people = {tuple(r) for r in rois[valid & (labels == 1)]}
    assert people == {(50, 50, 90, 90), (52, 48, 88, 92), (5, 60, 25, 99)}
    for roi, target, label in zip(rois[valid], targets[valid], labels[valid], strict=True):
        if tuple(roi) == (50, 50, 90, 90):
            assert tuple(target) == (52, 48, 88, 92)
        elif label == 1:
            assert tuple(target) == tuple(roi)  # a ground-truth box targets itself


def make_batch(rng, canvas=65):
    images = rng.integers(0, 255, (2, canvas, canvas, 3), dtype=np.uint8)
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[0, :2] = [[5, 5, 30, 50], [30, 10, 60, 60]]  # the second image has no people
    valid = np.zeros((2, 3), bool)
    valid[0, :2] = True
    return {"image": images, "image_size": np.array([[canvas, canvas], [40, canvas]], np.int32), "boxes": boxes,
            "box_valid": valid}


def test_forward_shapes_and_proposals_inside_the_true_size(rng):
    model = FasterRCNN(**TINY)
    batch = make_batch(rng)
    variables = initial_variables(model, jax.random.key(0), batch["image"])
    outputs = model.apply(variables, batch["image"], batch["image_size"])
    cells = 5 * 5  # 65 = 16 * 4 + 1
    assert outputs["rpn_logits"].shape == (2, cells * 4) and outputs["rpn_deltas"].shape == (2, cells * 4, 4)
    assert outputs["class_logits"].shape == (2, 20, 2) and outputs["box_deltas"].shape == (2, 20, 4)
    proposals, valid = np.asarray(outputs["proposals"]), np.asarray(outputs["proposal_valid"])
    assert valid.any(axis=1).all()
    assert (proposals[1][valid[1]][:, 3] <= 40).all()  # clipped to the second image's true height


def test_an_image_without_people_trains_without_nan(rng):
    model = FasterRCNN(**TINY)
    batch = make_batch(rng)
    variables = initial_variables(model, jax.random.key(0), batch["image"])

    def loss(params, batch):
        outputs, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, batch["image"],
                                 batch["image_size"], train=True, gt_boxes=batch["boxes"],
                                 gt_valid=batch["box_valid"], key=jax.random.key(1), mutable=["batch_stats"])
        terms = detector_loss(outputs, batch["boxes"], batch["box_valid"], jax.random.key(2))
        return terms["loss"], terms

    (total, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], batch)
    assert np.isfinite(total) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert int(terms["rpn_positives"]) > 0 and int(terms["roi_positives"]) > 0
    # A batch of empty images: every term finite, the box terms exactly 0.
    empty = {**batch, "box_valid": np.zeros_like(batch["box_valid"])}
    (total, terms), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], empty)
    assert np.isfinite(total) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(terms["rpn_box_loss"]) == 0 and float(terms["head_box_loss"]) == 0
    assert float(terms["rpn_class_loss"]) > 0 and float(terms["head_class_loss"]) > 0


def test_rpn_targets_force_each_person_onto_its_best_anchor():
    anchors = jnp.array([[0, 0, 20, 20], [0, 0, 40, 40], [50, 50, 70, 70]], jnp.float32)
    gt = jnp.array([[0, 0, 30, 30], [0, 0, 0, 0]], jnp.float32)
    targets = rpn_targets(anchors, gt, jnp.array([True, False]), jax.random.key(0), num_samples=3)
    # IoUs with the person: 0.44 and 0.56 (both below 0.7); the better is forced positive, the far one negative.
    assert np.asarray(targets["labels"]).tolist() == [-1, 1, 0]
    np.testing.assert_allclose(np.asarray(targets["deltas"])[1], [-0.125, -0.125, np.log(0.75), np.log(0.75)],
                               rtol=1e-5)


def test_block4_head_runs_conv5_on_rois_with_resnet_parameter_names(rng):
    model = FasterRCNN(**{**TINY, "head": "block4", "roi_size": 6, "depth": 50, "stride_on": "1x1",
                          "conv_bias": True})
    images = rng.integers(0, 255, (1, 65, 65, 3), dtype=np.uint8)
    variables = initial_variables(model, jax.random.key(0), images)
    assert sorted(k for k in variables["params"] if k.startswith("block4")) == [
        "block4_unit1", "block4_unit2", "block4_unit3"]
    assert not any(k.startswith("block4") for k in variables["params"]["backbone"])
    assert model.feature_stride == 16
    outputs = model.apply(variables, images)
    assert outputs["class_logits"].shape == (1, 20, 2)


def test_the_roi_align_forms_give_the_same_detector(rng):
    batch = make_batch(rng)
    gather = FasterRCNN(**{**TINY, "roi_align_method": "gather"})
    variables = initial_variables(gather, jax.random.key(0), batch["image"])
    reference = gather.apply(variables, batch["image"], batch["image_size"])
    for method in ("einsum", "fused"):
        other = FasterRCNN(**{**TINY, "roi_align_method": method}).apply(variables, batch["image"],
                                                                         batch["image_size"])
        for name in ("class_logits", "box_deltas"):
            np.testing.assert_allclose(np.asarray(other[name]), np.asarray(reference[name]), atol=1e-4)
    with pytest.raises(ValueError, match="roi_align_method"):
        FasterRCNN(**{**TINY, "roi_align_method": "scatter"}).init(jax.random.key(0), batch["image"])


def test_imagenet_weights_fill_the_backbone_and_the_block4_head(tmp_path, rng):
    """A torchvision ResNet checkpoint initialises the detector: conv2_x..conv4_x in the backbone, conv5_x in the
    head that runs it per RoI; the RPN and the box layers stay random."""
    from safetensors.numpy import save_file

    from hvpose.configs import detector_coco
    from hvpose.train import init_state, make_optimizer
    from test_torch_resnet import torchvision_state_dict

    state = torchvision_state_dict(18, rng)
    path = str(tmp_path / "resnet18.safetensors")
    save_file(state, path)
    config = detector_coco.get_config()
    model = FasterRCNN(**{**TINY, "head": "block4", "roi_size": 6, "base_width": 64, "preprocess": "torchvision"})
    fresh = init_state(model, make_optimizer(config.train), (65, 65), 0, backbone=path)
    np.testing.assert_array_equal(fresh.params["backbone"]["block3_unit2"]["conv1"]["kernel"],
                                  state["layer3.1.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(fresh.params["block4_unit1"]["conv1"]["kernel"],
                                  state["layer4.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(fresh.batch_stats["block4_unit2"]["bn2"]["var"], state["layer4.1.bn2.running_var"])
    assert "rpn_conv" in fresh.params and "block4_unit1" not in fresh.params["backbone"]


@pytest.mark.slow
def test_detector_step_on_8_devices_equals_single_device(tmp_path):
    """The detector trains with the keypoint network's sharded step: 8 devices give what 1 gives (BatchNorm over
    the global batch, per-image sampling keys that do not depend on the sharding)."""
    script = textwrap.dedent(f"""
        import functools, json, os, sys
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import jax, numpy as np
        from test_detector import TINY, make_batch
        from hvpose import sharding
        from hvpose.configs import detector_demo
        from hvpose.detector import detector_objective
        from hvpose.models.detector import FasterRCNN
        from hvpose.train import init_state, jit_train_step, learning_rate_schedule, make_optimizer
        config = detector_demo.get_config()
        config.train.batch_size, config.train.warmup_steps = 8, 1
        model, optimizer = FasterRCNN(**TINY), make_optimizer(config.train)
        objective = functools.partial(detector_objective, loss_settings=config.loss.to_dict(), seed=0)
        initial = jax.tree.map(np.asarray, init_state(model, optimizer, (65, 65), 0))
        results = {{}}
        for name, devices in (("one", jax.devices()[:1]), ("eight", jax.devices())):
            mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                                 devices=devices)
            rng = np.random.default_rng(0)
            with jax.set_mesh(mesh):
                state = jax.device_put(jax.tree.map(np.copy, initial), sharding.replicated(mesh))
                step = jit_train_step(model, optimizer, learning_rate_schedule(config.train), objective, mesh, state)
                losses = []
                for _ in range(2):
                    pairs = [make_batch(rng) for _ in range(4)]
                    batch = {{k: np.concatenate([p[k] for p in pairs]) for k in pairs[0]}}
                    state, metrics = step(state, sharding.global_batch(batch, mesh))
                    losses.append(float(metrics["loss"]))
            assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == len(devices)
            results[name] = {{"losses": losses, "kernel": np.asarray(state.params["rpn_conv"]["kernel"]).tolist(),
                              "mean": np.asarray(state.batch_stats["backbone"]["stem_bn"]["mean"]).tolist()}}
        print(json.dumps(results))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    one, eight = results["one"], results["eight"]
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(eight["kernel"], one["kernel"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(eight["mean"], one["mean"], rtol=1e-4, atol=1e-6)
    assert one["losses"][0] != one["losses"][-1]
