"""Box geometry for the person detector: IoU matrices, Faster R-CNN box coding, clipping (pure jnp, jittable).

Boxes are (x1, y1, x2, y2) in pixels, shape [..., 4]; width is x2 - x1 (continuous coordinates, as torchvision
and detectron2, no +1). The coding is Faster R-CNN's (Ren et al. 2015), as detectron2's `Box2BoxTransform`:

    dx = wx (cx - cx_a) / w_a,  dy = wy (cy - cy_a) / h_a,  dw = ww log(w / w_a),  dh = wh log(h / h_a)

with weights (1, 1, 1, 1) for the region proposal network and (10, 10, 5, 5) for the second stage. Decoding clamps
dw and dh at log(1000 / 16) before `exp`, and sizes carry an epsilon, so zero-size boxes never give inf or NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_SIZE_CLAMP = math.log(1000.0 / 16)  # the largest decoded size ratio (detectron2's scale clamp)
SIZE_EPSILON = 1e-6  # pixels: keeps logs and divisions finite for zero-size boxes


def area(boxes: jax.Array) -> jax.Array:
    """[...] areas of [..., 4] boxes (0 for empty or inverted boxes)."""
    return jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0) * jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)


def iou(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N, M) intersection over union of boxes a (N, 4) and b (M, 4); 0 where the union is empty."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    top_left = jnp.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    size = jnp.maximum(bottom_right - top_left, 0.0)
    intersection = size[..., 0] * size[..., 1]
    union = area(a)[:, None] + area(b)[None, :] - intersection
    return jnp.where(union > 0, intersection / jnp.where(union > 0, union, 1.0), 0.0)


def _centres_and_sizes(boxes: jax.Array) -> tuple[jax.Array, ...]:
    width = jnp.maximum(boxes[..., 2] - boxes[..., 0], SIZE_EPSILON)
    height = jnp.maximum(boxes[..., 3] - boxes[..., 1], SIZE_EPSILON)
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def encode(boxes: jax.Array, anchors: jax.Array, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
           ) -> jax.Array:
    """[..., 4] deltas (dx, dy, dw, dh) that move `anchors` onto `boxes` (both [..., 4], broadcastable)."""
    cx, cy, w, h = _centres_and_sizes(jnp.asarray(boxes, jnp.float32))
    acx, acy, aw, ah = _centres_and_sizes(jnp.asarray(anchors, jnp.float32))
    wx, wy, ww, wh = weights
    return jnp.stack([wx * (cx - acx) / aw, wy * (cy - acy) / ah, ww * jnp.log(w / aw), wh * jnp.log(h / ah)], -1)


def decode(deltas: jax.Array, anchors: jax.Array, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
           ) -> jax.Array:
    """[..., 4] boxes from `deltas` applied to `anchors` (the inverse of `encode`, with dw and dh clamped)."""
    deltas = jnp.asarray(deltas, jnp.float32)
    acx, acy, aw, ah = _centres_and_sizes(jnp.asarray(anchors, jnp.float32))
    wx, wy, ww, wh = weights
    cx = acx + deltas[..., 0] / wx * aw
    cy = acy + deltas[..., 1] / wy * ah
    w = aw * jnp.exp(jnp.minimum(deltas[..., 2] / ww, LOG_SIZE_CLAMP))
    h = ah * jnp.exp(jnp.minimum(deltas[..., 3] / wh, LOG_SIZE_CLAMP))
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def clip(boxes: jax.Array, height: jax.Array | float, width: jax.Array | float) -> jax.Array:
    """[..., 4] boxes clipped to an image of `height` x `width` pixels (the true size, which may be traced)."""
    boxes = jnp.asarray(boxes, jnp.float32)
    limits = jnp.stack([jnp.asarray(width, jnp.float32), jnp.asarray(height, jnp.float32)] * 2)
    return jnp.clip(boxes, 0.0, limits)


__all__ = ["LOG_SIZE_CLAMP", "area", "clip", "decode", "encode", "iou"]
