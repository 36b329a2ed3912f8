"""The datasets a config names: `config.data` -> a prepared (validated, ArrayRecord-cached) split.

Files the user gives are what is used. The built-in synthetic people (`config.data.synthetic`) stand in only when
no data paths are given at all; a config that names files for one split but not the other is refused in one
line, never completed with other data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
from jax.experimental import multihost_utils

from hvpose.data.demo_data import ensure_demo_dataset
from hvpose.data.tfds_coco import PreparedDataset, prepare
from hvpose.errors import ConfigError, DataError
from hvpose.paths import resolve_workdir

SPLITS = ("train", "val")


def _given(data: Mapping[str, Any], split: str) -> bool:
    return bool(data[split]["annotations"] or data[split]["images"])


def uses_synthetic_data(data: Mapping[str, Any]) -> bool:
    """True when `config.data` asks for the synthetic people and names no files of its own."""
    return bool(data["synthetic"]["enabled"]) and not any(_given(data, split) for split in SPLITS)


def split_paths(data: Mapping[str, Any], split: str, workdir: str, seed: int) -> tuple[str, str]:
    """(annotations json, image folder) of `split` ("train" or "val") under `config.data`."""
    if uses_synthetic_data(data):
        synthetic = data["synthetic"]
        root = resolve_workdir(synthetic.get("root", "") or os.path.join(workdir, "demo_data"))
        paths = ensure_demo_dataset(root, synthetic["num_train"], synthetic["num_val"], seed=seed)
        return paths[split], paths["images"]
    entry = data[split]
    if not entry["annotations"] or not entry["images"]:
        given = [f"config.data.{s}" for s in SPLITS if _given(data, s)]
        also = f" ({' and '.join(given)} given, so the built-in synthetic data is not used)" if given else ""
        raise ConfigError(f"config.data.{split}.annotations and config.data.{split}.images must name a COCO-format "
                          f"keypoint json and its image folder{also}")
    return entry["annotations"], entry["images"]


def cache_dir(data: Mapping[str, Any], workdir: str) -> str:
    """Where the ArrayRecord cache lives: `config.data.cache_dir`, or WORKDIR/tfds when empty."""
    return resolve_workdir(data["cache_dir"] or os.path.join(workdir, "tfds"))


def prepare_split(data: Mapping[str, Any], split: str, workdir: str, seed: int = 0) -> PreparedDataset:
    """The prepared `split` of `config.data` (converted to ArrayRecord on first use, reused after).

    On several processes, process 0 writes (synthetic data, conversion) while the others wait, then they read
    what it wrote: concurrent writers would race for the same cache folder.
    """
    if jax.process_count() == 1:
        return _prepare_split(data, split, workdir, seed)
    barrier = f"hvpose: prepare {split}"
    if jax.process_index() == 0:
        prepared = _prepare_split(data, split, workdir, seed)
        multihost_utils.sync_global_devices(barrier)
        return prepared
    multihost_utils.sync_global_devices(barrier)
    return _prepare_split(data, split, workdir, seed)


def _prepare_split(data: Mapping[str, Any], split: str, workdir: str, seed: int) -> PreparedDataset:
    annotations, images = split_paths(data, split, workdir, seed)
    flip_pairs = None if data["flip_pairs"] is None else [tuple(p) for p in data["flip_pairs"]]
    sigmas = None if data["sigmas"] is None else list(data["sigmas"])
    try:
        return prepare(annotations, images, cache_dir(data, workdir), flip_pairs=flip_pairs, sigmas=sigmas,
                       strict=data["strict"], max_pixels=data["max_pixels"])
    except DataError:
        raise
    except ValueError as error:  # e.g. an inconsistent keypoint set from the config
        raise ConfigError(f"config.data: {error}") from None


__all__ = ["cache_dir", "prepare_split", "split_paths", "uses_synthetic_data"]
