"""`hvpose.Predictor` and `python -m hvpose.predict`: real photos with PoseNet's weights, and a trained checkpoint
whose people must equal what evaluation reports for the same images and boxes."""

import json
import subprocess
import sys

import numpy as np
import pytest

import hvpose
from conftest import REPO
from hvpose import evaluate
from hvpose.data.coco import load_coco_keypoints
from hvpose.data.images import decode_image, read_image_file
from hvpose.data.splits import prepare_split
from hvpose.inference import InferenceSettings
from hvpose.keypoints import COCO17
from hvpose.ops.nms import oks
from hvpose.train import train
from test_train import tiny_config

TFJS = "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


@pytest.fixture(scope="module")
def posenet_predictor(shared_data):
    return hvpose.Predictor.from_posenet_tfjs(str(shared_data / TFJS), batch_size=4)


def test_posenet_finds_the_labelled_people_of_real_coco_images(posenet_predictor, shared_data):
    sample = shared_data / "coco_sample"
    dataset = load_coco_keypoints(sample / "test_coco.json")
    images = {image["id"]: image["file_name"] for image in dataset.raw["images"]}
    similarities = []
    calls = 0
    for image_id, file_name in images.items():
        people = [a for a in dataset.raw["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]
        if not people:
            continue
        boxes = np.array([a["bbox"] for a in people])
        predicted = posenet_predictor(sample / "images" / file_name, boxes)
        calls += 1
        assert 1 <= len(predicted) <= len(people)
        for person in predicted:
            assert person.keypoints.shape == (17, 3) and 0 <= person.score <= 1
            assert ((person.keypoints[:, 2] >= 0) & (person.keypoints[:, 2] <= 1)).all()  # probabilities
            truth = next(a for a in people if np.allclose(a["bbox"], person.box, atol=1e-3))
            labelled = np.array(truth["keypoints"], np.float64).reshape(17, 3)
            visible = labelled[:, 2] > 0
            sigmas = np.asarray(COCO17.sigmas)[visible]
            similarities.append(oks(labelled[visible], person.keypoints[None, visible], truth["area"], sigmas)[0])
    assert calls == 4
    # Boxes of 1 to 5 people all went through one compiled function (fixed batch, padded).
    assert posenet_predictor.pipeline._step._cache_size() == 1
    assert np.median(similarities) > 0.6, np.round(similarities, 2)


def test_without_boxes_the_whole_image_is_one_person(posenet_predictor, shared_data):
    image = decode_image(read_image_file(shared_data / "photos" / "astronaut.png"))
    people = posenet_predictor(image)
    assert len(people) == 1 and people[0].box == (0.0, 0.0, 512.0, 512.0)
    nose, left_eye, right_eye = people[0].keypoints[:3]
    # Her face: nose below the eyes, her left eye on the image's right, all near the middle of the photo's top.
    assert left_eye[0] > nose[0] > right_eye[0] and nose[1] > max(left_eye[1], right_eye[1])
    assert 150 < nose[0] < 300 and 60 < nose[1] < 200
    picture = posenet_predictor.draw(image, people)
    assert picture.shape == image.shape and (picture != image).any()
    with pytest.raises(ValueError, match="RGB uint8"):
        posenet_predictor(image.astype(np.float32))


def test_a_box_source_finds_the_people_when_no_boxes_are_given(posenet_predictor, shared_data):
    """The detector's slot: a callable image -> boxes. Here it returns the real detector's boxes of the photo,
    so the result must equal passing those boxes directly."""
    photo = shared_data / "coco_sample" / "images" / "000000196141.jpg"
    detections = json.loads((shared_data / "coco_sample" / "test_coco_det_AP_H_56.json").read_text())
    boxes = np.array([[*d["bbox"], d["score"]] for d in detections if d["image_id"] == 196141 and d["score"] > 0.3])
    seen = []

    def detector(image):
        seen.append(image.shape)
        return boxes

    with_source = hvpose.Predictor(posenet_predictor.pipeline.model, posenet_predictor.pipeline.variables,
                                   radius=32.0, settings=posenet_predictor.pipeline.settings, batch_size=4,
                                   box_source=detector)
    found, given = with_source(photo), posenet_predictor(photo, boxes)
    assert seen == [(429, 640, 3)] and len(found) == len(given) >= 3
    for a, b in zip(found, given, strict=True):
        assert a.box == b.box and a.score == b.score
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_scores_shown_are_probabilities(posenet_predictor, shared_data):
    """Keypoint scores are heatmap probabilities and instance scores their mean times the box score: in [0, 1],
    and a clearly visible person scores high (the vote peak, shown before, was ~0.02 for such a person)."""
    photo = shared_data / "coco_sample" / "images" / "000000000785.jpg"  # one skier, fully visible
    dataset = load_coco_keypoints(shared_data / "coco_sample" / "test_coco.json")
    box = dataset.persons[785][0].bbox
    (person,) = posenet_predictor(photo, [box])
    assert 0.5 < person.score <= 1.0, person.score
    np.testing.assert_allclose(person.score, person.keypoints[:, 2].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        posenet_predictor(photo, [[*box, 3.0]])


@pytest.mark.slow
def test_evaluation_and_the_predictor_report_the_same_people(tmp_path):
    """One inference path: a checkpoint evaluated over its held-out split (results.json) and the Predictor given
    each image file and the same boxes find identical keypoints and scores, crops decoded at reduced size
    included."""
    config = tiny_config(workdir_steps=3)
    config.crop.height, config.crop.width = 129, 97
    config.model.output_stride = 16
    config.inference.keypoint_threshold = 0.2  # exercised on both sides
    workdir = str(tmp_path / "run")
    state = train(config, workdir)
    evaluate.evaluate(config, workdir, {"params": state.params, "batch_stats": state.batch_stats}, 3)
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert set(results[0]) == {"image_id", "category_id", "keypoints", "score"}  # plain COCO results format
    predictor = hvpose.Predictor.from_checkpoint(workdir, batch_size=config.eval.batch_size)
    assert predictor.pipeline.settings == InferenceSettings(**config.inference)
    prepared = prepare_split(config.data, "val", workdir, config.seed)
    compared = 0
    for image in prepared.dataset.images:
        boxes = [p.bbox for p in prepared.dataset.persons[image.id] if p.is_training_target]
        if not boxes:
            continue
        people = predictor(f"{prepared.images_dir}/{image.file_name}", boxes)
        reported = sorted((r for r in results if r["image_id"] == image.id), key=lambda r: -r["score"])
        assert len(people) == len(reported)
        for person, result in zip(people, reported, strict=True):
            assert person.score == pytest.approx(result["score"], rel=1e-6)
            np.testing.assert_allclose(person.keypoints[:, :2].reshape(-1),
                                       np.reshape(result["keypoints"], (-1, 3))[:, :2].reshape(-1), atol=1e-3)
            compared += 1
    assert compared >= 5


def test_predict_command_draws_a_picture(shared_data, tmp_path):
    image = shared_data / "coco_sample" / "images" / "000000196141.jpg"
    boxes = shared_data / "coco_sample" / "test_coco_det_AP_H_56.json"
    out = tmp_path / "people.png"
    result = subprocess.run([sys.executable, "-m", "hvpose.predict", f"--weights={shared_data / TFJS}",
                             f"--image={image}", f"--boxes={boxes}", "--image_id=196141", "--min_box_score=0.3",
                             f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    people = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(people) >= 3 and all(len(p["keypoints"]) == 17 for p in people)
    assert all(0 <= p["score"] <= 1 and all(0 <= k[2] <= 1 for k in p["keypoints"]) for p in people)
    assert out.stat().st_size > 10_000
    mixed = subprocess.run([sys.executable, "-m", "hvpose.predict", f"--weights={shared_data / TFJS}",
                            f"--image={image}", f"--boxes={boxes}", f"--out={out}"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert mixed.returncode == 1
    assert mixed.stderr.strip().splitlines()[-1] == f"hvpose: error: {boxes}: boxes of 4 images; choose one with " \
                                                    "--image_id"


def test_crop_size_must_suit_the_output_stride(posenet_predictor):
    with pytest.raises(ValueError, match="16n\\+1"):
        hvpose.Predictor(posenet_predictor.pipeline.model, posenet_predictor.pipeline.variables, crop_size=(352, 256))
