"""Drawing people (skeletons, keypoints, boxes) on images; left limbs warm, right limbs cool, centre neutral."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hvpose.keypoints import COCO17, KeypointSet

LEFT, RIGHT, CENTRE = (255, 140, 0), (0, 140, 255), (60, 220, 60)  # RGB


def _side(names: Sequence[str], index: int) -> tuple[int, int, int]:
    name = names[index].lower()
    if name.startswith(("left", "l_")) or "_left" in name:
        return LEFT
    if name.startswith(("right", "r_")) or "_right" in name:
        return RIGHT
    return CENTRE


def draw_people(image: np.ndarray, people: Sequence[np.ndarray], boxes: Sequence[Sequence[float]] | None = None,
                keypoint_set: KeypointSet = COCO17, threshold: float = 0.1,
                labels: Sequence[str] | None = None) -> np.ndarray:
    """A copy of RGB `image` with each person's (K, 3) keypoints (x, y, score) drawn where score > threshold."""
    canvas = np.ascontiguousarray(image).copy()
    scale = max(1, round(max(canvas.shape[:2]) / 400))
    names = keypoint_set.names
    for i, keypoints in enumerate(people):
        keypoints = np.asarray(keypoints, np.float64)
        shown = keypoints[:, 2] > threshold
        for a, b in keypoint_set.skeleton:
            if shown[a] and shown[b]:
                side_a, side_b = _side(names, a), _side(names, b)
                color = side_a if side_a == side_b else CENTRE
                cv2.line(canvas, tuple(int(round(v)) for v in keypoints[a, :2]),
                         tuple(int(round(v)) for v in keypoints[b, :2]), color, 2 * scale, cv2.LINE_AA)
        for k in np.nonzero(shown)[0]:
            center = tuple(int(round(v)) for v in keypoints[k, :2])
            cv2.circle(canvas, center, 2 * scale + 1, _side(names, k), -1, cv2.LINE_AA)
            cv2.circle(canvas, center, 2 * scale + 1, (0, 0, 0), 1, cv2.LINE_AA)
        if boxes is not None:
            x, y, w, h = boxes[i]
            cv2.rectangle(canvas, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 255), scale)
            if labels is not None:
                cv2.putText(canvas, labels[i], (int(x) + 2, int(y) + 12 * scale), cv2.FONT_HERSHEY_SIMPLEX,
                            0.4 * scale, (255, 255, 255), scale, cv2.LINE_AA)
    return canvas


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None
               ) -> np.ndarray:
    """A copy of RGB `image` with (x, y, width, height) boxes drawn (a detector's people), labelled if given."""
    people = [np.zeros((COCO17.num_keypoints, 3))] * len(boxes)  # no keypoints: only the boxes show
    return draw_people(image, people, boxes, COCO17, threshold=1.0, labels=labels)


def grid(images: Sequence[np.ndarray], columns: int = 2, height: int = 360) -> np.ndarray:
    """Images resized to a common height and tiled row by row (for a one-file overview)."""
    resized = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height)) for im in images]
    width = max(im.shape[1] for im in resized)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0))) for im in resized]
    while len(padded) % columns:
        padded.append(np.zeros_like(padded[0]))
    rows = [np.concatenate(padded[r:r + columns], axis=1) for r in range(0, len(padded), columns)]
    return np.concatenate(rows, axis=0)


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an RGB image as PNG to a local or gs:// path."""
    from etils import epath

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"could not encode a {image.shape} image as PNG")
    epath.Path(path).write_bytes(encoded.tobytes())
