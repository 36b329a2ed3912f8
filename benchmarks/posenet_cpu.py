"""Benchmark: PoseNet's network on this CPU under hvpose (XLA) against LiteRT, and the depthwise formulations.

    python benchmarks/posenet_cpu.py [--repeats 20] [--out benchmarks/results/posenet_cpu-<machine>.json]

Rows (median latency of one 353x481 image, Coral's input size, after a warm-up; compilation excluded):
  * litert-uint8: Coral's uint8 TFLite PoseNet (MobileNetV1 0.75, ../shared/data/posenet/coral_*) under the LiteRT
    interpreter (`ai-edge-litert`, XNNPACK, every core): what a user would pick instead on a CPU. The baseline.
  * hvpose-shifted / hvpose-grouped: the same architecture in hvpose (Google's released TF.js weights, float32,
    heads on the feature grid as `PoseNetPeople` runs it), depthwise layers as shifted slices (the CPU default,
    `hvpose.ops.depthwise`) or as XLA's grouped convolution (what `nn.Conv(feature_group_count=C)` gives);
    also at batch 8 of 353x257 crops (the top-down pass), per crop.
  * layer-*: one depthwise layer (8 x 45 x 33 x 384, 3x3) in each formulation.
LiteRT computes in uint8 integers, hvpose in float32: the comparison is what each runtime makes of the same
architecture on the same CPU, not the same arithmetic.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from machine import best_time, machine_info, median_time, write_results

SHARED = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                     / "data"))
POSENET = SHARED / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"
CORAL = SHARED / "posenet/coral_mobilenet075_353x481/posenet_mobilenet_v1_075_353_481_quant.tflite"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"posenet_cpu-{machine['name']}.json"
    from hvpose.ops.depthwise import depthwise_conv
    from hvpose.pretrained import load_posenet_tfjs

    rng = np.random.default_rng(0)
    rows = []

    def row(name: str, seconds: float, per: str, baseline: float | None) -> None:
        rows.append({"method": name, "ms": round(seconds * 1e3, 2), "per": per,
                     "time_vs_litert": None if baseline is None else round(seconds / baseline, 2)})
        ratio = "" if baseline is None else f"{seconds / baseline:6.2f}x LiteRT's time"
        print(f"{name:<28} {seconds * 1e3:9.2f} ms per {per:<6} {ratio}", flush=True)

    image = rng.integers(0, 256, (1, 353, 481, 3), np.uint8)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(CORAL), num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]

    def litert() -> None:
        interpreter.set_tensor(input_index, image)
        interpreter.invoke()

    baseline = median_time(litert, args.repeats)
    row("litert-uint8", baseline, "image", baseline)

    model, variables = load_posenet_tfjs(POSENET)
    crops = jnp.asarray(rng.integers(0, 256, (8, 353, 257, 3), np.uint8))
    single = jnp.asarray(image)
    for implementation in ("shifted", "grouped"):
        grid = model.clone(map_stride=model.output_stride, depthwise=implementation)
        apply = jax.jit(grid.apply)
        row(f"hvpose-{implementation}", median_time(functools.partial(apply, variables, single), args.repeats),
            "image", baseline)
        batch = median_time(functools.partial(apply, variables, crops), max(3, args.repeats // 4))
        row(f"hvpose-{implementation}-batch8", batch / 8, "crop", None)

    x = jnp.asarray(rng.normal(size=(8, 45, 33, 384)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 1, 384)).astype(np.float32))
    for implementation in ("shifted", "grouped"):
        layer = jax.jit(functools.partial(depthwise_conv, implementation=implementation))
        row(f"layer-{implementation}", best_time(functools.partial(layer, x, w), 10), "layer", None)
    write_results(out, "posenet_cpu", vars(args), machine, rows)


if __name__ == "__main__":
    main()
