"""One inference path from boxes to people, shared by evaluation and the Predictor.

    boxes -> crops (`hvpose.data.crops.crop_box`) -> network, with the flip test -> decoding (Hough voting or
    argmax + offset) -> keypoints back to image pixels -> instance scores -> OKS-NMS per image

`Pipeline` runs it: `Pipeline.run(batches)` over a dataset's crop batches (evaluation feeds its grain loader),
`Pipeline.predict_image(image, boxes)` on one image (the Predictor). Boxes come from a *box source*: ground-truth
boxes or a COCO detection-results file (evaluation reads those per dataset), or any callable
`image (H, W, 3) uint8 -> boxes (N, 5)` such as a person detector.

Scores users see, all in [0, 1]:
  * keypoint score: the heatmap probability at the decoded keypoint (`hvpose.ops.voting.decode_hough`), i.e. how
    sure the network is that the keypoint lies within R of there; with the flip test, the mean of both passes.
  * instance score: an average of the keypoint scores above `keypoint_threshold` (0 if none), times the box
    score when `use_box_score` (box scores are probabilities too). The average is the plain mean (the paper's rule
    with threshold 0, mmpose's with 0.2) or the confidence-weighted mean sum(p^2) / sum(p), in which each keypoint
    counts as much as the network believes it (no threshold to tune). The README compares them on real data.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hvpose import sharding
from hvpose.data.crops import check_crop_size, crop_box
from hvpose.data.images import decode_image, reduce_image
from hvpose.keypoints import KeypointSet
from hvpose.ops.flip import flip_back
from hvpose.ops.nms import oks_nms
from hvpose.ops.upsample import upsample_to_map_stride
from hvpose.ops.voting import decode_argmax_offset, decode_hough

DECODERS = ("hough", "argmax_offset")
KEYPOINT_AVERAGES = ("mean", "weighted")

# An image (H, W, 3) uint8 -> its person boxes (N, 5) as (x, y, width, height, score): the detector's slot.
BoxSource = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How crops become people; `InferenceSettings(**config.inference)`."""

    flip_test: bool = True  # average with the mirrored crop (exact: crop sizes are s*n+1)
    decoder: str = "hough"  # "hough" (the paper's voting) or "argmax_offset" (no voting)
    keypoint_threshold: float = 0.0  # keypoints scoring above count in the instance score
    keypoint_average: str = "weighted"  # "mean" or "weighted" (sum p^2 / sum p) of those keypoint scores
    use_box_score: bool = True  # multiply the instance score by the box score
    oks_nms_threshold: float = 0.9  # OKS above which the lower-scoring duplicate is dropped

    def __post_init__(self) -> None:
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r} is not one of {list(DECODERS)}")
        if self.keypoint_average not in KEYPOINT_AVERAGES:
            raise ValueError(f"keypoint_average {self.keypoint_average!r} is not one of {list(KEYPOINT_AVERAGES)}")
        if not 0.0 <= self.keypoint_threshold < 1.0:
            raise ValueError(f"keypoint_threshold {self.keypoint_threshold} must be in [0, 1) (scores are "
                             "probabilities)")


@dataclasses.dataclass(frozen=True)
class PredictedPerson:
    """One person found in an image, in image pixels."""

    box: tuple[float, float, float, float]  # the box it was cropped from (x, y, width, height)
    box_score: float  # the box's own score (1 for ground-truth or user boxes)
    score: float  # instance score in [0, 1]
    keypoints: np.ndarray  # (K, 3): x, y, probability in [0, 1]
    image_id: int = -1  # the dataset's image id in evaluation; -1 for a single image


def model_for_decoder(model: Any, decoder: str) -> Any:
    """`model` with maps on its own feature grid when `decoder` is argmax + offset: the argmax of bilinearly
    upsampled maps falls on a grid cell anyway, with that cell's offset, so upsampling would be wasted work."""
    return model.clone(map_stride=model.output_stride) if decoder == "argmax_offset" else model.clone(map_stride=1)


def network_maps(model: Any, variables: Any, crops: jax.Array, flip_permutation: ArrayLike | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """Heatmap probabilities (B, H', W', K) and offsets (B, H', W', K, 2) in crop pixels of uint8 crops
    (B, H, W, 3), on every `model.map_stride`-th crop pixel; with `flip_permutation`
    (`KeypointSet.flip_permutation()`), the flip test: the mean of the crop's and its mirror image's, mapped back.

    The flip test keeps both passes on the feature grid until the end. The grid mirrors onto itself (crop sizes
    s*n+1), and upsampling commutes with mirroring, swapping keypoints and negating x offsets; it is linear, so the
    offsets are averaged on the grid. Only the heatmap logits of both passes and one set of offsets are upsampled:
    a third fewer maps than each pass's whole output. Heatmaps are averaged as probabilities, after the sigmoid of
    each pass's upsampled logits. The result equals upsampling each pass and averaging, to float32 rounding.
    """
    if flip_permutation is None:
        outputs = model.apply(variables, crops, train=False)
        return jax.nn.sigmoid(outputs["heatmap_logits"]), outputs["offsets"]
    grid_model = model.clone(map_stride=model.output_stride)
    outputs = grid_model.apply(variables, crops, train=False)
    flipped = grid_model.apply(variables, crops[:, :, ::-1], train=False)
    logits_f, offsets_f = flip_back(flipped["heatmap_logits"], flipped["offsets"], jnp.asarray(flip_permutation))
    batch, height, width, k = logits_f.shape
    offsets = ((outputs["offsets"] + offsets_f) / 2).reshape(batch, height, width, 2 * k)
    maps = upsample_to_map_stride(jnp.concatenate([outputs["heatmap_logits"], logits_f, offsets], axis=-1),
                                  crops.shape[1:3], model.output_stride, model.map_stride)
    heatmaps = (jax.nn.sigmoid(maps[..., :k]) + jax.nn.sigmoid(maps[..., k:2 * k])) / 2
    return heatmaps, maps[..., 2 * k:].reshape(*heatmaps.shape, 2)


def network_fn(model: Any, flip_permutation: np.ndarray | None, radius: float,
               decoder: str = "hough", mesh: jax.sharding.Mesh | None = None) -> Callable[[Any, jax.Array], jax.Array]:
    """A pure function (variables, uint8 crops (B, H, W, 3)) -> (B, K, 3) keypoints (x, y, probability) in crop
    pixels. `model` is a `KeypointNet` or a `MobileNetPoseNet` (same outputs), with the map stride `decoder`
    needs (`model_for_decoder`). With a `mesh` of several devices, crops batch-sharded over it are decoded where
    they are (XLA would otherwise gather every crop's maps for the native CPU voting kernel)."""
    stride = model.map_stride
    # Voting needs a map on every crop pixel; argmax + offset reads any grid.
    if decoder == "hough" and stride != 1:
        raise ValueError(f"Hough voting needs full-resolution maps; the model has map_stride {stride}")
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} is not one of {list(DECODERS)}")
    permutation = None if flip_permutation is None else jnp.asarray(flip_permutation)

    def infer(variables: Any, crops: jax.Array) -> jax.Array:
        return decode(*network_maps(model, variables, crops, permutation))

    def decode(heatmaps: jax.Array, offsets: jax.Array) -> jax.Array:
        if decoder == "argmax_offset":
            return decode_argmax_offset(heatmaps, offsets, stride=stride)
        return decode_hough(heatmaps, offsets, radius)

    if mesh is not None and mesh.size > 1:
        spec = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
        # check_vma=False: an FFI call's result does not carry the manual axes its inputs vary over.
        decode = jax.shard_map(decode, mesh=mesh, in_specs=(spec, spec), out_specs=spec, check_vma=False)
    return infer


def to_image(keypoints: np.ndarray, crop_to_image: np.ndarray) -> np.ndarray:
    """(B, K, 3) crop keypoints -> image keypoints through each crop's (2, 3) matrix; scores kept."""
    points = np.einsum("bij,bkj->bki", crop_to_image[:, :, :2].astype(np.float64), keypoints[..., :2]) \
        + crop_to_image[:, None, :, 2]
    return np.concatenate([points, keypoints[..., 2:]], axis=-1)


def instance_scores(keypoint_scores: np.ndarray, box_scores: np.ndarray, threshold: float, use_box_score: bool,
                    average: str = "mean") -> np.ndarray:
    """(N,) instance scores: the `average` ("mean", or "weighted": sum(p^2) / sum(p)) of each row's keypoint
    scores p above `threshold` (0 if none), times the box score when `use_box_score`. With scores in [0, 1], so is
    the result."""
    keypoint_scores = np.asarray(keypoint_scores, np.float64).reshape(len(box_scores), -1)
    counted = np.where(keypoint_scores > threshold, keypoint_scores, 0.0)
    if average == "mean":
        total, weight = counted.sum(axis=1), (keypoint_scores > threshold).sum(axis=1)
    elif average == "weighted":
        total, weight = (counted * counted).sum(axis=1), counted.sum(axis=1)
    else:
        raise ValueError(f"average {average!r} is not one of {list(KEYPOINT_AVERAGES)}")
    scores = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), 0.0)
    return scores * np.asarray(box_scores, np.float64) if use_box_score else scores


def suppress(people: Sequence[PredictedPerson], sigmas: Sequence[float], threshold: float) -> list[PredictedPerson]:
    """OKS-NMS within each image (box area as the object scale); each image's people best first."""
    by_image: dict[int, list[PredictedPerson]] = {}
    for person in people:
        by_image.setdefault(person.image_id, []).append(person)
    kept = []
    for group in by_image.values():
        keypoints = np.stack([p.keypoints for p in group])
        areas = np.array([max(p.box[2] * p.box[3], 1.0) for p in group])
        keep = oks_nms(keypoints, np.array([p.score for p in group]), areas, np.asarray(sigmas), threshold)
        kept.extend(group[i] for i in keep)
    return kept


def as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """(N, 5) float64 boxes (x, y, width, height, score) from (N, 4) (score 1) or (N, 5); scores in [0, 1]."""
    boxes = np.asarray(boxes, np.float64)
    boxes = boxes.reshape(len(boxes), -1) if len(boxes) else np.zeros((0, 5))
    if boxes.shape[1] == 4:
        boxes = np.concatenate([boxes, np.ones((len(boxes), 1))], axis=1)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be (N, 4) or (N, 5), got shape {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2:4] < 0).any():
        raise ValueError("boxes must be finite with width and height >= 0")
    if ((boxes[:, 4] < 0) | (boxes[:, 4] > 1)).any():
        raise ValueError("box scores must be probabilities in [0, 1]")
    return boxes


class Pipeline:
    """A keypoint network with its inference settings, from crop batches or boxes to people.

    Args:
      model, variables: a `KeypointNet` or `MobileNetPoseNet` and its variables; the model's map stride is set
        here from the decoder.
      keypoint_set: names, flip pairs and OKS sigmas of the model's keypoints.
      crop_size: (height, width) of the crops, s*n+1 for the model's output stride s.
      radius: R of the 1/(pi R^2) vote normalisation (crop pixels). It scales the vote maps only; where their
        peaks are does not depend on it.
      settings: flip test, decoder, instance scoring and OKS-NMS.
      batch_size: crops per network call (global, all devices); fewer are padded up to it, so the jitted step
        compiles once.
      mesh: devices to run on (default: all, `hvpose.sharding.make_mesh`); `batch_size` must divide over them.
    """

    def __init__(self, model: Any, variables: Any, keypoint_set: KeypointSet, crop_size: tuple[int, int],
                 radius: float, settings: InferenceSettings = InferenceSettings(), batch_size: int = 8,
                 mesh: jax.sharding.Mesh | None = None):
        self.crop_size = check_crop_size(*crop_size, model.output_stride)
        self.model = model_for_decoder(model, settings.decoder)
        self.keypoint_set, self.settings, self.radius = keypoint_set, settings, float(radius)
        self.mesh = mesh or sharding.make_mesh()
        if batch_size < 1 or batch_size % self.mesh.size:
            raise ValueError(f"batch size {batch_size} is not a positive multiple of the {self.mesh.size} devices")
        self.batch_size = batch_size
        replicated = sharding.replicated(self.mesh)
        self.variables = jax.device_put(variables, replicated)
        infer = network_fn(self.model, keypoint_set.flip_permutation() if settings.flip_test else None, radius,
                           settings.decoder, self.mesh)
        # Crops stay on their devices; keypoints and the small per-box fields come back to every host.
        self._step = jax.jit(lambda v, b: {**{k: x for k, x in b.items() if k != "image"},
                                           "keypoints": infer(v, b["image"])},
                             in_shardings=(replicated, sharding.batch_sharded(self.mesh)),
                             out_shardings=replicated)

    def people_in_batch(self, batch: dict[str, np.ndarray]) -> list[PredictedPerson]:
        """The scored people (before NMS) of one batch of crops: this process's rows of a global batch, a dict
        with `image` (b, H, W, 3) uint8, `crop_to_image` (b, 2, 3), `bbox` (b, 4), `score` (b,), `image_id` (b,)
        and `valid` (b,) (False for padding)."""
        out = jax.device_get(self._step(self.variables, sharding.global_batch(batch, self.mesh)))
        keypoints = to_image(np.asarray(out["keypoints"], np.float64), out["crop_to_image"])
        valid = np.nonzero(out["valid"])[0]
        scores = instance_scores(keypoints[valid, :, 2], out["score"][valid], self.settings.keypoint_threshold,
                                 self.settings.use_box_score, self.settings.keypoint_average)
        return [PredictedPerson(box=tuple(float(v) for v in out["bbox"][i]), box_score=float(out["score"][i]),
                                score=float(score), keypoints=keypoints[i], image_id=int(out["image_id"][i]))
                for i, score in zip(valid, scores, strict=True)]

    def suppress(self, people: Sequence[PredictedPerson]) -> list[PredictedPerson]:
        """OKS-NMS per image with the keypoint set's sigmas and the settings' threshold."""
        return suppress(people, self.keypoint_set.sigmas, self.settings.oks_nms_threshold)

    def run(self, batches: Iterable[dict[str, np.ndarray]]) -> list[PredictedPerson]:
        """The people of all `batches` (see `people_in_batch`), after OKS-NMS per image."""
        people: list[PredictedPerson] = []
        for batch in batches:
            people.extend(self.people_in_batch(batch))
        return self.suppress(people)

    def image_batches(self, image: bytes | np.ndarray, boxes: np.ndarray, image_id: int = -1
                      ) -> Iterator[dict[str, np.ndarray]]:
        """Padded crop batches of `boxes` (N, 5) on one image: encoded bytes, decoded at the reduced size each crop
        needs exactly as evaluation does, or an RGB uint8 array, reduced by block averaging the same way."""
        reduce = decode_image if isinstance(image, (bytes, bytearray)) else reduce_image
        decode = functools.lru_cache(maxsize=4)(functools.partial(reduce, image))
        for start in range(0, len(boxes), self.batch_size):
            chunk = boxes[start:start + self.batch_size]
            batch = {"image": np.zeros((self.batch_size, *self.crop_size, 3), np.uint8),
                     "crop_to_image": np.zeros((self.batch_size, 2, 3), np.float32),
                     "bbox": np.zeros((self.batch_size, 4), np.float32),
                     "score": np.zeros(self.batch_size, np.float32),
                     "image_id": np.full(self.batch_size, image_id, np.int64),
                     "valid": np.zeros(self.batch_size, bool)}
            for i, box in enumerate(chunk):
                batch["bbox"][i], batch["score"][i], batch["valid"][i] = box[:4], box[4], True
                # Cropped from the float32 box, as evaluation's loader stores it, so both crop identically.
                batch["image"][i], batch["crop_to_image"][i] = crop_box(decode, tuple(batch["bbox"][i]),
                                                                        self.crop_size)
            yield batch

    def predict_image(self, image: bytes | np.ndarray, boxes: Sequence[Sequence[float]] | np.ndarray
                      ) -> list[PredictedPerson]:
        """People in one image from its person boxes ((N, 4) or (N, 5) as x, y, width, height[, score]),
        best first."""
        boxes = as_boxes(boxes)
        if not len(boxes):
            return []
        people = self.run(self.image_batches(image, boxes))
        return sorted(people, key=lambda p: -p.score)


__all__ = ["DECODERS", "KEYPOINT_AVERAGES", "BoxSource", "InferenceSettings", "Pipeline", "PredictedPerson", "as_boxes",
           "instance_scores", "model_for_decoder", "network_fn", "network_maps", "suppress", "to_image"]
