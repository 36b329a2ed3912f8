"""`PoseSearch`: the nearest poses of an index to a query pose, exact (JAX, every device) or approximate (faiss).

    index = PoseIndex.load("poses/")
    search = PoseSearch(index, distance="weighted")          # or backend="faiss" for millions of poses
    matches = search.query(person.keypoints, person.box, k=8, mirror=True)
    matches[0].photo, matches[0].distance, matches[0].mirrored
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hvpose.search.distances import check_distance
from hvpose.search.embedding import embed_poses, mirror_keypoints
from hvpose.search.index import PoseIndex

BACKENDS = ("exact", "faiss")


@dataclasses.dataclass(frozen=True)
class Match:
    """One database pose found for a query, in the photo's pixels."""

    rank: int  # 1 for the nearest
    distance: float  # the chosen distance (smaller is closer)
    row: int  # the pose's row in the index
    photo: str  # the photo's path (joined to the index's images folder)
    box: tuple[float, float, float, float]  # x, y, width, height
    keypoints: np.ndarray  # (K, 3): x, y, confidence
    mirrored: bool  # the query's mirror image matched

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "distance": round(float(self.distance), 6), "photo": self.photo,
                "box": [round(float(v), 1) for v in self.box], "mirrored": self.mirrored}


class PoseSearch:
    """Nearest poses of `index` to query poses.

    Args:
      index: the database (`PoseIndex`).
      distance: "weighted" (Move Mirror's confidence-weighted distance, squared) or "cosine".
      backend: "exact" (`ExactSearch`: JAX matmul + top-k, sharded over every device) or "faiss"
        (`ApproximateSearch`; `options` go to it, e.g. nprobe=32).
    """

    def __init__(self, index: PoseIndex, distance: str = "weighted", backend: str = "exact", **options: Any):
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r} is not one of {list(BACKENDS)}")
        if not len(index):
            raise ValueError("the index holds no poses")
        self.index, self.distance = index, check_distance(distance)
        if backend == "exact":
            from hvpose.search.exact import ExactSearch

            self.backend = ExactSearch(index.embeddings, distance, **options)
        else:
            from hvpose.search.approximate import ApproximateSearch

            self.backend = ApproximateSearch(index.embeddings, distance, **options)

    def query_many(self, keypoints: np.ndarray, boxes: np.ndarray, k: int = 8, mirror: bool = False
                   ) -> list[list[Match]]:
        """The k nearest poses of each of (Q, K, 3) keypoints in (Q, 4) boxes (x, y, w, h), nearest first.

        `mirror`: a database pose also matches the query's mirror image (left and right swapped).
        """
        keypoints = np.asarray(keypoints, np.float64)
        if keypoints.ndim == 2:
            keypoints = keypoints[None]
        boxes = np.asarray(boxes, np.float64).reshape(len(keypoints), 4)
        if keypoints.shape[1] != self.index.keypoint_set.num_keypoints:
            raise ValueError(f"queries have {keypoints.shape[1]} keypoints, the index "
                             f"{self.index.keypoint_set.num_keypoints}")
        threshold = self.index.threshold
        queries = embed_poses(keypoints, boxes, threshold)
        mirrored = None
        if mirror:
            flipped = mirror_keypoints(keypoints, boxes, self.index.keypoint_set.flip_permutation())
            mirrored = embed_poses(flipped, boxes, threshold)
        distances, rows, flags = self.backend.search(queries, k, mirrored)
        return [[self._match(rank, distance, row, flag) for rank, (distance, row, flag)
                 in enumerate(zip(distances[q], rows[q], flags[q], strict=True), start=1) if row >= 0]
                for q in range(len(keypoints))]

    def query(self, keypoints: np.ndarray, box: Any, k: int = 8, mirror: bool = False) -> list[Match]:
        """The k nearest poses to one person's (K, 3) keypoints in `box` (x, y, w, h)."""
        return self.query_many(np.asarray(keypoints)[None], np.asarray(box, np.float64)[None], k, mirror)[0]

    def _match(self, rank: int, distance: float, row: int, mirrored: bool) -> Match:
        index = self.index
        # Both distances are >= 0; float32 cancellation can leave -1e-8 for an exact match.
        return Match(rank, max(float(distance), 0.0), int(row), index.photo_path(int(row)),
                     tuple(float(v) for v in index.boxes[row]), index.keypoints[row], bool(mirrored))


__all__ = ["BACKENDS", "Match", "PoseSearch"]
