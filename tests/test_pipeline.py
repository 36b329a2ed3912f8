"""grain pipelines on the real COCO sample and on another keypoint set: crops checked against drawn markers and
the crop definition, resumption, sharding."""

import json
import subprocess
import sys
import textwrap

import cv2
import grain
import jax
import ml_collections
import numpy as np
import pytest

from hvpose.data.augment import Augmentation
from hvpose.data.coco import load_detections
from hvpose.data.crops import apply_transform
from hvpose.data.pipeline import (
    EvalCrop,
    TrainCrop,
    TrainPersons,
    close_loader,
    data_read_options,
    eval_loader,
    gt_boxes,
    train_loader,
)
from hvpose.data.tfds_coco import prepare
from hvpose.errors import ConfigError
from hvpose.keypoints import COCO17
from hvpose.sharding import global_batch
from test_crops import centroid


@pytest.fixture(scope="module")
def coco(shared_data, tmp_path_factory):
    sample = shared_data / "coco_sample"
    return prepare(sample / "test_coco.json", sample / "images", tmp_path_factory.mktemp("cache"))


def annotated(prepared):
    return {p.id: p for people in prepared.dataset.persons.values() for p in people}


@pytest.mark.parametrize("augment", [Augmentation(flip=False), Augmentation(rotation=40, scale_jitter=0.3,
                                                                           color_jitter=0.4)])
def test_every_labelled_person_of_real_coco_yields_a_crop(coco, augment):
    """One crop per training person, visibility flags carried (permuted in flipped crops); where the crop content
    sits is checked against drawn markers below."""
    loader = train_loader(coco, 1, seed=3, augment=augment, num_epochs=1)
    persons = annotated(coco)
    seen, flips = [], 0
    for batch in loader:
        assert batch["image"].shape == (1, 353, 257, 3) and batch["image"].dtype == np.uint8
        person = persons[int(batch["person_id"][0])]
        visibility = batch["keypoints"][0, :, 2]
        if np.linalg.det(batch["crop_to_image"][0, :, :2]) < 0:  # flipped: index k holds the mirror joint
            flips += 1
            visibility = visibility[COCO17.flip_permutation()]
        np.testing.assert_array_equal(visibility, person.keypoints[:, 2])
        seen.append(person.id)
    assert sorted(seen) == sorted(p.id for p in persons.values() if p.is_training_target)
    assert len(seen) == 12
    if augment.flip:
        assert 0 < flips < 12


# A synthetic person: joints drawn as coloured blobs at known image points (left joints red, right joints blue,
# the nose green) and a white blob at the box centre. Independent of any crop matrix: the crops must show each
# blob where the returned keypoints (and `crop_to_image`) say, and the box centre at the crop centre.
MARKED = {"nose": (310.0, 120.0), "right_shoulder": (285.0, 160.5), "left_shoulder": (350.5, 165.0),
          "left_wrist": (375.0, 265.0), "right_knee": (290.25, 320.0), "left_ankle": (345.0, 370.75)}
BOX = (240.0, 90.0, 160.0, 300.0)  # (x, y, w, h): tall, so the crop's 353 rows span 300 * enlargement pixels
RED, GREEN, BLUE = 0, 1, 2


def side_channel(name):
    return RED if name.startswith("left_") else BLUE if name.startswith("right_") else GREEN


def draw_blobs(size, blobs, sigma):
    """RGB uint8 image of Gaussian blobs: ((x, y), channels) each, channels a list of RGB indices lit."""
    image = np.zeros((*size, 3), np.float64)
    yy, xx = np.mgrid[:size[0], :size[1]]
    for (x, y), channels in blobs:
        image[..., channels] += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))[..., None]
    return (255 * np.clip(image, 0, 1)).astype(np.uint8)


def marked_person(zoom=1.0):
    """(PNG bytes, box, (17, 3) keypoints) of the marked person, the whole scene scaled by `zoom`."""
    blobs = [((zoom * x, zoom * y), [side_channel(name)]) for name, (x, y) in MARKED.items()]
    center = (zoom * (BOX[0] + BOX[2] / 2), zoom * (BOX[1] + BOX[3] / 2))
    image = draw_blobs((int(480 * zoom), int(640 * zoom)), blobs + [(center, [RED, GREEN, BLUE])], sigma=2.0 * zoom)
    encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    keypoints = np.zeros((17, 3), np.float32)
    for name, (x, y) in MARKED.items():
        keypoints[COCO17.names.index(name)] = (zoom * x, zoom * y, 2)
    return encoded, tuple(zoom * v for v in BOX), keypoints


def assert_blob_at(crop, point, atol, channel=None):
    """A blob is centred at crop point `point` (lit only in `channel` when given); returns its measured centre."""
    found = centroid(crop[..., [RED if channel is None else channel]], point)
    np.testing.assert_allclose(found, point, atol=atol)
    x, y = np.round(point).astype(int)
    peak = crop[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).max(axis=0).astype(float)
    if channel is None:
        assert peak.min() > 100, peak  # white
    else:
        others = [c for c in range(3) if c != channel]
        assert peak[channel] > 100 and peak[channel] > 3 * peak[others].max(), (channel, peak)
    return found


@pytest.mark.parametrize("zoom, augment", [
    (1.0, Augmentation(flip=True)),  # the paper's: enlargement 1.0-1.5, flips
    (1.0, Augmentation(rotation=40, rotation_probability=1.0, scale_jitter=0.3, color_jitter=0.4)),
    (1.0, Augmentation(shift_jitter=0.2)),  # off-centre crops, as around a detector's boxes
    (3.0, Augmentation(flip=True)),  # 900-pixel person: the image is decoded at half size
])
def test_train_crops_show_each_marked_joint_where_its_keypoint_says(zoom, augment):
    encoded, box, keypoints = marked_person(zoom)
    element = {"image": encoded, "bbox": np.asarray(box, np.float32), "keypoints": keypoints,
               "image_id": np.int64(1), "person_id": np.int64(1)}
    permutation = COCO17.flip_permutation()
    crop_fn = TrainCrop(augment, permutation)
    flips, checked = 0, 0
    # Measured: blob centres agree with the keypoints to 0.1 crop px at most (0.06 typical). The smallest defects
    # to catch: a half-pixel slip in the mapping (the reduced-decode pixel centres, say), a crop centre off by a
    # pixel, an unpermuted flip (the blob there has the other side's colour).
    atol = 0.15
    for seed in range(8):
        out = crop_fn.random_map(element, np.random.default_rng(seed))
        crop, crop_to_image = out["image"], out["crop_to_image"].astype(np.float64)
        flipped = np.linalg.det(crop_to_image[:, :2]) < 0
        flips += flipped
        # The box centre lands on the crop centre ((W-1)/2, (H-1)/2), whatever the enlargement, rotation and flip;
        # with a shift it lands where `crop_to_image` says (the loop below checks the joints).
        if not augment.shift_jitter:
            assert_blob_at(crop, (128.0, 176.0), atol)
        found = {}
        for j in np.nonzero(out["keypoints"][:, 2])[0]:
            source = COCO17.names[permutation[j] if flipped else j]  # flipped: index j holds the mirror joint
            assert source in MARKED
            x, y = out["keypoints"][j, :2]
            if not (8 <= x <= 248 and 8 <= y <= 344):  # rotated or zoomed out of the crop (with its blob)
                continue
            found[source] = assert_blob_at(crop, out["keypoints"][j, :2], atol, side_channel(source))
            image_point = apply_transform(crop_to_image, found[source])
            scale = np.sqrt(abs(np.linalg.det(crop_to_image[:, :2])))  # image pixels per crop pixel
            np.testing.assert_allclose(image_point, zoom * np.asarray(MARKED[source]), atol=atol * scale)
        checked += len(found)
        if not augment.scale_jitter and not augment.shift_jitter:
            assert set(found) == set(MARKED)  # without zoom or shift jitter every joint stays inside the crop
            # 353 crop rows span the box height times the enlargement, uniform in [1.0, 1.5].
            crop_distance = np.linalg.norm(found["nose"] - found["left_ankle"])
            image_distance = zoom * np.linalg.norm(np.subtract(MARKED["nose"], MARKED["left_ankle"]))
            enlargement = 353 / (box[3] * crop_distance / image_distance)
            assert 1.0 - 1e-3 <= enlargement <= 1.5 + 1e-3, enlargement
    assert checked >= 8 * len(MARKED) * 3 // 4
    if augment.flip:
        assert 0 < flips < 8


@pytest.mark.parametrize("box", [(240.0, 90.0, 160.0, 300.0), (40.0, 150.0, 500.0, 200.0), (40.0, 50.0, 330.0, 900.0)])
def test_eval_crops_frame_the_box_as_the_crop_geometry_defines(box):
    """Test-time crop of a box with blobs drawn at its centre and corners: the box, extended to the 353:257 aspect
    and enlarged 1.25x about its centre, fills the crop, so each corner sits at the crop centre plus its offset
    from the box centre times 257 / (1.25 * extended width); `crop_to_image` maps each blob back to its point.

    Boxes: tall (extended in width), wide (extended in height) and a 900-pixel tall one; the last two are read
    from the image decoded at half size."""
    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2])
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]])
    size = (int(y + h + 60), int(x + w + 60))
    sigma = max(2.0, h / 150)  # blobs at least ~2 crop pixels wide
    image = draw_blobs(size, [(tuple(p), [RED, GREEN, BLUE]) for p in [center, *corners]], sigma)
    encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    out = EvalCrop().map({"image": encoded, "bbox": np.asarray(box, np.float32), "score": np.float32(1),
                          "image_id": np.int64(1), "valid": np.bool_(True)})
    extended_width = max(w, h * 257 / 353)  # the crop's aspect ratio H:W = 353:257
    scale = 257 / (1.25 * extended_width)  # crop pixels per image pixel at the test-time enlargement 1.25
    crop_center = np.array([(257 - 1) / 2, (353 - 1) / 2])
    crop_to_image = out["crop_to_image"].astype(np.float64)
    for point in [center, *corners]:
        expected = crop_center + (point - center) * scale
        # Measured: 0.08 crop px at most. The smallest defects to catch: a 1-pixel shift of the crop centre, or an
        # enlargement of 1.2 instead of 1.25 (which moves the corners by 2-6 crop pixels).
        found = assert_blob_at(out["image"], expected, atol=0.15)
        np.testing.assert_allclose(apply_transform(crop_to_image, found), point, atol=0.15 / scale)


def test_flip_swaps_left_and_right_joints(coco):
    """A flipped crop is the mirror image, and the person's left wrist is then labelled as the right one."""
    element = TrainPersons(coco)[0]
    fixed = dict(enlarge=(1.25, 1.25))
    plain = TrainCrop(Augmentation(flip=False, **fixed), COCO17.flip_permutation()).random_map(
        element, np.random.default_rng(0))
    crop = TrainCrop(Augmentation(flip=True, **fixed), COCO17.flip_permutation())
    flipped = next(out for seed in range(64)
                   if np.linalg.det((out := crop.random_map(element, np.random.default_rng(seed)))
                                    ["crop_to_image"][:, :2]) < 0)
    left_wrist, right_wrist = 9, 10
    assert element["keypoints"][left_wrist, 2] > 0
    np.testing.assert_allclose(flipped["keypoints"][right_wrist, :2],
                               [256 - plain["keypoints"][left_wrist, 0], plain["keypoints"][left_wrist, 1]],
                               atol=1e-3)
    assert np.abs(flipped["image"][:, ::-1].astype(int) - plain["image"].astype(int)).mean() < 2


def test_restored_iterator_yields_the_same_next_batch(coco):
    uninterrupted = iter(train_loader(coco, 4, seed=5))
    for _ in range(3):
        next(uninterrupted)
    state = uninterrupted.get_state()
    expected = next(uninterrupted)
    resumed = iter(train_loader(coco, 4, seed=5))
    resumed.set_state(state)
    got = next(resumed)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    other_seed = next(iter(train_loader(coco, 4, seed=6)))
    assert not np.array_equal(other_seed["person_id"], next(iter(train_loader(coco, 4, seed=5)))["person_id"])


def test_read_threads_change_no_batch_and_a_position_resumes_across_them(coco):
    augment = Augmentation(rotation=40, scale_jitter=0.3, color_jitter=0.4)  # every element draws random numbers
    in_place = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)  # the demo's: records read where decoded
    threaded = iter(train_loader(coco, 4, seed=2, augment=augment))  # grain's 16 threads, 500 records ahead
    unthreaded = iter(train_loader(coco, 4, seed=2, augment=augment, read_options=in_place))
    for _ in range(3):  # past the end of the first epoch (8 persons)
        expected, got = next(threaded), next(unthreaded)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])
    resumed = iter(train_loader(coco, 4, seed=2, augment=augment, read_options=in_place))
    resumed.set_state(threaded.get_state())  # a checkpoint of a run with grain's defaults, resumed with the demo's
    np.testing.assert_array_equal(next(resumed)["image"], next(threaded)["image"])


def test_read_options_come_from_the_config_and_a_bad_value_is_one_line():
    data = ml_collections.ConfigDict({"read_threads": 0, "read_buffer": 0})
    options = data_read_options(data)
    assert (options.num_threads, options.prefetch_buffer_size) == (0, 0)
    older = data_read_options(ml_collections.ConfigDict({}))  # a config from before the fields: grain's defaults
    assert (older.num_threads, older.prefetch_buffer_size) == (16, 500)
    data.read_threads = -1
    with pytest.raises(ConfigError, match=r"^config.data.read_threads / read_buffer: .*non-negative"):
        data_read_options(data)
    data.read_threads = 4  # threads with nothing to fill: grain would read in place without a word
    with pytest.raises(ConfigError, match=r"^config.data.read_threads=4 reads nothing ahead with "
                                          r"config.data.read_buffer=0"):
        data_read_options(data)


@pytest.mark.slow
def test_worker_processes_give_the_same_elements_and_resume(coco):
    def epoch(workers):
        loader = train_loader(coco, 4, seed=1, num_epochs=1, worker_count=workers)
        return {int(i): float(k.sum()) for b in loader for i, k in zip(b["person_id"], b["keypoints"], strict=True)}

    serial, parallel = epoch(0), epoch(2)
    # Each worker batches its own elements, so an epoch may drop a different remainder; the elements both saw
    # are identical, augmentation included, whatever the worker count.
    common = set(serial) & set(parallel)
    assert len(common) >= 8 and all(serial[i] == parallel[i] for i in common)
    iterator = iter(train_loader(coco, 4, seed=1, worker_count=2))
    next(iterator)
    state = iterator.get_state()
    expected = next(iterator)
    resumed = iter(train_loader(coco, 4, seed=1, worker_count=2))
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])
    for open_iterator in (iterator, resumed):  # workers stopped and shared memory released now, not at some GC
        close_loader(open_iterator)


def test_eval_crops_from_ground_truth_and_detections_are_padded_batches(coco, shared_data):
    loader, count = eval_loader(coco, gt_boxes(coco), 5)
    batches = list(loader)
    assert count == 12 and len(batches) == 3
    assert [int(b["valid"].sum()) for b in batches] == [5, 5, 2]
    assert np.all(batches[-1]["image"][2:] == 0)
    detections = load_detections(shared_data / "coco_sample" / "test_coco_det_AP_H_56.json", coco.dataset)
    loader, count = eval_loader(coco, detections, 8)
    assert count == 118 and sum(int(b["valid"].sum()) for b in loader) == 118


def test_another_keypoint_set_flows_through(tmp_path):
    """21 hand-style keypoints with l_/r_ names: converted, cropped, flipped with the inferred pairs."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((120, 160, 3), 128, np.uint8))
    names = ["root"] + [f"{side}_{i}" for side in ("l", "r") for i in range(10)]
    points = np.concatenate([np.linspace(20, 140, 21)[:, None], np.full((21, 1), 60.0), np.full((21, 1), 2.0)], 1)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 120}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 140, 80], "area": 5000.0,
                             "iscrowd": 0, "keypoints": points.reshape(-1).tolist()}],
            "categories": [{"id": 3, "name": "hand", "keypoints": names, "skeleton": [[1, 2]]}]}
    (tmp_path / "hands.json").write_text(json.dumps(data))
    prepared = prepare(tmp_path / "hands.json", images, tmp_path / "cache", sigmas=[0.03] * 21)
    assert prepared.dataset.keypoint_set.flip_pairs == tuple((1 + i, 11 + i) for i in range(10))
    assert prepared.dataset.keypoint_set.sigmas == (0.03,) * 21
    # Where each keypoint must land, from the crop definition: the wide box (10, 20, 140, 80) keeps its width,
    # enlarged 1.25x, as the crop's 257 columns; its centre (80, 60) goes to the crop centre (128, 176).
    scale = 257 / (1.25 * 140)
    plain = np.stack([128 + (points[:, 0] - 80) * scale, 176 + (points[:, 1] - 60) * scale], axis=1)
    mirror_of = np.array([0] + [11 + i for i in range(10)] + [1 + i for i in range(10)])  # l_i <-> r_i
    flipped = np.stack([256 - plain[mirror_of, 0], plain[mirror_of, 1]], axis=1)
    loader = train_loader(prepared, 2, seed=0, augment=Augmentation(flip=True, enlarge=(1.25, 1.25)), num_epochs=8)
    flips = 0
    for batch in loader:
        assert batch["keypoints"].shape == (2, 21, 3)
        for keypoints, crop_to_image in zip(batch["keypoints"], batch["crop_to_image"], strict=True):
            is_flipped = np.linalg.det(crop_to_image[:, :2]) < 0
            flips += is_flipped
            # float32 keypoints: measured error ~1e-5 px; a wrong pair (l_3 <-> r_4) is off by 8.8 px.
            np.testing.assert_allclose(keypoints[:, :2], flipped if is_flipped else plain, atol=1e-3)
            np.testing.assert_array_equal(keypoints[:, 2], 2)
    assert 0 < flips < 8


def test_global_batch_is_sharded_over_the_data_axis(coco):
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    batch = next(iter(train_loader(coco, 4, seed=0)))
    arrays = global_batch(batch, mesh)
    assert arrays["image"].shape == (4, 353, 257, 3)
    np.testing.assert_array_equal(np.asarray(arrays["keypoints"]), batch["keypoints"])


@pytest.mark.slow
def test_global_batch_on_eight_devices(shared_data, tmp_path):
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from hvpose.data.tfds_coco import prepare
        from hvpose.data.pipeline import train_loader
        from hvpose.sharding import global_batch
        sample = "{shared_data / 'coco_sample'}"
        prepared = prepare(sample + "/test_coco.json", sample + "/images", "{tmp_path / 'cache'}")
        mesh = jax.make_mesh((8,), ("data",))
        batch = next(iter(train_loader(prepared, 8, seed=0)))
        arrays = global_batch(batch, mesh)
        assert arrays["keypoints"].sharding.spec[0] == "data"
        assert len(arrays["keypoints"].addressable_shards) == 8
        assert {{s.data.shape for s in arrays["image"].addressable_shards}} == {{(1, 353, 257, 3)}}
        np.testing.assert_array_equal(np.asarray(arrays["keypoints"]), batch["keypoints"])
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
