"""The built-in synthetic people: deterministic, mirror-consistent, multi-person with occlusion and truncation."""

import json
import multiprocessing

import cv2
import numpy as np

from hvpose.data.coco import load_coco_keypoints
from hvpose.data.demo_data import ensure_demo_dataset, mirror_scene, render, sample_scene, write_split
from hvpose.data.pipeline import train_loader
from hvpose.data.tfds_coco import prepare
from hvpose.keypoints import COCO17

NAMES = COCO17.names

L_SHOULDER, R_SHOULDER = NAMES.index("left_shoulder"), NAMES.index("right_shoulder")


def scenes(count, seed=0):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def test_mirrored_scene_renders_as_the_flipped_image_with_swapped_labels():
    for scene in scenes(10, seed=1):
        image, people = render(scene)
        mirror_image, mirror_people = render(mirror_scene(scene))
        width = image.shape[1]
        assert np.abs(mirror_image.astype(int) - image[:, ::-1].astype(int)).mean() < 1.0
        assert len(people) == len(mirror_people)
        for person, mirrored in zip(people, mirror_people, strict=True):
            a = np.array(person["keypoints"]).reshape(17, 3)
            b = np.array(mirrored["keypoints"]).reshape(17, 3)[COCO17.flip_permutation()]
            both = (a[:, 2] > 0) & (b[:, 2] > 0)
            np.testing.assert_allclose(b[both, 0], width - 1 - a[both, 0], atol=0.02)
            np.testing.assert_allclose(b[both, 1], a[both, 1], atol=0.02)
            assert np.mean(a[:, 2] == b[:, 2]) >= 15 / 17  # rounding at pixel edges may flip an occlusion flag
            assert abs(person["area"] - mirrored["area"]) <= 0.05 * person["area"] + 5


def test_left_and_right_follow_facing():
    frontal = back = 0
    for scene in scenes(40):
        for person in scene.persons:
            left_on_image_right = person.joints[L_SHOULDER, 0] > person.joints[R_SHOULDER, 0]
            assert left_on_image_right == person.frontal
            frontal += person.frontal
            back += not person.frontal
    assert frontal > 10 and back > 10


def test_scenes_are_crowded_occluded_truncated_and_varied():
    people = [person for scene in scenes(200) for person in render(scene)[1]]
    keypoints = np.array([p["keypoints"] for p in people]).reshape(-1, 17, 3)
    assert len(people) / 200 >= 2.0
    assert np.mean((keypoints[:, :, 2] == 1).any(axis=1)) > 0.15  # someone or something in front
    assert np.mean((keypoints[:, 5:, 2] == 0).any(axis=1)) > 0.05  # body joints cut off by the border
    heights = np.array([p["bbox"][3] for p in people if p["num_keypoints"] >= 10])
    assert np.percentile(heights, 90) / np.percentile(heights, 10) > 2.5


def test_dataset_is_deterministic_valid_coco_and_its_training_crops_tell_left_from_right(tmp_path):
    """What makes the data learnable survives the training pipeline: left and right are told apart only by facing
    (a person facing the camera, eyes labelled, has their left shoulder on the image's right; one seen from the
    back, eyes unlabelled, on the image's left), so every training crop, flipped or not, must keep that rule. A
    flip without the left/right swap breaks it in every flipped crop."""
    paths = ensure_demo_dataset(tmp_path / "a", num_train=12, num_val=4, seed=3)
    again = ensure_demo_dataset(tmp_path / "b", num_train=12, num_val=4, seed=3)
    assert json.loads(open(paths["train"]).read()) == json.loads(open(again["train"]).read())
    assert (tmp_path / "a" / "images" / "train_000001.jpg").read_bytes() == \
        (tmp_path / "b" / "images" / "train_000001.jpg").read_bytes()
    dataset = load_coco_keypoints(paths["val"])
    assert len(dataset.images) == 4 and dataset.warnings == []
    prepared = prepare(paths["train"], paths["images"], tmp_path / "cache")
    eyes = [NAMES.index("left_eye"), NAMES.index("right_eye")]
    ears_and_shoulders = [NAMES.index("left_ear"), NAMES.index("right_ear"), L_SHOULDER, R_SHOULDER]
    checked, flips, facing = 0, 0, set()
    for batch in train_loader(prepared, 4, seed=0, num_epochs=2):
        assert batch["image"].shape == (4, 353, 257, 3)
        for keypoints, crop_to_image in zip(batch["keypoints"], batch["crop_to_image"], strict=True):
            flips += np.linalg.det(crop_to_image[:, :2]) < 0
            if not (keypoints[ears_and_shoulders, 2] > 0).all():
                continue  # head or a shoulder cut off by the image border: eyes may be unlabelled for that
            frontal = bool((keypoints[eyes, 2] > 0).any())
            assert (keypoints[L_SHOULDER, 0] > keypoints[R_SHOULDER, 0]) == frontal
            checked += 1
            facing.add(frontal)
    assert checked >= 20 and facing == {True, False} and flips >= 5


def test_threaded_writing_gives_the_scenes_of_one_generator_in_order(tmp_path):
    """write_split paints, renders and encodes in threads while it draws the next scenes: the files and labels
    must be those of drawing and rendering one scene after another from the split's generator (`sample_scene`)."""
    json_path = write_split(tmp_path, "val", 24, seed=5, first_image_id=100)
    written = json.loads(json_path.read_text())
    rng = np.random.default_rng([5, sum(map(ord, "val"))])
    for i, entry in enumerate(written["images"]):
        image, people = render(sample_scene(rng))
        assert entry == {"id": 100 + i, "file_name": f"val_{100 + i:06d}.jpg", "width": image.shape[1],
                         "height": image.shape[0]}
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok and (tmp_path / "images" / entry["file_name"]).read_bytes() == encoded.tobytes(), i
        labels = [{k: v for k, v in a.items() if k not in ("id", "image_id")}
                  for a in written["annotations"] if a["image_id"] == entry["id"]]
        assert labels == people, i


def _generate_when_both_are_ready(barrier, folder, seed):
    barrier.wait()
    ensure_demo_dataset(folder, 80, 5, seed=seed)


def test_runs_generating_one_folder_at_once_leave_one_consistent_dataset(tmp_path):
    """Two runs that start together on the same folder with different seeds (two configs sharing a data root) take
    turns: the folder ends as exactly one seed's dataset, its manifest naming that seed, never a mix."""
    references = {seed: tmp_path / f"seed{seed}" for seed in (0, 1)}
    for seed, folder in references.items():
        ensure_demo_dataset(folder, 80, 5, seed=seed)
    shared = tmp_path / "shared"
    context = multiprocessing.get_context("spawn")
    start_together = context.Barrier(2)
    runs = [context.Process(target=_generate_when_both_are_ready, args=(start_together, shared, seed))
            for seed in (0, 1)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
        assert run.exitcode == 0
    seed = json.loads((shared / "manifest.json").read_text())["seed"]
    files = sorted(p.relative_to(shared) for p in shared.rglob("*") if p.is_file() and p.name != ".lock")
    assert files == sorted(p.relative_to(references[seed]) for p in references[seed].rglob("*") if p.is_file()
                           and p.name != ".lock")
    for name in files:
        assert (shared / name).read_bytes() == (references[seed] / name).read_bytes(), name


def test_drawing_is_announced_once_and_reuse_is_silent(tmp_path, caplog):
    """Drawing 1,650 images took the demo 7-16 s before anything else printed: it says so, and only when it draws."""
    ensure_demo_dataset(tmp_path, num_train=3, num_val=2, seed=0)
    assert "drawing 3 training and 2 held-out synthetic images" in caplog.text
    caplog.clear()
    ensure_demo_dataset(tmp_path, num_train=3, num_val=2, seed=0)
    assert "drawing" not in caplog.text
