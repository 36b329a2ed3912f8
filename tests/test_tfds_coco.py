"""ArrayRecord conversion: real COCO sample, reuse, change detection, bad images, unsafe names, empty splits."""

import json
import shutil

import cv2
import numpy as np
import pytest

from hvpose.data.coco import DataError
from hvpose.data.tfds_coco import prepare


@pytest.fixture
def coco_copy(tmp_path, shared_data):
    """A writable copy of the real COCO sample."""
    root = tmp_path / "coco"
    shutil.copytree(shared_data / "coco_sample", root)
    return root


def test_real_sample_converts_with_every_image_and_person(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path / "cache")
    assert prepared.image_ids == [785, 40083, 196141, 197388] and prepared.skipped == []
    for record, image_id in enumerate(prepared.image_ids):
        example = prepared.source[record]
        assert example["image_id"] == image_id
        assert example["image"] == (sample / "images" / prepared.dataset.image(image_id).file_name).read_bytes()
        people = prepared.dataset.persons[image_id]
        assert len(example["persons"]["keypoints"]) == len(people)
        for stored, person in zip(example["persons"]["keypoints"], people, strict=True):
            np.testing.assert_array_equal(stored, person.keypoints)
        assert [int(i) for i in example["persons"]["id"]] == [p.id for p in people]


def test_conversion_is_reused_and_a_changed_source_is_noticed(coco_copy, tmp_path, caplog):
    annotations, images = coco_copy / "test_coco.json", coco_copy / "images"
    first = prepare(annotations, images, tmp_path / "cache")
    caplog.clear()
    again = prepare(annotations, images, tmp_path / "cache")
    assert again.directory == first.directory and "converting" not in caplog.text
    data = json.loads(annotations.read_text())
    data["annotations"][0]["keypoints"][0] += 1
    annotations.write_text(json.dumps(data))
    changed = prepare(annotations, images, tmp_path / "cache")
    assert changed.directory != first.directory and "converting" in caplog.text


def test_a_conversion_says_what_it_converts_and_nothing_about_downloads(shared_data, tmp_path, caplog, capfd):
    sample = shared_data / "coco_sample"
    prepare(sample / "test_coco.json", sample / "images", tmp_path / "cache")
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err and "downloaded" not in out + err
    assert "converting" in caplog.text and "custom data configuration" not in caplog.text


def test_corrupt_and_missing_images_are_skipped_counted_or_strict_errors(coco_copy, tmp_path, caplog):
    (coco_copy / "images" / "000000040083.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (coco_copy / "images" / "000000000785.jpg").unlink()
    prepared = prepare(coco_copy / "test_coco.json", coco_copy / "images", tmp_path / "cache")
    assert prepared.image_ids == [196141, 197388]
    assert len(prepared.skipped) == 2 and "2 of 4 images" in caplog.text
    with pytest.raises(DataError, match="000000000785.jpg"):
        prepare(coco_copy / "test_coco.json", coco_copy / "images", tmp_path / "strict", strict=True)


def test_images_over_the_pixel_limit_are_refused(shared_data, tmp_path):
    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path / "cache", max_pixels=260_000)
    assert len(prepared.skipped) == 2 and all("pixel limit" in reason for reason in prepared.skipped)


def test_unsafe_file_name_and_empty_split_are_errors(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "ok.jpg"), np.zeros((8, 8, 3), np.uint8))
    category = {"id": 1, "name": "person", "keypoints": ["a"], "skeleton": []}
    unsafe = {"images": [{"id": 1, "file_name": "../escape.jpg"}], "annotations": [], "categories": [category]}
    (tmp_path / "unsafe.json").write_text(json.dumps(unsafe))
    with pytest.raises(DataError, match="points outside the image folder"):
        prepare(tmp_path / "unsafe.json", images, tmp_path / "cache")
    empty = {"images": [], "annotations": [], "categories": [category]}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(DataError, match="the split is empty"):
        prepare(tmp_path / "empty.json", images, tmp_path / "cache")
