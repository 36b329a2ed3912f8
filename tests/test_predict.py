"""`hvpose.Predictor` and `python -m hvpose.predict`: real photos with PoseNet's weights, and a trained checkpoint
whose predictions must equal the evaluation pipeline's."""

import json
import subprocess
import sys

import numpy as np
import pytest

import hvpose
from conftest import REPO
from hvpose import evaluate, experiment
from hvpose.data.coco import load_coco_keypoints
from hvpose.data.crops import extend_box
from hvpose.data.images import decode_image, read_image_file, reduction_for_scale
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
            truth = next(a for a in people if tuple(map(float, a["bbox"])) == person.box)
            labelled = np.array(truth["keypoints"], np.float64).reshape(17, 3)
            visible = labelled[:, 2] > 0
            sigmas = np.asarray(hvpose.predict.COCO17.sigmas)[visible]
            similarities.append(oks(labelled[visible], person.keypoints[None, visible], truth["area"], sigmas)[0])
    assert calls == 4
    # Boxes of 1 to 5 people all went through one compiled function (fixed batch, padded).
    assert posenet_predictor._infer._cache_size() == 1
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


@pytest.mark.slow
def test_checkpoint_predictions_equal_the_evaluation_pipelines(tmp_path):
    """Same boxes, same crops, same network: the Predictor reproduces `evaluate.predict_split` exactly.

    The evaluation pipeline decodes JPEGs at reduced size when a crop shrinks the person 2x or more, the Predictor
    (given decoded images) never does, so only boxes cropped at full resolution are compared."""
    config = tiny_config(workdir_steps=3)
    config.crop.height, config.crop.width = 129, 97  # large enough that most demo people are not shrunk 2x
    config.model.output_stride = 16
    workdir = str(tmp_path / "run")
    state = train(config, workdir)
    predictor = hvpose.Predictor.from_checkpoint(workdir, batch_size=config.eval.batch_size)
    prepared = experiment.prepare_split(config, "val", workdir)
    full_resolution = [b for b in evaluate.gt_boxes(prepared)
                       if reduction_for_scale(97 / extend_box(b.bbox, (129, 97))[1][0]) == 1]
    assert len(full_resolution) >= 3
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    expected = evaluate.predict_split(config, experiment.build_model(config, 17), variables, prepared,
                                      full_resolution)
    records = prepared.record_index()
    compared = 0
    for image_id in sorted({b.image_id for b in full_resolution}):
        image = decode_image(prepared.source[records[image_id]]["image"])
        boxes = [(*b.bbox, b.score) for b in full_resolution if b.image_id == image_id]
        reference = [p for p in expected if p["image_id"] == image_id]
        for person in predictor(image, boxes):
            match = next(p for p in reference if tuple(p["box"]) == person.box)
            np.testing.assert_allclose(person.keypoints, match["keypoints"], rtol=1e-5, atol=1e-4)
            assert person.score == pytest.approx(match["score"], rel=1e-5)
            compared += 1
    assert compared >= 3


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
    assert out.stat().st_size > 10_000
    mixed = subprocess.run([sys.executable, "-m", "hvpose.predict", f"--weights={shared_data / TFJS}",
                            f"--image={image}", f"--boxes={boxes}", f"--out={out}"], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert mixed.returncode == 1
    assert mixed.stderr.strip().splitlines()[-1] == f"hvpose: error: {boxes}: boxes of 4 images; choose one with " \
                                                    "--image_id"


def test_crop_size_must_suit_the_output_stride(posenet_predictor):
    with pytest.raises(ValueError, match="16n\\+1"):
        hvpose.Predictor(posenet_predictor.model, posenet_predictor.variables, crop_size=(352, 256))
