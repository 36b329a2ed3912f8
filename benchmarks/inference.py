"""Benchmark: batched inference, network to keypoints, and the Predictor on a real photo; ratios in the same run.

    python benchmarks/inference.py [--batch 8] [--repeats 3] [--out benchmarks/results/inference-<machine>.json]

Rows (best of `--repeats` after a warm-up; compilation excluded), on 353x257 crops:
  * network: PoseNet's MobileNet (real weights from ../shared/data) and a ResNet at output stride 8 (`--depth`,
    random weights), each with the decoders `argmax_offset-grid` (argmax + offset read off the feature grid, as
    `Predictor.from_posenet_tfjs` runs it: the baseline), `argmax_offset` on maps upsampled to every crop pixel,
    `hough` (voting at full crop resolution), `hough` with the flip test (two network passes), and
    `argmax_offset-grid` with the flip test; all as `hvpose.inference` runs them;
  * predictor: `hvpose.Predictor` on a real COCO photo with its people's boxes, image in, people out (cropping on
    the host included), then the same call by stage: boxes (PoseNet's own multi-person decoding of the whole photo,
    the predictor's box source, in the `predictor-detect` row), crops (decode and warp on the host), network +
    decoding + back to the image + instance scores (`people_in_batch`), OKS-NMS; people per second end to end.
Ratios are to the baseline row of the same network, since this machine's absolute speed is noisy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hvpose
from hvpose.allocator import reuse_freed_memory
from hvpose.data.images import decode_image
from hvpose.inference import as_boxes, model_for_decoder, network_fn
from hvpose.keypoints import COCO17
from hvpose.models.initialize import initial_variables
from hvpose.models.keypoint_net import KeypointNet
from hvpose.pretrained import load_posenet_tfjs
from machine import best_time, machine_info, write_results

SHARED = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                     / "data"))
POSENET = SHARED / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


def predictor_stage_rows(predictor: hvpose.Predictor, photo: pathlib.Path, boxes: list, repeats: int
                         ) -> list[dict]:
    """The Predictor's call on one photo, stage by stage (each timed alone, best of `repeats`), and end to end
    with the boxes from its own box source (PoseNet's multi-person decoding)."""
    pipeline = predictor.pipeline
    encoded = photo.read_bytes()
    pixels = decode_image(encoded)
    scored = as_boxes(boxes)
    batches = list(pipeline.image_batches(encoded, scored))
    people = [p for batch in batches for p in pipeline.people_in_batch(batch)]
    stages = {
        "boxes: PoseNet's own decoding": lambda: predictor.box_source(pixels),
        "crops (host decode + warp)": lambda: list(pipeline.image_batches(encoded, scored)),
        "network + decoding + to image + scores": lambda: [pipeline.people_in_batch(b) for b in batches],
        "OKS-NMS": lambda: pipeline.suppress(people),
    }
    rows = []
    for stage, fn in stages.items():
        seconds = best_time(fn, repeats)
        rows.append({"what": "predictor-stage", "network": "posenet-mobilenet075-os16", "decoder": stage,
                     "flip_test": True, "seconds": seconds, "crops_per_second": len(boxes) / seconds,
                     "time_vs_baseline": None, "boxes": len(boxes)})
    found = predictor(photo)
    seconds = best_time(lambda: predictor(photo), repeats)
    rows.append({"what": "predictor-detect", "network": "posenet-mobilenet075-os16", "decoder": "boxes from PoseNet",
                 "flip_test": True, "seconds": seconds, "crops_per_second": len(found) / seconds,
                 "time_vs_baseline": None, "boxes": len(found)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--depth", type=int, default=50, help="ResNet depth of the second network")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/inference-<machine>.json)")
    args = parser.parse_args()
    malloc_reused = reuse_freed_memory()  # before JAX runs, as python -m hvpose.main does
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"inference-{machine['name']}.json"
    rng = np.random.default_rng(0)
    crops = jnp.asarray(rng.integers(0, 256, (args.batch, 353, 257, 3), np.uint8))

    posenet, posenet_variables = load_posenet_tfjs(POSENET)
    resnet = KeypointNet(depth=args.depth, output_stride=8, stride_on="3x3", conv_bias=False, preprocess="caffe")
    resnet_variables = initial_variables(resnet, jax.random.key(0), crops[:1])
    networks = {"posenet-mobilenet075-os16": (posenet, posenet_variables),
                f"resnet{args.depth}-os8": (resnet, resnet_variables)}
    # (decoder, flip test, maps on the feature grid): argmax + offset can read the grid without upsampling.
    # The baseline is the cheapest honest decoding: argmax + offset on the feature grid, no flip test.
    variants = [("argmax_offset", False, True), ("argmax_offset", False, False), ("hough", False, False),
                ("hough", True, False), ("argmax_offset", True, True)]
    rows = []
    for name, (model, variables) in networks.items():
        baseline = None
        for decoder, flip, on_grid in variants:
            network = model_for_decoder(model, decoder) if on_grid else model.clone(map_stride=1)
            infer = jax.jit(network_fn(network, COCO17.flip_permutation() if flip else None, 25.0, decoder))
            seconds = best_time(functools.partial(infer, variables, crops), args.repeats)
            baseline = baseline or seconds
            rows.append({"what": "network", "network": name, "decoder": decoder + ("-grid" if on_grid else ""),
                         "flip_test": flip, "seconds": seconds, "crops_per_second": args.batch / seconds,
                         "time_vs_baseline": seconds / baseline})

    photo = SHARED / "coco_sample/images/000000196141.jpg"
    annotations = json.loads((SHARED / "coco_sample/test_coco.json").read_text())["annotations"]
    boxes = [a["bbox"] for a in annotations if a["image_id"] == 196141]
    predictor = hvpose.Predictor.from_posenet_tfjs(str(POSENET), batch_size=args.batch)
    seconds = best_time(lambda: predictor(photo, boxes), args.repeats)
    rows.append({"what": "predictor", "network": "posenet-mobilenet075-os16",
                 "decoder": predictor.pipeline.settings.decoder,
                 "flip_test": True, "seconds": seconds, "crops_per_second": len(boxes) / seconds,
                 "time_vs_baseline": None, "boxes": len(boxes)})
    rows += predictor_stage_rows(predictor, photo, boxes, args.repeats)

    print(f"Inference, batch {args.batch} x 353x257 ({machine['cpu']}, {machine['cores']} cores, jax "
          f"{jax.__version__} on {machine['jax_backend']}), best of {args.repeats}")
    print(f"{'what':16} {'network':26} {'decoder / stage':38} {'flip':5} {'seconds':>8} {'crops/s':>8} "
          f"{'vs base':>8}")
    for row in rows:
        ratio = f"{row['time_vs_baseline']:7.2f}x" if row["time_vs_baseline"] else "       -"
        print(f"{row['what']:16} {row['network']:26} {row['decoder']:38} {str(row['flip_test']):5} "
              f"{row['seconds']:8.3f} {row['crops_per_second']:8.1f} {ratio}")
    write_results(out, "inference", vars(args) | {"malloc_reused": malloc_reused}, machine, rows)


if __name__ == "__main__":
    main()
