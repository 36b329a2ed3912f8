"""Benchmark: every Hough-voting implementation against numpy (np.bincount) on the same inputs, in the same run;
the memory-bandwidth floor; voting's share of inference; the sparse variant's error on real predictions.

    python benchmarks/voting.py [--batch 8] [--repeats 5] [--network_depth 101] [--out ...voting-<machine>.json]

Times are the best of `--repeats` runs after one warm-up (compilation excluded). Two input kinds: `random`
(uniform heatmaps, offsets ~ N(0, 10 px): votes spread everywhere) and `peaked` (the targets of random keypoints
plus 1 px noise: votes pile onto few pixels, as from a trained network). Rows:
  * numpy-one-pass: the fastest numpy form found (the baseline): float32 arithmetic, the four corners' flat
    indices and weights concatenated into one `np.bincount` (which accumulates in float64 whatever its input);
  * numpy-reference: `hvpose.ops.voting.hough_vote_numpy`, the test reference (float64, one bincount per corner);
  * scatter, segment_sum, native: `hough_vote(method=...)` on device-resident inputs (how it runs after the
    network); native-1-thread is the native kernel limited to one thread;
  * auto-from-numpy: `hough_vote` as it picks by default, on numpy inputs, host-to-device copy included;
  * sparse-N: `hough_vote_sparse` (approximate: only the N most probable pixels of each map vote).
Every row reports its error against the float64 reference, relative to the maps' peak.

Bandwidth: the least memory an exact kernel must move is reading heatmaps and offsets (12 bytes per vote) and
writing the maps (4 bytes per pixel and keypoint). The floor is that at the copy bandwidth measured in the same run
(the better of numpy's copy and XLA's elementwise pass over a 256 MiB array); `of_floor` = floor / time.

Share of inference: voting (the default method) per crop against the forward pass per crop of the paper's
network (ResNet-`--network_depth` at output stride 8, maps upsampled to the crop; random weights, same cost),
timed in the same run, and the part of the forward pass that upsamples the maps (timed alone);
`--network_depth 0` skips it.

Sparse error: PoseNet (real weights, ../shared/data) on the real COCO sample's labelled people, cropped as
evaluation crops them; the keypoints decoded from exact and from sparse maps, compared.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import hvpose
from hvpose.inference import as_boxes
from hvpose.models.initialize import initial_variables
from hvpose.models.keypoint_net import KeypointNet
from hvpose.ops import native, voting
from hvpose.ops.upsample import resize_aligned_corners
from hvpose.ops.voting import decode, hough_vote, hough_vote_numpy, hough_vote_sparse
from hvpose.targets import make_targets
from machine import best_time, machine_info, write_results

SHARED = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                     / "data"))
POSENET = SHARED / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


def make_inputs(kind: str, batch: int, height: int, width: int, keypoints: int, radius: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if kind == "random":
        heatmaps = rng.random((batch, height, width, keypoints), dtype=np.float32)
        offsets = (rng.standard_normal((batch, height, width, keypoints, 2)) * 10).astype(np.float32)
        return heatmaps, offsets
    points = np.concatenate([rng.uniform(0, [width, height], (batch, keypoints, 2)),
                             np.full((batch, keypoints, 1), 2.0)], axis=-1).astype(np.float32)
    targets = make_targets(points, (height, width), radius)
    heatmaps = np.clip(np.asarray(targets["heatmaps"]) * 0.9 + rng.random(targets["heatmaps"].shape) * 0.1, 0, 1)
    offsets = np.asarray(targets["offsets"]) + rng.normal(0, 1.0, targets["offsets"].shape)
    return heatmaps.astype(np.float32), offsets.astype(np.float32)


def hough_vote_numpy_one_pass(heatmaps: np.ndarray, offsets: np.ndarray, radius: float) -> np.ndarray:
    """The voting formula in numpy, as fast as numpy allows: float32 throughout, one bincount for all corners."""
    batch, height, width, num_keypoints = heatmaps.shape
    vote_x = np.arange(width, dtype=np.float32)[None, None, :, None] + offsets[..., 0]
    vote_y = np.arange(height, dtype=np.float32)[None, :, None, None] + offsets[..., 1]
    x0, y0 = np.floor(vote_x), np.floor(vote_y)
    fx, fy = vote_x - x0, vote_y - y0
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    weight = heatmaps * np.float32(1 / (np.pi * radius * radius))
    channel = np.arange(batch, dtype=np.int32)[:, None, None, None] * num_keypoints + np.arange(num_keypoints,
                                                                                               dtype=np.int32)
    indices, weights = [], []
    for dy, dx, corner in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        row, col = y0 + dy, x0 + dx
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        indices.append(((channel * height + row) * width + col)[inside])
        weights.append((weight * corner)[inside])
    scores = np.bincount(np.concatenate(indices), weights=np.concatenate(weights),
                         minlength=batch * num_keypoints * height * width)
    return scores.astype(np.float32).reshape(batch, num_keypoints, height, width).transpose(0, 2, 3, 1)


def copy_bandwidth(repeats: int) -> dict[str, float]:
    """Bytes per second read plus written by a plain copy of 256 MiB: numpy's (one thread) and XLA's (x * 2)."""
    source = np.ones(64 * 2**20, np.float32)
    target = np.empty_like(source)
    numpy_seconds = best_time(lambda: np.copyto(target, source), repeats)
    on_device = jnp.asarray(source)
    double = jax.jit(lambda x: x * 2)
    xla_seconds = best_time(lambda: double(on_device), repeats)
    moved = 2 * source.nbytes
    return {"numpy_copy": moved / numpy_seconds, "xla_elementwise": moved / xla_seconds}


def kernel_rows(args: argparse.Namespace, bandwidth: float, rng: np.random.Generator) -> list[dict]:
    shape = (args.batch, args.height, args.width, args.keypoints)
    votes = int(np.prod(shape))
    min_bytes = votes * (4 + 8) + votes * 4
    floor_seconds = min_bytes / bandwidth
    has_native = native.ffi_target(voting.NATIVE_TARGET) is not None
    rows = []
    for kind in ("random", "peaked"):
        heatmaps, offsets = make_inputs(kind, *shape, args.radius, rng)
        on_device = jnp.asarray(heatmaps), jnp.asarray(offsets)
        implementations = {
            "numpy-one-pass": functools.partial(hough_vote_numpy_one_pass, heatmaps, offsets, args.radius),
            "numpy-reference": functools.partial(hough_vote_numpy, heatmaps, offsets, args.radius),
            "scatter": functools.partial(hough_vote, *on_device, args.radius, method="scatter"),
            "segment_sum": functools.partial(hough_vote, *on_device, args.radius, method="segment_sum"),
        }
        if has_native:
            one_thread = jax.jit(lambda h, o: voting._hough_vote_native(h, o, jnp.float32(args.radius)))
            os.environ["HVPOSE_NATIVE_THREADS"] = "1"
            jax.block_until_ready(one_thread(*on_device))  # traced (and compiled) with one thread
            del os.environ["HVPOSE_NATIVE_THREADS"]
            implementations["native"] = functools.partial(hough_vote, *on_device, args.radius, method="native")
            implementations["native-1-thread"] = functools.partial(one_thread, *on_device)
        implementations["auto-from-numpy"] = functools.partial(hough_vote, heatmaps, offsets, args.radius)
        for top_n in (n for n in args.sparse_sizes if n <= args.height * args.width):
            implementations[f"sparse-{top_n}"] = functools.partial(hough_vote_sparse, *on_device, args.radius,
                                                                   top_n=top_n)
        reference = hough_vote_numpy(heatmaps, offsets, args.radius)
        baseline = None
        for name, fn in implementations.items():
            seconds = best_time(fn, args.repeats)
            baseline = baseline or seconds
            error = float(np.abs(np.asarray(fn()) - reference).max() / np.abs(reference).max())
            exact = not name.startswith("sparse")
            rows.append({"section": "kernel", "inputs": kind, "implementation": name, "seconds": seconds,
                         "crops_per_second": args.batch / seconds, "speedup_vs_numpy": baseline / seconds,
                         "max_error_relative_to_peak": error, "exact": exact,
                         "min_bytes": min_bytes if exact else None,
                         "of_bandwidth_floor": floor_seconds / seconds if exact else None})
    return rows


def inference_share_row(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    """Voting against the paper's network forward pass, per crop, in the same run."""
    batch = 2
    crops = jnp.asarray(rng.integers(0, 256, (batch, args.height, args.width, 3), np.uint8))
    model = KeypointNet(depth=args.network_depth, output_stride=8, map_stride=1, stride_on="3x3", conv_bias=False,
                        preprocess="caffe", num_keypoints=args.keypoints)
    variables = initial_variables(model, jax.random.key(0), crops[:1])
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    network_seconds = best_time(lambda: forward(variables, crops), max(2, args.repeats // 2)) / batch
    # The forward pass includes upsampling the maps from the stride-8 grid to every crop pixel; timed alone here
    # (the difference of two ResNet-101 timings would drown in this machine's noise).
    grid = jnp.asarray(rng.random((batch, (args.height - 1) // 8 + 1, (args.width - 1) // 8 + 1, 3 * args.keypoints),
                                  dtype=np.float32))
    upsample = jax.jit(lambda maps: resize_aligned_corners(maps, (args.height, args.width)))
    upsampling_seconds = best_time(lambda: upsample(grid), args.repeats) / batch
    outputs = forward(variables, crops)
    heatmaps, offsets = jax.nn.sigmoid(outputs["heatmap_logits"]), outputs["offsets"]
    vote_seconds = best_time(lambda: decode(hough_vote(heatmaps, offsets, args.radius)), args.repeats) / batch
    return {"section": "inference_share", "network": f"resnet{args.network_depth}-os8", "batch": batch,
            "network_seconds_per_crop": network_seconds, "voting_seconds_per_crop": vote_seconds,
            "voting_share": vote_seconds / (network_seconds + vote_seconds),
            "upsampling_seconds_per_crop": upsampling_seconds}


def sparse_error_rows(args: argparse.Namespace) -> list[dict]:
    """Exact against sparse decoding of PoseNet's maps for the real COCO sample's labelled people."""
    coco = json.loads((SHARED / "coco_sample/test_coco.json").read_text())
    predictor = hvpose.Predictor.from_posenet_tfjs(str(POSENET), batch_size=args.batch)
    pipeline = predictor.pipeline
    model = pipeline.model.clone(map_stride=1)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    heat_batches, offset_batches = [], []
    for image in coco["images"]:
        boxes = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image["id"] and a["num_keypoints"] > 0]
        photo = (SHARED / "coco_sample/images" / image["file_name"]).read_bytes()
        for batch in pipeline.image_batches(photo, as_boxes(boxes)):
            outputs = forward(pipeline.variables, batch["image"])
            valid = batch["valid"]
            heat_batches.append(np.asarray(jax.nn.sigmoid(outputs["heatmap_logits"]))[valid])
            offset_batches.append(np.asarray(outputs["offsets"])[valid])
    heatmaps, offsets = np.concatenate(heat_batches), np.concatenate(offset_batches)
    exact = np.asarray(decode(hough_vote(heatmaps, offsets, args.radius)))
    probability = heatmaps.reshape(len(heatmaps), -1, heatmaps.shape[-1])
    index = (exact[..., 1] * heatmaps.shape[2] + exact[..., 0]).astype(np.int64)
    confident = np.take_along_axis(probability, index[:, None, :], axis=1)[:, 0, :] > 0.5
    rows = []
    for top_n in args.sparse_sizes:
        approximate = np.asarray(decode(hough_vote_sparse(heatmaps, offsets, args.radius, top_n=top_n)))
        distance = np.hypot(*(approximate[..., :2] - exact[..., :2]).transpose(2, 0, 1))
        rows.append({"section": "sparse_error", "top_n": top_n, "people": len(heatmaps),
                     "keypoints": int(distance.size), "moved_fraction": float((distance > 0).mean()),
                     "mean_px": float(distance.mean()), "max_px": float(distance.max()),
                     "confident_keypoints": int(confident.sum()),
                     "confident_moved_fraction": float((distance[confident] > 0).mean()),
                     "confident_max_px": float(distance[confident].max()) if confident.any() else 0.0})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=353)
    parser.add_argument("--width", type=int, default=257)
    parser.add_argument("--keypoints", type=int, default=17)
    parser.add_argument("--radius", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--network_depth", type=int, default=101, help="ResNet depth for the inference share; 0: skip")
    parser.add_argument("--sparse_sizes", type=lambda text: [int(n) for n in text.split(",") if n],
                        default=[256, 1024, 4096], help="top_n values of the sparse variant, comma-separated")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/voting-<machine>.json)")
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"voting-{machine['name']}.json"
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    bandwidth = copy_bandwidth(args.repeats)
    best_bandwidth = max(bandwidth.values())
    rows = [{"section": "bandwidth", **{f"{k}_bytes_per_second": v for k, v in bandwidth.items()}}]
    rows += kernel_rows(args, best_bandwidth, rng)
    if args.network_depth:
        rows.append(inference_share_row(args, rng))
    if POSENET.exists():
        rows += sparse_error_rows(args)
    else:
        print(f"(sparse error skipped: {POSENET} not found)")

    print(f"Hough voting, batch {args.batch} x {args.height}x{args.width} x K={args.keypoints}, best of "
          f"{args.repeats} ({machine['cpu']}, {machine['cores']} cores, jax {jax.__version__} on "
          f"{machine['jax_backend']}); copy bandwidth {best_bandwidth / 1e9:.1f} GB/s")
    print(f"{'inputs':8} {'implementation':16} {'seconds':>9} {'crops/s':>9} {'vs numpy':>9} {'of floor':>9} "
          f"{'error':>9}")
    for row in rows:
        if row["section"] == "kernel":
            floor = f"{row['of_bandwidth_floor']:8.1%}" if row["exact"] else "        -"
            print(f"{row['inputs']:8} {row['implementation']:16} {row['seconds']:9.4f} {row['crops_per_second']:9.1f} "
                  f"{row['speedup_vs_numpy']:8.2f}x {floor} {row['max_error_relative_to_peak']:9.1e}")
        elif row["section"] == "inference_share":
            print(f"\nper crop: {row['network']} forward {row['network_seconds_per_crop'] * 1e3:.0f} ms, voting + "
                  f"decoding {row['voting_seconds_per_crop'] * 1e3:.1f} ms: voting is {row['voting_share']:.1%} "
                  f"of the two; upsampling the maps to every crop pixel (in the forward pass) "
                  f"{row['upsampling_seconds_per_crop'] * 1e3:.1f} ms")
    sparse = [row for row in rows if row["section"] == "sparse_error"]
    if sparse:
        print(f"\nsparse voting on PoseNet's maps of {sparse[0]['people']} real COCO people "
              f"({sparse[0]['keypoints']} keypoints, {sparse[0]['confident_keypoints']} with probability > 0.5):")
        print(f"{'top_n':>6} {'moved':>7} {'mean px':>8} {'max px':>7} {'moved (p>0.5)':>14} {'max px (p>0.5)':>15}")
        for row in sparse:
            print(f"{row['top_n']:6d} {row['moved_fraction']:7.1%} {row['mean_px']:8.2f} {row['max_px']:7.1f} "
                  f"{row['confident_moved_fraction']:14.1%} {row['confident_max_px']:15.1f}")
    print(f"({time.perf_counter() - started:.0f} s)")
    write_results(out, "voting", vars(args), machine, rows)


if __name__ == "__main__":
    main()
