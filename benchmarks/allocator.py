"""Benchmark: the demo's train steps with glibc's own malloc settings against `hvpose.allocator`'s (large freed
blocks kept for reuse, as `python -m hvpose.main` runs on a CPU).

    python benchmarks/allocator.py [--rounds 3] [--warmup 10] [--steps 30] [--workloads keypoints,detector]
        [--out benchmarks/results/allocator-<machine>.json]

The setting binds when a process starts, so every measurement is its own process: for each round and workload, one
process with `HVPOSE_MALLOC=system` (the baseline) and one with `HVPOSE_MALLOC=reuse`, back to back, their order
alternating between rounds (the machine's drift falls on both). Each process builds the config's jitted train
step on a fixed random batch already on the devices (as `train_step.py` and `detector.py` do), runs `--warmup`
steps (compilation, and the heap growing to its working size), then times `--steps` steps, results awaited, and
reports the median step time, the page faults and the kernel (system) CPU time per step from `getrusage`, and the
process's peak resident memory. `time_vs_baseline` is the median over rounds of the paired ratio.

Workloads: `keypoints` (configs/demo.py, batch 16) and `detector` (configs/detector_demo.py, batch 16). A run of 3
rounds takes about 4 minutes on 2 CPU cores, mostly compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = {"keypoints": REPO / "configs" / "demo.py", "detector": REPO / "configs" / "detector_demo.py"}


def build_step(workload: str) -> tuple[Any, Any, Any]:
    """(jitted step, state, batch) of the workload's config at its training batch size, on a random batch."""
    import jax

    sys.path.insert(0, str(HERE))
    import train_step

    from hvpose.train import jit_train_step, learning_rate_schedule

    config = train_step.load_config(CONFIGS[workload])
    model, optimizer, objective, mesh, state, inputs = train_step.task_setup(config, config.train.batch_size)
    with jax.set_mesh(mesh):
        step = jit_train_step(model, optimizer, learning_rate_schedule(config.train), objective, mesh, state)
    return step, state, inputs


def child(workload: str, warmup: int, steps: int) -> dict[str, Any]:
    """One measurement, in this process: the allocator as `HVPOSE_MALLOC` says, then the timed steps."""
    from hvpose.allocator import reuse_freed_memory

    applied = reuse_freed_memory()  # first, as hvpose.main does
    import jax

    from hvpose import sharding

    step, state, batch = build_step(workload)
    with jax.set_mesh(sharding.make_mesh()):
        for _ in range(warmup):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        before = resource.getrusage(resource.RUSAGE_SELF)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "seconds": float(np.median(times)),
            "page_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
            "system_seconds_per_step": (after.ru_stime - before.ru_stime) / steps,
            "user_seconds_per_step": (after.ru_utime - before.ru_utime) / steps,
            "peak_resident_mib": after.ru_maxrss / 1024}  # ru_maxrss is in KiB on Linux


def run_child(workload: str, choice: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "HVPOSE_MALLOC": choice}
    command = [sys.executable, __file__, "--child", workload, "--warmup", str(args.warmup), "--steps",
               str(args.steps)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{workload} with HVPOSE_MALLOC={choice} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workloads", default="keypoints,detector")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    parser.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warmup, args.steps)))
        return
    workloads = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = sorted(set(workloads) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(sorted(CONFIGS))}")

    measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for round_index in range(args.rounds):
        for workload in workloads:
            order = ("system", "reuse") if round_index % 2 == 0 else ("reuse", "system")
            for choice in order:
                print(f"round {round_index + 1}/{args.rounds}: {workload}, HVPOSE_MALLOC={choice}", file=sys.stderr,
                      flush=True)
                measured.setdefault((workload, choice), []).append(run_child(workload, choice, args))

    rows = []
    for workload in workloads:
        baseline = measured[(workload, "system")]
        for choice, label in (("system", "glibc defaults (baseline)"), ("reuse", "hvpose.allocator")):
            runs = measured[(workload, choice)]
            ratios = [run["seconds"] / base["seconds"] for run, base in zip(runs, baseline, strict=True)]
            rows.append({
                "workload": workload, "config": str(CONFIGS[workload].relative_to(REPO)), "malloc": label,
                "applied": all(run["applied"] for run in runs),
                "seconds": float(np.median([run["seconds"] for run in runs])),
                "time_vs_baseline": float(np.median(ratios)), "ratios": ratios,
                **{key: float(np.median([run[key] for run in runs]))
                   for key in ("page_faults_per_step", "system_seconds_per_step", "user_seconds_per_step",
                               "peak_resident_mib")}})

    print(f"\n{'workload':10s} {'malloc':26s} {'step ms':>8s} {'vs base':>8s} {'faults/step':>12s} "
          f"{'sys ms/step':>12s} {'user ms/step':>13s} {'peak MiB':>9s}")
    for row in rows:
        print(f"{row['workload']:10s} {row['malloc']:26s} {row['seconds'] * 1e3:8.1f} {row['time_vs_baseline']:8.3f} "
              f"{row['page_faults_per_step']:12.0f} {row['system_seconds_per_step'] * 1e3:12.1f} "
              f"{row['user_seconds_per_step'] * 1e3:13.1f} {row['peak_resident_mib']:9.0f}")

    sys.path.insert(0, str(HERE))
    from machine import machine_info, write_results

    machine = machine_info()
    out = args.out or HERE / "results" / f"allocator-{machine['name']}.json"
    write_results(out, "allocator", vars(args), machine, rows)


if __name__ == "__main__":
    main()
