"""RoIAlign (He et al. 2017) for the detector's second stage, with torchvision's `roi_align(..., aligned=True)`
semantics and a fixed sampling ratio, in two equal forms (pure jnp, static shapes, per image).

Semantics (torchvision's CPU kernel): a box (x1, y1, x2, y2) in input pixels is scaled by `spatial_scale` and
shifted by -0.5 (`aligned=True`: feature cell k covers input pixels [k, k + 1) / spatial_scale, its value sits at
its centre), so the RoI spans [x1 * s - 0.5, x2 * s - 0.5) in feature coordinates; no minimum size is imposed
(a zero-size box samples one point). Each of the out_h x out_w bins (size roi size / output size) is the mean
of S x S bilinear samples (S = `sampling_ratio`), the sample (iy, ix) of bin (ph, pw) at
y = y_start + ph * bin_h + (iy + 0.5) * bin_h / S (x likewise). A sample contributes 0 when y < -1, y > H,
x < -1 or x > W; otherwise y is clamped to [0, H - 1] (torchvision: y = max(y, 0), and when floor(y) >= H - 1
both neighbours are row H - 1), and likewise x. torchvision's adaptive sampling ratio (ceil(roi size / output
size), data dependent) is not supported: a fixed ratio keeps shapes static.

Forms:
  "gather": gathers the four neighbours of every sample, (N, out_h * S, out_w * S, C) each. Its gradient with
    respect to the features is a scatter-add, slow on TPUs.
  "einsum": bilinear weights are separable, w(y, x) = w_y(y) * w_x(x), and so is the mean over a bin's samples.
    Per RoI, the weights along y form an (out_h * S, H) matrix (two non-zeros per row), averaged over the S
    samples of each bin to (out_h, H); likewise (out_w, W) along x. The output is two matmuls,
    out[n] = Wy[n] @ F @ Wx[n]^T per channel, and so is the gradient (the TPU-friendly form). Cost: the
    intermediate is (N, out_h, W, C) or (N, out_w, H, C), whichever order needs fewer flops (about
    N * out * H * W * C multiply-adds, dense over the whole feature map, independent of the box sizes), e.g.
    300 RoIs at 14x14 on a 38x38x1024 map: a 0.65 GB float32 intermediate and 8.5 G multiply-adds (the gather
    form, at S = 2, makes four 0.96 GB neighbour arrays instead).
  "fused": the einsum form's first contraction (one matmul over every RoI at once), and the second as a weighted
    sum, `sum(weights[:, None, :, :, None] * rows[:, :, None], axis=3)`, which XLA fuses into one loop: the
    einsum form's second contraction is a batch of one small matmul per RoI, which XLA:CPU runs slowly. Its
    gradient is the einsum form's (a custom VJP): inside the detector's train step XLA:CPU ran the transposed
    fused sum that autodiff derives slower than those matmuls. `benchmarks/detector.py` times the three forms.
  "dense": per RoI, the full (out_h * out_w, H * W) matrix of bin weights, Wy[n] (x) Wx[n] (the einsum form's two
    factors, multiplied out), and every RoI of the image in one matmul against the (H * W, C) features; the
    gradient is the transposed matmul. It does more multiply-adds than the separable forms (N * out_h * out_w *
    H * W * C) but as one large matrix product each way, which CPUs run fastest while the map is small (the demo
    detector's 11x11; `benchmarks/detector.py` times the forms). The matrix has N * out_h * out_w * H * W entries
    (0.8 M for the demo's 32 RoIs at 7x7 on 11x11), so for large maps (300 RoIs at 14x14 on 38x38: 85 M) use
    "einsum" or "fused".
All give the same values to float32 rounding and the same gradients, with respect to the features and the boxes
(they share the sample coordinates and weights; callers stop gradients to the boxes, as torchvision has none).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

METHODS = ("gather", "einsum", "fused", "dense")


def _axis_samples(start: jax.Array, end: jax.Array, length: int, bins: int, sampling_ratio: int
                  ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Neighbour indices and bilinear weights of the samples along one axis.

    Args:
      start, end: (N,) RoI limits in feature coordinates (already scaled and shifted by -0.5).
      length: the feature map's size along this axis.

    Returns:
      low, high (N, bins * S) int32 neighbour indices and their weights w_low, w_high (N, bins * S) float32,
      0 for samples outside [-1, length], sample s of bin b at column b * S + s.
    """
    bin_size = (end - start) / bins  # (N,)
    bin_index = jnp.arange(bins, dtype=jnp.float32)[:, None]  # (bins, 1)
    sample = (jnp.arange(sampling_ratio, dtype=jnp.float32) + 0.5)[None, :]  # (1, S)
    # As torchvision: start + b * bin + (s + 0.5) * bin / S, in this order.
    coord = (start[:, None, None] + bin_index[None] * bin_size[:, None, None]
             + sample[None] * bin_size[:, None, None] / sampling_ratio).reshape(start.shape[0], bins * sampling_ratio)
    inside = (coord >= -1.0) & (coord <= length)
    clamped = jnp.clip(coord, 0.0, length - 1)
    low = jnp.floor(jax.lax.stop_gradient(clamped)).astype(jnp.int32)
    high = jnp.minimum(low + 1, length - 1)
    frac = clamped - low  # 0 on the last row, where low == high == length - 1
    zero = jnp.zeros_like(frac)
    return low, high, jnp.where(inside, 1.0 - frac, zero), jnp.where(inside, frac, zero)


def _gather(features: jax.Array, ys: tuple[jax.Array, ...], xs: tuple[jax.Array, ...]) -> jax.Array:
    """(N, out_h * S, out_w * S, C) bilinear samples, gathering the four neighbours."""
    y_low, y_high, wy_low, wy_high = ys
    x_low, x_high, wx_low, wx_high = xs

    def row(y: jax.Array, wy: jax.Array) -> jax.Array:
        left = features[y[:, :, None], x_low[:, None, :]]  # (N, Py, Px, C)
        right = features[y[:, :, None], x_high[:, None, :]]
        return wy[:, :, None, None] * (wx_low[:, None, :, None] * left + wx_high[:, None, :, None] * right)

    return row(y_low, wy_low) + row(y_high, wy_high)


def _weights(axis: tuple[jax.Array, ...], length: int, bins: int, sampling_ratio: int) -> jax.Array:
    """(N, bins, length): the bilinear weights of each bin's samples along one axis, averaged over the S samples."""
    low, high, w_low, w_high = axis
    dense = (jax.nn.one_hot(low, length, dtype=w_low.dtype) * w_low[..., None]
             + jax.nn.one_hot(high, length, dtype=w_high.dtype) * w_high[..., None])  # (N, bins * S, length)
    return dense.reshape(low.shape[0], bins, sampling_ratio, length).mean(axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_sum(weights: jax.Array, rows: jax.Array, precision: jax.lax.Precision | str | None) -> jax.Array:
    """out[n, p, q, c] = sum_w weights[n, q, w] * rows[n, p, w, c], as one fused loop (see the module docstring).

    Its gradient is written out as einsums: XLA:CPU ran the transposed fused sum that autodiff derives far slower
    inside the detector's train step than these per-RoI matmuls.
    """
    return jnp.sum(weights[:, None, :, :, None] * rows[:, :, None], axis=3)


def _fused_sum_forward(weights, rows, precision):
    return _fused_sum(weights, rows, precision), (weights, rows)


def _fused_sum_backward(precision, residuals, cotangent):
    weights, rows = residuals
    return (jnp.einsum("npqc,npwc->nqw", cotangent, rows, precision=precision).astype(weights.dtype),
            jnp.einsum("nqw,npqc->npwc", weights, cotangent, precision=precision).astype(rows.dtype))


_fused_sum.defvjp(_fused_sum_forward, _fused_sum_backward)


@functools.partial(jax.jit, static_argnames=("output_size", "sampling_ratio", "method", "precision"))
def roi_align(features: jax.Array, boxes: jax.Array, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = 2, method: str = "gather",
              precision: jax.lax.Precision | str | None = jax.lax.Precision.HIGHEST) -> jax.Array:
    """RoIAlign of `boxes` on one image's `features`, as torchvision's `roi_align(..., aligned=True)`.

    Args:
      features: (H, W, C) feature map.
      boxes: (N, 4) (x1, y1, x2, y2) in input pixels (continuous coordinates, pixel i spans [i, i + 1)).
      output_size: (out_h, out_w) bins per RoI (static; a tuple, or an int for square).
      spatial_scale: feature cells per input pixel (1 / the feature stride, e.g. 1/16).
      sampling_ratio: S, samples per bin along each axis (static, >= 1).
      method: "gather", "einsum", "fused" or "dense" (static); see the module docstring. Equal results.
      precision: (static) matmul precision of the einsum and fused forms; the default keeps float32 accuracy on
        GPUs (no TF32) and TPUs (no single-pass bfloat16); "default" is faster there.

    Returns:
      (N, out_h, out_w, C), in the promoted type of the features and float32.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    out_h, out_w = (int(n) for n in output_size)
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1 (the adaptive ratio is not supported), got {sampling_ratio}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    features = jnp.asarray(features)
    height, width, _ = features.shape
    rois = jnp.asarray(boxes, jnp.float32) * jnp.float32(spatial_scale) - 0.5
    count = rois.shape[0]
    ys = _axis_samples(rois[:, 1], rois[:, 3], height, out_h, sampling_ratio)
    xs = _axis_samples(rois[:, 0], rois[:, 2], width, out_w, sampling_ratio)
    if method == "gather":
        samples = _gather(features, ys, xs)
        channels = samples.shape[-1]
        return samples.reshape(count, out_h, sampling_ratio, out_w, sampling_ratio, channels).mean(axis=(2, 4))
    weights_y = _weights(ys, height, out_h, sampling_ratio)  # (N, out_h, H)
    weights_x = _weights(xs, width, out_w, sampling_ratio)  # (N, out_w, W)
    contract = functools.partial(jnp.einsum, precision=precision)
    if method == "dense":
        bins = (weights_y[:, :, None, :, None] * weights_x[:, None, :, None, :]).reshape(count * out_h * out_w,
                                                                                            height * width)
        pooled = jnp.dot(bins, features.reshape(height * width, features.shape[-1]), precision=precision)
        return pooled.reshape(count, out_h, out_w, features.shape[-1])
    y_first_flops = out_h * height * width + out_h * out_w * width  # per RoI and channel
    x_first_flops = out_w * height * width + out_h * out_w * height
    if y_first_flops <= x_first_flops:
        rows = contract("nph,hwc->npwc", weights_y, features)  # (N, out_h, W, C)
        if method == "fused":
            return _fused_sum(weights_x, rows, precision)
        return contract("nqw,npwc->npqc", weights_x, rows)
    columns = contract("nqw,hwc->nqhc", weights_x, features)  # (N, out_w, H, C)
    if method == "fused":
        return jnp.swapaxes(_fused_sum(weights_y, columns, precision), 1, 2)  # (N, out_w, out_h, C) first
    return contract("nph,nqhc->npqc", weights_y, columns)


__all__ = ["METHODS", "roi_align"]
