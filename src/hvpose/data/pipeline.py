"""grain input pipelines: person crops for training, box crops for evaluation, global sharded batches.

Training: one element per person with labelled keypoints that is not a crowd region. A seeded `IndexSampler`
shuffles them (a new order each epoch), each JAX process reads only its share (`ShardByJaxProcess`), worker
processes decode and warp, and `Batch` makes fixed-shape per-process batches. Per-element randomness comes from
grain's `RandomMap`, seeded by the element's position in the global order, so the batches do not depend on the
number of workers and a restored iterator (`get_state`/`set_state`, or grain's orbax checkpoint handler)
continues with exactly the batches an uninterrupted run would have seen.

Evaluation: one element per box (ground-truth persons or detections), in order, padded with `valid=False`
elements to a whole number of global batches so every process runs the same number of steps.

`hvpose.sharding.global_batch` turns each process's numpy batch into `jax.Array`s sharded over the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from hvpose.data.augment import Augmentation, color_jitter, sample_geometry
from hvpose.data.coco import Detection
from hvpose.data.crops import CROP_SIZE, TEST_ENLARGE, crop_box, invert_transform, render_crop, transform_keypoints
from hvpose.data.images import DEFAULT_MAX_PIXELS, decode_image
from hvpose.data.tfds_coco import PreparedDataset
from hvpose.errors import ConfigError, DataError


class TrainPersons:
    """Random-access source with one element per training person of a prepared dataset."""

    def __init__(self, prepared: PreparedDataset):
        records, persons = [], []
        for record, image_id in enumerate(prepared.image_ids):
            for j, person in enumerate(prepared.dataset.persons[image_id]):
                if person.is_training_target:
                    records.append(record)
                    persons.append(j)
        if not records:
            raise DataError(f"{prepared.dataset.path}: no person with labelled keypoints (the split is empty)")
        self._source = prepared.source
        self._records = np.asarray(records, np.int64)
        self._persons = np.asarray(persons, np.int64)
        self._name = f"TrainPersons({prepared.directory}, {len(records)} persons)"

    def __repr__(self) -> str:  # grain checks a restored state against repr(source)
        return self._name

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self._source[int(self._records[index])]
        j = int(self._persons[index])
        people = record["persons"]
        return {
            "image": record["image"],
            "bbox": np.asarray(people["bbox"][j], np.float32),
            "keypoints": np.asarray(people["keypoints"][j], np.float32),
            "image_id": np.int64(record["image_id"]),
            "person_id": np.int64(people["id"][j]),
        }


def gt_boxes(prepared: PreparedDataset) -> list[Detection]:
    """Ground-truth boxes for evaluation: the non-crowd persons with labelled keypoints, score 1."""
    return [Detection(image_id, person.bbox, 1.0) for image_id in prepared.image_ids
            for person in prepared.dataset.persons[image_id] if person.is_training_target]


class EvalBoxes:
    """Random-access source with one element per box, padded with invalid elements to a multiple of `pad_to`."""

    def __init__(self, prepared: PreparedDataset, boxes: Sequence[Detection], pad_to: int = 1):
        index = prepared.record_index()
        kept = [box for box in boxes if box.image_id in index]  # boxes on skipped images cannot be cropped
        if not kept:
            raise DataError(f"{prepared.dataset.path}: no boxes to evaluate (the split is empty)")
        self._source = prepared.source
        self._records = np.asarray([index[box.image_id] for box in kept], np.int64)
        self._boxes = np.asarray([box.bbox for box in kept], np.float32)
        self._scores = np.asarray([box.score for box in kept], np.float32)
        self.num_boxes = len(kept)
        self._length = -(-self.num_boxes // pad_to) * pad_to
        self._name = f"EvalBoxes({prepared.directory}, {self.num_boxes} boxes padded to {self._length})"

    def __repr__(self) -> str:
        return self._name

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= self.num_boxes:
            return {"image": b"", "bbox": np.zeros(4, np.float32), "score": np.float32(0), "image_id": np.int64(-1),
                    "valid": np.bool_(False)}
        record = self._source[int(self._records[index])]
        return {"image": record["image"], "bbox": self._boxes[index], "score": self._scores[index],
                "image_id": np.int64(record["image_id"]), "valid": np.bool_(True)}


@dataclasses.dataclass
class TrainCrop(grain.transforms.RandomMap):
    """Person element -> augmented crop with keypoints in crop pixels and the crop -> image matrix."""

    augment: Augmentation
    flip_permutation: np.ndarray
    crop_size: tuple[int, int] = CROP_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        geometry = sample_geometry(tuple(element["bbox"]), rng, self.augment, self.crop_size)
        crop, matrix = render_crop(functools.partial(decode_image, element["image"], max_pixels=self.max_pixels),
                                   geometry, self.crop_size)
        keypoints = transform_keypoints(matrix, element["keypoints"])
        if geometry.flip:
            keypoints = keypoints[self.flip_permutation]
        return {
            "image": color_jitter(crop, rng, self.augment.color_jitter),
            "keypoints": keypoints,
            "crop_to_image": invert_transform(matrix).astype(np.float32),
            "image_id": element["image_id"],
            "person_id": element["person_id"],
        }


@dataclasses.dataclass
class EvalCrop(grain.transforms.Map):
    """Box element -> crop at the test-time enlargement, with the crop -> image matrix."""

    crop_size: tuple[int, int] = CROP_SIZE
    enlarge: float = TEST_ENLARGE
    max_pixels: int = DEFAULT_MAX_PIXELS

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        out = {"bbox": element["bbox"], "score": element["score"], "image_id": element["image_id"],
               "valid": element["valid"]}
        if not element["valid"]:
            return {**out, "image": np.zeros((*self.crop_size, 3), np.uint8),
                    "crop_to_image": np.zeros((2, 3), np.float32)}
        decode = functools.partial(decode_image, element["image"], max_pixels=self.max_pixels)
        crop, crop_to_image = crop_box(decode, tuple(element["bbox"]), self.crop_size, self.enlarge)
        return {**out, "image": crop, "crop_to_image": crop_to_image}


def close_loader(iterator: Any) -> None:
    """Stops a loader's iterator now and releases its shared memory (idempotent; any `worker_count`).

    Closes the grain pipeline (worker processes and prefetch threads; batches still in flight are unlinked), then
    collects garbage, which also makes JAX drop host buffers it aliased without a copy (on CPU, batches given to
    `jax.make_array_from_process_local_data`; the caller drops its own reference to the last batch first), and
    waits for grain's background thread that unlinks the shared memory of deleted arrays, so a process that exits
    right after loses none of those unlinks (otherwise Python's resource tracker reports them as leaked).

    grain 0.2 has no public way to do this: `DataLoaderIterator` has no `close()` (the `DatasetIterator` it wraps
    has one), and nothing waits for `SharedMemoryArray`'s unlink pool; a future public `close()` is preferred.
    """
    close = getattr(iterator, "close", None)
    if close is None:
        close = getattr(getattr(iterator, "_iterator", None), "close", None)
    if close is not None:
        close()
    gc.collect()
    pool = getattr(grain.multiprocessing.SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:  # one thread, tasks in order: once this one has run, the queued unlinks have too
        try:
            pool.apply(int)
        except ValueError:  # already shut down (interpreter exit)
            pass


def _ensure_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app (notebooks, tests) accept their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _process_batch_size(global_batch_size: int, shard: grain.sharding.ShardOptions) -> int:
    if global_batch_size % shard.shard_count:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the {shard.shard_count} "
                         "processes")
    return global_batch_size // shard.shard_count


# grain's own ReadOptions defaults: what a config without `read_threads` / `read_buffer` (older ones) gets.
GRAIN_READ_THREADS = 16
GRAIN_READ_BUFFER = 500


def data_read_options(data: ml_collections.ConfigDict) -> grain.ReadOptions:
    """grain's `ReadOptions` from `config.data.read_threads` and `config.data.read_buffer`: how many threads read
    records (the ArrayRecord lookup and its parsing; the crop transforms run where the batches are made) ahead, and
    how many they keep ready, in each worker process (in this one when `worker_count` is 0). Threads hide the
    latency of remote storage (a gs:// cache); with the transforms in this process on a few cores they take CPU
    time from the train step (`benchmarks/input_pipeline.py`, section 4). Both 0 reads each record when it is
    needed; threads without a buffer are refused, since grain would then read in place without saying so."""
    threads = data.get("read_threads", GRAIN_READ_THREADS)
    buffer = data.get("read_buffer", GRAIN_READ_BUFFER)
    if isinstance(threads, int) and isinstance(buffer, int) and threads > 0 and buffer == 0:
        raise ConfigError(f"config.data.read_threads={threads} reads nothing ahead with config.data.read_buffer=0: "
                          "give a buffer (grain's default is 500), or read_threads=0")
    try:
        return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=buffer)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.data.read_threads / read_buffer: {error}") from None


def train_loader(prepared: PreparedDataset, global_batch_size: int, *, seed: int,
                 augment: Augmentation = Augmentation(), crop_size: tuple[int, int] = CROP_SIZE,
                 worker_count: int = 0, num_epochs: int | None = None,
                 shard_options: grain.sharding.ShardOptions | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 read_options: grain.ReadOptions | None = None) -> grain.DataLoader:
    """Endless (or `num_epochs`) shuffled training batches of this process's share of the persons.

    Each batch is a dict of numpy arrays: `image` (b, H, W, 3) uint8, `keypoints` (b, K, 3) float32 in crop
    pixels, `crop_to_image` (b, 2, 3), `image_id`, `person_id`; b = global_batch_size / process count.
    `iter(loader)` gives a `grain.DataLoaderIterator` whose `get_state()` / `set_state()` checkpoint the position.
    `read_options` (grain's defaults when None; `data_read_options` builds them from a config) never changes
    the batches.
    """
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    _ensure_flags_parsed()
    source = TrainPersons(prepared)
    transform = TrainCrop(augment, prepared.dataset.keypoint_set.flip_permutation(), tuple(crop_size), max_pixels)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=True, num_epochs=num_epochs,
                                          seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count, read_options=read_options,
                            operations=[transform, grain.transforms.Batch(_process_batch_size(global_batch_size,
                                                                                              shard),
                                                                          drop_remainder=True)])


def eval_loader(prepared: PreparedDataset, boxes: Sequence[Detection], global_batch_size: int, *,
                crop_size: tuple[int, int] = CROP_SIZE, worker_count: int = 0,
                shard_options: grain.sharding.ShardOptions | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS,
                read_options: grain.ReadOptions | None = None) -> tuple[grain.DataLoader, int]:
    """One pass over all boxes in fixed-shape batches; returns (loader, number of real boxes).

    Batches hold `image`, `crop_to_image`, `bbox`, `score`, `image_id` and `valid` (False for padding).
    `read_options` as in `train_loader`.
    """
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=False)
    _ensure_flags_parsed()
    batch = _process_batch_size(global_batch_size, shard)
    source = EvalBoxes(prepared, boxes, pad_to=global_batch_size)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=False, num_epochs=1)
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              read_options=read_options,
                              operations=[EvalCrop(tuple(crop_size), TEST_ENLARGE, max_pixels),
                                          grain.transforms.Batch(batch, drop_remainder=True)])
    return loader, source.num_boxes
