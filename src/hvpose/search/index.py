"""A pose index: every person of a photo collection, stored as plain arrays, built once and queried many times.

Layout of an index folder (numpy `.npy` files plus JSON, readable without hvpose):

    index.json         format, keypoint set, confidence threshold, pose and photo counts, the weights used
    photos.json        photo paths, relative to the images folder (`index.json` "images", absolute)
    keypoints.npy      (N, K, 3) float32: x, y, confidence in photo pixels
    boxes.npy          (N, 4) float32: x, y, width, height
    scores.npy         (N,) float32: the person's instance score
    photo_ids.npy      (N,) int32: row of photos.json
    vectors.npy        (N, 2K) float32 and weights.npy (N, K) float32: the embeddings (`embedding.embed_poses`)
    parts/             the build's progress: one .npz + .json per chunk of photos (what a resumed build skips)

`build_index` runs every photo through a `Predictor` (which finds the people with its detector), writes a part
every `chunk` photos and merges the parts at the end; `index.json` is written last, so a folder with it is
complete. Interrupted, the same command resumes after the last part written; photos added since are indexed.
Unreadable photos are skipped and counted (`skipped.json`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hvpose.errors import DataError
from hvpose.keypoints import KeypointSet
from hvpose.search.embedding import DEFAULT_THRESHOLD, PoseEmbeddings, embed_poses

FORMAT = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_ARRAYS = ("keypoints", "boxes", "scores", "photo_ids")


@dataclasses.dataclass
class PoseIndex:
    """N poses of K keypoints from a collection of photos (see the module docstring for the stored layout)."""

    keypoints: np.ndarray  # (N, K, 3) float32: x, y, confidence in photo pixels
    boxes: np.ndarray  # (N, 4) float32: x, y, width, height
    scores: np.ndarray  # (N,) float32: instance score (1 for ground truth)
    photo_ids: np.ndarray  # (N,) int32: index into `photos`
    photos: list[str]  # photo paths relative to `images`
    keypoint_set: KeypointSet
    threshold: float = DEFAULT_THRESHOLD  # keypoints below carry no weight in the embeddings
    images: str = ""  # the folder the photo paths are relative to
    weights: str = ""  # the model the poses came from ("" for given poses)
    embeddings: PoseEmbeddings | None = None  # derived from keypoints and boxes when None

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, np.float32).reshape(-1, self.keypoint_set.num_keypoints, 3)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.photo_ids = np.asarray(self.photo_ids, np.int32).reshape(-1)
        count = len(self.keypoints)
        if not len(self.boxes) == len(self.scores) == len(self.photo_ids) == count:
            raise ValueError("keypoints, boxes, scores and photo_ids must have one row per pose")
        if count and (self.photo_ids.min() < 0 or self.photo_ids.max() >= len(self.photos)):
            raise ValueError("photo_ids must index into photos")
        if self.embeddings is None:
            self.embeddings = embed_poses(self.keypoints, self.boxes, self.threshold) if count else PoseEmbeddings(
                np.zeros((0, 2 * self.keypoint_set.num_keypoints), np.float32),
                np.zeros((0, self.keypoint_set.num_keypoints), np.float32))

    def __len__(self) -> int:
        return len(self.keypoints)

    def photo_path(self, row: int) -> str:
        """The photo of pose `row` (joined to the images folder)."""
        return os.path.join(self.images, self.photos[self.photo_ids[row]])

    @classmethod
    def from_coco(cls, annotations: str | os.PathLike[str], images: str = "",
                  threshold: float = DEFAULT_THRESHOLD) -> PoseIndex:
        """The labelled people of a COCO-format keypoint file (crowd regions and people without keypoints left out);
        a labelled keypoint has confidence 1, an unlabelled one 0."""
        from hvpose.data.coco import load_coco_keypoints

        dataset = load_coco_keypoints(annotations)
        rows = [(i, person) for i, image in enumerate(dataset.images)
                for person in dataset.persons.get(image.id, []) if person.is_training_target]
        keypoints = np.array([person.keypoints for _, person in rows], np.float32).reshape(
            -1, dataset.keypoint_set.num_keypoints, 3)
        keypoints[..., 2] = keypoints[..., 2] > 0
        return cls(keypoints, np.array([person.bbox for _, person in rows], np.float32), np.ones(len(rows)),
                   np.array([i for i, _ in rows], np.int32), [image.file_name for image in dataset.images],
                   dataset.keypoint_set, threshold, images=os.fspath(pathlib.Path(images).resolve()) if images else "")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the index folder (arrays first, `index.json` last)."""
        folder = pathlib.Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            np.save(folder / f"{name}.npy", getattr(self, name))
        np.save(folder / "vectors.npy", self.embeddings.vectors)
        np.save(folder / "weights.npy", self.embeddings.weights)
        _write_json(folder / "photos.json", self.photos)
        _write_json(folder / "index.json", {
            "format": FORMAT, "poses": len(self), "photos": len(self.photos), "threshold": self.threshold,
            "images": self.images, "weights": self.weights, "keypoint_set": dataclasses.asdict(self.keypoint_set)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PoseIndex:
        """Reads an index folder written by `save` or `build_index`."""
        folder = pathlib.Path(path)
        if not (folder / "index.json").is_file():
            unfinished = (folder / "parts").is_dir()
            hint = " (an unfinished build: run the index command again to resume)" if unfinished else ""
            raise DataError(f"{path}: not a pose index (index.json not found){hint}")
        meta = json.loads((folder / "index.json").read_text())
        if meta.get("format") != FORMAT:
            raise DataError(f"{path}: index format {meta.get('format')!r}, this hvpose reads {FORMAT}")
        keypoint_set = _keypoint_set(meta["keypoint_set"])
        arrays = {name: np.load(folder / f"{name}.npy") for name in _ARRAYS}
        embeddings = PoseEmbeddings(np.load(folder / "vectors.npy"), np.load(folder / "weights.npy"))
        return cls(**arrays, photos=json.loads((folder / "photos.json").read_text()), keypoint_set=keypoint_set,
                   threshold=float(meta["threshold"]), images=meta["images"], weights=meta["weights"],
                   embeddings=embeddings)


def _keypoint_set(payload: dict[str, Any]) -> KeypointSet:
    return KeypointSet(names=tuple(payload["names"]), skeleton=tuple(map(tuple, payload["skeleton"])),
                       flip_pairs=tuple(map(tuple, payload["flip_pairs"])), sigmas=tuple(payload["sigmas"]))


def _write_json(path: pathlib.Path, payload: Any) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)  # atomic: a reader never sees half a file


def list_photos(images: str | os.PathLike[str]) -> list[str]:
    """Image files under `images` (recursively, by suffix), as sorted relative paths."""
    root = pathlib.Path(images)
    if not root.is_dir():
        raise DataError(f"{images}: not a folder of photos")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


@dataclasses.dataclass(frozen=True)
class BuildReport:
    poses: int
    photos: int  # photos indexed (with or without people)
    skipped: dict[str, str]  # unreadable photo -> why
    resumed: int  # photos found done from an earlier, interrupted build


def build_index(images: str | os.PathLike[str], predictor: Any, out: str | os.PathLike[str], weights: str = "",
                threshold: float = DEFAULT_THRESHOLD, min_score: float = 0.1, chunk: int = 64,
                progress: bool = True, predict: Callable[[Any, str], Sequence[Any]] | None = None) -> BuildReport:
    """Indexes every person of every photo under `images` with `predictor` (an `hvpose.Predictor`) into `out`.

    People scoring below `min_score` are left out. Resumable: photos recorded in `out/parts/` are not run again.
    `predict(predictor, path)` defaults to `predictor(path)` (boxes from the predictor's own detector).
    """
    from tqdm import tqdm

    from hvpose.errors import ImageError

    predict = predict or (lambda model, path: model(path))
    root, folder = pathlib.Path(images), pathlib.Path(out)
    parts = folder / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    photos = list_photos(root)
    done: dict[str, str | None] = {}  # photo -> None (indexed) or why it was skipped
    for part in sorted(parts.glob("*.json")):
        done.update(json.loads(part.read_text()))
    resumed = sum(photo in done for photo in photos)
    todo = [photo for photo in photos if photo not in done]
    buffer: list[tuple[str, Any]] = []
    keypoint_set = predictor.keypoint_set

    def flush() -> None:
        if not buffer:
            return
        number = len(list(parts.glob("*.json")))
        people = [(photo, person) for photo, found in buffer if not isinstance(found, str) for person in found]
        np.savez(parts / f"{number:06d}.npz",
                 keypoints=np.array([p.keypoints for _, p in people], np.float32).reshape(
                     -1, keypoint_set.num_keypoints, 3),
                 boxes=np.array([p.box for _, p in people], np.float32).reshape(-1, 4),
                 scores=np.array([p.score for _, p in people], np.float32),
                 photos=np.array([photo for photo, _ in people], dtype=str))
        _write_json(parts / f"{number:06d}.json",  # after the arrays: a part counts only once complete
                    {photo: found if isinstance(found, str) else None for photo, found in buffer})
        buffer.clear()

    bar = tqdm(todo, desc="indexing", unit="photo", disable=not progress or not todo, file=sys.stderr)
    for photo in bar:
        try:
            found = [p for p in predict(predictor, os.fspath(root / photo)) if p.score >= min_score]
        except (ImageError, OSError) as error:
            found = f"{type(error).__name__}: {error}"
        buffer.append((photo, found))
        if len(buffer) >= chunk:
            flush()
    flush()
    bar.close()

    index = merge_parts(folder, keypoint_set, photos, threshold, os.fspath(root.resolve()), weights)
    present = set(photos)
    skipped = {photo: why for part in sorted(parts.glob("*.json"))
               for photo, why in json.loads(part.read_text()).items() if why is not None and photo in present}
    _write_json(folder / "skipped.json", skipped)
    return BuildReport(len(index), len(photos) - len(skipped), skipped, resumed)


def merge_parts(folder: pathlib.Path, keypoint_set: KeypointSet, photos: list[str], threshold: float, images: str,
                weights: str) -> PoseIndex:
    """Joins the build's parts into the index arrays (photos no longer under the folder dropped) and saves."""
    rows: dict[str, list[np.ndarray]] = {"keypoints": [], "boxes": [], "scores": [], "photos": []}
    for part in sorted(folder.glob("parts/*.npz")):
        with np.load(part) as arrays:
            for name in rows:
                rows[name].append(arrays[name])
    position = {photo: i for i, photo in enumerate(photos)}
    names = np.concatenate(rows["photos"]) if rows["photos"] else np.zeros(0, str)
    keep = np.array([name in position for name in names], bool)
    stack = {name: np.concatenate(values)[keep] if values else None for name, values in rows.items()}
    count = int(keep.sum())
    index = PoseIndex(
        stack["keypoints"] if count else np.zeros((0, keypoint_set.num_keypoints, 3), np.float32),
        stack["boxes"] if count else np.zeros((0, 4), np.float32),
        stack["scores"] if count else np.zeros(0, np.float32),
        np.array([position[name] for name in names[keep]], np.int32), photos, keypoint_set, threshold,
        images=images, weights=weights)
    index.save(folder)
    return index


__all__ = ["BuildReport", "PoseIndex", "build_index", "list_photos", "merge_parts"]
