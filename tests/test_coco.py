"""COCO-format reading: validation with one clear line per problem."""

import json

import numpy as np
import pytest

from hvpose.data.coco import DataError, load_coco_keypoints, load_detections, resolve_image_path


def write(tmp_path, content, name="ann.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def minimal(num_keypoints=17, **annotation):
    category = {"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(num_keypoints)], "skeleton": []}
    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 2, 30, 40], "area": 900, "iscrowd": 0,
           "keypoints": [10, 12, 2] + [0, 0, 0] * (num_keypoints - 1), **annotation}
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}], "annotations": [ann],
            "categories": [category]}


def test_real_coco_sample_loads(shared_data):
    dataset = load_coco_keypoints(shared_data / "coco_sample" / "test_coco.json")
    assert len(dataset.images) == 4
    persons = [p for people in dataset.persons.values() for p in people]
    assert len(persons) == 14
    assert sum(p.is_training_target for p in persons) == 12
    assert dataset.keypoint_set.num_keypoints == 17 and dataset.warnings == []


@pytest.mark.parametrize("content, message", [
    ("{not json", r"ann\.json: not valid JSON \(line 1, column 2"),
    ({"images": []}, "has no 'annotations' list"),
    (minimal(keypoints=[1, 2, 2]), "annotation id 7 has 3 keypoint values; the category's 17 keypoints need 51"),
    (minimal(bbox=[0, 0, -5, 10]), "annotation id 7 has a negative box size"),
    (minimal(bbox=[0, 0, 5]), "annotation id 7 has bbox"),
    (minimal(image_id=99), "annotation id 7 refers to unknown image id 99"),
    (minimal(keypoints=[1, 2, 5] + [0] * 48), "visibility outside 0/1/2"),
])
def test_malformed_files_give_one_line_naming_file_and_problem(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=message) as error:
        load_coco_keypoints(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="absent.json: no such file"):
        load_coco_keypoints(tmp_path / "absent.json")


def test_zero_or_missing_area_is_reported(tmp_path):
    data = minimal(area=0)
    data["annotations"].append({**data["annotations"][0], "id": 8})
    del data["annotations"][1]["area"]
    dataset = load_coco_keypoints(write(tmp_path, data))
    assert len(dataset.warnings) == 1 and "2 annotations have area 0" in dataset.warnings[0]


def test_other_keypoint_set_from_category(tmp_path):
    dataset = load_coco_keypoints(write(tmp_path, minimal(num_keypoints=21)))
    assert dataset.keypoint_set.num_keypoints == 21
    assert dataset.keypoint_set.names == tuple(f"k{i}" for i in range(21))  # the category's names, in order
    person = dataset.persons[1][0]
    assert person.keypoints.shape == (21, 3)
    np.testing.assert_array_equal(person.keypoints[0], [10, 12, 2])  # read as (x, y, v) triples
    np.testing.assert_array_equal(person.keypoints[1:], 0)
    assert person.is_training_target


def test_detections_are_validated(tmp_path, shared_data):
    dataset = load_coco_keypoints(shared_data / "coco_sample" / "test_coco.json")
    detections = load_detections(shared_data / "coco_sample" / "test_coco_det_AP_H_56.json", dataset)
    assert len(detections) == 118
    high = load_detections(shared_data / "coco_sample" / "test_coco_det_AP_H_56.json", dataset, min_score=0.5)
    assert 0 < len(high) < 118
    bad = write(tmp_path, [{"image_id": 12345, "bbox": [0, 0, 1, 1], "score": 0.5}], "det.json")
    with pytest.raises(DataError, match="det.json: entry 0 refers to image id 12345"):
        load_detections(bad, dataset)
    with pytest.raises(DataError, match="must be a JSON list"):
        load_detections(write(tmp_path, {"a": 1}, "det2.json"), dataset)


def test_image_names_cannot_escape_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    assert resolve_image_path(tmp_path / "images", "a/b.jpg") == (tmp_path / "images" / "a" / "b.jpg").resolve()
    for name in ("../secret.jpg", "/etc/passwd", "a/../../x.jpg"):
        with pytest.raises(DataError, match="points outside the image folder"):
            resolve_image_path(tmp_path / "images", name)
