"""Benchmark: the jitted Hough-voting kernel against numpy (np.bincount) on the same inputs, in the same run.

    python benchmarks/voting.py [--batch 8] [--repeats 5] [--out benchmarks/results/voting-<host>.json]

Times are the best of `--repeats` runs after one warm-up (compilation excluded). Two input kinds: `random`
(uniform heatmaps, offsets ~ N(0, 10 px): votes spread everywhere) and `peaked` (the targets of random keypoints
plus 1 px noise: votes pile onto few pixels, as from a trained network). Rows:
  * numpy-one-pass: the fastest numpy form found (the baseline): float32 arithmetic, the four corners' flat
    indices and weights concatenated into one `np.bincount` (which accumulates in float64 whatever its input);
  * numpy-reference: `hvpose.ops.voting.hough_vote_numpy`, the test reference (float64, one bincount per corner);
  * jax: `hough_vote` on device-resident inputs (how it runs after the network);
  * jax-from-numpy: `hough_vote` on numpy inputs, host-to-device copy included.
Speed-ups are ratios to the baseline measured in the same run, since this machine's absolute speed is noisy.
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from hvpose.ops.voting import hough_vote, hough_vote_numpy
from hvpose.targets import make_targets
from machine import best_time, machine_info, write_results


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=353)
    parser.add_argument("--width", type=int, default=257)
    parser.add_argument("--keypoints", type=int, default=17)
    parser.add_argument("--radius", type=float, default=25.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/voting-<machine>.json)")
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"voting-{machine['name']}.json"
    rng = np.random.default_rng(0)
    shape = (args.batch, args.height, args.width, args.keypoints)
    rows = []
    for kind in ("random", "peaked"):
        heatmaps, offsets = make_inputs(kind, *shape, args.radius, rng)
        on_device = jnp.asarray(heatmaps), jnp.asarray(offsets)
        implementations = {
            "numpy-one-pass": functools.partial(hough_vote_numpy_one_pass, heatmaps, offsets, args.radius),
            "numpy-reference": functools.partial(hough_vote_numpy, heatmaps, offsets, args.radius),
            "jax": functools.partial(hough_vote, *on_device, args.radius),
            "jax-from-numpy": functools.partial(hough_vote, heatmaps, offsets, args.radius),
        }
        reference = hough_vote_numpy(heatmaps, offsets, args.radius)
        baseline = None
        for name, fn in implementations.items():
            seconds = best_time(fn, args.repeats)
            baseline = baseline or seconds
            error = float(np.abs(np.asarray(fn()) - reference).max() / np.abs(reference).max())
            rows.append({"inputs": kind, "implementation": name, "seconds": seconds,
                         "crops_per_second": args.batch / seconds, "speedup_vs_numpy": baseline / seconds,
                         "max_error_relative_to_peak": error})

    print(f"Hough voting, batch {args.batch} x {args.height}x{args.width} x K={args.keypoints}, "
          f"best of {args.repeats} ({machine['cpu']}, {machine['cores']} cores, jax {jax.__version__} "
          f"on {machine['jax_backend']})")
    print(f"{'inputs':8} {'implementation':16} {'seconds':>9} {'crops/s':>9} {'vs numpy':>9}")
    for row in rows:
        print(f"{row['inputs']:8} {row['implementation']:16} {row['seconds']:9.4f} {row['crops_per_second']:9.1f} "
              f"{row['speedup_vs_numpy']:8.2f}x")
    write_results(out, "voting", vars(args), machine, rows)


if __name__ == "__main__":
    main()
