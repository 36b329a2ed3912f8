"""Benchmark: the jitted, sharded train step (forward, loss, backward, AdamW update) of real configs.

    python benchmarks/train_step.py [--config configs/demo.py] [--batch 16] [--repeats 5] [--paper]
        [--out benchmarks/results/train_step-<machine>.json]

Rows vary one setting of the config at a time against the config as it is (the baseline, same run):
`loss.map_stride` (the loss on every crop pixel, the paper's, against every 2nd/4th) and `model.dtype`
(float32 against bfloat16). `--paper` adds `configs/coco.py` itself (ResNet-101 at
output stride 8, 353x257, bfloat16) at a small batch: the step the paper's training repeats half a million
times. Times are the best of `--repeats` steps after compilation, on a fixed random batch already on the devices.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from hvpose import sharding
from hvpose.data.crops import check_crop_size
from hvpose.models.keypoint_net import KeypointNet
from hvpose.train import init_state, jit_train_step, learning_rate_schedule, make_optimizer
from machine import machine_info, write_results

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(path: pathlib.Path) -> Any:
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def step_seconds(config: Any, batch_size: int, repeats: int) -> float:
    config.train.batch_size = batch_size
    crop = check_crop_size(**config.crop, output_stride=config.model.output_stride)
    model = KeypointNet(num_keypoints=17, map_stride=config.loss.map_stride, **config.model)
    optimizer = make_optimizer(config.train)
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(0, [crop[1], crop[0]], (batch_size, 17, 2)),
                                rng.integers(0, 3, (batch_size, 17, 1))], -1).astype(np.float32)
    with jax.set_mesh(mesh):
        state = jax.device_put(init_state(model, optimizer, crop, 0), sharding.replicated(mesh))
        step = jit_train_step(model, optimizer, learning_rate_schedule(config.train), config.loss.to_dict(), mesh,
                              state)
        batch = jax.device_put({"image": rng.integers(0, 256, (batch_size, *crop, 3), np.uint8),
                                "keypoints": keypoints}, sharding.batch_sharded(mesh))
        state, metrics = step(state, batch)  # compile
        jax.block_until_ready(metrics)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=pathlib.Path, default=REPO / "configs" / "demo.py")
    parser.add_argument("--batch", type=int, default=16, help="global batch (divisible by the device count)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paper", action="store_true", help="also time configs/coco.py (slow on a CPU)")
    parser.add_argument("--paper_batch", type=int, default=2)
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/train_step-<machine>.json)")
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"train_step-{machine['name']}.json"
    base = load_config(args.config)
    variants: list[tuple[str, dict[str, Any]]] = [("as configured", {})]
    for stride in (1, 2, 4):
        if stride != base.loss.map_stride and base.model.output_stride % stride == 0:
            variants.append((f"loss.map_stride={stride}", {"loss.map_stride": stride}))
    other_dtype = "bfloat16" if base.model.dtype == "float32" else "float32"
    variants.append((f"model.dtype={other_dtype}", {"model.dtype": other_dtype}))
    rows = []
    baseline = None
    for label, overrides in variants:
        config = load_config(args.config)
        for key, value in overrides.items():
            section, field = key.split(".")
            config[section][field] = value
        seconds = step_seconds(config, args.batch, args.repeats)
        baseline = baseline or seconds
        rows.append({"config": args.config.name, "variant": label, "batch": args.batch, "seconds": seconds,
                     "crops_per_second": args.batch / seconds, "time_vs_baseline": seconds / baseline})
    if args.paper:
        seconds = step_seconds(load_config(REPO / "configs" / "coco.py"), args.paper_batch, max(2, args.repeats // 2))
        rows.append({"config": "coco.py", "variant": "as configured", "batch": args.paper_batch, "seconds": seconds,
                     "crops_per_second": args.paper_batch / seconds, "time_vs_baseline": None})

    print(f"Train step ({machine['cpu']}, {machine['cores']} cores, {machine['device_count']} "
          f"{machine['jax_backend']} device(s), jax {jax.__version__}), best of {args.repeats}")
    print(f"{'config':10} {'variant':30} {'batch':>5} {'seconds':>8} {'crops/s':>8} {'vs base':>8}")
    for row in rows:
        ratio = f"{row['time_vs_baseline']:7.2f}x" if row["time_vs_baseline"] else "       -"
        print(f"{row['config']:10} {row['variant']:30} {row['batch']:5d} {row['seconds']:8.3f} "
              f"{row['crops_per_second']:8.1f} {ratio}")
    write_results(out, "train_step", vars(args), machine, rows)


if __name__ == "__main__":
    main()
