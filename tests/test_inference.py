"""The inference pipeline's pieces: instance scores, box validation, per-image OKS-NMS, box sources, and the flip
test on the feature grid (`network_maps`), which must equal its definition: each pass upsampled to the crop, its
heatmaps through the sigmoid, mapped back and averaged (a random KeypointNet and PoseNet's real weights)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.data.coco import Detection
from hvpose.data.pipeline import gt_boxes
from hvpose.data.tfds_coco import prepare
from hvpose.errors import ConfigError, DataError
from hvpose.evaluate import dataset_boxes
from hvpose.inference import (
    InferenceSettings,
    PredictedPerson,
    as_boxes,
    instance_scores,
    network_fn,
    network_maps,
    suppress,
)
from hvpose.keypoints import COCO17
from hvpose.models.keypoint_net import KeypointNet
from hvpose.ops.flip import flip_back
from hvpose.ops.voting import decode_hough


def test_instance_scores_average_the_confident_keypoints_times_the_box_score():
    keypoint_scores = np.array([[0.9, 0.1, 0.5], [0.1, 0.1, 0.1], [1.0, 1.0, 1.0]])
    boxes = np.array([0.5, 1.0, 0.8])
    np.testing.assert_allclose(instance_scores(keypoint_scores, boxes, 0.2, True), [0.35, 0.0, 0.8])
    np.testing.assert_allclose(instance_scores(keypoint_scores, boxes, 0.2, False), [0.7, 0.0, 1.0])
    np.testing.assert_allclose(instance_scores(keypoint_scores, boxes, 0.0, False), [0.5, 0.1, 1.0])
    # Confidence-weighted: sum(p^2) / sum(p), e.g. (0.81 + 0.01 + 0.25) / 1.5 for the first row.
    np.testing.assert_allclose(instance_scores(keypoint_scores, boxes, 0.0, False, "weighted"),
                               [1.07 / 1.5, 0.1, 1.0])
    np.testing.assert_allclose(instance_scores(keypoint_scores, boxes, 0.2, True, "weighted"),
                               [0.5 * 1.06 / 1.4, 0, 0.8])


def test_settings_refuse_what_cannot_be_a_probability_threshold():
    with pytest.raises(ValueError, match="keypoint_threshold"):
        InferenceSettings(keypoint_threshold=1.5)
    with pytest.raises(ValueError, match="decoder"):
        InferenceSettings(decoder="softargmax")
    with pytest.raises(ValueError, match="keypoint_average"):
        InferenceSettings(keypoint_average="median")


@pytest.mark.parametrize("boxes, match", [([[0, 0, 10, 10, 1.5]], "probabilities"), ([[0, 0, -1, 10]], "width"),
                                          ([[0, 0, 10]], r"\(N, 4\) or \(N, 5\)"), ([[0, np.nan, 1, 1]], "finite")])
def test_bad_boxes_are_refused(boxes, match):
    with pytest.raises(ValueError, match=match):
        as_boxes(boxes)


def test_boxes_without_scores_score_one():
    np.testing.assert_array_equal(as_boxes([[1, 2, 3, 4]]), [[1, 2, 3, 4, 1]])
    assert as_boxes([]).shape == (0, 5)


def test_suppression_is_per_image_and_keeps_the_best_duplicate(rng):
    keypoints = np.concatenate([rng.uniform(0, 100, (17, 2)), np.ones((17, 1))], axis=1)

    def person(image_id, score, shift=0.0):
        return PredictedPerson(box=(0, 0, 100, 100), box_score=1.0, score=score, keypoints=keypoints + [shift, 0, 0],
                               image_id=image_id)

    people = [person(1, 0.5), person(1, 0.9, 0.5), person(2, 0.4), person(1, 0.7, 60.0)]
    kept = suppress(people, COCO17.sigmas, 0.9)
    assert [(p.image_id, p.score) for p in kept] == [(1, 0.9), (1, 0.7), (2, 0.4)]


def test_a_callable_box_source_is_called_on_every_image(shared_data, tmp_path):
    """The detector's slot in evaluation: image -> boxes, for each image of the split, in record order."""
    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path)
    truth = {i: [p.bbox for p in prepared.dataset.persons[i] if p.is_training_target] for i in prepared.image_ids}
    shapes = {image.id: (image.height, image.width, 3) for image in prepared.dataset.images}
    calls = iter(prepared.image_ids)

    def detector(image):
        image_id = next(calls)
        assert image.shape == shapes[image_id] and image.dtype == np.uint8
        return [[*box, 0.75] for box in truth[image_id]]

    found = dataset_boxes(detector, prepared)
    assert found == [Detection(b.image_id, b.bbox, 0.75) for b in gt_boxes(prepared)]
    assert dataset_boxes(lambda image: np.zeros((0, 5)), prepared) == []  # an image without people


def test_named_box_sources_without_their_weights_are_refused_in_one_line(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path)
    with pytest.raises(ConfigError, match="config.data.val.detector_workdir is empty"):
        dataset_boxes("detector", prepared)
    with pytest.raises(DataError, match=f"{tmp_path}/checkpoints: no detector checkpoint"):
        dataset_boxes("detector", prepared, detector_workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="config.init.posenet_tfjs is empty"):
        dataset_boxes("posenet", prepared)


def flip_test_by_definition(model, variables, crops, permutation):
    """Both passes at the model's map stride, sigmoid, the mirrored pass mapped back, the mean of the two."""
    outputs = model.apply(variables, crops, train=False)
    flipped = model.apply(variables, crops[:, :, ::-1], train=False)
    heatmaps_f, offsets_f = flip_back(jax.nn.sigmoid(flipped["heatmap_logits"]), flipped["offsets"],
                                      jnp.asarray(permutation))
    return (jax.nn.sigmoid(outputs["heatmap_logits"]) + heatmaps_f) / 2, (outputs["offsets"] + offsets_f) / 2


def random_network(output_stride, crop, map_stride, seed=0):
    model = KeypointNet(num_keypoints=17, depth=18, base_width=8, output_stride=output_stride, stride_on="3x3",
                        preprocess="unit", map_stride=map_stride)
    crops = jnp.asarray(np.random.default_rng(seed).integers(0, 256, (3, *crop, 3)), jnp.uint8)
    variables = model.init(jax.random.key(seed), crops[:1], train=False)
    # Random heads (initialised at zero offsets) and BatchNorm statistics, so no map is nearly constant.
    rng = np.random.default_rng(seed + 1)
    params = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, 0.1, x.shape), x.dtype), variables["params"])
    stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype), variables["batch_stats"])
    return model, {"params": params, "batch_stats": stats}, crops


@pytest.mark.parametrize("output_stride, crop, map_stride", [(8, (33, 25), 1), (16, (49, 33), 1), (16, (49, 33), 4),
                                                             (8, (33, 25), 8)])
def test_flip_test_on_the_grid_equals_its_definition(output_stride, crop, map_stride):
    model, variables, crops = random_network(output_stride, crop, map_stride)
    permutation = COCO17.flip_permutation()
    heatmaps, offsets = jax.jit(lambda v, c: network_maps(model, v, c, permutation))(variables, crops)
    expected_heatmaps, expected_offsets = flip_test_by_definition(model, variables, crops, permutation)
    size = tuple((n - 1) // map_stride + 1 for n in crop)
    assert heatmaps.shape == (3, *size, 17) and offsets.shape == (3, *size, 17, 2)
    np.testing.assert_allclose(heatmaps, expected_heatmaps, rtol=0, atol=1e-6)
    scale = float(jnp.abs(expected_offsets).max())
    assert scale > 0.1  # offsets far from zero: a wrong sign or swap would show
    np.testing.assert_allclose(offsets, expected_offsets, rtol=0, atol=1e-5 * scale)
    # The mirrored pass matters: without it the maps differ.
    alone = jax.nn.sigmoid(model.apply(variables, crops, train=False)["heatmap_logits"])
    assert float(jnp.abs(alone - heatmaps).max()) > 1e-3


def test_without_the_flip_test_the_maps_are_the_network_outputs():
    model, variables, crops = random_network(8, (33, 25), 1)
    heatmaps, offsets = network_maps(model, variables, crops)
    outputs = model.apply(variables, crops, train=False)
    np.testing.assert_array_equal(heatmaps, jax.nn.sigmoid(outputs["heatmap_logits"]))
    np.testing.assert_array_equal(offsets, outputs["offsets"])


def test_network_fn_decodes_the_flip_tested_maps():
    model, variables, crops = random_network(8, (33, 25), 1)
    permutation = COCO17.flip_permutation()
    keypoints = jax.jit(network_fn(model, permutation, 4.0))(variables, crops)
    expected = decode_hough(*network_maps(model, variables, crops, permutation), 4.0)
    np.testing.assert_allclose(keypoints, expected, rtol=0, atol=1e-5)


def test_posenet_flip_test_on_the_grid_equals_its_definition(shared_data):
    from hvpose.pretrained.posenet import load_posenet_tfjs

    model, variables = load_posenet_tfjs(str(shared_data / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"))
    model = model.clone(map_stride=1)
    image = np.random.default_rng(3).integers(0, 256, (2, 97, 65, 3))  # 16 * n + 1
    crops = jnp.asarray(image, jnp.uint8)
    permutation = COCO17.flip_permutation()
    heatmaps, offsets = jax.jit(lambda v, c: network_maps(model, v, c, permutation))(variables, crops)
    expected_heatmaps, expected_offsets = flip_test_by_definition(model, variables, crops, permutation)
    np.testing.assert_allclose(heatmaps, expected_heatmaps, rtol=0, atol=1e-6)
    np.testing.assert_allclose(offsets, expected_offsets, rtol=0, atol=1e-5 * float(jnp.abs(expected_offsets).max()))
