"""Which instance score ranks people best: keypoint AP of the same predictions under each scoring rule.

    .venv/bin/python scripts/instance_scores.py [--demo WORKDIR] [--posenet MODEL_JSON] [--coco DIR]
        [--out benchmarks/results/instance_scores.json]

The network runs once per dataset and box set (`hvpose.inference.Pipeline.people_in_batch`, before OKS-NMS); each
rule then rescores the same people, suppresses duplicates and runs COCOeval. Keypoint scores are the heatmap
probabilities at the decoded keypoints, so every rule's score is in [0, 1]:

  paper        mean of all K keypoint scores (the paper's rule, with probabilities as keypoint scores)
  paper x box  the same times the box score
  mmpose       mean of the keypoint scores above 0.2, times the box score (mmpose's top-down default)
  mmpose, no box  the same without the box score
  weighted x box  the confidence-weighted mean sum(p^2) / sum(p) of all keypoint scores, times the box score
                  (hvpose's default: each keypoint counts as much as the network believes it; no threshold)
  weighted, no box  the same without the box score

Datasets: the demo's held-out split with a trained demo checkpoint (`--demo`, ground-truth boxes, so the box score
is 1) and the real COCO sample with PoseNet's weights (`--posenet`), with ground-truth boxes and with the real
detections of a person detector (AP 56). With 12 labelled COCO people one person moves AP by several points.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import tempfile

import numpy as np

from hvpose import checkpoints
from hvpose.configs import posenet as posenet_config
from hvpose.data.crops import check_crop_size
from hvpose.data.pipeline import data_read_options, eval_loader
from hvpose.data.splits import prepare_split
from hvpose.evaluate import coco_evaluate, dataset_boxes, to_coco_results
from hvpose.inference import InferenceSettings, Pipeline, instance_scores, suppress
from hvpose.models.keypoint_net import KeypointNet

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", REPO.parent / "shared" / "data"))
# name: (keypoint_threshold, use_box_score, keypoint_average), as in config.inference
RULES = {"paper": (0.0, False, "mean"), "paper x box": (0.0, True, "mean"), "mmpose": (0.2, True, "mean"),
         "mmpose, no box": (0.2, False, "mean"), "weighted x box": (0.0, True, "weighted"),
         "weighted, no box": (0.0, False, "weighted")}


def people_before_nms(config, model, variables, prepared, boxes, radius):
    crop = check_crop_size(**config.crop, output_stride=model.output_stride)
    pipeline = Pipeline(model, variables, prepared.dataset.keypoint_set, crop, radius,
                        InferenceSettings(**config.inference), batch_size=config.eval.batch_size)
    loader, _ = eval_loader(prepared, boxes, config.eval.batch_size, crop_size=crop, worker_count=0,
                            max_pixels=config.data.max_pixels, read_options=data_read_options(config.data))
    return [person for batch in loader for person in pipeline.people_in_batch(batch)]


def score_rules(name, people, prepared, nms_threshold):
    sigmas = prepared.dataset.keypoint_set.sigmas
    rows = []
    for rule, (threshold, use_box, average) in RULES.items():
        scores = instance_scores(np.stack([p.keypoints[:, 2] for p in people]), np.array([p.box_score for p in people]),
                                 threshold, use_box, average)
        rescored = [dataclasses.replace(p, score=float(s)) for p, s in zip(people, scores, strict=True)]
        kept = suppress(rescored, sigmas, nms_threshold)
        stats = coco_evaluate(prepared.dataset.raw, to_coco_results(kept, prepared.dataset.category_id), sigmas,
                              verbose=False)
        rows.append({"data": name, "rule": rule, "people": len(people), **{k: stats[k] for k in ("AP", "AP50", "AR")}})
        print(f"{name:38} {rule:15} {stats['AP']:.3f} {stats['AP50']:.3f} {stats['AR']:.3f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", help="a `make demo` workdir (its checkpoint and held-out split)")
    parser.add_argument("--posenet", default=str(SHARED / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"))
    parser.add_argument("--coco", default=str(SHARED / "coco_sample"), help="folder of test_coco.json and images/")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" / "instance_scores.json")
    args = parser.parse_args()
    print(f"{'data':38} {'rule':15} {'AP':>5} {'AP50':>5} {'AR':>5}")
    rows = []
    if args.demo:
        directory = os.path.join(args.demo, "checkpoints")
        config, keypoint_set = checkpoints.read_config(directory)
        model = KeypointNet(num_keypoints=keypoint_set.num_keypoints, **config.model)
        crop = check_crop_size(**config.crop, output_stride=model.output_stride)
        variables, step = checkpoints.restore_model_variables(directory, model, crop)
        prepared = prepare_split(config.data, "val", args.demo, config.seed)
        people = people_before_nms(config, model, variables, prepared, dataset_boxes("gt", prepared),
                                   config.loss.radius)
        rows += score_rules(f"demo held-out, gt boxes (step {step})", people, prepared,
                            config.inference.oks_nms_threshold)
    if args.posenet:
        from hvpose.pretrained import load_posenet_tfjs

        model, variables = load_posenet_tfjs(args.posenet)
        config = posenet_config.get_config()
        config.data.val.annotations = os.path.join(args.coco, "test_coco.json")
        config.data.val.images = os.path.join(args.coco, "images")
        with tempfile.TemporaryDirectory() as workdir:
            prepared = prepare_split(config.data, "val", workdir)
            for boxes, label in (("gt", "gt boxes"), (os.path.join(args.coco, "test_coco_det_AP_H_56.json"),
                                                     "detector boxes (person AP 56)")):
                for decoder in ("hough", "argmax_offset"):
                    config.inference.decoder = decoder
                    people = people_before_nms(config, model, variables, prepared, dataset_boxes(boxes, prepared),
                                               config.loss.radius)
                    rows += score_rules(f"COCO sample, PoseNet {decoder}, {label}", people, prepared,
                                        config.inference.oks_nms_threshold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    inputs = {"demo": "a configs/demo.py workdir" if args.demo else None,  # file names only: no machine's paths
              "posenet": os.path.basename(args.posenet or ""), "coco": os.path.basename(args.coco)}
    args.out.write_text(json.dumps({"script": "scripts/instance_scores.py", "commit": commit, "inputs": inputs,
                                    "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
