"""Reading and validating COCO-format keypoint datasets and detection results.

Any COCO-format person-keypoints file works (COCO 2017 `person_keypoints_*.json`, or another dataset in that
layout with its own keypoint set). Problems end in one `DataError` whose message is a single line naming the file
and the problem; soft problems (annotations COCOeval would silently score 0) are collected in `warnings`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from hvpose.errors import DataError
from hvpose.keypoints import KeypointSet


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class PersonAnnotation:
    """One person annotation; `keypoints` is (K, 3) float32 (x, y, visibility) in image pixels."""

    id: int
    image_id: int
    bbox: tuple[float, float, float, float]  # x, y, width, height
    keypoints: np.ndarray
    iscrowd: bool
    area: float

    @property
    def num_labelled(self) -> int:
        return int(np.count_nonzero(self.keypoints[:, 2] > 0))

    @property
    def is_training_target(self) -> bool:
        """Stage-2 trains on people with labelled keypoints that are not crowd regions (COCOeval ignores those)."""
        return not self.iscrowd and self.num_labelled > 0


@dataclasses.dataclass
class KeypointDataset:
    """A validated COCO-format keypoint dataset: images in file order and the persons of each image."""

    path: str
    images: list[ImageInfo]
    persons: dict[int, list[PersonAnnotation]]
    keypoint_set: KeypointSet
    category_id: int
    warnings: list[str]
    raw: dict[str, Any]  # the parsed json, for COCOeval

    def image(self, image_id: int) -> ImageInfo:
        return self._by_id[image_id]

    def __post_init__(self) -> None:
        self._by_id = {image.id: image for image in self.images}


def _fail(path: str, problem: str) -> DataError:
    return DataError(f"{path}: {problem}")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Parses a JSON file, turning every failure into one DataError line."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise _fail(path, "no such file") from None
    except json.JSONDecodeError as error:
        raise _fail(path, f"not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(path, f"cannot be read ({error})") from None


def _finite_box(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value))


def _person_category(path: str, categories: Any, category_id: int | None) -> dict:
    if not isinstance(categories, list) or not categories:
        raise _fail(path, "has no 'categories'")
    if category_id is not None:
        chosen = [c for c in categories if c.get("id") == category_id]
    else:
        chosen = [c for c in categories if c.get("keypoints")]
        named = [c for c in chosen if c.get("name") == "person"]
        chosen = named or chosen
    if not chosen or not chosen[0].get("keypoints"):
        raise _fail(path, "has no category with 'keypoints' names" if category_id is None else
                    f"has no keypoint category with id {category_id}")
    return chosen[0]


def load_coco_keypoints(path: str | os.PathLike[str], flip_pairs: Sequence[Sequence[int]] | None = None,
                        sigmas: Sequence[float] | None = None, category_id: int | None = None) -> KeypointDataset:
    """Loads and validates a COCO-format keypoint annotation file.

    Args:
      path: the annotation json.
      flip_pairs, sigmas: the keypoint set's flip pairs and OKS sigmas (default: inferred, see KeypointSet).
      category_id: the person category (default: the one named "person", else the first with keypoints).

    Raises:
      DataError: unreadable or malformed file, with the first problem found.
    """
    path = os.fspath(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise _fail(path, "top level is not a JSON object")
    for key in ("images", "annotations"):
        if not isinstance(raw.get(key), list):
            raise _fail(path, f"has no '{key}' list")
    category = _person_category(path, raw.get("categories"), category_id)
    try:
        keypoint_set = KeypointSet.from_category(category, flip_pairs, sigmas)
    except (ValueError, TypeError) as error:
        raise _fail(path, f"keypoint definition: {error}") from None
    k = keypoint_set.num_keypoints

    images: list[ImageInfo] = []
    seen: set[int] = set()
    for entry in raw["images"]:
        try:
            info = ImageInfo(int(entry["id"]), str(entry["file_name"]), int(entry.get("width", 0)),
                             int(entry.get("height", 0)))
        except (KeyError, TypeError, ValueError):
            raise _fail(path, f"image entry {str(entry)[:80]} lacks a valid id or file_name") from None
        if info.id in seen:
            raise _fail(path, f"image id {info.id} appears twice")
        seen.add(info.id)
        images.append(info)

    persons: dict[int, list[PersonAnnotation]] = {image.id: [] for image in images}
    zero_area = 0
    for ann in raw["annotations"]:
        if not isinstance(ann, dict):
            raise _fail(path, f"annotation {str(ann)[:80]} is not an object")
        ann_id = ann.get("id", "?")
        if ann.get("category_id", category["id"]) != category["id"]:
            continue
        where = f"annotation id {ann_id}"
        if ann.get("image_id") not in persons:
            raise _fail(path, f"{where} refers to unknown image id {ann.get('image_id')}")
        box = ann.get("bbox")
        if not _finite_box(box):
            raise _fail(path, f"{where} has bbox {box!r}; expected 4 finite numbers [x, y, width, height]")
        if box[2] < 0 or box[3] < 0:
            raise _fail(path, f"{where} has a negative box size {box!r}")
        values = ann.get("keypoints", [0] * (3 * k))
        if not isinstance(values, list) or len(values) != 3 * k:
            length = len(values) if isinstance(values, list) else type(values).__name__
            raise _fail(path, f"{where} has {length} keypoint values; the category's {k} keypoints need {3 * k}")
        try:
            keypoints = np.asarray(values, np.float32).reshape(k, 3)
        except (TypeError, ValueError):
            raise _fail(path, f"{where} has non-numeric keypoints") from None
        if not np.all(np.isfinite(keypoints)) or not np.all(np.isin(keypoints[:, 2], (0, 1, 2))):
            raise _fail(path, f"{where} has non-finite keypoints or a visibility outside 0/1/2")
        area = ann.get("area")
        if not isinstance(area, (int, float)) or not area > 0:
            zero_area += 1
            area = 0.0
        persons[ann["image_id"]].append(PersonAnnotation(
            id=int(ann_id) if isinstance(ann_id, int) else -1, image_id=int(ann["image_id"]),
            bbox=tuple(float(v) for v in box), keypoints=keypoints, iscrowd=bool(ann.get("iscrowd", 0)),
            area=float(area)))
    warnings = []
    if zero_area:
        warnings.append(f"{path}: {zero_area} annotations have area 0 or no area; COCOeval scores them 0 "
                        "(they never match a prediction)")
    return KeypointDataset(path=path, images=images, persons=persons, keypoint_set=keypoint_set,
                           category_id=int(category["id"]), warnings=warnings, raw=raw)


@dataclasses.dataclass(frozen=True)
class Detection:
    image_id: int
    bbox: tuple[float, float, float, float]  # x, y, width, height
    score: float


def load_detections(path: str | os.PathLike[str], dataset: KeypointDataset, min_score: float = 0.0,
                    category_id: int | None = None) -> list[Detection]:
    """Person boxes from a COCO detection-results json (list of {image_id, bbox, score[, category_id]}).

    Boxes of other categories, or scoring below `min_score`, are left out. Raises DataError on a malformed file
    or a box on an image the dataset does not have.
    """
    path = os.fspath(path)
    raw = read_json(path)
    if not isinstance(raw, list):
        raise _fail(path, "detection results must be a JSON list of {image_id, bbox, score}")
    wanted = dataset.category_id if category_id is None else category_id
    known = {image.id for image in dataset.images}
    detections = []
    for i, det in enumerate(raw):
        if not isinstance(det, dict):
            raise _fail(path, f"entry {i} is not an object")
        if det.get("category_id", wanted) != wanted:
            continue
        if det.get("image_id") not in known:
            raise _fail(path, f"entry {i} refers to image id {det.get('image_id')}, not in {dataset.path}")
        box, score = det.get("bbox"), det.get("score", 1.0)
        if not _finite_box(box) or box[2] < 0 or box[3] < 0:
            raise _fail(path, f"entry {i} has bbox {box!r}; expected [x, y, width >= 0, height >= 0]")
        if not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
            raise _fail(path, f"entry {i} has score {score!r}; expected a probability in [0, 1]")
        if score >= min_score:
            detections.append(Detection(int(det["image_id"]), tuple(float(v) for v in box), float(score)))
    return detections


def resolve_image_path(images_dir: str | os.PathLike[str], file_name: str) -> pathlib.Path:
    """`images_dir / file_name`, refusing names that would escape `images_dir` (absolute, `..`, symlink tricks)."""
    root = pathlib.Path(images_dir).resolve()
    candidate = (root / file_name).resolve()
    if pathlib.PurePath(file_name).is_absolute() or not candidate.is_relative_to(root):
        raise DataError(f"{images_dir}: image file_name {file_name!r} points outside the image folder")
    return candidate
