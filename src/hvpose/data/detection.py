"""grain input pipelines for the person detector: whole images on a fixed canvas with their person boxes.

One element per image of a prepared split (`hvpose.data.tfds_coco.prepare`); images without any person stay in
(they are negatives). The targets are the image's person boxes as (x1, y1, x2, y2) from COCO's (x, y, w, h),
clipped to the image; crowd regions (`iscrowd`) and boxes under 1 pixel in width or height (after clipping) are
dropped.

Geometry. Coordinates are continuous, as in `hvpose.ops.boxes`: pixel column j covers x in [j, j + 1), so a box
edge x maps to `scale * x` on the canvas and a horizontal flip of a width-W image maps x to W - x. The image is
resized keeping its aspect ratio to fit the canvas, `scale = min(canvas_h / h, canvas_w / w)` canvas pixels per
image pixel, to `(round(h * scale), round(w * scale))` pixels (its "true" size, `image_size`), pasted at the top-left
of a zero canvas. Boxes are multiplied by `scale` and clipped to the true size; `canvas_to_image` divides them back.

Decoding. Large downscales first decode at 1/r size, r = `reduction_for_scale(scale)` (the largest of 1, 2, 4, 8
that leaves at least one decoded pixel per canvas pixel): JPEGs inside the inverse DCT (a fraction of a full
decode), other encodings and numpy arrays by block averaging (`hvpose.data.images.reduce_image`). Either way the
reduced image has ceil(h / r) x ceil(w / r) pixels and reduced pixel i covers image pixels [r*i, r*i + r), so one
`cv2.resize` by `scale * r` (INTER_AREA when shrinking, INTER_LINEAR when enlarging; the factor is passed to OpenCV
as is, so the mapping is exactly x -> scale * x) finishes the job; rows and columns past the true size (from the
last, partial block) are cut. `prepare_image` runs the very same code on one image, so the Predictor's canvas equals
the evaluation loader's: identical for the same encoded bytes, and for the same decoded pixels whenever r = 1 or the
bytes are not a JPEG (a JPEG's DCT reduction only approximates block averaging).

Training: shuffled (`IndexSampler` with a seed, a new order each epoch), this process's share (`ShardByJaxProcess`),
a horizontal flip with probability 1/2 and optionally a zoom (scale jitter: the image at z times its fitting scale,
z uniform in a range, a random window of it where it overhangs the canvas) drawn from grain's per-element `RandomMap`
generator, so batches do not depend on the worker count and `get_state`/`set_state` resume exactly. Evaluation: one
pass in record order, padded with `valid=False` elements to whole global batches, as
`hvpose.data.pipeline.eval_loader` does.

Boxes left under one canvas pixel wide or high (tiny people far shrunk, or cut off by a zoomed window) are no
targets. Each image carries at most `max_boxes` boxes: when it has more, the `max_boxes` largest by area (clipped,
in image pixels; ties keep the earlier annotation) are kept, in annotation order, and the rest are dropped from the
targets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import cv2
import grain
import numpy as np

from hvpose.data.images import DEFAULT_MAX_PIXELS, decode_image, image_size, reduce_image, reduction_for_scale
from hvpose.data.pipeline import _ensure_flags_parsed, _process_batch_size
from hvpose.data.tfds_coco import PreparedDataset
from hvpose.errors import DataError

MIN_BOX_SIZE: float = 1.0  # image pixels: narrower or lower boxes (after clipping to the image) are dropped


def _check_canvas(canvas_size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in canvas_size)
    if height < 1 or width < 1:
        raise ValueError(f"canvas size must be (height, width) with positive sides, got {tuple(canvas_size)}")
    return height, width


def image_to_canvas_size(height: int, width: int, canvas_size: Sequence[int]) -> tuple[float, int, int]:
    """(scale, true_h, true_w) of an image of `height` x `width` pixels fitted into `canvas_size` (height, width).

    `scale = min(canvas_h / height, canvas_w / width)` canvas pixels per image pixel; the resized image has
    `round(height * scale)` x `round(width * scale)` pixels (at least 1, at most the canvas).
    """
    canvas_h, canvas_w = _check_canvas(canvas_size)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    scale = min(canvas_h / height, canvas_w / width)
    true_h = min(canvas_h, max(1, int(np.rint(height * scale))))
    true_w = min(canvas_w, max(1, int(np.rint(width * scale))))
    return scale, true_h, true_w


def canvas_to_image(boxes: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    """Boxes (..., 4) in canvas pixels -> original image pixels (float64), dividing by `scale`.

    `scale` is a number or one per leading index of `boxes`, e.g. a batch's (b,) `scale` for its (b, G, 4) boxes.
    """
    boxes = np.asarray(boxes, np.float64)
    scale = np.asarray(scale, np.float64)
    return boxes / scale.reshape(scale.shape + (1,) * (boxes.ndim - scale.ndim))


def person_boxes(bbox: np.ndarray, iscrowd: np.ndarray, height: int, width: int) -> np.ndarray:
    """The detector's targets among an image's person annotations: (n, 4) float32 (x1, y1, x2, y2).

    `bbox` is (N, 4) COCO (x, y, w, h); boxes are clipped to the `width` x `height` image, and crowd regions and
    boxes under `MIN_BOX_SIZE` pixels wide or high after clipping are left out (annotation order is kept).
    """
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
    xyxy[:, 0::2] = np.clip(xyxy[:, 0::2], 0.0, width)
    xyxy[:, 1::2] = np.clip(xyxy[:, 1::2], 0.0, height)
    size = xyxy[:, 2:] - xyxy[:, :2]
    keep = ~np.asarray(iscrowd, bool).reshape(-1) & np.all(size >= MIN_BOX_SIZE, axis=1)
    return xyxy[keep].astype(np.float32)


def flip_boxes(boxes: np.ndarray, width: float) -> np.ndarray:
    """Boxes (..., 4) (x1, y1, x2, y2) mirrored within an image `width` pixels wide: x1' = W - x2, x2' = W - x1."""
    boxes = np.array(boxes, copy=True)
    boxes[..., [0, 2]] = width - boxes[..., [2, 0]]
    return boxes


def _is_jpeg(data: bytes) -> bool:
    return bytes(data[:3]) == b"\xff\xd8\xff"


def _decode_reduced(data: bytes, reduction: int, max_pixels: int) -> np.ndarray:
    """The image at 1/`reduction` size: a JPEG reduced in the DCT, anything else decoded and block-averaged."""
    if reduction > 1 and _is_jpeg(data):
        return decode_image(data, reduction, max_pixels=max_pixels)
    return reduce_image(decode_image(data, max_pixels=max_pixels), reduction)


def _paste(reduced: np.ndarray, reduction: int, scale: float, full_h: int, full_w: int,
           canvas_size: tuple[int, int], flip: bool, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The canvas: `reduced` (the image at 1/`reduction` size) resized by scale * reduction to `full_h` x `full_w`,
    mirrored when `flip`, and its window from `offset` (row, column) pasted at the top-left of the canvas."""
    factor = scale * reduction
    out_h, out_w = (int(np.rint(n * factor)) for n in reduced.shape[:2])
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    if factor == 1:
        resized = reduced
    elif out_h >= 1 and out_w >= 1:  # OpenCV then maps x -> factor * x exactly (continuous coordinates)
        resized = cv2.resize(reduced, None, fx=factor, fy=factor, interpolation=interpolation)
    else:  # a sliver of an image (e.g. 1 x 5000 pixels) that would round to nothing
        resized = cv2.resize(reduced, (max(out_w, 1), max(out_h, 1)), interpolation=interpolation)
    resized = resized[:full_h, :full_w]  # past the full size: the reduced decode's last, partial block
    h, w = resized.shape[:2]
    if flip:  # mirrored within the full width (a column short of it by rounding stays empty on the left)
        resized = resized[:, ::-1]
    top, left = offset
    canvas = np.zeros((*canvas_size, 3), np.uint8)
    window = resized[top:top + canvas_size[0], max(left - (full_w - w if flip else 0), 0):]
    start = max((full_w - w if flip else 0) - left, 0)
    window = window[:, :canvas_size[1] - start]
    canvas[:window.shape[0], start:start + window.shape[1]] = window
    return canvas


def _canvas_from_bytes(data: bytes, canvas_size: tuple[int, int], max_pixels: int, flip: bool = False
                       ) -> tuple[np.ndarray, float, int, int]:
    canvas, scale, true_h, true_w, _ = _zoomed_canvas(data, canvas_size, max_pixels, flip, 1.0, None)
    return canvas, scale, true_h, true_w


def _zoomed_canvas(data: bytes, canvas_size: tuple[int, int], max_pixels: int, flip: bool, zoom: float,
                   rng: np.random.Generator | None) -> tuple[np.ndarray, float, int, int, tuple[int, int, int]]:
    """The canvas of encoded `data` at `zoom` times the fitting scale: (canvas, scale, true_h, true_w,
    (full_w, top, left)). Past the canvas, a window at a random whole-pixel offset drawn from `rng` is kept."""
    width, height = image_size(data, max_pixels)
    scale, true_h, true_w = image_to_canvas_size(height, width, canvas_size)
    full_h, full_w, top, left = true_h, true_w, 0, 0
    if zoom != 1.0:
        scale *= zoom
        full_h, full_w = (max(1, int(np.rint(n * scale))) for n in (height, width))
        top = int(rng.integers(max(full_h - canvas_size[0], 0) + 1))
        left = int(rng.integers(max(full_w - canvas_size[1], 0) + 1))
        true_h, true_w = min(canvas_size[0], full_h - top), min(canvas_size[1], full_w - left)
    reduction = reduction_for_scale(scale)
    canvas = _paste(_decode_reduced(data, reduction, max_pixels), reduction, scale, full_h, full_w, canvas_size,
                    flip, (top, left))
    return canvas, scale, true_h, true_w, (full_w, top, left)


def prepare_image(image: bytes | np.ndarray, canvas_size: Sequence[int], max_pixels: int = DEFAULT_MAX_PIXELS
                  ) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """One image on the detector's canvas exactly as `detection_eval_loader` prepares it.

    `image` is encoded bytes (decoded at the reduced size the scale allows, as the loader does) or an RGB uint8
    (H, W, 3) array (reduced by block averaging). Returns the (canvas_h, canvas_w, 3) uint8 canvas, the int32
    (true_h, true_w) of the image on it and the float32 scale (canvas pixels per image pixel): one row of a batch's
    `image`, `image_size` and `scale`.
    """
    canvas_size = _check_canvas(canvas_size)
    if isinstance(image, (bytes, bytearray, memoryview)):
        canvas, scale, true_h, true_w = _canvas_from_bytes(bytes(image), canvas_size, max_pixels)
    else:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        scale, true_h, true_w = image_to_canvas_size(image.shape[0], image.shape[1], canvas_size)
        reduction = reduction_for_scale(scale)
        canvas = _paste(reduce_image(image, reduction), reduction, scale, true_h, true_w, canvas_size, False)
    return canvas, np.array([true_h, true_w], np.int32), np.float32(scale)


class DetectionImages:
    """Random-access source with one element per image of a prepared dataset (people or not), optionally padded
    with `valid=False` elements to a multiple of `pad_to`.

    Element: `image` (encoded bytes), `image_id`, `boxes` (n, 4) float32 (x1, y1, x2, y2) in image pixels (see
    `person_boxes`), `valid`.
    """

    def __init__(self, prepared: PreparedDataset, pad_to: int = 1):
        if not prepared.image_ids:
            raise DataError(f"{prepared.dataset.path}: no images (the split is empty)")
        self._source = prepared.source
        self.num_images = len(prepared.image_ids)
        self._length = -(-self.num_images // pad_to) * pad_to
        padding = f" padded to {self._length}" if self._length != self.num_images else ""
        self._name = f"DetectionImages({prepared.directory}, {self.num_images} images{padding})"

    def __repr__(self) -> str:  # grain checks a restored state against repr(source)
        return self._name

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index >= self.num_images:
            return {"image": b"", "image_id": np.int64(-1), "boxes": np.zeros((0, 4), np.float32),
                    "valid": np.bool_(False)}
        record = self._source[int(index)]
        people = record["persons"]
        boxes = person_boxes(people["bbox"], people["iscrowd"], int(record["height"]), int(record["width"]))
        return {"image": record["image"], "image_id": np.int64(record["image_id"]), "boxes": boxes,
                "valid": np.bool_(True)}


def _largest(boxes: np.ndarray, max_boxes: int) -> np.ndarray:
    """At most `max_boxes` boxes: the largest by area (stable), in their original order."""
    if len(boxes) <= max_boxes:
        return boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return boxes[np.sort(np.argsort(-area, kind="stable")[:max_boxes])]


def _render(element: dict[str, Any], canvas_size: tuple[int, int], max_boxes: int, flip: bool,
            max_pixels: int, zoom: float = 1.0, rng: np.random.Generator | None = None) -> dict[str, Any]:
    out_boxes = np.zeros((max_boxes, 4), np.float32)
    box_valid = np.zeros(max_boxes, bool)
    out = {"image_id": element["image_id"], "boxes": out_boxes, "box_valid": box_valid}
    if not element["valid"]:
        return {**out, "image": np.zeros((*canvas_size, 3), np.uint8), "image_size": np.zeros(2, np.int32),
                "scale": np.float32(1)}
    canvas, scale, true_h, true_w, (full_w, top, left) = _zoomed_canvas(element["image"], canvas_size, max_pixels,
                                                                         flip, zoom, rng)
    boxes = _largest(np.asarray(element["boxes"], np.float64).reshape(-1, 4), max_boxes) * scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, full_w)
    if flip:
        boxes = flip_boxes(boxes, full_w)
    boxes -= [left, top, left, top]
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, true_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, true_h)
    boxes = boxes[np.all(boxes[:, 2:] - boxes[:, :2] >= MIN_BOX_SIZE, axis=1)]  # under a canvas pixel: no target
    out_boxes[:len(boxes)] = boxes
    box_valid[:len(boxes)] = True
    return {**out, "image": canvas, "image_size": np.array([true_h, true_w], np.int32), "scale": np.float32(scale)}


def _check_max_boxes(max_boxes: int) -> int:
    if int(max_boxes) < 1:
        raise ValueError(f"max_boxes must be at least 1, got {max_boxes}")
    return int(max_boxes)


def _check_zoom(zoom: Sequence[float]) -> tuple[float, float]:
    low, high = (float(v) for v in zoom)
    if not 0 < low <= high:
        raise ValueError(f"zoom must be a range (low, high) with 0 < low <= high, got {tuple(zoom)}")
    return low, high


@dataclasses.dataclass
class TrainDetectionCanvas(grain.transforms.RandomMap):
    """Image element -> canvas and padded boxes, mirrored with probability 1/2 when `flip`, and zoomed when `zoom`
    is a range other than (1, 1): the image at z times its fitting scale, z uniform in `zoom`; where it then
    overhangs the canvas, a window at a uniform whole-pixel offset. Boxes follow the pixels and are clipped to the
    window; those left under a canvas pixel wide or high are dropped. `scale` is then the zoomed scale (the
    window's offset is not carried: training does not map boxes back)."""

    canvas_size: tuple[int, int]
    max_boxes: int
    flip: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    zoom: tuple[float, float] = (1.0, 1.0)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        flip = bool(rng.random() < 0.5) and self.flip
        low, high = _check_zoom(self.zoom)
        zoom = float(rng.uniform(low, high)) if (low, high) != (1.0, 1.0) else 1.0  # no draw when off
        return _render(element, self.canvas_size, self.max_boxes, flip, self.max_pixels, zoom, rng)


@dataclasses.dataclass
class EvalDetectionCanvas(grain.transforms.Map):
    """Image element (or padding) -> canvas, padded boxes and `valid`."""

    canvas_size: tuple[int, int]
    max_boxes: int
    max_pixels: int = DEFAULT_MAX_PIXELS

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        return {**_render(element, self.canvas_size, self.max_boxes, False, self.max_pixels),
                "valid": element["valid"]}


def detection_train_loader(prepared: PreparedDataset, global_batch_size: int, *, seed: int,
                           canvas_size: tuple[int, int], max_boxes: int, flip: bool = True,
                           zoom: tuple[float, float] = (1.0, 1.0), worker_count: int = 0,
                           num_epochs: int | None = None, shard_options: grain.sharding.ShardOptions | None = None,
                           max_pixels: int = DEFAULT_MAX_PIXELS,
                           read_options: grain.ReadOptions | None = None) -> grain.DataLoader:
    """Endless (or `num_epochs`) shuffled detection batches of this process's share of the images.

    Each batch is a dict of numpy arrays (b = global_batch_size / process count; H, W = canvas_size;
    G = max_boxes): `image` (b, H, W, 3) uint8, `image_size` (b, 2) int32 (height, width of the image on the
    canvas), `scale` (b,) float32 canvas pixels per image pixel, `boxes` (b, G, 4) float32 (x1, y1, x2, y2) in
    canvas pixels, `box_valid` (b, G) bool, `image_id` (b,) int64. `iter(loader)` gives a `grain.DataLoaderIterator`
    whose `get_state()` / `set_state()` checkpoint the position. `read_options` as in `pipeline.train_loader`.
    """
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    _ensure_flags_parsed()
    batch = _process_batch_size(global_batch_size, shard)
    source = DetectionImages(prepared)
    transform = TrainDetectionCanvas(_check_canvas(canvas_size), _check_max_boxes(max_boxes), flip, max_pixels,
                                     _check_zoom(zoom))
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=True, num_epochs=num_epochs,
                                          seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                            read_options=read_options,
                            operations=[transform, grain.transforms.Batch(batch, drop_remainder=True)])


def detection_eval_loader(prepared: PreparedDataset, global_batch_size: int, *, canvas_size: tuple[int, int],
                          max_boxes: int, worker_count: int = 0,
                          shard_options: grain.sharding.ShardOptions | None = None,
                          max_pixels: int = DEFAULT_MAX_PIXELS,
                          read_options: grain.ReadOptions | None = None) -> tuple[grain.DataLoader, int]:
    """One pass over all images in record order, in fixed-shape batches; returns (loader, number of real images).

    Batches hold the fields of `detection_train_loader` (never flipped) and `valid` (b,) bool, False for the
    padding that makes a whole number of global batches (zero canvas, no boxes, image_id -1, image_size (0, 0),
    scale 1). `read_options` as in `pipeline.train_loader`.
    """
    shard = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=False)
    _ensure_flags_parsed()
    batch = _process_batch_size(global_batch_size, shard)
    source = DetectionImages(prepared, pad_to=global_batch_size)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=False, num_epochs=1)
    transform = EvalDetectionCanvas(_check_canvas(canvas_size), _check_max_boxes(max_boxes), max_pixels)
    loader = grain.DataLoader(data_source=source, sampler=sampler, worker_count=worker_count,
                              read_options=read_options,
                              operations=[transform, grain.transforms.Batch(batch, drop_remainder=True)])
    return loader, source.num_images


__all__ = ["MIN_BOX_SIZE", "DetectionImages", "EvalDetectionCanvas", "TrainDetectionCanvas", "canvas_to_image",
           "detection_eval_loader", "detection_train_loader", "flip_boxes", "image_to_canvas_size", "person_boxes",
           "prepare_image"]
