"""Benchmark: pose search, retrieval quality on real and synthetic people, and speed from 10^4 to 10^6 poses.

    python benchmarks/search.py [--sizes 10000,100000,1000000] [--queries 100]
        [--weights WORKDIR --annotations VAL.json --images IMAGES/] [--out benchmarks/results/search-<machine>.json]

Quality (Hit@1 and Hit@10: how often the person's own labelled pose is the nearest, or among the 10 nearest):
  * coco-sample-posenet: database = the 12 labelled people of ../shared/data/coco_sample; queries = PoseNet's
    (real weights) keypoints of the same people on their labelled boxes.
  * with --weights/--annotations/--images (e.g. a model trained by `make demo` and the demo's held-out split):
    database = the split's labelled people; queries = the trained model's keypoints of them on their boxes.
  Each with the weighted and the cosine distance, with and without mirrored matching.

Speed: databases of synthetic poses (the demo data's pose model, `hvpose.data.demo_data.sample_person`, 10^5
distinct poses, jittered copies beyond) with PoseNet-like confidences; queries are other draws, jittered. Per size
and distance, single-query latency (median over --queries) of
  * numpy: the same matrix products in numpy, then `argpartition` (the baseline);
  * exact: `hvpose.search.exact.ExactSearch` (jitted matmul + top-k, sharded over the devices);
  * faiss-ivf-nprobeN: `ApproximateSearch` (inverted file, N cells scanned), with recall@10 against exact;
and the exact search's throughput on one batch of all the queries.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from machine import machine_info, write_results

SHARED = pathlib.Path(os.environ.get("HVPOSE_SHARED_DATA", pathlib.Path(__file__).resolve().parents[2] / "shared"
                                     / "data"))
POSENET = SHARED / "posenet/tfjs_mobilenet075_stride16/model-stride16.json"


def hits(predictor, index, distances=("weighted", "cosine")) -> list[dict]:
    """Hit@1 / Hit@10 of each labelled person's own pose, queried with the predictor's keypoints on its box."""
    from hvpose.search import PoseSearch

    people = [predictor(index.photo_path(row), [index.boxes[row]])[0] for row in range(len(index))]
    keypoints, boxes = np.stack([p.keypoints for p in people]), np.stack([p.box for p in people])
    rows = []
    for distance in distances:
        search = PoseSearch(index, distance)
        for mirror in (False, True):
            found = search.query_many(keypoints, boxes, k=min(10, len(index)), mirror=mirror)
            ranks = [next((m.rank for m in matches if m.row == row), None) for row, matches in enumerate(found)]
            rows.append({"distance": distance, "mirror": mirror, "people": len(index),
                         "hit@1": float(np.mean([r == 1 for r in ranks])),
                         "hit@10": float(np.mean([r is not None for r in ranks]))})
    return rows


def synthetic_poses(count: int, rng: np.random.Generator, distinct: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(count, 17, 3) keypoints and (count, 4) boxes: demo-data people, jittered copies beyond `distinct`."""
    from hvpose.data.demo_data import sample_person

    distinct = min(count, distinct)
    joints = np.stack([sample_person(rng, 640, 480).joints for _ in range(distinct)])
    joints = joints[np.arange(count) % distinct]
    scale = np.ptp(joints, axis=1).max(1)[:, None, None]
    joints = joints + rng.normal(0, 0.02, joints.shape) * scale
    confidence = np.clip(rng.beta(4, 1.5, joints.shape[:2]), 0, 1)  # mostly confident, some below 0.1
    keypoints = np.concatenate([joints, confidence[..., None]], -1)
    lo, hi = joints.min(1), joints.max(1)
    return keypoints, np.concatenate([lo, hi - lo], 1)


def record(rows: list[dict], size: int, distance: str, method: str, latency: float, **extra) -> None:
    rows.append({"poses": size, "distance": distance, "method": method, "latency_ms": round(latency * 1e3, 3),
                 **extra})
    print(f"{size:>9} {distance:<9} {method:<20} {latency * 1e3:9.3f} ms "
          + " ".join(f"{k}={v}" for k, v in extra.items()), flush=True)


def median_latency(fn, queries, repeats: int) -> float:
    fn(queries.take(slice(0, 1)))  # compile / warm up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(queries.take(slice(i, i + 1)))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(sizes: list[int], repeats: int, rng: np.random.Generator, nprobes: list[int]) -> list[dict]:
    from hvpose.search.approximate import ApproximateSearch
    from hvpose.search.embedding import embed_poses
    from hvpose.search.exact import ExactSearch, NumpySearch

    start = time.perf_counter()
    all_keypoints, all_boxes = synthetic_poses(max(sizes), rng)
    print(f"sampled {len(all_keypoints)} poses in {time.perf_counter() - start:.0f} s", flush=True)
    query_keypoints, query_boxes = synthetic_poses(repeats, np.random.default_rng(12345), 1000)
    queries = embed_poses(query_keypoints, query_boxes)
    rows: list[dict] = []
    for size in sizes:
        database = embed_poses(all_keypoints[:size], all_boxes[:size])
        for distance in ("weighted", "cosine"):
            row = functools.partial(record, rows, size, distance)
            baseline = median_latency(functools.partial(NumpySearch(database, distance).search, k=10), queries,
                                      repeats)
            row("numpy", baseline, speedup=1.0)
            exact = ExactSearch(database, distance)
            latency = median_latency(functools.partial(exact.search, k=10), queries, repeats)
            _, truth, _ = exact.search(queries, 10)  # compiles for the batch shape
            started = time.perf_counter()
            exact.search(queries, 10)
            batched = (time.perf_counter() - started) / len(queries)
            row("exact", latency, speedup=round(baseline / latency, 2), batched_queries_per_s=round(1 / batched, 1))
            for nprobe in nprobes:
                started = time.perf_counter()
                approximate = ApproximateSearch(database, distance, "ivf", nprobe=nprobe)
                build = time.perf_counter() - started
                latency = median_latency(functools.partial(approximate.search, k=10), queries, repeats)
                _, found, _ = approximate.search(queries, 10)
                recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
                row(f"faiss-ivf-nprobe{nprobe}", latency, speedup=round(baseline / latency, 2),
                    recall_at_10=round(recall, 4), build_s=round(build, 1))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000", help="database sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per row (median)")
    parser.add_argument("--nprobe", default="8,32", help="faiss IVF cells scanned per query, comma-separated")
    parser.add_argument("--weights", help="a trained hvpose workdir for the second quality row")
    parser.add_argument("--annotations", help="COCO keypoints of the people for the second quality row")
    parser.add_argument("--images", help="their images")
    parser.add_argument("--skip_quality", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, default=None,
                        help="JSON results file (default: benchmarks/results/search-<machine>.json)")
    args = parser.parse_args()
    machine = machine_info()
    out = args.out or pathlib.Path(__file__).parent / "results" / f"search-{machine['name']}.json"
    import hvpose
    from hvpose.search import PoseIndex

    results: list[dict] = []
    if not args.skip_quality:
        sample = SHARED / "coco_sample"
        predictor = hvpose.Predictor.from_posenet_tfjs(str(POSENET), batch_size=4)
        index = PoseIndex.from_coco(sample / "test_coco.json", images=sample / "images")
        for row in hits(predictor, index):
            results.append({"kind": "quality", "data": "coco-sample-posenet", **row})
            print(results[-1], flush=True)
        if args.weights:
            predictor = hvpose.Predictor.from_checkpoint(args.weights)
            index = PoseIndex.from_coco(args.annotations, images=args.images)
            for row in hits(predictor, index):
                results.append({"kind": "quality", "data": f"{pathlib.Path(args.annotations).name}-trained", **row})
                print(results[-1], flush=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    for row in speed(sizes, args.queries, np.random.default_rng(0), [int(n) for n in args.nprobe.split(",")]):
        results.append({"kind": "speed", **row})
    write_results(out, "search", vars(args), machine, results)


if __name__ == "__main__":
    main()
