"""PoseNet's multi-person decoding (`hvpose.posenet_people`): synthetic maps with known answers, Coral's published
reference output of its own decoder (LiteRT running Coral's uint8 TFLite PoseNet), and the released TF.js PoseNet
finding people in real photos as person boxes for the top-down stage."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import import_or_skip
from hvpose.data.images import decode_image, read_image_file
from hvpose.inference import as_boxes
from hvpose.posenet_people import (
    POSE_CHAIN,
    Pose,
    PoseNetPeople,
    decode_multiple_poses,
    pose_boxes,
    posenet_box_source,
)

TFJS = "posenet/tfjs_mobilenet075_stride16/model-stride16.json"
CORAL = "posenet/coral_mobilenet075_353x481"
STRIDE = 16


def _person(origin_x: float, origin_y: float) -> np.ndarray:
    """(17, 2) keypoints (x, y) of a standing person in input pixels, off the grid points."""
    shape = np.array([[0, 0], [5, -6], [-5, -6], [11, -3], [-11, -3], [22, 28], [-22, 29], [30, 67], [-29, 66],
                      [33, 101], [-34, 103], [14, 110], [-13, 111], [15, 170], [-16, 169], [16, 226], [-17, 227]],
                     np.float64)
    return shape + [origin_x + 0.3, origin_y + 0.7]


def _maps(people: list[np.ndarray], scores: list[np.ndarray], split_x: float, size=(20, 20)):
    """PoseNet-layout maps of two people, the first owning the cells left of split_x: a cell's short offsets point at
    its owner's keypoints near it, its displacements along its owner's edges; the heatmap is 0.02 except the owner's
    score at the cell nearest each keypoint (a NaN score: no peak)."""
    h, w = size
    heat = np.full((h, w, 17), 0.02)
    offsets = np.zeros((h, w, 34))
    fwd, bwd = np.zeros((h, w, 32)), np.zeros((h, w, 32))
    cells = np.stack(np.mgrid[0:h, 0:w], axis=-1) * STRIDE  # (y, x) in input pixels
    owner = (cells[..., 1] >= split_x).astype(int)
    for index, (points, person_scores) in enumerate(zip(people, scores, strict=True)):
        mine = owner == index
        for k in range(17):
            # Short offsets point at the keypoint from within a 32 px disk around it (PersonLab's), zero elsewhere,
            # so a hop that lands in the wrong place stays wrong.
            near = mine & (np.hypot(cells[..., 0] - points[k, 1], cells[..., 1] - points[k, 0]) <= 32)
            offsets[near, k] = points[k, 1] - cells[near][:, 0]  # y block first ...
            offsets[near, 17 + k] = points[k, 0] - cells[near][:, 1]  # ... then x
            if not np.isnan(person_scores[k]):
                heat[int(round(points[k, 1] / STRIDE)), int(round(points[k, 0] / STRIDE)), k] = person_scores[k]
        for edge, (parent, child) in enumerate(POSE_CHAIN):
            step = points[child] - points[parent]  # (x, y)
            fwd[mine, edge], fwd[mine, 16 + edge] = step[1], step[0]
            bwd[mine, edge], bwd[mine, 16 + edge] = -step[1], -step[0]
    return heat, offsets, fwd, bwd


def test_decodes_each_person_exactly_with_posenets_channel_layout():
    a, b = _person(60, 20), _person(230, 40)
    score_a = np.linspace(0.99, 0.6, 17)  # the nose roots person a
    score_b = np.linspace(0.6, 0.98, 17)  # the right ankle roots person b (then the tree is climbed backwards)
    heat, offsets, fwd, bwd = _maps([a, b], [score_a, score_b], split_x=150)
    poses = decode_multiple_poses(heat, offsets, fwd, bwd, STRIDE, max_poses=10, score_threshold=0.5, nms_radius=20)
    assert len(poses) == 2  # every other peak lies on a decoded keypoint of the same kind: suppressed
    for pose, points, scores in zip(poses, (a, b), (score_a, score_b), strict=True):
        np.testing.assert_allclose(pose.keypoints[:, :2], points, atol=1e-9)
        np.testing.assert_allclose(pose.keypoints[:, 2], scores)
        assert pose.score == pytest.approx(scores.mean())
    # Swapping PoseNet's y and x blocks (reading them as x then y) loses the people.
    swapped = np.concatenate([offsets[..., 17:], offsets[..., :17]], axis=-1)
    wrong = decode_multiple_poses(heat, swapped, fwd, bwd, STRIDE, max_poses=10)
    assert not np.allclose(wrong[0].keypoints[:, :2], a, atol=2)
    assert decode_multiple_poses(heat, offsets, fwd, bwd, STRIDE, max_poses=1)[0].score == poses[0].score
    assert decode_multiple_poses(heat, offsets, fwd, bwd, STRIDE, max_poses=0) == []
    assert decode_multiple_poses(heat, offsets, fwd, bwd, STRIDE, score_threshold=0.995) == []


def test_keypoints_claimed_by_an_earlier_pose_do_not_score():
    """tfjs's getInstanceScore: the second pose's left ankle lands on the first pose's (its displacement points
    there), so it counts for nothing in the second pose's score; the mean is still over all 17 keypoints."""
    a, b = _person(60, 20), _person(230, 40)
    ankle, knee = 15, 13
    score_a, score_b = np.full(17, 0.9), np.full(17, 0.8)
    score_a[0], score_b[0] = 0.99, 0.95
    score_b[ankle] = np.nan  # b's own ankle is not seen
    heat, offsets, fwd, bwd = _maps([a, b], [score_a, score_b], split_x=150)
    edge = POSE_CHAIN.index((knee, ankle))
    owned_by_b = np.arange(20) * STRIDE >= 150
    fwd[:, owned_by_b, edge] = a[ankle, 1] - b[knee, 1]  # b's knee -> a's ankle
    fwd[:, owned_by_b, 16 + edge] = a[ankle, 0] - b[knee, 0]
    first, second = decode_multiple_poses(heat, offsets, fwd, bwd, STRIDE, max_poses=10, nms_radius=20)
    np.testing.assert_allclose(second.keypoints[ankle], [*a[ankle], 0.9])
    others = np.delete(np.arange(17), ankle)
    np.testing.assert_allclose(second.keypoints[others, :2], b[others], atol=1e-9)
    assert first.score == pytest.approx(score_a.mean())
    assert second.score == pytest.approx(score_b[others].sum() / 17)


def test_bad_shapes_are_refused():
    heat, offsets, fwd, bwd = _maps([_person(60, 20)], [np.full(17, 0.9)], split_x=1e9)
    with pytest.raises(ValueError, match="short_offsets must be"):
        decode_multiple_poses(heat, offsets[..., :17], fwd, bwd, STRIDE)
    with pytest.raises(ValueError, match="displacements_bwd must be"):
        decode_multiple_poses(heat, offsets, fwd, bwd[:-1], STRIDE)


def test_pose_boxes_rule():
    keypoints = np.zeros((17, 3))
    keypoints[:, :2] = _person(100, 50)
    keypoints[:, 2] = 0.9
    keypoints[16] = [900, 900, 0.1]  # below the keypoint threshold: ignored
    (box,) = pose_boxes([Pose(keypoints, 0.7)], image_size=(280, 300), keypoint_threshold=0.3, margin=0.1)
    low, high = keypoints[:16, :2].min(0), keypoints[:16, :2].max(0)
    pad = 0.1 * (high - low).max()  # the longer side (the height) sets the margin on every side
    assert high[1] + pad > 279  # the bottom is clipped to the last image row
    np.testing.assert_allclose(box[:4], [*(low - pad), high[0] + pad - (low[0] - pad), 279 - (low[1] - pad)])
    assert box[4] == 0.7
    few = keypoints.copy()
    few[1:, 2] = 0.0
    assert pose_boxes([Pose(few, 0.9)], min_keypoints=2).shape == (0, 5)
    assert pose_boxes([Pose(keypoints, 0.1)], min_score=0.2).shape == (0, 5)


def _coral_outputs(folder) -> dict[str, np.ndarray]:
    """LiteRT running Coral's uint8 PoseNet on its test photo (PIL NEAREST to 481x353, as Coral's engine does),
    outputs dequantised. The uint8 input is the raw RGB: its quantisation (scale 1/128, zero point 128) is the
    network's x / 127.5 - 1-style normalisation, and Coral's engine feeds np.asarray(image) unchanged."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "posenet_mobilenet_v1_075_353_481_quant.tflite"))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert detail["dtype"] == np.uint8 and detail["quantization"] == (1 / 128, 128)
    image = np.asarray(Image.open(folder / "test_couple.jpg").convert("RGB").resize((481, 353), Image.NEAREST))
    interpreter.set_tensor(detail["index"], image[None])
    interpreter.invoke()
    outputs = {}
    for output in interpreter.get_output_details():
        scale, zero_point = output["quantization"]
        outputs[output["name"]] = (interpreter.get_tensor(output["index"])[0].astype(np.float64) - zero_point) * scale
    # float_mid_offsets is the concatenation of displacement_fwd_2 and displacement_bwd_2, in that order.
    ops = {op["outputs"][0]: op for op in interpreter._get_ops_details()}
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    mid = next(i for i, name in names.items() if name == "float_mid_offsets")
    assert ops[mid]["op_name"] == "CONCATENATION"
    assert [names[i] for i in ops[mid]["inputs"]] == ["MobilenetV1/displacement_fwd_2/BiasAdd",
                                                      "MobilenetV1/displacement_bwd_2/BiasAdd"]
    return outputs


def test_decoding_coral_outputs_matches_corals_decoder(shared_data):
    """Coral's reference (its C++ decoder on the same network's outputs: 2 poses x 17 keypoints) against ours on the
    interpreter's outputs, with tfjs's defaults (score threshold 0.5, NMS radius 20) and Coral's 10 poses at most.

    Coral's decoder differs in detail (5 refinement steps instead of 2, bilinear sampling instead of the nearest
    cell, best-first instead of tree order); the positions still agree (measured: all 34 within 3.0 px, upstream
    tolerance 4), as do the pose scores (0.02). Keypoint scores: tfjs reads the heatmap at the nearest grid cell,
    Coral interpolates the logits bilinearly; measured 29 of 34 within the upstream 0.1 (worst 0.17), and all 34
    within 0.05 once the logits are sampled Coral's way at our positions: the difference is the sampling alone."""
    import_or_skip("ai_edge_litert")
    folder = shared_data / CORAL
    outputs = _coral_outputs(folder)
    rows = list(csv.DictReader(open(folder / "posenet_mobilenet_v1_075_353_481_quant_decoder_reference.csv")))
    reference = np.array([[float(r["keypoint_x"]), float(r["keypoint_y"]), float(r["keypoint_score"])]
                          for r in rows]).reshape(2, 17, 3)
    reference_scores = [float(rows[0]["pose_score"]), float(rows[17]["pose_score"])]
    logits = outputs["float_heatmaps"]
    mid = outputs["float_mid_offsets"]
    poses = decode_multiple_poses(1 / (1 + np.exp(-logits)), outputs["float_short_offsets"], mid[..., :32],
                                  mid[..., 32:], output_stride=16, max_poses=10, score_threshold=0.5, nms_radius=20)
    assert len(poses) == 2
    position_errors, score_errors, resampled_errors = [], [], []
    for expected, expected_score in zip(reference, reference_scores, strict=True):
        pose = min(poses, key=lambda p: np.abs(p.keypoints[:, :2] - expected[:, :2]).mean())
        position_errors.extend(np.abs(pose.keypoints[:, :2] - expected[:, :2]).max(axis=1))
        score_errors.extend(np.abs(pose.keypoints[:, 2] - expected[:, 2]))
        assert abs(pose.score - expected_score) <= 0.1
        for k, (x, y) in enumerate(pose.keypoints[:, :2] / 16):
            resampled_errors.append(abs(1 / (1 + np.exp(-_bilinear(logits[..., k], y, x))) - expected[k, 2]))
    position_errors, score_errors = np.array(position_errors), np.array(score_errors)
    assert position_errors.max() <= 4.0, np.round(position_errors, 1)
    assert (score_errors <= 0.1).sum() >= 27 and score_errors.max() <= 0.25, np.round(score_errors, 2)
    assert max(resampled_errors) <= 0.1


def _bilinear(grid: np.ndarray, y: float, x: float) -> float:
    """Coral's sampling: bilinear, the point clamped to the grid."""
    y, x = min(max(y, 0.0), grid.shape[0] - 1.0), min(max(x, 0.0), grid.shape[1] - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, grid.shape[0] - 1), min(x0 + 1, grid.shape[1] - 1)
    fy, fx = y - y0, x - x0
    return float((1 - fy) * ((1 - fx) * grid[y0, x0] + fx * grid[y0, x1]) + fy * ((1 - fx) * grid[y1, x0]
                                                                                  + fx * grid[y1, x1]))


@pytest.fixture(scope="module")
def people(shared_data):
    return PoseNetPeople.from_tfjs(shared_data / TFJS)


def test_network_input_keeps_the_aspect_and_maps_back(people):
    image = np.zeros((1278, 1920, 3), np.uint8)
    network_input, (scale_x, scale_y) = people.network_input(image)
    assert network_input.shape == (353, 513, 3)  # 513 x 341 resized, padded to 16 * 22 + 1 rows
    assert scale_x == 513 / 1920 and scale_y == 341 / 1278
    with pytest.raises(ValueError, match="16n\\+1"):
        PoseNetPeople(people.model, people.variables, input_size=500)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x, y, width, height) boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(width, 0.0) * max(height, 0.0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


@pytest.mark.slow
def test_released_posenet_finds_the_couple(people, shared_data):
    """The TF.js weights on Coral's 1920x1278 photo: two people (measured pose scores 0.83 and 0.90, nothing else),
    each box around one of the people of Coral's reference (its keypoints mapped from the 481x353 frame)."""
    folder = shared_data / CORAL
    image = decode_image(read_image_file(folder / "test_couple.jpg"))
    poses = people(image)
    assert len(poses) == 2 and min(p.score for p in poses) > 0.7
    boxes = as_boxes(posenet_box_source(people)(image))
    assert len(boxes) == 2
    rows = list(csv.DictReader(open(folder / "posenet_mobilenet_v1_075_353_481_quant_decoder_reference.csv")))
    reference = np.array([[float(r["keypoint_x"]), float(r["keypoint_y"]), float(r["keypoint_score"])]
                          for r in rows]).reshape(2, 17, 3)
    scale = np.array([1920 / 481, 1278 / 353])
    owners = []
    for person in reference:
        points = (person[person[:, 2] > 0.5, :2] + 0.5) * scale - 0.5  # NEAREST resize: pixel centres
        inside = [((points >= box[:2]) & (points <= box[:2] + box[2:4])).all() for box in boxes]
        assert sum(inside) == 1
        owners.append(int(np.argmax(inside)))
        # The box is about the person: not much larger than their keypoints' extent (margins 0.1 of it a side).
        extent = points.max(0) - points.min(0)
        assert (boxes[owners[-1], 2:4] <= extent + 0.3 * extent.max()).all()
    assert sorted(owners) == [0, 1]


@pytest.mark.slow
def test_released_posenet_boxes_the_baseball_players(people, shared_data):
    """COCO 196141: 5 annotated people, one of them a 17x32 px figure with no keypoints. Measured: 8 poses, 4 of
    their boxes match a ground-truth box at IoU > 0.5 (0.73-0.87), the 4 people with keypoints; the 4 others score
    <= 0.1."""
    coco = json.loads((shared_data / "coco_sample/test_coco.json").read_text())
    truth = np.array([a["bbox"] for a in coco["annotations"] if a["image_id"] == 196141])
    assert len(truth) == 5
    image = decode_image(read_image_file(shared_data / "coco_sample/images/000000196141.jpg"))
    boxes = as_boxes(posenet_box_source(people)(image))
    matched: set[int] = set()
    for box in boxes[np.argsort(-boxes[:, 4])]:  # greedy, best box first, each truth box once
        ious = [0.0 if j in matched else _iou(box, t) for j, t in enumerate(truth)]
        if max(ious) > 0.5:
            matched.add(int(np.argmax(ious)))
    assert len(matched) >= 3, matched
    confident = boxes[boxes[:, 4] > 0.5]
    assert 3 <= len(confident) <= 5
