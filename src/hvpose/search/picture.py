"""The picture of a search: the query person first, then each match cut from its photo, skeletons drawn."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hvpose import visualize
from hvpose.keypoints import KeypointSet
from hvpose.search.searcher import Match

TILE_HEIGHT = 256  # pixels of each tile
MARGIN = 0.15  # of the box's larger side, kept around each person


def person_tile(image: np.ndarray, keypoints: np.ndarray, box: Sequence[float], keypoint_set: KeypointSet,
                label: str, threshold: float) -> np.ndarray:
    """The person's box (with a margin) cut from `image`, skeleton drawn, scaled to TILE_HEIGHT, label on top."""
    drawn = visualize.draw_people(image, [keypoints], None, keypoint_set, threshold)
    x, y, w, h = box
    pad = MARGIN * max(w, h)
    height, width = image.shape[:2]
    x0, y0 = int(max(0, np.floor(x - pad))), int(max(0, np.floor(y - pad)))
    x1, y1 = int(min(width, np.ceil(x + w + pad))), int(min(height, np.ceil(y + h + pad)))
    crop = drawn[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    tile = cv2.resize(crop, (max(1, round(crop.shape[1] * TILE_HEIGHT / crop.shape[0])), TILE_HEIGHT))
    tile = np.ascontiguousarray(tile)
    cv2.rectangle(tile, (0, 0), (tile.shape[1], 20), (0, 0, 0), -1)
    cv2.putText(tile, label, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def draw_matches(query_image: np.ndarray, query_keypoints: np.ndarray, query_box: Sequence[float],
                 matches: Sequence[Match], keypoint_set: KeypointSet, load_image, threshold: float = 0.1
                 ) -> np.ndarray:
    """One RGB picture: the query tile, then a tile per match labelled with its rank, distance and mirroring.

    `load_image(path) -> RGB uint8` reads a match's photo (each photo read once).
    """
    tiles = [person_tile(query_image, query_keypoints, query_box, keypoint_set, "query", threshold)]
    photos: dict[str, np.ndarray] = {}
    for match in matches:
        if match.photo not in photos:
            photos[match.photo] = load_image(match.photo)
        label = f"#{match.rank} {match.distance:.4f}" + (" mirrored" if match.mirrored else "")
        tiles.append(person_tile(photos[match.photo], match.keypoints, match.box, keypoint_set, label, threshold))
    gap = np.full((TILE_HEIGHT, 4, 3), 255, np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


__all__ = ["draw_matches", "person_tile"]
