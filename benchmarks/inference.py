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
  * flip_test: Hough decoding with the flip test as `hvpose.inference.network_fn` runs it (both passes on the
    feature grid, offsets averaged there: `network_maps`) against the previous formulation (each pass upsampled
    to every crop pixel, then mapped back and averaged: the baseline), interleaved, for the two networks above and
    the demo's keypoint network at its evaluation batch and crop; `max_difference` compares their keypoints.
Ratios are to the baseline row of the same network, since this machine's absolute speed is noisy.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hvpose
from hvpose.allocator import reuse_freed_memory
from hvpose.configs import demo
from hvpose.data.images import decode_image
from hvpose.inference import as_boxes, model_for_decoder, network_fn
from hvpose.keypoints import COCO17
from hvpose.models.initialize import initial_variables
from hvpose.models.keypoint_net import KeypointNet
from hvpose.ops.flip import flip_back
from hvpose.ops.voting import decode_hough
from hvpose.pretrained import load_posenet_tfjs
from machine import best_time, machine_info, run_times, write_results

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


def previous_flip_test(model: Any, permutation: np.ndarray, radius: float) -> Any:
    """The flip test as `hvpose.inference` ran it before `network_maps` (the baseline of the `flip_test` rows):
    each pass's whole output upsampled to every crop pixel, its heatmaps through the sigmoid, the mirrored pass
    mapped back there, the two averaged, then Hough voting."""
    model = model.clone(map_stride=1)

    def infer(variables: Any, crops: jax.Array) -> jax.Array:
        outputs = model.apply(variables, crops, train=False)
        flipped = model.apply(variables, crops[:, :, ::-1], train=False)
        heatmaps_f, offsets_f = flip_back(jax.nn.sigmoid(flipped["heatmap_logits"]), flipped["offsets"],
                                          jnp.asarray(permutation))
        return decode_hough((jax.nn.sigmoid(outputs["heatmap_logits"]) + heatmaps_f) / 2,
                            (outputs["offsets"] + offsets_f) / 2, radius)

    return infer


def flip_test_rows(networks: dict[str, tuple[Any, Any, jax.Array, float]], rounds: int) -> list[dict]:
    """Section `flip_test`: Hough decoding with the flip test as `network_fn` runs it (`network_maps`: both passes
    on the feature grid, offsets averaged there, a third fewer maps upsampled) against `previous_flip_test`, the
    two interleaved (`rounds` paired ratios, median); `max_difference` is the largest difference of their
    keypoints (x, y in crop pixels, probability)."""
    rows = []
    permutation = COCO17.flip_permutation()
    for name, (model, variables, crops, radius) in networks.items():
        forms = {"previous (baseline)": jax.jit(previous_flip_test(model, permutation, radius)),
                 "feature grid (network_maps)": jax.jit(network_fn(model.clone(map_stride=1), permutation, radius))}
        outputs = {form: np.asarray(fn(variables, crops)) for form, fn in forms.items()}
        times: dict[str, list[float]] = {form: [] for form in forms}
        for _ in range(rounds):  # interleaved, so drift hits both alike
            for form, fn in forms.items():
                times[form] += run_times(functools.partial(fn, variables, crops), 1)
        base = np.array(times["previous (baseline)"])
        for form in forms:
            rows.append({"what": "flip_test", "network": name, "decoder": form, "flip_test": True,
                         "seconds": float(np.median(times[form])), "crops_per_second": len(crops) /
                         float(np.median(times[form])), "time_vs_baseline": float(np.median(np.array(times[form]) /
                                                                                             base)),
                         "max_difference": float(np.abs(outputs[form] - outputs["previous (baseline)"]).max())})
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

    # The demo's keypoint network (quarter-width ResNet-18, output stride 16) at its evaluation batch and crop.
    demo_config = demo.get_config()
    demo_net = KeypointNet(num_keypoints=17, **demo_config.model)
    demo_crops = jnp.asarray(rng.integers(0, 256, (demo_config.eval.batch_size, demo_config.crop.height,
                                                   demo_config.crop.width, 3), np.uint8))
    rows += flip_test_rows({
        "posenet-mobilenet075-os16": (posenet, posenet_variables, crops, 25.0),
        f"resnet{args.depth}-os8": (resnet, resnet_variables, crops, 25.0),
        "demo-resnet18-w16-os16": (demo_net, initial_variables(demo_net, jax.random.key(0), demo_crops[:1]),
                                   demo_crops, demo_config.loss.radius)}, max(args.repeats, 10))

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
              f"{row['seconds']:8.3f} {row['crops_per_second']:8.1f} {ratio}"
              + (f"  max difference {row['max_difference']:.1e}" if "max_difference" in row else ""))
    write_results(out, "inference", vars(args) | {"malloc_reused": malloc_reused}, machine, rows)


if __name__ == "__main__":
    main()
