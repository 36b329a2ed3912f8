"""Evaluation pieces: COCOeval wrapper, OKS and OKS-NMS, flip alignment, the crop -> image chain."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hvpose.data.coco import load_coco_keypoints
from hvpose.data.pipeline import eval_loader, gt_boxes
from hvpose.data.tfds_coco import prepare
from hvpose.evaluate import coco_evaluate, to_coco_results
from hvpose.inference import PredictedPerson, instance_scores, suppress, to_image
from hvpose.keypoints import COCO17
from hvpose.models.keypoint_net import KeypointNet
from hvpose.ops.flip import flip_back
from hvpose.ops.nms import oks, oks_nms
from hvpose.ops.voting import decode, hough_vote
from hvpose.targets import make_targets


def gt_as_results(dataset_json):
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in dataset_json["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]


def test_ground_truth_through_the_results_path_scores_ap_1(shared_data):
    dataset = load_coco_keypoints(shared_data / "coco_sample" / "test_coco.json")
    stats = coco_evaluate(dataset.raw, gt_as_results(dataset.raw), dataset.keypoint_set.sigmas, verbose=False)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)


def test_cocoeval_wrapper_reproduces_known_answers(shared_data):
    folder = shared_data / "cocoeval_regression"
    ground_truth = json.loads((folder / "gt_dataset.json").read_text())
    results = json.loads((folder / "dt_dataset.json").read_text())
    stats = coco_evaluate(ground_truth, results, np.asarray(COCO17.sigmas), verbose=False)
    expected = [0.5048844884488449, 0.7227722772277227, 0.6336633663366337, 0.46633663366336636, 0.7504950495049505,
                0.5181818181818182, 0.7272727272727273, 0.6363636363636364, 0.4666666666666666, 0.75]
    np.testing.assert_allclose(list(stats.values()), expected, rtol=1e-12)


def pycocotools_oks(reference, others, area, scores):
    """OKS as pycocotools computes it (`COCOeval.computeOks`), on a one-image COCO ground truth holding
    `reference` (K, 3; visibility 0 leaves a keypoint out) and detections `others` (N, K, 2)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    x, y = reference[reference[:, 2] > 0, :2].min(0)
    w, h = reference[reference[:, 2] > 0, :2].max(0) - (x, y)
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": 1, "width": 640, "height": 480}],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names), "skeleton": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": area,
                         "bbox": [float(x), float(y), float(w), float(h)],
                         "num_keypoints": int((reference[:, 2] > 0).sum()),
                         "keypoints": reference.reshape(-1).tolist()}]}
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
        detections = ground_truth.loadRes([
            {"image_id": 1, "category_id": 1, "score": float(score),
             "keypoints": np.concatenate([points, np.ones((len(points), 1))], 1).reshape(-1).tolist()}
            for points, score in zip(others, scores, strict=True)])
        evaluation = COCOeval(ground_truth, detections, "keypoints")
        evaluation.params.kpt_oks_sigmas = np.asarray(COCO17.sigmas)
        evaluation.evaluate()  # prepares the per-image ground truth and detections computeOks reads
    return np.asarray(evaluation.computeOks(1, 1))[:, 0]  # (detections sorted by score) x (one ground truth)


def test_oks_matches_pycocotools():
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(100, 300, (17, 2)), np.full((17, 1), 2.0)], 1)
    others = reference[None, :, :2] + rng.normal(0, 3, (5, 17, 2)) * rng.uniform(0.3, 3, (5, 1, 1))
    scores = np.linspace(0.9, 0.5, 5)  # descending: pycocotools orders detections by score
    area = 2500.0
    expected = pycocotools_oks(reference, others, area, scores)
    assert expected.min() < 0.5 < expected.max()  # from near-duplicates to clearly different people
    # float64 on both sides: measured relative difference 2e-16. The smallest defect to catch, a wrong constant
    # (no factor 2 in the denominator; sigma instead of 2 sigma), changes the values by 34% (64%).
    np.testing.assert_allclose(oks(reference, others, area, np.asarray(COCO17.sigmas)), expected, rtol=1e-9)
    assert oks(reference, reference[None], area, np.asarray(COCO17.sigmas))[0] == pytest.approx(1.0)
    # pycocotools counts only labelled ground-truth keypoints: `oks` on those alone agrees (as test_predict uses it).
    labelled = rng.random(17) < 0.6
    partial = reference.copy()
    partial[~labelled] = 0
    expected = pycocotools_oks(partial, others, area, scores)
    got = oks(reference[labelled], others[:, labelled], area, np.asarray(COCO17.sigmas)[labelled])
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_oks_nms_keeps_the_best_of_duplicates_and_distinct_people():
    rng = np.random.default_rng(1)
    person_a = rng.uniform(0, 100, (17, 3))
    person_b = person_a + [300, 0, 0]
    keypoints = np.stack([person_a, person_a + 0.5, person_b, person_a + 40])
    keep = oks_nms(keypoints, np.array([0.5, 0.9, 0.8, 0.7]), np.full(4, 5000.0), np.asarray(COCO17.sigmas), 0.9)
    assert list(keep) == [1, 2, 3]  # 0 duplicates 1 (lower score); 3 is far enough to be another person


def test_flipped_crop_maps_flip_back_onto_the_original_grid():
    """Outputs for a flipped crop, flipped back, line up with the unflipped outputs to well within 0.1 px.

    A network whose kernels are all left-right symmetric is flip-equivariant exactly when its feature grid maps
    onto itself under the flip, which crop widths of the form 8n+1 guarantee."""
    model = KeypointNet(num_keypoints=3, depth=18, output_stride=8, base_width=8)
    crops = jax.random.normal(jax.random.key(0), (1, 41, 33, 3))
    variables = model.init(jax.random.key(1), crops)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: (x + x[:, ::-1]) / 2 if path[-1].key == "kernel" and x.ndim == 4 else x, variables)
    heat = jax.nn.sigmoid(model.apply(variables, crops)["heatmap_logits"])
    flipped = model.apply(variables, crops[:, :, ::-1])
    heat_back, _ = flip_back(jax.nn.sigmoid(flipped["heatmap_logits"]), flipped["offsets"], jnp.arange(3))
    np.testing.assert_allclose(heat_back, heat, atol=1e-5)
    # Sub-pixel peak positions (softmax-weighted centroids) agree to well within 0.1 px.
    def centroid(maps):
        weights = jax.nn.softmax(50 * maps.reshape(-1, 3), axis=0).reshape(maps.shape[1:])
        ys, xs = np.mgrid[:maps.shape[1], :maps.shape[2]]
        return np.array([[(weights[..., k] * xs).sum(), (weights[..., k] * ys).sum()] for k in range(3)])
    assert np.abs(centroid(heat_back) - centroid(heat)).max() < 0.01


def test_flip_back_of_ideal_maps_recovers_the_keypoints():
    size, radius = (41, 33), 4.0
    keypoints = np.array([[[5.0, 10.0, 2], [20.0, 30.0, 2], [12.0, 3.0, 2]]], np.float32)
    permutation = np.array([0, 2, 1])  # keypoints 1 and 2 are a left/right pair
    mirrored = keypoints.copy()
    mirrored[..., 0] = size[1] - 1 - keypoints[..., 0]
    mirrored = mirrored[:, permutation]
    targets = make_targets(mirrored, size, radius)
    heat, offsets = flip_back(targets["heatmaps"], targets["offsets"], permutation)
    original = make_targets(keypoints, size, radius)
    np.testing.assert_array_equal(heat, original["heatmaps"])
    np.testing.assert_allclose(offsets, original["offsets"], atol=1e-6)
    np.testing.assert_allclose(decode(hough_vote(heat, offsets, radius))[0, :, :2], keypoints[0, :, :2])


def definition_crop_point(box, point):
    """Where image `point` (x, y) lands in the 353x257 test-time crop of `box` (x, y, w, h), written out from the
    crop definition (`hvpose.data.crops` module docstring), not computed by it: the box is extended in width or
    height to the crop's aspect ratio 353:257, enlarged 1.25x about its centre, and its centre goes to the crop
    centre ((257 - 1) / 2, (353 - 1) / 2) with 257 crop pixels across the extended, enlarged width."""
    x, y, w, h = box
    extended_width = w if h <= w * 353 / 257 else h * 257 / 353
    scale = 257 / (1.25 * extended_width)
    return np.array([128.0, 176.0]) + (np.asarray(point) - [x + w / 2, y + h / 2]) * scale


def test_eval_chain_with_ideal_maps_scores_ap_1(shared_data, tmp_path):
    """Crops of GT boxes -> ideal heatmaps/offsets of the GT keypoints in each crop -> voting -> decoding ->
    image coordinates -> rescoring -> OKS-NMS -> COCOeval: everything except the network. Where each GT keypoint
    lies in its crop comes from the crop definition, so a wrong enlargement or crop centre in the pipeline moves
    the decoded keypoints off the ground truth instead of cancelling out."""
    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path)
    boxes = gt_boxes(prepared)
    loader, count = eval_loader(prepared, boxes, 4)
    people = []
    persons = iter([p for i in prepared.image_ids for p in prepared.dataset.persons[i] if p.is_training_target])
    for batch in loader:  # in box order: one process, no shuffling
        for i in np.nonzero(batch["valid"])[0]:
            person = next(persons)
            assert person.image_id == batch["image_id"][i]
            np.testing.assert_allclose(batch["bbox"][i], person.bbox, rtol=1e-6)
            crop_keypoints = person.keypoints.copy()
            labelled = crop_keypoints[:, 2] > 0
            crop_keypoints[labelled, :2] = definition_crop_point(person.bbox, crop_keypoints[labelled, :2])
            # The pipeline's crop -> image matrix takes them back to the ground truth: float32 matrices on
            # 640-pixel images, measured error 4e-5 px. The smallest defects to catch, a crop centre off by one
            # pixel or an enlargement of 1.2 instead of 1.25, move keypoints by >= 1 px (up to ~20 px).
            back = to_image(crop_keypoints[None].astype(np.float64), batch["crop_to_image"][i:i + 1])[0]
            np.testing.assert_allclose(back[labelled, :2], person.keypoints[labelled, :2], atol=0.01)
            targets = make_targets(crop_keypoints[None], (353, 257), 25.0)
            decoded = np.asarray(decode(hough_vote(targets["heatmaps"], targets["offsets"], 25.0)))
            image_keypoints = to_image(decoded.astype(np.float64), batch["crop_to_image"][i:i + 1])[0]
            score = instance_scores(image_keypoints[None, :, 2], np.ones(1), 0.2, True)[0]
            people.append(PredictedPerson(box=person.bbox, box_score=1.0, score=score, keypoints=image_keypoints,
                                          image_id=int(batch["image_id"][i])))
    assert len(people) == count == 12
    kept = suppress(people, COCO17.sigmas, 0.9)
    stats = coco_evaluate(prepared.dataset.raw, to_coco_results(kept, 1), COCO17.sigmas, verbose=False)
    assert stats["AP"] > 0.95, stats  # unlabelled keypoints decode somewhere; they do not count in OKS


def test_picture_leaves_out_people_under_the_minimum_score(shared_data, tmp_path):
    """`draw_predictions(..., min_score)` draws exactly the people scoring at least `min_score` (the evaluation
    picture without the many low-scoring detections), on the same images: when nobody does, the bare images."""
    from hvpose import visualize
    from hvpose.data.images import decode_image
    from hvpose.evaluate import draw_predictions

    sample = shared_data / "coco_sample"
    prepared = prepare(sample / "test_coco.json", sample / "images", tmp_path)
    people = []
    for image_id in prepared.image_ids:  # each image's first person confident, the others not
        persons = [p for p in prepared.dataset.persons[image_id] if p.is_training_target]
        people += [PredictedPerson(box=p.bbox, box_score=1.0, score=0.05 if n else 0.9, image_id=p.image_id,
                                   keypoints=np.concatenate([p.keypoints[:, :2], np.ones((17, 1))], axis=1))
                   for n, p in enumerate(persons)]
    confident = [p for p in people if p.score >= 0.5]
    assert len(confident) < len(people)
    drawn = draw_predictions(prepared, people, COCO17, 4, 0.3, min_score=0.5)
    np.testing.assert_array_equal(drawn, draw_predictions(prepared, confident, COCO17, 4, 0.3))
    assert np.any(drawn != draw_predictions(prepared, people, COCO17, 4, 0.3))
    # Nobody confident: the same images, bare.
    records = prepared.record_index()
    image_ids = list(dict.fromkeys(p.image_id for p in people))[:4]
    bare = visualize.grid([decode_image(prepared.source[records[i]]["image"]) for i in image_ids])
    np.testing.assert_array_equal(draw_predictions(prepared, people, COCO17, 4, 0.3, min_score=0.95), bare)
