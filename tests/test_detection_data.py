"""Detector input pipeline: boxes against drawn rectangles and hand-computed values, flips, dropped crowd and tiny
boxes, negatives, truncation, eval padding, determinism and resumption, the Predictor's `prepare_image`, and the
real COCO sample."""

import json

import cv2
import numpy as np
import pytest

from hvpose.configs import detector_demo
from hvpose.data.detection import (
    DetectionImages,
    EvalDetectionCanvas,
    TrainDetectionCanvas,
    canvas_to_image,
    detection_eval_loader,
    detection_train_loader,
    flip_boxes,
    image_to_canvas_size,
    person_boxes,
    prepare_image,
)
from hvpose.data.images import decode_image
from hvpose.data.pipeline import close_loader
from hvpose.data.tfds_coco import prepare
from hvpose.keypoints import COCO17

CANVAS = (256, 320)  # (height, width)
MAX_BOXES = 4
RED, GREEN, BLUE = 0, 1, 2

# Synthetic images (height, width, encoding) with rectangles drawn in one colour channel each: (channel, x, y, w, h)
# in COCO continuous coordinates, i.e. pixel columns x .. x + w - 1 and rows y .. y + h - 1 lit. Each rectangle is
# annotated with exactly its box, except where noted.
IMAGES = {
    1: ("shrink.png", 300, 400, [(RED, 100, 60, 80, 80), (GREEN, 350, 250, 50, 50)]),  # scale 0.8
    2: ("negative.png", 200, 150, []),  # no people: a negative (scale 1.28)
    3: ("big.jpg", 900, 1200, [(RED, 600, 150, 300, 600)]),  # scale 0.2667: decoded at 1/2 size in the DCT
    # Scale 2.56: enlarged to 156.16 -> 156 columns, so the box reaching the right border is clipped by 0.16 px.
    4: ("small.png", 100, 61, [(RED, 21, 30, 40, 40)]),
    5: ("many.png", 600, 800, [(RED, 40 + 150 * i, 100, 20 + 20 * i, 20 + 40 * i) for i in range(5)]),  # scale 0.4
}
# Boxes that are not targets: a crowd region, a sliver 0.5 px wide, one outside the image.
EXTRA = {1: [dict(bbox=[10, 10, 50, 50], iscrowd=1), dict(bbox=[300, 200, 0.5, 40], iscrowd=0),
             dict(bbox=[500, 20, 30, 30], iscrowd=0)]}
# The green rectangle of image 1 is annotated past the image border (x2 = 450 > 400): clipped to the image.
ANNOTATED = {(1, 1): [350, 250, 100, 50]}


def draw(height, width, rectangles, jpeg):
    image = np.zeros((height, width, 3), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    image[..., BLUE] = (40 * (1 + np.sin(xx / 37.0) * np.cos(yy / 23.0))).astype(np.uint8)  # smooth background
    for channel, x, y, w, h in rectangles:
        image[y:y + h, x:x + w] = 0
        image[y:y + h, x:x + w, channel] = 255
        if jpeg:  # white (chroma subsampling would blur a single-channel edge)
            image[y:y + h, x:x + w] = 255
    return image


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("detection")
    (root / "images").mkdir()
    images, annotations = [], []
    for image_id, (name, height, width, rectangles) in IMAGES.items():
        image = draw(height, width, rectangles, name.endswith(".jpg"))
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        boxes = [dict(bbox=ANNOTATED.get((image_id, i), [x, y, w, h]), iscrowd=0)
                 for i, (_, x, y, w, h) in enumerate(rectangles)] + EXTRA.get(image_id, [])
        for box in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "area": float(box["bbox"][2] * box["bbox"][3]) or 1.0, **box})
    category = {"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}
    (root / "people.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                  "categories": [category]}))
    return prepare(root / "people.json", root / "images", root / "cache")


def xyxy(rectangle):
    _, x, y, w, h = rectangle
    return np.array([x, y, x + w, y + h], np.float64)


def lit_extent(canvas, channel):
    """(x1, y1, x2, y2) bounding the canvas pixels where `channel` is over half lit (continuous coordinates)."""
    rows, cols = np.nonzero(canvas[..., channel] > 127)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def render(synthetic, image_id, seed=None, flip=True, zoom=(1.0, 1.0)):
    element = DetectionImages(synthetic)[synthetic.image_ids.index(image_id)]
    if seed is None:
        return EvalDetectionCanvas(CANVAS, MAX_BOXES).map(element)
    return TrainDetectionCanvas(CANVAS, MAX_BOXES, flip, zoom=zoom).random_map(element, np.random.default_rng(seed))


def test_canvas_size_and_box_helpers_by_hand():
    assert image_to_canvas_size(300, 400, CANVAS) == (0.8, 240, 320)
    assert image_to_canvas_size(80, 100, CANVAS) == (3.2, 256, 320)
    scale, height, width = image_to_canvas_size(425, 640, (320, 320))  # 212.5 rows: rounded half to even
    assert (scale, height, width) == (0.5, 212, 320)
    boxes = np.array([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 320.0, 10.0]])
    np.testing.assert_array_equal(flip_boxes(boxes, 320), [[270, 20, 310, 60], [0, 0, 320, 10]])
    np.testing.assert_array_equal(flip_boxes(flip_boxes(boxes, 317), 317), boxes)
    np.testing.assert_allclose(canvas_to_image(np.array([[[8.0, 4.0, 16.0, 12.0]], [[3, 3, 6, 6]]]), [0.5, 3.0]),
                               [[[16, 8, 32, 24]], [[1, 1, 2, 2]]])
    with pytest.raises(ValueError):
        image_to_canvas_size(10, 10, (0, 10))


def test_crowd_tiny_and_outside_boxes_are_dropped_and_the_rest_clipped():
    bbox = np.array([[10, 10, 50, 50], [20, 20, 30, 30], [5, 5, 0.99, 40], [5, 5, 1.0, 40], [95, 10, 20, 20],
                     [150, 10, 5, 5], [-10, 90, 30, 30]], np.float32)
    iscrowd = np.array([0, 1, 0, 0, 0, 0, 0], bool)
    kept = person_boxes(bbox, iscrowd, height=100, width=100)
    np.testing.assert_allclose(kept, [[10, 10, 60, 60], [5, 5, 6, 45], [95, 10, 100, 30], [0, 90, 20, 100]])
    assert person_boxes(np.zeros((0, 4)), np.zeros(0, bool), 10, 10).shape == (0, 4)


def test_source_has_every_image_with_its_target_boxes(synthetic):
    source = DetectionImages(synthetic)
    assert len(source) == 5 and "5 images" in repr(source)
    elements = {int(source[i]["image_id"]): source[i] for i in range(len(source))}
    # Image 1: the crowd region, the sliver and the box outside the image are gone; the green box is clipped.
    np.testing.assert_allclose(elements[1]["boxes"], [[100, 60, 180, 140], [350, 250, 400, 300]])
    assert elements[2]["boxes"].shape == (0, 4)
    assert len(elements[5]["boxes"]) == 5


def test_boxes_are_scaled_and_flipped_as_computed_by_hand(synthetic):
    plain = render(synthetic, 1)
    assert plain["scale"] == np.float32(0.8) and list(plain["image_size"]) == [240, 320]
    expected = np.array([[80, 48, 144, 112], [280, 200, 320, 240]])
    np.testing.assert_allclose(plain["boxes"][:2], expected, atol=1e-4)
    assert list(plain["box_valid"]) == [True, True, False, False] and not plain["boxes"][2:].any()
    outs = [render(synthetic, 1, seed) for seed in range(12)]
    flipped = [out for out in outs if not np.array_equal(out["image"], plain["image"])]
    assert 0 < len(flipped) < len(outs)
    np.testing.assert_allclose(flipped[0]["boxes"][:2], [[176, 48, 240, 112], [0, 200, 40, 240]], atol=1e-4)
    # Flipping the true-size region back gives the unflipped canvas exactly; padding stays zero.
    unflipped = flipped[0]["image"].copy()
    unflipped[:240, :320] = unflipped[:240, :320][:, ::-1]
    np.testing.assert_array_equal(unflipped, plain["image"])
    assert not plain["image"][240:].any()
    np.testing.assert_allclose(flip_boxes(flipped[0]["boxes"][:2], 320), plain["boxes"][:2], atol=1e-4)
    for out in outs:  # the unflipped draws are the eval canvas exactly
        if not any(out is f for f in flipped):
            np.testing.assert_array_equal(out["boxes"], plain["boxes"])
    never = [render(synthetic, 1, seed, flip=False) for seed in range(6)]
    assert all(np.array_equal(out["image"], plain["image"]) for out in never)
    small = render(synthetic, 4)  # narrower than the canvas: mirrored within its 156 columns
    small_flipped = next(out for seed in range(12)
                         if (out := render(synthetic, 4, seed))["boxes"][0, 0] != small["boxes"][0, 0])
    assert list(small["image_size"]) == [256, 156] and small["scale"] == np.float32(2.56)
    np.testing.assert_allclose(small["boxes"][0], [53.76, 76.8, 156, 179.2], atol=1e-4)
    np.testing.assert_allclose(small_flipped["boxes"][0], [0, 76.8, 102.24, 179.2], atol=1e-4)
    assert not small_flipped["image"][:, 156:].any() and small_flipped["image"][:, 155].any()
    big = render(synthetic, 3)  # 1200x900 JPEG, scale 320 / 1200, decoded at half size
    np.testing.assert_allclose(big["scale"], 320 / 1200)
    assert list(big["image_size"]) == [240, 320]
    np.testing.assert_allclose(big["boxes"][0], [160, 40, 240, 200], atol=1e-4)


@pytest.mark.parametrize("image_id", [1, 3, 4, 5])
def test_boxes_bound_the_drawn_rectangles_with_and_without_flips(synthetic, image_id):
    """Shrunk (PNG, and JPEG decoded at half size), enlarged, block-averaged: every target box bounds the pixels of
    its rectangle on the canvas within 1 px, flipped or not."""
    rectangles = IMAGES[image_id][3]
    if image_id == 5:  # five rectangles, four kept: the smallest (the first) is dropped
        rectangles = rectangles[1:]
    plain = render(synthetic, image_id)
    outs = [plain] + [render(synthetic, image_id, seed) for seed in range(6)]
    flips = 0
    for out in outs:
        flips += bool(out["boxes"][0, 0] != plain["boxes"][0, 0])
        assert out["box_valid"].sum() == len(rectangles)
        for box, rectangle in zip(out["boxes"], rectangles, strict=False):
            # Image 5's rectangles share one channel: look at each one near its box only.
            x1, y1, x2, y2 = np.round(box).astype(int)
            window = np.zeros_like(out["image"])
            window[max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3] = \
                out["image"][max(y1 - 3, 0):y2 + 3, max(x1 - 3, 0):x2 + 3]
            np.testing.assert_allclose(box, lit_extent(window, rectangle[0]), atol=1.0)
    assert 0 < flips < len(outs)


@pytest.mark.parametrize("image_id", [1, 3, 4, 5])
@pytest.mark.parametrize("zoom", [(0.5, 0.9), (1.3, 2.5)], ids=["out", "in"])
def test_zoomed_boxes_bound_the_visible_part_of_each_rectangle(synthetic, image_id, zoom):
    """Zoomed out (the image smaller than the canvas) or in (a random window of it): each target box is the
    visible part of its rectangle within 1 px, rectangles the window cuts off have no box, and the scale is the
    fitting one times a zoom in range."""
    rectangles = IMAGES[image_id][3]
    element = DetectionImages(synthetic)[synthetic.image_ids.index(image_id)]
    transform = TrainDetectionCanvas(CANVAS, len(rectangles), zoom=zoom)  # every rectangle a target
    fit_scale = render(synthetic, image_id)["scale"]
    zooms = []
    for seed in range(6):
        out = transform.random_map(element, np.random.default_rng(seed))
        zooms.append(out["scale"] / fit_scale)
        assert zoom[0] - 1e-6 <= zooms[-1] <= zoom[1] + 1e-6
        true_h, true_w = out["image_size"]
        assert not out["image"][true_h:].any() and not out["image"][:, true_w:].any()
        boxes = out["boxes"][out["box_valid"]]
        # The visible rectangles: connected lit regions of their channel (image 5 draws all five in red).
        visible = []
        for channel in sorted({rectangle[0] for rectangle in rectangles}):
            count, labels = cv2.connectedComponents((out["image"][..., channel] > 127).astype(np.uint8))
            visible += [np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
                        for ys, xs in (np.nonzero(labels == k) for k in range(1, count))]
        visible = [v for v in visible if min(v[2] - v[0], v[3] - v[1]) > 2]  # slivers may round either way
        for v in visible:
            assert np.abs(boxes - v).max(axis=1).min() <= 1.0, (seed, boxes, visible)
        assert len(visible) <= len(boxes) <= len(rectangles)
        assert np.all(boxes[:, 2:] - boxes[:, :2] >= 1.0)
        assert np.all(boxes[:, 2] <= true_w) and np.all(boxes[:, 3] <= true_h)
    assert len(set(np.round(zooms, 4))) == len(zooms)  # a new zoom each draw


def test_zoom_off_draws_nothing_more_and_bad_ranges_are_refused(synthetic):
    """zoom (1, 1) is the plain flip augmentation with the same random stream; a range must be 0 < low <= high."""
    for seed in range(4):
        element = DetectionImages(synthetic)[0]
        rng, plain_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        out = TrainDetectionCanvas(CANVAS, MAX_BOXES, zoom=(1.0, 1.0)).random_map(element, rng)
        flip = plain_rng.random() < 0.5
        assert rng.random() == plain_rng.random()  # one draw (the flip) and no more
        expected = render(synthetic, 1)
        if flip:
            expected["boxes"][:2] = flip_boxes(expected["boxes"][:2], 320)
        np.testing.assert_allclose(out["boxes"], expected["boxes"], atol=1e-4)
    for zoom in [(0.0, 1.0), (1.5, 1.2), (-1.0, 2.0)]:
        with pytest.raises(ValueError, match="zoom"):
            detection_train_loader(synthetic, 1, seed=0, canvas_size=CANVAS, max_boxes=MAX_BOXES, zoom=zoom)


def test_zoomed_window_is_the_resized_image_at_a_whole_pixel_offset(synthetic):
    """Image 1 (400x300 PNG, fitting scale 0.8) at zoom 2: the canvas is a 320x256 window of the image resized by
    1.6, found at the offset the red rectangle's box implies, and the box is the rectangle scaled and shifted."""
    image = cv2.cvtColor(cv2.imread(f"{synthetic.images_dir}/shrink.png"), cv2.COLOR_BGR2RGB)
    full = cv2.resize(image, None, fx=1.6, fy=1.6, interpolation=cv2.INTER_LINEAR)
    offsets = set()
    for seed in range(8):
        out = render(synthetic, 1, seed, flip=False, zoom=(2.0, 2.0))
        assert out["scale"] == np.float32(1.6) and list(out["image_size"]) == [256, 320]
        misfit = cv2.matchTemplate(full, out["image"], cv2.TM_SQDIFF)  # (225, 321): every whole-pixel offset
        top, left = np.unravel_index(np.argmin(misfit), misfit.shape)
        np.testing.assert_array_equal(out["image"], full[top:top + 256, left:left + 320])
        offsets.add((top, left))
        red = xyxy(IMAGES[1][3][0]) * 1.6 - [left, top, left, top]  # the rectangle on the window
        expected = np.clip(red, 0, [320, 256, 320, 256])
        if min(expected[2] - expected[0], expected[3] - expected[1]) >= 1:
            np.testing.assert_allclose(out["boxes"][0], expected, atol=1e-4)
        else:
            assert not np.any(np.all(np.abs(out["boxes"] - expected) < 1e-3, axis=1))
    assert len(offsets) > 1


def test_truncation_keeps_the_largest_boxes_in_annotation_order(synthetic):
    out = render(synthetic, 5)
    kept = np.array([xyxy(r) for r in IMAGES[5][3][1:]]) * 0.4  # the four largest: all but the first
    np.testing.assert_allclose(out["boxes"], kept, atol=1e-4)
    one = EvalDetectionCanvas(CANVAS, 1).map(DetectionImages(synthetic)[4])
    np.testing.assert_allclose(one["boxes"], [xyxy(IMAGES[5][3][4]) * 0.4], atol=1e-4)


def test_image_without_people_is_a_negative(synthetic):
    batches = list(detection_train_loader(synthetic, 1, seed=0, canvas_size=CANVAS, max_boxes=MAX_BOXES,
                                          num_epochs=1))
    assert sorted(int(b["image_id"][0]) for b in batches) == [1, 2, 3, 4, 5]  # every image once, negatives too
    negative = next(b for b in batches if b["image_id"][0] == 2)
    assert not negative["box_valid"].any() and not negative["boxes"].any()
    assert list(negative["image_size"][0]) == [256, 192] and negative["image"][0, :256, :192].any()
    assert not negative["image"][0, :, 192:].any()


def test_eval_batches_are_in_order_and_padded(synthetic):
    loader, count = detection_eval_loader(synthetic, 3, canvas_size=CANVAS, max_boxes=MAX_BOXES)
    batches = list(loader)
    assert count == 5 and len(batches) == 2
    batch = batches[0]
    shapes = {key: (value.shape, value.dtype) for key, value in batch.items()}
    assert shapes == {"image": ((3, 256, 320, 3), np.uint8), "image_size": ((3, 2), np.int32),
                      "scale": ((3,), np.float32), "boxes": ((3, MAX_BOXES, 4), np.float32),
                      "box_valid": ((3, MAX_BOXES), bool), "image_id": ((3,), np.int64), "valid": ((3,), bool)}
    assert [list(b["valid"]) for b in batches] == [[True] * 3, [True, True, False]]
    assert [list(b["image_id"]) for b in batches] == [[1, 2, 3], [4, 5, -1]]
    assert [list(b["box_valid"].sum(1)) for b in batches] == [[2, 0, 1], [1, 4, 0]]
    pad = {key: value[2] for key, value in batches[1].items()}
    assert not pad["image"].any() and not pad["boxes"].any() and list(pad["image_size"]) == [0, 0]
    assert pad["scale"] == 1


def train_batches(synthetic, seed, num_epochs, zoom=(1.0, 1.0)):
    return detection_train_loader(synthetic, 2, seed=seed, canvas_size=CANVAS, max_boxes=MAX_BOXES, zoom=zoom,
                                  num_epochs=num_epochs)


def assert_same_batch(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("zoom", [(1.0, 1.0), detector_demo.get_config("long").data.augment.zoom],
                         ids=["flip", "flip_and_zoom"])
def test_training_is_deterministic_and_resumes_exactly(synthetic, zoom):
    # Finite (two epochs) so that grain's read-ahead stops early; the endless loader is checked below.
    first = iter(train_batches(synthetic, 5, 2, zoom))
    batches = [next(first) for _ in range(2)]
    state = first.get_state()
    batches.append(next(first))  # elements 4 and 5: across the end of the first epoch
    resumed = iter(train_batches(synthetic, 5, 2, zoom))
    resumed.set_state(state)
    assert_same_batch(next(resumed), batches[2])
    again = iter(train_batches(synthetic, 5, 2, zoom))
    for expected in batches:
        assert_same_batch(next(again), expected)
    other = next(iter(train_batches(synthetic, 6, 2, zoom)))
    assert not all(np.array_equal(other[key], value) for key, value in batches[0].items())


def test_training_is_endless_with_a_new_order_each_epoch(synthetic):
    iterator = iter(train_batches(synthetic, 5, None))
    ids = [int(i) for _ in range(5) for i in next(iterator)["image_id"]]
    close_loader(iterator)  # stops grain's read-ahead of the endless sampler
    assert sorted(ids[:5]) == sorted(ids[5:]) == [1, 2, 3, 4, 5] and ids[:5] != ids[5:]


def test_prepare_image_equals_the_eval_loader_canvas(synthetic):
    loader, _ = detection_eval_loader(synthetic, 5, canvas_size=CANVAS, max_boxes=MAX_BOXES)
    batch = next(iter(loader))
    for i, image_id in enumerate(batch["image_id"]):
        data = synthetic.source[synthetic.image_ids.index(int(image_id))]["image"]
        for image in (data, decode_image(data)):
            canvas, size, scale = prepare_image(image, CANVAS)
            np.testing.assert_array_equal(size, batch["image_size"][i])
            assert scale == batch["scale"][i] and scale.dtype == np.float32
            if isinstance(image, np.ndarray) and IMAGES[int(image_id)][0].endswith(".jpg"):
                # Decoded JPEG pixels reduced by block averaging vs the DCT reduction: close, not identical.
                assert np.abs(canvas.astype(int) - batch["image"][i]).mean() < 0.5  # measured 0.06
            else:  # the same bytes, or PNG pixels (block-averaged both ways): identical
                np.testing.assert_array_equal(canvas, batch["image"][i])


@pytest.fixture(scope="module")
def coco(shared_data, tmp_path_factory):
    sample = shared_data / "coco_sample"
    return prepare(sample / "test_coco.json", sample / "images", tmp_path_factory.mktemp("cache"))


def test_real_coco_sample_batches_match_the_annotations(coco, shared_data):
    """A 320x320 canvas: the 640-wide images are decoded at half size (scale 0.5), the 500-wide one is not."""
    raw = json.loads((shared_data / "coco_sample" / "test_coco.json").read_text())
    loader, count = detection_eval_loader(coco, 4, canvas_size=(320, 320), max_boxes=8)
    batch = next(iter(loader))
    assert count == 4 and batch["image"].shape == (4, 320, 320, 3) and batch["boxes"].shape == (4, 8, 4)
    assert list(batch["image_id"]) == [785, 40083, 196141, 197388] and batch["valid"].all()
    boxes = canvas_to_image(batch["boxes"], batch["scale"])
    for i, image_id in enumerate(batch["image_id"]):
        info = next(im for im in raw["images"] if im["id"] == image_id)
        scale = 320 / max(info["height"], info["width"])
        np.testing.assert_allclose(batch["scale"][i], scale, rtol=1e-6)
        assert list(batch["image_size"][i]) == [round(info["height"] * scale), round(info["width"] * scale)]
        expected = [[x, y, x + w, y + h] for a in raw["annotations"] if a["image_id"] == image_id
                    for x, y, w, h in [a["bbox"]] if not a["iscrowd"]]
        assert int(batch["box_valid"][i].sum()) == len(expected)
        np.testing.assert_allclose(boxes[i, :len(expected)], expected, atol=1e-3)
        data = (shared_data / "coco_sample" / "images" / info["file_name"]).read_bytes()
        canvas, _, _ = prepare_image(data, (320, 320))
        np.testing.assert_array_equal(canvas, batch["image"][i])
        h, w = batch["image_size"][i]
        assert canvas[:h, :w].mean() > 20 and not canvas[h:].any() and not canvas[:, w:].any()
    train = next(iter(detection_train_loader(coco, 2, seed=0, canvas_size=(320, 320), max_boxes=4, num_epochs=1)))
    assert train["image"].shape == (2, 320, 320, 3) and train["boxes"].shape == (2, 4, 4) and "valid" not in train
    assert np.all(train["boxes"][..., 2:] <= train["image_size"][:, None, ::-1] + 1e-3)
