"""Training-time augmentation: crop geometry sampling (enlargement, scale, shift, rotation, flip) and colour jitter.

The defaults are the paper's setting: the box enlargement factor is uniform in [1.0, 1.5] (the paper's scale
augmentation) and crops are flipped horizontally with probability 1/2, left/right keypoints swapped. Rotation,
extra scale jitter, centre shift and colour jitter are off by default; modern top-down trainers (mmpose,
SimpleBaseline) use rotation up to 40 degrees, scale jitter of +-0.25-0.35 and mmpose a centre shift of up to 0.16
of the box, which the config can switch on. The shift trains the network on boxes as a detector draws them
(off-centre), not only on ground-truth boxes centred on the person.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hvpose.data.crops import CROP_SIZE, CropGeometry, extend_box


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Augmentation switches (config: `config.data.augment`)."""

    flip: bool = True  # horizontal flip with probability 1/2, left/right keypoints swapped
    enlarge: tuple[float, float] = (1.0, 1.5)  # box enlargement factor range (uniform)
    rotation: float = 0.0  # max rotation in degrees (uniform in [-rotation, rotation]); 0 = off
    rotation_probability: float = 0.6  # chance that a crop is rotated at all, when rotation > 0
    scale_jitter: float = 0.0  # extra zoom factor uniform in [1 - s, 1 + s]; 0 = off
    shift_jitter: float = 0.0  # crop centre moved by uniform [-s, s] of the box's width and height; 0 = off
    color_jitter: float = 0.0  # brightness/contrast/saturation strength in [0, 1]; 0 = off

    def __post_init__(self) -> None:
        low, high = self.enlarge
        if not 0 < low <= high:
            raise ValueError(f"enlarge range must satisfy 0 < low <= high, got {self.enlarge}")
        if not 0 <= self.scale_jitter < 1 or not 0 <= self.color_jitter <= 1 or self.rotation < 0:
            raise ValueError("scale_jitter must be in [0, 1), color_jitter in [0, 1], rotation >= 0")
        if not 0 <= self.shift_jitter <= 0.5:
            raise ValueError(f"shift_jitter must be in [0, 0.5] (a fraction of the box), got {self.shift_jitter}")


def sample_geometry(box: tuple[float, float, float, float], rng: np.random.Generator, augment: Augmentation,
                    crop_size: tuple[int, int] = CROP_SIZE) -> CropGeometry:
    """A random crop geometry for a training person box."""
    enlarge = rng.uniform(*augment.enlarge)
    if augment.scale_jitter:
        enlarge *= rng.uniform(1 - augment.scale_jitter, 1 + augment.scale_jitter)
    center, size = extend_box(box, crop_size, enlarge)
    if augment.shift_jitter:  # drawn only when on, so the other draws (and old runs) are unchanged when off
        dx, dy = rng.uniform(-augment.shift_jitter, augment.shift_jitter, size=2)
        center = (center[0] + dx * max(float(box[2]), 0.0), center[1] + dy * max(float(box[3]), 0.0))
    rotation = 0.0
    if augment.rotation and rng.random() < augment.rotation_probability:
        rotation = float(rng.uniform(-augment.rotation, augment.rotation))
    flip = bool(augment.flip and rng.random() < 0.5)
    return CropGeometry(center=center, size=size, rotation=rotation, flip=flip)


def color_jitter(crop: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - strength, 1 + strength] on a uint8 RGB crop."""
    if not strength:
        return crop
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    image = crop.astype(np.float32) * brightness
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    image = (image - gray.mean()) * contrast + gray.mean()
    gray = image @ np.array([0.299, 0.587, 0.114], np.float32)
    image = (image - gray[..., None]) * saturation + gray[..., None]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)
