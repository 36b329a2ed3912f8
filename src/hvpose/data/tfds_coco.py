"""COCO-format keypoint datasets as TFDS ArrayRecord, written and read without TensorFlow.

`prepare(annotations, images_dir, cache_dir)` converts once (with a progress bar) and reuses the result: the
cache directory is named after a fingerprint of the annotation file's bytes, every referenced image's name, size
and modification time, the keypoint set and this converter's version, so a changed source is converted afresh.

One record per image: the encoded image bytes exactly as on disk (no re-encoding), its id and size, and every
person annotation (id, box, keypoints with visibility, crowd flag, area). Records keep the annotation file's image
order (shuffling happens in the input pipeline), so record i is the i-th image that converted. Images that are
missing, corrupt or over the pixel limit are skipped, counted and reported (`strict=True` makes them an error).

Preparing the real COCO 2017 on a Cloud TPU VM: copy `annotations/person_keypoints_{train,val}2017.json` and the
`train2017/` and `val2017/` folders to local disk (the conversion reads every image once; ~19 GB), point
`config.data.{train,val}.{annotations,images}` at them and `config.data.cache_dir` at a GCS bucket
(`gs://BUCKET/hvpose-tfds`): the first run converts (about 118k images; run it once on one worker, e.g. with
`--mode=eval` on a small host, before starting the pod) and every worker of every later run reads the same
ArrayRecord files. TFDS reads `gs://` paths through `etils.epath` (needs `gcsfs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from hvpose import notices
from hvpose.data.coco import KeypointDataset, load_coco_keypoints, resolve_image_path
from hvpose.data.images import DEFAULT_MAX_PIXELS, image_size, read_image_file
from hvpose.errors import DataError, ImageError

CONVERTER_VERSION = "1.0.0"
REPORT_FILE = "hvpose_conversion.json"
log = logging.getLogger(__name__)


def fingerprint(dataset: KeypointDataset, images_dir: str) -> str:
    """A hex digest of everything the conversion reads (annotation bytes, image names/sizes/mtimes, settings)."""
    digest = hashlib.sha256()
    with open(dataset.path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    for image in dataset.images:
        try:
            stat = os.stat(os.path.join(images_dir, image.file_name))
            digest.update(f"{image.file_name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{image.file_name}\0missing\n".encode())
    digest.update(json.dumps([CONVERTER_VERSION, dataclasses.asdict(dataset.keypoint_set)]).encode())
    return digest.hexdigest()[:16]


class CocoKeypoints(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for one COCO-format keypoint annotation file and its image folder (split "data")."""

    VERSION = tfds.core.Version(CONVERTER_VERSION)

    def __init__(self, *, dataset: KeypointDataset, images_dir: str, strict: bool, max_pixels: int,
                 **kwargs: Any) -> None:
        self._dataset = dataset
        self._images_dir = images_dir
        self._strict = strict
        self._max_pixels = max_pixels
        self.skipped: list[str] = []
        self.converted_ids: list[int] = []
        super().__init__(**kwargs)

    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and prepared" around a
    # conversion: nothing is downloaded, and `prepare` says what it converts where.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        k = self._dataset.keypoint_set.num_keypoints
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"COCO-format keypoints from {self._dataset.path}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image_id": np.int64,
                "width": np.int32,
                "height": np.int32,
                "persons": tfds.features.Sequence({
                    "id": np.int64,
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                    "keypoints": tfds.features.Tensor(shape=(k, 3), dtype=np.float32),
                    "iscrowd": np.bool_,
                    "area": np.float32,
                }),
            }),
            disable_shuffling=True,  # record i = i-th converted image; the pipeline shuffles
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager
        return {"data": self._generate_examples()}

    def _generate_examples(self) -> Any:
        k = self._dataset.keypoint_set.num_keypoints
        for image in self._dataset.images:
            try:
                path = resolve_image_path(self._images_dir, image.file_name)
                data = read_image_file(path, self._max_pixels, verify=True)
            except ImageError as error:
                if self._strict:
                    raise DataError(f"{self._images_dir}/{image.file_name}: {error}") from None
                self.skipped.append(f"{image.file_name}: {error}")
                continue
            except DataError:
                raise
            width, height = image_size(data, self._max_pixels)
            persons = self._dataset.persons[image.id]
            self.converted_ids.append(image.id)
            yield image.id, {
                "image": data,
                "image_id": image.id,
                "width": width,
                "height": height,
                "persons": {
                    "id": np.array([p.id for p in persons], np.int64),
                    "bbox": np.array([p.bbox for p in persons], np.float32).reshape(-1, 4),
                    "keypoints": np.array([p.keypoints for p in persons], np.float32).reshape(-1, k, 3),
                    "iscrowd": np.array([p.iscrowd for p in persons], np.bool_),
                    "area": np.array([p.area for p in persons], np.float32),
                },
            }


@dataclasses.dataclass
class PreparedDataset:
    """A converted dataset: the validated annotations, the ArrayRecord source and the conversion report."""

    dataset: KeypointDataset
    images_dir: str
    directory: str  # where the ArrayRecord files and the report live
    image_ids: list[int]  # image id of each record, in record order
    skipped: list[str]  # "file_name: reason" of images left out
    source: Any  # tfds ArrayRecordDataSource; records hold undecoded image bytes

    def __len__(self) -> int:
        return len(self.image_ids)

    def record_index(self) -> dict[int, int]:
        return {image_id: i for i, image_id in enumerate(self.image_ids)}


def prepare(annotations: str | os.PathLike[str], images_dir: str | os.PathLike[str],
            cache_dir: str | os.PathLike[str], *, flip_pairs: Any = None, sigmas: Any = None, strict: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS, dataset: KeypointDataset | None = None) -> PreparedDataset:
    """Loads, validates and (on first use) converts a COCO-format keypoint dataset to ArrayRecord.

    Args:
      annotations: the COCO-format keypoint json.
      images_dir: the folder its `file_name`s are relative to.
      cache_dir: TFDS data dir for the ArrayRecord files (local or gs://).
      flip_pairs, sigmas: keypoint set overrides (see `KeypointSet.from_category`).
      strict: make a missing, corrupt or oversized image an error instead of skipping it.
      max_pixels: decompression-bomb bound per image.
      dataset: an already loaded `load_coco_keypoints` result for `annotations`, to avoid parsing it twice.

    Raises:
      DataError: malformed annotations, an unsafe file name, a bad image under `strict`, or no usable image.
    """
    annotations, images_dir = os.fspath(annotations), os.fspath(images_dir)
    if dataset is None:
        dataset = load_coco_keypoints(annotations, flip_pairs=flip_pairs, sigmas=sigmas)
    for warning in dataset.warnings:
        log.warning(warning)
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: image folder does not exist")
    if not dataset.images:
        raise DataError(f"{annotations}: no images (the split is empty)")
    stem = os.path.splitext(os.path.basename(annotations))[0]
    name = "".join(c if c.isalnum() else "_" for c in stem).strip("_").lower() or "data"
    config = tfds.core.BuilderConfig(name=f"{name}_{fingerprint(dataset, images_dir)}")
    with notices.hidden("Using custom data configuration"):  # every conversion's config is its own
        builder = CocoKeypoints(dataset=dataset, images_dir=images_dir, strict=strict, max_pixels=max_pixels,
                                data_dir=os.fspath(cache_dir), config=config, file_format="array_record")
    report_path = epath.Path(builder.data_dir) / REPORT_FILE
    if not report_path.exists():
        log.warning("hvpose: converting %s (%d images) to ArrayRecord in %s (once)", annotations,
                    len(dataset.images), builder.data_dir)
        try:
            builder.download_and_prepare()
        except AssertionError:  # TFDS refuses to finalise a split with no examples
            if builder.converted_ids:
                raise
            raise DataError(f"{annotations}: none of its {len(dataset.images)} images could be used (the split is "
                            f"empty), e.g. {builder.skipped[0]}") from None
        report = {"annotations": annotations, "images_dir": images_dir, "image_ids": builder.converted_ids,
                  "skipped": builder.skipped}
        report_path.write_text(json.dumps(report))
    report = json.loads(report_path.read_text())
    if report["skipped"]:
        log.warning("hvpose: %d of %d images in %s were skipped (missing, corrupt or too large), e.g. %s",
                    len(report["skipped"]), len(dataset.images), images_dir, report["skipped"][0])
    if not report["image_ids"]:
        raise DataError(f"{annotations}: no usable images (the split is empty)")
    # Read through a read-only builder of the directory: it pickles into grain's worker processes by path.
    reader = tfds.builder_from_directory(str(builder.data_dir))
    source = reader.as_data_source(split="data", decoders={"image": tfds.decode.SkipDecoding()})
    return PreparedDataset(dataset=dataset, images_dir=images_dir, directory=str(builder.data_dir),
                           image_ids=report["image_ids"], skipped=report["skipped"], source=source)
