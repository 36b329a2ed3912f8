"""Benchmark: training crops per second per worker process, split into decode, warp and the rest.

    python benchmarks/input_pipeline.py [--annotations A.json --images DIR] [--crops 400] [--out FILE.json]

Defaults to the real COCO sample beside the checkout (../shared/data/coco_sample: 640x425-640x429 JPEGs).
Three parts, all in one run:
  1. Stages: the pipeline's own functions on one process, timed one by one per crop: read (ArrayRecord
     lookup), decode (OpenCV, at 1/2-1/8 size when the crop shrinks the person), warp (one affine
     resampling to 353x257), rest (geometry sampling, keypoints, inverse transform, colour jitter when on).
  2. Libraries: the same decode and warp with Pillow, and OpenCV at full resolution, on the same crops:
     the reason OpenCV with DCT-domain reduction is used.
  3. End to end: `train_loader` batches of 16 with 0 (in-process), 1 and 2 worker processes: the seconds to the
     first batch (a worker process's start-up: it imports grain, JAX and TFDS) and the crops per second after it;
     crops per second per worker is the throughput divided by max(workers, 1).
  4. Read options, in-process (the demo's `worker_count` 0): grain's default 16 reading threads with 500 records
     ahead against reading in place (`config.data.read_threads` / `read_buffer` 0) and one thread 16 ahead; wall
     and CPU milliseconds per batch of 16 (the CPU time of all of this process's threads: on a machine whose cores
     the train step keeps busy, that is what a batch costs the step) after 600 elements (the read-ahead filled),
     median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import grain
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from hvpose.data.augment import Augmentation, color_jitter, sample_geometry
from hvpose.data.crops import (
    CROP_SIZE,
    crop_transform,
    invert_transform,
    scale_for_reduction,
    transform_keypoints,
    warp,
)
from hvpose.data.images import decode_image, reduction_for_scale
from hvpose.data.pipeline import TrainPersons, close_loader, train_loader
from hvpose.data.tfds_coco import prepare
from hvpose.keypoints import COCO17
from machine import machine_info

REPO = pathlib.Path(__file__).resolve().parents[1]


def stage_times(persons: TrainPersons, count: int, augment: Augmentation) -> dict[str, float]:
    """Mean seconds per crop of each stage of `TrainCrop`, run exactly as the pipeline runs it."""
    rng = np.random.default_rng(0)
    perm = COCO17.flip_permutation()
    totals = dict.fromkeys(("read", "decode", "warp", "rest"), 0.0)
    for i in range(count):
        t0 = time.perf_counter()
        element = persons[i % len(persons)]
        t1 = time.perf_counter()
        geometry = sample_geometry(tuple(element["bbox"]), rng, augment, CROP_SIZE)
        matrix = crop_transform(geometry, CROP_SIZE)
        reduction = reduction_for_scale(CROP_SIZE[1] / geometry.size[0])
        t2 = time.perf_counter()
        image = decode_image(element["image"], reduction)
        t3 = time.perf_counter()
        crop = warp(image, scale_for_reduction(matrix, reduction), CROP_SIZE)
        t4 = time.perf_counter()
        keypoints = transform_keypoints(matrix, element["keypoints"])
        if geometry.flip:
            keypoints = keypoints[perm]
        color_jitter(crop, rng, augment.color_jitter)
        invert_transform(matrix)
        t5 = time.perf_counter()
        totals["read"] += t1 - t0
        totals["decode"] += t3 - t2
        totals["warp"] += t4 - t3
        totals["rest"] += (t2 - t1) + (t5 - t4)
    return {key: value / count for key, value in totals.items()}


def library_times(persons: TrainPersons, count: int) -> dict[str, float]:
    """Mean seconds per crop of alternative decoders and warpers on the same crops."""
    rng = np.random.default_rng(0)
    augment = Augmentation()
    totals: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        totals[name] = totals.get(name, 0.0) + time.perf_counter() - start
        return out

    for i in range(count):
        element = persons[i % len(persons)]
        geometry = sample_geometry(tuple(element["bbox"]), rng, augment, CROP_SIZE)
        matrix = crop_transform(geometry, CROP_SIZE)
        reduction = reduction_for_scale(CROP_SIZE[1] / geometry.size[0])
        data = element["image"]
        full = timed("decode opencv full", decode_image, data, 1)
        timed("decode opencv reduced", decode_image, data, reduction)
        timed("decode pillow full", pillow_decode, data, 1)
        timed("decode pillow draft", pillow_decode, data, reduction)
        timed("warp opencv", warp, full, matrix, CROP_SIZE)
        timed("warp pillow", pillow_warp, Image.fromarray(full), invert_transform(matrix))
    return {key: value / count for key, value in totals.items()}


def pillow_decode(data: bytes, reduction: int) -> np.ndarray:
    """Pillow's decode, with its JPEG draft mode (DCT scaling) when `reduction` > 1."""
    image = Image.open(io.BytesIO(data))
    if reduction > 1:
        image.draft("RGB", (image.width // reduction, image.height // reduction))
    return np.asarray(image.convert("RGB"))


def pillow_warp(image: Image.Image, crop_to_image: np.ndarray) -> np.ndarray:
    """Pillow's bilinear affine warp (it takes the output -> input matrix)."""
    return np.asarray(image.transform((CROP_SIZE[1], CROP_SIZE[0]), Image.Transform.AFFINE,
                                      tuple(crop_to_image.reshape(-1)), Image.Resampling.BILINEAR))


def loader_throughput(prepared: Any, workers: int, crops: int, batch: int = 16) -> tuple[float, float]:
    """(Seconds from `iter` to the first batch: the workers' start-up, crops per second after it)."""
    start = time.perf_counter()
    iterator = iter(train_loader(prepared, batch, seed=0, worker_count=workers))
    next(iterator)
    first_batch = time.perf_counter() - start
    start = time.perf_counter()
    seen = 0
    while seen < crops:
        seen += len(next(iterator)["image"])
    seconds = time.perf_counter() - start
    close_loader(iterator)
    return first_batch, seen / seconds


READ_BASELINE = "grain's default: 16 threads, 500 ahead (baseline)"
READ_OPTIONS = {
    READ_BASELINE: None,
    "in place: 0 threads (the demo's)": grain.ReadOptions(num_threads=0, prefetch_buffer_size=0),
    "1 thread, 16 ahead": grain.ReadOptions(num_threads=1, prefetch_buffer_size=16),
}


def read_option_costs(prepared: Any, crops: int, rounds: int = 3, batch: int = 16) -> dict[str, dict[str, float]]:
    """Section 4: {form: wall and CPU seconds per batch, CPU time against the baseline's}, in-process, in the
    steady state: each form first consumes more elements than grain's default reads ahead (500), so its threads
    read one record per element consumed while timed, as in a long training run."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in READ_OPTIONS}
    for _ in range(rounds):  # interleaved, so drift hits every form alike
        for name, options in READ_OPTIONS.items():
            iterator = iter(train_loader(prepared, batch, seed=0, read_options=options))
            for _ in range(-(-600 // batch)):  # past the read-ahead's first filling
                next(iterator)
            count = max(crops // batch, 1)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(count):
                next(iterator)
            times[name].append(((time.perf_counter() - wall) / count, (time.process_time() - cpu) / count))
            close_loader(iterator)
    base_cpu = np.array([cpu for _, cpu in times[READ_BASELINE]])
    return {name: {"wall_seconds_per_batch": float(np.median([wall for wall, _ in rows])),
                   "cpu_seconds_per_batch": float(np.median([cpu for _, cpu in rows])),
                   "cpu_vs_baseline": float(np.median(np.array([cpu for _, cpu in rows]) / base_cpu))}
            for name, rows in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sample = REPO.parent / "shared" / "data" / "coco_sample"
    parser.add_argument("--annotations", default=str(sample / "test_coco.json"))
    parser.add_argument("--images", default=str(sample / "images"))
    parser.add_argument("--crops", type=int, default=400, help="crops timed per measurement")
    parser.add_argument("--out", type=pathlib.Path, default=None)
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or REPO / "benchmarks" / "results" / f"input_pipeline-{machine['name']}.json"
    with tempfile.TemporaryDirectory() as cache:
        prepared = prepare(args.annotations, args.images, cache)
        persons = TrainPersons(prepared)
        stage_times(persons, 20, Augmentation())  # warm-up
        stages = {
            "paper augmentation": stage_times(persons, args.crops, Augmentation()),
            "rotation+scale+colour": stage_times(persons, args.crops, Augmentation(rotation=40, scale_jitter=0.3,
                                                                                   color_jitter=0.4)),
        }
        libraries = library_times(persons, max(args.crops // 2, 20))
        loaders = {workers: loader_throughput(prepared, workers, args.crops) for workers in (0, 1, 2)}
        read_options = read_option_costs(prepared, args.crops)

    print(f"Input pipeline on {len(persons)} persons from {args.annotations} "
          f"({machine['cpu']}, {machine['cores']} cores)")
    print(f"\n{'stages (ms per crop)':24} {'read':>6} {'decode':>7} {'warp':>6} {'rest':>6} {'total':>7} "
          f"{'crops/s':>8}")
    for name, times in stages.items():
        total = sum(times.values())
        print(f"{name:24} " + " ".join(f"{1e3 * times[k]:6.2f}" for k in ("read", "decode", "warp", "rest"))
              + f" {1e3 * total:7.2f} {1 / total:8.1f}")
    print(f"\n{'library (ms per crop)':24} {'ms':>6} {'vs chosen':>9}")
    chosen = {"decode": libraries["decode opencv reduced"], "warp": libraries["warp opencv"]}
    for name, seconds in libraries.items():
        print(f"{name:24} {1e3 * seconds:6.2f} {seconds / chosen[name.split()[0]]:8.2f}x")
    print(f"\n{'train_loader workers':24} {'first batch s':>13} {'crops/s':>8} {'per worker':>10}")
    for workers, (first_batch, rate) in loaders.items():
        print(f"{workers:<24} {first_batch:13.2f} {rate:8.1f} {rate / max(workers, 1):10.1f}")
    print(f"\n{'read options, in-process (ms per batch of 16)':52} {'wall':>6} {'CPU':>6} {'CPU vs default':>14}")
    for name, row in read_options.items():
        print(f"{name:52} {1e3 * row['wall_seconds_per_batch']:6.1f} {1e3 * row['cpu_seconds_per_batch']:6.1f} "
              f"{row['cpu_vs_baseline']:13.2f}x")
    results = {
        "benchmark": "input_pipeline", "machine": machine, "config": vars(args) | {"out": str(out)},
        "persons": len(persons),
        "stages_seconds_per_crop": stages,
        "stages_crops_per_second": {name: 1 / sum(t.values()) for name, t in stages.items()},
        "libraries_seconds_per_crop": libraries,
        "loader_first_batch_seconds": {str(w): first for w, (first, _) in loaders.items()},
        "loader_crops_per_second": {str(w): rate for w, (_, rate) in loaders.items()},
        "loader_crops_per_second_per_worker": {str(w): rate / max(w, 1) for w, (_, rate) in loaders.items()},
        "read_options_in_process": read_options,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
