"""Benchmark: the jitted Hough-voting kernel against numpy (np.bincount) on the same inputs, in the same run.

    python benchmarks/voting.py [--batch 8] [--repeats 5] [--out benchmarks/results/voting-<host>.json]

Times are the best of `--repeats` runs after one warm-up (compilation excluded). Two input kinds: `random`
(uniform heatmaps, offsets ~ N(0, 10 px): votes spread everywhere) and `peaked` (the targets of random keypoints
plus 1 px noise: votes pile onto few pixels, as from a trained network). Rows:
  * numpy-float32: `hough_vote_numpy(..., dtype=float32)`, the fastest numpy form (the baseline);
  * jax: `hough_vote` on device-resident inputs (how it runs after the network);
  * jax-from-numpy: `hough_vote` on numpy inputs, host-to-device copy included.
Speed-ups are ratios to the baseline measured in the same run, since this machine's absolute speed is noisy.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from machine import best_time, machine_info, write_results  # noqa: E402

from hvpose.ops.voting import hough_vote, hough_vote_numpy  # noqa: E402
from hvpose.targets import make_targets  # noqa: E402


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
        baseline = best_time(lambda: hough_vote_numpy(heatmaps, offsets, args.radius, np.float32), args.repeats)
        timings = {
            "numpy-float32": baseline,
            "jax": best_time(lambda: hough_vote(*on_device, args.radius), args.repeats),
            "jax-from-numpy": best_time(lambda: hough_vote(heatmaps, offsets, args.radius), args.repeats),
        }
        reference = hough_vote_numpy(heatmaps, offsets, args.radius)
        error = float(np.abs(np.asarray(hough_vote(*on_device, args.radius)) - reference).max()
                      / np.abs(reference).max())
        for name, seconds in timings.items():
            rows.append({"inputs": kind, "implementation": name, "seconds": seconds,
                         "crops_per_second": args.batch / seconds, "speedup_vs_numpy": baseline / seconds,
                         "max_error_relative_to_peak": error if name.startswith("jax") else None})

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
