"""Where keypoint AP is lost: per-person OKS, occluded against visible keypoints, mirror-wise people, and the AP
an oracle would reach with the visible (or the occluded) keypoints exactly right.

    .venv/bin/python scripts/error_analysis.py GROUND_TRUTH.json WORKDIR/eval/results.json

Each labelled ground-truth person is matched to the prediction (same image) with the highest OKS. "Mirror-wise"
counts people whose prediction fits better by more than 0.1 OKS with left and right swapped. The oracle rows
re-run COCOeval after replacing the chosen keypoints of each matched prediction by the ground truth, keeping the
scores, so they bound what better localisation of those keypoints alone could give. COCO-17 keypoints and sigmas.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from hvpose.evaluate import coco_evaluate
from hvpose.keypoints import COCO17
from hvpose.ops.nms import oks


def match(ground_truth: dict, results: list[dict]) -> list[tuple[dict, int, float]]:
    """(annotation, index of its best prediction, OKS) for every person with labelled keypoints."""
    sigmas = np.asarray(COCO17.sigmas)
    by_image: dict[int, list[int]] = {}
    for index, result in enumerate(results):
        by_image.setdefault(result["image_id"], []).append(index)
    matches = []
    for annotation in ground_truth["annotations"]:
        truth = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        labelled = truth[:, 2] > 0
        candidates = by_image.get(annotation["image_id"], [])
        if not labelled.any() or not candidates:
            continue
        predictions = np.stack([np.asarray(results[i]["keypoints"], np.float64).reshape(-1, 3) for i in candidates])
        similarity = oks(truth[labelled], predictions[:, labelled], annotation["area"], sigmas[labelled])
        best = int(np.argmax(similarity))
        matches.append((annotation, candidates[best], float(similarity[best])))
    return matches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ground_truth", help="COCO-format keypoint annotations")
    parser.add_argument("results", help="COCO keypoint results (e.g. WORKDIR/eval/results.json)")
    args = parser.parse_args()
    ground_truth = json.load(open(args.ground_truth))
    results = json.load(open(args.results))
    sigmas = np.asarray(COCO17.sigmas)
    flip = COCO17.flip_permutation()
    matches = match(ground_truth, results)
    similarity = np.array([m[2] for m in matches])
    print(f"{len(matches)} labelled people; mean OKS of their best prediction {similarity.mean():.3f}")
    print("  OKS >= " + "  ".join(f"{t:.2f}: {np.mean(similarity >= t):.3f}" for t in (0.5, 0.75, 0.85, 0.9, 0.95)))
    per_keypoint, visibility, mirrored = [], [], 0
    for annotation, index, value in matches:
        truth = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
        prediction = np.asarray(results[index]["keypoints"], np.float64).reshape(-1, 3)
        labelled = truth[:, 2] > 0
        swapped = oks(truth[labelled], prediction[flip][None, labelled], annotation["area"], sigmas[labelled])[0]
        mirrored += swapped > value + 0.1
        distance2 = ((prediction[:, :2] - truth[:, :2]) ** 2).sum(-1)
        per_keypoint.append(np.exp(-distance2 / (2 * (2 * sigmas) ** 2 * annotation["area"]))[labelled])
        visibility.append(truth[labelled, 2])
    per_keypoint, visibility = np.concatenate(per_keypoint), np.concatenate(visibility)
    print(f"  mirror-wise people: {mirrored / len(matches):.3f}")
    for flag, name in ((2, "visible"), (1, "occluded")):
        chosen = visibility == flag
        print(f"  {name:8} keypoints: {chosen.mean():.1%} of labelled, mean keypoint OKS "
              f"{per_keypoint[chosen].mean():.3f}")
    base = coco_evaluate(ground_truth, results, sigmas, verbose=False)
    print(f"AP {base['AP']:.3f} (AP50 {base['AP50']:.3f}, AP75 {base['AP75']:.3f})")
    for flag, name in ((2, "visible"), (1, "occluded")):
        oracle = [dict(r) for r in results]
        for annotation, index, _ in matches:
            truth = np.asarray(annotation["keypoints"], np.float64).reshape(-1, 3)
            keypoints = np.asarray(oracle[index]["keypoints"], np.float64).reshape(-1, 3)
            keypoints[truth[:, 2] == flag, :2] = truth[truth[:, 2] == flag, :2]
            oracle[index]["keypoints"] = keypoints.reshape(-1).tolist()
        stats = coco_evaluate(ground_truth, oracle, sigmas, verbose=False)
        print(f"oracle with the {name} keypoints exact: AP {stats['AP']:.3f} (AP50 {stats['AP50']:.3f}, "
              f"AP75 {stats['AP75']:.3f})")


if __name__ == "__main__":
    main()
