"""The inference pipeline's pieces: instance scores, box validation, per-image OKS-NMS, box sources."""

import numpy as np
import pytest

from hvpose.data.coco import Detection
from hvpose.data.pipeline import gt_boxes
from hvpose.data.tfds_coco import prepare
from hvpose.errors import ConfigError, DataError
from hvpose.evaluate import dataset_boxes
from hvpose.inference import InferenceSettings, PredictedPerson, as_boxes, instance_scores, suppress
from hvpose.keypoints import COCO17


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
