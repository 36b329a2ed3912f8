"""Built-in demo data: seeded synthetic multi-person scenes written as a COCO-format keypoint dataset.

    python -m hvpose.data.demo_data --out /tmp/hvpose-demo [--train 600] [--val 100] [--seed 0]

Each scene has one to four articulated people over a random textured background, in depth order, so nearer
people and free-standing occluders hide parts of farther ones (those keypoints get visibility 1); people near the
border are truncated (keypoints outside the image are unlabelled, as in COCO). Sizes vary about fourfold.

Left and right are told apart only by facing: a person seen from the front shows a face (eyes, nose, mouth) and
the shirt's front (open neckline, buttons) and has their left side on the image's right; a person seen from the
back shows hair and a plain shirt and has their left side on the image's left (and their eyes and nose are
unlabelled). Both sides of a body share the same colours, and every
random choice is drawn from a mirror-symmetric distribution, so a flipped scene with left/right labels swapped
is another scene the generator could have drawn (`mirror_scene` builds it; the tests check the rendering).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import fcntl
import json
import logging
import os
import pathlib

import cv2
import numpy as np

from hvpose import keypoints as kp

log = logging.getLogger(__name__)

NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST, L_HIP, R_HIP, \
    L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = range(17)
FORMAT_VERSION = 1


@dataclasses.dataclass
class SyntheticPerson:
    joints: np.ndarray  # (17, 2) float image coordinates, COCO-17 order
    frontal: bool  # seen from the front (face visible) or from the back
    unit: float  # body unit in pixels (about a head height)
    colors: dict[str, tuple[int, int, int]]  # shirt, pants, skin, hair (RGB)


@dataclasses.dataclass
class Scene:
    background: np.ndarray  # (H, W, 3) uint8 RGB
    persons: list[SyntheticPerson]  # far to near (drawing order)
    occluders: list[tuple[np.ndarray, tuple[int, int, int]]]  # convex polygons (N, 2) drawn in front, and colours


def _rotate(vector: np.ndarray, degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def sample_person(rng: np.random.Generator, width: int, height: int) -> SyntheticPerson:
    """A random articulated person; limb angles are drawn per side from the same outward-angle distribution."""
    stature = np.exp(rng.uniform(np.log(0.22), np.log(0.9))) * height  # log-uniform: as many small as large
    u = stature / 7.5
    # Feet usually inside the image; about one person in six is cut by the bottom or a side.
    hip = np.array([rng.uniform(0.0, 1.0) * width, rng.uniform(0.6, 1.08) * height - 3.8 * u])
    frontal = bool(rng.random() < 0.5)
    left_side = 1.0 if frontal else -1.0  # image-x direction of the person's left
    lean = rng.normal(0, 6)
    joints = np.zeros((17, 2))

    def at(origin: np.ndarray, offset: tuple[float, float]) -> np.ndarray:
        return origin + _rotate(np.asarray(offset) * u, lean)

    neck = at(hip, (0.0, -3.0))
    head = at(neck, (0.0, -0.9))
    joints[NOSE] = at(head, (0.0, 0.15))
    for side, (eye, ear, shoulder, elbow, wrist, hip_j, knee, ankle) in (
            (left_side, (L_EYE, L_EAR, L_SHOULDER, L_ELBOW, L_WRIST, L_HIP, L_KNEE, L_ANKLE)),
            (-left_side, (R_EYE, R_EAR, R_SHOULDER, R_ELBOW, R_WRIST, R_HIP, R_KNEE, R_ANKLE))):
        joints[eye] = at(head, (side * 0.2, -0.05))
        joints[ear] = at(head, (side * 0.48, 0.0))
        joints[shoulder] = at(neck, (side * 1.0, 0.25))
        upper = rng.uniform(-20, 160)  # outward angle from hanging straight down
        fore = upper + rng.uniform(-20, 130)
        joints[elbow] = joints[shoulder] + _rotate(np.array([side * np.sin(np.deg2rad(upper)),
                                                             np.cos(np.deg2rad(upper))]) * 1.5 * u, lean)
        joints[wrist] = joints[elbow] + _rotate(np.array([side * np.sin(np.deg2rad(fore)),
                                                          np.cos(np.deg2rad(fore))]) * 1.3 * u, lean)
        joints[hip_j] = at(hip, (side * 0.6, 0.0))
        thigh = rng.uniform(-12, 40)
        shin = thigh + rng.uniform(-35, 15)
        joints[knee] = joints[hip_j] + _rotate(np.array([side * np.sin(np.deg2rad(thigh)),
                                                         np.cos(np.deg2rad(thigh))]) * 1.9 * u, lean)
        joints[ankle] = joints[knee] + _rotate(np.array([side * np.sin(np.deg2rad(shin)),
                                                         np.cos(np.deg2rad(shin))]) * 1.9 * u, lean)
    colors = {
        "shirt": tuple(int(c) for c in rng.integers(0, 256, 3)),
        "pants": tuple(int(c) for c in rng.integers(0, 200, 3)),
        "skin": tuple(int(c) for c in np.array([224, 172, 140]) * rng.uniform(0.45, 1.1)),
        "hair": tuple(int(c) for c in np.array([60, 40, 25]) * rng.uniform(0.2, 2.5)),
    }
    return SyntheticPerson(joints=joints, frontal=frontal, unit=u, colors=colors)


@dataclasses.dataclass
class BackgroundDraws:
    """A background's random draws, painted by `paint_background`: drawing must follow the generator's order,
    painting (most of the pixel work) need not, so `write_split` paints while the next scenes are drawn."""

    top: np.ndarray  # (3,) colour at the top row
    bottom: np.ndarray  # (3,) colour at the bottom row
    noise: np.ndarray  # (H, W, 3) standard normal, blurred when painted
    blur_sigma: float
    noise_amplitude: float
    shapes: list[tuple[bool, tuple[int, ...], tuple[int, int], tuple[int, int], float]]  # (is a rectangle, colour,
    # centre, half-size, ellipse angle) in drawing order


def draw_background(rng: np.random.Generator, width: int, height: int) -> BackgroundDraws:
    """The random draws of `sample_background`, in its order."""
    top, bottom = rng.integers(0, 256, (2, 3)).astype(np.float32)
    noise = rng.normal(0, 1, (height, width, 3))
    blur_sigma = float(rng.uniform(1, 6))
    noise_amplitude = float(rng.uniform(5, 40))
    shapes = []
    for _ in range(rng.integers(2, 9)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        size = (int(rng.uniform(5, width / 3)), int(rng.uniform(5, height / 3)))
        rectangle = bool(rng.random() < 0.5)
        shapes.append((rectangle, color, center, size, 0.0 if rectangle else float(rng.uniform(0, 180))))
    return BackgroundDraws(top, bottom, noise, blur_sigma, noise_amplitude, shapes)


def paint_background(draws: BackgroundDraws) -> np.ndarray:
    """A colour gradient, blurred noise and the shapes: the (H, W, 3) uint8 image of `draws`."""
    height, width = draws.noise.shape[:2]
    t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    image = draws.top * (1 - t) + draws.bottom * t + np.zeros((1, width, 1), np.float32)
    noise = cv2.GaussianBlur(draws.noise.astype(np.float32), (0, 0), draws.blur_sigma)
    image = np.clip(image + noise * draws.noise_amplitude, 0, 255).astype(np.uint8)
    for rectangle, color, center, size, angle in draws.shapes:
        if rectangle:
            cv2.rectangle(image, (center[0] - size[0], center[1] - size[1]), (center[0] + size[0],
                          center[1] + size[1]), color, -1)
        else:
            cv2.ellipse(image, center, size, angle, 0, 360, color, -1)
    return image


def sample_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A colour gradient, blurred noise and random shapes."""
    return paint_background(draw_background(rng, width, height))


def draw_scene(rng: np.random.Generator) -> tuple[BackgroundDraws, list[SyntheticPerson],
                                                   list[tuple[np.ndarray, tuple[int, int, int]]]]:
    """The random draws of `sample_scene`, in its order, with the background not yet painted."""
    width, height = int(rng.integers(24, 41)) * 8, int(rng.integers(24, 41)) * 8
    persons = [sample_person(rng, width, height) for _ in range(rng.integers(1, 5))]
    persons.sort(key=lambda p: p.unit)  # smaller = farther = drawn first
    occluders = []
    for _ in range(rng.binomial(2, 0.3)):
        center = rng.uniform([0, height * 0.3], [width, height])
        half = rng.uniform([4, 4], [width / 6, height / 4])
        corners = center + half * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
        occluders.append((corners, tuple(int(c) for c in rng.integers(0, 256, 3))))
    return draw_background(rng, width, height), persons, occluders


def paint_scene(drawn: tuple[BackgroundDraws, list[SyntheticPerson], list]) -> Scene:
    """The scene of `draw_scene`'s draws, its background painted."""
    background, persons, occluders = drawn
    return Scene(background=paint_background(background), persons=persons, occluders=occluders)


def sample_scene(rng: np.random.Generator) -> Scene:
    return paint_scene(draw_scene(rng))


def mirror_scene(scene: Scene) -> Scene:
    """The horizontally flipped scene with left/right labels swapped (another valid scene)."""
    width = scene.background.shape[1]
    perm = kp.COCO17.flip_permutation()
    flip = lambda points: np.stack([width - 1 - points[..., 0], points[..., 1]], axis=-1)  # noqa: E731
    persons = [dataclasses.replace(p, joints=flip(p.joints)[perm]) for p in scene.persons]
    occluders = [(flip(corners), color) for corners, color in scene.occluders]
    return Scene(background=np.ascontiguousarray(scene.background[:, ::-1]), persons=persons, occluders=occluders)


_SHIFT = 4  # sub-pixel precision bits for OpenCV drawing


def _pt(point: np.ndarray) -> tuple[int, int]:
    # OpenCV puts pixel centres at integers; fixed-point coordinates keep sub-pixel geometry (and mirror symmetry).
    return int(round(point[0] * (1 << _SHIFT))), int(round(point[1] * (1 << _SHIFT)))


def _draw_person(canvas: np.ndarray, person: SyntheticPerson,
                 color_of: dict[str, tuple[int, ...]] | None = None) -> None:
    """Draws a person (with `color_of` overriding every colour, for masks)."""
    colors = person.colors if color_of is None else color_of
    j, u = person.joints, person.unit

    def limb(a: int, b: int, color: tuple[int, ...], width: float) -> None:
        cv2.line(canvas, _pt(j[a]), _pt(j[b]), color, max(1, int(round(width * u))), cv2.LINE_AA, _SHIFT)

    def disk(center: np.ndarray, radius: float, color: tuple[int, ...]) -> None:
        cv2.circle(canvas, _pt(center), int(round(radius * (1 << _SHIFT))), color, -1, cv2.LINE_AA, _SHIFT)

    for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        limb(hip, knee, colors["pants"], 0.65)
        limb(knee, ankle, colors["pants"], 0.55)
    torso = np.array([j[L_SHOULDER], j[R_SHOULDER], j[R_HIP], j[L_HIP]])
    cv2.fillConvexPoly(canvas, np.array([_pt(p) for p in torso], np.int32), colors["shirt"], cv2.LINE_AA, _SHIFT)
    neck = (j[L_SHOULDER] + j[R_SHOULDER]) / 2
    head = (j[L_EAR] + j[R_EAR]) / 2
    down = (neck - head) / (np.linalg.norm(neck - head) + 1e-9)
    across = (j[L_SHOULDER] - j[R_SHOULDER]) / 2
    if person.frontal and color_of is None:  # the shirt's front: an open neckline and a row of buttons
        neckline = np.array([neck + 0.35 * across, neck - 0.35 * across, neck + down * 0.9 * u])
        cv2.fillConvexPoly(canvas, np.array([_pt(p) for p in neckline], np.int32), colors["skin"], cv2.LINE_AA,
                           _SHIFT)
        for step in (1.3, 1.8, 2.3):
            cv2.circle(canvas, _pt(neck + down * step * u), int(0.09 * u * (1 << _SHIFT)) + 1,
                       tuple(255 - c for c in colors["shirt"]), -1, cv2.LINE_AA, _SHIFT)
    cv2.line(canvas, _pt(neck), _pt(head), colors["skin"], max(1, int(round(0.4 * u))), cv2.LINE_AA, _SHIFT)
    for shoulder, elbow, wrist in ((L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST)):
        limb(shoulder, elbow, colors["shirt"], 0.45)
        limb(elbow, wrist, colors["skin"], 0.35)
        disk(j[wrist], 0.25 * u, colors["skin"])
    disk(head, 0.5 * u, colors["skin"])
    up = (head - neck) / (np.linalg.norm(head - neck) + 1e-9)  # towards the crown
    if person.frontal:
        disk(head + up * 0.3 * u, 0.35 * u, colors["hair"])  # fringe
        if color_of is None:
            for eye in (L_EYE, R_EYE):
                disk(j[eye], 0.11 * u, (245, 245, 245))
                disk(j[eye], 0.07 * u, (20, 20, 20))
            disk(j[NOSE], 0.08 * u, tuple(int(c * 0.7) for c in colors["skin"]))
            mouth = j[NOSE] + (j[NOSE] - head) * 1.3
            cv2.ellipse(canvas, _pt(mouth), (int(0.15 * u * (1 << _SHIFT)), int(0.05 * u * (1 << _SHIFT))),
                        0, 0, 360, (150, 40, 50), -1, cv2.LINE_AA, _SHIFT)
    else:
        disk(head - up * 0.05 * u, 0.47 * u, colors["hair"])  # back of the head: all hair


def render(scene: Scene) -> tuple[np.ndarray, list[dict]]:
    """The RGB image and one COCO-style annotation dict per visible person (keypoints, bbox, area)."""
    image = scene.background.copy()
    height, width = image.shape[:2]
    owner = np.full((height, width), -1, np.int32)  # who is in front at each pixel, for occlusion flags
    silhouettes = []
    for index, person in enumerate(scene.persons):
        mask = np.zeros((height, width), np.uint8)
        _draw_person(mask, person, color_of={key: (255,) for key in person.colors})
        silhouettes.append(mask > 127)
        _draw_person(image, person)
        owner[mask > 127] = index
    for corners, color in scene.occluders:
        points = np.array([_pt(p) for p in corners], np.int32)
        cv2.fillConvexPoly(image, points, color, cv2.LINE_AA, _SHIFT)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillConvexPoly(mask, points, 255, cv2.LINE_AA, _SHIFT)
        owner[mask > 127] = len(scene.persons)

    annotations = []
    for index, (person, silhouette) in enumerate(zip(scene.persons, silhouettes, strict=True)):
        area = int(silhouette.sum())
        if area == 0:
            continue
        ys, xs = np.nonzero(silhouette)
        keypoints = np.zeros((17, 3))
        for k, (x, y) in enumerate(person.joints):
            if not person.frontal and k in (NOSE, L_EYE, R_EYE):
                continue  # not visible from behind: unlabelled, as COCO annotators leave them
            col, row = int(round(x)), int(round(y))
            if not (0 <= col < width and 0 <= row < height):
                continue  # truncated: outside the image, unlabelled
            hidden = owner[row, col] > index  # a nearer person or an occluder covers it
            keypoints[k] = (x, y, 1 if hidden else 2)
        annotations.append({
            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
            "area": float(area),
            "keypoints": [round(float(v), 2) for v in keypoints.reshape(-1)],
            "num_keypoints": int(np.count_nonzero(keypoints[:, 2])),
            "iscrowd": 0,
            "category_id": 1,
        })
    return image, annotations


def person_category() -> dict:
    return {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(kp.COCO17.names),
            "skeleton": [[a + 1, b + 1] for a, b in kp.COCO17.skeleton]}


def _render_jpeg(drawn: tuple[BackgroundDraws, list[SyntheticPerson], list]) -> tuple[bytes, int, int, list[dict]]:
    """A drawn scene painted, rendered and JPEG-encoded: (bytes, width, height, people)."""
    image, people = render(paint_scene(drawn))
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("OpenCV could not encode a demo image as JPEG")
    return encoded.tobytes(), image.shape[1], image.shape[0], people


def write_split(root: pathlib.Path, split: str, count: int, seed: int, first_image_id: int) -> pathlib.Path:
    """Renders `count` scenes into root/images and writes root/<split>.json; returns the json path.

    The scenes are drawn in order from one generator (the dataset depends only on `seed` and `split`); threads
    paint, render and encode them meanwhile (OpenCV and NumPy's generator release the GIL), at most two scenes
    per thread behind the drawing.
    """
    rng = np.random.default_rng([seed, sum(map(ord, split))])
    images, annotations = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    threads = min(4, os.cpu_count() or 1)  # the drawing, one thread, bounds the gain beyond a few
    pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def write_oldest() -> None:
        image_id = first_image_id + len(images)
        encoded, width, height, people = pending.popleft().result()
        file_name = f"{split}_{image_id:06d}.jpg"
        (root / "images" / file_name).write_bytes(encoded)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for person in people:
            annotations.append({**person, "id": len(annotations) + 1 + first_image_id * 10, "image_id": image_id})

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in range(count):
            if len(pending) >= 2 * threads:  # bounded: a drawn scene holds its noise (up to 2.4 MB)
                write_oldest()
            pending.append(pool.submit(_render_jpeg, draw_scene(rng)))
        while pending:
            write_oldest()
    path = root / f"{split}.json"
    path.write_text(json.dumps({"info": {"description": "hvpose synthetic demo people", "seed": seed},
                                "images": images, "annotations": annotations, "categories": [person_category()]}))
    return path


def ensure_demo_dataset(root: str | os.PathLike[str], num_train: int = 600, num_val: int = 100,
                        seed: int = 0) -> dict[str, str]:
    """Writes the demo dataset under `root` unless it is already there with the same settings.

    Returns {"train": json, "val": json, "images": folder}.
    """
    root = pathlib.Path(root)
    manifest = root / "manifest.json"
    settings = {"version": FORMAT_VERSION, "train": num_train, "val": num_val, "seed": seed}
    paths = {"train": str(root / "train.json"), "val": str(root / "val.json"), "images": str(root / "images")}
    root.mkdir(parents=True, exist_ok=True)
    # Runs sharing the folder take turns (a run that finds it being written waits, then reuses or rewrites it), so
    # it never holds a mix of two generations; the manifest goes first and comes back last, so a generation cut
    # short is redone.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if manifest.exists() and json.loads(manifest.read_text()) == settings:
            return paths
        manifest.unlink(missing_ok=True)
        log.warning("hvpose: drawing %d training and %d held-out synthetic images into %s (once)", num_train,
                    num_val, root)
        write_split(root, "train", num_train, seed, first_image_id=1)
        write_split(root, "val", num_val, seed, first_image_id=1_000_000)
        manifest.write_text(json.dumps(settings))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--train", type=int, default=600, help="number of training images")
    parser.add_argument("--val", type=int, default=100, help="number of held-out images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = ensure_demo_dataset(args.out, args.train, args.val, args.seed)
    print(json.dumps(paths, indent=2))


if __name__ == "__main__":
    main()
